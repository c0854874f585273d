"""Workers: jobs on long-lived tasks (edgecrab.workers), which the runner and the delivery use per message."""

from __future__ import annotations

import anyio
import pytest

from edgecrab.workers import Workers

pytestmark = pytest.mark.anyio


class Jobs:
    """Jobs that record which task ran them and can be held until released."""

    def __init__(self) -> None:
        self.tasks: list[object] = []
        self.started: list[int] = []
        self.done: list[int] = []
        self.gates: dict[int, anyio.Event] = {}

    async def run(self, job: int) -> None:
        self.tasks.append(anyio.get_current_task().id)
        self.started.append(job)
        if job in self.gates:
            await self.gates[job].wait()
        self.done.append(job)


async def until(predicate: object) -> None:
    with anyio.fail_after(5):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 - polling the test's own records
            await anyio.sleep(0.001)


async def test_a_job_after_another_runs_on_the_task_that_waits_for_it() -> None:
    jobs = Jobs()
    workers = Workers(jobs.run)
    async with anyio.create_task_group() as tg:
        workers.bind(tg)
        for n in range(5):
            workers.submit(n)
            await until(lambda n=n: jobs.done == list(range(n + 1)) and workers.idle == 1)
        tg.cancel_scope.cancel()
    assert len(set(jobs.tasks)) == 1  # one task made, five jobs run


async def test_a_job_never_waits_behind_a_busy_one() -> None:
    jobs = Jobs()
    jobs.gates[1] = anyio.Event()
    workers = Workers(jobs.run)
    async with anyio.create_task_group() as tg:
        workers.bind(tg)
        workers.submit(0)
        await until(lambda: workers.idle == 1)
        workers.submit(1)  # takes the waiting task, and holds it
        workers.submit(2)  # must not queue behind 1: a new task
        await until(lambda: jobs.done == [0, 2])
        assert 1 in jobs.started and 1 not in jobs.done
        jobs.gates[1].set()
        await until(lambda: jobs.done == [0, 2, 1])
        tg.cancel_scope.cancel()


async def test_a_burst_leaves_at_most_idle_max_tasks_waiting() -> None:
    jobs = Jobs()
    release = anyio.Event()
    for n in range(20):
        jobs.gates[n] = release
    workers = Workers(jobs.run, idle_max=3)
    async with anyio.create_task_group() as tg:
        workers.bind(tg)
        for n in range(20):
            workers.submit(n)
        await until(lambda: len(jobs.started) == 20)
        assert len(set(jobs.tasks)) == 20  # all at once: one task each
        release.set()
        await until(lambda: len(jobs.done) == 20)
        assert workers.idle == 3
        tg.cancel_scope.cancel()


async def test_after_its_task_group_ends_jobs_run_in_the_next_one() -> None:
    jobs = Jobs()
    workers = Workers(jobs.run)
    with pytest.raises(RuntimeError, match="before bind"):
        workers.submit(0)
    async with anyio.create_task_group() as tg:
        workers.bind(tg)
        workers.submit(0)
        await until(lambda: workers.idle == 1)
        tg.cancel_scope.cancel()  # the waiting task is cancelled with its group
    async with anyio.create_task_group() as tg:
        workers.bind(tg)
        assert workers.idle == 0
        workers.submit(1)
        await until(lambda: jobs.done == [0, 1])
        tg.cancel_scope.cancel()


async def test_a_failing_job_fails_the_task_group_as_a_task_of_its_own_did() -> None:
    async def boom(job: int) -> None:
        raise ValueError(f"job {job}")

    workers = Workers(boom)
    with pytest.raises(ExceptionGroup) as caught:
        async with anyio.create_task_group() as tg:
            workers.bind(tg)
            workers.submit(7)
    assert caught.group_contains(ValueError, match="job 7")
