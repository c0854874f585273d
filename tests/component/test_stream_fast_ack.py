"""The Stream client's fast ack path over real loopback sockets: a robot callback is recorded and acked in
the step of the event loop that read it (``on_callbacks_now``, one commit for a read's callbacks), and
everything that path does not take still takes the awaited one (``on_callback``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from edgecrab.dingtalk.frames import Frame
from edgecrab.dingtalk.stream import BOT_TOPIC, AckDecision, StreamClient
from edgecrab.gateway import Gateway
from edgecrab.store import SQLiteStore
from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.component.gwkit import ScriptedAgent, make_config

pytestmark = pytest.mark.anyio


class Handlers:
    def __init__(self, now: str = "ok") -> None:
        self.now = now
        self.now_calls: list[str] = []
        self.reads: list[int] = []
        self.awaited_calls: list[str] = []

    def on_callbacks_now(self, frames: list[Frame]) -> list[AckDecision]:
        self.reads.append(len(frames))
        self.now_calls += [str(f.message_id) for f in frames]
        if self.now == "raise":
            raise RuntimeError("disk on fire")
        return [AckDecision()] * len(frames)

    async def on_callback(self, frame: Frame) -> AckDecision:
        self.awaited_calls.append(str(frame.message_id))
        await anyio.lowlevel.checkpoint()
        return AckDecision(200, "awaited")


@asynccontextmanager
async def stream_client(
    fake: FakeDingTalk, tmp_path: Path, handlers: Handlers, **dingtalk: Any
) -> AsyncIterator[StreamClient]:
    config = make_config(fake, tmp_path, **dingtalk).dingtalk
    now = None if handlers.now == "none" else handlers.on_callbacks_now
    client = StreamClient(config, handlers.on_callback, on_callbacks_now=now)
    async with anyio.create_task_group() as tg:
        await tg.start(client.run)
        await fake.wait_for(lambda: len(fake.connections) == 1, 3)
        try:
            yield client
        finally:
            tg.cancel_scope.cancel()


async def _acked(fake: FakeDingTalk, mids: list[str]) -> dict[str, Any]:
    await fake.wait_for(lambda: {a.message_id for a in fake.acks} >= set(mids), 3)
    return {a.message_id: a for a in fake.acks if a.message_id in mids}


async def test_callbacks_are_acked_on_the_fast_path(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers()
        async with stream_client(fake, tmp_path, handlers) as client:
            mids = [await fake.push(fake.dm(fake.users[0], f"m{i}")) for i in range(20)]
            acks = await _acked(fake, mids)
            assert all(a.code == 200 for a in acks.values())
            assert handlers.now_calls == mids  # in arrival order
            assert sum(handlers.reads) == 20 and all(n >= 1 for n in handlers.reads)
            assert handlers.awaited_calls == []
            assert client.current is not None and client.current.frames >= 20


async def test_without_the_fast_path_callbacks_take_the_awaited_one(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers(now="none")  # a store that cannot record at once
        async with stream_client(fake, tmp_path, handlers):
            mids = [await fake.push(fake.dm(fake.users[0], f"m{i}")) for i in range(5)]
            acks = await _acked(fake, mids)
            assert {a.message for a in acks.values()} == {"awaited"}
            assert handlers.awaited_calls == mids  # in arrival order


async def test_a_failing_record_is_acked_500_and_the_connection_stays(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers(now="raise")
        async with stream_client(fake, tmp_path, handlers):
            mid = await fake.push(fake.dm(fake.users[0], "boom"))
            acks = await _acked(fake, [mid])
            assert acks[mid].code == 500
            handlers.now = "ok"
            mid2 = await fake.push(fake.dm(fake.users[0], "fine"))
            assert (await _acked(fake, [mid2]))[mid2].code == 200
            assert fake.connections_opened == 1


async def test_pings_and_other_frames_still_take_the_awaited_path(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers()
        async with stream_client(fake, tmp_path, handlers):
            opaque = await fake.ping()
            await fake.wait_for(lambda: any(p.opaque == opaque and p.ok for p in fake.pings), 3)
            mid = await fake.push(fake.dm(fake.users[0], "after the ping"))
            assert (await _acked(fake, [mid]))[mid].code == 200
            assert handlers.now_calls == [mid]


async def test_frames_on_the_fast_path_keep_the_idle_watchdog_quiet(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers()
        async with stream_client(fake, tmp_path, handlers, idle_timeout_s=0.4):
            # Frames every 0.1 s for 1.2 s: three idle periods' worth, but never 0.4 s without one.
            for i in range(12):
                await fake.push(fake.dm(fake.users[0], f"keepalive {i}"))
                await anyio.sleep(0.1)
            assert fake.connections_opened == 1
            # And the watchdog still works once frames stop coming (a zombie connection).
            fake.zombie = True
            await fake.wait_for(lambda: fake.connections_opened >= 2, 3)


async def test_the_gateway_records_a_reads_callbacks_in_one_commit(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        config = make_config(fake, tmp_path)
        store = SQLiteStore(tmp_path / "one-commit.db")
        await store.open()
        try:
            gateway = Gateway(config, store=store, agent=ScriptedAgent())
            a, b = fake.dm(fake.users[0], "first"), fake.dm(fake.users[1], "second")

            def frame(data: dict[str, Any], mid: str) -> Frame:
                headers = {"topic": BOT_TOPIC, "messageId": mid}
                return Frame("CALLBACK", headers, json.dumps(data))

            no_msg_id = {k: v for k, v in a.items() if k != "msgId"}
            frames = [frame(a, "f1"), frame(no_msg_id, "f2"), frame(b, "f3"), frame(a, "f4")]
            commits = store.commits
            decisions = gateway.on_callbacks_now(frames)
            assert [d.code for d in decisions] == [200, 400, 200, 200]  # f4: a duplicate, acked
            assert store.commits == commits + 1
            assert (gateway.received, gateway.duplicates) == (2, 1)
            unfinished = await store.inbox_unfinished(gateway.robot)
            assert [e.msg_id for e in unfinished] == [a["msgId"], b["msgId"]]
            gateway._send.close()  # never ran: its ingest queue is closed here
            gateway._receive.close()
        finally:
            await store.close()
