"""Session keys and the Runner's logic, with an in-memory SQLite store, a scripted agent and hook stubs that
hold a run in a chosen phase (so /stop and /new can land exactly there)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from edgecrab.agents.base import Agent, AgentError
from edgecrab.config import SessionsConfig
from edgecrab.core.agentcall import USER_FAILURE_TEXT, call_agent
from edgecrab.core.runs import NO_RETRY_TEXT, Runner, failure_text
from edgecrab.core.sessions import session_key
from edgecrab.events import AgentRequest, AgentResult, Conversation, Message, Sender, Usage
from edgecrab.store import SQLiteStore

_ids = itertools.count(1)


def msg(
    text: str = "hi", *, group: bool = False, sender: str = "u1", robot: str = "robotA", cid: str = ""
) -> Message:
    return Message(
        id=f"m{next(_ids)}",
        robot=robot,
        conversation=Conversation(cid or ("cidG" if group else f"cidDM-{sender}"), group),
        sender=Sender(sender, dingtalk_id=f"$:{sender}"),
        text=text,
    )


# -- session keys ------------------------------------------------------------------------------------


def test_dm_key_is_robot_and_sender() -> None:
    assert session_key(msg()) == "robotA:dm:u1"
    assert session_key(msg(), "per_user") == "robotA:dm:u1"  # the scope only concerns groups


def test_group_key_shared_by_default_and_per_user_on_request() -> None:
    assert session_key(msg(group=True)) == "robotA:group:cidG"
    assert session_key(msg(group=True, sender="u2")) == "robotA:group:cidG"
    assert session_key(msg(group=True), "per_user") == "robotA:group:cidG:u1"
    assert session_key(msg(group=True, sender="u2"), "per_user") == "robotA:group:cidG:u2"


def test_robot_is_part_of_every_key_and_dm_never_meets_group() -> None:
    assert session_key(msg(robot="robotA")) != session_key(msg(robot="robotB"))
    assert session_key(msg(group=True, robot="robotA")) != session_key(msg(group=True, robot="robotB"))
    # Even a group whose id equals a DM's conversation id stays apart from it.
    assert session_key(msg(cid="c1")) != session_key(msg(group=True, cid="c1"))


def test_sender_without_staff_id_is_keyed_by_dingtalk_id() -> None:
    outsider = Message("m", "robotA", Conversation("c", False), Sender("", dingtalk_id="$:xyz"), "hi")
    assert session_key(outsider) == "robotA:dm:$:xyz"


def test_failure_text() -> None:
    error = "the agent returned 401: check agent.api_key"
    assert failure_text(error) == USER_FAILURE_TEXT and "/retry" in USER_FAILURE_TEXT
    assert failure_text(error, admin=True).startswith("⚠️ The agent returned 401: check agent.api_key\n\n")
    assert failure_text("", admin=True).startswith("⚠️ The agent failed to answer")


# -- the runner --------------------------------------------------------------------------------------


class Echo(Agent):
    def __init__(self) -> None:
        self.requests: list[AgentRequest] = []
        self.fail_next = False
        self.gate: anyio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0

    async def run(self, request: AgentRequest) -> AgentResult:
        self.requests.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.in_flight -= 1
        if self.fail_next:
            self.fail_next = False
            raise AgentError("the agent is rate-limited (HTTP 429) — /retry in a moment")
        return AgentResult(f"echo {request.messages[-1]['content']}", usage=Usage(5, 2))


class HoldingHooks:
    """Holds the run inside one pipeline hook until released."""

    def __init__(self, hold: str) -> None:
        self.hold = hold
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def pipeline(self, hook: str, arg: str, value: Any, **kw: Any) -> Any:
        if hook == self.hold:
            self.entered.set()
            await self.release.wait()
        return value

    async def notify(self, hook: str, **kw: Any) -> None:
        return None

    async def first(self, hook: str, **kw: Any) -> Any:
        return None


class Bench:
    def __init__(self, runner: Runner, store: SQLiteStore, agent: Echo) -> None:
        self.runner, self.store, self.agent = runner, store, agent
        self.replies: list[tuple[str, str]] = []

    async def submit(self, message: Message, **kw: Any) -> None:
        await self.store.inbox_claim(message.robot, message.id, "", "{}", 0.0)
        await self.runner.submit(message, **kw)

    async def until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(5):
            while not predicate():  # noqa: ASYNC110 - the runner has no event for these
                await anyio.sleep(0.005)

    async def settle(self) -> None:
        with anyio.fail_after(5):
            while self.runner._sessions:  # noqa: ASYNC110 - the runner has no "all idle" event to wait on
                await anyio.sleep(0.005)


@contextlib.asynccontextmanager
async def bench(hooks: Any = None, **sessions: Any) -> AsyncIterator[Bench]:
    store = SQLiteStore(":memory:")
    await store.open()
    agent = Echo()
    b: Bench

    async def reply(message: Message, text: str, key: str) -> None:
        b.replies.append((key, text))

    runner = Runner(SessionsConfig(**sessions), store, agent, reply, hooks=hooks)
    b = Bench(runner, store, agent)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        yield b
        tg.cancel_scope.cancel()
    await store.close()


@pytest.mark.anyio
async def test_an_agent_that_uses_no_history_is_given_none_and_none_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with bench() as b:
        await b.submit(msg("first"))
        await b.settle()
        reads: list[str] = []
        history = b.store.history

        async def counted(key: str, limit: int) -> Any:
            reads.append(key)
            return await history(key, limit)

        monkeypatch.setattr(b.store, "history", counted)
        b.agent.uses_history = False
        await b.submit(msg("second"))
        await b.settle()
        assert reads == [] and [m["content"] for m in b.agent.requests[-1].messages] == ["second"]
        b.agent.uses_history = True
        await b.submit(msg("third"))
        await b.settle()
        assert reads == ["robotA:dm:u1"]
        assert [m["content"] for m in b.agent.requests[-1].messages] == [
            "first", "echo first", "second", "echo second", "third"
        ]


@pytest.mark.anyio
async def test_stop_while_the_request_is_prepared_never_calls_the_agent() -> None:
    hooks = HoldingHooks("prepare_agent_request")
    async with bench(hooks) as b:
        m = msg("question")
        await b.submit(m)
        await hooks.entered.wait()
        assert b.runner.status("robotA:dm:u1").running
        assert await b.runner.stop("robotA:dm:u1") == (True, [])
        hooks.release.set()
        await b.settle()
        assert b.agent.requests == [] and b.replies == []
        assert await b.store.inbox_unfinished("robotA") == []


@pytest.mark.anyio
async def test_stop_after_the_agent_answered_sends_nothing() -> None:
    hooks = HoldingHooks("prepare_reply")
    async with bench(hooks) as b:
        await b.submit(msg("question"))
        await hooks.entered.wait()
        running, _ = await b.runner.stop("robotA:dm:u1")
        assert running
        hooks.release.set()
        await b.settle()
        assert b.replies == []
        assert await b.store.history("robotA:dm:u1", 10) == []
        stats = await b.store.session_stats("robotA:dm:u1")
        assert stats is not None and stats.messages_in == 1 and stats.last_user_text == "question"


@pytest.mark.anyio
async def test_reset_during_a_run_leaves_the_fresh_session_untouched() -> None:
    hooks = HoldingHooks("prepare_reply")
    async with bench(hooks) as b:
        await b.submit(msg("old topic"))
        await hooks.entered.wait()
        await b.runner.reset("robotA:dm:u1")
        await b.store.session_reset("robotA:dm:u1", 0.0)
        hooks.release.set()
        await b.settle()
        stats = await b.store.session_stats("robotA:dm:u1")
        assert stats is not None and (stats.messages_in, stats.last_user_text) == (0, "")
        assert b.replies == []


@pytest.mark.anyio
async def test_queue_positions_status_and_stop_dropping_the_queue() -> None:
    async with bench() as b:
        b.agent.gate = anyio.Event()
        first, second, third = msg("one"), msg("two"), msg("three")
        for m in (first, second, third):
            await b.submit(m)
        assert [t for _, t in b.replies] == [
            "⏳ Queued — position 1. I'll answer when the current reply is done (/stop cancels).",
            "⏳ Queued — position 2. I'll answer when the current reply is done (/stop cancels).",
        ]
        await b.until(lambda: len(b.agent.requests) == 1)
        st = b.runner.status("robotA:dm:u1")
        assert (st.running, st.queued, st.preview) == (True, 2, "one")
        running, dropped = await b.runner.stop("robotA:dm:u1")
        assert running and [m.id for m in dropped] == [second.id, third.id]
        b.agent.gate.set()
        await b.settle()
        assert len(b.agent.requests) == 1
        assert await b.store.inbox_unfinished("robotA") == []


@pytest.mark.anyio
async def test_retry_reruns_the_right_message() -> None:
    async with bench() as b:
        key = "robotA:dm:u1"
        await b.submit(msg("x"), retry=True)
        await b.settle()
        assert b.replies[-1] == (key, NO_RETRY_TEXT)
        await b.submit(msg("first"))
        await b.settle()
        b.agent.fail_next = True
        await b.submit(msg("second"))
        await b.settle()
        assert b.replies[-1][1] == USER_FAILURE_TEXT
        await b.submit(msg("/retry"), retry=True)  # the failed one, on top of the kept first exchange
        await b.settle()
        assert [t["content"] for t in b.agent.requests[-1].messages] == ["first", "echo first", "second"]
        await b.submit(msg("/retry"), retry=True)  # the answered one: its answer is dropped first
        await b.settle()
        assert [t["content"] for t in b.agent.requests[-1].messages] == ["first", "echo first", "second"]
        history = await b.store.history(key, 10)
        assert [t.content for t in history] == ["first", "echo first", "second", "echo second"]


@pytest.mark.anyio
async def test_different_sessions_run_concurrently_up_to_the_bound() -> None:
    async with bench(max_concurrent_runs=2) as b:
        b.agent.gate = anyio.Event()
        for sender in ("a", "b", "c"):
            await b.submit(msg("hi", sender=sender))
        # All three runs started and two reached the agent; the third waits for a slot, so it can only
        # reach the agent once one of the two finished: never three at once.
        await b.until(lambda: b.runner.runs_started == 3 and len(b.agent.requests) >= 2)
        b.agent.gate.set()
        await b.settle()
        assert len(b.agent.requests) == 3 and len(b.replies) == 3
        assert b.agent.most_in_flight == 2


@pytest.mark.anyio
async def test_reject_and_interrupt_policies() -> None:
    async with bench(busy_policy="reject") as b:
        b.agent.gate = anyio.Event()
        await b.submit(msg("one"))
        await b.submit(msg("two"))
        assert b.replies[-1][1].startswith("⏳ I'm still working")
        b.agent.gate.set()
        await b.settle()
        assert len(b.agent.requests) == 1
    async with bench(busy_policy="interrupt") as b:
        b.agent.gate = anyio.Event()
        await b.submit(msg("one"))
        await b.until(lambda: len(b.agent.requests) == 1)  # "one" is running: "two" interrupts it
        await b.submit(msg("two"))
        b.agent.gate.set()
        await b.settle()
        assert [t for _, t in b.replies] == [
            "⏹ Stopped the previous answer — working on your new message.",
            "echo two",
        ]
        assert await b.store.inbox_unfinished("robotA") == []


@pytest.mark.anyio
async def test_the_agent_call_is_cut_off_after_its_timeout_and_a_stop_is_no_timeout() -> None:
    class Hangs(Agent):
        async def run(self, request: AgentRequest) -> AgentResult:
            await anyio.sleep_forever()
            raise AssertionError

    request = AgentRequest(messages=[{"role": "user", "content": "hi"}], session_key="k", message_id="m")
    # The bound is timeout_s plus 5 s of slack: -4.8 makes it 0.2 s.
    limiter = anyio.CapacityLimiter(1)
    result = await call_agent(Hangs(), request, timeout_s=-4.8, message_id="m", limiter=limiter)
    assert result.failed and "timed out" in result.error
    with anyio.CancelScope() as stop:  # /stop: the run's own scope, cancelled from outside the call
        stop.cancel()
        await call_agent(Hangs(), request, timeout_s=60, message_id="m")
        raise AssertionError("a stopped call must not return a result")
    assert stop.cancelled_caught


@pytest.mark.anyio
async def test_a_run_past_its_time_limit_fails_as_timed_out_and_a_stopped_one_is_stopped() -> None:
    async with bench() as b:
        b.runner.agent_timeout_s = -4.8  # the limit is agent_timeout_s plus 5 s of slack: 0.2 s
        b.agent.gate = anyio.Event()  # never set: the agent hangs
        first = msg("slow")
        await b.submit(first)
        await b.settle()
        assert b.replies == [("robotA:dm:u1", USER_FAILURE_TEXT)]
        stats = await b.store.session_stats("robotA:dm:u1")
        assert stats is not None and stats.messages_in == 1
        b.runner.agent_timeout_s = 60
        await b.submit(msg("stopped"))
        await b.until(lambda: b.agent.in_flight == 1)
        assert await b.runner.stop("robotA:dm:u1") == (True, [])
        await b.settle()
        assert b.replies == [("robotA:dm:u1", USER_FAILURE_TEXT)]  # a stop answers nothing
