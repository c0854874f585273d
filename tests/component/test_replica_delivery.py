"""Two replicas' deliveries and failover on one real redis-server (issue 21): a conversation's chunks go
out by one replica at a time, in order, none twice (the delivery lease); a dead replica's unsent chunks
and unfinished messages are taken over by exactly one live replica."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from edgecrab.coordination import ON_THE_WIRE, SEND
from edgecrab.dingtalk.markdown import title_preview, to_dingtalk_markdown
from edgecrab.events import ReplyRoute
from edgecrab.failover import Failover
from edgecrab.replies.delivery import Delivery
from edgecrab.replies.format import Format
from edgecrab.store.base import PROCESSING, InboxEntry
from edgecrab.store.redis_coord import RedisCoordination
from edgecrab.store.redis_store import RedisStore
from tests.redisserver import RedisServer

pytestmark = pytest.mark.anyio

ROUTE = ReplyRoute("robotA", "cid-1", False, "u1")
CONVERSATION = "robotA:cid-1"


class Sender:
    """Records (replica, text) of every message, and when it went out (``times``); ``gate`` holds this
    replica's sends while unset."""

    def __init__(self, name: str, sent: list[tuple[str, str]]) -> None:
        self.name, self.sent = name, sent
        self.gate: anyio.Event | None = None
        self.waiting = anyio.Event()
        self.times: list[float] = []

    async def send(self, route: ReplyRoute, *, text: str, **_: Any) -> Any:
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        self.sent.append((self.name, text))
        self.times.append(time.monotonic())
        return type("Sent", (), {"ok": True, "via": "test"})()


class Replica:
    def __init__(self, store: RedisStore, delivery: Delivery, sender: Sender, requeued: list[Any]) -> None:
        self.store, self.delivery, self.sender, self.requeued = store, delivery, sender, requeued
        coord = store.coordination()
        assert isinstance(coord, RedisCoordination)
        self.coord = coord
        self.failover = Failover(
            store,
            coord,
            "robotA",
            read=lambda e: None,  # type: ignore[arg-type,return-value]
            reply=_nothing,
            requeue=requeued.extend,
            wake=delivery.wake,
            every_s=1,
        )


async def _nothing(*_: Any) -> None:
    return None


@contextlib.asynccontextmanager
async def replicas(
    server: RedisServer, prefix: str = "", interval_s: float = 0
) -> AsyncIterator[tuple[Replica, Replica, list[Any]]]:
    prefix = prefix or f"d-{uuid.uuid4().hex[:10]}:"
    sent: list[tuple[str, str]] = []
    fmt = Format("markdown", to_dingtalk_markdown, title_preview, 40, 20000, False)
    made: list[Replica] = []
    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tg:
        for name in ("a", "b"):
            store = RedisStore(server.url, prefix, lease_s=3)
            await store.open()
            stack.push_async_callback(store.close)
            sender = Sender(name, sent)
            delivery = Delivery(store, sender, fmt, chunk_interval_s=interval_s)
            replica = Replica(store, delivery, sender, [])
            await tg.start(replica.coord.run, _nothing)
            await tg.start(delivery.run)
            made.append(replica)
        yield made[0], made[1], sent
        tg.cancel_scope.cancel()


def paragraphs(tag: str, n: int) -> str:
    """``n`` paragraphs of about 30 characters: one chunk each (40 at most)."""
    return "\n\n".join(part(tag, i) for i in range(1, n + 1))


def part(tag: str, i: int) -> str:
    return f"{tag} part {i} ".ljust(30, "x")


async def until(predicate: Any, within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - the deliveries have no event for these
            await anyio.sleep(0.005)


async def test_chunks_recorded_by_two_replicas_go_out_by_the_lease_holder_in_order(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server) as (a, b, sent):
        a.sender.gate = gate = anyio.Event()
        await a.delivery.enqueue(ROUTE, paragraphs("first", 3))
        await a.sender.waiting.wait()  # a holds the conversation's lease, mid-send
        await b.delivery.enqueue(ROUTE, paragraphs("second", 2))
        await until(lambda: CONVERSATION not in b.delivery.sending)  # b left them to a
        assert await b.store.client.get(f"{b.store.prefix}deliver:{CONVERSATION}") == a.coord.replica_id
        gate.set()
        await until(lambda: len(sent) == 5)
        await until(lambda: CONVERSATION not in a.delivery.sending)
        texts = [t for _, t in sent]
        assert texts == [part("first", i) for i in (1, 2, 3)] + [part("second", i) for i in (1, 2)]
        assert {who for who, _ in sent} == {"a"}
        assert not await a.store.outbox_pending(CONVERSATION)
        assert await a.store.client.get(f"{a.store.prefix}deliver:{CONVERSATION}") is None


async def test_a_dead_replicas_unsent_chunks_are_sent_once_by_a_live_replica(
    redis_server: RedisServer,
) -> None:
    prefix = f"d-{uuid.uuid4().hex[:10]}:"
    dead = RedisStore(redis_server.url, prefix)
    await dead.open()
    try:  # a replica that recorded a reply, took the lease and was SIGKILLed before sending
        chunks = Delivery(dead, Sender("dead", []), Format("markdown", str, title_preview, 40, 20000, False))
        prepared = chunks.prepare(ROUTE, paragraphs("orphan", 2))
        await dead.outbox_add(prepared.chunks)
        await dead.client.set(f"{prefix}deliver:{CONVERSATION}", "gone-replica", px=60000)
        await dead.client.set(f"{prefix}replica:gone-replica", "1", px=60000)  # its last heartbeat
    finally:
        await dead.close()
    async with replicas(redis_server, prefix) as (a, b, sent):
        await until(lambda: not a.delivery.sending and not b.delivery.sending)
        assert sent == []  # the lease names a live replica: nobody else sends
        assert await a.coord.orphaned_conversations() == []
        await a.store.client.delete(f"{prefix}replica:gone-replica")  # its heartbeat expires
        assert await a.coord.orphaned_conversations() == [CONVERSATION]
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.failover.sweep)
            tg.start_soon(b.failover.sweep)
        await until(lambda: len(sent) == 2)
        await until(lambda: not a.delivery.sending and not b.delivery.sending)
        assert [t for _, t in sent] == [part("orphan", 1), part("orphan", 2)]
        assert len({who for who, _ in sent}) == 1
        assert await a.coord.orphaned_conversations() == []


async def test_a_dead_replicas_unfinished_messages_are_taken_over_once(redis_server: RedisServer) -> None:
    prefix = f"d-{uuid.uuid4().hex[:10]}:"
    dead = RedisStore(redis_server.url, prefix)
    await dead.open()
    try:  # claimed (and one running) by a replica whose heartbeat never existed: it is gone
        for n in range(20):
            assert await dead.inbox_claim("robotA", f"m{n}", f"s{n}", "{}", time.time() + n / 1000)
        await dead.inbox_set_state("robotA", "m0", PROCESSING)
    finally:
        await dead.close()
    async with replicas(redis_server, prefix) as (a, b, _sent):
        mine = await a.store.inbox_claim("robotA", "live", "s-live", "{}", time.time())
        assert mine
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.failover.sweep)
            tg.start_soon(b.failover.sweep)
        taken = [e.msg_id for e in a.requeued + b.requeued if isinstance(e, InboxEntry)]
        assert sorted(taken) == sorted(f"m{n}" for n in range(20))  # each once; not a's own "live"
        assert a.failover.messages_taken_over + b.failover.messages_taken_over == 20
        await a.failover.sweep()
        await b.failover.sweep()
        assert len(a.requeued) + len(b.requeued) == 20  # taken over already: not again


async def lapse(replica: Replica) -> None:
    """``replica``'s heartbeat and delivery lease expire (its event loop stalled, or Redis was away)."""
    prefix = replica.store.prefix
    await replica.store.client.delete(
        f"{prefix}replica:{replica.coord.replica_id}", f"{prefix}deliver:{CONVERSATION}"
    )


async def test_a_lease_taken_before_the_first_heartbeat_names_a_live_replica(
    redis_server: RedisServer,
) -> None:
    """A starting replica resumes its ledger before its heartbeat runs: the lease it takes must not look
    free to the others (they would send the same chunks)."""
    prefix = f"d-{uuid.uuid4().hex[:10]}:"
    first, second = (
        RedisStore(redis_server.url, prefix, lease_s=3),
        RedisStore(redis_server.url, prefix, lease_s=3),
    )
    await first.open()
    await second.open()
    try:
        chunks = Delivery(first, Sender("x", []), Format("markdown", str, title_preview, 40, 20000, False))
        await first.outbox_add(chunks.prepare(ROUTE, paragraphs("early", 2)).chunks)
        assert await first.coordination().take_delivery(CONVERSATION)  # no heartbeat has run
        assert await first.client.exists(f"{prefix}replica:{first.coordination().replica_id}") == 1
        assert not await second.coordination().take_delivery(CONVERSATION)
        assert await second.coordination().orphaned_conversations() == []
    finally:
        await first.close()
        await second.close()


async def test_a_replica_whose_lease_lapsed_mid_reply_sends_no_chunk_twice(redis_server: RedisServer) -> None:
    async with replicas(redis_server) as (a, b, sent):
        a.sender.gate = gate = anyio.Event()
        await a.delivery.enqueue(ROUTE, paragraphs("lapsed", 3))
        await a.sender.waiting.wait()  # a is sending part 1 and has read parts 2 and 3 as unsent
        await lapse(a)
        await b.failover.sweep()  # b takes the conversation over: part 1 is on the wire, 2 and 3 are b's
        await until(lambda: len(sent) == 2)
        gate.set()  # a's send of part 1 finishes; a must not send 2 and 3 from the list it read
        await until(lambda: len(sent) == 3)
        await until(lambda: not a.delivery.sending and not b.delivery.sending)
        assert sorted(t for _, t in sent) == [part("lapsed", i) for i in (1, 2, 3)]
        assert sent[:2] == [("b", part("lapsed", 2)), ("b", part("lapsed", 3))]
        assert b.delivery._inflight.lost == 1
        assert not await a.store.outbox_pending(CONVERSATION)


async def test_chunks_cancelled_on_another_replica_are_not_sent_by_the_holder(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server) as (a, b, sent):
        a.sender.gate = gate = anyio.Event()
        await a.delivery.enqueue(ROUTE, paragraphs("stopped", 3))
        await a.sender.waiting.wait()  # a has read parts 2 and 3 and is sending part 1
        assert await b.delivery.cancel(ROUTE) == 3  # /stop handled by b (part 1 is on the wire already)
        gate.set()
        await until(lambda: not a.delivery.sending)
        assert [t for _, t in sent] == [part("stopped", 1)]


async def test_the_chunk_interval_holds_when_the_next_reply_goes_out_from_another_replica(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server, interval_s=0.4) as (a, b, sent):
        await a.delivery.enqueue(ROUTE, paragraphs("first", 1))
        await until(lambda: len(sent) == 1 and not a.delivery.sending)
        await b.delivery.enqueue(ROUTE, paragraphs("second", 1))  # b takes the free lease at once
        await until(lambda: len(sent) == 2)
        assert [who for who, _ in sent] == ["a", "b"]
        assert b.sender.times[0] - a.sender.times[0] >= 0.35  # not the same second at DingTalk


async def test_a_chunk_on_the_wire_when_its_replica_died_is_not_sent_again_by_its_next_life(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica restarted under the same ``EDGECRAB_REPLICA_ID`` (docs/deploy.md's ``%H-%i``, a pod's
    name) within ``lease_s`` is another life: a chunk the earlier life had on the wire is not sent
    again (DingTalk may have it); the same life retrying its own send does send it."""
    monkeypatch.setenv("EDGECRAB_REPLICA_ID", "node-1")
    prefix = f"d-{uuid.uuid4().hex[:10]}:"
    async with contextlib.AsyncExitStack() as stack:
        lives = [RedisStore(redis_server.url, prefix, lease_s=3) for _ in range(2)]
        for store in lives:
            await store.open()
            stack.push_async_callback(store.close)
        first, again = (store.coordination() for store in lives)
        fmt = Format("markdown", str, title_preview, 40, 20000, False)
        chunk = Delivery(lives[0], Sender("x", []), fmt).prepare(ROUTE, paragraphs("wire", 2)).chunks[0]
        await lives[0].outbox_add([chunk])
        start = (chunk.conversation_key, chunk.reply_id, chunk.index, 0.0)
        assert await first.start_sending(*start) == SEND  # marked sending; then SIGKILL, and a restart
        assert await again.start_sending(*start) == ON_THE_WIRE
        assert await first.start_sending(*start) == SEND  # (the first life's own retry)
