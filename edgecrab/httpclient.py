"""HTTP clients: httpx's API on aiohttp's connection pool.

Every outbound HTTP call (DingTalk REST, the OpenAI-compatible agent) goes through an ``httpx.AsyncClient``,
so timeouts, redirects, status handling and the error handling built on httpx's exception tree stay as
they are. Underneath, :func:`async_client` mounts :class:`AiohttpTransport` instead of httpcore: httpcore
1.0's pool costs 1-2 ms of CPU per request on a busy gateway (it walks every queued request times every
connection on each request start and end, closes and reopens connections above its keep-alive count, and
tries ``import sniffio`` on each lock set-up); aiohttp's costs about 0.1 ms. See BENCHMARKS.md, fix 2.

Errors map onto httpx's tree by what they say about the request, because callers decide on that whether a
retry can duplicate it:

* the connection could not be made (refused, DNS, TLS, connect timeout): :class:`httpx.ConnectError` /
  :class:`httpx.ConnectTimeout` -- nothing was sent;
* the server went away after the request was written (disconnect before or during the response, a
  truncated body, a malformed response): :class:`httpx.RemoteProtocolError`, or :class:`httpx.ReadError`
  for a socket error -- the server may have acted on it;
* no data for the read timeout: :class:`httpx.ReadTimeout`.

Bodies are streamed: ``client.stream(...)`` yields chunks as they arrive (SSE), and closing a response that
was not read to the end closes its connection at once (``/stop``) instead of returning it to the pool.

With an HTTP(S) proxy configured in the environment, :func:`async_client` keeps httpx's own transport, which
honours it (httpx ignores proxy variables once a transport is given).
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx

__all__ = ["AiohttpTransport", "async_client", "environment_proxies"]

_HTTP_VERSION = {"http_version": b"HTTP/1.1"}


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
    return httpx.AsyncClient(transport=AiohttpTransport(max_connections=max_connections), **kwargs)


class _Body(httpx.AsyncByteStream):
    """A response body as it arrives; closing it before the end closes the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except Exception as exc:
            mapped = _map_error(exc, self._request, reading=True)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()  # read to the end: the connection goes back to the pool
        else:
            response.close()  # abandoned half-way (/stop, an error): it cannot be reused


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An ``httpx`` transport that sends with an ``aiohttp.ClientSession`` (HTTP/1.1, keep-alive pool).

    The session is made on first use, in the event loop of that use; a transport used from another
    loop later (a second ``anyio.run``) opens a new session there. ``max_connections=None`` means no limit:
    the caller bounds concurrency itself (the agent's runs are bounded by ``sessions.max_concurrent_runs``).
    """

    def __init__(
        self,
        *,
        max_connections: int | None = 100,
        keepalive_s: float = 15.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._limit = max_connections or 0
        self._keepalive_s = keepalive_s
        self._verify = verify
        self._ssl: ssl.SSLContext | bool | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or session.closed or self._loop is not loop:
            if self._ssl is None:
                # The same trust store as httpx (certifi), not aiohttp's system default.
                self._ssl = (
                    httpx.create_ssl_context(verify=self._verify)
                    if not isinstance(self._verify, ssl.SSLContext)
                    else self._verify
                )
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=0, keepalive_timeout=self._keepalive_s, ssl=self._ssl
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes Content-Encoding itself
                cookie_jar=aiohttp.DummyCookieJar(),  # and keeps the cookies
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
            self._session, self._loop = session, loop
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{request.url.scheme}://'.", request=request
            )
        timeouts = request.extensions.get("timeout", {})
        connect, pool = timeouts.get("connect"), timeouts.get("pool")
        timeout = aiohttp.ClientTimeout(
            total=None,
            # aiohttp's "connect" covers waiting for a pooled connection plus opening one.
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=timeouts.get("read"),
        )
        body = await request.aread()
        try:
            response = await self._client().request(
                request.method,
                # encoded=True: the URL exactly as httpx built it, not normalised again.
                _yarl_url(request.url),
                data=body or None,
                headers=request.headers.multi_items(),
                timeout=timeout,
                allow_redirects=False,
                compress=None,
            )
        except Exception as exc:
            mapped = _map_error(exc, request, reading=False)
            if mapped is None:
                raise
            raise mapped from exc
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            request=request,
            extensions={**_HTTP_VERSION, "reason_phrase": (response.reason or "").encode("ascii", "replace")},
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            try:
                await session.close()
            except RuntimeError:  # its event loop is gone; nothing is left to close
                pass


def _yarl_url(url: httpx.URL) -> Any:
    import yarl

    return yarl.URL(str(url), encoded=True)


def _map_error(exc: BaseException, request: httpx.Request, *, reading: bool) -> Exception | None:
    """The httpx exception for an aiohttp failure; None for what is not a transport failure (a bug).

    Messages never include the URL: a sessionWebhook's query is a credential.
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout("timed out connecting", request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx.ReadTimeout("timed out waiting for the server", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Refused, unreachable, DNS, TLS handshake or certificate: the request never left.
        return httpx.ConnectError(str(exc.os_error) or type(exc).__name__, request=request)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol("the URL cannot be requested", request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        text = (
            "peer closed connection without sending complete message body"
            if reading
            else "Server disconnected without sending a response."
        )
        return httpx.RemoteProtocolError(text, request=request)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(
            f"malformed or incomplete response ({type(exc).__name__})", request=request
        )
    if isinstance(exc, aiohttp.ClientError | OSError):
        # A socket error once the connection was up: the server may have the request.
        return httpx.ReadError(f"connection failed ({type(exc).__name__})", request=request)
    return None
