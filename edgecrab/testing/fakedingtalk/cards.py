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
``outTrackId``, published as ``card`` events on ``/_fake/events`` and through the control API
(:mod:`~edgecrab.testing.fakedingtalk.cardcontrol`, which also sets the knobs and presses buttons).
"""

from __future__ import annotations

import secrets
import time
from collections import Counter, deque
from collections.abc import Sequence
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
from edgecrab.testing.fakedingtalk.cardwire import (
    BAD_SPACE_ID,
    CREATE,
    CREATE_AND_DELIVER,
    DELIVER,
    DELIVER_ERROR,
    DUPLICATE_GUID,
    DUPLICATE_TRACK_ID,
    NO_SUCH_CARD,
    PERMISSION_DENIED,
    SPACE_DELIVER_MODEL_EMPTY,
    SPACE_PREFIX,
    STREAMING,
    UNKNOWN_ERROR,
    UNKNOWN_TEMPLATE,
    UNPUBLISHED,
    error,
    ok,
    param_map,
)
from edgecrab.testing.fakedingtalk.models import FakeApp
from edgecrab.testing.fakedingtalk.rest import (
    TOKEN_HEADER,
    Rejection,
    guarded,
    json_body,
    new_process_query_key,
    require,
)
from edgecrab.testing.fakedingtalk.state import FakeState
from edgecrab.testing.fakedingtalk.stream import StreamHub

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
            web.post(CREATE, guarded(self.create)),
            web.post(DELIVER, guarded(self.deliver)),
            web.post(CREATE_AND_DELIVER, guarded(self.create_and_deliver)),
            web.put(CREATE, guarded(self.update)),
            web.put(STREAMING, guarded(self.streaming)),
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
            raise error(wire.QPS_APP, 403)
        if (app.client_id, scope) in self.revoked or ("*", scope) in self.revoked:
            raise error(
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
            raise error(NO_SUCH_CARD)
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
            robot=next((d.robot_code for d in card.deliveries if d.success and not d.dropped), ""),
            stream_finalized=card.stream_finalized,
        )

    # create / deliver -------------------------------------------------------------------------------------
    def _create(self, app: FakeApp, body: dict[str, Any]) -> FakeCard:
        template_id = require(body, "cardTemplateId")
        out_track_id = require(body, "outTrackId")
        template = self.templates.get(template_id)
        if template is None:
            raise error(UNKNOWN_TEMPLATE)
        if not template.published:
            raise error(UNPUBLISHED)
        if out_track_id in self.cards:
            raise error(DUPLICATE_TRACK_ID)
        params = param_map(body, required=True) or {}
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
            raise error(BAD_SPACE_ID)
        model_name = "imGroupOpenDeliverModel" if kind == "IM_GROUP" else "imRobotOpenDeliverModel"
        model = body.get(model_name)
        if kind == "IM_ROBOT" and not isinstance(model, dict):
            raise error(SPACE_DELIVER_MODEL_EMPTY)
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
        robot_code = str(model.get("robotCode") or "") if model else ""
        robot = app.as_robot(robot_code) if robot_code in app.robot_codes else app
        if kind == "IM_GROUP":
            conversation_id = space_id
            known = space_id in self.state.groups
        else:  # the DM of the robot named (each robot of an app has its own)
            conversation_id = self.state.dm_conversation_for_staff(robot, space_id)
            known = bool(conversation_id)

        def failed(message: str) -> CardDelivery:
            return CardDelivery(kind, space_id, conversation_id, robot_code, False, message)

        if model is None:  # a group deliver without its model: accepted, never shown (reported)
            return CardDelivery(kind, space_id, conversation_id, "", True, dropped=True)
        if kind not in card.spaces:  # inferred
            return failed(f"card was created without {kind.lower()} space model")
        if not robot_code:  # inferred; peers that left it out in DMs report undelivered cards
            return failed("robotCode is empty")
        if robot_code not in app.robot_codes:
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
        return ok(card.out_track_id)

    async def deliver(self, request: web.Request) -> web.Response:
        app = self._admit(request, INSTANCE_SCOPE)
        body = await json_body(request)
        card = self._own_card(app, require(body, "outTrackId"))
        return ok(self._deliver(app, card, body))

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
        return ok(
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
        params = param_map(body, required=False)
        options = body.get("cardUpdateOptions") or {}
        by_key = isinstance(options, dict) and options.get("updateCardDataByKey") is True
        if params is not None:
            if by_key:
                card.params.update(params)
            else:  # a full update wipes every variable it leaves out (reported)
                card.params = dict(params)
        card.updates.append({"params": params, "by_key": by_key, "t": self.state.now()})
        self._emit(card, "updated")
        return ok(True)

    async def streaming(self, request: web.Request) -> web.Response:
        app = self._admit(request, STREAMING_SCOPE)
        body = await json_body(request)
        card = self._own_card(app, require(body, "outTrackId"))
        guid, key = require(body, "guid"), require(body, "key")
        content = body.get("content")
        if not isinstance(content, str):
            raise Rejection(wire.api_error(400, "Missingcontent", "content is mandatory for this action."))
        if guid in self._guids:
            raise error(DUPLICATE_GUID)
        if key not in self.templates[card.template_id].streaming_keys:
            raise error(UNKNOWN_ERROR, 500)  # what a key the template does not stream gets (reported)
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
        return ok(True)
