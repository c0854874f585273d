"""The aiohttp transport under httpx: :class:`AiohttpTransport`, its error mapping and its direct POST.

:class:`AiohttpTransport` is an ``httpx.AsyncBaseTransport`` that sends with an ``aiohttp.ClientSession``;
:func:`edgecrab.httpclient.async_client` mounts it (that module says why).

Failures map onto httpx's exceptions by what they say about the request (:mod:`edgecrab.httpresponses`).

Bodies are streamed: ``client.stream(...)`` yields chunks as they arrive (SSE), and closing a response that
was not read to the end closes its connection at once (``/stop``) instead of returning it to the pool.

:meth:`AiohttpTransport.post_bytes` is the short way of :func:`edgecrab.httpclient.post_bytes`: one POST
straight on the session, its whole answer as a :class:`FastResponse`. :meth:`AiohttpTransport.stream_post` is
the streaming one of :func:`edgecrab.httpclient.open_stream`: the head read, the body left to a
:class:`StreamResponse`. :func:`simple_url_parts` tells which URLs can go to aiohttp as they are, without
httpx's URL parse.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx
import yarl

from edgecrab.httpresponses import FastResponse, StreamResponse, _map_error

__all__ = ["AiohttpTransport", "FastResponse", "StreamResponse", "simple_url_parts"]

_HTTP_VERSION = {"http_version": b"HTTP/1.1"}


_SIMPLE_URL = re.compile(
    r"(https?)://"
    r"((?:[a-z0-9-]+\.)*[a-z0-9-]+\.?)"  # lower-case ASCII host name or IPv4 address, no user info
    r"(?::([1-9][0-9]{0,4}))?"
    r"(?:/(?:[A-Za-z0-9_~-][A-Za-z0-9._~-]*)?)+"  # no "." or ".." segment, nothing to percent-encode
    r"(?:\?[A-Za-z0-9._~=&-]*)?"  # a query of plain characters, no fragment
)
_IPV4_STYLE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")  # httpx's test for "this is an IPv4 address"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")  # what ipaddress.IPv4Address accepts
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SIMPLE_URL_MAX = 4096


def simple_url_parts(url: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of a URL simple enough that every parser reads it alike; None otherwise.

    Simple: ``http(s)://host[:port]/path[?query]`` with a lower-case ASCII host name (or a valid IPv4
    address), no user info, a non-default port, no ``.``/``..`` path segment, no fragment, and no
    character that would need percent-encoding. httpx leaves such a URL unchanged (``str(httpx.URL(url))
    == url``) and reads the same scheme, host and port (``port`` None: the scheme's default), which is what
    lets callers skip ``httpx.URL``'s 14 us parse. Anything else (None) must go through ``httpx.URL``.
    """
    if len(url) > _SIMPLE_URL_MAX:
        return None
    match = _SIMPLE_URL.fullmatch(url)
    if match is None:
        return None
    scheme, host, port_text = match.groups()
    if _IPV4_STYLE.fullmatch(host) and not _IPV4.fullmatch(host):
        return None  # httpx refuses it as an invalid IPv4 address
    if port_text is None:
        return scheme, host, None
    port = int(port_text)
    if port > 65535 or port == _DEFAULT_PORTS[scheme]:
        return None  # out of range, or httpx would drop it: not "unchanged"
    return scheme, host, port


def _target_url(url: str) -> yarl.URL:
    """The URL aiohttp is to request: exactly what the httpx path sends (httpx's reading, not re-quoted)."""
    if simple_url_parts(url) is not None:
        return yarl.URL(url, encoded=True)
    parsed = httpx.URL(url)  # InvalidURL, as client.post raises
    if parsed.scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(_unsupported(parsed), request=httpx.Request("POST", parsed))
    return _yarl_url(parsed)


def _unsupported(url: httpx.URL) -> str:
    if not url.scheme:
        return "Request URL is missing an 'http://' or 'https://' protocol."
    return f"Request URL has an unsupported protocol '{url.scheme}://'."


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


@functools.lru_cache(maxsize=4)
def default_ssl_context(verify: bool = True) -> ssl.SSLContext:
    """The TLS context for ``verify`` (True: httpx's trust store, certifi, not aiohttp's system default),
    made once per process and shared by every transport. Loading the trust store takes 20-35 ms: done
    lazily, on each transport's first request, it stalled the event loop (and the acks) under load."""
    return httpx.create_ssl_context(verify=verify)


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
        # Made here, when the client is built (at start-up), not on the first request.
        self._ssl = verify if isinstance(verify, ssl.SSLContext) else default_ssl_context(verify)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or session.closed or self._loop is not loop:
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
            raise httpx.UnsupportedProtocol(_unsupported(request.url), request=request)
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

    async def post_bytes(
        self,
        url: str,
        content: bytes,
        headers: Mapping[str, str],
        timeout: float | None,  # noqa: ASYNC109 -- as httpclient.post_bytes
    ) -> FastResponse:
        """:func:`edgecrab.httpclient.post_bytes`'s short way: one POST on the session, the whole body read,
        errors mapped."""
        response = await self._post(url, content, headers, _client_timeout(timeout))
        try:
            # Covered by sock_read like any read; on failure or cancellation aiohttp closes the connection.
            body = await response.read()
        except Exception as exc:
            response.close()
            mapped = _map_error(exc, None, reading=True, url=url)
            if mapped is None:
                raise
            raise mapped from exc
        except BaseException:
            response.close()
            raise
        response_headers = response.headers
        encoding = response_headers.get("Content-Encoding")
        if encoding and encoding.lower() != "identity":
            # auto_decompress is off (httpx decodes for the transport path): decode as httpx would.
            body = httpx.Response(response.status, headers=list(response.raw_headers), content=body).content
        return FastResponse(response.status, body, response_headers)

    async def stream_post(
        self,
        url: str,
        content: bytes,
        headers: Any,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 -- per-read and connect timeouts, as httpx's
    ) -> StreamResponse:
        """:func:`edgecrab.httpclient.open_stream`'s short way: one POST on the session, up to the response
        head; the body is the :class:`StreamResponse`'s to read and its ``close`` to release. Errors mapped
        as :meth:`post_bytes`'s (messages without the URL or the headers)."""
        return StreamResponse(await self._post(url, content, headers, timeout), url)

    async def _post(
        self,
        url: str,
        content: bytes,
        headers: Any,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 -- aiohttp's own, per read
    ) -> aiohttp.ClientResponse:
        """The POST on the session, up to the response head, no redirects; errors mapped."""
        try:
            return await self._client().request(
                "POST",
                _target_url(url),
                data=content or None,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                compress=None,
            )
        except Exception as exc:
            mapped = _map_error(exc, None, reading=False, url=url)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            try:
                await session.close()
            except RuntimeError:  # its event loop is gone; nothing is left to close
                pass


def _yarl_url(url: httpx.URL) -> yarl.URL:
    return yarl.URL(str(url), encoded=True)


_TIMEOUTS: dict[float | None, aiohttp.ClientTimeout] = {}


def _client_timeout(timeout: float | None) -> aiohttp.ClientTimeout:
    """aiohttp's reading of ``httpx.Timeout(timeout)``, as ``handle_async_request`` maps it."""
    found = _TIMEOUTS.get(timeout)
    if found is None:
        found = aiohttp.ClientTimeout(
            total=None,
            connect=None if timeout is None else 2 * timeout,  # pool wait + connect
            sock_connect=timeout,
            sock_read=timeout,
        )
        if len(_TIMEOUTS) < 64:
            _TIMEOUTS[timeout] = found
    return found


_HTTPX_TIMEOUTS: dict[tuple[float | None, float | None, float | None], aiohttp.ClientTimeout] = {}


def aiohttp_timeout(timeout: httpx.Timeout) -> aiohttp.ClientTimeout:
    """aiohttp's reading of an ``httpx.Timeout``, as ``handle_async_request`` maps a request's timeouts."""
    key = (timeout.connect, timeout.read, timeout.pool)
    found = _HTTPX_TIMEOUTS.get(key)
    if found is None:
        connect, read, pool = key
        found = aiohttp.ClientTimeout(
            total=None,
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=read,
        )
        if len(_HTTPX_TIMEOUTS) < 64:
            _HTTPX_TIMEOUTS[key] = found
    return found
