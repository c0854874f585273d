"""The SQLite schema and its migrations, for :mod:`edgecrab.store.sqlite`.

The file carries a ``schema_version`` in the ``meta`` table. :func:`migrate` brings an older file up to
date when the store opens and refuses a file written by a newer edgecrab rather than misread it.
"""

from __future__ import annotations

import sqlite3

# Entry i upgrades a file from schema version i to i + 1. Never edit a released entry: append one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # Inbox: the primary key dedups on msgId; the partial unique index dedups on the stream frame's
        # messageId, except that empty ids (callbacks that came without one) never collide.
        """CREATE TABLE inbox (
            robot TEXT NOT NULL,
            msg_id TEXT NOT NULL,
            stream_message_id TEXT NOT NULL DEFAULT '',
            payload TEXT NOT NULL,
            received_at REAL NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT '',
            updated_at REAL NOT NULL,
            PRIMARY KEY (robot, msg_id)
        )""",
        """CREATE UNIQUE INDEX inbox_stream_message_id ON inbox (robot, stream_message_id)
            WHERE stream_message_id != ''""",
        "CREATE INDEX inbox_state ON inbox (robot, state, received_at)",
        """CREATE TABLE sessions (
            key TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            last_active_at REAL NOT NULL,
            turns INTEGER NOT NULL DEFAULT 0,
            messages_in INTEGER NOT NULL DEFAULT 0,
            messages_out INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            agent_seconds REAL NOT NULL DEFAULT 0,
            chunks_sent INTEGER NOT NULL DEFAULT 0,
            last_user_text TEXT NOT NULL DEFAULT '',
            last_user_msg_id TEXT NOT NULL DEFAULT '',
            extra TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX sessions_last_active_at ON sessions (last_active_at)",
        # A plain rowid key is enough for order: a new row always gets max(id) + 1.
        """CREATE TABLE history (
            id INTEGER PRIMARY KEY,
            session_key TEXT NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            msg_id TEXT NOT NULL DEFAULT '',
            at REAL NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX history_session ON history (session_key, id)",
        # seq is the send order; AUTOINCREMENT so that a seq is never reused, even after deletions.
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            reply_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            total INTEGER NOT NULL,
            conversation_key TEXT NOT NULL,
            session_key TEXT NOT NULL DEFAULT '',
            route TEXT NOT NULL,
            text TEXT NOT NULL,
            mention INTEGER NOT NULL,
            title TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT '',
            updated_at REAL NOT NULL,
            UNIQUE (reply_id, idx)
        )""",
        "CREATE INDEX outbox_open ON outbox (conversation_key, seq) WHERE state IN ('pending', 'sending')",
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL)",
    ),
    (
        # 2: finished chunks (sent, cancelled, undeliverable) by age, for Store.outbox_prune: without it the
        # ledger kept every chunk ever sent, and deleting old ones would read the whole table.
        """CREATE INDEX outbox_finished ON outbox (updated_at)
            WHERE state NOT IN ('pending', 'sending')""",
    ),
    (
        # 3: schedules (Store.schedule_claim): the last slot each one handled, and the last one it fired.
        """CREATE TABLE schedules (
            name TEXT PRIMARY KEY,
            slot REAL NOT NULL,
            outcome TEXT NOT NULL,
            at REAL NOT NULL,
            fired_slot REAL,
            fired_at REAL
        )""",
    ),
    (
        # 4: open AI cards (Store.card_open), replacing one kv key per robot: the replica streaming each, the
        # message it answers (a run of that message again takes the card), what it showed.
        """CREATE TABLE cards (
            robot TEXT NOT NULL,
            card_id TEXT NOT NULL,
            msg_id TEXT NOT NULL DEFAULT '',
            session_key TEXT NOT NULL DEFAULT '',
            owner TEXT NOT NULL DEFAULT '',
            route TEXT NOT NULL DEFAULT '{}',
            content_key TEXT NOT NULL DEFAULT '',
            opened_at REAL NOT NULL,
            shown TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL DEFAULT '',
            text TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (robot, card_id)
        )""",
        "CREATE INDEX cards_msg ON cards (robot, msg_id)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer edgecrab; reading it could lose data."""


def migrate(conn: sqlite3.Connection) -> None:
    # IMMEDIATE takes the write lock before reading the version, so two processes opening the same
    # new file cannot both run the migrations.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"[store] database schema version {version} is newer than this edgecrab supports "
                f"({SCHEMA_VERSION}); upgrade edgecrab or point storage.url at another file"
            )
        for statements in _MIGRATIONS[version:]:
            for sql in statements:
                conn.execute(sql)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
