"""Stream registration: ``POST /v1.0/gateway/connections/open`` (tickets) and the ``GET /connect`` websocket.

Tickets are single use and expire after ``ticket_ttl_s``; a bad, reused or expired ticket is refused at the
handshake with HTTP 401 (the real status is undocumented). Subscriptions are recorded per connection and only
subscribed topics are pushed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from edgecrab.testing.fakedingtalk import wire
from edgecrab.testing.fakedingtalk.connection import FakeConnection
from edgecrab.testing.fakedingtalk.faults import FaultPlan
from edgecrab.testing.fakedingtalk.models import FakeApp, OpenRequest
from edgecrab.testing.fakedingtalk.state import FakeState
from edgecrab.testing.fakedingtalk.stream import StreamHub

SUBSCRIPTION_TYPES = ("EVENT", "CALLBACK", "SYSTEM")
WS_MAX_MESSAGE = 1 << 20  # websockets' default on the client side; a larger ack is a client bug


@dataclass
class Ticket:
    ticket: str
    app: FakeApp
    subscriptions: list[dict[str, Any]]
    issued_t: float


def _missing(field_name: str) -> web.Response:
    return wire.api_error(400, f"Missing{field_name}", f"{field_name} is mandatory for this action.")


def _check_subscriptions(subs: Any) -> str | None:
    if not isinstance(subs, list) or not subs:
        return "subscriptions must be a non-empty list"
    for sub in subs:
        if (
            not isinstance(sub, dict)
            or sub.get("type") not in SUBSCRIPTION_TYPES
            or not isinstance(sub.get("topic"), str)
            or not sub["topic"]
        ):
            return f"invalid subscription {sub!r}: need type in {SUBSCRIPTION_TYPES} and a topic"
        if sub["type"] == "EVENT" and sub["topic"] != "*":
            return "EVENT subscriptions must use topic '*'"
    return None


class StreamGateway:
    """HTTP handlers of the stream side."""

    def __init__(self, state: FakeState, hub: StreamHub, faults: FaultPlan) -> None:
        self.state, self.hub, self.faults = state, hub, faults
        self.tickets: dict[str, Ticket] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1.0/gateway/connections/open", self.open_connection),
            web.get("/connect", self.connect),
        ]

    async def open_connection(self, request: web.Request) -> web.Response:
        raw = await request.read()
        headers = dict(request.headers)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode("utf-8", "replace")
        response, ticket = self._open(body)
        scrub = self.state.scrub
        self.state.open_requests.append(
            OpenRequest(scrub(body), scrub(headers), response.status, scrub({"ticket": ticket})["ticket"])
        )
        return response

    def _open(self, body: Any) -> tuple[web.Response, str | None]:
        if not isinstance(body, dict):
            return wire.api_error(400, "InvalidParameter", "body must be a JSON object"), None
        for name in ("clientId", "clientSecret"):
            if not isinstance(body.get(name), str) or not body[name]:
                return _missing(name), None
        if "subscriptions" not in body:
            return _missing("subscriptions"), None
        problem = _check_subscriptions(body["subscriptions"])
        if problem:
            return wire.api_error(400, "InvalidParameter", problem), None
        app = self.state.apps.get(body["clientId"])
        if app is None or app.client_secret != body["clientSecret"] or self.faults.reject_credentials:
            self.state.counters["auth_failures"] += 1
            return wire.api_error(401, *wire.AUTH_FAILED), None
        ticket = str(uuid.uuid4())
        self.tickets[ticket] = Ticket(ticket, app, body["subscriptions"], self.state.now())
        self.state.counters["tickets_issued"] += 1
        endpoint = self.state.base_url.replace("http://", "ws://", 1) + "/connect"
        # requestid-free success body, exactly the two documented keys
        return wire.json_response({"endpoint": endpoint, "ticket": ticket}), ticket

    async def connect(self, request: web.Request) -> web.StreamResponse:
        ticket = self.tickets.pop(request.query.get("ticket", ""), None)  # popped: single use
        if ticket is None or self.state.now() - ticket.issued_t > self.state.settings.ticket_ttl_s:
            self.state.counters["tickets_rejected"] += 1
            self.state.bus.emit("connection", event="rejected", reason="bad, reused or expired ticket")
            return wire.api_error(401, "InvalidTicket", "ticket is invalid, used or expired")
        ws = web.WebSocketResponse(
            autoping=True, heartbeat=None, compress=True, timeout=2.0, max_msg_size=WS_MAX_MESSAGE
        )
        await ws.prepare(request)
        conn = FakeConnection(
            self.hub.new_connection_id(),
            ticket.app.client_id,
            ws,
            request,
            ticket.subscriptions,
            ticket.ticket,
        )
        try:
            await self.hub.register(conn)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.hub.on_client_text(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.state.counters["bad_client_frames"] += 1
                    self.state.bus.emit(
                        "frame",
                        direction="in",
                        connection_id=conn.connection_id,
                        ok=False,
                        raw=f"<{len(msg.data)} binary bytes>",
                    )
        finally:
            self.hub.unregister(conn)
        return ws
