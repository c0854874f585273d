"""What :class:`~edgecrab.store.redis_store.RedisStore` sends and reads: the operation lists its scripts run
(:class:`Ops`), Redis hashes <-> the store's dataclasses, the client's connection settings and the error a
method raises when Redis cannot be reached.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from edgecrab.store.base import (
    InboxEntry,
    OutboxChunk,
    ScheduleRecord,
    SessionStats,
    StoreUnavailableError,
    Turn,
    UsageDelta,
)

CONNECT_TIMEOUT_S = 1.0
"""A refused or unroutable Redis fails the ack path fast: DingTalk waits about 2 s for the ack."""
COMMAND_TIMEOUT_S = 2.0
"""A Redis that stopped answering (paused, failing over) fails the call rather than hang it."""
HEALTH_CHECK_S = 10
"""redis-py PINGs a connection idle this long before using it, so a dead one is replaced, not tried."""
ACK_RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)
"""The ack path's reconnect (the claim): a broken connection is replaced and the command sent again twice,
about 0.1 and 0.2 s apart, then the claim fails and the callback is answered 500 (DingTalk redelivers)."""
RETRY = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=30)
"""Everything else waits for Redis to come back: up to 30 retries, 0.2 s growing to 2 s apart (about a
minute), so a run that ends, or a chunk that is sent, while Redis restarts is recorded once it is back
instead of failing. The scripts make resending safe (:mod:`edgecrab.store.redis_lua`)."""


def connect(url: str, retry: Retry, *, connections: int, wait_s: float) -> redis.asyncio.Redis:
    """A client for ``url`` (``redis://`` or ``rediss://``) with its own pool of at most ``connections``
    (a caller waits up to ``wait_s`` for a free one) and ``retry`` policy; it connects on first use.

    A bounded, blocking pool: redis-py's default pool opens a connection per concurrent command, so a burst
    of 2,000 callbacks opened 2,000 connections (1.7 s for the burst on loopback, against 0.2 s here)."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=connections,
        timeout=wait_s,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=COMMAND_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_S,
        retry=retry,
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    )
    return redis.asyncio.Redis.from_pool(pool)


def where(url: str) -> str:
    """``url`` without its user and password, for messages."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


@contextlib.contextmanager
def reachable(url: str) -> Iterator[None]:
    """Turn redis-py's connection errors (after its retries) into :class:`StoreUnavailableError`."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise StoreUnavailableError(
            f"[store] Redis at {where(url)} is unreachable: {type(exc).__name__}: {exc}"
        ) from exc


class Ops:
    """The ``ARGV`` of one :data:`~edgecrab.store.redis_lua.APPLY` run: each operation's name, then its
    arguments, as the script reads them. Values are strings already, so nothing fails inside the script."""

    def __init__(self) -> None:
        self.args: list[str] = []

    def add(self, name: str, *values: object) -> Ops:
        self.args += [name, *(_text(v) for v in values)]
        return self

    def claim(
        self, robot: str, msg_id: str, stream_message_id: str, payload: str, at: float, owner: str
    ) -> Ops:
        return self.add("claim", robot, msg_id, stream_message_id, payload, at, owner)

    def claims(self, robot: str, items: Sequence[tuple[str, str, str]], at: float, owner: str) -> Ops:
        """Several claims in one run; ``items``: ``(msg_id, stream_message_id, payload)``."""
        return self.add("claims", robot, at, owner, len(items), *(v for item in items for v in item))

    def inbox_state(self, robot: str, msg_id: str, state: str, error: str) -> Ops:
        return self.add("state", robot, msg_id, state, error)

    def usage(self, key: str, now: float, delta: UsageDelta, last_user: Turn | None) -> Ops:
        last = ("1", last_user.content, last_user.msg_id) if last_user is not None else ("0", "", "")
        extra = json.dumps(delta.extra) if delta.extra else ""
        counters = (delta.turns, delta.messages_in, delta.messages_out, delta.prompt_tokens)
        return self.add(
            "usage",
            key,
            now,
            *counters,
            delta.completion_tokens,
            delta.agent_seconds,
            delta.chunks_sent,
            *last,
            extra,
        )

    def turns(self, key: str, turns: Sequence[Turn]) -> Ops:
        return self.add(
            "turns", key, len(turns), *(json.dumps([t.role, t.content, t.msg_id, t.at]) for t in turns)
        )

    def chunks(self, chunks: Sequence[OutboxChunk]) -> Ops:
        # The ledger's order is the send order: each reply's chunks by index even if listed otherwise
        # (replies keep the order in which they were given), as the SQLite store does.
        first_seen = {c.reply_id: i for i, c in reversed(list(enumerate(chunks)))}
        ordered = sorted(chunks, key=lambda c: (first_seen[c.reply_id], c.index))
        fields: list[object] = [len(ordered)]
        for c in ordered:
            fields += [c.reply_id, c.index, c.total, c.conversation_key, c.session_key, json.dumps(c.route)]
            fields += [c.text, int(c.mention), c.title, c.created_at, c.attempts]
        return self.add("chunks", *fields)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def chunk_id(reply_id: str, index: int) -> str:
    return f"{reply_id}:{index}"


def inbox_entry(robot: str, msg_id: str, h: Mapping[str, str]) -> InboxEntry:
    return InboxEntry(
        robot=robot,
        msg_id=msg_id,
        stream_message_id=h["sid"],
        payload=h["payload"],
        received_at=float(h["received_at"]),
        state=h["state"],
        attempts=int(h["attempts"]),
    )


def schedule_record(name: str, h: Mapping[str, str]) -> ScheduleRecord:
    fired = h.get("fired_slot")
    return ScheduleRecord(
        name, float(h["slot"]), h["outcome"], float(h["at"]),
        float(fired) if fired else None, float(h["fired_at"]) if fired else None,
    )


def session_stats(key: str, h: Mapping[str, str]) -> SessionStats:
    return SessionStats(
        key=key,
        created_at=float(h["created_at"]),
        last_active_at=float(h["last_active_at"]),
        turns=int(h["turns"]),
        messages_in=int(h["messages_in"]),
        messages_out=int(h["messages_out"]),
        prompt_tokens=int(h["prompt_tokens"]),
        completion_tokens=int(h["completion_tokens"]),
        agent_seconds=float(h["agent_seconds"]),
        chunks_sent=int(h["chunks_sent"]),
        last_user_text=h["last_user_text"],
        last_user_msg_id=h["last_user_msg_id"],
    )


def turn(raw: str) -> Turn:
    role, content, msg_id, at = json.loads(raw)
    return Turn(role, content, msg_id, float(at))


def chunk(h: Mapping[str, str]) -> OutboxChunk:
    return OutboxChunk(
        reply_id=h["reply_id"],
        index=int(h["idx"]),
        total=int(h["total"]),
        conversation_key=h["conversation_key"],
        route=_route(h["route"]),
        text=h["text"],
        mention=h["mention"] == "1",
        title=h["title"],
        state=h["state"],
        created_at=float(h["created_at"]),
        attempts=int(h["attempts"]),
        session_key=h["session_key"],
    )


def _route(raw: str) -> dict[str, Any]:
    route = json.loads(raw)
    return route if isinstance(route, dict) else {}
