"""One accepted stream websocket and one tracked push: the nouns the stream hub works with."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(eq=False)
class FakeConnection:
    """One accepted websocket. ``draining`` means a disconnect was sent (or it was kicked or aborted)."""

    connection_id: str
    app: str
    ws: web.WebSocketResponse
    request: web.BaseRequest
    subscriptions: list[dict[str, Any]]
    ticket: str
    opened_t: float = field(default_factory=time.monotonic)
    draining: bool = False
    closed: bool = False
    close_code: int | None = None
    closed_t: float | None = None
    frames_sent: int = 0
    acks: int = 0
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def subscribed(self, frame_type: str, topic: str) -> bool:
        if frame_type == "SYSTEM":
            return True
        for sub in self.subscriptions:
            if sub.get("type") == frame_type and (frame_type == "EVENT" or sub.get("topic") == topic):
                return True
        return False

    def info(self) -> dict[str, Any]:
        return {
            "connection_id": self.connection_id,
            "app": self.app,
            "subscriptions": self.subscriptions,
            "opened_t": self.opened_t,
            "draining": self.draining,
            "closed": self.closed,
            "close_code": self.close_code,
            "frames_sent": self.frames_sent,
            "acks": self.acks,
        }


@dataclass(eq=False)
class Delivery:
    """A tracked CALLBACK or EVENT push."""

    message_id: str
    app: str
    frame_type: str
    topic: str
    headers: dict[str, str]
    data: str
    frame_text: str | None = None
    attempts: int = 0
    first_sent_t: float | None = None
    last_sent_t: float | None = None
    acked_ok: bool = False
    gave_up: bool = False
    connection_ids: list[str] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None

    @property
    def frame_id(self) -> str:
        """The ``headers.messageId`` of the latest send (``message_id`` unless renewed)."""
        return self.headers.get("messageId", self.message_id)

    def renew(self, frame_id: str) -> str:
        """Give the next send a new ``headers.messageId`` (the frame is rendered again); returns it."""
        self.headers = dict(self.headers, messageId=frame_id)
        self.frame_text = None
        return frame_id


@dataclass
class RawFrame:
    app: str
    payload: str | bytes
