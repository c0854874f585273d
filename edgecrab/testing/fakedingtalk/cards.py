"""The card APIs of the fake: AI cards created, delivered, updated and streamed, and their buttons.

Endpoints (``api.dingtalk.com`` shapes, ``wave2.md`` section 1 and the protocol reference 8.5)::

    POST /v1.0/card/instances                   create   -> {"result": outTrackId, "success": true}
    POST /v1.0/card/instances/deliver           deliver  -> {"result": [deliverResult...], "success": true}
    POST /v1.0/card/instances/createAndDeliver  both     -> {"result": {"outTrackId", "processQueryKey",
                                                                        "deliverResults": [...]}, ...}
    PUT  /v1.0/card/instances                   card data: cardParamMap, updateCardDataByKey
    PUT  /v1.0/card/streaming                   a typewriter frame: key, content, isFull, isFinalize,
                                                isError, guid

DingTalk's rules, each answered in its dialect: a live token (``400 InvalidAuthentication``); the scopes
``Card.Instance.Write`` (create, deliver, update) and ``Card.Streaming.Write`` (streaming), which a test can
revoke (``403 Forbidden.AccessDenied.AccessTokenPermissionDenied`` naming them in
``accessdenieddetail.requiredScopes``); a known, published template; a new ``outTrackId`` per card; a new
``guid`` per streaming call (a retry too); string-only ``cardParamMap`` values; the template's streaming key
(another key: ``500 unknownError``, what a template/key mismatch gets in the wild); a per-API QPS limit
(``403 QpsLimitForAppkeyAndApi``); a DM deliver needs ``imRobotOpenDeliverModel``
(``400 param.spaceDeliverModelEmpty``) with a ``robotCode``; a group deliver without
``imGroupOpenDeliverModel`` is silently dropped (``success: true``, nothing shown). Per-space failures come
back as ``deliverResults[].success: false`` inside HTTP 200, also on demand (:meth:`CardApi.fail_deliveries`).
Codes marked "inferred" were not seen in the wild.

Each card's state (:class:`FakeCard`: flow status, what a user would see, every frame and update) is kept by
``outTrackId`` so tests assert what the user saw, and published: ``GET /_fake/cards``, ``card`` events on
``/_fake/events``. ``POST /_fake/cards/{outTrackId}/callback`` presses a card button: a CALLBACK frame on the
Stream topic ``/v1.0/card/instances/callback``, as DingTalk pushes it. Knobs:
``GET|POST /_fake/cards/settings`` (:meth:`CardApi.configure`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

from aiohttp import web

from edgecrab.testing.fakedingtalk import wire
from edgecrab.testing.fakedingtalk.cardstate import (
    FLOW_STATUS,
    INSTANCE_SCOPE,
    PUBLIC_AI_TEMPLATE,
    RICH_AI_TEMPLATE,
    SDK_AI_TEMPLATE,
    STREAMING_SCOPE,
    CardDelivery,
    CardFrame,
    CardTemplate,
    FakeCard,
    default_templates,
)
from edgecrab.testing.fakedingtalk.models import CARD_CALLBACK_TOPIC, FakeApp
from edgecrab.testing.fakedingtalk.rest import (
    TOKEN_HEADER,
    Rejection,
    json_body,
    new_process_query_key,
    require,
)
from edgecrab.testing.fakedingtalk.state import FakeState
from edgecrab.testing.fakedingtalk.stream import StreamHub

CREATE = "/v1.0/card/instances"
DELIVER = "/v1.0/card/instances/deliver"
CREATE_AND_DELIVER = "/v1.0/card/instances/createAndDeliver"
STREAMING = "/v1.0/card/streaming"

PERMISSION_DENIED = "Forbidden.AccessDenied.AccessTokenPermissionDenied"
UNPUBLISHED = ("param.templateUnpublished", "卡片模板未发布")
UNKNOWN_TEMPLATE = ("param.templateNotExist", "卡片模板不存在")  # inferred
DUPLICATE_TRACK_ID = ("param.outTrackIdExist", "outTrackId 已存在")  # inferred
NO_SUCH_CARD = ("param.cardNotExist", "卡片实例不存在")  # inferred
DUPLICATE_GUID = ("param.guidDuplicated", "guid 重复，每次流式更新需使用新的 guid")  # inferred
NOT_STRING = ("param.cardParamMapInvalid", "cardParamMap 的值必须是字符串")  # inferred
SPACE_DELIVER_MODEL_EMPTY = ("param.spaceDeliverModelEmpty", "spaceDeliverModel is empty")
BAD_SPACE_ID = ("param.openSpaceIdInvalid", "openSpaceId 不合法")  # inferred
UNKNOWN_ERROR = ("unknownError", "unknownError")

DELIVER_ERROR = "deliver failed: user not reachable"  # inferred wording
SPACE_PREFIX = "dtv1.card//"

__all__ = [
    "FLOW_STATUS",
    "INSTANCE_SCOPE",
    "PUBLIC_AI_TEMPLATE",
    "RICH_AI_TEMPLATE",
    "SDK_AI_TEMPLATE",
    "STREAMING_SCOPE",
    "CardApi",
    "CardDelivery",
    "CardFrame",
    "CardTemplate",
    "FakeCard",
]


def reply(body: Any, status: int = 200) -> web.Response:
    """A control API answer (plain JSON, no DingTalk headers)."""
    return web.Response(
        text=json.dumps(body, ensure_ascii=False, default=str), status=status, content_type="application/json"
    )


def _error(code_message: tuple[str, str], status: int = 400, **extra: Any) -> Rejection:
    return Rejection(wire.api_error(status, *code_message, **extra))


def _ok(result: Any) -> web.Response:
    return wire.json_response({"success": True, "result": result})


def _param_map(body: dict[str, Any], *, required: bool) -> dict[str, str] | None:
    data = body.get("cardData")
    if data is None and not required:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("cardParamMap"), dict):
        raise Rejection(wire.api_error(400, "MissingcardData", "cardData.cardParamMap is mandatory."))
    params = data["cardParamMap"]
    bad = sorted(k for k, v in params.items() if not isinstance(v, str))
    if bad:
        code, message = NOT_STRING
        raise _error((code, f"{message}: {', '.join(bad)}"))
    return dict(params)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guarded(handler: Handler) -> Handler:
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Rejection as rejection:
            return rejection.response

    return run


def _control(handler: Handler) -> Handler:
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            return reply({"error": f"{type(exc).__name__}: {exc}"}, 400)

    return run


class CardApi:
    """The card endpoints and their state. Live knobs: :attr:`qps_limit`, :meth:`revoke`/:meth:`grant`,
    :meth:`register_template`, :meth:`fail_deliveries`."""

    def __init__(self, state: FakeState, hub: StreamHub) -> None:
        self.state, self.hub = state, hub
        self.cards: dict[str, FakeCard] = {}
        self.templates = default_templates()
        self.qps_limit: int | None = None
        """Card API calls per second per app and per API (DingTalk's standard tier: 20); None: unlimited."""
        self.revoked: set[tuple[str, str]] = set()  # (client_id or "*", scope)
        self.api_calls: Counter[str] = Counter()  # "PUT /v1.0/card/streaming" -> accepted calls
        self.throttled = 0
        self._deliver_failures = 0.0
        self._deliver_error = ""
        self._guids: set[str] = set()
        self._windows: dict[tuple[str, str], deque[float]] = {}

    # knobs ------------------------------------------------------------------------------------------------
    def register_template(
        self, template_id: str, streaming_keys: Sequence[str] = ("content",), *, published: bool = True
    ) -> CardTemplate:
        template = CardTemplate(template_id, tuple(streaming_keys), published)
        self.templates[template_id] = template
        return template

    def revoke(self, scope: str, app: str | None = None) -> None:
        """Take a permission scope away from one app (``None``: every app)."""
        self.revoked.add((app or "*", scope))

    def grant(self, scope: str | None = None, app: str | None = None) -> None:
        """Give a scope back (``None``: every revoked scope)."""
        self.revoked = {
            (a, s) for a, s in self.revoked if not ((scope in (None, s)) and (app in (None, a) or a == "*"))
        }

    def fail_deliveries(self, times: int | None = 1, error: str = DELIVER_ERROR) -> None:
        """The next ``times`` delivered spaces (``None``: all, ``0``: none) fail inside HTTP 200."""
        self._deliver_failures = float("inf") if times is None else float(times)
        self._deliver_error = error

    def card(self, out_track_id: str) -> FakeCard:
        return self.cards[out_track_id]

    def in_conversation(self, conversation_id: str) -> list[FakeCard]:
        return [c for c in self.cards.values() if conversation_id in c.conversation_ids]

    def reset(self) -> None:
        """Forget cards and counters; knobs are kept."""
        self.cards.clear()
        self.api_calls.clear()
        self._guids.clear()
        self._windows.clear()
        self.throttled = 0

    def describe(self) -> dict[str, Any]:
        return {
            "qps_limit": self.qps_limit,
            "revoked": sorted(f"{a}:{s}" for a, s in self.revoked),
            "templates": [asdict(t) for t in self.templates.values()],
            "deliver_failures": None if self._deliver_failures == float("inf") else self._deliver_failures,
            "deliver_error": self._deliver_error,
            "api_calls": dict(self.api_calls),
            "throttled": self.throttled,
        }

    # routes -----------------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(CREATE, _guarded(self.create)),
            web.post(DELIVER, _guarded(self.deliver)),
            web.post(CREATE_AND_DELIVER, _guarded(self.create_and_deliver)),
            web.put(CREATE, _guarded(self.update)),
            web.put(STREAMING, _guarded(self.streaming)),
            web.get("/_fake/cards", _control(self.list_cards)),
            web.get("/_fake/cards/settings", _control(self.settings)),
            web.post("/_fake/cards/settings", _control(self.settings)),
            web.get("/_fake/cards/{out_track_id}", _control(self.show_card)),
            web.post("/_fake/cards/{out_track_id}/callback", _control(self.callback)),
        ]

    # checks shared by every card call ---------------------------------------------------------------------
    def _admit(self, request: web.Request, scope: str) -> FakeApp:
        """Token, per-API QPS, then permission: the order the platform's gateway checks them (inferred)."""
        app = self.state.token_app(request.headers.get(TOKEN_HEADER))
        if app is None:
            raise Rejection(wire.api_error(400, *wire.INVALID_TOKEN))
        api = f"{request.method} {request.path}"
        if self.qps_limit is not None and self._over_qps((app.client_id, api), self.qps_limit):
            self.throttled += 1
            raise _error(wire.QPS_APP, 403)
        if (app.client_id, scope) in self.revoked or ("*", scope) in self.revoked:
            raise _error(
                (PERMISSION_DENIED, f"没有调用该接口的权限，接口权限申请参考：{scope}"),
                403,
                accessdenieddetail={"requiredScopes": [scope]},
            )
        self.api_calls[api] += 1
        return app

    def _over_qps(self, key: tuple[str, str], limit: int) -> bool:
        now = time.monotonic()
        window = self._windows.setdefault(key, deque())
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= limit:
            return True  # a refused call does not use up the second's allowance
        window.append(now)
        return False

    def _own_card(self, app: FakeApp, out_track_id: str) -> FakeCard:
        card = self.cards.get(out_track_id)
        if card is None or card.app != app.client_id:
            raise _error(NO_SUCH_CARD)
        return card

    def _emit(self, card: FakeCard, action: str) -> None:
        self.state.bus.emit(
            "card",
            action=action,
            out_track_id=card.out_track_id,
            app=card.app,
            status=card.status,
            text=card.text,
            visible=card.visible,
            conversation_ids=card.conversation_ids,
            stream_finalized=card.stream_finalized,
        )

    # create / deliver -------------------------------------------------------------------------------------
    def _create(self, app: FakeApp, body: dict[str, Any]) -> FakeCard:
        template_id = require(body, "cardTemplateId")
        out_track_id = require(body, "outTrackId")
        template = self.templates.get(template_id)
        if template is None:
            raise _error(UNKNOWN_TEMPLATE)
        if not template.published:
            raise _error(UNPUBLISHED)
        if out_track_id in self.cards:
            raise _error(DUPLICATE_TRACK_ID)
        params = _param_map(body, required=True) or {}
        spaces = tuple(
            space
            for space, model in (("IM_GROUP", "imGroupOpenSpaceModel"), ("IM_ROBOT", "imRobotOpenSpaceModel"))
            if isinstance(body.get(model), dict)
        )
        card = FakeCard(
            out_track_id,
            app.client_id,
            template_id,
            params,
            template.streaming_keys[0],
            spaces,
            new_process_query_key(),
            self.state.now(),
        )
        self.cards[out_track_id] = card
        self._emit(card, "created")
        return card

    def _deliver(self, app: FakeApp, card: FakeCard, body: dict[str, Any]) -> list[dict[str, Any]]:
        space = require(body, "openSpaceId")
        kind, _, space_id = space.removeprefix(SPACE_PREFIX).partition(".")
        if not space.startswith(SPACE_PREFIX) or kind not in ("IM_GROUP", "IM_ROBOT") or not space_id:
            raise _error(BAD_SPACE_ID)
        model_name = "imGroupOpenDeliverModel" if kind == "IM_GROUP" else "imRobotOpenDeliverModel"
        model = body.get(model_name)
        if kind == "IM_ROBOT" and not isinstance(model, dict):
            raise _error(SPACE_DELIVER_MODEL_EMPTY)
        delivery = self._delivery(app, card, kind, space_id, model if isinstance(model, dict) else None)
        card.deliveries.append(delivery)
        self._emit(card, "delivered")
        return [
            {
                "carrierId": secrets.token_hex(8) if delivery.success else "",
                "errorMsg": delivery.error_msg,
                "spaceId": space_id,
                "spaceType": kind,
                "success": delivery.success,
            }
        ]

    def _delivery(
        self, app: FakeApp, card: FakeCard, kind: str, space_id: str, model: dict[str, Any] | None
    ) -> CardDelivery:
        if kind == "IM_GROUP":
            conversation_id = space_id
            known = space_id in self.state.groups
        else:
            conversation_id = self.state.dm_conversation_for_staff(app, space_id)
            known = bool(conversation_id)
        robot_code = str(model.get("robotCode") or "") if model else ""

        def failed(message: str) -> CardDelivery:
            return CardDelivery(kind, space_id, conversation_id, robot_code, False, message)

        if model is None:  # a group deliver without its model: accepted, never shown (reported)
            return CardDelivery(kind, space_id, conversation_id, "", True, dropped=True)
        if kind not in card.spaces:  # inferred
            return failed(f"card was created without {kind.lower()} space model")
        if not robot_code:  # inferred; peers that left it out in DMs report undelivered cards
            return failed("robotCode is empty")
        if robot_code != app.robot_code:
            return failed(f"robot {robot_code} does not belong to this app")
        if not known:
            return failed("robot is not in this group" if kind == "IM_GROUP" else "user not found")
        if self._deliver_failures > 0:
            self._deliver_failures -= 1
            return failed(self._deliver_error)
        return CardDelivery(kind, space_id, conversation_id, robot_code, True)

    async def create(self, request: web.Request) -> web.Response:
        app = self._admit(request, INSTANCE_SCOPE)
        card = self._create(app, await json_body(request))
        return _ok(card.out_track_id)

    async def deliver(self, request: web.Request) -> web.Response:
        app = self._admit(request, INSTANCE_SCOPE)
        body = await json_body(request)
        card = self._own_card(app, require(body, "outTrackId"))
        return _ok(self._deliver(app, card, body))

    async def create_and_deliver(self, request: web.Request) -> web.Response:
        app = self._admit(request, INSTANCE_SCOPE)
        body = await json_body(request)
        require(body, "openSpaceId")  # checked before anything is created
        card = self._create(app, body)
        try:
            results = self._deliver(app, card, body)
        except Rejection:
            del self.cards[card.out_track_id]  # a refused call leaves nothing behind
            raise
        return _ok(
            {
                "outTrackId": card.out_track_id,
                "processQueryKey": card.process_query_key,
                "deliverResults": results,
            }
        )

    # updates ----------------------------------------------------------------------------------------------
    async def update(self, request: web.Request) -> web.Response:
        app = self._admit(request, INSTANCE_SCOPE)
        body = await json_body(request)
        card = self._own_card(app, require(body, "outTrackId"))
        params = _param_map(body, required=False)
        options = body.get("cardUpdateOptions") or {}
        by_key = isinstance(options, dict) and options.get("updateCardDataByKey") is True
        if params is not None:
            if by_key:
                card.params.update(params)
            else:  # a full update wipes every variable it leaves out (reported)
                card.params = dict(params)
        card.updates.append({"params": params, "by_key": by_key, "t": self.state.now()})
        self._emit(card, "updated")
        return _ok(True)

    async def streaming(self, request: web.Request) -> web.Response:
        app = self._admit(request, STREAMING_SCOPE)
        body = await json_body(request)
        card = self._own_card(app, require(body, "outTrackId"))
        guid, key = require(body, "guid"), require(body, "key")
        content = body.get("content")
        if not isinstance(content, str):
            raise Rejection(wire.api_error(400, "Missingcontent", "content is mandatory for this action."))
        if guid in self._guids:
            raise _error(DUPLICATE_GUID)
        if key not in self.templates[card.template_id].streaming_keys:
            raise _error(UNKNOWN_ERROR, 500)  # what a key the template does not stream gets (reported)
        self._guids.add(guid)
        is_full = body.get("isFull") is True
        frame = CardFrame(
            guid,
            key,
            content,
            is_full,
            body.get("isFinalize") is True,
            body.get("isError") is True,
            self.state.now(),
            after_finalize=card.stream_finalized,
        )
        card.frames.append(frame)
        card.params[key] = content if is_full else card.params.get(key, "") + content
        card.stream_finalized = card.stream_finalized or frame.is_finalize
        card.stream_error = card.stream_error or frame.is_error
        self._emit(card, "streamed")
        return _ok(True)

    # control API ------------------------------------------------------------------------------------------
    async def list_cards(self, request: web.Request) -> web.Response:
        cards = list(self.cards.values())
        cid = request.query.get("conversation_id")
        if cid:
            cards = [c for c in cards if cid in c.conversation_ids]
        start = int(request.query.get("since", "0"))
        return reply({"cards": [c.public() for c in cards[start:]], "settings": self.describe()})

    async def show_card(self, request: web.Request) -> web.Response:
        card = self.cards.get(request.match_info["out_track_id"])
        if card is None:
            return reply({"error": "no such card"}, 404)
        return reply(card.public(frames=True))

    async def settings(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            raw = await request.read()
            spec = json.loads(raw) if raw else {}
            if not isinstance(spec, dict):
                raise ValueError("body must be a JSON object")
            self.configure(spec)
        return reply(self.describe())

    def configure(self, spec: dict[str, Any]) -> None:
        """Apply ``{"qps_limit", "revoke": [scope | {"scope","app"}], "grant": [...] | "all",
        "deliver_failures": n | null, "deliver_error", "templates": [{"id","keys","published"}]}``."""
        if "qps_limit" in spec:
            self.qps_limit = None if spec["qps_limit"] is None else int(spec["qps_limit"])
        if spec.get("grant") == "all":
            self.grant()
        for item in spec.get("grant", []) if isinstance(spec.get("grant"), list) else []:
            self.grant(*((item, None) if isinstance(item, str) else (item["scope"], item.get("app"))))
        for item in spec.get("revoke", []):
            self.revoke(*((item, None) if isinstance(item, str) else (item["scope"], item.get("app"))))
        if "deliver_failures" in spec:
            self.fail_deliveries(spec["deliver_failures"], spec.get("deliver_error", DELIVER_ERROR))
        for item in spec.get("templates", []):
            keys = item.get("keys", ["content"])
            self.register_template(item["id"], keys, published=item.get("published", True))

    async def callback(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        message_id, data = await self.push_callback(
            request.match_info["out_track_id"],
            user=body.get("user"),
            action_ids=body.get("action_ids", ("stop",)),
            params=body.get("params"),
        )
        return reply({"message_id": message_id, "data": data})

    async def push_callback(
        self,
        out_track_id: str,
        *,
        user: str | None = None,
        action_ids: Sequence[str] = ("stop",),
        params: dict[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Press a button of a delivered card: push its callback to the app (topic
        ``/v1.0/card/instances/callback``, ``content`` and ``extension`` as JSON strings, as DingTalk
        sends them). ``user`` defaults to the DM recipient, or the first user, for a group card."""
        card = self.cards.get(out_track_id)
        if card is None:
            raise KeyError(f"no card {out_track_id!r}")
        delivered = next((d for d in card.deliveries if d.success and not d.dropped), None)
        if delivered is None:
            raise RuntimeError(f"card {out_track_id!r} was never shown to anyone")
        app = self.state.app(card.app)
        if user is None:
            user = delivered.space_id if delivered.space_type == "IM_ROBOT" else self.state.users[0].staff_id
        presser = self.state.user(user)
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
        message_id = await self.hub.push(app, data, message_id=None, topic=CARD_CALLBACK_TOPIC)
        self.state.bus.emit("card_callback", out_track_id=out_track_id, action_ids=list(action_ids))
        return message_id, data
