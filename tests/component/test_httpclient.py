"""edgecrab.httpclient and edgecrab.httptransport over real loopback sockets: httpx's API and exceptions
on aiohttp's pool.

The servers here are raw asyncio protocols, so each test controls exactly what the client sees: a response
in pieces, a hang-up before or during the response, silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import httpx
import pytest

from edgecrab.httpclient import async_client
from edgecrab.httpresponses import _map_error
from edgecrab.httptransport import AiohttpTransport

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[str, list[Any]]]:
    """A TCP server on 127.0.0.1 running ``handler`` per connection; yields (base URL, peer list)."""
    peers: list[Any] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername"))
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", peers
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return head[0], headers, body


def response(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line, headers, body = await read_request(reader)
        payload = json.dumps({"line": line, "headers": headers, "body": body.decode()}).encode()
        writer.write(
            response(payload, extra="Content-Type: application/json\r\nX-Twice: a\r\nX-Twice: b\r\n")
        )
        await writer.drain()


async def test_requests_and_responses_round_trip_and_the_connection_is_reused() -> None:
    async with serve(echo_forever) as (base, peers), async_client(timeout=5) as client:
        first = await client.post(f"{base}/robot/send?session=abc%20d", json={"text": "你好"})
        second = await client.get(f"{base}/again", headers={"x-custom": "1"})

    assert first.status_code == 200 and first.http_version == "HTTP/1.1" and first.reason_phrase == "OK"
    sent = first.json()
    assert sent["line"] == "POST /robot/send?session=abc%20d HTTP/1.1"
    assert json.loads(sent["body"]) == {"text": "你好"}
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["headers"]["user-agent"].startswith("python-httpx/")
    assert first.headers.get_list("x-twice") == ["a", "b"]
    assert second.json()["headers"]["x-custom"] == "1"
    assert len(peers) == 1  # keep-alive: both requests on one connection


async def test_a_compressed_body_is_decoded_by_httpx() -> None:
    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(gzip.compress(b'{"ok": true}'), extra="Content-Encoding: gzip\r\n"))
        await writer.drain()

    async with serve(gzipped) as (base, _), async_client() as client:
        assert (await client.get(base)).json() == {"ok": True}


async def test_a_body_streams_as_it_arrives_and_closing_early_closes_the_connection() -> None:
    closed = anyio.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for i in range(1000):
                event = f"data: {i}\n\n".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.05)
        except ConnectionError:
            closed.set()  # the client hung up

    async with serve(sse) as (base, _), async_client() as client:
        started = time.monotonic()
        async with client.stream("POST", base, json={}) as resp:
            lines = resp.aiter_lines()
            assert await lines.__anext__() == "data: 0"
            assert time.monotonic() - started < 1  # the first event, long before the body ends
            await lines.aclose()
        with anyio.fail_after(1):
            await closed.wait()


async def test_cancelling_a_request_in_flight_closes_its_connection_within_a_second() -> None:
    hung_up = anyio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if await reader.read() == b"":
            hung_up.set()

    async with serve(silent) as (base, _), async_client() as client:
        with anyio.move_on_after(0.2):
            await client.post(base, json={"q": 1})
        with anyio.fail_after(1):
            await hung_up.wait()


async def test_connection_refused_is_a_connect_error() -> None:
    async with serve(echo_forever) as (base, _):
        pass  # closed again: the port now refuses
    async with async_client() as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.post(base, json={})
    assert base.split("//")[1] not in str(info.value) or "Errno" in str(info.value)


async def test_a_hang_up_after_the_request_was_read_is_not_a_connect_error() -> None:
    # The server may have acted on the request: callers must not treat it as never sent.
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with serve(hang_up) as (base, _), async_client() as client:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await client.post(base, json={"q": 1})
    assert not isinstance(info.value, httpx.ConnectError)


async def test_a_truncated_body_is_a_remote_protocol_error() -> None:
    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async with serve(truncated) as (base, _), async_client() as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get(base)


async def test_silence_beyond_the_read_timeout_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async with serve(silent) as (base, _), async_client(timeout=httpx.Timeout(5, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(base)


async def test_an_unsupported_scheme_is_refused_before_any_connection() -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://127.0.0.1/x")


def test_error_mapping_by_what_happened_to_the_request() -> None:
    request = httpx.Request("POST", "https://oapi.dingtalk.com/robot/sendBySession?session=SECRET")
    key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
    cases: list[tuple[BaseException, type[httpx.TransportError]]] = [
        (
            aiohttp.ConnectionTimeoutError("Connection timeout to host ...session=SECRET"),
            httpx.ConnectTimeout,
        ),
        (aiohttp.SocketTimeoutError("Timeout on reading data from socket"), httpx.ReadTimeout),
        (aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused")), httpx.ConnectError),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError("Response payload is not completed"), httpx.RemoteProtocolError),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), httpx.ReadError),
    ]
    for exc, expected in cases:
        mapped = _map_error(exc, request, reading=False)
        assert type(mapped) is expected, (exc, mapped)
        assert "SECRET" not in str(mapped)
    assert _map_error(ValueError("a bug"), request, reading=False) is None


def test_the_transport_works_in_one_event_loop_after_another() -> None:
    transport = AiohttpTransport()

    async def one_request() -> int:
        async with serve(echo_forever) as (base, _):
            client = httpx.AsyncClient(transport=transport)
            status = (await client.get(base)).status_code
            await transport.aclose()
            return status

    assert anyio.run(one_request) == 200
    assert anyio.run(one_request) == 200


def test_a_proxy_in_the_environment_keeps_httpx_own_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    client = async_client()
    assert not isinstance(client._transport, AiohttpTransport)
    monkeypatch.delenv("HTTPS_PROXY")
    for name in ("https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(async_client()._transport, AiohttpTransport)


def test_transports_share_one_tls_context_made_when_they_are_built() -> None:
    # Loading the trust store takes 20-35 ms: never on a first request, on the event loop, under load.
    from edgecrab.httptransport import AiohttpTransport, default_ssl_context

    first, second = AiohttpTransport(), AiohttpTransport(max_connections=None)
    assert first._ssl is second._ssl is default_ssl_context(True)
    assert AiohttpTransport(verify=False)._ssl is default_ssl_context(False)
    assert default_ssl_context(False).verify_mode == ssl.CERT_NONE
    own = ssl.create_default_context()
    assert AiohttpTransport(verify=own)._ssl is own
