"""``state.db`` holds conversations and live sessionWebhook URLs (which let their holder post as the bot):
the SQLite store keeps it, its ``-wal`` and ``-shm`` private to the owner (issue 16)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecrab.store import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common default, under which files are created 0644 and directories 0755 unless asked otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def write_something(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.kv_set("probe", "value")
        # While the store is open, SQLite's -wal and -shm files exist: check them then.
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            assert side.exists() and mode(side) == 0o600, (suffix, oct(mode(side)))
    finally:
        await store.close()


async def test_a_new_state_db_is_0600_in_a_new_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "home" / "edgecrab" / "state.db"
    await write_something(path)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700


async def test_an_existing_directory_is_left_alone_and_loose_files_are_tightened(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    path = shared / "state.db"
    await write_something(path)
    path.chmod(0o644)  # as a version before issue 16 left it
    await write_something(path)
    assert mode(path) == 0o600
    assert mode(shared) == 0o755  # the operator's choice: documented in docs/security.md
