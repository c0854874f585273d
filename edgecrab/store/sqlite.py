"""The SQLite implementation of :class:`~edgecrab.store.base.Store` (stdlib ``sqlite3``, WAL mode).

:class:`SQLiteStore` is the store's methods, one or a few SQL statements each. What runs them is
inherited from :class:`~edgecrab.store.sqlite_conn.SQLiteConnection` (:mod:`edgecrab.store.sqlite_conn`):
the one connection, reads at once, writes in a *group commit* (several callers' writes in one
transaction), and WAL checkpoints off the event loop. A method that must be atomic passes all its
statements to ``_write`` as one function, which runs them in one transaction.

The tables and their migrations live in :mod:`edgecrab.store.sqlite_schema`, statements several methods
share in :mod:`edgecrab.store.sqlite_rows`, the open AI cards' methods in :mod:`edgecrab.store.sqlite_cards`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from edgecrab.store.base import (
    CANCELLED,
    DONE,
    FAILED,
    FIRED,
    PENDING,
    PROCESSING,
    RECEIVED,
    SENDING,
    SENT,
    ChunkState,
    InboxEntry,
    OutboxChunk,
    ScheduleRecord,
    SessionStats,
    Store,
    Turn,
    UsageDelta,
)
from edgecrab.store.sqlite_cards import SQLiteCards
from edgecrab.store.sqlite_rows import (
    COUNTERS,
    add_chunks,
    add_usage,
    append_turns,
    chunk_from_row,
    ensure_session,
    inbox_state_update,
    outbox_state_update,
)

_SESSION_COLUMNS = (
    "key",
    "created_at",
    "last_active_at",
    *COUNTERS,
    "last_user_text",
    "last_user_msg_id",
    "extra",
)
_SESSION_SELECT = f"SELECT {', '.join(_SESSION_COLUMNS)} FROM sessions WHERE key = ?"
_INBOX_SELECT = "SELECT robot, msg_id, stream_message_id, payload, received_at, state, attempts FROM inbox"
# Unsent chunks. The states are SQL literals on purpose, here and in outbox_cancel: SQLite uses the partial
# index outbox_open only when it can prove at prepare time that the query's WHERE implies the index's, which
# it cannot with bound parameters. With them, every send scanned every chunk ever sent (BENCHMARKS.md, fix 1);
# tests/unit/test_store_sqlite.py checks the query plans.
_OPEN_STATES = f"('{PENDING}', '{SENDING}')"
_OUTBOX_SELECT = (
    "SELECT reply_id, idx, total, conversation_key, route, text, mention, title, state, created_at,"
    f" attempts, session_key FROM outbox WHERE state IN {_OPEN_STATES}"
)
_ROBOTS = (
    "WITH RECURSIVE r(robot) AS (SELECT min(robot) FROM inbox"
    " UNION ALL SELECT (SELECT min(robot) FROM inbox WHERE robot > r.robot) FROM r WHERE r.robot IS NOT NULL)"
    " SELECT robot FROM r WHERE robot IS NOT NULL"
)
_RESET_SESSION = ", ".join(
    [f"{c} = 0" for c in COUNTERS] + ["last_user_text = ''", "last_user_msg_id = ''", "extra = '{}'"]
)


_CLAIM = (
    "INSERT INTO inbox (robot, msg_id, stream_message_id, payload, received_at, state, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)


class SQLiteStore(SQLiteCards, Store):
    """Everything the gateway persists, in one SQLite file (or ``":memory:"`` for tests)."""

    # -- inbox -------------------------------------------------------------------------------------
    records_at_once = True

    async def inbox_claim(
        self, robot: str, msg_id: str, stream_message_id: str, payload: str, received_at: float
    ) -> bool:
        return self.inbox_claim_now(robot, [(msg_id, stream_message_id, payload)], received_at)[0]

    def inbox_claim_now(
        self, robot: str, items: Sequence[tuple[str, str, str]], received_at: float
    ) -> list[bool]:
        # One statement a claim: the uniqueness check and the insert cannot be separated by another
        # claim. DO NOTHING without a target covers both the primary key and the stream-id index. Several
        # claims share one transaction (one commit); a msgId twice in one read is new only the first time.
        now = time.time()
        rows = [(robot, m, s, p, received_at, RECEIVED, now) for m, s, p in items]
        if len(rows) == 1:
            cursor = self._run(_CLAIM, rows[0])  # autocommit: no BEGIN/COMMIT round trip
            self.commits += 1
            return [cursor.rowcount == 1]
        with self._tx() as conn:
            return [conn.execute(_CLAIM, row).rowcount == 1 for row in rows]

    async def inbox_set_state(self, robot: str, msg_id: str, state: str, error: str = "") -> None:
        sql, params = inbox_state_update(robot, msg_id, state, error)
        await self._write(lambda conn: conn.execute(sql, params))

    async def inbox_unfinished(self, robot: str) -> list[InboxEntry]:
        rows = self._all(
            f"{_INBOX_SELECT} WHERE robot = ? AND state IN (?, ?) ORDER BY received_at, rowid",
            (robot, RECEIVED, PROCESSING),
        )
        return [InboxEntry(*row) for row in rows]

    async def inbox_backlog(self, robot: str) -> tuple[int, float | None]:
        # The inbox_state index (robot, state, received_at) answers both without reading a payload.
        rows = self._all(
            "SELECT COUNT(*), MIN(received_at) FROM inbox WHERE robot = ? AND state IN (?, ?)",
            (robot, RECEIVED, PROCESSING),
        )
        count, oldest = rows[0]
        return int(count), (float(oldest) if oldest is not None else None)

    async def inbox_prune(self, older_than: float) -> int:
        # Robot by robot, so the inbox_state index (robot, state, received_at) finds the rows: without a
        # robot the delete read the whole table, a day of callbacks, once a minute. The robots themselves
        # come from a "loose index scan" of the primary key (one lookup per robot, not per row).

        def prune(conn: sqlite3.Connection) -> int:
            robots = [row[0] for row in conn.execute(_ROBOTS)]
            return sum(
                conn.execute(
                    "DELETE FROM inbox WHERE robot = ? AND state IN (?, ?) AND received_at < ?",
                    (robot, DONE, FAILED, older_than),
                ).rowcount
                for robot in robots
            )

        return await self._write(prune)

    # -- sessions ----------------------------------------------------------------------------------
    async def session_stats(self, key: str) -> SessionStats | None:
        rows = self._all(_SESSION_SELECT, (key,))
        return _stats(rows[0]) if rows else None

    async def session_ensure(self, key: str, now: float) -> SessionStats:
        def ensure(conn: sqlite3.Connection) -> SessionStats:
            ensure_session(conn, key, now)
            return _stats(conn.execute(_SESSION_SELECT, (key,)).fetchone())

        return await self._write(ensure)

    async def turn_started(self, key: str, *, robot: str, msg_id: str, now: float) -> None:
        sql, params = inbox_state_update(robot, msg_id, PROCESSING, "")

        def started(conn: sqlite3.Connection) -> None:
            conn.execute(sql, params)
            ensure_session(conn, key, now)

        await self._write(started)

    async def history(self, key: str, limit: int) -> list[Turn]:
        if limit <= 0:
            return []
        rows = self._all(
            "SELECT role, content, msg_id, at FROM history WHERE session_key = ? ORDER BY id DESC LIMIT ?",
            (key, limit),
        )
        return [Turn(*row) for row in reversed(rows)]

    async def history_append(self, key: str, turns: list[Turn]) -> None:
        if not turns:
            return
        now = max(t.at for t in turns) or time.time()

        def append(conn: sqlite3.Connection) -> None:
            # History never exists without its session, so /new and idle expiry always find it.
            ensure_session(conn, key, now)
            append_turns(conn, key, turns)

        await self._write(append)

    async def history_pop_last_exchange(self, key: str) -> Turn | None:
        def pop(conn: sqlite3.Connection) -> Turn | None:
            rows = conn.execute(
                "SELECT id, role, content, msg_id, at FROM history WHERE session_key = ? ORDER BY id DESC",
                (key,),
            )
            # Walk back over the answer (whatever is not the user's) to the user turn that asked it.
            found = next((row for row in rows if row[1] == "user"), None)
            rows.close()
            if found is None:
                return None
            conn.execute("DELETE FROM history WHERE session_key = ? AND id >= ?", (key, found[0]))
            return Turn(*found[1:])

        return await self._write(pop)

    async def session_reset(self, key: str, now: float) -> None:
        def reset(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM history WHERE session_key = ?", (key,))
            conn.execute(
                "INSERT INTO sessions (key, created_at, last_active_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at,"
                f" last_active_at = excluded.last_active_at, {_RESET_SESSION}",
                (key, now, now),
            )

        await self._write(reset)

    async def usage_add(self, key: str, delta: UsageDelta, now: float, last_user: Turn | None = None) -> None:
        def add(conn: sqlite3.Connection) -> None:
            add_usage(conn, key, delta, now, last_user)

        await self._write(add)

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
        # One transaction where a run's end used to take four (history, usage, outbox, inbox): fewer
        # commits, and no crash window between "answer recorded" and "message done".
        inbox = inbox_state_update(robot, msg_id, state, error)

        def finish(conn: sqlite3.Connection) -> None:
            if usage is not None or last_user is not None:
                add_usage(conn, key, usage or UsageDelta(), now, last_user)  # makes the session if need be
            elif turns:
                ensure_session(conn, key, now)
            if turns:
                append_turns(conn, key, turns)
            if reply:
                add_chunks(conn, reply)
            conn.execute(*inbox)

        await self._write(finish)
        return True  # one process: every message is its own

    async def sessions_expire(self, idle_before: float) -> int:
        def expire(conn: sqlite3.Connection) -> int:
            conn.execute(
                "DELETE FROM history WHERE session_key IN"
                " (SELECT key FROM sessions WHERE last_active_at < ?)",
                (idle_before,),
            )
            return int(conn.execute("DELETE FROM sessions WHERE last_active_at < ?", (idle_before,)).rowcount)

        return await self._write(expire)

    async def session_count(self) -> int:
        ((count,),) = self._all("SELECT count(*) FROM sessions")
        return int(count)

    # -- outbox (delivery ledger) ------------------------------------------------------------------
    async def outbox_add(self, chunks: list[OutboxChunk]) -> None:
        await self._write(lambda conn: add_chunks(conn, chunks))

    async def outbox_pending(self, conversation_key: str | None = None) -> list[OutboxChunk]:
        if conversation_key is None:
            # Without INDEXED BY the planner prefers walking the whole table in seq order to sorting the
            # few open chunks it would find through the partial index.
            sql = _OUTBOX_SELECT.replace("FROM outbox", "FROM outbox INDEXED BY outbox_open")
            rows = self._all(f"{sql} ORDER BY seq")
        else:
            rows = self._all(f"{_OUTBOX_SELECT} AND conversation_key = ? ORDER BY seq", (conversation_key,))
        return [chunk_from_row(row) for row in rows]

    async def outbox_reply(self, reply_id: str) -> list[ChunkState]:
        rows = self._all(
            "SELECT idx, total, state, error FROM outbox WHERE reply_id = ? ORDER BY idx", (reply_id,)
        )
        return [ChunkState(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]

    async def outbox_mark(self, reply_id: str, index: int, state: str, error: str = "") -> None:
        sql, params = outbox_state_update(reply_id, index, state, error)
        await self._write(lambda conn: conn.execute(sql, params))

    async def outbox_sent(
        self, reply_id: str, index: int, *, session_key: str, chunks_sent: int, now: float
    ) -> None:
        sql, params = outbox_state_update(reply_id, index, SENT)

        def sent(conn: sqlite3.Connection) -> None:
            conn.execute(sql, params)
            if session_key and chunks_sent:
                add_usage(conn, session_key, UsageDelta(chunks_sent=chunks_sent), now, None)

        await self._write(sent)

    async def outbox_prune(self, finished_before: float) -> int:
        # The state test is written as in the partial index outbox_finished, so SQLite can use it.
        sql = f"DELETE FROM outbox WHERE state NOT IN {_OPEN_STATES} AND updated_at < ?"
        return await self._write(lambda conn: int(conn.execute(sql, (finished_before,)).rowcount))

    async def outbox_cancel(self, conversation_key: str, reply_id: str | None = None) -> int:
        sql = (
            "UPDATE outbox SET state = ?, updated_at = ?"
            f" WHERE conversation_key = ? AND state IN {_OPEN_STATES}"
        )
        params: list[Any] = [CANCELLED, time.time(), conversation_key]
        if reply_id is not None:
            sql += " AND reply_id = ?"
            params.append(reply_id)
        return await self._write(lambda conn: int(conn.execute(sql, params).rowcount))

    # -- small facts -------------------------------------------------------------------------------
    async def kv_get(self, key: str) -> str | None:
        rows = self._all("SELECT value FROM kv WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def kv_set(self, key: str, value: str) -> None:
        params = (key, value, time.time())
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                params,
            )
        )

    # -- schedules ---------------------------------------------------------------------------------
    async def schedule_claim(self, name: str, slot: float, outcome: str, now: float) -> bool:
        fired = (slot, now) if outcome == FIRED else (None, None)
        params = (name, slot, outcome, now, *fired)
        # One statement: the comparison with the recorded slot and the update cannot be separated.
        return await self._write(lambda conn: conn.execute(_SCHEDULE_CLAIM, params).rowcount == 1)

    async def schedule_records(self) -> dict[str, ScheduleRecord]:
        rows = self._all("SELECT name, slot, outcome, at, fired_slot, fired_at FROM schedules")
        return {row[0]: ScheduleRecord(*row) for row in rows}


_SCHEDULE_CLAIM = (
    "INSERT INTO schedules (name, slot, outcome, at, fired_slot, fired_at) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET slot = excluded.slot, outcome = excluded.outcome, at = excluded.at,"
    " fired_slot = coalesce(excluded.fired_slot, fired_slot),"
    " fired_at = coalesce(excluded.fired_at, fired_at)"
    " WHERE excluded.slot > schedules.slot"
)


def _stats(row: Any) -> SessionStats:
    """A session row (:data:`_SESSION_COLUMNS`) as :class:`SessionStats`."""
    fields: dict[str, Any] = dict(zip(_SESSION_COLUMNS, row, strict=True))
    fields["extra"] = json.loads(fields["extra"] or "{}")
    return SessionStats(**fields)
