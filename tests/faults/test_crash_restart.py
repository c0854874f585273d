"""``edgecrab gateway start`` killed with SIGKILL mid-run and started again on the same storage.

Every message DingTalk saw acked 200 must be answered exactly once, chunks in order, none repeated. The
kill is timed to land while one reply is half sent (its next chunk is due in ~0.2 s) and the next message's
agent call is in flight. It is deliberately *not* timed inside the ~1 ms between DingTalk accepting a chunk
and the ledger recording it: no sender can make that window exactly-once without an idempotency key, which
DingTalk's send APIs do not have (see the report for this known at-least-once window).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from edgecrab.store import OutboxChunk, SQLiteStore
from edgecrab.testing.fake_openai import FakeOpenAI
from edgecrab.testing.fakedingtalk import FakeDingTalk
from edgecrab.testing.gatewayconfig import write_gateway_config
from tests.component.gwkit import ScriptedAgent, quiescent
from tests.faults.conftest import SecretWatch
from tests.faults.kit import WORD, fault_config, gateway_running, start_gateway_process, tally, word, words

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

LLM_KEY = "sk-crash-llm-key-9876543210"
N_WORDS = 30
CLOSING = "q99999z"
"""The words of the answer to a question without a counted word (the closing questions)."""


def long_reply(messages: list[dict[str, Any]]) -> str:
    """30 numbered words per question (``q00003z-00 ... q00003z-29``): four chunks at 100 characters."""
    question = str(messages[-1].get("content", ""))
    found = WORD.findall(question)
    base = found[0] if found else CLOSING
    return " ".join(f"{base}-{j:02d}" for j in range(N_WORDS))


def write_config(path: Path, fake: FakeDingTalk, llm: FakeOpenAI) -> Path:
    return write_gateway_config(
        path, api_base=fake.base_url, llm_base_url=llm.base_url,
        dingtalk={"max_message_length": 100, "chunk_interval_ms": 300, "reconnect_initial_s": 0.1,
                  "reconnect_max_s": 0.5, "webhook_expiry_margin_s": 0},
        agent={"timeout_s": 20},
        sessions={"queue_limit": 50},
    )


async def start(fake: FakeDingTalk, config: Path, log_path: Path) -> anyio.abc.Process:
    debug = ("--log-level", "debug")
    return await start_gateway_process(fake, config, log_path, llm_key=LLM_KEY, options=debug)


async def test_sigkill_mid_run_and_restart_answers_each_accepted_message_once(
    tmp_path: Path, secret_watch: SecretWatch
) -> None:
    secret_watch.secret(LLM_KEY)
    log_path = tmp_path / "gateway.log"
    async with (
        FakeDingTalk(redeliver_after_s=1.0, max_redeliveries=30) as fake,
        FakeOpenAI(reply=long_reply, delay_s=0.8, token_delay_s=0.005, api_key=LLM_KEY) as llm,
    ):
        secret_watch.watch(fake)
        config = write_config(tmp_path / "edgecrab.yaml", fake, llm)
        asker, latecomer = fake.users[1], fake.users[2]
        expected: dict[str, list[str]] = {}
        frame_ids: dict[str, str] = {}
        proc = await start(fake, config, log_path)
        try:
            for i in range(5):
                data = fake.dm(asker, f"question {word(i)}")
                frame_ids[word(i)] = await fake.push(data)
                expected[word(i)] = words(i, N_WORDS)
                await anyio.sleep(0.05)
            cid = fake.dm_conversation_id(asker)

            def moment() -> bool:
                """Half a reply out, its next chunk ~0.2 s away, and an agent call in flight."""
                sent = [r for r in fake.messages_for(cid) if WORD.search(r.text)]
                if not sent:
                    return False
                since_last = time.monotonic() - fake.outbound[-1].t
                seen = Counter(w for r in sent for w in WORD.findall(r.text))
                half_sent = any(0 < sum(seen[w] > 0 for w in ws) < N_WORDS for ws in expected.values())
                in_flight = len(llm.requests) > llm.completed + llm.disconnects
                return half_sent and in_flight and 0.06 <= since_last <= 0.16

            await fake.wait_for(moment, 15)
            before_kill = tally("before-kill", fake, expected)
            proc.send_signal(signal.SIGKILL)
            with anyio.fail_after(5):
                await proc.wait()
            killed_at_outbound = len(fake.outbound)
            # Sent while the gateway is down: DingTalk keeps it and delivers it to the next connection.
            late = fake.dm(latecomer, f"question {word(5)}")
            frame_ids[word(5)] = await fake.push(late)
            expected[word(5)] = words(5, N_WORDS)
            proc = await start(fake, config, log_path)
            with anyio.move_on_after(25):
                await fake.wait_for(lambda: tally("x", fake, expected).answered == len(expected), 25)
            # Anything repeated would be sent before a later message in the same conversation: callbacks
            # are routed in order, runs of a conversation queue, and its chunks go out in order.
            await fake.wait_for(lambda: not fake.stats()["pending"], 10)  # no redelivery still to come
            closing = [fake.dm(u, "closing question") for u in (asker, latecomer)]
            for data in closing:
                await fake.push(data)
            for data in closing:
                await fake.wait_for(
                    lambda c=data["conversationId"]: any(
                        f"{CLOSING}-{N_WORDS - 1:02d}" in r.text for r in fake.messages_for(c)
                    ),
                    15,
                )
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(10):
                    await proc.wait()
        acked = {w for w, mid in frame_ids.items() if any(a.code == 200 for a in fake.acks_for(mid))}
        with_words = [(r.conversation_id, r.text) for r in fake.outbound if WORD.search(r.text)]
        repeated = [t for t, n in Counter(with_words).items() if n > 1]
        order = [w for r in fake.messages_for(cid) for w in WORD.findall(r.text) if not w.startswith(CLOSING)]
        notices = Counter(r.text for r in fake.outbound if not WORD.search(r.text))
        result = tally(
            "sigkill-restart",
            fake,
            {w: expected[w] for w in acked},
            before_kill=f"{before_kill.answered}/5 answered",
            outbound_at_kill=killed_at_outbound,
            chunks=len(with_words),
            repeated_chunks=len(repeated),
            llm_requests=len(llm.requests),
            notices=sum(notices.values()),
        )
        print(result)
        secret_watch.text("gateway subprocess log", log_path.read_text(encoding="utf-8", errors="replace"))
    assert acked == set(expected), (
        f"not every message was accepted: {sorted(set(expected) - acked)}; {result}"
    )
    assert result.ok, result
    assert not repeated, f"chunks sent twice: {repeated[:3]}; {result}"
    assert order == [w for i in range(5) for w in words(i, N_WORDS)], f"chunk order broken; {result}"
    assert fake.messages_for(fake.dm_conversation_id(latecomer)), result


class ProcessKilled(BaseException):
    """Stands for SIGKILL: nothing after it runs, and the store takes no more writes."""


class KilledAfterLedger(SQLiteStore):
    """A SQLite store whose process "dies" right after the agent's answer was written to the outbox.

    Whichever way the answer is recorded: ``outbox_add`` on its own (then the inbox still says the message
    is unfinished), or ``finish_turn``, which records the answer and the message's end in one transaction.
    """

    dead = False

    def _die_after(self, chunks: Any) -> None:
        if any(WORD.search(c.text) for c in chunks):  # the answer, not a "Queued" notice
            self.dead = True
            raise ProcessKilled

    async def outbox_add(self, chunks: list[OutboxChunk]) -> None:
        await super().outbox_add(chunks)
        self._die_after(chunks)

    async def finish_turn(self, *args: Any, **kwargs: Any) -> bool:
        mine = await super().finish_turn(*args, **kwargs)  # type: ignore[misc]  # absent before the fix
        self._die_after(kwargs.get("reply", ()))
        return bool(mine)

    def _run(self, sql: str, params: Any = ()) -> Any:
        if self.dead:
            raise ProcessKilled
        return super()._run(sql, params)

    def _tx(self) -> Any:
        if self.dead:
            raise ProcessKilled
        return super()._tx()


async def test_crash_between_reply_ledger_and_inbox_done_answers_once(
    tmp_path: Path, secret_watch: SecretWatch
) -> None:
    async with FakeDingTalk() as fake:
        secret_watch.watch(fake)
        config = fault_config(fake, tmp_path)
        data = fake.dm(fake.users[1], f"question {word(1)}")
        store = KilledAfterLedger(tmp_path / "state.db")
        try:
            async with gateway_running(config, ScriptedAgent(), store=store):
                await fake.push(data)
                with anyio.fail_after(5):
                    await anyio.sleep_forever()  # ended by the "killed" store stopping the gateway
        except BaseExceptionGroup as group:
            assert group.subgroup(lambda e: isinstance(e, ProcessKilled)) is not None, group
        assert store.dead and fake.messages_for(data["conversationId"]) == []
        async with gateway_running(config, ScriptedAgent()) as gw:
            await fake.wait_for(lambda: len(fake.messages_for(data["conversationId"])) >= 1, 5)
            await quiescent(fake, gw)
        result = tally("crash-after-ledger", fake, {word(1): [word(1)]})
        print(result)
    assert result.ok, result
