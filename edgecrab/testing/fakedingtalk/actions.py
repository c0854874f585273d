"""What a test (or the control API) does to the fake: its directory and clock, pushes, pings and
connection faults.

:class:`FakeActions` is mixed into :class:`~edgecrab.testing.fakedingtalk.server.FakeDingTalk` next to the
payload builders and :class:`~edgecrab.testing.fakedingtalk.observe.Observation` (the read side), and is
all :class:`~edgecrab.testing.fakedingtalk.control.ControlApi` needs of the server, so the control API
does not depend on how the server is assembled.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import uuid
from typing import Any

import aiohttp

from edgecrab.testing.fakedingtalk.connection import FakeConnection
from edgecrab.testing.fakedingtalk.faults import FaultPlan
from edgecrab.testing.fakedingtalk.models import CALLBACK_TOPIC, FakeApp, FakeUser
from edgecrab.testing.fakedingtalk.observe import Observation
from edgecrab.testing.fakedingtalk.payloads import PayloadBuilder
from edgecrab.testing.fakedingtalk.state import Settings

ConnRef = FakeConnection | str | None


class FakeActions(PayloadBuilder, Observation):
    """The write side of :class:`FakeDingTalk` (``state`` and ``hub`` come from :class:`Observation`)."""

    settings: Settings
    faults: FaultPlan
    _loop: asyncio.AbstractEventLoop | None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the OpenAPI base, the open-connection host and the webhook host."""
        return self.state.base_url

    @property
    def apps(self) -> list[FakeApp]:
        return list(self.state.apps.values())

    @property
    def users(self) -> list[FakeUser]:
        return self.state.users

    @property
    def zombie(self) -> bool:
        """When true the websocket stays up (pings answered) but nothing is pushed; pushes queue."""
        return self.settings.zombie

    @zombie.setter
    def zombie(self, value: bool) -> None:
        self.settings.zombie = bool(value)
        if not value and self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: self.hub.spawn(self.hub.flush()))

    # directory --------------------------------------------------------------------------------------------
    def user(self, ref: FakeUser | str) -> FakeUser:
        return self.state.user(ref)

    def app(self, ref: FakeApp | str | None = None) -> FakeApp:
        return self.state.app(ref)

    def add_user(self, user: FakeUser) -> FakeUser:
        self.state.users.append(user)
        return user

    def add_group(self, conversation_id: str, title: str = "测试群") -> str:
        """Make a group known (``groupMessages/send`` accepts only groups the robot is in)."""
        self.state.group_for(conversation_id, title)
        return conversation_id

    def dm_conversation_id(self, user: FakeUser | str, app: FakeApp | str | None = None) -> str:
        return self.state.dm_conversation_id(self.state.app(app), self.state.user(user))

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's clock (token, ticket and webhook expiry) forward without sleeping."""
        self.state.clock_offset += seconds

    def expire_tokens_now(self, app: str | None = None) -> int:
        return self.faults.expire_tokens_now(app)

    def expire_webhooks_now(self, app: str | None = None, conversation_id: str | None = None) -> int:
        return self.faults.expire_webhooks_now(app, conversation_id)

    def reset_records(self) -> None:
        """Forget acks, outbound messages, requests and counters (connections and registries stay)."""
        for records in (
            self.state.acks,
            self.state.outbound,
            self.state.requests,
            self.state.unknown_routes,
            self.state.open_requests,
            self.state.pings,
        ):
            records.clear()
        live = self.state.counters["connections_opened"]
        self.state.counters.clear()
        self.state.counters["connections_opened"] = live

    # stream actions ---------------------------------------------------------------------------------------
    async def push(
        self,
        data: dict[str, Any] | str,
        *,
        app: FakeApp | str | None = None,
        message_id: str | None = None,
        topic: str = CALLBACK_TOPIC,
    ) -> str:
        """Push a CALLBACK (tracked, redelivered until acked 200) and return its ``headers.messageId``.
        With ``settings.callback_url`` set, a robot message is POSTed there instead
        (:meth:`post_callback`)."""
        if app is None and isinstance(data, dict) and data.get("robotCode"):
            app = self.state.app_by_robot_code(data["robotCode"])
        if self.settings.callback_url and topic == CALLBACK_TOPIC:
            await self.post_callback(data, app=app)
            return message_id or ""
        return await self.hub.push(self.state.app(app), data, message_id=message_id, topic=topic)

    async def post_callback(
        self, data: dict[str, Any] | str, *, app: FakeApp | str | None = None, url: str = ""
    ) -> int:
        """HTTP-callback mode: POST a robot message to ``url`` (default ``settings.callback_url``) as
        DingTalk does, with the ``timestamp`` (ms, the fake's clock) and ``sign`` headers (base64 of
        HMAC-SHA256 keyed by the app secret over ``timestamp + "\n" + secret``); return the HTTP status.
        Counted in ``stats()`` as ``http_callbacks`` and ``http_callbacks_<status>``; not retried."""
        the_app = self.state.app(app)
        timestamp = str(self.state.wall_ms())
        digest = hmac.new(
            the_app.client_secret.encode(), f"{timestamp}\n{the_app.client_secret}".encode(), hashlib.sha256
        ).digest()
        body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        headers = {
            "timestamp": timestamp,
            "sign": base64.b64encode(digest).decode(),
            "Content-Type": "application/json",
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(url or self.settings.callback_url, data=body.encode(), headers=headers) as response,
        ):
            status = response.status
        self.state.counters["http_callbacks"] += 1
        self.state.counters[f"http_callbacks_{status}"] += 1
        return status

    async def push_event(
        self,
        event_type: str,
        data: dict[str, Any] | None = None,
        *,
        app: FakeApp | str | None = None,
        corp_id: str | None = None,
        message_id: str | None = None,
        topic: str = "dingTalk",
    ) -> str:
        """Push an EVENT (re-pushed on LATER or no ack) to connections subscribed to EVENT ``*``."""
        the_app = self.state.app(app)
        born = str(self.state.wall_ms())
        headers = {
            "eventType": event_type,
            "eventId": uuid.uuid4().hex,
            "eventCorpId": corp_id or the_app.corp_id,
            "eventBornTime": born,
            "eventUnifiedAppId": the_app.app_id,
        }
        body = data if data is not None else {"timeStamp": born}
        return await self.hub.push(
            the_app, body, message_id=message_id, topic=topic, frame_type="EVENT", extra_headers=headers
        )

    async def push_raw(
        self, frame: str | bytes, *, app: FakeApp | str | None = None, conn: ConnRef = None
    ) -> None:
        """Send arbitrary text (or bytes, as a binary frame) untracked; for fuzzing the client."""
        target = self._resolve(conn)[0] if conn is not None else None
        await self.hub.send_raw(frame, self.state.app(app).client_id, target)

    async def inject_duplicate(self, message_id: str) -> bool:
        """Resend an already delivered frame unchanged, acked or not."""
        return await self.hub.duplicate(message_id)

    async def ping(self, conn: ConnRef = None, opaque: str | None = None) -> str:
        """Send a SYSTEM ping; its :class:`PingRecord` in ``pings`` tells whether the echo was right."""
        targets = self._resolve(conn)
        if not targets:
            raise RuntimeError("no live connection to ping")
        target = self.state.rng.choice(targets) if conn is None else targets[0]
        opaque = opaque or f"{secrets.token_hex(4)}-{secrets.token_hex(2)}"
        await self.hub.ping(target, opaque)
        return opaque

    async def disconnect(
        self, conn: ConnRef = None, reason: str = "connection is expired", *, app: FakeApp | str | None = None
    ) -> list[str]:
        """SYSTEM disconnect (no messageId) to one connection, or every live one; returns their ids."""
        targets = [c for c in self._resolve(conn, app) if not c.draining or conn is not None]
        for target in targets:
            await self.hub.disconnect(target, reason)
        return [c.connection_id for c in targets]

    async def abort(self, conn: ConnRef = None, *, app: FakeApp | str | None = None) -> list[str]:
        """Drop the TCP connection without a close frame (the client sees 1006)."""
        targets = self._resolve(conn, app)
        for target in targets:
            await self.hub.abort(target)
        return [c.connection_id for c in targets]

    async def close(
        self, conn: ConnRef = None, code: int = 1000, *, app: FakeApp | str | None = None
    ) -> list[str]:
        """Close with a close frame and ``code``."""
        targets = self._resolve(conn, app)
        await asyncio.gather(*(self.hub.close(c, code) for c in targets))
        return [c.connection_id for c in targets]

    def _resolve(self, conn: ConnRef, app: FakeApp | str | None = None) -> list[FakeConnection]:
        if isinstance(conn, FakeConnection):
            return [conn]
        live = self.hub.live(self.state.app(app).client_id if app is not None else None)
        if conn is None:
            return live
        found = [c for c in live if c.connection_id == conn]
        if not found:
            raise KeyError(f"no live connection {conn!r}")
        return found
