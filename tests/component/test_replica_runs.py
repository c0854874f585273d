"""Two session runners (two replicas) on one real redis-server (issue 21): one run per session across both,
the session's queue in arrival order across them, the busy policies, and /stop or /new sent to one
replica cancelling the run on the other within a second. A dead replica's lease expires and its head of
queue is skipped."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from edgecrab.config import SessionsConfig
from edgecrab.core.runs import Runner
from edgecrab.events import Message
from edgecrab.store import DONE
from edgecrab.store.redis_coord import RedisCoordination
from edgecrab.store.redis_store import RedisStore
from tests.redisserver import RedisServer
from tests.unit.test_runs import Echo, msg

pytestmark = pytest.mark.anyio

KEY = "robotA:dm:u1"


class Replica:
    def __init__(self, name: str, runner: Runner, store: RedisStore, agent: Echo, replies: list[Any]) -> None:
        self.name, self.runner, self.store, self.agent, self.replies = name, runner, store, agent, replies

    async def submit(self, message: Message) -> None:
        assert await self.store.inbox_claim(message.robot, message.id, f"s-{message.id}", "{}", time.time())
        await self.runner.submit(message)


@contextlib.asynccontextmanager
async def cluster(server: RedisServer, **sessions: Any) -> AsyncIterator[tuple[Replica, Replica, list[Any]]]:
    """Replicas ``a`` and ``b`` on one prefix; ``replies`` gets (replica, session key, text) in order."""
    prefix = f"t-{uuid.uuid4().hex[:10]}:"
    replies: list[Any] = []
    made: list[Replica] = []
    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tg:
        for name in ("a", "b"):
            store = RedisStore(server.url, prefix, lease_s=3)
            await store.open()
            stack.push_async_callback(store.close)
            agent = Echo()

            async def reply(message: Message, text: str, key: str, name: str = name) -> None:
                replies.append((name, key, text))

            runner = Runner(SessionsConfig(**sessions), store, agent, reply)
            await tg.start(runner.run)
            made.append(Replica(name, runner, store, agent, replies))
        yield made[0], made[1], replies
        tg.cancel_scope.cancel()


async def until(predicate: Any, within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - the runner has no event for these
            await anyio.sleep(0.005)


async def test_a_session_runs_on_one_replica_at_a_time_in_arrival_order(redis_server: RedisServer) -> None:
    async with cluster(redis_server) as (a, b, replies):
        a.agent.gate = gate = anyio.Event()
        await a.submit(msg("first"))
        await until(lambda: a.agent.in_flight == 1)
        await b.submit(msg("second"))  # same session, the other replica: it waits in the session's queue
        await until(lambda: replies)
        assert replies == [
            ("b", KEY, "⏳ Queued — position 1. I'll answer when the current reply is done (/stop cancels).")
        ]
        with anyio.move_on_after(0.3):
            await until(lambda: b.agent.requests)
        assert not b.agent.requests  # not while a runs the session
        gate.set()
        await until(lambda: len(b.agent.requests) == 1)
        assert [r.messages[-1]["content"] for r in a.agent.requests + b.agent.requests] == ["first", "second"]
        assert b.agent.requests[0].messages[:-1] == [  # b's run sees a's turn: history is shared
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "echo first"},
        ]
        await until(lambda: not a.runner._sessions and not b.runner._sessions)
        assert await b.runner.coord.waiting(KEY) == 0


async def test_stop_sent_to_one_replica_cancels_the_run_on_the_other_within_a_second(
    redis_server: RedisServer,
) -> None:
    async with cluster(redis_server) as (a, b, replies):
        a.agent.gate = anyio.Event()  # never set: only a cancel ends this run
        running = msg("a long question")
        await a.submit(running)
        await until(lambda: a.agent.in_flight == 1)
        queued = msg("queued behind it")
        await a.submit(queued)
        started = time.monotonic()
        assert await b.runner.stop(KEY) == (True, [])
        await until(lambda: a.agent.in_flight == 0, within=1.0)
        assert time.monotonic() - started < 1.0
        await until(lambda: not a.runner._sessions)
        assert [r.messages[-1]["content"] for r in a.agent.requests] == ["a long question"]  # queued dropped
        assert isinstance(a.runner.coord, RedisCoordination) and a.runner.coord.signals_received == 1
        assert await a.store.inbox_unfinished("robotA") == []
        assert [r[2][:9] for r in replies] == ["⏳ Queued "]  # the stopped run answers nothing
        assert await a.runner.coord.waiting(KEY) == 0


async def test_new_on_one_replica_resets_a_run_on_the_other(redis_server: RedisServer) -> None:
    async with cluster(redis_server) as (a, b, _replies):
        a.agent.gate = anyio.Event()
        await a.submit(msg("old topic"))
        await until(lambda: a.agent.in_flight == 1)
        running, _ = await b.runner.reset(KEY)
        assert running
        await until(lambda: not a.runner._sessions, within=1.0)
        assert await a.store.history(KEY, 10) == []


async def test_reject_and_interrupt_policies_see_a_run_on_another_replica(redis_server: RedisServer) -> None:
    async with cluster(redis_server, busy_policy="reject") as (a, b, replies):
        a.agent.gate = gate = anyio.Event()
        await a.submit(msg("first"))
        await until(lambda: a.agent.in_flight == 1)
        rejected = msg("too soon")
        await b.submit(rejected)
        assert replies[-1][0] == "b" and replies[-1][2].startswith("⏳ I'm still working")
        gate.set()
    async with cluster(redis_server, busy_policy="interrupt") as (a, b, replies):
        a.agent.gate = anyio.Event()  # never set: only the interrupt ends it
        await a.submit(msg("first"))
        await until(lambda: a.agent.in_flight == 1)
        await b.submit(msg("instead"))
        await until(lambda: len(b.agent.requests) == 1, within=2.0)
        assert a.agent.in_flight == 0
        assert ("b", KEY, "⏹ Stopped the previous answer — working on your new message.") in replies


async def test_a_dead_replicas_place_in_the_queue_is_skipped_once_its_lease_expired(
    redis_server: RedisServer,
) -> None:
    async with cluster(redis_server) as (a, _b, _replies):
        client, prefix = a.store.client, a.store.prefix
        # A replica that died (SIGKILL) while running the session: its lease and place stay, briefly.
        await client.rpush(f"{prefix}sessq:{KEY}", "dead-replica|m-dead")
        await client.set(f"{prefix}lease:{KEY}", "dead-replica", px=400)
        await client.set(f"{prefix}replica:dead-replica", "1", px=400)  # its heartbeat, not renewed
        started = time.monotonic()
        m = msg("after the failover")
        await a.submit(m)
        await until(lambda: a.agent.requests)
        assert time.monotonic() - started >= 0.35  # it waited for the replica's heartbeat to expire
        await until(lambda: not a.runner._sessions)
        entry = await a.store.client.hget(f"{prefix}inbox:robotA:msg:{m.id}", "state")
        assert entry == DONE and await a.runner.coord.waiting(KEY) == 0


async def test_the_session_queue_follows_the_claims_whichever_replica_enqueues_first(
    redis_server: RedisServer,
) -> None:
    async with cluster(redis_server) as (a, b, _replies):
        a.agent.gate = gate = anyio.Event()
        first, second, third = msg("first"), msg("second"), msg("third")
        await a.submit(first)
        await until(lambda: a.agent.in_flight == 1)
        for m, claimer in ((second, b), (third, a)):  # claimed in this order (b, then a) ...
            assert await claimer.store.inbox_claim(m.robot, m.id, f"s-{m.id}", "{}", time.time())
        await a.runner.submit(third)  # ... but a's ingest got there first
        await b.runner.submit(second)
        gate.set()
        await until(lambda: len(a.agent.requests) + len(b.agent.requests) == 3)
        asked = [r.messages[-1]["content"] for r in a.agent.requests + b.agent.requests]
        assert b.agent.requests[0].messages[-3:-1] == [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "echo first"},
        ]  # second ran right after first ...
        assert a.agent.requests[1].messages[-3:-1] == [
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": "echo second"},
        ], asked  # ... and third after second


async def test_a_dead_replicas_unfinished_message_keeps_its_place_when_taken_over(
    redis_server: RedisServer,
) -> None:
    async with cluster(redis_server) as (a, b, _replies):
        client, prefix = a.store.client, a.store.prefix
        dead = msg("taken over")  # claimed and running on a replica that was SIGKILLed
        gone = RedisStore(redis_server.url, prefix)
        gone.replica = "dead-replica"
        await gone.open()
        assert await gone.inbox_claim(dead.robot, dead.id, f"s-{dead.id}", "{}", time.time())
        await gone.close()
        await client.rpush(f"{prefix}sessq:{KEY}", f"dead-replica|{dead.id}")
        later = msg("later")
        await b.submit(later)  # behind the dead replica's message, which is not finished: b waits
        with anyio.move_on_after(0.5):
            await until(lambda: b.agent.requests)
        assert not b.agent.requests
        taken = await b.runner.coord.adopt("robotA")
        assert taken == [dead.id]
        await b.runner.submit(dead, quiet=True)  # the failover sweep's pick-up: it takes the dead one's place
        await until(lambda: len(b.agent.requests) == 2)
        assert [r.messages[-1]["content"] for r in b.agent.requests] == ["taken over", "later"]
        await until(lambda: not b.runner._sessions)
        assert await b.runner.coord.waiting(KEY) == 0
