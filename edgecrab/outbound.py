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

:func:`post` is the one POST of a reply chunk (the hot path of every message). On a client :func:`http_client`
made where no proxy applies, it hands the request to the client's transport itself (httpx's public transport
API, ``handle_async_request``), the way the client would, without the client's layers that have nothing to
do there: merging cookies, params and auth into the request, the auth and redirect loops, and offering every
response to the cookie jar (httpx builds a ``urllib`` request for that, whatever the jar). That was about a
sixth of a send's CPU time (BENCHMARKS.md, sixth session). Anything the client would do differently (a
proxy, auth, default params or cookies, a closed client) takes ``client.post``; event hooks run as the
client runs them.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import urllib.request
import weakref
from collections.abc import Mapping
from http.cookiejar import Cookie, CookieJar
from typing import Any, Literal

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

__all__ = ["FailureKind", "NoCookies", "failure_kind", "http_client", "is_loopback", "post"]

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
    transport: httpx.AsyncBaseTransport | None = kwargs.pop("transport", None)
    if transport is None and not _environment_proxies():
        # What the client would make itself (httpx-aiohttp's transport with these limits), made here so that
        # post() can reach it: with no proxy in the environment the client sends every request through it.
        transport = AiohttpTransport(trust_env=True, limits=limits)
    client = HttpxAiohttpClient(
        limits=limits,
        timeout=timeout,
        follow_redirects=False,
        trust_env=True,
        cookies=NoCookies(),
        transport=transport,
        **kwargs,
    )
    if transport is not None:  # a given transport serves every URL too (httpx then reads no proxy variables)
        _transports[client] = transport
    return client


_transports: weakref.WeakKeyDictionary[httpx.AsyncClient, httpx.AsyncBaseTransport] = (
    weakref.WeakKeyDictionary()
)
"""The transport of each client :func:`http_client` made that sends every request through one."""

_httpx_log = logging.getLogger("httpx")


def _environment_proxies() -> bool:
    """True when the environment names a proxy httpx would use (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``ALL_PROXY``: what ``trust_env`` reads, through the same ``urllib.request.getproxies``)."""
    found = urllib.request.getproxies()
    return any(found.get(scheme) for scheme in ("http", "https", "all"))


async def _client_post(
    client: httpx.AsyncClient, url: str | httpx.URL, content: bytes, headers: Mapping[str, str], step: float
) -> httpx.Response:
    return await client.post(url, content=content, headers=headers, timeout=step, follow_redirects=False)


@functools.lru_cache(maxsize=16)
def _timeouts(timeout: float) -> dict[str, float | None]:
    return httpx.Timeout(timeout).as_dict()


async def post(
    client: httpx.AsyncClient,
    url: str | httpx.URL,
    *,
    content: bytes,
    headers: Mapping[str, str],
    step_timeout_s: float,
) -> httpx.Response:
    """``client.post(url, content=..., headers=..., timeout=step_timeout_s, follow_redirects=False)``, its
    body read: the same request, headers (the client's, then ``headers``) and answer, straight through the
    client's transport when nothing the client would add applies (see the module docstring)."""
    transport = _transports.get(client)
    if transport is None or client.is_closed or client.auth is not None or client.params or client.cookies:
        return await _client_post(client, url, content, headers, step_timeout_s)
    merged = httpx.Headers(client.headers)
    merged.update(headers)
    request = httpx.Request(
        "POST", url, content=content, headers=merged, extensions={"timeout": _timeouts(step_timeout_s)}
    )
    if request.url.is_relative_url:  # the client would join it to its base_url
        return await _client_post(client, url, content, headers, step_timeout_s)
    hooks = client.event_hooks  # run as the client runs them (the ops port counts API calls with one)
    for hook in hooks["request"]:
        await hook(request)
    try:
        response = await transport.handle_async_request(request)
    except httpx.RequestError as exc:  # as the client's request_context() does
        exc.request = request
        raise
    response.request = request
    try:
        for hook in hooks["response"]:
            await hook(response)
        await response.aread()
    except BaseException:
        await response.aclose()
        raise
    if _httpx_log.isEnabledFor(logging.INFO):  # the client's own line (httpx is at WARNING unless debugging)
        _httpx_log.info(
            'HTTP Request: %s %s "%s %d %s"', request.method, request.url, response.http_version,
            response.status_code, response.reason_phrase,
        )
    return response


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
