"""The control API of the fake's cards: ``GET /_fake/cards``, ``GET /_fake/cards/{outTrackId}``,
``GET|POST /_fake/cards/settings`` (:func:`configure`) and ``POST /_fake/cards/{outTrackId}/callback``
(:func:`press`: press a button; tests call it as ``await press(fake.cards, out_track_id)``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from edgecrab.testing.fakedingtalk.cards import CardApi
from edgecrab.testing.fakedingtalk.cardwire import DELIVER_ERROR, reply
from edgecrab.testing.fakedingtalk.control import control
from edgecrab.testing.fakedingtalk.models import CARD_CALLBACK_TOPIC


class CardControl:
    """The control endpoints over one :class:`~edgecrab.testing.fakedingtalk.cards.CardApi`."""

    def __init__(self, api: CardApi) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_fake/cards", control(self.list_cards)),
            web.get("/_fake/cards/settings", control(self.settings)),
            web.post("/_fake/cards/settings", control(self.settings)),
            web.get("/_fake/cards/{out_track_id}", control(self.show_card)),
            web.post("/_fake/cards/{out_track_id}/callback", control(self.callback)),
        ]

    # control API ------------------------------------------------------------------------------------------
    async def list_cards(self, request: web.Request) -> web.Response:
        cards = list(self.api.cards.values())
        cid = request.query.get("conversation_id")
        if cid:
            cards = [c for c in cards if cid in c.conversation_ids]
        start = int(request.query.get("since", "0"))
        return reply({"cards": [c.public() for c in cards[start:]], "settings": self.api.describe()})

    async def show_card(self, request: web.Request) -> web.Response:
        card = self.api.cards.get(request.match_info["out_track_id"])
        if card is None:
            return reply({"error": "no such card"}, 404)
        return reply(card.public(frames=True))

    async def settings(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            raw = await request.read()
            spec = json.loads(raw) if raw else {}
            if not isinstance(spec, dict):
                raise ValueError("body must be a JSON object")
            configure(self.api, spec)
        return reply(self.api.describe())

    async def callback(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        message_id, data = await press(
            self.api,
            request.match_info["out_track_id"],
            user=body.get("user"),
            action_ids=body.get("action_ids", ("stop",)),
            params=body.get("params"),
        )
        return reply({"message_id": message_id, "data": data})


def configure(api: CardApi, spec: dict[str, Any]) -> None:
    """Apply ``{"qps_limit", "revoke": [scope | {"scope","app"}], "grant": [...] | "all",
    "deliver_failures": n | null, "deliver_error", "templates": [{"id","keys","published"}]}``."""
    if "qps_limit" in spec:
        api.qps_limit = None if spec["qps_limit"] is None else int(spec["qps_limit"])
    if spec.get("grant") == "all":
        api.grant()
    for item in spec.get("grant", []) if isinstance(spec.get("grant"), list) else []:
        api.grant(*((item, None) if isinstance(item, str) else (item["scope"], item.get("app"))))
    for item in spec.get("revoke", []):
        api.revoke(*((item, None) if isinstance(item, str) else (item["scope"], item.get("app"))))
    if "deliver_failures" in spec:
        api.fail_deliveries(spec["deliver_failures"], spec.get("deliver_error", DELIVER_ERROR))
    for item in spec.get("templates", []):
        keys = item.get("keys", ["content"])
        api.register_template(item["id"], keys, published=item.get("published", True))


async def press(
    api: CardApi,
    out_track_id: str,
    *,
    user: str | None = None,
    action_ids: Sequence[str] = ("stop",),
    params: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Press a button of a delivered card: push its callback to the app (topic
    ``/v1.0/card/instances/callback``, ``content`` and ``extension`` as JSON strings, as DingTalk
    sends them). ``user`` defaults to the DM recipient, or the first user, for a group card."""
    app, data = button_callback(api, out_track_id, user=user, action_ids=action_ids, params=params)
    message_id = await api.hub.push(app, data, message_id=None, topic=CARD_CALLBACK_TOPIC)
    api.state.bus.emit("card_callback", out_track_id=out_track_id, action_ids=list(action_ids))
    return message_id, data


def button_callback(
    api: CardApi,
    out_track_id: str,
    *,
    user: str | None = None,
    action_ids: Sequence[str] = ("stop",),
    params: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The app and the callback ``data`` of pressing a button of a delivered card (:func:`press`); a test
    that picks the connection sends it in a frame of its own."""
    card = api.cards.get(out_track_id)
    if card is None:
        raise KeyError(f"no card {out_track_id!r}")
    delivered = next((d for d in card.deliveries if d.success and not d.dropped), None)
    if delivered is None:
        raise RuntimeError(f"card {out_track_id!r} was never shown to anyone")
    app = api.state.app(card.app)
    if user is None:
        user = delivered.space_id if delivered.space_type == "IM_ROBOT" else api.state.users[0].staff_id
    presser = api.state.user(user)
    private = {"cardPrivateData": {"actionIds": list(action_ids), "params": params or {}}}
    data = {
        "outTrackId": out_track_id,
        "corpId": app.corp_id,
        "userId": presser.staff_id,
        "userIdType": 1,
        "spaceType": delivered.space_type,
        "spaceId": delivered.space_id,
        "type": "actionCallback",
        "extension": json.dumps({}),
        "content": json.dumps(private, ensure_ascii=False),
    }
    return app, data
