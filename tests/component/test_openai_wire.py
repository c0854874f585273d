"""The OpenAI agent on the wire, against raw loopback servers (``tests.component.rawhttp``): what the fake
OpenAI server cannot do on purpose (a body in odd pieces, a hang-up, a cut-off stream, gzip), and what the
agent sends.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from edgecrab.agents.base import AgentError
from edgecrab.agents.openai import OpenAIAgent
from edgecrab.config import AgentConfig
from edgecrab.events import AgentRequest, AgentResult
from tests.component.rawhttp import SSE_HEAD, chunk, json_answer, read_request, response, serve

pytestmark = pytest.mark.anyio

KEY = "sk-wire-secret-0042"


def make_agent(base_url: str) -> OpenAIAgent:
    config = AgentConfig(
        type="openai", base_url=base_url, model="fake-model", api_key=KEY, timeout_s=10.0, max_retries=2
    )
    return OpenAIAgent(config, retry_base_s=0.01)


def conversation(*texts: str) -> AgentRequest:
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]
    return AgentRequest(messages=messages, session_key="dm:robot:alice", message_id="msg-1")


async def run(base_url: str, request: AgentRequest | None = None) -> AgentResult:
    agent = make_agent(base_url)
    try:
        return await agent.run(request or conversation("hi"))
    finally:
        await agent.aclose()


async def error_of(base_url: str) -> AgentError:
    with pytest.raises(AgentError) as info:
        await run(base_url)
    assert_no_key(info.value)
    return info.value


def assert_no_key(error: BaseException) -> None:
    text = f"{error} {error!r} {error.args!r} {getattr(error, 'cause', '')}"
    assert KEY not in text and "Bearer" not in text, text


def sse(*events: dict[str, Any] | str) -> list[bytes]:
    return [
        b"data: " + (e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)).encode() + b"\n\n"
        for e in events
    ]


def delta(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


# -- the request -----------------------------------------------------------------------------------


async def test_the_request_carries_the_conversation_and_the_headers() -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(json_answer({"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}))
            await writer.drain()

    request = conversation('你好 \u2028 "quoted" \\ 🦀')
    async with serve(answer) as (base, _):
        assert (await run(base + "/v1", request)).text == "ok"
    [(line, headers, body)] = seen
    assert line == "POST /v1/chat/completions HTTP/1.1"
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["accept"] == "text/event-stream, application/json"
    assert headers["user-agent"] == "edgecrab"
    sent = json.loads(body)
    assert sent["messages"][-1] == {"role": "user", "content": request.messages[0]["content"]}
    assert (sent["model"], sent["stream"], sent["stream_options"]) == (
        "fake-model",
        True,
        {"include_usage": True},
    )


async def test_a_redirect_is_not_followed() -> None:
    lines: list[str] = []

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, _, _ = await read_request(reader)
            lines.append(line)
            writer.write(response(b"", "307 Temporary Redirect", "Location: /elsewhere/chat/completions\r\n"))
            await writer.drain()

    async with serve(redirect) as (base, _):
        error = await error_of(base)
    assert str(error) == "the agent answered with a redirect (HTTP 307): check agent.base_url"
    assert lines == ["POST /chat/completions HTTP/1.1"]


# -- reading the stream ----------------------------------------------------------------------------


async def test_a_gzip_encoded_stream_is_decoded() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = gzip.compress(b"".join(sse(delta("squeezed "), delta("answer"), "[DONE]")))
        writer.write(response(body, extra="Content-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"))
        await writer.drain()

    async with serve(answer) as (base, _):
        assert (await run(base)).text == "squeezed answer"


async def test_events_split_anywhere_and_every_sse_line_end_are_read() -> None:
    """Pieces end inside a multi-byte character and between the CR and LF of a line end; the events end in
    CRLF, CR or LF; a comment and a blank line in between."""
    events = [
        b'data: {"choices":[{"delta":{"content":"one \xe4\xbd',
        b'\xa0 "}}]}\r',
        b'\n\r\ndata: {"choices":[{"delta":{"content":"two "}}]}\r\r',
        b': keep-alive\n\ndata: {"choices":[{"delta":{"content":"three"}}]}\n',
        b"\ndata: [DONE]\r\n\r\n",
    ]

    async def pieces(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD)
        for piece in events:
            writer.write(chunk(piece))
            await writer.drain()
            await asyncio.sleep(0.005)  # separate reads on the client's side, most of the time
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with serve(pieces) as (base, _):
        assert (await run(base)).text == "one 你 two three"


async def test_only_sse_line_ends_split_a_line() -> None:
    """A raw U+2028 (legal inside a JSON string) stays in its data line: httpx's aiter_lines would split it
    (it splits as str.splitlines does)."""
    event = json.dumps(delta("one\u2028two\x85three\x0cfour\u2029five"), ensure_ascii=False)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + b"".join(chunk(c) for c in sse(event, "[DONE]")) + b"0\r\n\r\n")
        await writer.drain()

    async with serve(answer) as (base, _):
        assert (await run(base)).text == "one\u2028two\x85three\x0cfour\u2029five"


# -- failures --------------------------------------------------------------------------------------


async def test_an_error_status_with_a_json_body_gives_the_servers_reason_without_the_key() -> None:
    async def rejected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                json_answer(
                    {"error": {"message": f"model nope does not exist (key {KEY})"}}, "400 Bad Request"
                )
            )
            await writer.drain()

    async with serve(rejected) as (base, _):
        error = await error_of(base)
    assert str(error) == "the agent rejected the request (HTTP 400): model nope does not exist (key ***)"


async def test_429_is_retried_after_its_retry_after() -> None:
    requests: list[float] = []

    async def limited_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            requests.append(time.monotonic())
            if len(requests) == 1:
                writer.write(
                    json_answer(
                        {"error": {"message": "slow down"}}, "429 Too Many Requests", "Retry-After: 0.3\r\n"
                    )
                )
            else:
                events = b"".join(chunk(c) for c in sse(delta("after the wait"), "[DONE]"))
                writer.write(SSE_HEAD + events + b"0\r\n\r\n")
            await writer.drain()

    async with serve(limited_once) as (base, _):
        result = await run(base)
    assert result.text == "after the wait"
    assert len(requests) == 2 and requests[1] - requests[0] >= 0.3


async def test_a_stream_cut_off_mid_answer_is_reported_not_retried() -> None:
    requests = 0

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(SSE_HEAD + chunk(sse(delta("half an "))[0]) + b"a\r\nhalf")
        await writer.drain()
        # serve() closes the connection: the chunked body never ends

    async with serve(cut) as (base, _):
        error = await error_of(base)
    assert str(error) == "the agent's answer was cut off — /retry to try again"
    assert "Response payload is not completed" in error.cause
    assert requests == 1  # a retry would bill twice for the part already answered


async def test_a_hang_up_before_any_answer_is_retried() -> None:
    requests = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1

    async with serve(hang_up) as (base, _):
        error = await error_of(base)
    # httpx-aiohttp maps aiohttp's ServerDisconnectedError onto httpx.ConnectTimeout; failure_kind reads the
    # cause, so the user is not told the agent could not be reached when it was, and hung up.
    assert str(error).startswith("the agent closed the connection unexpectedly")
    assert "Server disconnected" in error.cause
    assert requests == 3  # the first attempt and max_retries=2 more


@contextmanager
def port_that_refuses() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


async def test_a_refused_connection_names_the_host_but_neither_key_nor_header() -> None:
    with port_that_refuses() as port:
        error = await error_of(f"http://127.0.0.1:{port}/v1")
    assert str(error) == f"could not reach the agent at 127.0.0.1:{port} — is it running? /retry to try again"
    assert "Connect call failed" in error.cause
