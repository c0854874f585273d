"""Raw HTTP/1.1 servers on 127.0.0.1 for tests that must control exactly what a client sees on the wire: an
answer in pieces, a hang-up before or during the answer, silence.

``serve(handler)`` runs ``handler(reader, writer)`` for each connection and yields the base URL and the list
of peers (one per connection, so a test can tell whether a connection was reused).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


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
    """One request: its request line, its headers (names lower-cased) and its body."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return head[0], headers, body


def response(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    """A whole answer with a Content-Length; ``extra`` is more header lines, each ending in CRLF."""
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def chunk(data: bytes) -> bytes:
    """One piece of a chunked body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def json_answer(payload: Any, status: str = "200 OK", extra: str = "") -> bytes:
    return response(json.dumps(payload).encode(), status, "Content-Type: application/json\r\n" + extra)
