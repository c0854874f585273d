"""The storage contract: what every :class:`~edgecrab.store.Store` backend must do.

Every test runs once per entry in ``BACKENDS``: SQLite, and Redis on a real ``redis-server`` (the
session's ``redis_server`` fixture; each test under its own key prefix). A new backend adds a factory there
and must pass this file unchanged; backend-specific behaviour (files, WAL, crashes) is tested elsewhere.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edgecrab.store import (
    ARMED,
    DONE,
    FAILED,
    FIRED,
    PENDING,
    PROCESSING,
    RECEIVED,
    SENDING,
    SENT,
    SKIPPED,
    UNDELIVERABLE,
    InboxEntry,
    OutboxChunk,
    ScheduleRecord,
    SQLiteStore,
    Store,
    Turn,
    UsageDelta,
)
from edgecrab.store.redis_store import RedisStore

pytestmark = pytest.mark.anyio

BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Store]] = {
    "sqlite": lambda request, tmp_path: SQLiteStore(tmp_path / "state.db"),
    "redis": lambda request, tmp_path: RedisStore(
        request.getfixturevalue("redis_server").url, prefix=f"test-{uuid.uuid4().hex[:12]}:"
    ),
}

ROBOT = "robot-1"


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str) -> AsyncIterator[Store]:
    backend = BACKENDS[request.param](request, tmp_path)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


def user(text: str, msg_id: str = "", at: float = 0.0) -> Turn:
    return Turn("user", text, msg_id, at)


def assistant(text: str, at: float = 0.0) -> Turn:
    return Turn("assistant", text, "", at)


def chunk(
    reply_id: str,
    index: int,
    total: int,
    conversation: str = "conv-1",
    route: dict[str, Any] | None = None,
    mention: bool = False,
) -> OutboxChunk:
    return OutboxChunk(
        reply_id=reply_id,
        index=index,
        total=total,
        conversation_key=conversation,
        route=route or {"webhook": f"https://oapi.dingtalk.com/robot/sendBySession?session={conversation}"},
        text=f"{reply_id} part {index + 1}/{total}",
        mention=mention,
        title=f"title {reply_id}",
        state=PENDING,
        created_at=1000.0,
        session_key=f"session-{conversation}",
    )


def ids(chunks: list[OutboxChunk]) -> list[tuple[str, int]]:
    return [(c.reply_id, c.index) for c in chunks]


# -- inbox -----------------------------------------------------------------------------------------


async def test_claim_records_a_new_callback(store: Store) -> None:
    assert await store.inbox_claim(ROBOT, "m1", "s1", '{"text": {"content": "hi"}}', 100.0)

    assert await store.inbox_unfinished(ROBOT) == [
        InboxEntry(ROBOT, "m1", "s1", '{"text": {"content": "hi"}}', 100.0, RECEIVED, 0)
    ]


async def test_claim_of_a_known_msg_id_is_a_duplicate_whatever_its_state(store: Store) -> None:
    assert await store.inbox_claim(ROBOT, "m1", "s1", "first", 100.0)
    assert not await store.inbox_claim(ROBOT, "m1", "s2", "second", 101.0)
    await store.inbox_set_state(ROBOT, "m1", DONE)
    assert not await store.inbox_claim(ROBOT, "m1", "s3", "third", 102.0)

    await store.inbox_set_state(ROBOT, "m1", RECEIVED)
    assert [e.payload for e in await store.inbox_unfinished(ROBOT)] == ["first"]


async def test_claim_of_a_known_stream_message_id_is_a_duplicate(store: Store) -> None:
    assert await store.inbox_claim(ROBOT, "m1", "s1", "first", 100.0)
    assert not await store.inbox_claim(ROBOT, "m2", "s1", "redelivered under another msgId", 101.0)

    assert [e.msg_id for e in await store.inbox_unfinished(ROBOT)] == ["m1"]


async def test_claims_that_arrive_together_are_recorded_together(store: Store) -> None:
    """The ack path's batch (one Redis script run): each claim as if alone, in order."""
    together = [("m1", "s1", "a"), ("m2", "s2", "b"), ("m1", "s3", "m1 again"), ("m3", "s2", "s2 again")]
    assert await store.inbox_claim_many(ROBOT, together, 100.0) == [True, True, False, False]
    assert await store.inbox_claim_many(ROBOT, [("m2", "s9", "c"), ("m4", "", "d")], 101.0) == [False, True]

    found = await store.inbox_unfinished(ROBOT)
    assert [(e.msg_id, e.stream_message_id, e.payload) for e in found] == [
        ("m1", "s1", "a"), ("m2", "s2", "b"), ("m4", "", "d")
    ]


async def test_empty_stream_message_ids_do_not_collide(store: Store) -> None:
    assert await store.inbox_claim(ROBOT, "m1", "", "a", 100.0)
    assert await store.inbox_claim(ROBOT, "m2", "", "b", 101.0)

    assert [e.msg_id for e in await store.inbox_unfinished(ROBOT)] == ["m1", "m2"]


async def test_dedup_is_per_robot(store: Store) -> None:
    assert await store.inbox_claim("robot-a", "m1", "s1", "a", 100.0)
    assert await store.inbox_claim("robot-b", "m1", "s1", "b", 100.0)

    assert [e.payload for e in await store.inbox_unfinished("robot-a")] == ["a"]
    assert [e.payload for e in await store.inbox_unfinished("robot-b")] == ["b"]


async def test_unfinished_lists_received_and_processing_oldest_first(store: Store) -> None:
    # Claimed out of time order: the listing follows received_at, not insertion.
    for msg_id, at in [("m3", 300.0), ("m2", 200.0), ("m4", 400.0), ("m1", 100.0)]:
        assert await store.inbox_claim(ROBOT, msg_id, f"s-{msg_id}", "{}", at)
    await store.inbox_claim("other-robot", "m0", "s0", "{}", 50.0)

    await store.inbox_set_state(ROBOT, "m2", PROCESSING)
    await store.inbox_set_state(ROBOT, "m3", DONE)
    await store.inbox_set_state(ROBOT, "m4", FAILED, error="agent crashed")

    unfinished = await store.inbox_unfinished(ROBOT)
    assert [(e.msg_id, e.state) for e in unfinished] == [("m1", RECEIVED), ("m2", PROCESSING)]
    assert [e.attempts for e in unfinished] == [0, 1]


async def test_turn_started_marks_processing_counts_the_attempt_and_makes_the_session(store: Store) -> None:
    assert await store.inbox_claim(ROBOT, "m1", "s1", "{}", 100.0)
    assert await store.session_stats("sess") is None

    await store.turn_started("sess", robot=ROBOT, msg_id="m1", now=150.0)
    await store.turn_started("sess", robot=ROBOT, msg_id="m1", now=160.0)  # run again (after a restart)

    [entry] = await store.inbox_unfinished(ROBOT)
    assert (entry.state, entry.attempts) == (PROCESSING, 2)
    stats = await store.session_stats("sess")
    assert stats is not None and stats.created_at == 150.0


async def test_set_state_of_an_unknown_entry_changes_nothing(store: Store) -> None:
    await store.inbox_set_state(ROBOT, "never-claimed", PROCESSING)

    assert await store.inbox_unfinished(ROBOT) == []
    assert await store.inbox_claim(ROBOT, "never-claimed", "", "{}", 1.0)


async def test_prune_forgets_only_old_finished_entries(store: Store) -> None:
    for msg_id, at, state in [
        ("old-done", 100.0, DONE),
        ("old-failed", 100.0, FAILED),
        ("old-received", 100.0, RECEIVED),
        ("old-processing", 100.0, PROCESSING),
        ("new-done", 500.0, DONE),
    ]:
        await store.inbox_claim(ROBOT, msg_id, f"s-{msg_id}", "{}", at)
        await store.inbox_set_state(ROBOT, msg_id, state)

    assert await store.inbox_prune(older_than=200.0) == 2

    assert [e.msg_id for e in await store.inbox_unfinished(ROBOT)] == ["old-received", "old-processing"]
    assert await store.inbox_claim(ROBOT, "old-done", "s-old-done", "{}", 600.0)
    assert not await store.inbox_claim(ROBOT, "new-done", "", "{}", 600.0)
    assert await store.inbox_prune(older_than=200.0) == 0


# -- sessions --------------------------------------------------------------------------------------


async def test_session_ensure_creates_once(store: Store) -> None:
    assert await store.session_stats("s") is None
    assert await store.session_count() == 0

    created = await store.session_ensure("s", now=100.0)
    again = await store.session_ensure("s", now=200.0)

    assert (created.key, created.created_at, created.last_active_at, created.turns) == ("s", 100.0, 100.0, 0)
    assert again == created
    assert await store.session_stats("s") == created
    assert await store.session_count() == 1


async def test_history_is_oldest_first_and_limited_to_the_last_turns(store: Store) -> None:
    await store.history_append("s", [user("q1", "m1", 1.0), assistant("a1", 2.0)])
    await store.history_append("s", [user("q2", "m2", 3.0), assistant("a2", 4.0)])
    await store.history_append("other", [user("elsewhere")])

    assert await store.history("s", 10) == [
        user("q1", "m1", 1.0),
        assistant("a1", 2.0),
        user("q2", "m2", 3.0),
        assistant("a2", 4.0),
    ]
    assert [t.content for t in await store.history("s", 3)] == ["a1", "q2", "a2"]
    assert await store.history("s", 0) == []
    assert await store.history("unknown", 10) == []


async def test_pop_last_exchange_removes_all_trailing_assistant_turns(store: Store) -> None:
    await store.history_append(
        "s",
        [user("q1"), assistant("a1"), user("q2", "m2", 3.0), assistant("a2 part 1"), assistant("a2 part 2")],
    )
    await store.history_append("other", [user("elsewhere"), assistant("answer")])

    assert await store.history_pop_last_exchange("s") == user("q2", "m2", 3.0)
    assert await store.history("s", 10) == [user("q1"), assistant("a1")]
    assert await store.history_pop_last_exchange("s") == user("q1")
    assert await store.history("s", 10) == []
    assert await store.history_pop_last_exchange("s") is None
    assert len(await store.history("other", 10)) == 2


async def test_pop_last_exchange_without_an_answer_removes_the_last_user_turn(store: Store) -> None:
    await store.history_append("s", [user("q1"), assistant("a1"), user("q2 (the run failed)")])

    assert await store.history_pop_last_exchange("s") == user("q2 (the run failed)")
    assert await store.history("s", 10) == [user("q1"), assistant("a1")]


async def test_pop_last_exchange_without_a_user_turn_changes_nothing(store: Store) -> None:
    await store.history_append("s", [assistant("welcome")])

    assert await store.history_pop_last_exchange("s") is None
    assert await store.history("s", 10) == [assistant("welcome")]
    assert await store.history_pop_last_exchange("unknown") is None


async def test_usage_add_creates_the_session_and_accumulates(store: Store) -> None:
    await store.usage_add("s", UsageDelta(messages_in=1), now=100.0, last_user=user("q1", "m1"))
    await store.usage_add(
        "s",
        UsageDelta(
            turns=1, messages_out=2, prompt_tokens=30, completion_tokens=7, agent_seconds=1.5, chunks_sent=2
        ),
        now=110.0,
    )
    await store.usage_add("s", UsageDelta(turns=1, prompt_tokens=5, agent_seconds=0.25), now=120.0)

    stats = await store.session_stats("s")
    assert stats is not None
    assert (stats.created_at, stats.last_active_at) == (100.0, 120.0)
    assert (stats.turns, stats.messages_in, stats.messages_out) == (2, 1, 2)
    assert (stats.prompt_tokens, stats.completion_tokens, stats.chunks_sent) == (35, 7, 2)
    assert stats.agent_seconds == pytest.approx(1.75)
    # Not given in later calls, so the last one given is kept (for /retry).
    assert (stats.last_user_text, stats.last_user_msg_id) == ("q1", "m1")


async def test_usage_add_with_extra_counters_is_accepted(store: Store) -> None:
    await store.usage_add("s", UsageDelta(turns=1, extra={"tool_calls": 2, "model": "a"}), now=1.0)
    await store.usage_add("s", UsageDelta(turns=1, extra={"tool_calls": 3, "model": "b"}), now=2.0)

    stats = await store.session_stats("s")
    assert stats is not None and stats.turns == 2


async def test_session_reset_clears_history_and_stats(store: Store) -> None:
    await store.history_append("s", [user("q1"), assistant("a1")])
    await store.usage_add(
        "s", UsageDelta(turns=1, prompt_tokens=9, agent_seconds=2.0), 100.0, user("q1", "m1")
    )
    await store.history_append("other", [user("kept")])

    await store.session_reset("s", now=500.0)

    assert await store.history("s", 10) == []
    stats = await store.session_stats("s")
    assert stats is not None
    assert (stats.created_at, stats.last_active_at) == (500.0, 500.0)
    assert (stats.turns, stats.prompt_tokens, stats.agent_seconds) == (0, 0, 0.0)
    assert (stats.last_user_text, stats.last_user_msg_id) == ("", "")
    assert await store.history("other", 10) == [user("kept")]


async def test_session_reset_of_an_unknown_session_starts_it(store: Store) -> None:
    await store.session_reset("new", now=500.0)

    stats = await store.session_stats("new")
    assert stats is not None and stats.created_at == 500.0


async def test_sessions_expire_resets_idle_sessions_only(store: Store) -> None:
    await store.usage_add("idle", UsageDelta(turns=1), now=100.0)
    await store.history_append("idle", [user("old question")])
    await store.usage_add("active", UsageDelta(turns=1), now=300.0)
    await store.history_append("active", [user("recent question")])

    assert await store.sessions_expire(idle_before=200.0) == 1

    assert await store.session_stats("idle") is None
    assert await store.history("idle", 10) == []
    assert await store.session_count() == 1
    assert await store.history("active", 10) == [user("recent question")]
    assert await store.sessions_expire(idle_before=200.0) == 0


# -- the end of a run ------------------------------------------------------------------------------


async def test_finish_turn_records_history_usage_reply_and_done_together(store: Store) -> None:
    await store.inbox_claim(ROBOT, "m1", "s1", "{}", 100.0)
    await store.inbox_set_state(ROBOT, "m1", PROCESSING)

    await store.finish_turn(
        "sess",
        robot=ROBOT,
        msg_id="m1",
        state=DONE,
        now=110.0,
        turns=[user("q1", "m1", 100.0), assistant("a1", 110.0)],
        usage=UsageDelta(turns=1, messages_in=1, messages_out=1, prompt_tokens=7, agent_seconds=1.5),
        last_user=user("q1", "m1", 100.0),
        reply=[chunk("r1", 1, 2), chunk("r1", 0, 2)],
    )

    assert await store.inbox_unfinished(ROBOT) == []
    assert await store.history("sess", 10) == [user("q1", "m1", 100.0), assistant("a1", 110.0)]
    stats = await store.session_stats("sess")
    assert stats is not None
    assert (stats.created_at, stats.last_active_at, stats.turns, stats.messages_in) == (110.0, 110.0, 1, 1)
    assert (stats.prompt_tokens, stats.agent_seconds, stats.last_user_text, stats.last_user_msg_id) == (
        7,
        1.5,
        "q1",
        "m1",
    )
    assert [(c.reply_id, c.index, c.state) for c in await store.outbox_pending("conv-1")] == [
        ("r1", 0, PENDING),
        ("r1", 1, PENDING),
    ]
    assert not await store.inbox_claim(ROBOT, "m1", "s1", "{}", 200.0)  # finished, still a duplicate


async def test_finish_turn_of_a_failed_run_keeps_the_history_and_records_the_notice(store: Store) -> None:
    await store.history_append("sess", [user("q0"), assistant("a0")])
    await store.inbox_claim(ROBOT, "m1", "s1", "{}", 100.0)

    await store.finish_turn(
        "sess",
        robot=ROBOT,
        msg_id="m1",
        state=FAILED,
        error="agent timed out",
        now=120.0,
        usage=UsageDelta(messages_in=1, agent_seconds=2.0),
        last_user=user("q1", "m1"),
        reply=[chunk("notice", 0, 1)],
    )

    assert await store.inbox_unfinished(ROBOT) == []
    assert await store.history("sess", 10) == [user("q0"), assistant("a0")]
    stats = await store.session_stats("sess")
    assert stats is not None and (stats.turns, stats.messages_in, stats.last_user_text) == (0, 1, "q1")
    assert ids(await store.outbox_pending("conv-1")) == [("notice", 0)]


async def test_finish_turn_with_only_a_state_touches_no_session(store: Store) -> None:
    await store.inbox_claim(ROBOT, "m1", "s1", "{}", 100.0)

    await store.finish_turn("sess", robot=ROBOT, msg_id="m1", state=DONE, error="session reset", now=110.0)

    assert await store.inbox_unfinished(ROBOT) == []
    assert await store.session_stats("sess") is None
    assert await store.outbox_pending() == []


async def test_finish_turn_is_all_or_nothing(store: Store) -> None:
    await store.inbox_claim(ROBOT, "m1", "s1", "{}", 100.0)
    unstorable = chunk("r1", 0, 1, route={"not json": object()})

    with pytest.raises(TypeError):
        await store.finish_turn(
            "sess",
            robot=ROBOT,
            msg_id="m1",
            state=DONE,
            now=110.0,
            turns=[user("q1", "m1"), assistant("a1")],
            usage=UsageDelta(turns=1),
            last_user=user("q1", "m1"),
            reply=[chunk("r0", 0, 1), unstorable],
        )

    # Nothing happened: the message runs again on start, and no answer of it waits in the ledger.
    assert [e.msg_id for e in await store.inbox_unfinished(ROBOT)] == ["m1"]
    assert await store.history("sess", 10) == []
    assert await store.session_stats("sess") is None
    assert await store.outbox_pending() == []


async def test_finish_turn_twice_with_the_same_reply_records_its_chunks_once(store: Store) -> None:
    for msg_id in ("m1", "m1"):
        await store.finish_turn(
            "sess", robot=ROBOT, msg_id=msg_id, state=DONE, now=1.0, reply=[chunk("r1", 0, 1)]
        )

    assert ids(await store.outbox_pending("conv-1")) == [("r1", 0)]


async def test_outbox_sent_marks_the_chunk_and_counts_it_on_its_session(store: Store) -> None:
    await store.outbox_add([chunk("r1", i, 3) for i in range(3)])
    await store.usage_add("sess", UsageDelta(chunks_sent=1), now=100.0)

    await store.outbox_mark("r1", 0, SENDING)
    await store.outbox_sent("r1", 0, session_key="sess", chunks_sent=1, now=150.0)
    await store.outbox_sent("r1", 1, session_key="sess", chunks_sent=3, now=140.0)  # re-split: 3 messages
    await store.outbox_sent("r1", 2, session_key="", chunks_sent=1, now=160.0)

    assert await store.outbox_pending("conv-1") == []
    stats = await store.session_stats("sess")
    assert stats is not None and (stats.chunks_sent, stats.last_active_at) == (5, 150.0)


async def test_outbox_sent_of_an_unknown_session_starts_it_and_zero_counts_nothing(store: Store) -> None:
    await store.outbox_add([chunk("r1", i, 2) for i in range(2)])

    await store.outbox_sent("r1", 0, session_key="new", chunks_sent=0, now=100.0)
    assert await store.session_stats("new") is None
    await store.outbox_sent("r1", 1, session_key="new", chunks_sent=1, now=100.0)

    stats = await store.session_stats("new")
    assert stats is not None and (stats.chunks_sent, stats.created_at) == (1, 100.0)
    assert await store.outbox_pending("conv-1") == []


async def test_outbox_sent_records_a_cancelled_chunk_that_did_go_out(store: Store) -> None:
    await store.outbox_add([chunk("r1", 0, 1)])
    await store.outbox_mark("r1", 0, SENDING)
    assert await store.outbox_cancel("conv-1") == 1

    await store.outbox_sent("r1", 0, session_key="sess", chunks_sent=1, now=100.0)

    assert await store.outbox_pending("conv-1") == []
    stats = await store.session_stats("sess")
    assert stats is not None and stats.chunks_sent == 1


# -- outbox ----------------------------------------------------------------------------------------


async def test_outbox_chunks_round_trip_in_pending_state(store: Store) -> None:
    original = chunk(
        "r1", 0, 1, route={"webhook": "https://x", "expires_at": 5.0, "ids": ["a"]}, mention=True
    )

    await store.outbox_add([original])

    assert await store.outbox_pending("conv-1") == [original]


async def test_outbox_keeps_replies_of_a_conversation_in_order(store: Store) -> None:
    await store.outbox_add([chunk("r1", i, 3) for i in range(3)])
    # Given out of order: chunks of one reply still go out by index.
    await store.outbox_add([chunk("r0", 1, 2), chunk("r0", 0, 2)])

    assert ids(await store.outbox_pending("conv-1")) == [
        ("r1", 0),
        ("r1", 1),
        ("r1", 2),
        ("r0", 0),
        ("r0", 1),
    ]


async def test_outbox_conversations_are_isolated(store: Store) -> None:
    await store.outbox_add([chunk("a1", i, 2, "conv-a") for i in range(2)])
    await store.outbox_add([chunk("b1", 0, 1, "conv-b")])
    await store.outbox_add([chunk("a2", 0, 1, "conv-a")])

    assert ids(await store.outbox_pending("conv-a")) == [("a1", 0), ("a1", 1), ("a2", 0)]
    assert ids(await store.outbox_pending("conv-b")) == [("b1", 0)]
    assert ids(await store.outbox_pending("conv-none")) == []
    assert ids(await store.outbox_pending()) == [("a1", 0), ("a1", 1), ("b1", 0), ("a2", 0)]


async def test_outbox_add_of_a_known_reply_does_not_duplicate_chunks(store: Store) -> None:
    await store.outbox_add([chunk("r1", i, 2) for i in range(2)])
    await store.outbox_mark("r1", 0, SENT)
    await store.outbox_add([chunk("r1", i, 2) for i in range(2)])

    # The sent chunk stays sent: adding again must not make it go out twice.
    assert ids(await store.outbox_pending("conv-1")) == [("r1", 1)]


async def test_outbox_mark_moves_chunks_through_their_states(store: Store) -> None:
    await store.outbox_add([chunk("r1", i, 3) for i in range(3)])

    await store.outbox_mark("r1", 0, SENDING)
    pending = await store.outbox_pending("conv-1")
    assert [(c.index, c.state, c.attempts) for c in pending] == [
        (0, SENDING, 1),
        (1, PENDING, 0),
        (2, PENDING, 0),
    ]

    await store.outbox_mark("r1", 0, SENT)
    await store.outbox_mark("r1", 1, SENDING)
    await store.outbox_mark("r1", 1, UNDELIVERABLE, error="invalidStaffIdList")
    assert ids(await store.outbox_pending("conv-1")) == [("r1", 2)]
    assert [(c.index, c.total, c.state, c.error) for c in await store.outbox_reply("r1")] == [
        (0, 3, SENT, ""),
        (1, 3, UNDELIVERABLE, "invalidStaffIdList"),
        (2, 3, PENDING, ""),
    ]
    assert await store.outbox_reply("nothing") == []


async def test_outbox_cancel_one_reply_or_the_whole_conversation(store: Store) -> None:
    await store.outbox_add([chunk("r1", i, 3) for i in range(3)])
    await store.outbox_add([chunk("r2", i, 2) for i in range(2)])
    await store.outbox_add([chunk("x1", 0, 1, "conv-2")])
    await store.outbox_mark("r1", 0, SENT)
    await store.outbox_mark("r1", 1, SENDING)

    assert await store.outbox_cancel("conv-1", reply_id="r1") == 2
    assert ids(await store.outbox_pending("conv-1")) == [("r2", 0), ("r2", 1)]

    assert await store.outbox_cancel("conv-1") == 2
    assert await store.outbox_pending("conv-1") == []
    assert await store.outbox_cancel("conv-1") == 0
    assert ids(await store.outbox_pending("conv-2")) == [("x1", 0)]


async def test_outbox_prune_deletes_only_chunks_finished_before_the_horizon(store: Store) -> None:
    await store.outbox_add([chunk("r1", i, 4) for i in range(4)])
    await store.outbox_add([chunk("x1", 0, 1, "conv-2")])
    await store.outbox_sent("r1", 0, session_key="", chunks_sent=0, now=time.time())
    await store.outbox_mark("r1", 1, UNDELIVERABLE, "gone")
    await store.outbox_mark("r1", 2, SENDING)
    await store.outbox_cancel("conv-2")

    assert await store.outbox_prune(finished_before=time.time() - 3600) == 0  # all finished just now
    assert await store.outbox_prune(finished_before=time.time() + 1) == 3  # sent, undeliverable, cancelled
    assert ids(await store.outbox_pending()) == [("r1", 2), ("r1", 3)]  # unsent chunks are never pruned
    assert await store.outbox_prune(finished_before=time.time() + 1) == 0


async def test_a_cancelled_chunk_is_never_revived(store: Store) -> None:
    await store.outbox_add([chunk("r1", i, 3) for i in range(3)])
    await store.outbox_mark("r1", 0, SENDING)
    assert await store.outbox_cancel("conv-1") == 3

    # A sender still working from the list it read before /stop:
    await store.outbox_mark("r1", 1, SENDING)
    await store.outbox_mark("r1", 2, PENDING)
    await store.outbox_mark("r1", 0, SENT)  # the in-flight one did go out; recording that is fine

    assert await store.outbox_pending("conv-1") == []


# -- kv --------------------------------------------------------------------------------------------


async def test_kv_get_set_overwrite(store: Store) -> None:
    assert await store.kv_get("denied:u1") is None

    await store.kv_set("denied:u1", "100.0")
    await store.kv_set("denied:u2", "7")
    await store.kv_set("denied:u1", "200.5")

    assert await store.kv_get("denied:u1") == "200.5"
    assert await store.kv_get("denied:u2") == "7"


# -- schedules -------------------------------------------------------------------------------------------


async def test_a_schedule_slot_is_claimed_once(store: Store) -> None:
    assert await store.schedule_records() == {}
    assert await store.schedule_claim("morning", 1000.0, ARMED, now=1000.0)
    assert await store.schedule_claim("morning", 1060.0, FIRED, now=1060.5)
    # The same slot again (a restart, another replica) and an earlier one are refused.
    assert not await store.schedule_claim("morning", 1060.0, FIRED, now=1061.0)
    assert not await store.schedule_claim("morning", 1000.0, FIRED, now=1061.0)
    assert await store.schedule_records() == {
        "morning": ScheduleRecord("morning", 1060.0, FIRED, 1060.5, 1060.0, 1060.5)
    }


async def test_a_skipped_slot_advances_the_schedule_and_keeps_the_last_fired_one(store: Store) -> None:
    assert await store.schedule_claim("digest", 1060.0, FIRED, now=1060.0)
    assert await store.schedule_claim("digest", 90000.0, SKIPPED, now=99999.0)
    assert not await store.schedule_claim("digest", 1120.0, FIRED, now=99999.0)
    assert await store.schedule_claim("other", 5.0, ARMED, now=5.0)
    records = await store.schedule_records()
    assert records["digest"] == ScheduleRecord("digest", 90000.0, SKIPPED, 99999.0, 1060.0, 1060.0)
    assert records["other"] == ScheduleRecord("other", 5.0, ARMED, 5.0, None, None)


async def test_concurrent_claims_of_one_slot_have_one_winner(store: Store) -> None:
    import anyio

    wins: list[bool] = []

    async def claim() -> None:
        wins.append(await store.schedule_claim("race", 2000.0, FIRED, now=2000.0))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(claim)
    assert sorted(wins) == [False] * 7 + [True]
