"""The aiohttp transport under httpx: :class:`AiohttpTransport`, its error mapping and its direct POST.

:class:`AiohttpTransport` is an ``httpx.AsyncBaseTransport`` that sends with an ``aiohttp.ClientSession``;
:func:`edgecrab.httpclient.async_client` mounts it (that module says why).

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

:meth:`AiohttpTransport.post_bytes` is the short way of :func:`edgecrab.httpclient.post_bytes`: one POST
straight on the session, its whole answer as a :class:`FastResponse`. :meth:`AiohttpTransport.stream_post` is
the streaming one of :func:`edgecrab.httpclient.open_stream`: the head read, the body left to a
:class:`StreamResponse`. :func:`simple_url_parts` tells which URLs can go to aiohttp as they are, without
httpx's URL parse.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import json
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import yarl

__all__ = ["AiohttpTransport", "FastResponse", "StreamResponse", "simple_url_parts"]

_HTTP_VERSION = {"http_version": b"HTTP/1.1"}


@dataclass(frozen=True, slots=True)
class FastResponse:
    """A whole response to :func:`post_bytes`: status, headers (case-insensitive lookup) and body bytes.

    ``content`` is already decoded from any ``Content-Encoding``, as httpx's ``Response.content`` is.
    """

    status_code: int
    content: bytes
    headers: Mapping[str, str]

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        """The body as text: the charset of ``Content-Type`` if it names a known one, else UTF-8."""
        return self.content.decode(_charset(self.headers.get("content-type", "")), errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _charset(content_type: str) -> str:
    _, found, rest = content_type.lower().partition("charset=")
    if found:
        name = rest.split(";", 1)[0].strip().strip("\"'")
        try:
            return codecs.lookup(name).name
        except LookupError:
            pass
    return "utf-8"


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class StreamResponse:
    """A response to :meth:`AiohttpTransport.stream_post` whose body is still coming: what the OpenAI agent
    reads of an ``httpx.Response`` (``status_code``, ``headers``, ``aread``, ``aiter_bytes``,
    ``aiter_lines``), without httpx's objects.

    ``headers`` is aiohttp's case-insensitive view. The body is decoded from any ``Content-Encoding`` as httpx
    decodes it; text is decoded by the charset of ``Content-Type`` or UTF-8, bad bytes replaced, as httpx's
    ``aiter_text``. Read failures raise the httpx exceptions the transport's ``client.stream`` would.
    :meth:`close` (``open_stream``'s exit) returns the connection to the pool if the body was read to the end
    and closes it otherwise (``/stop``, an error), as the transport's ``_Body.aclose`` does.
    """

    __slots__ = ("_consumed", "_content", "_response", "_url", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse, url: str) -> None:
        self._response = response
        self._url = url
        self._consumed = False
        self._content: bytes | None = None
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers

    @property
    def encoding(self) -> str:
        return _charset(self.headers.get("content-type", ""))

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives, undecoded; once only (``httpx.StreamConsumed`` after)."""
        if self._consumed:
            raise httpx.StreamConsumed()
        self._consumed = True
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except Exception as exc:
            mapped = _map_error(exc, None, reading=True, url=self._url)
            if mapped is None:
                raise
            raise mapped from exc

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, decoded from its ``Content-Encoding``."""
        if self._content is not None:
            if self._content:
                yield self._content
            return
        encoding = self.headers.get("Content-Encoding")
        if not encoding or encoding.lower() == "identity":
            async for chunk in self.aiter_raw():
                yield chunk
            return
        # Rare (only httpx's default Accept-Encoding asks for it): httpx's own decoders, via a Response.
        decoded = httpx.Response(
            self.status_code, headers=list(self._response.raw_headers), stream=_RawStream(self.aiter_raw())
        )
        async for chunk in decoded.aiter_bytes():
            yield chunk

    async def aread(self) -> bytes:
        """The whole (rest of the) body, decoded from its ``Content-Encoding``; kept for a second call."""
        if self._content is None:
            self._content = b"".join([chunk async for chunk in self.aiter_bytes()])
        return self._content

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body's lines, split on ``\\r\\n``, ``\\r`` or ``\\n`` (SSE's line ends), without them."""
        decoder = codecs.getincrementaldecoder(self.encoding)(errors="replace")
        pending = ""  # the start of a line whose end has not arrived
        cr = False  # the text so far ended with "\r": a "\n" next is part of that line end
        async for chunk in self.aiter_bytes():
            text = decoder.decode(chunk)
            if not text:
                continue
            if cr:
                text = "\r" + text
            cr = text.endswith("\r")
            if cr:
                text = text[:-1]
            lines = _LINE_BREAK.split(pending + text)
            pending = lines.pop()
            for line in lines:
                yield line
        text = decoder.decode(b"", final=True)
        if cr:
            text = "\r" + text
        lines = _LINE_BREAK.split(pending + text)
        pending = lines.pop()
        for line in lines:
            yield line
        if pending:
            yield pending

    def close(self) -> None:
        """Release the connection: back to the pool if the body was read to the end, else closed."""
        response = self._response
        if response.content.at_eof():
            response.release()
        else:
            response.close()


class _RawStream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


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
        target = _target_url(url)
        try:
            response = await self._client().request(
                "POST",
                target,
                data=content or None,
                headers=headers,
                timeout=_client_timeout(timeout),
                allow_redirects=False,
                compress=None,
            )
        except Exception as exc:
            mapped = _map_error(exc, None, reading=False, url=url)
            if mapped is None:
                raise
            raise mapped from exc
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
        target = _target_url(url)
        try:
            response = await self._client().request(
                "POST",
                target,
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
        return StreamResponse(response, url)

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


def _map_error(
    exc: BaseException, request: httpx.Request | None, *, reading: bool, url: str = ""
) -> Exception | None:
    """The httpx exception for an aiohttp failure; None for what is not a transport failure (a bug).

    Messages never include the URL: a sessionWebhook's query is a credential. Without ``request``, the
    exception's request is built from ``url`` (only on failure: building one costs as much as sending).
    """
    if request is None:
        return _map_error(exc, httpx.Request("POST", url), reading=reading)
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
