"""What the Redis store does beyond the shared contract (tests/unit/test_store_contract.py): claims that
race between replicas, retried scripts, key prefixes and expiries, and a Redis that goes away. Always a
real redis-server (tests/redisserver.py)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from edgecrab.config import StorageConfig
from edgecrab.store import DONE, PENDING, RECEIVED, SENT, OutboxChunk, Turn, open_store
from edgecrab.store.base import StoreUnavailableError
from edgecrab.store.redis_lua import APPLY, OP_MEMO_S
from edgecrab.store.redis_rows import where
from edgecrab.store.redis_store import INBOX_TTL_S, KV_TTL_S, OUTBOX_TTL_S, RedisStore
from tests.redisserver import RedisServer, free_port

pytestmark = pytest.mark.anyio

ROBOT = "robot-1"


def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_server.url, prefix=prefix())
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def chunk(reply_id: str, index: int) -> OutboxChunk:
    return OutboxChunk(reply_id, index, 1, "conv", {"webhook": "https://x"}, "text", False, "t", PENDING, 1.0)


async def test_one_of_many_replicas_claiming_the_same_message_wins(redis_server: RedisServer) -> None:
    shared = prefix()
    replicas = [RedisStore(redis_server.url, prefix=shared) for _ in range(4)]
    for replica in replicas:
        await replica.open()
    results: list[tuple[str, bool]] = []

    async def claim(replica: RedisStore, msg_id: str, stream_id: str, group: str) -> None:
        results.append((group, await replica.inbox_claim(ROBOT, msg_id, stream_id, "{}", 1.0)))

    try:
        async with anyio.create_task_group() as tg:
            for n in range(50):
                for i, replica in enumerate(replicas):
                    # One msgId redelivered to every replica (each delivery its own frame id) ...
                    tg.start_soon(claim, replica, f"m{n}", f"frame-m{n}-{i}", f"msg {n}")
                    # ... and one frame id under several msgIds.
                    tg.start_soon(claim, replica, f"x{n}-{i}", f"frame-x{n}", f"frame {n}")
    finally:
        for replica in replicas:
            await replica.close()

    groups = {group for group, _ in results}
    assert len(groups) == 100 and len(results) == 400
    for group in groups:
        assert [new for g, new in results if g == group].count(True) == 1, group


async def test_a_run_finished_by_a_replica_whose_message_was_taken_over_writes_nothing(
    redis_server: RedisServer,
) -> None:
    """A replica whose lease lapsed while it ran a message, which another replica took over, must not
    record an answer too: the message would be answered twice."""
    shared = prefix()
    slow, live = RedisStore(redis_server.url, prefix=shared), RedisStore(redis_server.url, prefix=shared)
    await slow.open()
    await live.open()
    try:
        assert await slow.inbox_claim(ROBOT, "m1", "s1", "{}", 1.0)
        # slow's heartbeat never reached Redis: its messages look abandoned, and live takes m1 over.
        assert await live.coordination().adopt(ROBOT) == ["m1"]
        user, answer = Turn("user", "q", "m1", 1.0), Turn("assistant", "a", "m1", 2.0)
        finished = {"robot": ROBOT, "msg_id": "m1", "state": DONE, "now": 2.0, "turns": [user, answer]}
        assert not await slow.finish_turn("sess", **finished, reply=[chunk("slow-reply", 0)])
        assert await slow.history("sess", 10) == [] and await slow.outbox_pending() == []
        assert [e.msg_id for e in await live.inbox_unfinished(ROBOT)] == ["m1"]
        assert await live.finish_turn("sess", **finished, reply=[chunk("live-reply", 0)])
        assert [c.reply_id for c in await live.outbox_pending()] == ["live-reply"]
        assert await live.inbox_unfinished(ROBOT) == []
    finally:
        await slow.close()
        await live.close()


def run_args(store: RedisStore, token: str, *ops: str) -> list[str]:
    return [store.prefix, token, "5.0", "60", "60", *ops]


async def test_a_retried_run_returns_its_first_result_and_does_nothing_again(store: RedisStore) -> None:
    # redis-py sends a command again when the connection broke, maybe after Redis ran it: the same run
    # (same token) must answer as the first time, or a claim would report itself a duplicate.
    script = store.client.register_script(APPLY)
    claim = ("claim", ROBOT, "m1", "s1", "{}", "5.0", "")  # no owner: no replica routes it
    turns = ("turns", "sess", "1", '["user", "q", "m1", 5.0]')

    assert int(await script(keys=[], args=run_args(store, "t1", *claim))) == 1
    assert int(await script(keys=[], args=run_args(store, "t1", *claim))) == 1  # the retry: still "new"
    assert int(await script(keys=[], args=run_args(store, "t2", *claim))) == 0  # a redelivery: duplicate
    for _ in range(2):
        await script(keys=[], args=run_args(store, "t3", "ensure", "sess", "5.0", *turns))

    assert len(await store.history("sess", 10)) == 1
    assert [e.msg_id for e in await store.inbox_unfinished(ROBOT)] == ["m1"]
    assert 0 < await store.client.ttl(f"{store.prefix}op:t1") <= OP_MEMO_S


async def test_every_key_starts_with_the_prefix_and_prefixes_keep_gateways_apart(
    redis_server: RedisServer, store: RedisStore
) -> None:
    other = RedisStore(redis_server.url, prefix=prefix())
    await other.open()
    try:
        await store.inbox_claim(ROBOT, "m1", "s1", "{}", 1.0)
        await store.finish_turn("sess", robot=ROBOT, msg_id="m1", state=DONE, now=2.0, reply=[chunk("r1", 0)])
        await store.kv_set("k", "v")

        assert await other.inbox_claim(ROBOT, "m1", "s1", "{}", 1.0)  # new there
        assert await other.outbox_pending() == []
        assert await other.kv_get("k") is None
        keys = [k async for k in store.client.scan_iter(match=f"{store.prefix}*")]
        assert keys and all(k.startswith(store.prefix) for k in keys)
    finally:
        await other.close()


async def test_finished_entries_and_sent_chunks_expire_unfinished_ones_never(store: RedisStore) -> None:
    ttl = store.client.ttl
    p = store.prefix
    await store.inbox_claim(ROBOT, "open", "s-open", "{}", 1.0)
    await store.inbox_claim(ROBOT, "done", "s-done", "{}", 1.0)
    await store.inbox_set_state(ROBOT, "done", DONE)
    await store.outbox_add([chunk("r1", 0), chunk("r2", 0)])
    await store.outbox_mark("r1", 0, SENT)
    await store.kv_set("k", "v")

    assert await ttl(f"{p}inbox:{ROBOT}:msg:open") == -1 and await ttl(f"{p}inbox:{ROBOT}:sid:s-open") == -1
    assert INBOX_TTL_S - 5 < await ttl(f"{p}inbox:{ROBOT}:msg:done") <= INBOX_TTL_S
    assert INBOX_TTL_S - 5 < await ttl(f"{p}inbox:{ROBOT}:sid:s-done") <= INBOX_TTL_S
    assert OUTBOX_TTL_S - 5 < await ttl(f"{p}outbox:chunk:r1:0") <= OUTBOX_TTL_S
    assert await ttl(f"{p}outbox:chunk:r2:0") == -1
    assert KV_TTL_S - 5 < await ttl(f"{p}kv:k") <= KV_TTL_S

    await store.inbox_set_state(ROBOT, "done", RECEIVED)  # run again: keep it
    assert await ttl(f"{p}inbox:{ROBOT}:msg:done") == -1


async def test_an_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    store = open_store(StorageConfig(url=url, prefix="x:"))
    assert isinstance(store, RedisStore) and store.prefix == "x:"

    with pytest.raises(StoreUnavailableError, match="Redis at redis://127.0.0.1:.* is unreachable") as info:
        await store.open()
    assert "s3cret" not in str(info.value)
    assert where("rediss://u:p@h:1/2") == "rediss://h:1/2"


async def test_the_claim_fails_fast_while_redis_is_down_and_other_calls_wait_for_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    store = RedisStore(server.url, prefix="p:")
    try:
        await store.open()
        assert await store.inbox_claim(ROBOT, "m1", "s1", "{}", 1.0)

        server.stop()
        with anyio.fail_after(2):  # the ack path: DingTalk waits about 2 s for the ack
            with pytest.raises(StoreUnavailableError, match="unreachable"):
                await store.inbox_claim(ROBOT, "m2", "s2", "{}", 2.0)

        async with anyio.create_task_group() as tg:
            # The end of a run while Redis is down: recorded once it is back, not lost, not doubled.
            tg.start_soon(
                lambda: store.finish_turn(
                    "sess", robot=ROBOT, msg_id="m1", state=DONE, now=3.0, turns=[Turn("user", "q")]
                )
            )
            server.start()  # same port and directory: the AOF brings m1 back
        assert not await store.inbox_claim(ROBOT, "m1", "s1", "{}", 1.0)
        assert await store.inbox_claim(ROBOT, "m2", "s2", "{}", 2.0)
        assert [e.msg_id for e in await store.inbox_unfinished(ROBOT)] == ["m2"]
        assert await store.history("sess", 10) == [Turn("user", "q")]
    finally:
        await store.close()
        server.stop()


async def test_open_warns_when_redis_may_lose_or_evict_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(
        tmp_path / "redis", extra=["--appendonly", "no", "--maxmemory-policy", "allkeys-lru"]
    )
    server.start()
    store = RedisStore(server.url)
    try:
        with caplog.at_level(logging.WARNING, logger="edgecrab.store.redis"):
            await store.open()
    finally:
        await store.close()
        server.stop()

    text = caplog.text
    assert "appendonly yes" in text and "maxmemory-policy noeviction" in text and "allkeys-lru" in text


async def test_a_batch_of_claims_is_one_script_run_and_a_retry_of_it_is_still_new(store: RedisStore) -> None:
    """The ack path's batch: one run (one round trip), idempotent like a single claim."""
    script = store.client.register_script(APPLY)
    claims = ("claims", ROBOT, "5.0", "replica-a", "3", "m1", "s1", "{}", "m2", "s2", "{}", "m1", "s3", "{}")
    assert await script(keys=[], args=run_args(store, "t1", *claims)) == "110"
    assert await script(keys=[], args=run_args(store, "t1", *claims)) == "110"  # the retry: same answer
    assert await script(keys=[], args=run_args(store, "t2", *claims)) == "000"  # redelivered: duplicates


async def test_a_release_signals_free_only_when_messages_wait(redis_server: RedisServer) -> None:
    """``free`` wakes a replica whose message waits for the session; an idle session's release sends none."""
    shared = prefix()
    a, b = RedisStore(redis_server.url, prefix=shared), RedisStore(redis_server.url, prefix=shared)
    for s in (a, b):
        await s.open()
    pubsub = a.client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{shared}signals")
    heard: list[str] = []

    async def listen() -> None:
        while True:
            message = await pubsub.get_message(timeout=0.05)
            if message is not None:
                heard.append(json.loads(message["data"])["what"])

    key = f"{ROBOT}:dm:u1"
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            await a.coordination().enqueue(key, "m1")
            async with a.coordination().hold(key, "m1", lambda: False):
                pass
            await anyio.sleep(0.3)
            assert heard == []  # nobody waited
            await a.coordination().enqueue(key, "m2")
            await b.coordination().enqueue(key, "m3")  # another replica's message waits behind
            async with a.coordination().hold(key, "m2", lambda: False):
                pass
            with anyio.fail_after(3):
                while heard != ["free"]:  # noqa: ASYNC110 - the listener appends
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    finally:
        await pubsub.aclose()
        for s in (a, b):
            await s.close()


async def test_enqueue_counts_the_queue_and_turns_a_message_away_in_one_step(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(redis_server.url, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    await store.open()
    coord = store.coordination()
    key = f"{ROBOT}:dm:u1"
    try:
        assert await coord.enqueue(key, "m1") == 0
        assert await coord.enqueue(key, "m2", at_most=1) == 1
        assert await coord.enqueue(key, "m3", at_most=1) is None  # two waiting: turned away, not queued
        assert await coord.waiting(key) == 2
        assert await coord.enqueue(key, "m3", at_most=2) == 2
        assert await coord.enqueue(key, "m3") == 3  # once: already in the queue
        assert await coord.waiting(key) == 3
    finally:
        await store.close()
