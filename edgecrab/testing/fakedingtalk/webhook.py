"""``POST /robot/sendBySession?session=<hex>``: the reply URL each robot message carries.

The URL is the credential (no token). An unknown, expired or invalidated session answers
``{"errcode":300001,"errmsg":"session 不存在"}`` and a body over ``body_limit`` bytes answers 460101,
both with HTTP 200 as the legacy API does. Accepted messages are recorded in arrival order as
:class:`OutboundRecord`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from edgecrab.testing.fakedingtalk import uploads, wire
from edgecrab.testing.fakedingtalk.faults import FaultPlan
from edgecrab.testing.fakedingtalk.models import OutboundRecord
from edgecrab.testing.fakedingtalk.state import FakeState

# msgtype -> (object key, keys that must be non-empty strings)
WEBHOOK_TYPES: dict[str, tuple[str, ...]] = {
    "text": ("content",),
    "markdown": ("title", "text"),
    "link": ("title", "text", "messageUrl"),
    "actionCard": ("title", "text"),
    "feedCard": (),
}


def _bad(detail: str) -> web.Response:
    code, message = wire.LEGACY_BAD_PARAM
    return wire.legacy_error(code, f"{message}: {detail}")


def check_at(at: Any) -> str | None:
    """Validate the optional ``at`` block; returns a problem or ``None``."""
    if not isinstance(at, dict):
        return "at must be an object"
    for key in ("atUserIds", "atMobiles", "atDingtalkIds"):
        if key in at and (not isinstance(at[key], list) or not all(isinstance(v, str) for v in at[key])):
            return f"at.{key} must be a list of strings"
    if "isAtAll" in at and not isinstance(at["isAtAll"], bool):
        return "at.isAtAll must be a boolean"
    return None


def check_message(body: Any) -> str | None:
    """Validate a webhook body; returns a problem or ``None``."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    msgtype = body.get("msgtype")
    if msgtype not in WEBHOOK_TYPES:
        return f"unsupported msgtype {msgtype!r}"
    part = body.get(msgtype)
    if not isinstance(part, dict):
        return f"{msgtype} must be an object"
    for key in WEBHOOK_TYPES[msgtype]:
        if not isinstance(part.get(key), str) or not part[key].strip():
            return f"{msgtype}.{key} must be a non-empty string"
    if msgtype == "feedCard" and not isinstance(part.get("links"), list):
        return "feedCard.links must be a list"
    if "at" in body:
        return check_at(body["at"])
    return None


class WebhookApi:
    def __init__(self, state: FakeState, faults: FaultPlan) -> None:
        self.state, self.faults = state, faults

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/robot/sendBySession", self.send_by_session)]

    async def send_by_session(self, request: web.Request) -> web.Response:
        raw = await request.read()
        session = self.state.sessions.get(request.query.get("session", ""))
        if session is None or not self.state.session_alive(session, self.faults.webhook_dies_after_s):
            return wire.legacy_error(*wire.SESSION_GONE)
        limit = self.state.settings.body_limit
        if len(raw) > limit:
            code, message = wire.TOO_LONG
            return wire.legacy_error(code, message.format(limit=limit))
        try:
            body = json.loads(raw)
        except ValueError:
            return _bad("body is not JSON")
        problem = check_message(body)
        if problem:
            return _bad(problem)
        msgtype = body["msgtype"]
        part = body[msgtype]
        if msgtype == "markdown":
            problem = uploads.markdown_media_problem(self.state, session.app, part["text"])
            if problem:
                return _bad(problem)  # a markdown image of an unknown or another app's mediaId; code inferred
        at = body.get("at") or {}
        dm_user = (
            [session.sender_staff_id] if session.conversation_type == "1" and session.sender_staff_id else []
        )
        self.state.record_outbound(
            OutboundRecord(
                app=session.app,
                via="webhook",
                conversation_id=session.conversation_id,
                user_ids=dm_user,
                msgtype=msgtype,
                title=part.get("title"),
                text=part.get("content") or part.get("text") or "",
                at_user_ids=list(at.get("atUserIds", [])),
                body_bytes=len(raw),
                status=200,
                errcode=0,
                is_at_all=bool(at.get("isAtAll", False)),
                body=body,
            )
        )
        return wire.json_response({"errcode": 0, "errmsg": "ok"}, new_api=False)
