"""HTTP clients: httpx's API on aiohttp's connection pool.

Every outbound HTTP call (DingTalk REST, the OpenAI-compatible agent) goes through an ``httpx.AsyncClient``,
so timeouts, redirects, status handling and the error handling built on httpx's exception tree stay as
they are. Underneath, :func:`async_client` mounts :class:`~edgecrab.httptransport.AiohttpTransport` instead
of httpcore: httpcore 1.0's pool costs 1-2 ms of CPU per request on a busy gateway (it walks every queued
request times every connection on each request start and end, closes and reopens connections above its
keep-alive count, and tries ``import sniffio`` on each lock set-up); aiohttp's costs about 0.1 ms. See
BENCHMARKS.md, fix 2. How that transport streams bodies and maps aiohttp's errors onto httpx's exceptions
is :mod:`edgecrab.httptransport`'s.

With an HTTP(S) proxy configured in the environment, :func:`async_client` keeps httpx's own transport, which
honours it (httpx ignores proxy variables once a transport is given).

:func:`post_bytes` is the short way for a small POST whose whole answer is wanted (a DingTalk send): on a
client made by :func:`async_client` it goes straight to the transport's aiohttp session, skipping httpx's
``Request``/``Response`` objects, URL parsing, cookie and redirect machinery (about half the CPU of a
send), with the same error mapping and timeouts; on any other client it is ``client.post``.

:func:`open_stream` is the same short way for a streamed POST (the OpenAI agent's SSE): the client's own
headers are sent as httpx would merge them, the body is read as it arrives from a
:class:`~edgecrab.httptransport.StreamResponse`; on any other client it is ``client.stream("POST", ...)``.
"""

from __future__ import annotations

import urllib.request
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol

import httpx

from edgecrab.httpresponses import FastResponse, StreamResponse
from edgecrab.httptransport import AiohttpTransport, aiohttp_timeout

__all__ = [
    "FastResponse",
    "StreamingResponse",
    "async_client",
    "environment_proxies",
    "open_stream",
    "post_bytes",
]

_FAST_CLIENTS: weakref.WeakKeyDictionary[httpx.AsyncClient, AiohttpTransport] = weakref.WeakKeyDictionary()
"""Clients made by :func:`async_client` on an :class:`AiohttpTransport`, for :func:`post_bytes`."""

_FAST_STREAM_CLIENTS: weakref.WeakKeyDictionary[httpx.AsyncClient, AiohttpTransport] = (
    weakref.WeakKeyDictionary()
)
"""Clients made by :func:`async_client` on an :class:`AiohttpTransport`, client headers allowed, for
:func:`open_stream` (which merges them in as httpx does)."""

_CLIENT_LEVEL_SETTINGS = ("auth", "params", "headers", "cookies", "event_hooks", "base_url", "mounts")
"""``httpx.AsyncClient`` settings that :func:`post_bytes`'s short way would not apply."""

_STREAM_CLIENT_LEVEL_SETTINGS = tuple(name for name in _CLIENT_LEVEL_SETTINGS if name != "headers")
"""Those that :func:`open_stream`'s short way would not apply (it applies the client's headers)."""


def environment_proxies() -> bool:
    """True when the environment names an HTTP(S) proxy (``HTTPS_PROXY``, ``ALL_PROXY``, ...)."""
    return any(scheme in ("http", "https", "all") for scheme in urllib.request.getproxies())


def async_client(*, max_connections: int | None = 100, **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` on :class:`AiohttpTransport` (``max_connections=None``: no limit).

    ``kwargs`` go to ``httpx.AsyncClient`` (headers, timeout, follow_redirects, ...).
    """
    if environment_proxies():
        limits = httpx.Limits(max_connections=max_connections)
        return httpx.AsyncClient(limits=limits, **kwargs)
    transport = AiohttpTransport(max_connections=max_connections)
    client = httpx.AsyncClient(transport=transport, **kwargs)
    if not any(kwargs.get(name) for name in _STREAM_CLIENT_LEVEL_SETTINGS):
        _FAST_STREAM_CLIENTS[client] = transport
        if not kwargs.get("headers"):
            _FAST_CLIENTS[client] = transport
    return client


async def post_bytes(
    client: httpx.AsyncClient,
    url: str,
    content: bytes,
    headers: Mapping[str, str],
    timeout: float | None,  # noqa: ASYNC109 -- httpx's per-operation timeout, as client.post's
) -> FastResponse:
    """POST ``content`` to ``url`` with exactly ``headers``, read the whole answer; redirects not followed.

    On a client made by :func:`async_client` (no proxy, no client-level auth, headers, cookies, hooks,
    base URL or mounts) the request goes straight through its :class:`AiohttpTransport`'s session: no
    client-level headers are added (send a ``User-Agent`` in ``headers`` if one is wanted) and response
    cookies are not kept. Otherwise (httpx's own transport, ``httpx.MockTransport`` in tests, a closed
    client) it is ``client.post(...)``. ``timeout`` is httpx's single-number timeout: each of connect,
    pool wait and every read of the head and the body, not the whole exchange. Failures raise the same
    httpx exceptions either way, and their messages never contain the URL.
    """
    transport = _short_way(_FAST_CLIENTS, client)
    if transport is None:
        response = await client.post(
            url, content=content, headers=headers, timeout=timeout, follow_redirects=False
        )
        return FastResponse(response.status_code, response.content, response.headers)
    return await transport.post_bytes(url, content, headers, timeout)


def _short_way(
    registry: weakref.WeakKeyDictionary[httpx.AsyncClient, AiohttpTransport], client: httpx.AsyncClient
) -> AiohttpTransport | None:
    """``client``'s transport if it is in ``registry`` and nothing set on it since (auth, event hooks) or
    its state (closed) asks for httpx's own path."""
    transport = registry.get(client)
    if transport is None or client.is_closed or client.auth is not None:
        return None
    hooks = client.event_hooks
    return None if hooks.get("request") or hooks.get("response") else transport


class StreamingResponse(Protocol):
    """What :func:`open_stream` yields: an ``httpx.Response`` or a
    :class:`~edgecrab.httptransport.StreamResponse`."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def aread(self) -> bytes: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    def aiter_lines(self) -> AsyncIterator[str]: ...


def open_stream(
    client: httpx.AsyncClient, url: str, content: bytes, headers: Mapping[str, str]
) -> AbstractAsyncContextManager[StreamingResponse]:
    """``async with open_stream(...) as response``: POST ``content`` to ``url``, the body read as it comes.

    The request carries the client's headers with ``headers`` merged over them (as httpx merges), under the
    client's timeout; redirects are not followed; leaving the block before the body's end closes the
    connection (``/stop``, cancellation), after it the connection goes back to the pool. On a client made
    by :func:`async_client` (no proxy, no client-level auth, cookies, hooks, base URL, mounts or
    ``follow_redirects``) it goes straight through its :class:`AiohttpTransport`'s session (cookies the
    server sets are not kept); otherwise it is ``client.stream("POST", url, content=..., headers=...)``.
    Failures raise the same httpx exceptions either way, and their messages never contain the URL or the
    headers.
    """
    transport = _short_way(_FAST_STREAM_CLIENTS, client)
    if transport is None or client.follow_redirects or client.cookies:
        return client.stream("POST", url, content=content, headers=headers)
    # httpx's merge: the client's headers, each replaced by a per-request one of the same name.
    replaced = {name.lower() for name in headers}
    merged = [item for item in client.headers.multi_items() if item[0] not in replaced]
    merged.extend(headers.items())
    return _Stream(transport, url, content, merged, client.timeout)


class _Stream:
    """:func:`open_stream`'s short way: the request on entry, the connection released on exit."""

    __slots__ = ("_content", "_headers", "_response", "_timeout", "_transport", "_url")

    def __init__(
        self,
        transport: AiohttpTransport,
        url: str,
        content: bytes,
        headers: list[tuple[str, str]],
        timeout: httpx.Timeout,
    ) -> None:
        self._transport = transport
        self._url = url
        self._content = content
        self._headers = headers
        self._timeout = timeout
        self._response: StreamResponse | None = None

    async def __aenter__(self) -> StreamResponse:
        self._response = await self._transport.stream_post(
            self._url, self._content, self._headers, aiohttp_timeout(self._timeout)
        )
        return self._response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.close()
