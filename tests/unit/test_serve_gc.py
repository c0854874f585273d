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


def test_the_collections_come_every_10_ms_under_work_and_back_off_when_quiet() -> None:
    young, quiet = serve.YOUNG_COLLECTION_EVERY_S, serve.QUIET_COLLECTION_EVERY_S
    few, many = serve.QUIET_NEW_OBJECTS - 1, serve.QUIET_NEW_OBJECTS
    assert serve._next_wait(young, young, few) == young  # busy: every 10 ms
    assert serve._next_wait(young, young * serve.QUIET_CPU_SHARE, 0) == young  # the share still counts
    assert serve._next_wait(young, 0.0, many) == young  # little CPU, but objects pile up (acks alone)
    waits = [young]
    for _ in range(10):  # idle: twice as long each time, up to the quiet interval
        waits.append(serve._next_wait(waits[-1], 0.0, few))
    assert waits[:4] == [young, 2 * young, 4 * young, 8 * young]
    assert waits[-1] == quiet and max(waits) == quiet
    assert serve._next_wait(quiet, quiet / 5, 0) == young  # work again: back to 10 ms at once
    assert serve._next_wait(quiet, 0.0, many) == young


@pytest.mark.anyio
async def test_a_quiet_process_is_collected_less_often_than_every_10_ms(restored_gc: None) -> None:
    serve._tune_gc()
    young = gc.get_stats()[1]["collections"]
    with anyio.move_on_after(0.6):
        await serve._collections()  # nothing else runs: the process is quiet
    made = gc.get_stats()[1]["collections"] - young
    # Every 10 ms would be about 60 in 0.6 s; backing off (10, 20, 40, 80, then 100 ms) makes about 9.
    assert 1 <= made <= 20, made
