"""The gateway process's collector policy (:mod:`edgecrab.serve`): collections on a clock, not on counts."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import anyio
import pytest

from edgecrab import serve


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def restored_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


@pytest.mark.anyio
async def test_the_collector_runs_on_the_clock_only(restored_gc: None) -> None:
    serve._tune_gc()
    assert not gc.isenabled()  # no collection at an allocation that happens to cross a count
    node = Node()
    dead = weakref.ref(node)
    del node
    for _ in range(20_000):
        Node()  # plenty of allocations: with the collector on, these would have collected the cycle
    assert dead() is not None
    with anyio.move_on_after(10 * serve.YOUNG_COLLECTION_EVERY_S + 0.5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve._collections)
            while dead() is not None:  # noqa: ASYNC110 (polling a weakref: nothing to wait on)
                await anyio.sleep(serve.YOUNG_COLLECTION_EVERY_S)
            tg.cancel_scope.cancel()
    assert dead() is None


@pytest.mark.anyio
async def test_a_full_collection_comes_every_period(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve._tune_gc()
    monkeypatch.setattr(serve, "FULL_COLLECTION_EVERY_S", 0.05)
    full = gc.get_stats()[2]["collections"]
    with anyio.move_on_after(0.5):
        await serve._collections()
    assert gc.get_stats()[2]["collections"] >= full + 3
