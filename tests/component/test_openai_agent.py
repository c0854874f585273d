"""The OpenAI-compatible agent over real sockets against :class:`FakeOpenAI`, also run as a process."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from edgecrab.agents.base import AgentError
from edgecrab.agents.openai import OpenAIAgent
from edgecrab.config import AgentConfig
from edgecrab.events import AgentRequest, AgentResult, Usage
from edgecrab.testing.fake_openai import FakeOpenAI, split_tokens

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-test-very-secret-0001"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


def make_agent(base_url: str, **changes: Any) -> OpenAIAgent:
    config = AgentConfig(type="openai", base_url=base_url, model="fake-model", system_prompt="You are terse.")
    return OpenAIAgent(dataclasses.replace(config, **changes), retry_base_s=0.01)


def conversation(*texts: str) -> AgentRequest:
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]
    return AgentRequest(messages=messages, session_key="dm:robot:alice", message_id="msg-1")


async def run(agent: OpenAIAgent, request: AgentRequest) -> AgentResult:
    try:
        return await agent.run(request)
    finally:
        await agent.aclose()


async def error_of(agent: OpenAIAgent, request: AgentRequest | None = None) -> AgentError:
    with pytest.raises(AgentError) as info:
        await run(agent, request or conversation("hi"))
    return info.value


# -- answers ---------------------------------------------------------------------------------------


def test_split_tokens_round_trips() -> None:
    for text in ["", "a", "You said: hi there ", "  lead\nnew  line\t", "你好 🦀"]:
        assert "".join(split_tokens(text)) == text


async def test_streaming_text_and_usage_equal_the_fakes(fake: FakeOpenAI) -> None:
    fake.token_delay_s = 0.005
    result = await run(make_agent(fake.base_url), conversation("hello there edgecrab"))
    assert result.text == "You said: hello there edgecrab"
    sent = fake.usages[-1]
    assert result.usage == Usage(sent["prompt_tokens"], sent["completion_tokens"])
    assert result.usage == Usage(prompt_tokens=3 + 3, completion_tokens=5)  # system + user words; 5 tokens
    assert fake.tokens_sent == 5
    assert fake.requests[0]["stream"] is True
    assert fake.requests[0]["stream_options"] == {"include_usage": True}


async def test_fixed_usage_and_callable_reply() -> None:
    async with FakeOpenAI(reply=lambda messages: f"{len(messages)} messages", prompt_tokens=11) as fake:
        fake.completion_tokens = 22
        result = await run(make_agent(fake.base_url), conversation("a", "b", "c"))
    assert result.text == "4 messages"
    assert result.usage == Usage(11, 22)


async def test_non_streaming_json_answer(fake: FakeOpenAI) -> None:
    fake.mode = "json"
    result = await run(make_agent(fake.base_url), conversation("plain json please"))
    assert result.text == "You said: plain json please"
    assert result.usage == Usage(3 + 3, 5)
    assert fake.tokens_sent == 0


async def test_history_and_system_prompt_sent_in_order(fake: FakeOpenAI) -> None:
    request = conversation("first question", "first answer", "second question")
    await run(make_agent(fake.base_url, temperature=0.3), request)
    body = fake.requests[0]
    assert body["model"] == "fake-model"
    assert body["temperature"] == 0.3
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]


async def test_requests_system_prompt_overrides_the_config(fake: FakeOpenAI) -> None:
    request = conversation("hi")
    request.system_prompt = "From a hook."
    await run(make_agent(fake.base_url, temperature=None), request)
    assert fake.requests[0]["messages"][0] == {"role": "system", "content": "From a hook."}
    assert "temperature" not in fake.requests[0]


async def test_one_connection_is_reused(fake: FakeOpenAI) -> None:
    agent = make_agent(fake.base_url)
    try:
        for _ in range(3):
            await agent.run(conversation("again"))
    finally:
        await agent.aclose()
    assert len(fake.requests) == 3 and fake.completed == 3
    assert len(set(fake.peers)) == 1


# -- failures --------------------------------------------------------------------------------------


async def test_429_is_retried_then_succeeds(fake: FakeOpenAI) -> None:
    fake.errors_before_ok = 2
    fake.mode = "error429_then_ok"
    result = await run(make_agent(fake.base_url, max_retries=2), conversation("retry me"))
    assert result.text == "You said: retry me"
    assert len(fake.requests) == 3


async def test_429_gives_up_after_max_retries(fake: FakeOpenAI) -> None:
    fake.errors_before_ok = 5
    fake.mode = "error429_then_ok"
    error = await error_of(make_agent(fake.base_url, max_retries=1))
    assert error.user_message == "the agent is rate-limited (HTTP 429) — /retry in a moment"
    assert len(fake.requests) == 2


async def test_401_names_the_api_key_and_never_leaks_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeOpenAI(api_key="the-right-key") as fake:
        error = await error_of(make_agent(fake.base_url, api_key=KEY))
        assert fake.request_headers[0]["Authorization"] == f"Bearer {KEY}"
        assert len(fake.requests) == 1  # not retried
        fake.mode = "error401"
        again = await error_of(make_agent(fake.base_url, api_key=KEY))
    assert error.user_message == "the agent returned 401: check agent.api_key"
    assert again.user_message == error.user_message
    assert "HTTP 401" in error.cause
    for text in (error.cause, again.cause, caplog.text):
        assert KEY not in text


async def test_right_api_key_is_accepted() -> None:
    async with FakeOpenAI(api_key=KEY) as fake:
        result = await run(make_agent(fake.base_url, api_key=KEY), conversation("hi"))
    assert result.text == "You said: hi"


async def test_500_after_retries(fake: FakeOpenAI) -> None:
    fake.mode = "error500"
    error = await error_of(make_agent(fake.base_url, max_retries=2))
    assert error.user_message == "the agent service failed (HTTP 500) — /retry to try again"
    assert len(fake.requests) == 3
    assert "server had an error" in error.cause


async def test_404_points_at_base_url_and_model(fake: FakeOpenAI) -> None:
    error = await error_of(make_agent(fake.base_url + "/wrong"))
    assert error.user_message == "the agent returned 404: check agent.base_url and agent.model"


async def test_garbage(fake: FakeOpenAI) -> None:
    fake.mode = "garbage"
    error = await error_of(make_agent(fake.base_url))
    assert error.user_message == "the agent sent a response edgecrab could not read"
    assert "502 Bad Gateway" in error.cause


async def test_timeout_message_and_the_stream_is_closed(fake: FakeOpenAI) -> None:
    fake.mode = "hang"
    started = time.monotonic()
    error = await error_of(make_agent(fake.base_url, timeout_s=0.3))
    assert error.user_message == "the agent timed out after 0.3 s — /retry to try again"
    assert time.monotonic() - started < 5
    with anyio.fail_after(1):
        await fake.wait_disconnects(1)


async def test_timeout_covers_a_slow_stream(fake: FakeOpenAI) -> None:
    fake.token_delay_s = 10
    error = await error_of(make_agent(fake.base_url, timeout_s=0.5))
    assert "timed out after 0.5 s" in error.user_message
    assert fake.tokens_sent >= 1


async def test_connection_refused() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = await error_of(make_agent(f"http://127.0.0.1:{port}/v1", max_retries=1))
    assert error.user_message.startswith(f"could not reach the agent at 127.0.0.1:{port} — ")
    # httpx-aiohttp maps every aiohttp connection error, a refusal too, onto httpx.ConnectTimeout; the cause
    # (aiohttp's ClientConnectorError) is what failure_kind reads.
    assert "ConnectTimeout" in error.cause
    assert "Connect call failed" in error.cause


# -- cancellation (/stop) --------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["before-first-token", "mid-stream"])
async def test_cancel_closes_the_stream_within_1s(fake: FakeOpenAI, phase: str) -> None:
    if phase == "before-first-token":
        fake.delay_s = 30
    else:
        fake.token_delay_s = 30
    agent = make_agent(fake.base_url)
    results: list[AgentResult] = []

    async def call() -> None:
        results.append(await agent.run(conversation("a long answer please")))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            with anyio.fail_after(5):
                if phase == "before-first-token":
                    await fake.wait_requests(1)
                else:
                    await fake.wait_for(lambda: fake.tokens_sent >= 1)
            cancelled_at = time.monotonic()
            tg.cancel_scope.cancel()
        assert time.monotonic() - cancelled_at < 1.0
        with anyio.fail_after(1):
            await fake.wait_disconnects(1)
        assert time.monotonic() - cancelled_at < 1.0
        assert results == []
        assert fake.completed == 0
    finally:
        await agent.aclose()


# -- the fake as a process -------------------------------------------------------------------------


async def test_fake_runs_as_a_process_with_a_control_endpoint() -> None:
    argv = [sys.executable, "-m", "edgecrab.testing.fake_openai", "--port", "0", "--token-delay", "0.001"]
    process = await anyio.open_process(argv, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        with anyio.fail_after(15):
            line = b""
            async for piece in process.stdout:
                line += piece
                if b"\n" in line:
                    break
        ready = json.loads(line.split(b"\n")[0])
        base_url = ready["base_url"]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")

        result = await run(make_agent(base_url), conversation("over a real process"))
        assert result.text == "You said: over a real process"

        async with httpx.AsyncClient() as client:
            state = (await client.get(ready["control_url"])).json()
            assert state["requests"] == 1
            assert state["usage"]["prompt_tokens"] == result.usage.prompt_tokens
            assert state["usage"]["completion_tokens"] == result.usage.completion_tokens
            assert state["last_requests"][0]["messages"][-1]["content"] == "over a real process"

            changed = await client.post(ready["control_url"], json={"mode": "error401", "delay_s": 0.5})
            assert changed.json()["mode"] == "error401"
            bad = await client.post(ready["control_url"], json={"mode": "nonsense"})
            assert bad.status_code == 400
        error = await error_of(make_agent(base_url))
        assert "401" in error.user_message
    finally:
        process.terminate()
        with anyio.fail_after(5):
            await process.wait()
        await process.aclose()
    assert process.returncode == 0


# -- limits ----------------------------------------------------------------------------------------


async def test_a_huge_answer_is_cut_at_max_answer_chars_and_the_stream_closed(fake: FakeOpenAI) -> None:
    fake.reply = "word " * 100_000  # 500,000 characters, one token a millisecond: ~2 minutes in full
    fake.token_delay_s = 0.001
    started = time.monotonic()
    result = await run(make_agent(fake.base_url, max_answer_chars=1000), conversation("everything"))
    assert result.text.startswith("word " * 200)
    assert result.text[1000:] == "\n\n…(answer truncated at 1,000 characters)"
    assert time.monotonic() - started < 10
    with anyio.fail_after(2):
        await fake.wait_disconnects(1)  # we hung up: the rest was never sent
    assert fake.completed == 0 and fake.tokens_sent < 2000
