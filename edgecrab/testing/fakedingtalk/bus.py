"""The fake's event bus: every frame, ack, redelivery, REST call and outbound message as a JSON-able dict.

Subscribers get a bounded anyio memory stream. A subscriber that falls behind loses events (counted in
``dropped``) instead of slowing the fake down, because the fake must keep DingTalk's timing.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

EventDict = dict[str, Any]


class Subscription:
    """An async iterator of event dicts; close it (or use ``async with``) when done."""

    def __init__(self, bus: EventBus, buffer: int) -> None:
        self._bus = bus
        send, receive = anyio.create_memory_object_stream[EventDict](max_buffer_size=buffer)
        self._send: MemoryObjectSendStream[EventDict] = send
        self._receive: MemoryObjectReceiveStream[EventDict] = receive
        self.dropped = 0

    def offer(self, event: EventDict) -> None:
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.dropped += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._bus.unsubscribe(self)

    async def receive(self) -> EventDict:
        return await self._receive.receive()

    def __aiter__(self) -> AsyncIterator[EventDict]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[EventDict]:
        try:
            async for event in self._receive:
                yield event
        except anyio.ClosedResourceError:
            return

    def close(self) -> None:
        self._bus.unsubscribe(self)
        self._send.close()
        self._receive.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fans events out to subscribers and keeps the last ``history`` events for late joiners."""

    def __init__(self, history: int = 500) -> None:
        self._subscribers: list[Subscription] = []
        self._seq = itertools.count(1)
        self.recent: deque[EventDict] = deque(maxlen=history)
        self.version = 0  # bumped on every event; wait_for uses it to avoid busy work

    def emit(self, kind: str, **fields: Any) -> EventDict:
        event: EventDict = {
            "kind": kind,
            "seq": next(self._seq),
            "t": time.monotonic(),
            "ts": int(time.time() * 1000),
            **fields,
        }
        self.recent.append(event)
        self.version += 1
        for sub in list(self._subscribers):
            sub.offer(event)
        return event

    def subscribe(self, buffer: int = 10_000, replay: bool = False) -> Subscription:
        sub = Subscription(self, buffer)
        if replay:
            for event in self.recent:
                sub.offer(event)
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    def close(self) -> None:
        for sub in list(self._subscribers):
            sub.close()
