"""What only the SQLite store promises: a file that survives restarts and SIGKILL, WAL mode, the schema
version, and :func:`~edgecrab.store.open_store` choosing it from ``storage.url``."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from edgecrab.config import StorageConfig
from edgecrab.store import (
    DONE,
    PENDING,
    SENT,
    CardRecord,
    OutboxChunk,
    SQLiteStore,
    Store,
    Turn,
    UsageDelta,
    open_store,
    sqlite_conn,
)
from edgecrab.store.sqlite_conn import BATCH_MAX
from edgecrab.store.sqlite_schema import _MIGRATIONS, SCHEMA_VERSION, SchemaTooNewError

ROBOT = "robot-1"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """An open store in ``tmp_path / "state.db"``, closed after the test."""
    opened = SQLiteStore(tmp_path / "state.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def chunk(reply_id: str, index: int, total: int) -> OutboxChunk:
    return OutboxChunk(
        reply_id=reply_id,
        index=index,
        total=total,
        conversation_key="conv-1",
        route={"webhook": "https://oapi.dingtalk.com/x"},
        text=f"part {index}",
        mention=False,
        title="t",
        state=PENDING,
        created_at=1.0,
    )


@pytest.mark.anyio
async def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    before = SQLiteStore(db)
    await before.open()
    await before.inbox_claim(ROBOT, "m1", "s1", '{"a": 1}', 100.0)
    await before.inbox_claim(ROBOT, "m2", "s2", "{}", 101.0)
    await before.inbox_set_state(ROBOT, "m2", DONE)
    await before.history_append("sess", [Turn("user", "q", "m1", 100.0), Turn("assistant", "a", "", 101.0)])
    await before.usage_add("sess", UsageDelta(turns=1, prompt_tokens=12), 101.0, Turn("user", "q", "m1"))
    await before.outbox_add([chunk("r1", i, 3) for i in range(3)])
    await before.outbox_mark("r1", 0, SENT)
    await before.kv_set("k", "v")
    stats = await before.session_stats("sess")
    await before.close()

    after = SQLiteStore(db)
    await after.open()
    try:
        # A redelivery after the restart is still recognised, by either id.
        assert not await after.inbox_claim(ROBOT, "m1", "", "{}", 200.0)
        assert not await after.inbox_claim(ROBOT, "m9", "s2", "{}", 200.0)
        assert [(e.msg_id, e.payload) for e in await after.inbox_unfinished(ROBOT)] == [("m1", '{"a": 1}')]
        assert [t.content for t in await after.history("sess", 10)] == ["q", "a"]
        assert await after.session_stats("sess") == stats
        assert [c.index for c in await after.outbox_pending("conv-1")] == [1, 2]
        assert await after.kv_get("k") == "v"
    finally:
        await after.close()


@pytest.mark.anyio
async def test_the_file_is_in_wal_mode_with_a_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = SQLiteStore(db)
    await store.open()
    await store.close()

    # journal_mode=WAL is recorded in the file itself, so a fresh connection sees it.
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    assert version == (str(SCHEMA_VERSION),)


@pytest.mark.anyio
async def test_a_version_1_file_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for sql in _MIGRATIONS[0]:
        conn.execute(sql)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute(
        "INSERT INTO outbox (reply_id, idx, total, conversation_key, route, text, mention, title, state,"
        " created_at, updated_at) VALUES ('old', 0, 1, 'c', '{}', 'hi', 0, 't', 'sent', 1.0, 1.0)"
    )
    conn.commit()
    conn.close()

    store = SQLiteStore(db)
    await store.open()
    try:
        conn = store._connection()
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'outbox_finished'").fetchone()
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'schedules'").fetchone()
        assert await store.outbox_prune(finished_before=2.0) == 1
    finally:
        await store.close()


@pytest.mark.anyio
async def test_connection_pragmas(store: SQLiteStore) -> None:
    conn = store._connection()
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (5000,)
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert conn.isolation_level is None


@pytest.mark.anyio
async def test_a_file_from_a_newer_edgecrab_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = SQLiteStore(db)
    await store.open()
    await store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.close()

    with pytest.raises(SchemaTooNewError, match="newer than this edgecrab supports"):
        await store.open()
    with pytest.raises(RuntimeError, match="not open"):
        await store.kv_get("k")


@pytest.mark.anyio
async def test_open_and_close_are_idempotent_and_use_requires_open(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "nested" / "dirs" / "state.db")
    with pytest.raises(RuntimeError, match="not open"):
        await store.inbox_claim(ROBOT, "m1", "", "{}", 1.0)

    await store.open()
    await store.open()
    assert (tmp_path / "nested" / "dirs" / "state.db").is_file()
    assert await store.inbox_claim(ROBOT, "m1", "", "{}", 1.0)
    await store.close()
    await store.close()


@pytest.mark.anyio
async def test_two_connections_to_one_file_claim_a_message_once(tmp_path: Path) -> None:
    # Two gateway processes on one file (say, an old one still shutting down) must not both process.
    first, second = SQLiteStore(tmp_path / "state.db"), SQLiteStore(tmp_path / "state.db")
    await first.open()
    await second.open()
    try:
        assert await first.inbox_claim(ROBOT, "m1", "s1", "{}", 1.0)
        assert not await second.inbox_claim(ROBOT, "m1", "s1", "{}", 1.0)
        assert not await second.inbox_claim(ROBOT, "m2", "s1", "{}", 1.0)
    finally:
        await first.close()
        await second.close()


@pytest.mark.anyio
@pytest.mark.parametrize("path", [":memory:", Path(":memory:")])
async def test_in_memory_store(path: str | Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.inbox_claim(ROBOT, "m1", "", "{}", 1.0)
        assert not await store.inbox_claim(ROBOT, "m1", "", "{}", 1.0)
    finally:
        await store.close()
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


class RecordingConnection:
    """Forwards to a real connection and records every statement with its parameters."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        self.statements.append((sql, tuple(params)))
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        rows = [tuple(r) for r in rows]
        self.statements.append((sql, rows[0] if rows else ()))
        return self._conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


# What may read a whole table: counting every session is what session_count is for.
FULL_SCANS_ALLOWED = {
    "SELECT count(*) FROM sessions",
    # One row per configured schedule, read by `edgecrab schedules list` and at start.
    "SELECT name, slot, outcome, at, fired_slot, fired_at FROM schedules",
}


@pytest.mark.anyio
async def test_every_query_uses_an_index(tmp_path: Path) -> None:
    # With bound parameters where the partial index outbox_open needs literals, SQLite scanned every chunk
    # ever sent on each send (BENCHMARKS.md, fix 1). Run every Store method, then ask SQLite how it
    # plans each statement that ran, with the parameters it ran with.
    store = SQLiteStore(tmp_path / "state.db")
    await store.open()
    recorder = RecordingConnection(store._connection())
    store._conn = recorder  # type: ignore[assignment]
    called = set()
    for name, call in store_workout(store):
        await call
        called.add(name)
    assert called >= abstract_methods(Store) - {"open", "close"}

    plans = {}
    for sql, params in recorder.statements:
        if not sql.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            continue  # BEGIN, COMMIT
        rows = recorder._conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        plans[sql] = [row[3] for row in rows]
    await store.close()

    # Walking the partial index outbox_open is not a full scan: it holds the unsent chunks only.
    tables = {"inbox", "sessions", "history", "outbox", "kv", "meta", "schedules", "cards"}
    scans = {
        sql: plan
        for sql, plan in plans.items()
        if any(
            step.startswith("SCAN ") and step.split()[1] in tables and "INDEX outbox_open" not in step
            for step in plan
        )
    }
    assert set(scans) <= FULL_SCANS_ALLOWED, scans
    outbox_reads = [plan for sql, plan in plans.items() if "FROM outbox WHERE state IN" in sql]
    assert outbox_reads and all(any("USING INDEX outbox_open" in s for s in p) for p in outbox_reads)


def abstract_methods(cls: type) -> set[str]:
    return {name for name in dir(cls) if getattr(getattr(cls, name), "__isabstractmethod__", False)}


def store_workout(store: SQLiteStore) -> Iterator[tuple[str, Any]]:
    """Every Store method once, in an order where each finds something to work on."""
    yield "inbox_claim", store.inbox_claim(ROBOT, "m1", "s1", "{}", 100.0)
    yield "inbox_set_state", store.inbox_set_state(ROBOT, "m1", DONE)
    yield "inbox_unfinished", store.inbox_unfinished(ROBOT)
    yield "inbox_prune", store.inbox_prune(50.0)
    yield "session_ensure", store.session_ensure("sess", 100.0)
    yield "turn_started", store.turn_started("sess", robot=ROBOT, msg_id="m1", now=100.0)
    yield "session_stats", store.session_stats("sess")
    yield "history_append", store.history_append("sess", [Turn("user", "q", "m1", 100.0)])
    yield "history", store.history("sess", 10)
    yield "usage_add", store.usage_add("sess", UsageDelta(turns=1, extra={"n": 1}), 101.0, Turn("user", "q"))
    yield "history_pop_last_exchange", store.history_pop_last_exchange("sess")
    yield "session_reset", store.session_reset("sess", 102.0)
    yield "sessions_expire", store.sessions_expire(50.0)
    yield "session_count", store.session_count()
    yield "outbox_add", store.outbox_add([chunk("r1", i, 3) for i in range(3)])
    yield "outbox_pending", store.outbox_pending("conv-1")
    yield "outbox_pending", store.outbox_pending()
    yield "outbox_mark", store.outbox_mark("r1", 0, SENT)
    yield "outbox_reply", store.outbox_reply("r1")
    yield "outbox_cancel", store.outbox_cancel("conv-1", "r1")
    yield "outbox_cancel", store.outbox_cancel("conv-1")
    yield (
        "finish_turn",
        store.finish_turn(
            "sess",
            robot=ROBOT,
            msg_id="m1",
            state=DONE,
            now=103.0,
            turns=[Turn("user", "q", "m1", 103.0), Turn("assistant", "a", "m1", 103.0)],
            usage=UsageDelta(turns=1),
            last_user=Turn("user", "q", "m1"),
            reply=[chunk("r2", 0, 1)],
        ),
    )
    yield "outbox_sent", store.outbox_sent("r2", 0, session_key="sess", chunks_sent=1, now=104.0)
    yield "schedule_claim", store.schedule_claim("morning", 60.0, "armed", 60.0)
    yield "schedule_claim", store.schedule_claim("morning", 120.0, "fired", 120.0)
    yield "schedule_records", store.schedule_records()
    yield "outbox_prune", store.outbox_prune(1e12)
    yield "kv_set", store.kv_set("k", "v")
    yield "kv_get", store.kv_get("k")
    card = CardRecord(ROBOT, "c1", "m1", "sess", "earlier", {"conversation_id": "cid"}, "msgContent", 100.0)
    yield "card_open", store.card_open(card)
    yield "card_open", store.card_open(replace(card, card_id="c2", owner="me"))  # takes c1
    yield "card_take", store.card_take(ROBOT, "m1", "me")
    yield "card_update", store.card_update(ROBOT, "c1", shown="Hello", state="failed", text="Hello!")
    yield "card_get", store.card_get(ROBOT, "c1")
    yield "card_adopt", store.card_adopt(ROBOT, "later", mine=["c1"])
    yield "card_close", store.card_close(ROBOT, "c1")


# -- group commit ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_writes_of_one_loop_iteration_share_one_commit(store: SQLiteStore) -> None:
    for i in range(10):
        assert await store.inbox_claim(ROBOT, f"m{i}", "", "{}", 100.0)  # one commit each: the ack path
    assert store.commits == 10
    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(store.inbox_set_state, ROBOT, f"m{i}", DONE)
            tg.start_soon(store.history_append, f"sess-{i}", [Turn("user", f"q{i}", f"m{i}", 100.0)])
    assert store.commits == 11  # 20 writes, one commit
    assert await store.inbox_unfinished(ROBOT) == []
    assert [t.content for t in await store.history("sess-7", 5)] == ["q7"]
    # One after the other, each write is its own commit (and still returns only once committed).
    await store.kv_set("a", "1")
    await store.kv_set("b", "2")
    assert store.commits == 13


@pytest.mark.anyio
async def test_a_group_commit_is_capped_and_keeps_the_order_writes_were_made_in(store: SQLiteStore) -> None:
    writes = 3 * BATCH_MAX + 1
    async with anyio.create_task_group() as tg:
        for i in range(writes):
            tg.start_soon(store.kv_set, "k", str(i))
    assert store.commits == 4
    assert await store.kv_get("k") == str(writes - 1)  # the last write made is the last applied


@pytest.mark.anyio
async def test_writes_within_the_window_share_a_commit_even_steps_apart(store: SQLiteStore) -> None:
    commits = store.commits

    async def later(key: str, steps: int) -> None:
        for _ in range(steps):
            await anyio.lowlevel.checkpoint()
        await store.kv_set(key, "v")

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(later, f"k{i}", i)  # issued in five different steps of the loop
    assert store.commits == commits + 1
    assert [await store.kv_get(f"k{i}") for i in range(5)] == ["v"] * 5


@pytest.mark.anyio
async def test_a_full_batch_does_not_wait_for_its_window(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_conn, "BATCH_WINDOW_S", 3600.0)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(BATCH_MAX):
                tg.start_soon(store.kv_set, f"k{i}", "v")
    assert await store.kv_get(f"k{BATCH_MAX - 1}") == "v"


@pytest.mark.anyio
async def test_close_commits_the_writes_still_in_their_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_conn, "BATCH_WINDOW_S", 3600.0)
    store = SQLiteStore(tmp_path / "state.db")
    await store.open()
    written: list[str] = []

    async def write() -> None:
        await store.kv_set("late", "kept")
        written.append("late")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            await anyio.lowlevel.checkpoint()  # the write is in the batch, its window far away
            await store.close()
    assert written == ["late"]  # its caller was told, so it must be on disk
    again = SQLiteStore(tmp_path / "state.db")
    await again.open()
    try:
        assert await again.kv_get("late") == "kept"
    finally:
        await again.close()


@pytest.mark.anyio
async def test_a_failing_write_fails_alone_and_the_rest_of_its_group_commits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    await store.open()
    outcomes: dict[str, str] = {}

    async def record(name: str, write: Any) -> None:
        try:
            await write
        except TypeError as exc:
            outcomes[name] = f"error: {exc}"
        else:
            outcomes[name] = "ok"

    try:
        await store.outbox_add([chunk("r1", 0, 1)])
        commits = store.commits
        async with anyio.create_task_group() as tg:
            tg.start_soon(record, "before", store.kv_set("before", "1"))
            # A route that cannot be stored (not JSON): this write fails half-way through its statements.
            broken = [chunk("r2", 0, 2), replace(chunk("r2", 1, 2), route={"x": object()})]
            tg.start_soon(record, "broken", store.outbox_add(broken))
            tg.start_soon(record, "after", store.history_append("s", [Turn("user", "q")]))
        assert outcomes["before"] == outcomes["after"] == "ok"
        assert outcomes["broken"].startswith("error: Object of type object is not JSON serializable")
        assert await store.kv_get("before") == "1"
        assert [t.content for t in await store.history("s", 5)] == ["q"]
        assert [c.reply_id for c in await store.outbox_pending()] == ["r1"]  # none of the broken reply
        assert store.commits == commits + 2  # the group was rolled back, then each committed on its own
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_write_whose_caller_was_cancelled_before_its_group_ran_is_not_made(
    store: SQLiteStore,
) -> None:
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.kv_set, "kept", "1")
            await anyio.lowlevel.checkpoint()  # kv_set has joined the group, which has not run yet
            scope.cancel()
    assert await store.kv_get("kept") is None
    await store.kv_set("later", "2")  # the store goes on working
    assert await store.kv_get("later") == "2"


@pytest.mark.anyio
async def test_writes_from_two_event_loops_at_once(store: SQLiteStore) -> None:
    # A group belongs to the loop it was started on; a write from another loop meanwhile commits on its own.
    done = threading.Event()

    async def other_loop_writes() -> None:
        for i in range(50):
            await store.kv_set(f"other-{i}", str(i))

    def thread_body() -> None:
        anyio.run(other_loop_writes)
        done.set()

    thread = threading.Thread(target=thread_body)
    thread.start()
    for i in range(50):
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.kv_set, f"main-{i}", str(i))
            tg.start_soon(store.kv_set, f"main-{i}-b", str(i))
    thread.join(10)
    assert done.is_set()
    for i in range(50):
        assert await store.kv_get(f"other-{i}") == str(i)
        assert await store.kv_get(f"main-{i}-b") == str(i)


# -- checkpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("past_limit", [False, True])
@pytest.mark.anyio
async def test_a_wal_past_its_limit_starts_over_despite_commits_during_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, past_limit: bool
) -> None:
    # Under steady load SQLite never starts the WAL over by itself: commits arrive while the passive
    # checkpoint runs, so the next write never finds every frame checkpointed. Once the WAL is past
    # WAL_SIZE_LIMIT, maintain() checkpoints those few frames on the writing connection.
    monkeypatch.setattr(sqlite_conn, "WAL_SIZE_LIMIT", 200 * 4096 if past_limit else 2**40)
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    await store.open()
    checkpoint = store._checkpoint
    # A reader's snapshot keeps the checkpoint from copying the frames committed after it: the state a
    # checkpoint under load ends in (it copied what was there when it began, not what came meanwhile).
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def checkpoint_under_load() -> tuple[int, int, int]:
        result = checkpoint()
        reader.execute("COMMIT")
        reader.close()
        return result

    store._checkpoint = checkpoint_under_load  # type: ignore[method-assign]
    try:
        for i in range(300):  # about 600 frames
            await store.history_append(f"s{i}", [Turn("user", "x" * 3000, f"m{i}", 1.0)])
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM history").fetchone()
        await store.kv_set("during", "x")  # committed "while the checkpoint runs"
        await store.maintain()
        assert store.wal_catch_ups == int(past_limit)
        await store.kv_set("after", "1")  # the next write: starts the WAL over if it can
        _, frames, _ = store._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if past_limit:
            assert frames <= 5  # started over: only the last write's frames
        else:
            assert frames > 500  # appended after the ~600 frames already there
        assert await store.kv_get("during") == "x"
        assert [t.content for t in await store.history("s299", 1)] == ["x" * 3000]
    finally:
        await store.close()


@pytest.mark.anyio
async def test_commits_never_checkpoint_and_maintain_does_it_in_a_worker_thread(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store._connection().execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        for i in range(300):  # well over the 1,000 pages SQLite would have checkpointed at by default
            await store.history_append(f"s{i}", [Turn("user", "x" * 4000, f"m{i}", 1.0)])
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size > 1000 * 4096
        assert path.stat().st_size < 200 * 1024  # nothing was checkpointed by the commits themselves

        threads: list[str] = []
        checkpoint = store._checkpoint

        def spy() -> tuple[int, int, int]:
            threads.append(threading.current_thread().name)
            return checkpoint()

        store._checkpoint = spy  # type: ignore[method-assign]
        await store.maintain()
        assert store.checkpoints == 1
        assert threads and threads[0] != threading.current_thread().name
        assert path.stat().st_size > 300 * 4000  # copied into the database file
        assert [t.content for t in await store.history("s299", 1)] == ["x" * 4000]
    finally:
        await store.close()
    assert not path.with_name(path.name + "-wal").exists()  # the last connection folded it in
    reopened = SQLiteStore(path)
    await reopened.open()
    assert len(await reopened.history("s7", 5)) == 1
    await reopened.close()


@pytest.mark.anyio
async def test_maintain_does_nothing_in_memory_or_when_closed(tmp_path: Path) -> None:
    memory = SQLiteStore(":memory:")
    await memory.open()
    await memory.maintain()
    assert memory.checkpoints == 0
    await memory.close()
    closed = SQLiteStore(tmp_path / "state.db")
    await closed.maintain()
    assert closed.checkpoints == 0


CRASHING_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys

    from edgecrab.store import PENDING, SENT, OutboxChunk, SQLiteStore

    async def main() -> None:
        store = SQLiteStore(sys.argv[1])
        await store.open()
        assert await store.inbox_claim("robot-1", "m1", "s1", '{"text": "hi"}', 100.0)
        await store.outbox_add([
            OutboxChunk("r1", i, 3, "conv-1", {"webhook": "w"}, f"part {i}", False, "t", PENDING, 1.0)
            for i in range(3)
        ])
        await store.outbox_mark("r1", 0, SENT)
        print("written", flush=True)
        # No close(): the process dies the way the OOM killer or `kill -9` would end it.
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


def test_committed_writes_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD, str(db)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout == "written\n"
    # The writes are still only in the WAL (never checkpointed into the main file): reopening must
    # recover them from there.
    assert Path(f"{db}-wal").stat().st_size > 0

    async def reopen() -> None:
        store = SQLiteStore(db)
        await store.open()
        try:
            assert [(e.msg_id, e.payload) for e in await store.inbox_unfinished(ROBOT)] == [
                ("m1", '{"text": "hi"}')
            ]
            assert not await store.inbox_claim(ROBOT, "m1", "s1", "{}", 200.0)
            assert [(c.reply_id, c.index) for c in await store.outbox_pending("conv-1")] == [
                ("r1", 1),
                ("r1", 2),
            ]
        finally:
            await store.close()

    anyio.run(reopen)


# -- open_store --------------------------------------------------------------------------------------


def test_open_store_builds_an_unopened_sqlite_store(tmp_path: Path) -> None:
    store = open_store(StorageConfig(url=f"sqlite:///{tmp_path}/sub/state.db"))

    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "sub" / "state.db"
    assert not (tmp_path / "sub").exists()


def test_open_store_in_memory() -> None:
    store = open_store(StorageConfig(url="sqlite:///:memory:"))

    assert isinstance(store, SQLiteStore) and store.path is None


@pytest.mark.parametrize(
    "url", ["mysql://user:s3cret@host:3306/0", "postgres://x", "sqlite://relative.db", "state.db"]
)
def test_open_store_refuses_other_schemes_without_echoing_the_url(url: str) -> None:
    with pytest.raises(
        ValueError, match=r"unsupported storage\.url scheme .*supported: sqlite:///path"
    ) as info:
        open_store(StorageConfig(url=url))

    assert "s3cret" not in str(info.value)


def test_open_store_needs_a_path() -> None:
    with pytest.raises(ValueError, match="needs a file path"):
        open_store(StorageConfig(url="sqlite:///"))


@pytest.mark.anyio
async def test_claim_now_records_several_in_one_commit_and_the_base_store_cannot(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        assert store.records_at_once
        commits = store.commits
        assert store.inbox_claim_now(ROBOT, [("m1", "s1", "{}")], 1.0) == [True]
        items = [("m2", "s2", "{}"), ("m1", "s9", "{}"), ("m3", "s1", "{}"), ("m2", "s8", "{}")]
        assert store.inbox_claim_now(ROBOT, items, 1.0) == [True, False, False, False]
        assert store.commits == commits + 2
        assert not await store.inbox_claim(ROBOT, "m2", "", "{}", 2.0)
        assert [e.msg_id for e in await store.inbox_unfinished(ROBOT)] == ["m1", "m2"]
    finally:
        await store.close()
    # A store that cannot record at once (a networked one) says so; the gateway then awaits inbox_claim.
    assert not Store.records_at_once
    with pytest.raises(NotImplementedError, match="await inbox_claim"):
        Store.inbox_claim_now(store, ROBOT, [("m3", "", "{}")], 1.0)
