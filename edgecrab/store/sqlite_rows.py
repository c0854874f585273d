"""SQL shared by several :class:`~edgecrab.store.sqlite.SQLiteStore` methods, and rows <-> dataclasses.

Each function runs on a connection the caller holds (inside its transaction when it has one), so the same
statement serves a method on its own (``usage_add``) and the combined writes (``finish_turn``).
"""

from __future__ import annotations

import json
import operator
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from edgecrab.store.base import CANCELLED, PENDING, PROCESSING, SENDING, OutboxChunk, Turn, UsageDelta

COUNTERS = (
    "turns",
    "messages_in",
    "messages_out",
    "prompt_tokens",
    "completion_tokens",
    "agent_seconds",
    "chunks_sent",
)


def ensure_session(conn: sqlite3.Connection, key: str, now: float) -> None:
    conn.execute(
        "INSERT INTO sessions (key, created_at, last_active_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (key, now, now),
    )


def inbox_state_update(robot: str, msg_id: str, state: str, error: str) -> tuple[str, tuple[Any, ...]]:
    # attempts counts how often processing started, so a message that keeps crashing the
    # process on start can be recognised and given up on.
    return (
        "UPDATE inbox SET state = ?, error = ?, updated_at = ?, attempts = attempts + ?"
        " WHERE robot = ? AND msg_id = ?",
        (state, error, time.time(), int(state == PROCESSING), robot, msg_id),
    )


def outbox_state_update(
    reply_id: str, index: int, state: str, error: str = ""
) -> tuple[str, tuple[Any, ...]]:
    # attempts counts send attempts: the sender marks a chunk SENDING before each try. A cancelled
    # chunk never goes back to PENDING/SENDING (a sender working from an older list must not revive
    # what /stop cancelled); SENT or UNDELIVERABLE may still record what really happened to it.
    return (
        "UPDATE outbox SET state = ?, error = ?, updated_at = ?, attempts = attempts + ?"
        " WHERE reply_id = ? AND idx = ? AND NOT (state = ? AND ? IN (?, ?))",
        (
            state,
            error,
            time.time(),
            int(state == SENDING),
            reply_id,
            index,
            CANCELLED,
            state,
            PENDING,
            SENDING,
        ),
    )


def append_turns(conn: sqlite3.Connection, key: str, turns: Sequence[Turn]) -> None:
    conn.executemany(
        "INSERT INTO history (session_key, role, content, msg_id, at) VALUES (?, ?, ?, ?, ?)",
        [(key, t.role, t.content, t.msg_id, t.at) for t in turns],
    )


def add_usage(
    conn: sqlite3.Connection, key: str, delta: UsageDelta, now: float, last_user: Turn | None
) -> None:
    """Count ``delta`` in the session, which is made first if it does not exist (expired, ``/new``)."""
    if not _count_usage(conn, key, delta, now, last_user):
        ensure_session(conn, key, now)
        _count_usage(conn, key, delta, now, last_user)


_COUNT = ", ".join([f"{c} = {c} + ?" for c in COUNTERS] + ["last_active_at = max(last_active_at, ?)"])
_USAGE = f"UPDATE sessions SET {_COUNT} WHERE key = ?"
_USAGE_LAST_USER = f"UPDATE sessions SET {_COUNT}, last_user_text = ?, last_user_msg_id = ? WHERE key = ?"
_counters = operator.attrgetter(*COUNTERS)


def _count_usage(
    conn: sqlite3.Connection, key: str, delta: UsageDelta, now: float, last_user: Turn | None
) -> bool:
    """False (and nothing done) when the session does not exist. The session nearly always exists, so
    updating first and inserting only when that found no row saves a statement per run's end. The two
    statements are written once, not per call (twice a message)."""
    if last_user is None:
        cursor = conn.execute(_USAGE, (*_counters(delta), now, key))
    else:
        params = (*_counters(delta), now, last_user.content, last_user.msg_id, key)
        cursor = conn.execute(_USAGE_LAST_USER, params)
    if not cursor.rowcount:
        return False
    if delta.extra:
        (raw,) = conn.execute("SELECT extra FROM sessions WHERE key = ?", (key,)).fetchone()
        merged = _merge_extra(json.loads(raw), delta.extra)
        conn.execute("UPDATE sessions SET extra = ? WHERE key = ?", (json.dumps(merged), key))
    return True


def add_chunks(conn: sqlite3.Connection, chunks: Sequence[OutboxChunk]) -> None:
    # seq, assigned in insertion order, is the send order: insert each reply's chunks by index even
    # if the caller listed them otherwise (replies keep the order in which they were given).
    first_seen = {c.reply_id: i for i, c in reversed(list(enumerate(chunks)))}
    ordered = sorted(chunks, key=lambda c: (first_seen[c.reply_id], c.index))
    now = time.time()
    # DO NOTHING makes a repeated add of the same reply (a retry after an error) harmless
    # instead of duplicating chunks the user would then receive twice.
    conn.executemany(
        "INSERT INTO outbox (reply_id, idx, total, conversation_key, session_key, route, text,"
        " mention, title, state, created_at, attempts, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [(*_chunk_columns(c), now) for c in ordered],
    )


def _chunk_columns(c: OutboxChunk) -> tuple[Any, ...]:
    # A new chunk is always PENDING, whatever state the caller's object says.
    return (
        c.reply_id,
        c.index,
        c.total,
        c.conversation_key,
        c.session_key,
        json.dumps(c.route),
        c.text,
        int(c.mention),
        c.title,
        PENDING,
        c.created_at,
        c.attempts,
    )


def chunk_from_row(r: Sequence[Any]) -> OutboxChunk:
    return OutboxChunk(
        reply_id=r[0],
        index=r[1],
        total=r[2],
        conversation_key=r[3],
        route=json.loads(r[4]),
        text=r[5],
        mention=bool(r[6]),
        title=r[7],
        state=r[8],
        created_at=r[9],
        attempts=r[10],
        session_key=r[11],
    )


def _merge_extra(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Numbers accumulate like the other counters; anything else is replaced by the newer value."""
    merged = dict(old)
    for name, value in new.items():
        current = merged.get(name)
        if _is_number(value) and _is_number(current):
            merged[name] = current + value
        else:
            merged[name] = value
    return merged


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
