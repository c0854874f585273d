"""``stream.run_in_thread``: a body in its own thread and event loop, owned by a task of the caller."""

from __future__ import annotations

import sys
import threading
import time

import anyio
import anyio.abc
import pytest

from edgecrab.dingtalk.stream import THREAD_SWITCH_INTERVAL_S, run_in_thread

pytestmark = pytest.mark.anyio


async def test_the_body_runs_in_another_thread_until_cancelled_and_leaves_nothing() -> None:
    seen: list[str] = []
    threads_before = set(threading.enumerate())
    interval_before = sys.getswitchinterval()

    async def body(task_status: anyio.abc.TaskStatus[None]) -> None:
        seen.append(threading.current_thread().name)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            seen.append("cancelled")

    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: run_in_thread(body, name="worker-x", task_status=task_status))
        assert seen == ["worker-x"]
        assert sys.getswitchinterval() == pytest.approx(min(interval_before, THREAD_SWITCH_INTERVAL_S))
        stopping = time.monotonic()
        tg.cancel_scope.cancel()
    assert time.monotonic() - stopping < 0.5
    assert seen == ["worker-x", "cancelled"]
    assert set(threading.enumerate()) == threads_before
    assert sys.getswitchinterval() == interval_before


async def test_start_waits_for_the_body_to_report_started() -> None:
    ready = threading.Event()

    async def body(task_status: anyio.abc.TaskStatus[None]) -> None:
        await anyio.sleep(0.2)
        ready.set()
        task_status.started()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: run_in_thread(body, name="slow-start", task_status=task_status))
        assert ready.is_set()
        tg.cancel_scope.cancel()


async def test_an_error_before_the_start_is_raised_by_start() -> None:
    async def body(task_status: anyio.abc.TaskStatus[None]) -> None:
        raise OSError("cannot open")

    async with anyio.create_task_group() as tg:
        with pytest.raises(OSError, match="cannot open"):
            await tg.start(lambda task_status: run_in_thread(body, name="fails", task_status=task_status))


async def test_an_error_after_the_start_ends_the_task_with_it() -> None:
    async def body(task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await anyio.sleep(0.05)
        raise ValueError("broken later")

    with pytest.raises(ExceptionGroup) as info:
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: run_in_thread(body, name="breaks", task_status=task_status))
            await anyio.sleep_forever()
    assert info.group_contains(ValueError, match="broken later")
    assert not [t for t in threading.enumerate() if t.name == "breaks"]
