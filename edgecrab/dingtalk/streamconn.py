"""One Stream websocket (:class:`StreamConnection`) and the ack path on it; the connection manager around
it, with its reconnects, is :mod:`edgecrab.dingtalk.stream`.

Every frame is acked on the connection that carried it. A robot callback goes to the client's
``on_callbacks_now`` (record a read's callbacks in one commit, return their acks) inside the read of
the socket
(:class:`AckingWebSocket`); when that declines, and for every other frame, the frame takes the ordinary
``recv()`` path: ``on_callback`` for callbacks, pings echoed, ``disconnect`` acked and reported.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.protocol import State

from edgecrab.dingtalk.frames import Frame, FrameError, ack_frame, parse_frame

if TYPE_CHECKING:
    from edgecrab.dingtalk.stream import StreamClient

log = logging.getLogger("edgecrab.dingtalk.stream")

BOT_TOPIC = "/v1.0/im/bot/messages/get"


@dataclass(frozen=True, slots=True)
class AckDecision:
    code: int = 200
    message: str = "OK"


CallbackHandler = Callable[[Frame], Awaitable[AckDecision]]
NowHandler = Callable[[list[Frame]], list[AckDecision]]
"""Records the robot callbacks of one read of the socket at once (one commit for all) and returns their
acks, in order: the fast path."""


class AckingWebSocket(ClientConnection):
    """A websocket that answers robot callbacks in the step of the event loop that read them.

    websockets hands each complete frame of a read to ``process_event`` from ``data_received``; the base
    class queues it for ``recv()``, a task switch (and a turn of the event loop's queue) later. When
    ``on_text`` is set and takes a frame (returns True), that hop is skipped, and once the read's frames
    are all handed over ``on_read_end`` records the taken ones (one commit for all: under load a read
    holds three frames on average) and writes their acks, before the loop runs anything else. Anything
    ``on_text`` declines (and fragmented messages) takes the ordinary ``recv()`` path.
    """

    on_text: Callable[[str], bool] | None = None
    on_read_end: Callable[[], None] | None = None

    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        finally:
            if self.on_read_end is not None:
                self.on_read_end()

    def eof_received(self) -> None:
        try:
            super().eof_received()
        finally:
            if self.on_read_end is not None:
                self.on_read_end()

    def process_event(self, event: object) -> None:
        on_text = self.on_text
        if (
            on_text is not None
            and self.response is not None  # past the handshake
            and isinstance(event, WsFrame)
            and event.opcode is Opcode.TEXT
            and event.fin
        ):
            try:
                text = bytes(event.data).decode("utf-8")
            except UnicodeDecodeError:
                text = None  # recv() closes the connection with 1007, as the protocol says
            if text is not None and on_text(text):
                return
        super().process_event(event)  # type: ignore[arg-type]

    def send_now(self, text: str) -> bool:
        """Send a text frame without awaiting (no flow control: acks are a few hundred bytes)."""
        if self.protocol.state is not State.OPEN:
            return False
        self.protocol.send_text(text.encode("utf-8"))
        self.send_data()
        return True


class StreamConnection:
    """One websocket: reads frames until it closes, idles out, or is told to go away."""

    def __init__(self, client: StreamClient, ws: ClientConnection, cid: str) -> None:
        self.client = client
        self.ws = ws
        self.cid = cid
        self.server_id = ""
        self.opened_at = time.monotonic()
        self.last_frame_at = self.opened_at
        self.frames = 0
        self._taken: list[Frame] = []
        if isinstance(ws, AckingWebSocket) and client.on_callbacks_now is not None:
            ws.on_text = self._take
            ws.on_read_end = self._ack_taken
        self.ended = anyio.Event()
        self.end_reason = ""

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    async def serve(self) -> None:
        idle = self.client.config.idle_timeout_s
        try:
            while True:
                raw: str | bytes | None = None
                # Frames acked on the fast path never reach recv(): the watchdog goes by the last frame.
                with anyio.move_on_after(max(0.0, self.last_frame_at + idle - time.monotonic())):
                    raw = await self.ws.recv()
                if raw is None:
                    if time.monotonic() - self.last_frame_at < idle:
                        continue
                    log.warning(
                        "[dingtalk] conn %s: no frame for %.0f s; forcing a reconnect", self.cid, idle
                    )
                    self._end("idle")
                    return
                self.frames += 1
                self.last_frame_at = time.monotonic()
                await self._handle(raw)
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            self._end(f"closed ({code})")
        except OSError as exc:
            self._end(f"network error: {exc}")
        finally:
            await self.close()

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except websockets.ConnectionClosed:
            log.warning("[dingtalk] conn %s: closed before an ack could be sent", self.cid)

    def _take(self, raw: str) -> bool:
        """The fast path (see :class:`AckingWebSocket`): True for a robot callback, kept for
        :meth:`_ack_taken`; False for every other frame (``_handle`` takes those)."""
        try:
            frame = parse_frame(raw)
        except FrameError:
            return False  # _handle logs it and salvages the messageId
        if frame.type != "CALLBACK" or frame.headers.get("topic") != BOT_TOPIC:
            return False
        self._taken.append(frame)
        return True

    def _ack_taken(self) -> None:
        """Record the callbacks taken from this read, at once, and ack each of them."""
        frames, self._taken = self._taken, []
        if not frames:
            return
        on_callbacks_now = self.client.on_callbacks_now
        assert on_callbacks_now is not None
        try:
            decisions = on_callbacks_now(frames)
        except Exception:
            # Not recorded, so not acked as OK: DingTalk may deliver them again.
            log.exception(
                "[dingtalk] conn %s: could not record %s",
                self.cid,
                ", ".join(str(f.message_id) for f in frames),
            )
            decisions = [AckDecision(500, "internal error")] * len(frames)
        self.frames += len(frames)
        self.last_frame_at = time.monotonic()
        if not self.server_id and frames[0].headers.get("connectionId"):
            self._learn_server_id(frames[0].headers["connectionId"])
        assert isinstance(self.ws, AckingWebSocket)
        for frame, decision in zip(frames, decisions, strict=True):
            ack = ack_frame(frame.message_id, code=decision.code, message=decision.message)
            try:
                sent = self.ws.send_now(ack)
            except Exception as exc:  # the transport failed under us: recv() reports the closed connection
                log.warning("[dingtalk] conn %s: ack for %s not sent: %s", self.cid, frame.message_id, exc)
                return
            if not sent:
                log.warning("[dingtalk] conn %s: closed before an ack could be sent", self.cid)
                return

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
        if frame.type == "SYSTEM":
            if topic == "ping":
                await self._send(ack_frame(mid, data=frame.data_text))
            elif topic == "disconnect":
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
        if frame.type == "CALLBACK" and topic == BOT_TOPIC:
            try:
                decision = await self.client.on_callback(frame)
            except Exception:
                # Not recorded, so not acked as OK: DingTalk may deliver it again.
                log.exception("[dingtalk] conn %s: could not record message %s", self.cid, mid)
                decision = AckDecision(500, "internal error")
            await self._send(ack_frame(mid, code=decision.code, message=decision.message))
            return
        log.info("[dingtalk] conn %s: %s topic %r is not handled; acked 404", self.cid, frame.type, topic)
        await self._send(ack_frame(mid, code=404, message="not implement", data=frame.data_text or "{}"))

    async def close(self) -> None:
        self._end("closed by us")
        with anyio.move_on_after(0.5, shield=True):
            await self.ws.close()
        if self.ws.transport is not None and not self.ws.transport.is_closing():
            self.ws.transport.abort()


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
