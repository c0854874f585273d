"""Common fields of every robot message and the media bytes the fake serves for download codes."""

from __future__ import annotations

import base64
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


class PayloadBase:
    """What every builder shares: sender/conversation fields, the sessionWebhook, overrides."""

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
        """Register bytes under a new downloadCode for ``app`` (a robot code: for that robot of its app)
        and return the code; only that robot can download it."""
        code = "mIof" + base64.b64encode(secrets.token_bytes(18)).decode()
        robot = self.state.app(app)
        self.state.media[code] = MediaBlob(
            robot.client_id, content, content_type, file_name, robot=robot.robot_code
        )
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
            session, app.client_id, cid, "2" if group else "1", user.staff_id, now, expires, state.now(),
            robot=app.robot_code,
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
