"""The Stream connection's acks over real loopback sockets: every robot callback is recorded before its ack
is sent, acks leave in the order the frames arrived, a record that fails is never acked as OK, pings are
echoed, a ``disconnect`` is acked and reported (make before break), and the idle watchdog goes by the last
frame. Every recorder is covered: ``on_callbacks_now`` (synchronous, one commit), ``on_callbacks`` (a batch of
callbacks per awaited record, while the connection reads on: Redis) and ``on_callback``."""

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
from edgecrab.dingtalk.streamconn import MAX_FRAME_BYTES, READ_LIMIT_BYTES
from edgecrab.gateway import Gateway
from edgecrab.store import SQLiteStore
from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.component.gwkit import ScriptedAgent, make_config

pytestmark = pytest.mark.anyio

RECORDERS = ["now", "awaited", "batched"]


class Handlers:
    """Both recorders; ``events`` interleaves what was recorded with what the connection sent."""

    def __init__(self, recorder: str, *, fail: bool = False) -> None:
        self.recorder = recorder
        self.fail = fail
        self.events: list[tuple[str, str]] = []
        self.batches: list[int] = []
        self.record_s = 0.0
        """How long a batched record takes (a store's round trip)."""

    def on_callbacks_now(self, frames: list[Frame]) -> list[AckDecision]:
        assert self.recorder == "now", "the synchronous recorder was not offered"
        return [self._record(frame, "now") for frame in frames]

    async def on_callbacks(self, frames: list[Frame]) -> list[AckDecision]:
        assert self.recorder == "batched", "the batched recorder was not offered"
        self.batches.append(len(frames))
        await anyio.sleep(self.record_s)  # a store that awaits its round trip
        return [self._record(frame, "batched") for frame in frames]

    async def on_callback(self, frame: Frame) -> AckDecision:
        await anyio.lowlevel.checkpoint()  # a store that awaits its commit
        return self._record(frame, "awaited")

    def _record(self, frame: Frame, how: str) -> AckDecision:
        if self.fail:
            raise RuntimeError("disk on fire")
        self.events.append(("record", str(frame.message_id)))
        return AckDecision(200, how)


@asynccontextmanager
async def stream_client(
    fake: FakeDingTalk, tmp_path: Path, handlers: Handlers, **dingtalk: Any
) -> AsyncIterator[StreamClient]:
    config = make_config(fake, tmp_path, **dingtalk).dingtalk
    now = handlers.on_callbacks_now if handlers.recorder == "now" else None
    batched = handlers.on_callbacks if handlers.recorder == "batched" else None
    client = StreamClient(config, handlers.on_callback, on_callbacks_now=now, on_callbacks=batched)
    async with anyio.create_task_group() as tg:
        await tg.start(client.run)
        await fake.wait_for(lambda: len(fake.connections) == 1 and client.current is not None, 3)
        assert client.current is not None
        ws = client.current.ws
        send = ws.send

        async def spy(message: Any, *args: Any, **kwargs: Any) -> None:
            # Instruments websockets' public send() of this one connection: what left, and when.
            handlers.events.append(("ack", str(json.loads(message)["headers"].get("messageId"))))
            await send(message, *args, **kwargs)

        ws.send = spy  # type: ignore[method-assign]
        try:
            yield client
        finally:
            tg.cancel_scope.cancel()


async def _acked(fake: FakeDingTalk, mids: list[str]) -> dict[str, Any]:
    await fake.wait_for(lambda: {a.message_id for a in fake.acks} >= set(mids), 3)
    return {a.message_id: a for a in fake.acks if a.message_id in mids}


@pytest.mark.parametrize("recorder", ["now", "awaited"])
async def test_each_callback_is_recorded_before_its_ack_in_arrival_order(
    tmp_path: Path, recorder: str
) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers(recorder)
        async with stream_client(fake, tmp_path, handlers) as client:
            mids = [await fake.push(fake.dm(fake.users[0], f"m{i}")) for i in range(20)]
            acks = await _acked(fake, mids)
            assert {(a.code, a.message) for a in acks.values()} == {(200, recorder)}
            # Each frame is recorded, then acked, before the next one is read.
            assert handlers.events == [(step, mid) for mid in mids for step in ("record", "ack")]
            assert [a.message_id for a in fake.acks if a.message_id in mids] == mids
            assert client.current is not None and client.current.frames >= 20


async def test_batched_callbacks_read_during_a_record_are_recorded_together_then_acked_in_order(
    tmp_path: Path,
) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers("batched")
        handlers.record_s = 0.05
        async with stream_client(fake, tmp_path, handlers) as client:
            mids = [await fake.push(fake.dm(fake.users[0], f"m{i}")) for i in range(30)]
            acks = await _acked(fake, mids)
            assert {(a.code, a.message) for a in acks.values()} == {(200, "batched")}
            for mid in mids:  # each recorded before its ack left
                assert handlers.events.index(("record", mid)) < handlers.events.index(("ack", mid))
            assert [a.message_id for a in fake.acks if a.message_id in mids] == mids
            # The connection read on while a batch was being recorded: later frames came in fewer records.
            assert sum(handlers.batches) == 30 and len(handlers.batches) < 30
            assert max(handlers.batches) > 1
            assert client.current is not None and client.current.frames >= 30


async def test_batched_callbacks_still_being_recorded_are_acked_before_a_disconnect_closes(
    tmp_path: Path,
) -> None:
    async with FakeDingTalk(disconnect_close_after_s=30) as fake:
        handlers = Handlers("batched")
        handlers.record_s = 0.3
        async with stream_client(fake, tmp_path, handlers) as client:
            first = client.current
            assert first is not None
            mid = await fake.push(fake.dm(fake.users[0], "recorded while the disconnect comes"))
            [old_id] = await fake.disconnect()
            await first.ended.wait()
            acks = await _acked(fake, [mid])
            assert acks[mid].code == 200 and acks[mid].connection_id == old_id


@pytest.mark.parametrize("recorder", RECORDERS)
async def test_a_record_that_fails_is_acked_500_never_200_and_the_connection_stays(
    tmp_path: Path, recorder: str
) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers(recorder, fail=True)
        async with stream_client(fake, tmp_path, handlers):
            mid = await fake.push(fake.dm(fake.users[0], "boom"))
            assert (await _acked(fake, [mid]))[mid].code == 500
            handlers.fail = False
            mid2 = await fake.push(fake.dm(fake.users[0], "fine"))
            assert (await _acked(fake, [mid2]))[mid2].code == 200
            assert [a.code for a in fake.acks if a.message_id == mid] == [500]
            assert ("record", mid) not in handlers.events
            assert fake.connections_opened == 1


async def test_pings_are_echoed_between_callbacks(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers("now")
        async with stream_client(fake, tmp_path, handlers):
            before = await fake.push(fake.dm(fake.users[0], "before the ping"))
            opaque = await fake.ping()
            after = await fake.push(fake.dm(fake.users[0], "after the ping"))
            await _acked(fake, [before, after])
            await fake.wait_for(lambda: any(p.opaque == opaque and p.ok for p in fake.pings), 3)
            ping_mid = next(p.message_id for p in fake.pings if p.opaque == opaque)
            sent = [mid for step, mid in handlers.events if step == "ack"]
            assert sent == [before, ping_mid, after]


async def test_a_disconnect_is_acked_and_the_next_connection_opens_before_this_one_closes(
    tmp_path: Path,
) -> None:
    async with FakeDingTalk(disconnect_close_after_s=30) as fake:
        handlers = Handlers("now")
        async with stream_client(fake, tmp_path, handlers) as client:
            first = client.current
            assert first is not None
            [old_id] = await fake.disconnect()
            await first.ended.wait()
            assert first.end_reason == "disconnect"
            # Closed by the client once its replacement is up, long before the fake's 30 s.
            await fake.wait_for(lambda: any(c.closed for c in fake.all_connections), 5)
            [old] = [c for c in fake.all_connections if c.connection_id == old_id]
            [new] = [c for c in fake.all_connections if c.connection_id != old_id]
            assert old.closed and not new.closed
            assert old.closed_t is not None and new.opened_t < old.closed_t
            assert [a.data for a in fake.acks if a.connection_id == old_id] == [
                {"reason": "connection is expired"}
            ]
            mid = await fake.push(fake.dm(fake.users[0], "on the new connection"))
            assert (await _acked(fake, [mid]))[mid].connection_id == new.connection_id


async def test_a_frame_over_max_size_is_dropped_and_the_connection_stays(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers("now")
        async with stream_client(fake, tmp_path, handlers, reconnect_initial_s=0.05):
            [first] = fake.all_connections
            await fake.push_raw("x" * (MAX_FRAME_BYTES + 1))  # no messageId to ack: dropped, logged
            mid = await fake.push(fake.dm(fake.users[0], "after the big frame"))
            assert (await _acked(fake, [mid]))[mid].code == 200
            assert not first.closed and fake.connections_opened == 1


async def test_a_frame_over_the_read_ceiling_closes_the_connection_with_1009_and_it_reconnects(
    tmp_path: Path,
) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers("now")
        async with stream_client(fake, tmp_path, handlers, reconnect_initial_s=0.05):
            [first] = fake.all_connections
            await fake.push_raw("x" * (READ_LIMIT_BYTES + 1))
            await fake.wait_for(lambda: first.closed and fake.connections_opened == 2, 10)
            assert first.close_code == 1009  # "message too big", from websockets' max_size
            mid = await fake.push(fake.dm(fake.users[0], "after the reconnect"))
            assert (await _acked(fake, [mid]))[mid].code == 200


async def test_the_idle_watchdog_goes_by_the_last_frame(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        handlers = Handlers("now")
        async with stream_client(fake, tmp_path, handlers, idle_timeout_s=0.4):
            # Frames every 0.1 s for 1.2 s: three idle periods' worth, but never 0.4 s without one.
            for i in range(12):
                await fake.push(fake.dm(fake.users[0], f"keepalive {i}"))
                await anyio.sleep(0.1)
            assert fake.connections_opened == 1
            # And the watchdog still works once frames stop coming (a zombie connection).
            fake.zombie = True
            await fake.wait_for(lambda: fake.connections_opened >= 2, 3)


async def test_the_gateway_records_callbacks_at_once_in_one_commit(tmp_path: Path) -> None:
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
            decisions = gateway.intake.on_callbacks_now(frames)
            assert [d.code for d in decisions] == [200, 400, 200, 200]  # f4: a duplicate, acked
            assert store.commits == commits + 1
            assert (gateway.intake.received, gateway.intake.duplicates) == (2, 1)
            unfinished = await store.inbox_unfinished(gateway.robot)
            assert [e.msg_id for e in unfinished] == [a["msgId"], b["msgId"]]
            gateway.intake.close()  # never ran: its ingest queue is closed here
        finally:
            await store.close()


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:1/connect", "not a url at all", "wss://", 42])
async def test_an_endpoint_that_is_not_ws_backs_off_and_retries(
    tmp_path: Path, endpoint: object, caplog: pytest.LogCaptureFixture
) -> None:
    """open-connection answering an endpoint that is not ws:// or wss:// used to crash the client (an
    InvalidURI out of websockets); now it is an OpenFailed like any other: logged, backed off, retried."""
    async with FakeDingTalk() as fake:
        fake.faults.fail("/v1.0/gateway/connections/open", status=200,
                         body={"endpoint": endpoint, "ticket": "t-1"}, times=2)
        handlers = Handlers("now")
        with caplog.at_level("WARNING", logger="edgecrab.dingtalk.stream"):
            async with stream_client(fake, tmp_path, handlers, reconnect_initial_s=0.05):
                mid = await fake.push(fake.dm(fake.users[0], "after two bad endpoints"))
                assert (await _acked(fake, [mid]))[mid].code == 200
    assert fake.tickets_issued == 1 and fake.connections_opened == 1
    assert caplog.text.count("open-connection answered") == 2, caplog.text
