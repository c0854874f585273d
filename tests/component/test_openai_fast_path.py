"""The OpenAI agent on :func:`edgecrab.httpclient.open_stream`'s short way, over real loopback sockets.

Every agent that is meant to take the short way has ``client.stream`` broken, so a silent fall back to
httpx cannot pass for it. Where the outcome should equal httpx's, the same scenario also runs on the long
way (an ``httpx.AsyncClient`` on the same :class:`AiohttpTransport`) and the two are compared.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from typing import Any

import anyio
import httpx
import pytest

from edgecrab.agents.base import AgentError
from edgecrab.agents.openai import OpenAIAgent
from edgecrab.config import AgentConfig
from edgecrab.events import AgentRequest, AgentResult, Usage
from edgecrab.httpclient import async_client, open_stream
from edgecrab.httptransport import AiohttpTransport, StreamResponse
from edgecrab.testing.fake_openai import FakeOpenAI
from tests.component.test_httpclient import read_request, response, serve

pytestmark = pytest.mark.anyio

KEY = "sk-fast-path-secret-0042"
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def no_stream(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("open_stream fell back to client.stream")


def make_agent(base_url: str, monkeypatch: pytest.MonkeyPatch, *, fast: bool = True) -> OpenAIAgent:
    config = AgentConfig(
        type="openai", base_url=base_url, model="fake-model", api_key=KEY, timeout_s=10.0, max_retries=2
    )
    if not fast:  # the long way: httpx's Request/Response on the same transport
        return OpenAIAgent(config, transport=AiohttpTransport(), retry_base_s=0.01)
    agent = OpenAIAgent(config, retry_base_s=0.01)
    monkeypatch.setattr(agent._client, "stream", no_stream)
    return agent


def conversation(*texts: str) -> AgentRequest:
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]
    return AgentRequest(messages=messages, session_key="dm:robot:alice", message_id="msg-1")


async def run(agent: OpenAIAgent, request: AgentRequest | None = None) -> AgentResult:
    try:
        return await agent.run(request or conversation("hi"))
    finally:
        await agent.aclose()


async def error_of(agent: OpenAIAgent) -> AgentError:
    with pytest.raises(AgentError) as info:
        await run(agent)
    return info.value


def assert_no_key(error: BaseException) -> None:
    text = f"{error} {error!r} {error.args!r} {getattr(error, 'cause', '')}"
    assert KEY not in text and "Bearer" not in text, text


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def sse(*events: dict[str, Any] | str) -> list[bytes]:
    return [
        b"data: " + (e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)).encode() + b"\n\n"
        for e in events
    ]


def delta(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


# -- answers ---------------------------------------------------------------------------------------


async def test_a_streamed_answer_takes_the_short_way_with_the_clients_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with FakeOpenAI(api_key=KEY, token_delay_s=0.001) as fake:
        agent = make_agent(fake.base_url, monkeypatch)
        try:
            first = await agent.run(conversation("hello there edgecrab"))
            second = await agent.run(conversation("again"))
        finally:
            await agent.aclose()
    assert first.text == "You said: hello there edgecrab" and second.text == "You said: again"
    sent = fake.usages[0]
    assert (
        first.usage == Usage(sent["prompt_tokens"], sent["completion_tokens"])
        and sent["completion_tokens"] == 5
    )
    headers = {k.lower(): v for k, v in fake.request_headers[0].items()}
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["accept"] == "text/event-stream, application/json"
    assert headers["user-agent"] == "edgecrab"
    assert headers["content-type"] == "application/json"
    assert fake.requests[0]["stream_options"] == {"include_usage": True}
    assert fake.peers[0] == fake.peers[1]  # read to the end: the connection went back to the pool


async def test_the_request_is_byte_for_byte_what_httpx_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            completion = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}
            writer.write(
                response(json.dumps(completion).encode(), extra="Content-Type: application/json\r\n")
            )
            await writer.drain()

    request = conversation('你好 \u2028 "quoted" \\ 🦀')
    async with serve(answer) as (base, _):
        for fast in (True, False):
            assert (await run(make_agent(base + "/v1", monkeypatch, fast=fast), request)).text == "ok"
    (fast_line, fast_headers, fast_body), (slow_line, slow_headers, slow_body) = seen
    assert fast_line == slow_line == "POST /v1/chat/completions HTTP/1.1"
    assert (
        fast_body == slow_body
        and json.loads(fast_body)["messages"][-1]["content"] == request.messages[0]["content"]
    )
    assert fast_headers == slow_headers  # names, values, Host, Content-Length, Accept-Encoding and all


async def test_a_gzip_encoded_stream_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = gzip.compress(b"".join(sse(delta("squeezed "), delta("answer"), "[DONE]")))
        writer.write(response(body, extra="Content-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"))
        await writer.drain()

    async with serve(answer) as (base, _):
        assert (await run(make_agent(base, monkeypatch))).text == "squeezed answer"


# -- lines -----------------------------------------------------------------------------------------

PIECES = [
    b'data: {"a"',
    b":1}\r",
    b"\n\r\ndata: x\rdata: y\n",
    "data: 你".encode()[:-1],
    "你".encode()[-1:] + b" bad \xff byte\r\n",
    b": keep-alive\r",
    b"\r",
    b"",
    b"data: last line without an end\r",
]


async def test_lines_split_as_httpx_splits_them(monkeypatch: pytest.MonkeyPatch) -> None:
    async def pieces(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(SSE_HEAD)
            for piece in PIECES:
                if piece:
                    writer.write(chunk(piece))
                    await writer.drain()
                    await asyncio.sleep(0.005)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with serve(pieces) as (base, _), async_client(timeout=5) as client:
        monkeypatch.setattr(client, "stream", no_stream)
        async with open_stream(client, base + "/", b"{}", {}) as fast:
            assert isinstance(fast, StreamResponse)
            fast_lines = [line async for line in fast.aiter_lines()]
        async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=5) as slow_client:
            async with slow_client.stream("POST", base + "/", content=b"{}") as slow:
                slow_lines = [line async for line in slow.aiter_lines()]
    assert fast_lines == slow_lines
    assert fast_lines[:4] == ['data: {"a":1}', "", "data: x", "data: y"]
    assert fast_lines[4] == "data: 你 bad \ufffd byte"
    assert fast_lines[-1] == "data: last line without an end"


async def test_only_sse_line_ends_split_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw U+2028 (legal inside a JSON string) stays in its data line, unlike str.splitlines."""
    event = json.dumps(delta("one\u2028two\x85three\x0cfour"), ensure_ascii=False)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + b"".join(chunk(c) for c in sse(event, "[DONE]")) + b"0\r\n\r\n")
        await writer.drain()

    async with serve(answer) as (base, _):
        assert (await run(make_agent(base, monkeypatch))).text == "one\u2028two\x85three\x0cfour"


# -- failures --------------------------------------------------------------------------------------


async def both_ways(handler: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[AgentError, AgentError]:
    errors = []
    async with serve(handler) as (base, _):
        for fast in (True, False):
            errors.append(await error_of(make_agent(base, monkeypatch, fast=fast)))
    for error in errors:
        assert_no_key(error)
    return errors[0], errors[1]


async def test_an_error_status_with_a_json_body_reads_as_on_the_long_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def rejected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            body = json.dumps({"error": {"message": f"model nope does not exist (key {KEY})"}}).encode()
            writer.write(response(body, "400 Bad Request", "Content-Type: application/json\r\n"))
            await writer.drain()

    fast, slow = await both_ways(rejected, monkeypatch)
    assert str(fast) == "the agent rejected the request (HTTP 400): model nope does not exist (key ***)"
    assert (str(fast), fast.cause) == (str(slow), slow.cause)


async def test_401_from_the_fake_names_the_api_key_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeOpenAI(api_key="another-key") as fake:
        error = await error_of(make_agent(fake.base_url, monkeypatch))
    assert str(error) == "the agent returned 401: check agent.api_key"
    assert_no_key(error)


async def test_429_is_retried_after_its_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    requests: list[float] = []

    async def limited_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            requests.append(time.monotonic())
            if len(requests) % 2:
                body = b'{"error": {"message": "slow down"}}'
                extra = "Content-Type: application/json\r\nRetry-After: 0.3\r\n"
                writer.write(response(body, "429 Too Many Requests", extra))
            else:
                events = b"".join(chunk(c) for c in sse(delta("after the wait"), "[DONE]"))
                writer.write(SSE_HEAD + events + b"0\r\n\r\n")
            await writer.drain()

    async with serve(limited_once) as (base, _):
        result = await run(make_agent(base, monkeypatch))
    assert result.text == "after the wait"
    assert len(requests) == 2 and requests[1] - requests[0] >= 0.3


async def test_a_stream_cut_off_mid_answer_reads_as_on_the_long_way(monkeypatch: pytest.MonkeyPatch) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(sse(delta("half an "))[0]) + b"a\r\nhalf")
        await writer.drain()
        await asyncio.sleep(0.05)
        # serve() closes the connection: the chunked body never ends

    fast, slow = await both_ways(cut, monkeypatch)
    assert str(fast) == "the agent's answer was cut off — /retry to try again"
    assert (str(fast), fast.cause) == (str(slow), slow.cause)
    assert "RemoteProtocolError" in fast.cause


async def test_a_hang_up_before_any_answer_is_retried_and_reads_as_on_the_long_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    fast, slow = await both_ways(hang_up, monkeypatch)
    assert str(fast) == "the agent closed the connection unexpectedly — /retry to try again"
    assert (str(fast), fast.cause) == (str(slow), slow.cause)


async def test_a_refused_connection_names_neither_key_nor_header(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket_that_refuses() as port:
        agent = make_agent(f"http://127.0.0.1:{port}/v1", monkeypatch)
        error = await error_of(agent)
        assert str(error).startswith("could not reach the agent at 127.0.0.1:")
        assert_no_key(error)
        async with async_client(headers={"Authorization": f"Bearer {KEY}"}) as client:
            monkeypatch.setattr(client, "stream", no_stream)
            with pytest.raises(httpx.ConnectError) as info:
                async with open_stream(client, f"http://127.0.0.1:{port}/v1/chat/completions", b"{}", {}):
                    pass
            assert_no_key(info.value)


class socket_that_refuses:  # noqa: N801 -- used as a context manager
    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc_info: object) -> None:
        self._sock.close()


async def test_cancelling_mid_stream_closes_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeOpenAI(api_key=KEY, token_delay_s=5.0, reply="one two three four") as fake:
        agent = make_agent(fake.base_url, monkeypatch)
        try:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(agent.run, conversation("hi"))
                    await fake.wait_for(lambda: fake.tokens_sent >= 1)
                    started = time.monotonic()
                    tg.cancel_scope.cancel()
                await fake.wait_disconnects(1)
            assert time.monotonic() - started < 1.0
            assert fake.completed == 0
        finally:
            await agent.aclose()


async def test_leaving_open_stream_before_the_end_closes_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "a b c d"}], "stream": True}).encode()
    async with FakeOpenAI(token_delay_s=5.0) as fake, async_client(timeout=5) as client:
        monkeypatch.setattr(client, "stream", no_stream)
        with anyio.fail_after(5):
            async with open_stream(client, fake.base_url + "/chat/completions", body, {}) as answer:
                async for line in answer.aiter_lines():
                    if line.startswith("data:"):
                        break  # answer is still referenced: only open_stream's exit can close it
            started = time.monotonic()
            await fake.wait_disconnects(1)
        assert time.monotonic() - started < 1.0 and answer.status_code == 200


# -- the long way ----------------------------------------------------------------------------------


async def test_clients_with_settings_the_short_way_would_skip_take_the_long_way() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["x-client"])
        return httpx.Response(200, content=b"data: [DONE]\n\n")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), headers={"X-Client": "mock"}) as c:
        async with open_stream(c, "http://x.test/", b"{}", {}) as answer:
            assert isinstance(answer, httpx.Response)
            assert [line async for line in answer.aiter_lines()] == ["data: [DONE]", ""]
    assert calls == ["mock"]

    async with async_client(follow_redirects=True) as client:
        long_way: list[str] = []
        real_stream = client.stream

        def stream(*args: Any, **kwargs: Any) -> Any:
            long_way.append(args[1])
            return real_stream(*args, **kwargs)

        client.stream = stream  # type: ignore[method-assign]
        with pytest.raises(httpx.ConnectError):
            async with open_stream(client, "http://127.0.0.1:9/", b"{}", {}):
                pass
    assert long_way == ["http://127.0.0.1:9/"]
