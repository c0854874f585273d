"""Run a :class:`FakeDingTalk` in its own thread and event loop.

Needed whenever the client under test blocks its event loop (``dingtalk-stream`` 0.24.3's open-connection is a
synchronous ``requests.post``): a fake served from that same loop would deadlock.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from edgecrab.testing.fakedingtalk.server import FakeDingTalk

T = TypeVar("T")


class FakeDingTalkThread:
    """``with FakeDingTalkThread(redeliver_after_s=0.3) as fake: ...`` or ``start()``/``stop()``.

    ``call(coro)`` runs a coroutine (``fake.push(...)``, ``fake.wait_for(...)``) on the fake's loop and
    returns its result; ``call_async(coro)`` awaits it from another event loop without blocking that loop.
    """

    def __init__(self, fake: FakeDingTalk | None = None, **options: Any) -> None:
        self.fake = fake or FakeDingTalk(**options)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def start(self, timeout: float = 10.0) -> FakeDingTalk:
        self._thread = threading.Thread(target=self._run, name="fake-dingtalk", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("fake DingTalk thread did not start")
        if self._error is not None:
            raise RuntimeError("fake DingTalk failed to start") from self._error
        return self.fake

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.fake.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.fake.stop()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        if self.loop is None:
            coro.close()
            raise RuntimeError("FakeDingTalkThread is not started")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def call_async(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.loop is None:
            coro.close()
            raise RuntimeError("FakeDingTalkThread is not started")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop is None or self._thread is None:
            return
        if self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> FakeDingTalk:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return self.fake.base_url
