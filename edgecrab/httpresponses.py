"""What comes back from the aiohttp transport, in httpx's terms: answers read whole (:class:`FastResponse`),
answers read as they arrive (:class:`StreamResponse`), and failures (:func:`_map_error`).

Errors map onto httpx's tree by what they say about the request, because callers decide on that whether a
retry can duplicate it:

* the connection could not be made (refused, DNS, TLS, connect timeout): :class:`httpx.ConnectError` /
  :class:`httpx.ConnectTimeout` -- nothing was sent;
* the server went away after the request was written (disconnect before or during the response, a
  truncated body, a malformed response): :class:`httpx.RemoteProtocolError`, or :class:`httpx.ReadError`
  for a socket error -- the server may have acted on it;
* no data for the read timeout: :class:`httpx.ReadTimeout`.

Messages never contain the URL: a sessionWebhook's query is a credential.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

__all__ = ["FastResponse", "StreamResponse"]


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
