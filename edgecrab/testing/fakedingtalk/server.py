"""``FakeDingTalk``: assembles state, stream hub, REST, faults and control API into one aiohttp server.

HTTP and websocket share one loopback port. :mod:`~edgecrab.testing.fakedingtalk.guard` refuses foreign
``Host``/``Origin`` headers and non-JSON bodies before anything else, and scrubs credentials from records.
Every REST call (accepted or not) passes a middleware that applies faults first and records a
:class:`RestRecord` after; ``/_fake/`` control calls and the ``/connect`` websocket
are not recorded there. A method and path the fake does not serve gets DingTalk's "no such API" answer
(:func:`wire.unknown_route`) and is recorded in ``unknown_routes`` too, so a test can assert that a client
(the official SDK in ``tests/e2e/test_sdk_oracle.py``) called nothing the fake does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import uuid
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from edgecrab.testing.fakedingtalk import wire
from edgecrab.testing.fakedingtalk.cards import CardApi
from edgecrab.testing.fakedingtalk.connect import StreamGateway
from edgecrab.testing.fakedingtalk.connection import FakeConnection
from edgecrab.testing.fakedingtalk.control import ControlApi, reply
from edgecrab.testing.fakedingtalk.faults import FaultPlan, ResetConnection
from edgecrab.testing.fakedingtalk.guard import HostPolicy, guard_middleware
from edgecrab.testing.fakedingtalk.models import (
    CALLBACK_TOPIC,
    FakeApp,
    FakeUser,
    RestRecord,
    default_apps,
    default_users,
)
from edgecrab.testing.fakedingtalk.observe import Observation
from edgecrab.testing.fakedingtalk.payloads import PayloadBuilder
from edgecrab.testing.fakedingtalk.rest import TOKEN_HEADER, RestApi
from edgecrab.testing.fakedingtalk.state import FakeState, Settings
from edgecrab.testing.fakedingtalk.stream import StreamHub
from edgecrab.testing.fakedingtalk.webhook import WebhookApi

ConnRef = FakeConnection | str | None


def _setting(name: str) -> Any:
    def get(self: FakeDingTalk) -> Any:
        return getattr(self.settings, name)

    def set_(self: FakeDingTalk, value: Any) -> None:
        setattr(self.settings, name, value)

    return property(get, set_, doc=f"Live setting ``{name}`` (see :class:`Settings`).")


class FakeDingTalk(PayloadBuilder, Observation):
    """A loopback DingTalk: stream registration and websocket, REST, webhooks, faults and a control API."""

    redeliver_after_s = _setting("redeliver_after_s")
    max_redeliveries = _setting("max_redeliveries")
    webhook_ttl_s = _setting("webhook_ttl_s")
    token_ttl_s = _setting("token_ttl_s")
    body_limit = _setting("body_limit")
    ticket_ttl_s = _setting("ticket_ttl_s")
    disconnect_close_after_s = _setting("disconnect_close_after_s")
    duplicate_after_ack = _setting("duplicate_after_ack")
    deliver_unmentioned = _setting("deliver_unmentioned")
    kick_older = _setting("kick_older")

    def __init__(
        self,
        *,
        apps: list[FakeApp] | None = None,
        users: list[FakeUser] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        redeliver_after_s: float = 60.0,
        max_redeliveries: int = 3,
        webhook_ttl_s: float = 5400,
        token_ttl_s: int = 7200,
        body_limit: int = 20000,
        ticket_ttl_s: float = 90,
        disconnect_close_after_s: float = 10,
        deliver_unmentioned: bool = False,
        kick_older: bool = False,
        duplicate_after_ack: float = 0.0,
        media_size: int = 2048,
        seed: int | None = None,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self.settings = Settings(
            redeliver_after_s=redeliver_after_s,
            max_redeliveries=max_redeliveries,
            webhook_ttl_s=webhook_ttl_s,
            token_ttl_s=token_ttl_s,
            body_limit=body_limit,
            ticket_ttl_s=ticket_ttl_s,
            disconnect_close_after_s=disconnect_close_after_s,
            deliver_unmentioned=deliver_unmentioned,
            kick_older=kick_older,
            media_size=media_size,
            duplicate_after_ack=duplicate_after_ack,
        )
        self.state = FakeState(
            apps or default_apps(), default_users() if users is None else users, self.settings, seed
        )
        self.host, self._port = host, port
        self.hosts = HostPolicy(host, allowed_hosts)  # Host/Origin names served besides loopback ones
        self.faults = FaultPlan(self.state)
        self.hub = StreamHub(self.state)
        self.gateway = StreamGateway(self.state, self.hub, self.faults)
        self.rest = RestApi(self.state, self.faults)
        self.cards = CardApi(self.state, self.hub)  # AI cards: fake.cards.card(out_track_id)
        self.webhooks = WebhookApi(self.state, self.faults)
        self.control = ControlApi(self)
        self._runner: web.AppRunner | None = None
        self._extra_routes: list[web.RouteDef] = []
        self.web_app: web.Application | None = None  # the aiohttp application, once started
        self._unrecorded: set[web.AbstractRoute] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> FakeDingTalk:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port))
        except OSError:
            sock.close()  # a busy port must not leak the socket (the sandbox reports it and exits)
            raise
        self._port = sock.getsockname()[1]
        app = web.Application(
            middlewares=[guard_middleware(self.hosts), self._middleware], client_max_size=16 << 20
        )
        app.add_routes(
            self.gateway.routes() + self.rest.routes() + self.cards.routes() + self.webhooks.routes()
            + self.control.routes()
        )
        self._unrecorded = set(app.add_routes(self._extra_routes))
        self.web_app = app
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._loop = asyncio.get_running_loop()
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.state.base_url = f"http://{host}:{self._port}"
        return self

    def add_routes(self, routes: list[web.RouteDef]) -> None:
        """Serve more routes on the same port (the emulator's web chat); call before ``start()``.

        They bypass fault injection and are not recorded in ``requests``.
        """
        if self._runner is not None:
            raise RuntimeError("add_routes() must be called before start()")
        self._extra_routes.extend(routes)

    async def stop(self) -> None:
        if self._runner is None:
            return
        closing = [self.hub.spawn(self.hub.close(c, 1001)) for c in self.hub.live()]
        if closing:
            await asyncio.wait(closing, timeout=0.5)
        await self.hub.shutdown()
        self.state.bus.close()
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeDingTalk:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the OpenAPI base, the open-connection host and the webhook host."""
        return self.state.base_url

    @property
    def ws_endpoint(self) -> str:
        return self.state.base_url.replace("http://", "ws://", 1) + "/connect"

    @property
    def port(self) -> int:
        return self._port

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
        """Push a CALLBACK (tracked, redelivered until acked 200) and return its ``headers.messageId``."""
        if app is None and isinstance(data, dict) and data.get("robotCode"):
            app = self.state.app_by_robot_code(data["robotCode"])
        return await self.hub.push(self.state.app(app), data, message_id=message_id, topic=topic)

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

    # REST middleware ---------------------------------------------------------------------------------------
    def _caller(self, request: web.Request) -> FakeApp | None:
        token = request.headers.get(TOKEN_HEADER) or request.query.get("access_token")
        app = self.state.token_app(token)
        session = self.state.sessions.get(request.query.get("session", ""))
        if app is None and session is not None:
            app = self.state.apps.get(session.app)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        unknown = request.match_info.http_exception is not None  # no route for this method and path
        if request.path.startswith("/_fake"):
            if unknown:
                message = f"no control endpoint {request.method} {request.path}; GET /_fake/ lists them"
                return reply({"error": message}, 404)
            return await handler(request)
        if request.match_info.route in self._unrecorded:
            return await handler(request)
        body: Any = None
        if request.can_read_body and not request.content_type.startswith("multipart/"):
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        caller = self._caller(request)
        try:
            response, fault = await self.faults.before(
                request, caller.client_id if caller else None, caller.corp_id if caller else None
            )
        except ResetConnection:
            self._record(request, body, 0, None, "reset")
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError from None
        if response is None:
            response = wire.unknown_route(request.path) if unknown else await handler(request)
        if not isinstance(response, web.WebSocketResponse):  # a rejected handshake is recorded too
            answer: Any = None
            if isinstance(response, web.Response) and response.body is not None:
                with contextlib.suppress(ValueError, TypeError):
                    answer = json.loads(response.body)  # type: ignore[arg-type]
            self._record(request, body, response.status, answer, fault, unknown=unknown)
        return response

    def _record(
        self,
        request: web.Request,
        body: Any,
        status: int,
        answer: Any,
        fault: str | None,
        *,
        unknown: bool = False,
    ) -> None:
        scrub = self.state.scrub
        record = RestRecord(
            request.method,
            request.path,
            status,
            scrub(body),
            scrub(dict(request.headers)),
            query=scrub(dict(request.query)),
            response=scrub(answer),
            fault=fault,
        )
        self.state.requests.append(record)
        if unknown:
            self.state.unknown_routes.append(record)
        self.state.bus.emit(
            "rest",
            method=record.method,
            path=record.path,
            status=status,
            fault=fault,
            unknown_route=unknown,
            response=record.response,
            body=record.body if len(json.dumps(record.body, default=str)) < 4000 else "<large>",
        )
