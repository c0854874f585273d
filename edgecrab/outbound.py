"""Outbound HTTP: the one way edgecrab makes an HTTP client, and the one reading of what went wrong.

Every outbound call (DingTalk's REST APIs, the Stream open-connection call, the OpenAI-compatible agent)
goes through an ``httpx.AsyncClient`` made by :func:`http_client`: httpx's API, with aiohttp's connection
pool underneath (``httpx-aiohttp``'s ``HttpxAiohttpClient``), redirects never followed, proxies from the
environment. Why aiohttp's pool and not httpcore's is measured in pyproject.toml and BENCHMARKS.md.

httpx-aiohttp maps every aiohttp connection failure to ``httpx.ConnectTimeout`` and keeps the original
error as the exception's ``__cause__`` (``raise ... from exc``). :func:`failure_kind` reads that cause,
so a refused connection or a hang-up is not reported to an operator as a timeout.

No client keeps cookies (:class:`NoCookies`): DingTalk's APIs and an OpenAI-compatible endpoint authenticate
with tokens, and a cookie one host sets must never ride along on a later call.
"""

from __future__ import annotations

import ipaddress
from http.cookiejar import Cookie, CookieJar
from typing import Any, Literal

import aiohttp
import httpx
from httpx_aiohttp import HttpxAiohttpClient

__all__ = ["FailureKind", "NoCookies", "failure_kind", "http_client", "is_loopback"]

FailureKind = Literal["timeout", "refused", "disconnected", "network"]


class NoCookies(CookieJar):
    """A cookie jar that keeps nothing (the standard library's public ``CookieJar`` interface, like
    aiohttp's ``DummyCookieJar``). httpx offers every response to its client's jar; reading the
    ``Set-Cookie`` headers of each reply into one was a tenth of a send's CPU time in the profile
    (BENCHMARKS.md), for cookies edgecrab must not send anyway."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: Cookie) -> None:
        return None


def http_client(
    *,
    timeout: float | httpx.Timeout,
    max_connections: int = 100,
    max_keepalive: int | None = -1,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` on aiohttp's pool: at most ``max_connections`` at once (``None`` would be
    read as aiohttp's default of 100, so pass a number), ``max_keepalive`` idle ones kept (-1: as many as
    ``max_connections``), redirects not followed, no cookies kept (:class:`NoCookies`). ``kwargs`` go to
    the client (``headers``, ``transport`` for a test's ``httpx.MockTransport``)."""
    keepalive = max_connections if max_keepalive == -1 else max_keepalive
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=keepalive)
    return HttpxAiohttpClient(
        limits=limits,
        timeout=timeout,
        follow_redirects=False,
        trust_env=True,
        cookies=NoCookies(),
        **kwargs,
    )


def failure_kind(exc: BaseException) -> FailureKind:
    """What a call that got no answer ran into: a real timeout, a refused connection, a peer that hung
    up, or another network failure."""
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else None
    if isinstance(cause, aiohttp.ClientConnectorError):
        return "refused"
    if isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "disconnected"
    if isinstance(cause, TimeoutError):  # aiohttp's ServerTimeoutError and ConnectionTimeoutError too
        return "timeout"
    if isinstance(cause, aiohttp.ClientError):
        return "network"
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "refused"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return "disconnected"
    return "network"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): where plain http stays on this
    machine. The one definition for the SSRF guard, the clear-text warnings and the sandbox's bind check."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
