"""A clock tests move by hand, for :class:`~edgecrab.core.schedules.Scheduler` (its ``clock``): no test waits
for a real minute to pass.

``sleep_until`` returns once :meth:`FakeClock.advance` (or :meth:`FakeClock.set`) moved the time to or past
its instant; :meth:`FakeClock.sleepers` waits until that many tasks sleep on the clock, so a test knows the
scheduler has finished what it was doing and is waiting for its next slot.
"""

from __future__ import annotations

import anyio


class FakeClock:
    def __init__(self, now: float) -> None:
        self._now = now
        self._moved: anyio.Event | None = None
        self._waiting = 0
        """Tasks waiting for the clock to move (reset by each move: the woken ones count again when they
        go back to sleep)."""
        self._changed: anyio.Event | None = None
        self.wakeups: list[float] = []
        """The instants tasks asked to sleep until, in order."""

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        self.wakeups.append(when)
        while self._now < when:
            if self._moved is None:
                self._moved = anyio.Event()
            moved = self._moved
            self._waiting += 1
            self._notify()
            try:
                await moved.wait()
            finally:
                if not moved.is_set():  # cancelled while waiting
                    self._waiting -= 1

    def set(self, now: float) -> None:
        self._now = now
        if self._moved is not None:
            self._moved.set()
            self._moved = None
        self._waiting = 0

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    async def sleepers(self, count: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``count`` tasks sleep on this clock since it last moved."""
        with anyio.fail_after(timeout):
            while self._waiting < count:
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


__all__ = ["FakeClock"]
