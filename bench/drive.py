"""Load drivers: coroutines that run on the fake's event loop, push frames and watch what comes back.

They run in the fake's own process (:mod:`bench.fakeproc`), next to the fake and nothing else; the
orchestrator sends them load plans as JSON (:data:`LaneSpec`, :data:`ItemSpec`) through
:class:`bench.fakes.BenchFake` and gets :class:`LoadResult` / :class:`AckResult` back.

Two shapes of load:

* :func:`closed_loop`: conversations ("lanes") of one or more messages, each user waiting for the answer
  before sending the next, ``concurrency`` lanes at a time. This is how people use a bot, and it keeps a
  busy-policy notice ("⏳ Queued") out of the comparison.
* :func:`open_loop`: messages pushed at a fixed rate whatever happens to them (for ack latency).

Every message text carries ``hello <n>``, and every contender's answer quotes the text, so an outbound
record is matched to its message by that number. Times are the fake's ``time.monotonic()``: push time
is taken right before ``push()``, reply time is the fake's ``OutboundRecord.t``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edgecrab.testing.fakedingtalk import FakeDingTalk

MARK = re.compile(r"hello (\d+)")
Lane = list[tuple[int, dict[str, Any]]]
"""One conversation's messages in order: (message number, built ``data``)."""
LaneSpec = list[tuple[int, int, str]]
"""A :data:`Lane` as the orchestrator sends it: (message number, user index, text) per message; the fake's
process builds each DM with ``fake.dm(fake.users[index], text)``."""
ItemSpec = tuple[int, str]
"""One open-loop message as the orchestrator sends it: (user index, text)."""


def text_for(n: int) -> str:
    return f"hello {n}"


@dataclass
class LoadResult:
    planned: int
    sent: int = 0
    replied: int = 0
    latencies_s: list[float] = field(default_factory=list)
    first_push_t: float = 0.0
    last_reply_t: float = 0.0
    stopped_at_t: float = 0.0
    budget_s: float = 0.0
    other_outbound: int = 0
    """Outbound messages that were no expected answer (notices, duplicates)."""
    dropped_events: int = 0

    @property
    def complete(self) -> bool:
        return self.replied >= self.planned

    @property
    def elapsed_s(self) -> float:
        """First push to last answer when complete; first push to the end of the budget otherwise."""
        end = self.last_reply_t if self.complete else self.stopped_at_t
        return max(end - self.first_push_t, 1e-9)

    @property
    def rate(self) -> float:
        return self.replied / self.elapsed_s


async def closed_loop(fake: FakeDingTalk, lanes: list[Lane], concurrency: int, budget_s: float) -> LoadResult:
    """Run ``lanes`` with at most ``concurrency`` in flight; stop after ``budget_s`` whatever is left."""
    result = LoadResult(planned=sum(len(lane) for lane in lanes), budget_s=budget_s)
    sub = fake.subscribe(buffer=10_000_000)
    waiting: dict[int, tuple[float, Iterator[tuple[int, dict[str, Any]]]]] = {}
    pending_lanes = iter(lanes)

    async def push_next(lane: Iterator[tuple[int, dict[str, Any]]]) -> bool:
        item = next(lane, None)
        if item is None:
            return False
        number, data = item
        waiting[number] = (time.monotonic(), lane)
        result.sent += 1
        await fake.push(data)
        return True

    async def open_lane() -> None:
        lane = next(pending_lanes, None)
        if lane is not None:
            await push_next(iter(lane))

    loop = asyncio.get_running_loop()
    result.first_push_t = time.monotonic()
    timer = loop.call_later(budget_s, sub.close)
    try:
        for _ in range(concurrency):
            await open_lane()
            await asyncio.sleep(0)  # let the fake serve replies while the first wave goes out
        async for event in sub:
            if event["kind"] != "outbound":
                continue
            match = MARK.search(event.get("text", ""))
            entry = waiting.pop(int(match.group(1)), None) if match else None
            if entry is None:
                result.other_outbound += 1
                continue
            result.latencies_s.append(event["t"] - entry[0])
            result.replied += 1
            result.last_reply_t = event["t"]
            if not await push_next(entry[1]):
                await open_lane()
            if not waiting:
                break
    finally:
        timer.cancel()
        result.stopped_at_t = time.monotonic()
        result.dropped_events = sub.dropped
        sub.close()
    return result


@dataclass
class AckResult:
    planned: int
    sent: int = 0
    latencies_s: list[float] = field(default_factory=list)
    """One per message acked 200 within the budget."""
    duration_s: float = 0.0
    budget_s: float = 0.0


async def open_loop(
    fake: FakeDingTalk, datas: list[dict[str, Any]], rate: float, budget_s: float
) -> AckResult:
    """Push ``datas`` at ``rate`` per second, then wait (within ``budget_s`` of the start) for their acks."""
    result = AckResult(planned=len(datas), budget_s=budget_s)
    start = time.monotonic()
    deadline = start + budget_s
    ids: set[str] = set()
    acked_before = fake.state.counters["acked_ok"]  # the warm-up message's ack is not ours
    try:
        async with asyncio.timeout(budget_s):
            for i, data in enumerate(datas):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                ids.add(await fake.push(data))
                result.sent += 1
    except TimeoutError:
        pass
    result.duration_s = time.monotonic() - start
    # Polling, not an event: the fake has no "acked" notification, and 20 ms is far below the budgets.
    acked = fake.state.counters
    while acked["acked_ok"] - acked_before < result.sent and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    first: dict[str, float] = {}
    for record in fake.acks:
        if record.code == 200 and record.message_id in ids and record.latency_s is not None:
            first.setdefault(record.message_id, record.latency_s)
    result.latencies_s = list(first.values())
    return result
