"""End to end: ``edgecrab gateway start`` as a subprocess against the fake DingTalk and a fake
OpenAI-compatible server, both on 127.0.0.1, both started by the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from edgecrab.testing.fake_openai import FakeOpenAI
from edgecrab.testing.fakedingtalk import FakeDingTalk
from edgecrab.testing.gatewayconfig import write_gateway_config

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


def write_config(path: Path, fake: FakeDingTalk, llm: FakeOpenAI, **sessions: str) -> Path:
    return write_gateway_config(
        path, api_base=fake.base_url, llm_base_url=llm.base_url,
        dingtalk={"chunk_interval_ms": 20, "reconnect_initial_s": 0.1, "reconnect_max_s": 1},
        agent={"system_prompt": "You are a test assistant.", "timeout_s": 20},
        sessions={"history_limit": 10, **sessions},
    )


class GatewayProcess:
    def __init__(self, proc: anyio.abc.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[FakeDingTalk, FakeOpenAI, Path]]:
    async with FakeDingTalk() as fake, FakeOpenAI(api_key="sk-test-llm-key-123") as llm:
        yield fake, llm, tmp_path


async def start_gateway(fake: FakeDingTalk, config: Path) -> GatewayProcess:
    app = fake.apps[0]
    env = dict(
        os.environ,
        DINGTALK_APP_KEY=app.client_id,
        DINGTALK_APP_SECRET=app.client_secret,
        FAKE_LLM_KEY="sk-test-llm-key-123",
        EDGECRAB_HOME=str(config.parent),
    )
    env.pop("EDGECRAB_CONFIG", None)
    log_path = config.parent / "gateway.log"
    log_file = open(log_path, "wb")  # noqa: ASYNC230 - a log file for the child, opened once
    proc = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "edgecrab",
            "--config",
            str(config),
            "--log-level",
            "info",
            "gateway",
            "start",
        ],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    log_file.close()
    gw = GatewayProcess(proc, log_path)
    await fake.wait_for(lambda: len(fake.connections) >= 1, 15)
    return gw


async def stop_gateway(gw: GatewayProcess) -> tuple[int, float]:
    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    with anyio.fail_after(10):
        code = await gw.proc.wait()
    return code, time.monotonic() - started


async def say(fake: FakeDingTalk, data: dict, n_replies: int, timeout: float = 10) -> list[str]:
    cid = data["conversationId"]
    await fake.push(data)
    await fake.wait_for(lambda: len(fake.messages_for(cid)) >= n_replies, timeout)
    return [m.text for m in fake.messages_for(cid)]


async def test_dm_conversation_carries_history_and_usage(stack) -> None:
    fake, llm, tmp = stack
    gw = await start_gateway(fake, write_config(tmp / "edgecrab.yaml", fake, llm))
    try:
        user = fake.users[0]
        texts = await say(fake, fake.dm(user, "my name is Ada"), 1)
        assert "You said: my name is Ada" in texts[0]
        await say(fake, fake.dm(user, "what is my name?"), 2)
        second = llm.requests[1]["messages"]
        assert second[0] == {"role": "system", "content": "You are a test assistant."}
        assert {"role": "user", "content": "my name is Ada"} in second
        assert any(m["role"] == "assistant" and "my name is Ada" in m["content"] for m in second)
        assert second[-1] == {"role": "user", "content": "what is my name?"}
        texts = await say(fake, fake.dm(user, "/usage"), 3)
        prompt = sum(u["prompt_tokens"] for u in llm.usages)
        completion = sum(u["completion_tokens"] for u in llm.usages)
        assert f"Tokens: {prompt} prompt, {completion} completion" in texts[2]
        assert "Turns: 2" in texts[2]
    finally:
        code, elapsed = await stop_gateway(gw)
    assert code == 0 and elapsed < 5, gw.log
    assert "sk-test-llm-key-123" not in gw.log
    assert fake.apps[0].client_secret not in gw.log


async def test_stop_ends_a_slow_stream_within_a_second(stack) -> None:
    fake, llm, tmp = stack
    llm.configure({"token_delay_s": 0.5, "reply": " ".join(["word"] * 60)})
    gw = await start_gateway(fake, write_config(tmp / "edgecrab.yaml", fake, llm))
    try:
        user = fake.users[1]
        data = fake.dm(user, "tell me a long story")
        cid = data["conversationId"]
        await fake.push(data)
        await llm.wait_requests(1)
        await anyio.sleep(1.0)  # a few tokens have streamed
        before = llm.disconnects
        started = time.monotonic()
        await fake.push(fake.dm(user, "/stop"))
        await llm.wait_disconnects(before + 1)
        assert time.monotonic() - started < 1.0
        await fake.wait_for(lambda: len(fake.messages_for(cid)) >= 1, 5)
        # "Idle" means the stopped run has ended, and anything it recorded goes out before this answer
        # (one conversation's replies are sent in order): a late part of the story would show up here.
        texts = await say(fake, fake.dm(user, "/status"), 2)
        assert len(texts) == 2 and texts[0].startswith("⏹ Stopped"), texts
        assert "Idle" in texts[1]
    finally:
        await stop_gateway(gw)


async def test_retry_drops_the_last_answer_and_runs_again(stack) -> None:
    fake, llm, tmp = stack
    gw = await start_gateway(fake, write_config(tmp / "edgecrab.yaml", fake, llm))
    try:
        user = fake.users[2]
        await say(fake, fake.dm(user, "first question"), 1)
        texts = await say(fake, fake.dm(user, "/retry"), 2)
        assert "You said: first question" in texts[1]
        retried = llm.requests[1]["messages"]
        # The dropped answer is not in the retried conversation.
        assert [m["role"] for m in retried] == ["system", "user"]
        assert retried[-1]["content"] == "first question"
    finally:
        await stop_gateway(gw)


async def test_group_and_dm_sessions_are_separate(stack) -> None:
    fake, llm, tmp = stack
    gw = await start_gateway(fake, write_config(tmp / "edgecrab.yaml", fake, llm))
    try:
        user = fake.users[0]
        await say(fake, fake.dm(user, "secret DM plan"), 1)
        await say(fake, fake.group(user, "team question", conversation_id="cidTeam01=="), 1)
        group_request = llm.requests[1]["messages"]
        assert all("secret DM plan" not in m["content"] for m in group_request)
        texts = [m for m in fake.messages_for("cidTeam01==")]
        assert user.staff_id in texts[0].at_user_ids  # the asker is @-mentioned in groups
    finally:
        await stop_gateway(gw)


async def _two_quick_messages(stack, busy_policy: str, replies: int) -> tuple[list[str], FakeOpenAI]:
    """Send "one", then "two" while the agent is still answering "one"; return the replies."""
    fake, llm, tmp = stack
    llm.configure({"delay_s": 0.8})
    gw = await start_gateway(fake, write_config(tmp / "edgecrab.yaml", fake, llm, busy_policy=busy_policy))
    try:
        first = fake.dm(fake.users[3], "one")
        cid = first["conversationId"]
        await fake.push(first)
        await llm.wait_requests(1)
        await fake.push(fake.dm(fake.users[3], "two"))
        await fake.wait_for(lambda: len(fake.messages_for(cid)) >= replies, 10)
        # A later /status answering "Idle": no run is left, and one conversation's replies go out in
        # order, so any further reply to "one" or "two" would have arrived before it.
        texts = await say(fake, fake.dm(fake.users[3], "/status"), replies + 1)
        assert "Idle" in texts[-1], texts
        return texts[:-1], llm
    finally:
        await stop_gateway(gw)


async def test_busy_queue_policy_answers_in_order(stack) -> None:
    texts, llm = await _two_quick_messages(stack, "queue", 3)
    assert texts[0].startswith("⏳ Queued — position 1")
    assert "You said: one" in texts[1] and "You said: two" in texts[2]


async def test_reject_policy_says_busy(stack) -> None:
    texts, llm = await _two_quick_messages(stack, "reject", 2)
    assert "still working" in texts[0] and "You said: one" in texts[1]
    assert len(texts) == 2 and len(llm.requests) == 1


async def test_interrupt_policy_cancels_and_answers_the_new_message(stack) -> None:
    texts, llm = await _two_quick_messages(stack, "interrupt", 2)
    assert texts[0].startswith("⏹ Stopped the previous answer")
    assert len(texts) == 2 and "You said: two" in texts[1]
    assert llm.disconnects >= 1  # the first answer's stream was closed
