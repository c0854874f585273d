"""``FakeDingTalk``: assembles state, stream hub, REST, faults and control API into one aiohttp server.

What tests do to it (pushes, pings, connection faults, the directory and clock) is
:class:`~edgecrab.testing.fakedingtalk.actions.FakeActions`; what they read (records, stats, waits) is
:class:`~edgecrab.testing.fakedingtalk.observe.Observation`. This module owns the lifecycle, the live
settings and the REST middleware.

HTTP and websocket share one loopback port. :mod:`~edgecrab.testing.fakedingtalk.guard` refuses foreign
``Host``/``Origin`` headers and non-JSON bodies before anything else, and scrubs credentials from records.
Every REST call (accepted or not) passes a middleware that applies faults first (a lost answer after the
handler) and records a :class:`RestRecord` after; ``/_fake/`` control calls and the ``/connect``
websocket are not recorded there. A method and path the fake does not serve gets DingTalk's "no such API"
answer (:func:`wire.unknown_route`) and is recorded in ``unknown_routes`` too, so a test can assert that a
client (the official SDK in ``tests/e2e/test_sdk_oracle.py``) called nothing the fake does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from edgecrab.testing.fakedingtalk import wire
from edgecrab.testing.fakedingtalk.actions import FakeActions
from edgecrab.testing.fakedingtalk.cardcontrol import CardControl
from edgecrab.testing.fakedingtalk.cards import CardApi
from edgecrab.testing.fakedingtalk.connect import StreamGateway
from edgecrab.testing.fakedingtalk.control import ControlApi, reply
from edgecrab.testing.fakedingtalk.faults import FaultPlan, ResetConnection
from edgecrab.testing.fakedingtalk.guard import HostPolicy, guard_middleware
from edgecrab.testing.fakedingtalk.models import (
    FakeApp,
    FakeUser,
    RestRecord,
    default_apps,
    default_users,
)
from edgecrab.testing.fakedingtalk.rest import TOKEN_HEADER, RestApi
from edgecrab.testing.fakedingtalk.state import FakeState, Settings
from edgecrab.testing.fakedingtalk.stream import StreamHub
from edgecrab.testing.fakedingtalk.webhook import WebhookApi


def _setting(name: str) -> Any:
    def get(self: FakeDingTalk) -> Any:
        return getattr(self.settings, name)

    def set_(self: FakeDingTalk, value: Any) -> None:
        setattr(self.settings, name, value)

    return property(get, set_, doc=f"Live setting ``{name}`` (see :class:`Settings`).")


class FakeDingTalk(FakeActions):
    """A loopback DingTalk: stream registration and websocket, REST, webhooks, faults and a control API."""

    redeliver_after_s = _setting("redeliver_after_s")
    max_redeliveries = _setting("max_redeliveries")
    redeliver_new_id = _setting("redeliver_new_id")
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
        redeliver_new_id: bool = False,
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
            redeliver_new_id=redeliver_new_id,
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
            middlewares=[guard_middleware(self.hosts), self._middleware], client_max_size=24 << 20
        )
        app.add_routes(
            self.gateway.routes()
            + self.rest.routes()
            + self.cards.routes()
            + self.webhooks.routes()
            + CardControl(self.cards).routes()
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
    def ws_endpoint(self) -> str:
        return self.state.base_url.replace("http://", "ws://", 1) + "/connect"

    @property
    def port(self) -> int:
        return self._port

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
            lost = None if unknown else self.faults.loses(request.method, request.path)
            if lost is not None:  # done, and the answer never reaches the client
                self._record(request, body, 0, None, "lost")
                await asyncio.sleep(lost.hold_s)
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
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
