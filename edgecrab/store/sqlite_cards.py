"""The open AI cards of :class:`~edgecrab.store.sqlite.SQLiteStore` (table ``cards``): the
:class:`~edgecrab.store.cardrecords.CardRecords` methods.

One process writes the file, so a card's owner other than the caller is an earlier life of the gateway:
gone. Each method is one transaction; ``card_adopt`` reads each card's message state from the inbox in
the same statement.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from edgecrab.store.base import PROCESSING, RECEIVED
from edgecrab.store.cardrecords import CARD_DONE, CARD_STREAMING, CardAdoption, CardRecord
from edgecrab.store.sqlite_conn import SQLiteConnection

_COLUMNS = (
    "robot, card_id, msg_id, session_key, owner, route, content_key, opened_at, shown, state, text"
)
_SELECT = f"SELECT {_COLUMNS} FROM cards"
_INSERT = f"INSERT OR REPLACE INTO cards ({_COLUMNS}) VALUES ({', '.join('?' * 11)})"
_DELETE = "DELETE FROM cards WHERE robot = ? AND card_id = ?"
_UNFINISHED = (RECEIVED, PROCESSING)


def _record(row: Any) -> CardRecord:
    fields = list(row)
    fields[5] = json.loads(fields[5] or "{}")
    return CardRecord(*fields)


def _take(conn: sqlite3.Connection, robot: str, msg_id: str, replica: str) -> CardRecord | None:
    if not msg_id:
        return None
    row = conn.execute(f"{_SELECT} WHERE robot = ? AND msg_id = ? LIMIT 1", (robot, msg_id)).fetchone()
    if row is None:
        return None
    conn.execute(
        "UPDATE cards SET owner = ?, state = ? WHERE robot = ? AND card_id = ?",
        (replica, CARD_STREAMING, robot, row[1]),
    )
    return _record(row)


class SQLiteCards(SQLiteConnection):
    async def card_open(self, record: CardRecord) -> CardRecord | None:
        r = record
        values = (r.robot, r.card_id, r.msg_id, r.session_key, r.owner, json.dumps(r.route), r.content_key,
                  r.opened_at, r.shown, r.state, r.text)

        def open_card(conn: sqlite3.Connection) -> CardRecord | None:
            taken = _take(conn, r.robot, r.msg_id, r.owner)
            if taken is None:
                conn.execute(_INSERT, values)
            return taken

        return await self._write(open_card)

    async def card_take(self, robot: str, msg_id: str, replica: str) -> CardRecord | None:
        return await self._write(lambda conn: _take(conn, robot, msg_id, replica))

    async def card_update(
        self,
        robot: str,
        card_id: str,
        *,
        shown: str | None = None,
        state: str | None = None,
        text: str | None = None,
    ) -> None:
        changes = {k: v for k, v in (("shown", shown), ("state", state), ("text", text)) if v is not None}
        if not changes:
            return
        sql = f"UPDATE cards SET {', '.join(f'{k} = ?' for k in changes)} WHERE robot = ? AND card_id = ?"
        params = (*changes.values(), robot, card_id)
        await self._write(lambda conn: conn.execute(sql, params))

    async def card_close(self, robot: str, card_id: str, owner: str = "") -> None:
        params: tuple[str, ...] = (robot, card_id, owner) if owner else (robot, card_id)
        sql = _DELETE + " AND owner = ?" if owner else _DELETE
        await self._write(lambda conn: conn.execute(sql, params))

    async def card_get(self, robot: str, card_id: str) -> CardRecord | None:
        rows = self._all(f"{_SELECT} WHERE robot = ? AND card_id = ?", (robot, card_id))
        return _record(rows[0]) if rows else None

    async def card_adopt(
        self, robot: str, replica: str, *, starting: bool = False, mine: Sequence[str] = ()
    ) -> CardAdoption:
        own = set(mine)

        def adopt(conn: sqlite3.Connection) -> CardAdoption:
            rows = conn.execute(
                "SELECT c.card_id, c.owner, c.state, i.state FROM cards AS c LEFT JOIN inbox AS i"
                " ON i.robot = c.robot AND i.msg_id = c.msg_id WHERE c.robot = ? ORDER BY c.opened_at",
                (robot,),
            ).fetchall()
            finish, waiting = [], []
            for card_id, owner, state, msg_state in rows:
                finished = msg_state not in _UNFINISHED
                if state == CARD_DONE:
                    if finished:
                        conn.execute(_DELETE, (robot, card_id))
                    continue
                if owner == replica and not (starting or card_id in own):
                    continue
                if not finished:
                    if owner == replica:
                        waiting.append(card_id)
                    continue
                conn.execute(
                    "UPDATE cards SET owner = ? WHERE robot = ? AND card_id = ?", (replica, robot, card_id)
                )
                row = conn.execute(f"{_SELECT} WHERE robot = ? AND card_id = ?", (robot, card_id)).fetchone()
                finish.append(_record(row))
            return CardAdoption(finish, waiting)

        return await self._write(adopt)
