"""The connection machinery under :class:`~edgecrab.store.sqlite.SQLiteStore`: open and close, the lock,
transactions, group commit and checkpoints. The queries themselves live in :mod:`edgecrab.store.sqlite`.

One connection per gateway process, opened in :meth:`SQLiteConnection.open`. Every operation is a few
microseconds of synchronous work done on the calling event loop: the ack path calls
:meth:`~edgecrab.store.sqlite.SQLiteStore.inbox_claim` and must stay in the millisecond range, which a
thread hop per call would not help. Multi-statement operations run in one ``BEGIN IMMEDIATE`` transaction,
so they are all-or-nothing even if the process is killed half-way.

**Group commit.** Reads and :meth:`~edgecrab.store.sqlite.SQLiteStore.inbox_claim` run at once. Every
other write joins the current *batch*: the writes that tasks of one event loop issue within
:data:`BATCH_WINDOW_S` of the batch's first one (or until it holds :data:`BATCH_MAX`) are committed
together, in the order they were issued, and each caller resumes once its write is committed, so durability
is unchanged: nothing a caller was told is done can be lost. Under load dozens of writes share one commit
instead of paying one each: a commit writes every page it touched to the WAL, most of a small write's
cost, and the pages a message's writes touch (the same table and index leaves) are mostly the pages its
neighbours touch. Only the ack path is in a hurry, and it does not wait for a batch. If one write of a batch
fails, the batch is rolled back and its writes are committed one by one, so only the failing one reports
an error. A write whose caller was cancelled before the batch ran is not made.

**Checkpoints off the event loop.** SQLite copies the WAL back into the database file ("checkpoint") in
whichever commit crosses ``wal_autocheckpoint`` pages, and syncs both files while at it: a commit on the
event loop that took milliseconds instead of microseconds, every few hundred commits. Here automatic
checkpoints are off; :meth:`SQLiteConnection.maintain` (the gateway calls it every second) runs a
``PASSIVE`` checkpoint on a connection of its own in a worker thread, which never blocks a writer, and
:meth:`SQLiteConnection.close` runs a last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from edgecrab.store.sqlite_schema import migrate

MEMORY = ":memory:"
BATCH_MAX = 32
"""Writes per group commit at most: a group commit is one step of the event loop, which an ack may wait
behind (32 of the largest, a run's end with its reply, take about 2 ms). A full batch commits at the next
step, without waiting the window out."""

BATCH_WINDOW_S = 0.005
"""How long a batch stays open for more writes after its first. Committing at the next step of the loop
instead put one or two messages' writes in a commit under load, and each commit wrote the same table and
index pages again: with 2 ms, commits cost 0.11 ms per message of the echo benchmark instead of 0.20
(BENCHMARKS.md, fix 12); with 5 ms a batch holds about twice the writes (22 against 11 in 1a) and the
gateway used about a tenth less CPU a message (BENCHMARKS.md, ninth session); 10 ms gained nothing more.
Callers wait at most this much longer (a reply's two or three awaited writes: some 10 ms of its latency
at most); the ack path never waits for a batch."""

WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes the WAL file is cut back to when SQLite starts it over after a complete checkpoint, and the size
past which :meth:`SQLiteConnection.maintain` starts it over itself."""

T = TypeVar("T")
_Op = Callable[[sqlite3.Connection], Any]

FILE_MODE = 0o600
DIR_MODE = 0o700
log = logging.getLogger("edgecrab.store")


def make_private(path: Path) -> None:
    """Prepare ``path`` so the database is readable by its owner only, before SQLite writes a byte.

    The state holds conversations and live ``sessionWebhook`` URLs (whoever has one can post as the bot).
    A missing directory is created 0700 (its missing parents too); an existing one is left as the operator
    made it: it may be shared on purpose (``/var/lib/edgecrab`` from systemd), and the files are private
    anyway. The database file is created empty with mode 0600 here, so SQLite opens an existing file, and
    SQLite gives the ``-wal`` and ``-shm`` files it creates the database file's mode. Files left looser by
    an older version are tightened to 0600 (they are edgecrab's own files).
    """
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            directory.mkdir(mode=DIR_MODE)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if file.stat().st_mode & 0o077:
                file.chmod(FILE_MODE)
        except FileNotFoundError:
            continue
        except PermissionError as exc:
            log.warning("[store] %s is readable by others and cannot be made private: %s", file, exc)


class SQLiteConnection:
    """One SQLite file's connection and how statements reach it: :meth:`_run` and :meth:`_all` at once,
    :meth:`_tx` as one transaction, :meth:`_write` in the current group commit. The store's lifecycle
    methods (``open``, ``close``, ``maintain``) are these; :class:`~edgecrab.store.sqlite.SQLiteStore`
    inherits them and adds the queries."""

    def __init__(self, path: Path | str) -> None:
        self.path: Path | None = None if str(path) == MEMORY else Path(path)
        self._conn: sqlite3.Connection | None = None
        # Guards the connection for callers in other threads (check_same_thread=False allows them);
        # the gateway itself uses it from its one event loop only.
        self._lock = threading.Lock()
        self._batch: list[tuple[_Op, asyncio.Future[Any]]] = []
        self._batch_loop: asyncio.AbstractEventLoop | None = None
        """The loop the pending batch belongs to (and will be committed on); None when none is pending."""
        self._batch_due: asyncio.Handle | None = None
        """The pending batch's commit, scheduled on ``_batch_loop``."""
        self.commits = 0
        """Transactions committed by this handle (group commits count once): for benchmarks and tests."""
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()
        self.checkpoints = 0
        """Checkpoints :meth:`maintain` ran."""
        self.wal_catch_ups = 0
        """Times :meth:`maintain` found the WAL past :data:`WAL_SIZE_LIMIT` and let it start over."""
        self._page_size = 4096

    # -- lifecycle ---------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._conn is None:
            self._conn = self._connect()

    async def close(self) -> None:
        if self._batch_loop is asyncio.get_running_loop():
            # Writes still in their window: commit them now, not after the connection is gone.
            while self._batch_due is not None:
                self._batch_due.cancel()
                self._commit_batch()
        with self._checkpoint_lock:
            checkpointer, self._checkpointer = self._checkpointer, None
            if checkpointer is not None:
                checkpointer.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._lock:
                # The last connection to close checkpoints the WAL and removes it.
                conn.close()

    async def maintain(self) -> None:
        if self.path is None or self._conn is None:
            return
        _, frames, _ = await anyio.to_thread.run_sync(self._checkpoint)
        if frames * (self._page_size + 24) > WAL_SIZE_LIMIT:
            self._catch_up()

    def _catch_up(self) -> None:
        """Let the WAL start over: checkpoint, on this (the writing) connection, the frames committed
        while the passive checkpoint ran.

        SQLite starts the WAL over only when a write begins with every frame already checkpointed. Under
        steady load that never happens (a passive checkpoint takes long enough for new commits to arrive
        before it ends), and the WAL grew by megabytes a second, with no end: 160 MB after ten seconds of
        the echo benchmark. These few frames take a few milliseconds to copy (a ``TRUNCATE`` checkpoint
        took 40 ms), and no commit can come in between: the next write starts the WAL over, and SQLite
        cuts the file back to :data:`WAL_SIZE_LIMIT`. Only once the WAL is past that size: every few
        seconds at the heaviest load, never at a light one."""
        conn = self._conn
        if conn is None:
            return
        with self._lock:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.wal_catch_ups += 1

    def _checkpoint(self) -> tuple[int, int, int]:
        """``PRAGMA wal_checkpoint(PASSIVE)`` on this store's checkpoint connection (in a worker thread):
        (busy, WAL frames, frames checkpointed)."""
        assert self.path is not None
        with self._checkpoint_lock:
            if self._conn is None:  # closed meanwhile
                return (0, 0, 0)
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    str(self.path), check_same_thread=False, isolation_level=None
                )
                self._checkpointer.execute("PRAGMA busy_timeout = 5000")
            row = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
            return (int(row[0]), int(row[1]), int(row[2]))

    def _connect(self) -> sqlite3.Connection:
        if self.path is not None:
            make_private(self.path)
        target = MEMORY if self.path is None else str(self.path)
        # isolation_level=None: the sqlite3 module never opens transactions behind our back; we say
        # BEGIN/COMMIT ourselves where several statements must be atomic.
        conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode syncs at checkpoints, not at every commit: a committed transaction
            # survives the process being killed (SIGKILL, OOM, crash), since the WAL is in the OS page
            # cache, but the last commits may be lost on power failure or a kernel crash. That is the
            # requirement (a process crash neither loses nor repeats messages) at a fraction of FULL's cost.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            if self.path is not None:
                conn.execute("PRAGMA wal_autocheckpoint = 0")  # maintain() checkpoints, off the loop
                conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            migrate(conn)
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("[store] the store is not open: await store.open() first")
        return self._conn

    def _run(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """One statement, atomic by itself (autocommit)."""
        conn = self._connection()
        with self._lock:
            return conn.execute(sql, params)

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._connection()
        with self._lock:
            return conn.execute(sql, params).fetchall()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """Several statements as one transaction: committed together or not at all."""
        conn = self._connection()
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
                self.commits += 1
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in the current group commit (see the module's docstring) and return its result once
        it is committed."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or (self._batch_loop is not None and self._batch_loop is not loop):
            with self._tx() as conn:  # not on an event loop, or another loop's batch is pending
                return op(conn)
        future: asyncio.Future[T] = loop.create_future()
        self._batch.append((op, future))
        if self._batch_loop is None:
            self._batch_loop = loop
            self._batch_due = loop.call_later(BATCH_WINDOW_S, self._commit_batch)
        elif len(self._batch) == BATCH_MAX and isinstance(self._batch_due, asyncio.TimerHandle):
            self._batch_due.cancel()  # full: commit at the next step
            self._batch_due = loop.call_soon(self._commit_batch)
        return await future

    def _commit_batch(self) -> None:
        batch = [(op, f) for op, f in self._batch if not f.done()]  # done: its caller was cancelled
        rest = batch[BATCH_MAX:]
        del batch[BATCH_MAX:]
        self._batch = rest
        if rest:
            assert self._batch_loop is not None
            self._batch_due = self._batch_loop.call_soon(self._commit_batch)
        else:
            self._batch_loop = None
            self._batch_due = None
        if not batch:
            return
        try:
            with self._tx() as conn:
                results = [op(conn) for op, _ in batch]
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            # One of them failed (or the commit did): all were rolled back. Each on its own, so only
            # the failing write reports the error.
            for op, future in batch:
                self._settle(future, op)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _settle(self, future: asyncio.Future[Any], op: _Op) -> None:
        try:
            with self._tx() as conn:
                result = op(conn)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)
