"""Picture load drivers (scenario 7, issue 18): coroutines on the fake's loop, like :mod:`bench.drive`.

The picture's bytes are read once from a file the orchestrator wrote (a 5 MB JPEG does not belong in a
JSON command) and registered under a new download code for every message, so every message is its own
download. A picture message carries no text to quote, so its answer is found by its conversation: every
sender here has a DM conversation of its own.

* :func:`one_by_one`: one picture at a time, the next after the previous one's answer: the push time of
  each (the callback), its ack latency and its answer time. The orchestrator pairs the push times with the
  agent's request stamps (:mod:`bench.llm` ``--stamps``): both are ``time.monotonic()``, one clock for
  every process on the machine.
* :func:`at_once`: ``pictures`` pictures from different senders pushed at once, and text DMs from other
  users pushed at ``rate`` until every picture is answered: the acks of everything pushed while the
  downloads run, and which pictures were answered.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgecrab.testing.fakedingtalk import FakeDingTalk, Subscription

ACK_POLL_S = 0.02


@dataclass
class PictureResult:
    planned: int
    picture_bytes: int = 0
    pushed_t: list[float] = field(default_factory=list)
    """Per picture, in push order: ``time.monotonic()`` right before the push."""
    picture_ack_s: list[float] = field(default_factory=list)
    answered_t: list[float | None] = field(default_factory=list)
    """Per picture: when its first answer reached the fake (``None``: not within the budget)."""
    dm_sent: int = 0
    dm_ack_s: list[float] = field(default_factory=list)
    budget_s: float = 0.0


async def one_by_one(fake: FakeDingTalk, path: str, users: list[int], budget_s: float) -> PictureResult:
    """A picture from each of ``users`` (indices), one at a time, each waiting for the previous answer."""
    blob = await asyncio.to_thread(Path(path).read_bytes)
    result = PictureResult(planned=len(users), picture_bytes=len(blob), budget_s=budget_s)
    sub = fake.subscribe(buffer=100_000)
    ids: list[str] = []
    try:
        async with asyncio.timeout(budget_s):
            for index in users:
                data = fake.picture(fake.users[index], content=blob)
                result.pushed_t.append(time.monotonic())
                ids.append(await fake.push(data))
                answered: dict[str, float] = {}
                await _answers(sub, {data["conversationId"]}, answered)
                result.answered_t.append(answered[data["conversationId"]])
    except TimeoutError:
        pass
    finally:
        sub.close()
    result.answered_t += [None] * (len(result.pushed_t) - len(result.answered_t))
    result.picture_ack_s = _acks(fake, ids)
    return result


async def at_once(
    fake: FakeDingTalk,
    path: str,
    pictures: list[int],
    dms: list[tuple[int, str]],
    rate: float,
    budget_s: float,
) -> PictureResult:
    """Push a picture from each of ``pictures`` at once, then DMs (``dms``, in a loop if needed) at ``rate``
    until every picture is answered or ``budget_s`` is over; then wait for the DMs' acks."""
    blob = await asyncio.to_thread(Path(path).read_bytes)
    result = PictureResult(planned=len(pictures), picture_bytes=len(blob), budget_s=budget_s)
    deadline = time.monotonic() + budget_s
    datas = [fake.picture(fake.users[index], content=blob) for index in pictures]
    sub = fake.subscribe(buffer=1_000_000)
    picture_ids: list[str] = []
    for data in datas:
        result.pushed_t.append(time.monotonic())
        picture_ids.append(await fake.push(data))
    answered: dict[str, float] = {}
    waiting = asyncio.create_task(_answers(sub, {d["conversationId"] for d in datas}, answered))
    dm_ids: list[str] = []
    start = time.monotonic()
    try:
        while not waiting.done() and time.monotonic() < deadline:
            index, text = dms[len(dm_ids) % len(dms)]
            dm_ids.append(await fake.push(fake.dm(fake.users[index], text)))
            pause = start + len(dm_ids) / rate - time.monotonic()
            if pause > 0:
                await asyncio.wait([waiting], timeout=pause)
    finally:
        waiting.cancel()
        sub.close()
    result.answered_t = [answered.get(d["conversationId"]) for d in datas]
    result.dm_sent = len(dm_ids)
    while len(_acks(fake, dm_ids)) < len(dm_ids) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(ACK_POLL_S)  # the fake has no "acked" event (as in bench.drive.open_loop)
    result.picture_ack_s = _acks(fake, picture_ids)
    result.dm_ack_s = _acks(fake, dm_ids)
    return result


async def _answers(sub: Subscription, conversations: set[str], seen: dict[str, float]) -> None:
    """Note in ``seen`` the time of the first outbound message to each of ``conversations``; return once
    every one has one."""
    async for event in sub:
        if event["kind"] == "outbound" and event.get("conversation_id") in conversations:
            seen.setdefault(event["conversation_id"], event["t"])
            if len(seen) == len(conversations):
                break


def _acks(fake: FakeDingTalk, ids: list[str]) -> list[float]:
    """The first 200 ack latency of each of ``ids`` that has one."""
    wanted, first = set(ids), dict[str, float]()
    for record in fake.acks:
        if record.code == 200 and record.message_id in wanted and record.latency_s is not None:
            first.setdefault(record.message_id, record.latency_s)
    return list(first.values())
