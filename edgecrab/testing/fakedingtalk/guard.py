"""What the fake lets in and what it lets out: the emulator runs on a developer's machine, next to a browser.

In: :func:`guard_middleware` refuses, before any handler runs (REST, stream, control API, web chat alike),

* a ``Host`` header that is not the address the fake is bound to, ``localhost``, ``127.0.0.1`` or ``[::1]``
  (a fake bound to a wildcard address also accepts any IP literal): a DNS-rebinding page on
  ``evil.example`` that resolves to 127.0.0.1 sends ``Host: evil.example`` and gets 421;
* an ``Origin`` header (sent by browsers on cross-site requests and on every websocket handshake) naming
  any other host: 403, so a page on another site cannot drive the control API or read ``/_fake/events``;
* a request body that is not declared JSON (or a multipart media upload): 415. A browser sends a cross-site
  ``text/plain`` POST without asking first (no CORS preflight), so ``text/plain`` bodies must never be
  parsed as JSON. Every client of the fake (the gateway, the official SDK, the web chat page) sends
  ``application/json``.

The port in ``Host`` and ``Origin`` is not compared: a forwarded port (``docker -p 9000:8765``) is legitimate,
and rebinding needs a host *name*, which the host check refuses whatever the port.

Out: :class:`Scrubber` replaces credentials in everything the fake records and serves (``requests``,
``open_requests``, the ``rest`` events of ``/_fake/events``): values under credential-named keys (app
secret, access token, ticket, ``Authorization``) and any app secret appearing anywhere else. A replaced value
becomes ``***`` plus 8 hex digits of its SHA-256, so tests can still tell two tokens apart without seeing one.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SECRET_KEYS = frozenset(
    {
        "clientsecret",
        "appsecret",
        "accesstoken",
        "access_token",
        "x-acs-dingtalk-access-token",
        "ticket",
        "authorization",
        "cookie",
    }
)
REDACTED = "***"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which host names may appear in ``Host`` and ``Origin`` for a fake bound to ``bound_host``."""

    def __init__(self, bound_host: str, extra: Iterable[str] = ()) -> None:
        self.bound = bound_host.strip("[]").lower()
        self.names = LOCAL_NAMES | {self.bound} | {h.lower() for h in extra}

    def allows(self, name: str | None) -> bool:
        if not name:
            return False
        name = name.strip("[]").lower().rstrip(".")
        return name in self.names or (self.bound in _WILDCARDS and _is_ip(name))

    def allows_host_header(self, value: str) -> bool:
        # "127.0.0.1:8765", "[::1]:8765", "localhost": urlsplit parses an authority as browsers write it.
        try:
            return self.allows(urlsplit(f"//{value}").hostname)
        except ValueError:
            return False

    def allows_origin(self, value: str) -> bool:
        try:
            origin = urlsplit(value)
            return origin.scheme in ("http", "https") and self.allows(origin.hostname)
        except ValueError:
            return False  # "null" (sandboxed frames, file://) and garbage are foreign too


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _refuse(error: str, status: int) -> web.Response:
    return web.json_response({"error": error}, status=status)


def guard_middleware(policy: HostPolicy) -> Middleware:
    """An aiohttp middleware applying ``policy`` to ``Host`` and ``Origin``, and the JSON-only body rule."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if not policy.allows_host_header(host):
            return _refuse(f"Host {host!r} is not served here (only this machine's own names)", 421)
        origin = request.headers.get("Origin")
        if origin is not None and not policy.allows_origin(origin):
            return _refuse(f"requests from Origin {origin!r} are refused", 403)
        if (
            request.method in _BODY_METHODS
            and request.can_read_body
            and not _is_json(request.content_type)
            and request.content_type != "multipart/form-data"
            # The web chat's file upload: raw bytes, a type no cross-site form can send without a preflight.
            and not (request.path == "/sandbox/upload" and request.content_type == "application/octet-stream")
        ):
            return _refuse(f"send JSON with Content-Type: application/json, not {request.content_type}", 415)
        return await handler(request)

    return guard


class Scrubber:
    """Replaces credentials in JSON-like values; ``secrets()`` lists the values to find anywhere."""

    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        self._secrets = secrets

    def __call__(self, value: Any) -> Any:
        return self._scrub(value, tuple(s for s in self._secrets() if s))

    def _scrub(self, value: Any, secrets: tuple[str, ...]) -> Any:
        if isinstance(value, str):
            for secret in secrets:
                if secret in value:
                    value = value.replace(secret, fingerprint(secret))
            return value
        if isinstance(value, dict):
            return {
                k: fingerprint(v) if _secret_key(k) and isinstance(v, str) and v else self._scrub(v, secrets)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._scrub(v, secrets) for v in value]
        return value


def _secret_key(key: object) -> bool:
    return isinstance(key, str) and key.lower() in _SECRET_KEYS


def fingerprint(value: str) -> str:
    """``***`` and 8 hex digits of ``value``'s SHA-256: equal values stay equal, none can be read back."""
    if value.startswith(REDACTED):
        return value
    return REDACTED + hashlib.sha256(value.encode()).hexdigest()[:8]
