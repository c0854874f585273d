"""The agent backend hangs, sends garbage or answers 500 for one conversation: that user gets a clear message,
every other conversation is answered meanwhile, and the failing one recovers.

The gateway runs the real OpenAI-compatible backend (``agent.type: openai``, one HTTP client for everyone)
against a fake server that misbehaves only for requests whose last user message contains ``BREAKME``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from edgecrab.config import AgentConfig
from edgecrab.store import SQLiteStore
from edgecrab.testing import fake_openai
from edgecrab.testing.fake_openai import FakeOpenAI
from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.component.gwkit import ScriptedAgent
from tests.faults.conftest import SecretWatch
from tests.faults.kit import fault_config, gateway_running

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

TRIGGER = "BREAKME"
LLM_KEY = "sk-fault-llm-key-0123456789"
CLEAR = {
    "hang": "the agent timed out after 1.5 s — /retry to try again",
    "garbage": "the agent sent a response edgecrab could not read",
    "error500": "the agent service failed (http 500) — /retry to try again",
}


class SelectiveOpenAI(FakeOpenAI):
    """Misbehaves (``bad_mode``) only for requests whose last message contains ``TRIGGER``."""

    def __init__(self, bad_mode: str, **options: Any) -> None:
        super().__init__(**options)
        self.bad_mode = bad_mode

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        messages = body.get("messages") or [{}]
        if TRIGGER not in str(messages[-1].get("content", "")):
            return await super()._answer(request, body)
        if self.bad_mode == "hang":
            await self._sleep(request, float("inf"))
        if self.bad_mode == "garbage":
            return web.Response(body=b"data: <html>502 Bad Gateway{{{\n\n", content_type="text/event-stream")
        return fake_openai.error_response(
            500, "The server had an error while processing your request.", "server_error"
        )


@pytest.mark.parametrize("mode", ["hang", "garbage", "error500"])
async def test_backend_failure_is_explained_and_isolated(
    mode: str, tmp_path: Path, secret_watch: SecretWatch
) -> None:
    secret_watch.secret(LLM_KEY)
    async with FakeDingTalk() as fake, SelectiveOpenAI(mode, api_key=LLM_KEY, delay_s=0.05) as llm:
        secret_watch.watch(fake)
        agent = AgentConfig(
            type="openai",
            base_url=llm.base_url,
            model="fake-model",
            api_key=LLM_KEY,
            timeout_s=1.5,
            max_retries=1,
        )
        config = replace(fault_config(fake, tmp_path), agent=agent)
        # The victim is an admin (manager807): admins are told what went wrong; other people get a short
        # apology with /retry (tests/e2e/test_running.py).
        victim, bystander = fake.users[0], fake.users[2]
        assert victim.is_admin
        broken = fake.dm(victim, f"please {TRIGGER} now")
        cid_victim = broken["conversationId"]
        async with gateway_running(config, agent=_build(config)):
            started = time.monotonic()
            await fake.push(broken)
            with anyio.fail_after(5):
                await llm.wait_requests(1)
            # Meanwhile, other conversations are answered, one after the other.
            answered_at = []
            bystander_cid = fake.dm_conversation_id(bystander)
            for i in range(3):
                await fake.push(fake.dm(bystander, f"bystander question {i}"))
                await fake.wait_for(lambda n=i: len(fake.messages_for(bystander_cid)) > n, 5)
                answered_at.append(time.monotonic() - started)
            victim_done_at = None
            await fake.wait_for(lambda: len(fake.messages_for(cid_victim)) >= 1, 8)
            victim_done_at = time.monotonic() - started
            victim_text = fake.messages_for(cid_victim)[0].text
            # The broken conversation is not stuck: its next message is answered normally.
            await fake.push(fake.dm(victim, "and now a normal question"))
            await fake.wait_for(lambda: len(fake.messages_for(cid_victim)) >= 2, 5)
            recovered = fake.messages_for(cid_victim)[1].text
        summary = (
            f"[agent-{mode}] sent=5 victim_reply={victim_text!r} after {victim_done_at:.2f}s; bystander "
            f"replies at {[round(t, 2) for t in answered_at]}s; llm requests={len(llm.requests)}"
        )
        print(summary)
    assert CLEAR[mode] in victim_text.lower(), summary
    assert "Traceback" not in victim_text and "Error:" not in victim_text, summary
    assert "You said: and now a normal question" in recovered, summary
    bystander_texts = [r.text for r in fake.messages_for(fake.dm_conversation_id(bystander))]
    assert [t.split("\n")[0] for t in bystander_texts] == [
        f"You said: bystander question {i}" for i in range(3)
    ]
    if mode == "hang":
        # All three bystander answers came while the victim's request was still hanging.
        assert answered_at[-1] < victim_done_at, summary


def _build(config: Any) -> Any:
    from edgecrab.agents import build_agent

    return build_agent(config.agent)


class FlakyHistoryStore(SQLiteStore):
    """Fails to read a session's history once (the first run's), as a damaged or locked database would."""

    failures = 0

    async def history(self, key: str, limit: int) -> list[Any]:
        if not self.failures:
            self.failures += 1
            raise sqlite3.OperationalError("disk I/O error")
        return await super().history(key, limit)


@pytest.mark.anyio
async def test_unexpected_error_in_one_run_does_not_stop_the_gateway(
    tmp_path: Path, secret_watch: SecretWatch
) -> None:
    async with FakeDingTalk() as fake:
        secret_watch.watch(fake)
        store = FlakyHistoryStore(tmp_path / "state.db")
        # The victim is an admin (manager807): admins are told what went wrong; other people get a short
        # apology with /retry (tests/e2e/test_running.py).
        victim, bystander = fake.users[0], fake.users[2]
        assert victim.is_admin
        async with gateway_running(fault_config(fake, tmp_path), ScriptedAgent(), store=store) as gw:
            await fake.push(fake.dm(victim, "the first run, which meets the store error"))
            await fake.wait_for(lambda: store.failures == 1, 5)
            # Had the error escaped the run, the gateway's task group would have stopped by the time a
            # later message is answered.
            data = fake.dm(bystander, "are you still there?")
            await fake.push(data)
            await fake.wait_for(lambda: len(fake.messages_for(data["conversationId"])) >= 1, 5)
            assert gw.stream is not None and gw.stream.state == "connected", "the gateway stopped"
            victim_replies = fake.messages_for(fake.dm_conversation_id(victim))
    print(f"[runner-isolation] victim replies={[r.text[:60] for r in victim_replies]}")
    assert victim_replies, "the victim was left without any answer"
