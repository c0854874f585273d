"""The Redis implementation of :class:`~edgecrab.store.base.Store`, which several gateway replicas share
(``storage.url: redis://[user:password@]host:port/db`` or ``rediss://`` for TLS), through redis-py's
asyncio client.

Every write is one run of a Lua script (:mod:`edgecrab.store.redis_lua`): atomic (one replica wins a
``msgId``; a run's history, usage, reply and inbox state land together or not at all). Reads are plain
commands. Every call but the claim goes through a :class:`~edgecrab.store.redis_pipe.Pipeliner`: the
commands that the gateway's tasks issue together share a pipeline (one round trip, a fraction of the CPU).
Every key starts with ``storage.prefix``; docs/redis.md lists them with their types and expiries.

The ack path awaits :meth:`RedisStore.inbox_claim` (``records_at_once`` is False): a message is acked
only once Redis has answered that it is recorded. redis-py reconnects and retries on its own, in two
pools: the claim gives up after ~0.3 s (:data:`~edgecrab.store.redis_rows.ACK_RETRY`) and raises
:class:`~edgecrab.store.base.StoreUnavailableError`, so the Stream connection answers that callback
with a 500 and DingTalk delivers it again later: nothing is acked that was not recorded. Every other call
waits up to about a minute for Redis to come back (:data:`~edgecrab.store.redis_rows.RETRY`): a run that
ends while Redis restarts is recorded, and answered, once it is back.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any, cast

import redis.asyncio

from edgecrab.coordination import Coordination, replica_id
from edgecrab.store import redis_rows as rows
from edgecrab.store.base import (
    PROCESSING,
    SENT,
    ChunkState,
    InboxEntry,
    OutboxChunk,
    ScheduleRecord,
    SessionStats,
    Store,
    StoreUnavailableError,
    Turn,
    UsageDelta,
)
from edgecrab.store.redis_cards import RedisCards
from edgecrab.store.redis_coord import RedisCoordination
from edgecrab.store.redis_lua import APPLY, NOT_OWNED, PENDING, SCHEDULE_CLAIM, SWEEP
from edgecrab.store.redis_pipe import Pipeliner
from edgecrab.store.redis_rows import Ops

log = logging.getLogger("edgecrab.store.redis")

INBOX_TTL_S = 2 * 86400
"""A finished inbox entry expires after two days, even if no replica prunes it (housekeeping prunes after
one): long enough to recognise any redelivery DingTalk makes."""
OUTBOX_TTL_S = 86400
"""A finished chunk expires after a day, as the SQLite store prunes it."""
KV_TTL_S = 7 * 86400
"""Small facts (a re-split chunk's pieces, when a denied user was told so) expire after a week."""
SWEEP_BATCH = 500
"""Keys deleted per script run when pruning, so that Redis never blocks long on a day of callbacks."""
CONNECTIONS = 4
"""The pool of every call but the claim (callers share pipelines: :class:`Pipeliner`)."""
PIPELINES_IN_FLIGHT = 1
"""Pipelines out at once; commands issued meanwhile wait for the next, which carries them all."""


class RedisStore(RedisCards, Store):
    """Everything the gateway persists, in Redis under ``prefix``; shared by every replica on ``url``."""

    records_at_once = False
    sole_writer = False
    server = "redis"

    def __init__(self, url: str, prefix: str = "edgecrab:", *, lease_s: float = 15.0) -> None:
        self.url = url
        self.prefix = prefix
        self.lease_s = lease_s
        self.replica = replica_id()
        """This process among the replicas: it owns the messages it claims until it dies."""
        self._coord: RedisCoordination | None = None
        self._client: redis.asyncio.Redis | None = None
        self._ack_client: redis.asyncio.Redis | None = None
        self._pipe: Pipeliner | None = None
        self._claim: Any = None
        self._tokens = map(f"{uuid.uuid4().hex[:16]}-{{:x}}".format, itertools.count())
        """Idempotency tokens of script runs: unique across replicas and restarts without a ``getrandom``
        system call each, as ``uuid4()`` makes."""

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._client is not None:
            return
        # Two clients (two pools): the ack path's claim gives up within ~0.3 s (the callback is answered
        # 500 and DingTalk redelivers); every other call waits up to a minute for Redis to come back.
        client = rows.connect(self.url, rows.RETRY, connections=CONNECTIONS, wait_s=30.0)
        ack_client = rows.connect(self.url, rows.ACK_RETRY, connections=16, wait_s=rows.COMMAND_TIMEOUT_S)
        try:
            with rows.reachable(self.url):
                await cast(Awaitable[bool], ack_client.ping())
                info = await ack_client.info()
        except BaseException:
            await client.aclose()
            await ack_client.aclose()
            raise
        self._client, self._ack_client = client, ack_client
        self._pipe = Pipeliner(client, in_flight=PIPELINES_IN_FLIGHT)
        self._claim = ack_client.register_script(APPLY)
        _warn_about_settings(info, rows.where(self.url))

    async def close(self) -> None:
        for client in (self._client, self._ack_client):
            if client is not None:
                await client.aclose()
        self._client = self._ack_client = None
        self._pipe = None

    async def ping(self) -> None:
        if self._ack_client is None:
            raise StoreUnavailableError("[store] Redis is not connected (the store is not open)")
        with rows.reachable(self.url):  # the ack path's client: gives up within ~0.3 s
            await cast(Awaitable[bool], self._ack_client.ping())

    def coordination(self) -> Coordination:
        # One per store: the runner's heartbeat renews the delivery's leases too.
        if self._coord is None:
            self._coord = RedisCoordination(self, self.replica, self.lease_s)
        return self._coord

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("RedisStore is not open: await store.open() first")
        return self._client

    @property
    def pipe(self) -> Pipeliner:
        """Where every call but the claim goes (shared pipelines)."""
        if self._pipe is None:
            raise RuntimeError("RedisStore is not open: await store.open() first")
        return self._pipe

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _call(self, *args: Any) -> Any:
        with rows.reachable(self.url):
            return await self.pipe.call(*args)

    async def _calls(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        with rows.reachable(self.url):
            return await self.pipe.calls(commands)

    async def _run(self, ops: Ops, *, ack_path: bool = False) -> Any:
        """One :data:`~edgecrab.store.redis_lua.APPLY` run of ``ops``, with a fresh idempotency token
        (``ack_path``: on the claim's own client, which gives up within ~0.3 s)."""
        args = [self.prefix, next(self._tokens), repr(time.time()), str(INBOX_TTL_S), str(OUTBOX_TTL_S)]
        with rows.reachable(self.url):
            if ack_path:
                if self._claim is None:
                    raise RuntimeError("RedisStore is not open: await store.open() first")
                return await self._claim(keys=[], args=[*args, *ops.args])
            return await self.pipe.script(APPLY, [], [*args, *ops.args])

    async def _sweep_all(self, what: str, horizon: float) -> int:
        deleted = 0
        while True:
            with rows.reachable(self.url):
                done, examined = await self.pipe.script(
                    SWEEP, [], [self.prefix, what, repr(horizon), SWEEP_BATCH]
                )
            deleted += int(done)
            if int(examined) < SWEEP_BATCH:
                return deleted

    # -- inbox -------------------------------------------------------------------------------------
    async def inbox_claim(
        self, robot: str, msg_id: str, stream_message_id: str, payload: str, received_at: float
    ) -> bool:
        return (await self.inbox_claim_many(robot, [(msg_id, stream_message_id, payload)], received_at))[0]

    async def inbox_claim_many(
        self, robot: str, items: Sequence[tuple[str, str, str]], received_at: float
    ) -> list[bool]:
        # One script run for the batch: one round trip, and one step of the event loop, however many.
        ops = Ops().claims(robot, items, received_at, self.replica)
        news = str(await self._run(ops, ack_path=True))
        return [c == "1" for c in news]

    async def inbox_set_state(self, robot: str, msg_id: str, state: str, error: str = "") -> None:
        await self._run(Ops().inbox_state(robot, msg_id, state, error))

    async def inbox_unfinished(self, robot: str) -> list[InboxEntry]:
        msg_ids = await self._call("ZRANGE", self._key("inbox", robot, "open"), 0, -1)
        hashes = await self._calls([("HGETALL", self._key("inbox", robot, "msg", m)) for m in msg_ids])
        found = [(m, h) for m, h in zip(msg_ids, hashes, strict=True) if h]
        found.sort(key=lambda mh: (float(mh[1]["received_at"]), int(mh[1]["seq"])))
        return [rows.inbox_entry(robot, m, h) for m, h in found]

    async def inbox_prune(self, older_than: float) -> int:
        return await self._sweep_all("inbox", older_than)

    # -- sessions ----------------------------------------------------------------------------------
    async def session_stats(self, key: str) -> SessionStats | None:
        h = await self._call("HGETALL", self._key("session", key))
        return rows.session_stats(key, h) if h else None

    async def session_ensure(self, key: str, now: float) -> SessionStats:
        await self._run(Ops().add("ensure", key, now))
        stats = await self.session_stats(key)
        assert stats is not None  # made just now; only sessions_expire deletes one
        return stats

    async def turn_started(self, key: str, *, robot: str, msg_id: str, now: float) -> None:
        await self._run(Ops().inbox_state(robot, msg_id, PROCESSING, "").add("ensure", key, now))

    async def history(self, key: str, limit: int) -> list[Turn]:
        if limit <= 0:
            return []
        raw = await self._call("LRANGE", self._key("history", key), -limit, -1)
        return [rows.turn(r) for r in raw]

    async def history_append(self, key: str, turns: list[Turn]) -> None:
        if not turns:
            return
        now = max(t.at for t in turns) or time.time()
        # History never exists without its session, so /new and idle expiry always find it.
        await self._run(Ops().add("ensure", key, now).turns(key, turns))

    async def history_pop_last_exchange(self, key: str) -> Turn | None:
        raw = await self._run(Ops().add("pop", key))
        return rows.turn(raw) if raw else None

    async def session_reset(self, key: str, now: float) -> None:
        await self._run(Ops().add("reset", key, now))

    async def usage_add(self, key: str, delta: UsageDelta, now: float, last_user: Turn | None = None) -> None:
        await self._run(Ops().usage(key, now, delta, last_user))

    async def sessions_expire(self, idle_before: float) -> int:
        return await self._sweep_all("sessions", idle_before)

    async def session_count(self) -> int:
        return int(await self._call("ZCARD", self._key("sessions")))

    async def finish_turn(
        self,
        key: str,
        *,
        robot: str,
        msg_id: str,
        state: str,
        now: float,
        error: str = "",
        turns: Sequence[Turn] = (),
        usage: UsageDelta | None = None,
        last_user: Turn | None = None,
        reply: Sequence[OutboxChunk] = (),
    ) -> bool:
        # One script run: after a crash either all of it happened or none (the message runs again).
        # Fenced: a replica whose lease lapsed while it ran the message, and which another replica took
        # over (ADOPT changed its owner), writes nothing: the new owner answers it, once.
        ops = Ops().add("owned", robot, msg_id, self.replica)
        if usage is not None or last_user is not None:
            ops.usage(key, now, usage or UsageDelta(), last_user)  # makes the session if need be
        elif turns:
            ops.add("ensure", key, now)
        if turns:
            ops.turns(key, turns)
        if reply:
            ops.chunks(reply)
        ops.inbox_state(robot, msg_id, state, error)
        return int(await self._run(ops) or 0) != NOT_OWNED

    # -- outbox (delivery ledger) ------------------------------------------------------------------
    async def outbox_add(self, chunks: list[OutboxChunk]) -> None:
        if chunks:
            await self._run(Ops().chunks(chunks))

    async def outbox_pending(self, conversation_key: str | None = None) -> list[OutboxChunk]:
        chunks = self._key("outbox", "chunk", "")
        if conversation_key is not None:  # a conversation's few: one script run, one round trip
            index = self._key("outbox", "conv", conversation_key)
            with rows.reachable(self.url):
                found = await self.pipe.script(PENDING, [index], [chunks])
            return [rows.chunk(dict(zip(h[::2], h[1::2], strict=True))) for h in found]
        ids = await self._call("ZRANGE", self._key("outbox", "open"), 0, -1)  # everything: no long script
        hashes = await self._calls([("HGETALL", chunks + c) for c in ids])
        return [rows.chunk(h) for h in hashes if h]

    async def outbox_reply(self, reply_id: str) -> list[ChunkState]:
        fields = ["total", "state", "error"]

        async def read(indexes: range) -> list[Any]:
            key = self._key("outbox", "chunk", "")
            return await self._calls([("HMGET", key + rows.chunk_id(reply_id, i), *fields) for i in indexes])

        first = (await read(range(1)))[0]
        if first[0] is None:
            return []
        total = int(first[0])
        found = [first, *await read(range(1, total))]
        return [
            ChunkState(index, total, str(values[1]), str(values[2] or ""))
            for index, values in enumerate(found)
            if values[1] is not None
        ]

    async def outbox_mark(self, reply_id: str, index: int, state: str, error: str = "") -> None:
        await self._run(Ops().add("mark", rows.chunk_id(reply_id, index), state, error))

    async def outbox_sent(
        self, reply_id: str, index: int, *, session_key: str, chunks_sent: int, now: float
    ) -> None:
        ops = Ops().add("mark", rows.chunk_id(reply_id, index), SENT, "")
        if session_key and chunks_sent:
            ops.usage(session_key, now, UsageDelta(chunks_sent=chunks_sent), None)
        await self._run(ops)

    async def outbox_prune(self, finished_before: float) -> int:
        return await self._sweep_all("outbox", finished_before)

    async def outbox_cancel(self, conversation_key: str, reply_id: str | None = None) -> int:
        return int(await self._run(Ops().add("cancel", conversation_key, reply_id or "")))

    # -- small facts -------------------------------------------------------------------------------
    async def kv_get(self, key: str) -> str | None:
        value = await self._call("GET", self._key("kv", key))
        return None if value is None else str(value)

    async def kv_set(self, key: str, value: str) -> None:
        await self._call("SET", self._key("kv", key), value, "EX", KV_TTL_S)

    # -- schedules ---------------------------------------------------------------------------------
    async def schedule_claim(self, name: str, slot: float, outcome: str, now: float) -> bool:
        keys = [self._key("schedule", name), self._key("schedules")]
        args = [name, repr(float(slot)), outcome, repr(now), uuid.uuid4().hex]
        with rows.reachable(self.url):
            return int(await self.pipe.script(SCHEDULE_CLAIM, keys, args)) == 1

    async def schedule_records(self) -> dict[str, ScheduleRecord]:
        names = sorted(await self._call("SMEMBERS", self._key("schedules")))
        hashes = await self._calls([("HGETALL", self._key("schedule", n)) for n in names])
        return {n: rows.schedule_record(n, h) for n, h in zip(names, hashes, strict=True) if h}


def _warn_about_settings(info: dict[str, Any], where: str) -> None:
    """The settings docs/redis.md asks for: without AOF a Redis restart loses what was acked; with an
    evicting memory policy Redis may drop an unfinished message or unsent chunk to make room."""
    if str(info.get("aof_enabled", "1")) != "1":
        log.warning(
            "[store] Redis at %s runs without AOF (appendonly no): a restart of Redis may lose "
            "messages already acked; set appendonly yes (docs/redis.md)",
            where,
        )
    policy = str(info.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        log.warning(
            "[store] Redis at %s has maxmemory-policy %s: it may evict unfinished messages or "
            "unsent replies; set maxmemory-policy noeviction (docs/redis.md)",
            where,
            policy,
        )
