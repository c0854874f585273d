"""DingTalk robot callbacks -> platform-neutral events.

:func:`to_message` turns a decoded robot callback (``/v1.0/im/bot/messages/get``: a frame's ``data``, see
:mod:`edgecrab.dingtalk.frames`) into a :class:`~edgecrab.events.Message`. It is a pure function with no
I/O. Every defect in the payload (a missing field, a list where an object belongs) raises
:class:`~edgecrab.dingtalk.frames.FrameError` with a short ``reason``; nothing else escapes, so the caller
can log the reason and move on. :class:`Frame`, :class:`FrameError`, :func:`decode_data` and
:func:`decode_payload` are re-exported, so the ingest path can take decoding and conversion from here.

This module reads the envelope (ids, conversation, sender, reply route). The body of each ``msgtype`` is
read by :mod:`~edgecrab.dingtalk.bodies`; which ``@name`` is the robot's own, and who else is mentioned,
by :mod:`~edgecrab.dingtalk.mentions` (the exact rule is in its docstring); single fields are read, with
their types checked, by :mod:`~edgecrab.dingtalk.fields`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgecrab.dingtalk.bodies import QUOTE_UNAVAILABLE, SUPPORTED_MSGTYPES, read_body
from edgecrab.dingtalk.fields import epoch_s as _epoch_s
from edgecrab.dingtalk.fields import flag as _flag
from edgecrab.dingtalk.fields import string as _str
from edgecrab.dingtalk.fields import text_of as _text_of
from edgecrab.dingtalk.frames import Frame, FrameError, decode_data, decode_payload, scrub_surrogates
from edgecrab.dingtalk.mentions import Audience, mentions_of, read_at_users
from edgecrab.events import Conversation, Message, ReplyRoute, Sender

__all__ = [
    "QUOTE_UNAVAILABLE",
    "SUPPORTED_MSGTYPES",
    "Frame",
    "FrameError",
    "decode_data",
    "decode_payload",
    "to_message",
]


def _is_group(data: Mapping[str, Any]) -> bool:
    value = data.get("conversationType")
    if value is None or value == "":
        # Always present in practice; a title only exists for groups.
        return bool(data.get("conversationTitle"))
    text = (_text_of(value) or "").strip()
    if text not in ("1", "2"):
        raise FrameError("conversationType is not 1 or 2")
    return text == "2"


def _sender(data: Mapping[str, Any], dingtalk_id: str) -> Sender:
    return Sender(
        id=_str(data, "senderStaffId"),
        name=_str(data, "senderNick"),
        dingtalk_id=dingtalk_id,
        corp_id=_str(data, "senderCorpId"),
        is_admin=_flag(data, "isAdmin"),
    )


def _route(
    data: Mapping[str, Any], robot: str, conversation_id: str, is_group: bool, sender: Sender
) -> ReplyRoute:
    """Everything needed to answer in this message's conversation (persisted with the message)."""
    return ReplyRoute(
        robot_code=robot,
        conversation_id=conversation_id,
        is_group=is_group,
        sender_staff_id=sender.id,
        sender_name=sender.name,
        session_webhook=_str(data, "sessionWebhook"),
        session_webhook_expires_at=_epoch_s(data, "sessionWebhookExpiredTime"),
    )


def to_message(
    data: Mapping[str, Any],
    *,
    stream_message_id: str = "",
    robot_code_fallback: str = "",
    scrubbed: bool = False,
    robot_name: str = "",
) -> Message:
    """Convert a decoded robot callback into a :class:`Message`, or raise :class:`FrameError`.
    ``scrubbed``: ``data`` comes from :func:`decode_payload`, its lone surrogates already replaced.
    ``robot_name``: ``Message.robot``, the start of its session keys (the gateway's name for the robot);
    default the callback's robot code."""
    if not isinstance(data, Mapping):
        raise FrameError("data is not an object")
    if not scrubbed:
        try:
            data = scrub_surrogates(dict(data))
        except RecursionError:
            raise FrameError("data is nested too deeply") from None
    msg_id = _str(data, "msgId", required=True)
    conversation_id = _str(data, "conversationId", required=True)
    dingtalk_id = _str(data, "senderId", required=True)
    msgtype = _str(data, "msgtype", required=True)
    robot = _str(data, "robotCode") or robot_code_fallback
    if not robot:
        raise FrameError("missing robotCode")

    is_group = _is_group(data)
    sender = _sender(data, dingtalk_id)
    bot_mentioned = _flag(data, "isInAtList") and is_group
    at_users = read_at_users(data)
    body = read_body(data, msgtype, Audience(at_users, _str(data, "chatbotUserId"), is_group, bot_mentioned))

    route = _route(data, robot, conversation_id, is_group, sender)
    return Message(
        id=msg_id,
        robot=robot_name or robot,
        conversation=Conversation(
            id=conversation_id, is_group=is_group, title=_str(data, "conversationTitle")
        ),
        sender=sender,
        text=body.text,
        msgtype=msgtype,
        bot_mentioned=bot_mentioned,
        mentions=mentions_of(at_users, body.names or {}),
        created_at=_epoch_s(data, "createAt"),
        route=route,
        attachments=body.attachments,
        quote=body.quote,
        unsupported=body.unsupported,
        bot_corp_id=_str(data, "chatbotCorpId"),
        stream_message_id=stream_message_id,
        parts=body.parts,
    )
