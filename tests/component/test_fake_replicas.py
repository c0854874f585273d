"""The fake DingTalk with several open connections of one app (replicas, issue 21; wave2 section 5).

Each push goes to ONE live connection chosen at random (reproducible with ``seed``); with
``redeliver_new_id`` an unacked push comes back, to a random live connection, under a NEW
``headers.messageId`` with the same ``data``, and an ack of the newest id settles it.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.component.fakeclient import ack, connect

pytestmark = pytest.mark.anyio


async def drain(ws: ClientConnection, into: list[dict[str, Any]], name: int) -> None:
    async for raw in ws:
        into.append(json.loads(raw) | {"conn": name})


async def spread(seed: int, pushes: int) -> list[int]:
    """Which of three connections got each of ``pushes`` DMs (all acked at once)."""
    got: list[dict[str, Any]] = []
    async with FakeDingTalk(seed=seed, redeliver_after_s=30) as fake:
        sockets = [await connect(fake) for _ in range(3)]
        readers = [asyncio.create_task(drain(ws, got, i)) for i, ws in enumerate(sockets)]
        ids = [await fake.push(fake.dm("manager807", f"m{i}")) for i in range(pushes)]
        await fake.wait_for(lambda: len(got) == pushes)
        for frame in got:
            await sockets[frame["conn"]].send(ack(frame))
        await fake.wait_for(lambda: not fake.stats()["pending"])
        assert sorted(f["headers"]["messageId"] for f in got) == sorted(ids)  # each exactly once
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers)
        by_id = {f["headers"]["messageId"]: f["conn"] for f in got}
        return [by_id[mid] for mid in ids]


async def test_each_push_goes_to_one_random_connection_reproducibly() -> None:
    first = await spread(11, 30)
    assert len(Counter(first)) == 3, f"30 pushes never reached one of 3 connections: {Counter(first)}"
    assert await spread(11, 30) == first  # the same seed picks the same connections


async def test_an_unacked_push_comes_back_under_a_new_message_id() -> None:
    async with FakeDingTalk(seed=3, redeliver_after_s=0.2, max_redeliveries=3, redeliver_new_id=True) as fake:
        sockets = [await connect(fake) for _ in range(2)]
        got: list[dict[str, Any]] = []
        readers = [asyncio.create_task(drain(ws, got, i)) for i, ws in enumerate(sockets)]
        mid = await fake.push(fake.dm("manager807", "nobody acks me"))
        await fake.wait_for(lambda: len(got) == 3, 5)  # the push and two redeliveries
        ids = [f["headers"]["messageId"] for f in got]
        assert ids[0] == mid and len(set(ids)) == 3, ids
        assert len({json.loads(f["data"])["msgId"] for f in got}) == 1  # the same message every time
        assert fake.deliveries_of(mid) == 3 and fake.redeliveries == 2
        await sockets[got[-1]["conn"]].send(ack(got[-1]))  # acking the newest id settles the push
        await fake.wait_for(lambda: not fake.stats()["pending"])
        assert fake.acks[-1].message_id == ids[-1] and fake.acks[-1].attempt == 3
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers)
        assert fake.deliveries_of(mid) == 3  # nothing after the ack


async def test_redelivery_lands_on_a_surviving_connection_with_a_new_id() -> None:
    async with FakeDingTalk(seed=5, redeliver_after_s=0.2, redeliver_new_id=True) as fake:
        sockets = [await connect(fake) for _ in range(2)]
        got: list[dict[str, Any]] = []
        readers = [asyncio.create_task(drain(ws, got, i)) for i, ws in enumerate(sockets)]
        mid = await fake.push(fake.dm("manager807", "the first taker dies"))
        await fake.wait_for(lambda: len(got) == 1)
        dead = got[0]["conn"]
        await fake.abort(fake.connections[dead])  # no ack: the taker was SIGKILLed
        await fake.wait_for(lambda: len(got) == 2, 5)
        again = got[1]
        assert again["conn"] == 1 - dead and again["headers"]["messageId"] != mid
        assert again["data"] == got[0]["data"]
        await sockets[again["conn"]].send(ack(again))
        await fake.wait_for(lambda: not fake.stats()["pending"])
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
