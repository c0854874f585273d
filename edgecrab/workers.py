"""Jobs on tasks that outlive them: :class:`Workers` runs each job in a task already waiting for one when
there is such a task, and starts a new task only when every task it has is busy.

The runner runs each session's queue, and the delivery each conversation's unsent chunks, as one such job.
Each used to get a task of its own that ended with it, so the echo benchmark (1a) made and ended two tasks
a message: about 114,000 instructions each (callgrind) for anyio's set-up of a task (its cancel scope, its
event and handle, the asyncio task), against about 40,000 to hand a job to a task that waits for one
(an event set; BENCHMARKS.md, 1a).

A task that finished a job waits for the next one only while fewer than ``idle_max`` others wait, so a burst
(1,000 agent calls at once, bench scenario 3) leaves at most that many tasks behind, and a quiet gateway
keeps none it did not need. A job never waits behind another: it goes to a waiting task only when one is
free for it, else to a new task. Tasks live in the task group given to :meth:`Workers.bind`; cancelling
that group ends them, waiting or working, as it ended the tasks of old.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
import anyio.abc

T = TypeVar("T")

IDLE_MAX = 64
"""Tasks kept waiting for a job, at most (a few kilobytes each)."""


class _Slot(Generic[T]):
    """A task waiting for its next job."""

    __slots__ = ("job", "ready")

    def __init__(self) -> None:
        self.job: T | None = None
        self.ready = anyio.Event()


class Workers(Generic[T]):
    """``run(job)`` for each submitted job, on long-lived tasks of one task group."""

    def __init__(self, run: Callable[[T], Awaitable[None]], *, idle_max: int = IDLE_MAX) -> None:
        self._run = run
        self.idle_max = idle_max
        self._tg: anyio.abc.TaskGroup | None = None
        self._idle: list[_Slot[T]] = []

    def bind(self, tg: anyio.abc.TaskGroup) -> None:
        """Run jobs in ``tg`` from now on (the tasks of an earlier group are gone with it)."""
        self._tg, self._idle = tg, []

    @property
    def idle(self) -> int:
        """Tasks waiting for a job."""
        return len(self._idle)

    def submit(self, job: T) -> None:
        """Start ``job`` now: in a waiting task, else in a new one. Raises ``RuntimeError`` before
        :meth:`bind`."""
        if self._tg is None:
            raise RuntimeError("Workers.submit before bind")
        if self._idle:
            slot = self._idle.pop()  # that task is this job's alone: no job ever waits behind another
            slot.job = job
            slot.ready.set()
        else:
            self._tg.start_soon(self._work, job, self._idle)

    async def _work(self, job: T, idle: list[_Slot[T]]) -> None:
        while True:
            await self._run(job)
            if len(idle) >= self.idle_max or idle is not self._idle:
                return
            slot: _Slot[T] = _Slot()
            idle.append(slot)
            try:
                await slot.ready.wait()
            except BaseException:  # cancelled while waiting: no job may be handed to this task any more
                if slot in idle:
                    idle.remove(slot)
                raise
            assert slot.job is not None
            job = slot.job
