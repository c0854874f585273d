"""The ack path's DingTalk half: a robot callback -> checked -> claimed in the store's inbox -> its ack.

:class:`Intake` is what the Stream connection calls for every robot callback. It decodes the payload once,
refuses one without a ``msgId`` (400: DingTalk would only redeliver it), claims the ``msgId`` in the inbox
(durable before the ack leaves; a claim that exists already is a redelivery: acked, not processed again)
and hands a new message to the ingest queue, which the gateway drains. Nothing here waits for the agent,
the hooks or the network: the ack leaves within milliseconds.

The queue is bounded (``max_buffer_size``); what does not fit waits in an overflow list, since it is
already durable and the ack must not wait. Messages left unfinished by the last run join the same list
(:meth:`Intake.requeue`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import anyio

from edgecrab.activity import DUPLICATE, message_line
from edgecrab.dingtalk.convert import Frame, FrameError, decode_data
from edgecrab.dingtalk.streamconn import AckDecision
from edgecrab.store.base import InboxEntry, Store

log = logging.getLogger("edgecrab.dingtalk.intake")

Item = tuple[str, str, str, "dict[str, Any] | None"]
"""(msg_id, stream message id, payload JSON, the payload decoded if the ack path already did)."""


class Intake:
    """One robot's callbacks, from frame to ingest queue. ``received``/``duplicates`` count them."""

    def __init__(self, store: Store, robot: str, *, queue_size: int = 4096) -> None:
        self.store = store
        self.robot = robot
        self._send, self._receive = anyio.create_memory_object_stream[Item](max_buffer_size=queue_size)
        self._overflow: deque[Item] = deque()
        self.received = 0
        self.duplicates = 0

    async def on_callback(self, frame: Frame) -> AckDecision:
        """Record the callback durably, then let the stream ack it."""
        checked = self._check(frame)
        if isinstance(checked, AckDecision):
            return checked
        msg_id, data = checked
        stream_mid = frame.headers.get("messageId", "")
        is_new = await self.store.inbox_claim(self.robot, msg_id, stream_mid, frame.data_text, time.time())
        return self._claimed(frame, msg_id, data, is_new)

    async def on_callbacks(self, frames: list[Frame]) -> list[AckDecision]:
        """:meth:`on_callback` for callbacks that arrived together, claimed in one store call (Redis: one
        script run): their acks, in order."""
        checked = [self._check(frame) for frame in frames]
        claims = self._claims(frames, checked)
        news = iter(await self.store.inbox_claim_many(self.robot, claims, time.time()) if claims else ())
        return [
            c if isinstance(c, AckDecision) else self._claimed(f, *c, next(news))
            for f, c in zip(frames, checked, strict=True)
        ]

    def on_callbacks_now(self, frames: list[Frame]) -> list[AckDecision]:
        """:meth:`on_callback` for callbacks at once, in one step and one commit, for a store that records
        at once (:attr:`Store.records_at_once`): the Stream connection calls it with the frame ``recv()``
        just returned, then sends its ack."""
        checked = [self._check(frame) for frame in frames]
        claims = self._claims(frames, checked)
        news = iter(self.store.inbox_claim_now(self.robot, claims, time.time()) if claims else ())
        return [
            c if isinstance(c, AckDecision) else self._claimed(f, *c, next(news))
            for f, c in zip(frames, checked, strict=True)
        ]

    def requeue(self, entries: list[InboxEntry]) -> None:
        """Messages recorded by an earlier run (or by a replica that died), to process again (their
        payload is decoded later). Into the queue while it has room, so a waiting ingest task wakes."""
        for e in entries:
            item = (e.msg_id, e.stream_message_id, e.payload, None)
            try:
                if self._overflow:
                    raise anyio.WouldBlock  # behind what already waits
                self._send.send_nowait(item)
            except anyio.WouldBlock:
                self._overflow.append(item)

    async def get(self) -> Item:
        """The next message to process, in arrival order (the overflow once the queue is empty)."""
        if self._overflow and self._receive.statistics().current_buffer_used == 0:
            return self._overflow.popleft()
        return await self._receive.receive()

    def close(self) -> None:
        self._send.close()
        self._receive.close()

    @staticmethod
    def _claims(
        frames: list[Frame], checked: list[tuple[str, dict[str, Any]] | AckDecision]
    ) -> list[tuple[str, str, str]]:
        """``(msg_id, stream message id, payload)`` of the frames that passed :meth:`_check`."""
        return [
            (c[0], f.headers.get("messageId", ""), f.data_text)
            for f, c in zip(frames, checked, strict=True)
            if not isinstance(c, AckDecision)
        ]

    def _check(self, frame: Frame) -> tuple[str, dict[str, Any]] | AckDecision:
        """The callback's msgId and decoded payload, or the ack refusing it."""
        try:
            data = decode_data(frame)
        except FrameError as exc:
            log.warning("[dingtalk] rejected callback %s: %s", frame.headers.get("messageId"), exc.reason)
            return AckDecision(400, f"bad request: {exc.reason}")
        msg_id = data.get("msgId")
        if not isinstance(msg_id, str) or not msg_id:
            log.warning("[dingtalk] rejected callback %s: no msgId", frame.headers.get("messageId"))
            return AckDecision(400, "bad request: no msgId")
        return msg_id, data

    def _claimed(self, frame: Frame, msg_id: str, data: dict[str, Any], is_new: bool) -> AckDecision:
        stream_mid = frame.headers.get("messageId", "")
        if not is_new:
            self.duplicates += 1
            message_line(
                msg_id,
                group=str(data.get("conversationType")) == "2",
                sender=str(data.get("senderStaffId") or data.get("senderId") or ""),
                conversation=str(data.get("conversationId") or ""),
                outcome=DUPLICATE,
                detail=f"duplicate delivery, frame {stream_mid}: acked, not processed again",
            )
            return AckDecision()
        self.received += 1
        try:
            self._send.send_nowait((msg_id, stream_mid, frame.data_text, data))
        except anyio.WouldBlock:
            self._overflow.append((msg_id, stream_mid, frame.data_text, data))  # durable; drained later
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # stopping; already durable, picked up on the next start
        return AckDecision()
