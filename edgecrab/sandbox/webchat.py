"""The emulator's web chat: static page plus a few JSON endpoints, served on the fake's own port.

The page (``static/``: plain HTML, CSS and JavaScript, no build step) talks to two APIs:

* the fake's control API, unchanged: ``/_fake/events`` (websocket of every frame, ack, redelivery, REST call
  and outbound message) feeds the chat and the wire panel, ``/_fake/settings`` flips ``deliver_unmentioned``;
* the endpoints below, which only add what the control API does not know: who is chatting in which
  conversation, and the transcript to show again after a reload.

====================  ======================================================================================
GET  /                 the chat page;  GET /static/<file>  its CSS and JavaScript
GET  /sandbox/directory  the robot, people (with DM conversation ids, outsiders marked), groups, live state
POST /sandbox/send     ``{"user","text","conversation_id"?,"at_bot"?}``: build the message with the fake's
                       builders and push it exactly as DingTalk would (a group message without @robot is
                       dropped unless ``deliver_unmentioned``)
                       -> ``{"message_id","msg_id","conversation_id"}``
GET  /sandbox/history  ``{"events": [...]}``: the chat's own ``chat`` events, every ``outbound`` event, and
                       the frame/ack/redelivery events of messages sent from the chat, in bus order
====================  ======================================================================================

Every message sent from the page is announced on the fake's event bus as a ``chat`` event (sender, text,
conversation, ``message_id``) before it is pushed, so the stream shows who said what before the frames.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import deque
from importlib import resources
from typing import Any

import anyio
import anyio.abc
from aiohttp import web

from edgecrab.testing.fakedingtalk import FakeDingTalk
from edgecrab.testing.fakedingtalk.models import new_frame_message_id

MAX_TEXT = 20000
"""Longest message the page may send, in characters (DingTalk's own input box stops well before)."""
HISTORY = 5000
"""Transcript events kept for reloads; older ones are forgotten."""

_STATIC_NAME = re.compile(r"[a-z0-9_-]+\.(?:html|css|js|svg|png)")
_CONTENT_TYPES = {
    "html": "text/html",
    "css": "text/css",
    "js": "text/javascript",
    "svg": "image/svg+xml",
    "png": "image/png",
}
_STATUS_KINDS = ("frame", "ack", "redelivery")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False, default=str),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


MAX_UPLOAD = 25 * 1024 * 1024
"""Largest file the web chat takes (a little above the gateway's default media.max_bytes)."""


async def _read_capped(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ValueError(f"the file is larger than {limit // (1024 * 1024)} MB")
    data = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        data += chunk
        if len(data) > limit:
            raise ValueError(f"the file is larger than {limit // (1024 * 1024)} MB")
    if not data:
        raise ValueError("the file is empty")
    return bytes(data)


def _static(name: str) -> web.Response:
    if not _STATIC_NAME.fullmatch(name):
        raise web.HTTPNotFound()
    path = resources.files(__package__).joinpath("static", name)
    if not path.is_file():
        raise web.HTTPNotFound()
    suffix = name.rsplit(".", 1)[1]
    charset = None if suffix == "png" else "utf-8"
    return web.Response(
        body=path.read_bytes(),
        content_type=_CONTENT_TYPES[suffix],
        charset=charset,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


class WebChat:
    """Routes for :meth:`FakeDingTalk.add_routes`, and the transcript recorder :meth:`record` (a task)."""

    def __init__(self, fake: FakeDingTalk) -> None:
        self.fake = fake
        self.transcript: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._sent: set[str] = set()  # message ids pushed from the page
        self.instance = secrets.token_hex(8)  # lets an open page notice that the emulator restarted

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/static/{name}", self.static),
            web.get("/sandbox/directory", self.directory),
            web.post("/sandbox/send", self.send),
            web.post("/sandbox/upload", self.upload),
            web.get("/sandbox/history", self.history),
        ]

    async def record(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep bot replies and the delivery status of the page's messages, for :meth:`history`."""
        async with self.fake.subscribe() as events:
            task_status.started()
            async for event in events:
                if event["kind"] == "outbound" or (
                    event["kind"] in _STATUS_KINDS and event.get("message_id") in self._sent
                ):
                    self.transcript.append(event)

    # pages ------------------------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        return _static("index.html")

    async def static(self, request: web.Request) -> web.Response:
        return _static(request.match_info["name"])

    # API --------------------------------------------------------------------------------------------------
    async def directory(self, request: web.Request) -> web.Response:
        fake = self.fake
        app = fake.apps[0]
        users = [
            {
                **user.public(),
                "key": user.dingtalk_id,
                "outsider": user.corp_id != app.corp_id,
                "dm_conversation_id": fake.dm_conversation_id(user, app),
            }
            for user in fake.users
        ]
        groups = [
            {"conversation_id": g.conversation_id, "title": g.title} for g in fake.state.groups.values()
        ]
        return _json(
            {
                "bot": {k: v for k, v in app.public().items() if k != "app_id"},
                "users": users,
                "groups": groups,
                "deliver_unmentioned": fake.deliver_unmentioned,
                "connections": fake.stats()["connections"],
                "base_url": fake.base_url,
                "instance": self.instance,
            }
        )

    async def send(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            text, conversation_id = body.get("text"), body.get("conversation_id")
            if not isinstance(text, str) or not text.strip():
                raise ValueError("text must be a non-empty string")
            if len(text) > MAX_TEXT:
                raise ValueError(f"text is longer than {MAX_TEXT} characters")
            user = self.fake.user(str(body.get("user", "")))
            at_bot = bool(body.get("at_bot", True))
            if conversation_id:
                if conversation_id not in self.fake.state.groups:
                    raise KeyError(f"unknown group {conversation_id!r}")
                data = self.fake.group(user, text, conversation_id=conversation_id, at_bot=at_bot)
            else:
                data = self.fake.dm(user, text)
        except (KeyError, ValueError) as exc:
            return _json({"error": str(exc).strip("'\"")}, 400)
        return await self._deliver(data, user, text, at_bot)

    async def upload(self, request: web.Request) -> web.Response:
        """A picture, file or voice note from the web chat: the raw bytes as the body; ``kind``
        (``picture``/``file``/``audio``), ``name``, ``user``, ``conversation_id``, ``recognition`` (a voice
        note's transcript) in the query. The emulator serves the bytes through ``messageFiles/download``."""
        try:
            query = request.query
            kind, name = query.get("kind", ""), query.get("name", "")[:200] or "file"
            if kind not in ("picture", "file", "audio"):
                raise ValueError("kind must be picture, file or audio")
            content = await _read_capped(request, MAX_UPLOAD)
            user = self.fake.user(query.get("user", ""))
            cid = query.get("conversation_id") or None
            if cid is not None and cid not in self.fake.state.groups:
                raise KeyError(f"unknown group {cid!r}")
            at_bot = query.get("at_bot", "true") != "false"
            options: dict[str, Any] = {"content": content, "conversation_id": cid, "at_bot": at_bot}
            if kind == "audio":
                said = query.get("recognition", "").strip()[:MAX_TEXT] or "(no transcript)"
                data, label = self.fake.audio(user, said, **options), f"🎤 {said}"
            elif kind == "picture":
                data, label = self.fake.picture(user, **options), f"🖼 {name}"
            else:
                data, label = self.fake.file(user, name, **options), f"📎 {name}"
        except (KeyError, ValueError) as exc:
            return _json({"error": str(exc).strip("'\"")}, 400)
        return await self._deliver(data, user, label, at_bot)

    async def _deliver(self, data: dict[str, Any], user: Any, text: str, at_bot: bool) -> web.Response:
        message_id = new_frame_message_id()
        self._sent.add(message_id)
        group = data["conversationType"] == "2"
        event = self.fake.state.bus.emit(
            "chat",
            message_id=message_id,
            msg_id=data["msgId"],
            conversation_id=data["conversationId"],
            conversation_type=data["conversationType"],
            sender={"key": user.dingtalk_id, "nick": user.nick, "staff_id": user.staff_id},
            text=text,
            at_bot=at_bot if group else None,
        )
        self.transcript.append(event)
        await self.fake.push(data, message_id=message_id)
        return _json(
            {"message_id": message_id, "msg_id": data["msgId"], "conversation_id": data["conversationId"]}
        )

    async def history(self, request: web.Request) -> web.Response:
        return _json({"events": sorted(self.transcript, key=lambda e: e["seq"])})
