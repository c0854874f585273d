"""Robot message builders: the decoded ``data`` dict of a ``/v1.0/im/bot/messages/get`` callback, per msgtype.

Field sets follow the protocol reference, section 7. Every build gets a unique ``msgId``, ``createAt`` = now
(epoch ms), a fresh ``sessionWebhook`` that points at this fake and expires ``webhook_ttl_s`` later, and
``conversationType`` as a string. Media builders register their download codes (valid only for the app that
received the message) with bytes the fake serves. ``DROP`` as an override value removes a key.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from edgecrab.testing.fakedingtalk.models import FakeApp, FakeUser, new_msg_id
from edgecrab.testing.fakedingtalk.state import FakeState, MediaBlob, WebhookSession

DEFAULT_GROUP_ID = "cidGroupEdgeCrabTest0000000000000000000000000="
DEFAULT_GROUP_TITLE = "测试群"
UNKNOWN_TEXT = "用户发送了一条消息，机器人暂不支持接收。"
DROP: Any = object()  # override value meaning "remove this key"

KINDS = (
    "dm",
    "text",
    "group",
    "bare_at",
    "rich_text",
    "richText",
    "picture",
    "audio",
    "video",
    "file",
    "quoted",
    "unknown",
    "unknownMsgType",
)
UserRef = FakeUser | str


def tiny_png() -> bytes:
    """A valid 1x1 PNG, so image-aware code can open what it downloads."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x80\x00\xff"))
        + chunk(b"IEND", b"")
    )


def filler(magic: bytes, size: int) -> bytes:
    """Deterministic bytes of ``size`` starting with ``magic``."""
    pattern = (magic + bytes(range(256))) * (size // (len(magic) + 256) + 1)
    return pattern[: max(size, len(magic))]


class PayloadBuilder:
    """Mixed into :class:`FakeDingTalk`; every method returns a decoded ``data`` dict ready for ``push``."""

    state: FakeState

    # common parts -----------------------------------------------------------------------------------------
    def _webhook_base(self) -> str:
        return self.state.base_url or "https://oapi.dingtalk.com"

    def register_media(
        self,
        app: FakeApp | str | None,
        content: bytes,
        *,
        content_type: str = "application/octet-stream",
        file_name: str = "file.bin",
    ) -> str:
        """Register bytes under a new downloadCode for ``app`` and return the code."""
        code = "mIof" + base64.b64encode(secrets.token_bytes(18)).decode()
        self.state.media[code] = MediaBlob(self.state.app(app).client_id, content, content_type, file_name)
        return code

    def _common(
        self,
        app: FakeApp,
        user: FakeUser,
        msgtype: str,
        conversation_id: str | None,
        title: str | None,
        at_bot: bool,
        at_users: Sequence[UserRef],
    ) -> dict[str, Any]:
        state = self.state
        now = state.wall_ms()
        session = secrets.token_hex(16)
        group = conversation_id is not None
        cid = conversation_id if conversation_id is not None else state.dm_conversation_id(app, user)
        expires = now + int(state.settings.webhook_ttl_s * 1000)
        state.sessions[session] = WebhookSession(
            session, app.client_id, cid, "2" if group else "1", user.staff_id, now, expires, state.now()
        )
        data: dict[str, Any] = {
            "conversationId": cid,
            "chatbotCorpId": app.corp_id,
            "chatbotUserId": app.chatbot_user_id,
            "msgId": new_msg_id(),
            "senderNick": user.nick,
            "isAdmin": user.is_admin,
            "senderStaffId": user.staff_id,
            "sessionWebhookExpiredTime": expires,
            "createAt": now,
            "senderCorpId": user.corp_id,
            "conversationType": "2" if group else "1",
            "senderId": user.dingtalk_id,
            "sessionWebhook": f"{self._webhook_base()}/robot/sendBySession?session={session}",
            "robotCode": app.robot_code,
            "senderPlatform": "Win",
            "msgtype": msgtype,
        }
        if not user.staff_id:  # outsiders carry no staff id at all
            del data["senderStaffId"]
        if not group:
            data["openThreadId"] = cid
            return data
        info = state.group_for(cid, title)
        if user.staff_id:
            info.members.add(user.staff_id)
        mentioned = [state.user(u) for u in at_users]
        at_list: list[dict[str, str]] = [{"dingtalkId": app.chatbot_user_id}] if at_bot else []
        for member in mentioned:
            entry = {"dingtalkId": member.dingtalk_id}
            if member.staff_id:
                entry["staffId"] = member.staff_id
            at_list.append(entry)
        data.update(conversationTitle=info.title, isInAtList=at_bot, atUsers=at_list)
        return data

    @staticmethod
    def _apply(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        for key, value in overrides.items():
            if value is DROP:
                data.pop(key, None)
            else:
                data[key] = value
        return data

    def _text_body(self, text: str, group: bool, at_bot: bool) -> str:
        # DingTalk removes the visible "@robot" and leaves the space that followed it.
        return f" {text}" if group and at_bot else text

    # text -------------------------------------------------------------------------------------------------
    def dm(
        self, user: UserRef, text: str, *, app: FakeApp | str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """A one-to-one text message to the robot (conversationType ``"1"``)."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "text", None, None, False, ())
        data["text"] = {"content": text}
        return self._apply(data, overrides)

    def group(
        self,
        user: UserRef,
        text: str,
        *,
        conversation_id: str = DEFAULT_GROUP_ID,
        title: str | None = None,
        at_bot: bool = True,
        at_users: Sequence[UserRef] = (),
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A group text message; with ``at_bot`` the content starts with a space and ``isInAtList`` is true."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "text", conversation_id, title, at_bot, at_users)
        data["text"] = {"content": self._text_body(text, True, at_bot)}
        return self._apply(data, overrides)

    def bare_at(
        self,
        user: UserRef,
        *,
        content: str = " ",
        conversation_id: str = DEFAULT_GROUP_ID,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A group message that is only "@robot": empty or whitespace content."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "text", conversation_id, None, True, ())
        data["text"] = {"content": content}
        return self._apply(data, overrides)

    # other message types ----------------------------------------------------------------------------------
    def rich_text(
        self,
        user: UserRef,
        items: Sequence[str | bytes],
        *,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A richText message: ``str`` items are text segments, ``bytes`` items are pictures (with those bytes)."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "richText", conversation_id, title, at_bot, ())
        segments: list[dict[str, str]] = []
        for item in items:
            if isinstance(item, bytes):
                code = self.register_media(the_app, item, content_type="image/png", file_name="image.png")
                segments.append(
                    {"pictureDownloadCode": "pic" + code, "downloadCode": code, "type": "picture"}
                )
            else:
                segments.append({"text": item})
        data["content"] = {"richText": segments}
        return self._apply(data, overrides)

    def picture(
        self,
        user: UserRef,
        *,
        content: bytes | None = None,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A picture (msgtype ``picture``, not ``image``); the download serves a PNG unless ``content`` is given."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "picture", conversation_id, title, at_bot, ())
        code = self.register_media(
            the_app,
            content if content is not None else tiny_png(),
            content_type="image/png",
            file_name="image.png",
        )
        data["content"] = {"pictureDownloadCode": "pic" + code, "downloadCode": code}
        return self._apply(data, overrides)

    def audio(
        self,
        user: UserRef,
        recognition: str = "钉钉，让进步发生",
        *,
        content: bytes | None = None,
        duration: int | None = None,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A voice message carrying DingTalk's own transcript in ``content.recognition``."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "audio", conversation_id, title, at_bot, ())
        blob = content if content is not None else filler(b"#!AMR\n", self.state.settings.media_size)
        code = self.register_media(the_app, blob, content_type="audio/amr", file_name="voice.amr")
        data["content"] = {"downloadCode": code, "recognition": recognition}
        if duration is not None:
            data["content"]["duration"] = duration
        return self._apply(data, overrides)

    def video(
        self,
        user: UserRef,
        *,
        duration: str = "5",
        video_type: str = "mp4",
        content: bytes | None = None,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A video; ``duration`` is a string, as DingTalk sends it."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "video", conversation_id, title, at_bot, ())
        blob = (
            content
            if content is not None
            else filler(b"\x00\x00\x00\x18ftypmp42", self.state.settings.media_size)
        )
        code = self.register_media(the_app, blob, content_type="video/mp4", file_name=f"video.{video_type}")
        data["content"] = {"duration": duration, "videoType": video_type, "downloadCode": code}
        return self._apply(data, overrides)

    def file(
        self,
        user: UserRef,
        file_name: str = "foobar.zip",
        *,
        content: bytes | None = None,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A file message with ``spaceId``, ``fileName``, ``downloadCode`` and ``fileId``."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "file", conversation_id, title, at_bot, ())
        blob = content if content is not None else filler(b"PK\x03\x04", self.state.settings.media_size)
        code = self.register_media(the_app, blob, file_name=file_name)
        data["content"] = {
            "spaceId": str(self.state.rng.randrange(10**8, 10**9)),
            "fileName": file_name,
            "downloadCode": code,
            "fileId": str(self.state.rng.randrange(10**8, 10**9)),
        }
        return self._apply(data, overrides)

    def unknown(
        self,
        user: UserRef,
        *,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """What DingTalk sends for a message kind robots cannot receive (msgtype ``unknownMsgType``)."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "unknownMsgType", conversation_id, title, at_bot, ())
        data["ai_robot_sessionid"] = ""
        data["content"] = {"unknownMsgType": UNKNOWN_TEXT}
        return self._apply(data, overrides)

    def quoted(
        self,
        user: UserRef,
        text: str,
        *,
        quoted_text: str = "部署失败，报错 502",
        quoted_sender: UserRef | None = None,
        quoted_msgtype: str = "text",
        variant: str = "text",
        conversation_id: str | None = DEFAULT_GROUP_ID,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A quoted reply. ``variant="text"`` puts ``isReplyMsg``/``repliedMsg`` under ``text``; ``"content"``
        sends a richText message with them under ``content``. ``quoted_sender="bot"`` quotes the robot itself.
        """
        the_app, sender = self.state.app(app), self.state.user(user)
        group = conversation_id is not None
        msgtype = "richText" if variant == "content" else "text"
        data = self._common(the_app, sender, msgtype, conversation_id, title, at_bot, ())
        if quoted_sender == "bot":
            sender_id, sender_nick = the_app.chatbot_user_id, the_app.name
        else:
            others = [u for u in self.state.users if u is not sender and u.staff_id]
            author = self.state.user(quoted_sender) if quoted_sender is not None else (others or [sender])[0]
            sender_id, sender_nick = author.dingtalk_id, author.nick
        replied = {
            "msgType": quoted_msgtype,
            "msgId": new_msg_id(),
            "senderId": sender_id,
            "senderNick": sender_nick,
            "createdAt": data["createAt"] - 60_000,
            "content": self._quoted_content(the_app, quoted_msgtype, quoted_text),
        }
        body = self._text_body(text, group, at_bot)
        if variant == "content":
            data["content"] = {"richText": [{"text": body}], "isReplyMsg": True, "repliedMsg": replied}
        else:
            data["text"] = {"content": body, "isReplyMsg": True, "repliedMsg": replied}
        data["originalMsgId"] = replied["msgId"]
        return self._apply(data, overrides)

    def _quoted_content(self, app: FakeApp, msgtype: str, quoted_text: str) -> dict[str, Any]:
        if msgtype == "text":
            return {"text": quoted_text}
        if msgtype == "richText":
            return {"richText": [{"text": quoted_text}]}
        if msgtype == "interactiveCard":
            return {}
        code = self.register_media(app, filler(b"QUOTED", 64))
        content: dict[str, Any] = {"downloadCode": code}
        if msgtype == "file":
            content["fileName"] = quoted_text or "quoted.bin"
        return content

    def card_action(
        self,
        user: UserRef,
        out_track_id: str,
        *,
        action_ids: Sequence[str] = ("stop",),
        params: dict[str, Any] | None = None,
        conversation_id: str | None = None,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Decoded ``data`` of a card button callback (push it with ``topic=CARD_CALLBACK_TOPIC``)."""
        the_app, sender = self.state.app(app), self.state.user(user)
        private = {"cardPrivateData": {"actionIds": list(action_ids), "params": params or {}}}
        data: dict[str, Any] = {
            "outTrackId": out_track_id,
            "corpId": the_app.corp_id,
            "userId": sender.staff_id,
            "userIdType": 1,
            "spaceType": "IM_GROUP" if conversation_id else "IM_ROBOT",
            "spaceId": conversation_id or sender.staff_id,
            "type": "actionCallback",
            "extension": json.dumps({}),
            "content": json.dumps(private, ensure_ascii=False),
        }
        return self._apply(data, overrides)

    # one entry point for the control API ------------------------------------------------------------------
    def message(self, kind: str, user: UserRef, text: str = "", **options: Any) -> dict[str, Any]:
        """Build any kind by name (see ``KINDS``); options are the named builder's keyword arguments.

        Options whose value is ``None`` are ignored. ``dm``/``text`` with a ``conversation_id`` builds a group
        message; the media kinds are DMs unless a ``conversation_id`` is given.
        """
        options = {k: v for k, v in options.items() if v is not None}
        if kind in ("dm", "text") and "conversation_id" in options:
            kind = "group"
        if kind in ("dm", "text"):
            for key in ("title", "at_bot", "at_users"):
                options.pop(key, None)
            return self.dm(user, text, **options)
        if kind == "group":
            return self.group(user, text, **options)
        if kind == "bare_at":
            for key in ("title", "at_bot", "at_users"):
                options.pop(key, None)
            return self.bare_at(user, **options)
        options.pop("at_users", None)
        if kind in ("rich_text", "richText"):
            return self.rich_text(user, options.pop("items", None) or [text], **options)
        if kind == "quoted":
            return self.quoted(user, text, **options)
        if kind == "audio":
            return self.audio(user, options.pop("recognition", text or "钉钉，让进步发生"), **options)
        if kind == "file":
            return self.file(user, options.pop("file_name", text or "foobar.zip"), **options)
        if kind == "picture":
            return self.picture(user, **options)
        if kind == "video":
            return self.video(user, **options)
        if kind in ("unknown", "unknownMsgType"):
            return self.unknown(user, **options)
        raise ValueError(f"unknown message kind {kind!r}; known: {', '.join(KINDS)}")
