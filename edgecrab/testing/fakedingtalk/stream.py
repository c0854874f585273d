"""The stream hub: live connections, frame delivery, ack tracking, redelivery, duplicates and SYSTEM frames.

Delivery rules (protocol reference sections 3-5):

- a CALLBACK/EVENT goes to one live, non-draining connection of its app that subscribed to its topic,
  chosen at random; with none (or in zombie mode) it waits in a per-app queue;
- the frame text is frozen at its first send; a redelivery sends the very same text (identical headers,
  data and ``connectionId`` of the first delivery) to any eligible connection, ``redeliver_after_s`` after
  the latest send, while no 200 ack (EVENT: 200 with status SUCCESS) arrived, at most ``max_redeliveries``
  times; with ``redeliver_new_id`` (DingTalk's MetaQ redelivery, wave2 section 5) each redelivery carries a
  NEW ``headers.messageId`` (same ``data``), and an ack of any of a push's ids settles it;
- after a SYSTEM disconnect the connection receives nothing more and is closed
  ``disconnect_close_after_s`` later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from edgecrab.testing.fakedingtalk.connection import Delivery, FakeConnection, RawFrame
from edgecrab.testing.fakedingtalk.models import (
    CALLBACK_TOPIC,
    AckRecord,
    FakeApp,
    PingRecord,
    new_frame_message_id,
)
from edgecrab.testing.fakedingtalk.state import FakeState

JSON_TYPE = "application/json"


class StreamHub:
    """Owns connections and deliveries of one fake; all methods run on the fake's event loop."""

    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.connections: list[FakeConnection] = []
        self.all_connections: list[FakeConnection] = []
        self.deliveries: dict[str, Delivery] = {}
        self.aliases: dict[str, Delivery] = {}  # a redelivery's new messageId -> its push
        self.queues: dict[str, deque[Delivery | RawFrame]] = {}
        self._pings: dict[str, PingRecord] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()

    # bookkeeping ------------------------------------------------------------------------------------------
    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def later(self, delay: float, fn: Callable[[], Awaitable[Any]]) -> asyncio.TimerHandle:
        def fire() -> None:
            self._timers.discard(handle)
            self.spawn(fn())

        handle = asyncio.get_running_loop().call_later(max(delay, 0.0), fire)
        self._timers.add(handle)
        return handle

    async def shutdown(self) -> None:
        for handle in list(self._timers):
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.connections):
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)

    def live(self, app: str | None = None) -> list[FakeConnection]:
        return [c for c in self.connections if not c.closed and (app is None or c.app == app)]

    def eligible(self, app: str, frame_type: str, topic: str) -> list[FakeConnection]:
        return [c for c in self.live(app) if not c.draining and c.subscribed(frame_type, topic)]

    def pick(self, conns: list[FakeConnection]) -> FakeConnection | None:
        return self.state.rng.choice(conns) if conns else None

    # connection lifecycle ---------------------------------------------------------------------------------
    async def register(self, conn: FakeConnection) -> None:
        if self.state.settings.kick_older:
            for old in self.live(conn.app):
                old.draining = True
                self.spawn(self._close_quietly(old, 1000))
        self.connections.append(conn)
        self.all_connections.append(conn)
        self.state.counters["connections_opened"] += 1
        self.state.bus.emit("connection", event="opened", **conn.info())
        await self.flush(conn.app)

    def unregister(self, conn: FakeConnection) -> None:
        conn.closed, conn.closed_t, conn.close_code = True, time.monotonic(), conn.ws.close_code
        if conn in self.connections:
            self.connections.remove(conn)
        self.state.bus.emit("connection", event="closed", **conn.info())

    async def _close_quietly(self, conn: FakeConnection, code: int) -> None:
        with contextlib.suppress(Exception):
            await conn.ws.close(code=code)

    # sending ----------------------------------------------------------------------------------------------
    async def _send(self, conn: FakeConnection, payload: str | bytes, meta: dict[str, Any]) -> bool:
        try:
            async with conn.send_lock:
                if isinstance(payload, bytes):
                    await conn.ws.send_bytes(payload)
                else:
                    await conn.ws.send_str(payload)
        except Exception as exc:  # a dying socket: the redelivery timer covers tracked frames
            self.state.bus.emit(
                "frame", direction="out", connection_id=conn.connection_id, ok=False, error=repr(exc), **meta
            )
            return False
        conn.frames_sent += 1
        self.state.counters["frames_sent"] += 1
        self.state.bus.emit("frame", direction="out", connection_id=conn.connection_id, ok=True, **meta)
        return True

    def _queue(self, app: str, item: Delivery | RawFrame) -> None:
        self.queues.setdefault(app, deque()).append(item)
        self.state.bus.emit(
            "frame",
            direction="queued",
            app=app,
            message_id=getattr(item, "message_id", None),
            queued=len(self.queues[app]),
        )

    async def flush(self, app: str | None = None) -> None:
        """Send queued frames now that a connection exists (or zombie mode ended)."""
        for name in [app] if app else list(self.queues):
            queue = self.queues.get(name)
            if not queue or self.state.settings.zombie:
                continue
            items = list(queue)
            queue.clear()
            for item in items:  # whatever still cannot go out is queued again, in the same order
                if isinstance(item, RawFrame):
                    await self.send_raw(item.payload, item.app)
                else:
                    await self._deliver(item)

    async def _deliver(self, d: Delivery) -> bool:
        """Send a tracked frame to one eligible connection, or queue it. True when it went out."""
        conn = None if self.state.settings.zombie else self.pick(self.eligible(d.app, d.frame_type, d.topic))
        if conn is None:
            self._queue(d.app, d)
            return False
        if d.frame_text is None:
            headers = dict(d.headers, connectionId=conn.connection_id)
            d.frame_text = json.dumps(
                {"specVersion": "1.0", "type": d.frame_type, "headers": headers, "data": d.data},
                ensure_ascii=False,
            )
        d.attempts += 1
        d.last_sent_t = time.monotonic()
        d.first_sent_t = d.first_sent_t or d.last_sent_t
        d.connection_ids.append(conn.connection_id)
        await self._send(
            conn,
            d.frame_text,
            {"message_id": d.message_id, "frame_id": d.frame_id, "type": d.frame_type, "topic": d.topic}
            | {"attempt": d.attempts, "app": d.app},
        )
        if d.timer:
            d.timer.cancel()
        d.timer = self.later(self.state.settings.redeliver_after_s, lambda: self._redeliver(d))
        return True

    async def _redeliver(self, d: Delivery) -> None:
        d.timer = None
        if d.acked_ok or d.gave_up:
            return
        if d.attempts > self.state.settings.max_redeliveries:
            d.gave_up = True
            self.state.counters["gave_up"] += 1
            self.state.bus.emit("redelivery", message_id=d.message_id, attempt=d.attempts, gave_up=True)
            return
        self.state.counters["redeliveries"] += 1
        if self.state.settings.redeliver_new_id:
            self.aliases[d.renew(new_frame_message_id())] = d
        self.state.bus.emit(
            "redelivery", message_id=d.message_id, frame_id=d.frame_id, attempt=d.attempts + 1, gave_up=False
        )
        await self._deliver(d)

    async def push(
        self,
        app: FakeApp,
        data: Any,
        *,
        message_id: str | None,
        topic: str,
        frame_type: str = "CALLBACK",
        extra_headers: dict[str, str] | None = None,
    ) -> str:
        mid = message_id or new_frame_message_id()
        if frame_type == "CALLBACK" and topic == CALLBACK_TOPIC and self._unmentioned(data):
            self.state.counters["dropped_unmentioned"] += 1
            self.state.bus.emit(
                "frame",
                direction="dropped",
                message_id=mid,
                topic=topic,
                app=app.client_id,
                reason="group message without @robot is never pushed by DingTalk",
            )
            return mid
        headers = {
            "appId": app.app_id,
            "contentType": JSON_TYPE,
            "messageId": mid,
            "time": str(self.state.wall_ms()),
            "topic": topic,
            **(extra_headers or {}),
        }
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        d = Delivery(mid, app.client_id, frame_type, topic, headers, text)
        self.deliveries[mid] = d
        self.state.counters["pushes"] += 1
        await self._deliver(d)
        return mid

    def _unmentioned(self, data: Any) -> bool:
        return (
            isinstance(data, dict)
            and data.get("conversationType") == "2"
            and not data.get("isInAtList")
            and not self.state.settings.deliver_unmentioned
        )

    async def send_raw(self, payload: str | bytes, app: str, conn: FakeConnection | None = None) -> bool:
        conn = conn or (
            None if self.state.settings.zombie else self.pick([c for c in self.live(app) if not c.draining])
        )
        if conn is None:
            self._queue(app, RawFrame(app, payload))
            return False
        self.state.counters["raw_frames"] += 1
        return await self._send(conn, payload, {"type": "raw", "app": app, "size": len(payload)})

    async def duplicate(self, message_id: str) -> bool:
        """Send an already-delivered frame again, unchanged (a spontaneous duplicate)."""
        d = self.deliveries.get(message_id)
        if d is None or d.frame_text is None:
            raise KeyError(f"no delivered frame with messageId {message_id!r}")
        conn = self.pick(self.eligible(d.app, d.frame_type, d.topic))
        if conn is None:
            return False
        self.state.counters["duplicates_injected"] += 1
        self.state.bus.emit("redelivery", message_id=message_id, duplicate=True, attempt=d.attempts)
        return await self._send(
            conn,
            d.frame_text,
            {
                "message_id": message_id,
                "type": d.frame_type,
                "topic": d.topic,
                "duplicate": True,
                "app": d.app,
            },
        )

    # SYSTEM frames and socket control ---------------------------------------------------------------------
    async def ping(self, conn: FakeConnection, opaque: str) -> PingRecord:
        mid = new_frame_message_id()
        record = PingRecord(mid, opaque, conn.connection_id, time.monotonic())
        self._pings[mid] = record
        self.state.pings.append(record)
        frame = {
            "type": "SYSTEM",
            "headers": {"topic": "ping", "messageId": mid, "contentType": JSON_TYPE},
            "data": json.dumps({"opaque": opaque}),
        }
        await self._send(conn, json.dumps(frame), {"message_id": mid, "type": "SYSTEM", "topic": "ping"})
        return record

    async def disconnect(self, conn: FakeConnection, reason: str) -> None:
        # The official example carries no messageId; deliveries stop at once, TCP closes later.
        conn.draining = True
        frame = {
            "type": "SYSTEM",
            "headers": {"topic": "disconnect", "contentType": JSON_TYPE},
            "data": json.dumps({"reason": reason}),
        }
        self.state.counters["disconnects_sent"] += 1
        await self._send(
            conn, json.dumps(frame, ensure_ascii=False), {"type": "SYSTEM", "topic": "disconnect"}
        )
        self.later(self.state.settings.disconnect_close_after_s, lambda: self._close_quietly(conn, 1000))

    async def abort(self, conn: FakeConnection) -> None:
        conn.draining = True
        self.state.counters["aborts"] += 1
        transport = conn.request.transport
        if transport is not None:
            transport.abort()
        self.state.bus.emit("connection", event="aborted", connection_id=conn.connection_id, app=conn.app)

    async def close(self, conn: FakeConnection, code: int) -> None:
        conn.draining = True
        self.state.bus.emit("connection", event="closing", connection_id=conn.connection_id, code=code)
        await self._close_quietly(conn, code)

    # acks -------------------------------------------------------------------------------------------------
    def on_client_text(self, conn: FakeConnection, text: str) -> None:
        try:
            frame = json.loads(text)
            headers = frame.get("headers") or {}
            mid = headers.get("messageId")
        except (ValueError, AttributeError):
            self.state.counters["bad_client_frames"] += 1
            self.state.bus.emit(
                "frame", direction="in", connection_id=conn.connection_id, ok=False, raw=text[:500]
            )
            return
        data: Any = frame.get("data")
        if isinstance(data, str):
            with contextlib.suppress(ValueError, RecursionError):
                data = json.loads(data)
        code = frame.get("code")
        d = (self.deliveries.get(mid) or self.aliases.get(mid)) if isinstance(mid, str) else None
        ping = self._pings.get(mid) if isinstance(mid, str) else None
        now = time.monotonic()
        sent_t = d.last_sent_t if d else (ping.sent_t if ping else None)
        record = AckRecord(
            mid,
            code,
            frame.get("message"),
            data,
            (now - sent_t) if sent_t else None,
            conn.connection_id,
            now,
            topic=d.topic if d else ("ping" if ping else None),
            frame_type=d.frame_type if d else ("SYSTEM" if ping else None),
            attempt=d.attempts if d else None,
            raw=text,
        )
        conn.acks += 1
        self.state.acks.append(record)
        self.state.counters["acks"] += 1
        if ping:
            ping.ack_t = now
            ping.echoed = data.get("opaque") if isinstance(data, dict) else data
            ping.ok = code == 200 and ping.echoed == ping.opaque
        if d:
            self._settle(d, code, data)
        self.state.bus.emit(
            "ack",
            message_id=mid,
            code=code,
            message=record.message,
            latency_s=record.latency_s,
            connection_id=conn.connection_id,
            topic=record.topic,
            attempt=record.attempt,
            known=bool(d or ping),
        )

    def _settle(self, d: Delivery, code: Any, data: Any) -> None:
        ok = code == 200
        if d.frame_type == "EVENT":
            ok = ok and isinstance(data, dict) and data.get("status") == "SUCCESS"
        if not ok or d.acked_ok:
            return
        d.acked_ok = True
        self.state.counters["acked_ok"] += 1
        if d.timer:
            d.timer.cancel()
            self._timers.discard(d.timer)
            d.timer = None
        p = self.state.settings.duplicate_after_ack
        if d.frame_type == "CALLBACK" and p > 0 and self.state.rng.random() < p:
            self.later(0.01, lambda: self._quiet_duplicate(d.message_id))

    async def _quiet_duplicate(self, message_id: str) -> None:
        with contextlib.suppress(KeyError):
            await self.duplicate(message_id)

    def pending(self) -> list[Delivery]:
        """Tracked frames neither acked nor given up."""
        return [d for d in self.deliveries.values() if not d.acked_ok and not d.gave_up]

    def new_connection_id(self) -> str:
        return str(uuid.uuid4())
