"""DingTalk robot callbacks -> platform-neutral events.

:func:`to_message` turns a decoded robot callback (``/v1.0/im/bot/messages/get``: a frame's ``data``, see
:mod:`edgecrab.dingtalk.frames`) into a :class:`~edgecrab.events.Message`. It is a pure function with no
I/O. Every defect in the payload (a missing field, a list where an object belongs) raises
:class:`~edgecrab.dingtalk.frames.FrameError` with a short ``reason``; nothing else escapes, so the caller
can log the reason and move on. :class:`Frame`, :class:`FrameError`, :func:`decode_data` and
:func:`decode_payload` are re-exported, so the ingest path can take decoding and conversion from here.

Mention stripping, the exact rule: in a **group** message whose ``isInAtList`` is true, after leading
whitespace is removed, if the text starts with ``@`` then the first whitespace-delimited token (``@Name``)
and the whitespace after it are removed, once. DingTalk already removes the visible ``@robot`` from
``text`` messages, so this only bites when a client repeats it (HarmonyOS richText) or the user typed it;
the mention ids stay available in ``Message.mentions``. DMs are never touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edgecrab.dingtalk.frames import Frame, FrameError, decode_data, decode_payload, scrub_surrogates
from edgecrab.events import Attachment, Conversation, Mention, Message, Quote, ReplyRoute, Sender

__all__ = [
    "QUOTE_UNAVAILABLE",
    "SUPPORTED_MSGTYPES",
    "Frame",
    "FrameError",
    "decode_data",
    "decode_payload",
    "to_message",
]

QUOTE_UNAVAILABLE = "quoted content unavailable"
SUPPORTED_MSGTYPES = frozenset({"text", "richText", "picture", "audio", "video", "file"})


# --------------------------------------------------------------------------- typed field access


def _obj(parent: Mapping[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FrameError(f"{where} is not an object")
    return value


def _text_of(value: Any) -> str | None:
    """Strings as they are, numbers as text; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return str(value)
    except ValueError:  # an int beyond Python's digit limit
        return None


def _str(parent: Mapping[str, Any], key: str, where: str = "", *, required: bool = False) -> str:
    value = parent.get(key)
    if value is None or value == "":
        if required:
            raise FrameError(f"missing {where or key}")
        return ""
    text = _text_of(value)
    if text is None:
        raise FrameError(f"{where or key} is not a string")
    return text


def _flag(parent: Mapping[str, Any], key: str, where: str = "") -> bool:
    value = parent.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    # Tolerate 0/1 and "true"/"false", which some relays produce.
    if value in ("true", "false"):
        return value == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise FrameError(f"{where or key} is not a boolean")


def _epoch_s(parent: Mapping[str, Any], key: str) -> float:
    """A millisecond timestamp as epoch seconds; 0.0 when absent."""
    value = parent.get(key)
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise FrameError(f"{key} is not a number")
    try:
        seconds = float(value) / 1000.0
    except (TypeError, ValueError, OverflowError):
        raise FrameError(f"{key} is not a number") from None
    if not math.isfinite(seconds):
        raise FrameError(f"{key} is not a number")
    return seconds


def _list(parent: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise FrameError(f"{where} is not a list")
    return value


def _is_group(data: Mapping[str, Any]) -> bool:
    value = data.get("conversationType")
    if value is None or value == "":
        # Always present in practice; a title only exists for groups.
        return bool(data.get("conversationTitle"))
    text = (_text_of(value) or "").strip()
    if text not in ("1", "2"):
        raise FrameError("conversationType is not 1 or 2")
    return text == "2"


def _strip_leading_mention(text: str) -> str:
    if not text.startswith("@"):
        return text
    parts = text.split(maxsplit=1)
    return parts[1] if len(parts) == 2 else ""


# --------------------------------------------------------------------------- content


def _rich_text(items: list[Any], where: str, bot_user_id: str) -> tuple[str, list[str]]:
    """Text of richText items in display order, and the pictures' download codes.

    Text and ``at`` items run together as they are displayed; a picture between two runs of text becomes
    a line break. ``at`` items that name the robot itself are dropped.
    """
    runs: list[str] = [""]
    pictures: list[str] = []
    after_at = False
    for index, item in enumerate(items):
        here = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise FrameError(f"{here} is not an object")
        kind = _str(item, "type", f"{here}.type")
        looks_like_picture = "text" not in item and ("downloadCode" in item or "pictureDownloadCode" in item)
        if kind == "picture" or (not kind and looks_like_picture):
            code = _str(item, "downloadCode", f"{here}.downloadCode") or _str(
                item, "pictureDownloadCode", f"{here}.pictureDownloadCode"
            )
            if code:
                pictures.append(code)
            if runs[-1]:
                runs.append("")
            after_at = False
            continue
        if kind == "at":
            if bot_user_id and _str(item, "atUserId", f"{here}.atUserId") == bot_user_id:
                continue
            name = _str(item, "atName", f"{here}.atName")
            piece = f"@{name}" if name else ""
        elif kind in ("", "text"):
            piece = _str(item, "text", f"{here}.text")
        else:
            continue  # emoji, links, ...: no text we can trust
        # The client shows a space between a mention and its neighbours; the payload may not have one.
        spaced = kind == "at" or after_at
        if spaced and piece and runs[-1] and not runs[-1][-1].isspace() and not piece[0].isspace():
            piece = " " + piece
        runs[-1] += piece
        after_at = kind == "at" and bool(piece)
    return "\n".join(run for run in runs if run), pictures


def _quote_text(replied: dict[str, Any], kind: str) -> str:
    content = replied.get("content")
    if kind == "interactiveCard" or not isinstance(content, dict):
        return QUOTE_UNAVAILABLE
    if kind == "richText" or isinstance(content.get("richText"), list):
        text, pictures = _rich_text(_list(content, "richText", "repliedMsg.content.richText"), "quote", "")
        text = text.strip()
        if pictures:
            text = (text + "\n" if text else "") + " ".join("[picture]" for _ in pictures)
        return text or QUOTE_UNAVAILABLE
    if kind == "picture":
        return "[picture]"
    if kind == "file":
        name = _str(content, "fileName", "repliedMsg.content.fileName")
        return f"[file: {name}]" if name else "[file]"
    if kind in ("audio", "video"):
        said = _str(content, "recognition", "repliedMsg.content.recognition").strip()
        return f"[{kind}: {said}]" if said else f"[{kind}]"
    quoted = content.get("text")
    if isinstance(quoted, str) and quoted.strip():
        return quoted.strip()
    return QUOTE_UNAVAILABLE


def _quote(holder: dict[str, Any] | None) -> Quote | None:
    """The quoted message from ``text`` or ``content``; only ``isReplyMsg: true`` marks a quote.

    A quote is context, not the message: when its shape is unexpected it degrades to
    "quoted content unavailable" instead of rejecting the whole message.
    """
    if holder is None or holder.get("isReplyMsg") not in (True, "true"):
        return None
    replied = holder.get("repliedMsg")
    if not isinstance(replied, dict):
        return Quote(text=QUOTE_UNAVAILABLE, msgtype="unknown")
    kind = replied.get("msgType")
    kind = kind if isinstance(kind, str) and kind else "text"
    nick = replied.get("senderNick")
    nick = nick if isinstance(nick, str) else ""
    try:
        text = _quote_text(replied, kind)
    except FrameError:
        text = QUOTE_UNAVAILABLE
    return Quote(text=text, sender_name=nick, msgtype=kind)


def _media(content: dict[str, Any], kind: str, extra_keys: tuple[str, ...]) -> Attachment | None:
    code = _str(content, "downloadCode", "content.downloadCode")
    if not code and kind == "picture":
        code = _str(content, "pictureDownloadCode", "content.pictureDownloadCode")
    if not code:
        return None
    facts = {key: _str(content, key, f"content.{key}") for key in extra_keys}
    extra = tuple(sorted((key, value) for key, value in facts.items() if value))
    name = _str(content, "fileName", "content.fileName") if kind == "file" else ""
    return Attachment(kind=kind, download_code=code, file_name=name, extra=extra)


_MEDIA_FACTS: dict[str, tuple[str, ...]] = {
    "picture": (),
    "audio": ("duration",),
    "video": ("duration", "videoType"),
    "file": ("fileId", "spaceId"),
}


def _body(data: Mapping[str, Any], msgtype: str) -> tuple[str, list[Attachment], Quote | None, bool]:
    """Text, attachments, quote and ``unsupported`` for one msgtype."""
    if msgtype == "text":
        text_obj = _obj(data, "text", "text")
        if text_obj is None:
            return "", [], None, False
        return _str(text_obj, "content", "text.content").lstrip(), [], _quote(text_obj), False

    if msgtype not in SUPPORTED_MSGTYPES:
        return "", [], None, True
    content = _obj(data, "content", "content")
    if content is None:
        raise FrameError(f"{msgtype} message has no content")
    if msgtype == "richText":
        items = _list(content, "richText", "content.richText")
        text, codes = _rich_text(items, "content.richText", _str(data, "chatbotUserId"))
        pictures = [Attachment(kind="picture", download_code=code) for code in codes]
        return text.strip(), pictures, _quote(content), False
    attachment = _media(content, msgtype, _MEDIA_FACTS[msgtype])
    attachments = [attachment] if attachment else []
    text = _str(content, "recognition", "content.recognition").strip() if msgtype == "audio" else ""
    # A media message without a download code (and no transcript) is unreadable, not empty.
    return text, attachments, _quote(content), not (attachments or text)


def _mentions(data: Mapping[str, Any]) -> tuple[Mention, ...]:
    """``atUsers`` minus the robot: the entry equal to ``chatbotUserId`` or, when that is unknown,
    entries without a ``staffId`` (the robot's entry never has one)."""
    bot_user_id = _str(data, "chatbotUserId")
    found: list[Mention] = []
    for index, entry in enumerate(_list(data, "atUsers", "atUsers")):
        if not isinstance(entry, dict):
            raise FrameError(f"atUsers[{index}] is not an object")
        dingtalk_id = _str(entry, "dingtalkId", f"atUsers[{index}].dingtalkId")
        staff_id = _str(entry, "staffId", f"atUsers[{index}].staffId")
        if not dingtalk_id and not staff_id:
            continue
        is_bot = dingtalk_id == bot_user_id if bot_user_id else not staff_id
        if is_bot:
            continue
        found.append(Mention(dingtalk_id=dingtalk_id, staff_id=staff_id))
    return tuple(found)


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
) -> Message:
    """Convert a decoded robot callback into a :class:`Message`, or raise :class:`FrameError`.
    ``scrubbed``: ``data`` comes from :func:`decode_payload`, its lone surrogates already replaced."""
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
    text, attachments, quote, unsupported = _body(data, msgtype)
    if is_group and bot_mentioned:
        text = _strip_leading_mention(text)

    route = _route(data, robot, conversation_id, is_group, sender)
    return Message(
        id=msg_id,
        robot=robot,
        conversation=Conversation(
            id=conversation_id, is_group=is_group, title=_str(data, "conversationTitle")
        ),
        sender=sender,
        text=text,
        msgtype=msgtype,
        bot_mentioned=bot_mentioned,
        mentions=_mentions(data),
        created_at=_epoch_s(data, "createAt"),
        route=route,
        attachments=tuple(attachments),
        quote=quote,
        unsupported=unsupported,
        bot_corp_id=_str(data, "chatbotCorpId"),
        stream_message_id=stream_message_id,
    )
