"""The HTTP control API under ``/_fake/``: drive and observe the fake from another process.

Gateways under test in subprocesses, benchmarks and the emulator's web chat use it. Endpoints (JSON in, JSON
out; ``since=N`` on list endpoints skips the first N records):

====================  ======================================================================================
GET  /_fake/           this index
GET  /_fake/stats      connection, ticket, redelivery, ack and outbound counts
GET  /_fake/users      users, apps (no secrets), groups, default group id
POST /_fake/users      add a user ``{"staff_id","nick","corp_id"?,"is_admin"?}``
POST /_fake/build      build a robot message without pushing it -> ``{"data"}``
POST /_fake/push       ``{"kind","user","text","conversation_id","title","at_bot","at_users","app",
                       "options","overrides","message_id","topic"}`` or ``{"data": {...}}``
                       -> ``{"message_id","msg_id","data"}``; with the setting ``callback_url``
                       (HTTP-callback mode) it is signed and POSTed there
                       -> ``{"callback_status","msg_id","data"}``
POST /_fake/push_raw   ``{"frame": str}`` or ``{"frame_b64": str}`` (binary) -> ``{}``
POST /_fake/push_event ``{"event_type","data","app"}`` -> ``{"message_id"}``
POST /_fake/ping       ``{"connection_id"?, "opaque"?}`` -> ``{"opaque"}``
POST /_fake/disconnect ``{"connection_id"?, "reason"?, "app"?}`` -> ``{"connections": [...]}``
POST /_fake/abort      ``{"connection_id"?, "app"?}``;  POST /_fake/close  ``{"connection_id"?, "code"?}``
POST /_fake/duplicate  ``{"message_id"}``
GET|POST /_fake/settings   live settings (``zombie``, ``redeliver_after_s``, ``webhook_ttl_s``, ...)
GET|POST /_fake/faults     fault spec (see ``FaultPlan.configure``)
POST /_fake/clock      ``{"advance_s": n}``;  POST /_fake/reset  clear records
GET  /_fake/outbound   ``?conversation_id=&since=``;  GET /_fake/acks  ``?since=``;  GET /_fake/requests
GET  /_fake/unknown_routes  REST calls to a method and path the fake does not serve (``?since=``)
GET  /_fake/connections, /_fake/open_requests, /_fake/pings
GET  /_fake/media/<id>  an uploaded picture or file (for the web chat), by its mediaId
GET  /_fake/events     websocket (or SSE without an upgrade) of event dicts; ``?replay=1`` sends recent ones
====================  ======================================================================================
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, fields
from typing import Any

from aiohttp import web

from edgecrab.testing.fakedingtalk.actions import FakeActions
from edgecrab.testing.fakedingtalk.bus import Subscription
from edgecrab.testing.fakedingtalk.models import CALLBACK_TOPIC, FakeUser
from edgecrab.testing.fakedingtalk.payloads import DEFAULT_GROUP_ID
from edgecrab.testing.fakedingtalk.state import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reply(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False, default=str), status=status, content_type="application/json"
    )


def control(handler: Handler) -> Handler:
    """A control-API handler whose bad input (a missing key, a wrong value) answers 400 with the reason."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            return reply({"error": f"{type(exc).__name__}: {exc}"}, 400)

    return run


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    body = json.loads(raw) if raw else {}
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def _since(request: web.Request, items: list[Any]) -> list[dict[str, Any]]:
    start = int(request.query.get("since", "0"))
    return [asdict(item) for item in items[start:]]


class ControlApi:
    def __init__(self, fake: FakeActions) -> None:
        self.fake = fake

    def routes(self) -> list[web.RouteDef]:
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/_fake/", self.index),
            ("GET", "/_fake/stats", self.stats),
            ("GET", "/_fake/users", self.users),
            ("POST", "/_fake/users", self.add_user),
            ("POST", "/_fake/build", self.build),
            ("POST", "/_fake/push", self.push),
            ("POST", "/_fake/push_raw", self.push_raw),
            ("POST", "/_fake/push_event", self.push_event),
            ("POST", "/_fake/ping", self.ping),
            ("POST", "/_fake/disconnect", self.disconnect),
            ("POST", "/_fake/abort", self.abort),
            ("POST", "/_fake/close", self.close),
            ("POST", "/_fake/duplicate", self.duplicate),
            ("GET", "/_fake/settings", self.settings),
            ("POST", "/_fake/settings", self.settings),
            ("GET", "/_fake/faults", self.faults),
            ("POST", "/_fake/faults", self.faults),
            ("POST", "/_fake/clock", self.clock),
            ("POST", "/_fake/reset", self.reset),
            ("GET", "/_fake/outbound", self.outbound),
            ("GET", "/_fake/acks", self.acks),
            ("GET", "/_fake/requests", self.requests),
            ("GET", "/_fake/unknown_routes", self.unknown_routes),
            ("GET", "/_fake/connections", self.connections),
            ("GET", "/_fake/open_requests", self.open_requests),
            ("GET", "/_fake/pings", self.pings),
            ("GET", "/_fake/events", self.events),
        ]
        return [web.route(method, path, control(handler)) for method, path, handler in table]

    async def index(self, request: web.Request) -> web.Response:
        return reply(
            {
                "endpoints": sorted(
                    {
                        r.resource.canonical
                        for r in request.app.router.routes()
                        if r.resource is not None and r.resource.canonical.startswith("/_fake")
                    }
                ),
                "base_url": self.fake.base_url,
            }
        )

    async def stats(self, request: web.Request) -> web.Response:
        return reply(self.fake.stats())

    async def users(self, request: web.Request) -> web.Response:
        state = self.fake.state
        return reply(
            {
                "users": [u.public() for u in state.users],
                "apps": [a.public() for a in state.apps.values()],
                "groups": [
                    {"conversation_id": g.conversation_id, "title": g.title} for g in state.groups.values()
                ],
                "default_group": DEFAULT_GROUP_ID,
            }
        )

    async def add_user(self, request: web.Request) -> web.Response:
        body = await _body(request)
        user = self.fake.add_user(
            FakeUser(
                body.get("staff_id", ""),
                body["nick"],
                **{k: body[k] for k in ("corp_id", "is_admin", "dingtalk_id") if k in body},
            )
        )
        return reply(user.public())

    def _build(self, body: dict[str, Any]) -> dict[str, Any]:
        if isinstance(body.get("data"), dict):
            return body["data"]
        options: dict[str, Any] = dict(body.get("options") or {})
        for key in ("conversation_id", "title", "at_bot", "at_users", "app"):
            if key in body:
                options[key] = body[key]
        for key in ("content_b64",):
            if key in options:
                options["content"] = base64.b64decode(options.pop(key))
        if "items" in options:
            options["items"] = [
                base64.b64decode(i["picture_b64"]) if isinstance(i, dict) else i for i in options["items"]
            ]
        user = body.get("user") or next(u for u in self.fake.users if u.staff_id).staff_id
        data = self.fake.message(body.get("kind", "dm"), user, body.get("text", ""), **options)
        data.update(body.get("overrides") or {})
        return data

    async def build(self, request: web.Request) -> web.Response:
        return reply({"data": self._build(await _body(request))})

    async def push(self, request: web.Request) -> web.Response:
        body = await _body(request)
        data = self._build(body)
        if self.fake.settings.callback_url and body.get("topic", CALLBACK_TOPIC) == CALLBACK_TOPIC:
            status = await self.fake.post_callback(data, app=body.get("app"))
            return reply({"callback_status": status, "msg_id": data.get("msgId"), "data": data})
        mid = await self.fake.push(
            data,
            app=body.get("app"),
            message_id=body.get("message_id"),
            topic=body.get("topic", CALLBACK_TOPIC),
        )
        return reply({"message_id": mid, "msg_id": data.get("msgId"), "data": data})

    async def push_raw(self, request: web.Request) -> web.Response:
        body = await _body(request)
        frame: str | bytes = base64.b64decode(body["frame_b64"]) if "frame_b64" in body else body["frame"]
        await self.fake.push_raw(frame, app=body.get("app"), conn=body.get("connection_id"))
        return reply({})

    async def push_event(self, request: web.Request) -> web.Response:
        body = await _body(request)
        mid = await self.fake.push_event(
            body["event_type"], body.get("data"), app=body.get("app"), message_id=body.get("message_id")
        )
        return reply({"message_id": mid})

    async def ping(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return reply({"opaque": await self.fake.ping(body.get("connection_id"), body.get("opaque"))})

    async def disconnect(self, request: web.Request) -> web.Response:
        body = await _body(request)
        ids = await self.fake.disconnect(
            body.get("connection_id"), body.get("reason", "connection is expired"), app=body.get("app")
        )
        return reply({"connections": ids})

    async def abort(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return reply({"connections": await self.fake.abort(body.get("connection_id"), app=body.get("app"))})

    async def close(self, request: web.Request) -> web.Response:
        body = await _body(request)
        ids = await self.fake.close(
            body.get("connection_id"), int(body.get("code", 1000)), app=body.get("app")
        )
        return reply({"connections": ids})

    async def duplicate(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return reply({"sent": await self.fake.inject_duplicate(body["message_id"])})

    async def settings(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            body = await _body(request)
            names = {f.name for f in fields(Settings)}
            for key, value in body.items():
                if key not in names:
                    raise KeyError(f"unknown setting {key!r}; known: {sorted(names)}")
                if key == "zombie":
                    self.fake.zombie = bool(value)
                else:
                    setattr(self.fake.settings, key, value)
        return reply(asdict(self.fake.settings))

    async def faults(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            self.fake.faults.configure(await _body(request))
        return reply(self.fake.faults.describe())

    async def clock(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self.fake.advance_clock(float(body.get("advance_s", 0)))
        return reply({"clock_offset": self.fake.state.clock_offset})

    async def reset(self, request: web.Request) -> web.Response:
        self.fake.reset_records()
        return reply({})

    async def outbound(self, request: web.Request) -> web.Response:
        cid = request.query.get("conversation_id")
        items = self.fake.messages_for(cid) if cid else self.fake.outbound
        return reply({"outbound": _since(request, items)})

    async def acks(self, request: web.Request) -> web.Response:
        return reply({"acks": _since(request, self.fake.acks)})

    async def requests(self, request: web.Request) -> web.Response:
        items = self.fake.requests
        if "path" in request.query:
            items = [r for r in items if r.path == request.query["path"]]
        return reply({"requests": _since(request, items)})

    async def unknown_routes(self, request: web.Request) -> web.Response:
        return reply({"unknown_routes": _since(request, self.fake.unknown_routes)})

    async def connections(self, request: web.Request) -> web.Response:
        return reply({"connections": [c.info() for c in self.fake.all_connections]})

    async def open_requests(self, request: web.Request) -> web.Response:
        return reply({"open_requests": _since(request, self.fake.open_requests)})

    async def pings(self, request: web.Request) -> web.Response:
        return reply({"pings": _since(request, self.fake.pings)})

    async def events(self, request: web.Request) -> web.StreamResponse:
        sub = self.fake.subscribe(replay=request.query.get("replay") in ("1", "true"))
        try:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await self._events_ws(request, sub)
            stream = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await stream.prepare(request)
            async for event in sub:
                payload = json.dumps(event, ensure_ascii=False, default=str)
                await stream.write(f"event: {event['kind']}\ndata: {payload}\n\n".encode())
            return stream
        finally:
            sub.close()

    async def _events_ws(self, request: web.Request, sub: Subscription) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)

        async def pump() -> None:
            async for event in sub:
                await ws.send_str(json.dumps(event, ensure_ascii=False, default=str))
            await ws.close()

        task = asyncio.ensure_future(pump())
        try:
            async for _ in ws:  # reading is what notices the client's close frame
                pass
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
        return ws
