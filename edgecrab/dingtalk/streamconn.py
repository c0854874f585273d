"""One Stream websocket (:class:`StreamConnection`): it reads frames and acks each on the connection that
carried it. The connection manager around it (open-connection call, reconnects) is
:mod:`edgecrab.dingtalk.stream`, which hands in only what a connection needs: the websocket, the two
recorders and the idle timeout. This module does not know the client object (no import cycle).

websockets is used through its public API only: :func:`open_websocket` calls
``websockets.asyncio.client.connect``, :meth:`StreamConnection.serve` reads with ``await ws.recv()`` and
acks with ``await ws.send(ack)``. Robot callbacks are acked in the order the frames arrived:

* a robot callback is recorded durably first, then acked (the durable-ack rule: never ack what a crash
  would lose). With ``on_callbacks_now`` (a store that records in microseconds without awaiting, as SQLite
  does) the frame is recorded in one synchronous commit right after ``recv()`` returns, and acked before
  the next ``recv()``. With ``on_callbacks`` (a store that awaits a round trip: Redis) the reader hands
  callbacks to a second task and reads on: the callbacks that arrive while one batch is being recorded
  are recorded together in the next (one round trip, one script run), then acked, in order; reading one
  frame at a time behind its own round trip acked at most one callback per pass of the event loop, which
  under load was far fewer than arrived (BENCHMARKS.md, scenario 8). Otherwise ``on_callback`` is awaited
  for each frame before the next ``recv()``. A recorder that raises gets a 500 ack (DingTalk delivers the
  frame again);
* SYSTEM ``ping`` is echoed; ``disconnect`` is acked and reported (``end_reason == "disconnect"``), and the
  manager opens the next connection before it closes this one;
* the idle watchdog goes by the time of the last frame: no frame for ``idle_timeout_s`` ends the connection.

The ack path used to run inside websockets' read callback, overriding its private ``process_event`` and
``data_received`` to save the hop from the read to the task awaiting ``recv()``; issue 14 took that out (a
websockets release could silently change when acks leave). The price is that hop: one more pass of the event
loop between the read and the ack. With CPU to spare the two paths measured the same (bench scenario 2, ack
p99 5.7 ms against 6.3 ms in the same quiet moment); when the gateway is short of CPU the extra pass shows
(median p99 231 ms against 97 ms over 19 alternated runs on an overloaded, shared 2-core machine).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import anyio
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import CloseCode

from edgecrab.dingtalk.frames import Frame, FrameError, ack_frame, parse_frame
from edgecrab.errors import EdgecrabError

log = logging.getLogger("edgecrab.dingtalk.stream")

BOT_TOPIC = "/v1.0/im/bot/messages/get"

_TOPICS = frozenset({BOT_TOPIC, "ping", "disconnect", "KEEPALIVE", "CONNECTED", "REGISTERED"})
"""Topics counted by name in :attr:`StreamStats.frames`; any other is ``other`` (a label stays bounded
whatever the server sends)."""

MAX_FRAME_BYTES = 2**20
"""Largest frame processed (1 MiB, the official Python SDK's limit: websockets' default). Robot callbacks
are a few KB of JSON; the Java SDK caps frames at 256 KiB. A larger frame, up to :data:`READ_LIMIT_BYTES`,
is read, acked 200 (so DingTalk does not deliver it again), dropped and logged as an ERROR."""
READ_LIMIT_BYTES = 16 * 2**20
"""websockets' ``max_size``: the largest message read at all. With websockets' own limit at 1 MiB, a larger
frame closed the connection with 1009 before anyone could read its id; unacked, DingTalk delivered it again
on the next connection, which it closed again: a reconnect loop that also held back the frames queued
behind it. Above this ceiling that still happens (a frame nobody read cannot be acked): the close is logged
as an ERROR naming the cause, and reconnects back off as after any short-lived connection."""
CLOSE_TIMEOUT_S = 0.5
"""How long a close waits for the server's side of the closing handshake before websockets aborts the TCP
connection."""


@dataclass(slots=True)
class StreamStats:
    """What one robot's Stream side counts, across its connections, for the ops port (``/metrics``,
    ``/readyz``): plain ints and a timestamp, so the ack path pays a dict increment, not a metrics call.
    ``on_ack`` (when set) is told each callback's seconds from ``recv()`` to its ack."""

    frames: dict[str, int] = field(default_factory=dict)
    """Frames received, by topic (``ping``, the robot topic, ...)."""
    reconnects: dict[str, int] = field(default_factory=dict)
    """Connections lost or not made, by reason (:func:`~edgecrab.dingtalk.stream.reason_label`)."""
    last_frame_at: float = 0.0
    """``time.monotonic()`` of the last frame on any connection; 0 before the first."""
    on_ack: Callable[[float], None] | None = None


@dataclass(frozen=True, slots=True)
class AckDecision:
    code: int = 200
    message: str = "OK"


CallbackHandler = Callable[[Frame], Awaitable[AckDecision]]
"""Records one robot callback durably and returns its ack."""
NowHandler = Callable[[list[Frame]], list[AckDecision]]
"""Records robot callbacks at once, without awaiting (one commit for all), and returns their acks in order."""
BatchHandler = Callable[[list[Frame]], Awaitable[list[AckDecision]]]
"""Records robot callbacks that arrived together durably (one round trip for all), and returns their acks
in order."""

MAX_BATCH = 128
"""Most robot callbacks recorded by one :data:`BatchHandler` call (one Redis script run): a backlog read at
once is recorded in a few runs that each hold Redis for a millisecond or so, not in one long one."""


async def open_websocket(url: str) -> ClientConnection:
    """The websocket of one Stream connection (raises ``OSError``, ``TimeoutError`` or
    ``websockets.InvalidHandshake`` when it cannot be opened)."""
    # compression=None: no permessage-deflate. Frames are a few KB of JSON on a connection that idles most
    # of the time; deflating every ack and inflating every frame cost more CPU per message than anything
    # else on the ack path but SQLite (BENCHMARKS.md, fix 6).
    return await connect(
        url,
        open_timeout=10,
        close_timeout=CLOSE_TIMEOUT_S,
        max_size=READ_LIMIT_BYTES,
        compression=None,
    )


class StreamConnection:
    """One websocket: reads frames until it closes, idles out, or is told to go away."""

    def __init__(
        self,
        ws: ClientConnection,
        cid: str,
        *,
        on_callback: CallbackHandler,
        on_callbacks_now: NowHandler | None = None,
        on_callbacks: BatchHandler | None = None,
        topics: Mapping[str, CallbackHandler] | None = None,
        idle_timeout_s: float,
        stats: StreamStats | None = None,
    ) -> None:
        self.ws = ws
        self.stats = stats if stats is not None else StreamStats()
        self.cid = cid
        self.on_callback = on_callback
        self.on_callbacks_now = on_callbacks_now
        self.on_callbacks = None if on_callbacks_now is not None else on_callbacks
        self._batch: list[tuple[Frame, float]] = []
        """Robot callbacks read and not yet recorded (with ``on_callbacks``), with when each was read."""
        self._more = anyio.Event()
        self._drained = anyio.Event()
        """Set while no callback is waiting for its record or ack (a ``disconnect`` waits for it)."""
        self._drained.set()
        self._reading = True
        self.topics = topics or {}
        """Handlers of the other CALLBACK topics subscribed to (card buttons)."""
        self.idle_timeout_s = idle_timeout_s
        self.server_id = ""
        self.opened_at = time.monotonic()
        self.last_frame_at = self.opened_at
        self.frames = 0
        self.ended = anyio.Event()
        self.end_reason = ""

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    async def serve(self) -> None:
        watch = anyio.CancelScope()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_idle, watch)
                if self.on_callbacks is not None:
                    tg.start_soon(self._ack_batches)
                try:
                    await self._read()
                finally:
                    watch.cancel()
                    self._reading = False  # the callbacks read so far are still recorded and acked
                    self._more.set()
        finally:
            await self.close()

    async def _watch_idle(self, scope: anyio.CancelScope) -> None:
        """No frame for ``idle_timeout_s``: a reconnect is forced (the websocket closed, the read ends). A
        task of its own, not a time limit on each ``recv()``: a cancel scope with a deadline cost about
        44,000 instructions a frame (BENCHMARKS.md, 1a)."""
        idle = self.idle_timeout_s
        with scope:
            # A deadline that every frame moves: the reader only writes a timestamp, nothing to wake.
            while time.monotonic() - self.last_frame_at < idle:  # noqa: ASYNC110
                await anyio.sleep(self.last_frame_at + idle - time.monotonic())
            log.warning("[dingtalk] conn %s: no frame for %.0f s; forcing a reconnect", self.cid, idle)
            self._end("idle")
            await self.close()

    async def _read(self) -> None:
        """Read and handle frames until the connection ends (the reason in :attr:`end_reason`)."""
        try:
            while True:
                raw = await self.ws.recv()
                self.frames += 1
                self.last_frame_at = self.stats.last_frame_at = time.monotonic()
                if len(raw) > MAX_FRAME_BYTES:
                    await self._drop_oversize(raw)
                    continue
                await self._handle(raw)
        except websockets.ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                log.error(
                    "[dingtalk] conn %s: a frame over %d MiB arrived; it cannot be read, so it cannot be "
                    "acked, and DingTalk may deliver it again after the reconnect (closed with 1009)",
                    self.cid,
                    READ_LIMIT_BYTES // 2**20,
                )
                self._end("frame too large (1009)")
                return
            code = exc.rcvd.code if exc.rcvd else exc.sent.code if exc.sent else 1006
            self._end(f"closed ({code})")
        except OSError as exc:
            self._end(f"network error: {exc}")

    async def _send(self, text: str) -> bool:
        try:
            await self.ws.send(text)
        except websockets.ConnectionClosed:
            log.warning("[dingtalk] conn %s: closed before an ack could be sent", self.cid)
            return False
        return True

    async def _ack_batches(self) -> None:
        """With ``on_callbacks`` (a store that awaits a round trip, as Redis does): the robot callbacks
        read while the last batch was being recorded are recorded together, in one call, then acked in
        the order they arrived. The reader never waits for a record, so one round trip per callback, each
        waiting its turn behind the event loop's other work, no longer limits how many callbacks a second
        a connection can ack (BENCHMARKS.md, scenario 8)."""
        while self._reading or self._batch:
            if not self._batch:
                await self._more.wait()
                self._more = anyio.Event()
                continue
            batch, self._batch = self._batch[:MAX_BATCH], self._batch[MAX_BATCH:]
            decisions = await self._record_batch([frame for frame, _ in batch])
            for (frame, read_at), decision in zip(batch, decisions, strict=True):
                ack = ack_frame(frame.message_id, code=decision.code, message=decision.message)
                if not await self._send(ack):
                    self._drained.set()
                    return  # closed: DingTalk delivers the unacked frames again, the inbox knows them
                if self.stats.on_ack is not None:
                    self.stats.on_ack(time.monotonic() - read_at)
            if not self._batch:
                self._drained.set()

    async def _record_batch(self, frames: list[Frame]) -> list[AckDecision]:
        """:meth:`_record` for a batch: the acks in order (every one 500 when the record failed)."""
        assert self.on_callbacks is not None
        try:
            return await self.on_callbacks(frames)
        except EdgecrabError as exc:  # e.g. the store is unreachable: a known condition, one line
            log.error("[dingtalk] conn %s: could not record %d message(s): %s", self.cid, len(frames), exc)
        except Exception:
            log.exception("[dingtalk] conn %s: could not record %d message(s)", self.cid, len(frames))
        return [AckDecision(500, "internal error")] * len(frames)

    async def _record(self, frame: Frame) -> AckDecision:
        """Record a robot callback durably; its ack (500 when it could not be recorded: DingTalk may
        deliver it again)."""
        try:
            if self.on_callbacks_now is not None:
                return self.on_callbacks_now([frame])[0]
            return await self.on_callback(frame)
        except EdgecrabError as exc:  # e.g. the store is unreachable: a known condition, one line
            log.error("[dingtalk] conn %s: could not record message %s: %s", self.cid, frame.message_id, exc)
            return AckDecision(500, "internal error")
        except Exception:
            log.exception("[dingtalk] conn %s: could not record message %s", self.cid, frame.message_id)
            return AckDecision(500, "internal error")

    async def _answer(self, handler: CallbackHandler, frame: Frame) -> AckDecision:
        """Another topic's callback (a card button): its handler decides the ack, quickly."""
        try:
            return await handler(frame)
        except Exception:
            log.exception("[dingtalk] conn %s: %s callback failed", self.cid, frame.headers.get("topic"))
            return AckDecision(500, "internal error")

    async def _drop_oversize(self, raw: str | bytes) -> None:
        """Ack a frame over :data:`MAX_FRAME_BYTES` without processing it: acked, it is not delivered again
        (it never would fit); dropped, it costs nothing more."""
        mid = _salvage_message_id(raw)
        log.error(
            "[dingtalk] conn %s: frame %s of %d bytes is over the 1 MiB limit: acknowledged and dropped, "
            "not processed",
            self.cid,
            mid or "(no messageId)",
            len(raw),
        )
        if mid:
            await self._send(ack_frame(mid, message="dropped: frame over 1 MiB"))

    def _learn_server_id(self, server_id: str) -> None:
        self.server_id = server_id
        log.info("[dingtalk] conn %s is server connection %s", self.cid, server_id)

    async def _handle(self, raw: str | bytes) -> None:
        try:
            frame = parse_frame(raw)
        except FrameError as exc:
            log.warning("[dingtalk] conn %s: rejected frame: %s", self.cid, exc.reason)
            salvaged = _salvage_message_id(raw)
            if salvaged:
                await self._send(ack_frame(salvaged, code=400, message=f"bad frame: {exc.reason}", data="{}"))
            return
        headers = frame.headers
        topic = headers.get("topic", "")
        mid = frame.message_id
        if not self.server_id and headers.get("connectionId"):
            self._learn_server_id(headers["connectionId"])
        frames = self.stats.frames
        label = topic if topic in _TOPICS else "other"
        frames[label] = frames.get(label, 0) + 1
        if frame.type == "CALLBACK" and topic == BOT_TOPIC:
            if self.on_callbacks is not None:
                self._batch.append((frame, self.last_frame_at))
                self._more.set()
                if self._drained.is_set():
                    self._drained = anyio.Event()
                return
            decision = await self._record(frame)
            await self._send(ack_frame(mid, code=decision.code, message=decision.message))
            if self.stats.on_ack is not None:
                self.stats.on_ack(time.monotonic() - self.last_frame_at)
            return
        if frame.type == "CALLBACK" and topic in self.topics:
            decision = await self._answer(self.topics[topic], frame)
            await self._send(ack_frame(mid, code=decision.code, message=decision.message))
            return
        if frame.type == "SYSTEM":
            if topic == "ping":
                await self._send(ack_frame(mid, data=frame.data_text))
            elif topic == "disconnect":
                await self._drained.wait()  # the callbacks before it acked first, as DingTalk sent them
                log.info(
                    "[dingtalk] conn %s: server asked to disconnect (%s); opening a new connection first",
                    self.cid,
                    _reason(frame.data_text),
                )
                await self._send(ack_frame(mid, data=frame.data_text))
                self._end("disconnect")
            else:
                log.debug("[dingtalk] conn %s: SYSTEM %s", self.cid, topic)
            return
        log.info("[dingtalk] conn %s: %s topic %r is not handled; acked 404", self.cid, frame.type, topic)
        await self._send(ack_frame(mid, code=404, message="not implement", data=frame.data_text or "{}"))

    async def close(self) -> None:
        """Close the websocket: websockets waits up to ``CLOSE_TIMEOUT_S`` for the server, then aborts."""
        self._end("closed by us")
        # The outer bound only guards against a close that waits on a full write buffer (a peer that
        # stopped reading); websockets' keepalive ping then ends the connection on its own.
        with anyio.move_on_after(CLOSE_TIMEOUT_S + 1.0, shield=True):
            await self.ws.close()


def _salvage_message_id(raw: str | bytes) -> str:
    try:
        obj = json.loads(raw)
        mid = obj.get("headers", {}).get("messageId")
        return mid if isinstance(mid, str) else ""
    except Exception:
        return ""


def _reason(data_text: str) -> str:
    try:
        return str(json.loads(data_text).get("reason", ""))
    except Exception:
        return ""
