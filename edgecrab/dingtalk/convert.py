"""DingTalk robot callbacks -> platform-neutral events.

:func:`to_message` turns a decoded robot callback (``/v1.0/im/bot/messages/get``: a frame's ``data``, see
:mod:`edgecrab.dingtalk.frames`) into a :class:`~edgecrab.events.Message`. It is a pure function with no
I/O. Every defect in the payload (a missing field, a list where an object belongs) raises
:class:`~edgecrab.dingtalk.frames.FrameError` with a short ``reason``; nothing else escapes, so the caller
can log the reason and move on. :class:`Frame`, :class:`FrameError`, :func:`decode_data` and
:func:`decode_payload` are re-exported, so the ingest path can take decoding and conversion from here.

Mentions, the exact rule. A group message names people with ``@name`` runs (in ``text.content``, or
as richText items: ``{"type": "at", "atName", "atUserId"}`` or a text item holding ``@name``, which
HarmonyOS clients send for the robot itself), and ``atUsers`` lists whom it mentions. Only a run known
to be the robot's own is removed, never anything else, so the request always survives:

- an ``at`` item whose ``atUserId`` is ``chatbotUserId``;
- richText: when the ``@name`` runs are as many as ``atUsers`` entries (the client repeats every
  mention, the robot's included), they pair up in order and the run paired with the robot's entry
  goes (an ``at`` item's own id must agree with its pair, else nothing pairs);
- otherwise, in a message that mentions the robot and nobody else, a leading ``@name`` run (the
  user typed the robot's name, or the client repeated it).

A run is ``@`` followed by characters other than whitespace, ``@`` and ``/``, at the start, after
whitespace or right after another run: ``@Ann@EdgeCrab/help`` is two runs and the text ``/help``.
DingTalk itself removes the visible ``@robot`` from ``text`` messages. The other people mentioned are
``Message.mentions`` (ids from ``atUsers``, with the ``@name`` paired with each when the runs and the
entries line up). DMs are never touched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edgecrab.dingtalk.frames import Frame, FrameError, decode_data, decode_payload, scrub_surrogates
from edgecrab.events import Attachment, Conversation, Mention, Message, Part, Quote, ReplyRoute, Sender

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
SUPPORTED_MSGTYPES = frozenset(
    {"text", "richText", "picture", "audio", "video", "file", "chatRecord", "interactiveCard"}
)
"""Kinds read into text or attachments (a ``chatRecord`` or ``interactiveCard`` only when it has some)."""


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


# --------------------------------------------------------------------------- mentions and ordered bodies

_RUN = re.compile(r"@[^\s@/]+")


@dataclass(slots=True)
class _Piece:
    """A piece of a body before mentions are settled: ``text``, ``at`` (an ``@name`` run) or ``picture``."""

    kind: str
    text: str = ""
    """The text, or an ``at`` run's name without its ``@``."""
    user_id: str = ""
    """``atUserId`` of a structured richText ``at`` item; empty for a run found in text."""
    code: str = ""
    robot: bool = False
    """The robot's own mention: left out of the body."""


@dataclass(frozen=True, slots=True)
class _AtUser:
    dingtalk_id: str
    staff_id: str
    is_bot: bool

    def has(self, user_id: str) -> bool:
        return user_id in (self.dingtalk_id, self.staff_id)


def _split_runs(text: str) -> list[_Piece]:
    """Text as text and ``@name`` pieces; a run starts the text, follows whitespace or follows a run."""
    pieces: list[_Piece] = []
    pos = 0
    last_end = -1
    for match in _RUN.finditer(text):
        start = match.start()
        if start and not text[start - 1].isspace() and start != last_end:
            continue  # a@b.c: not a mention
        if start > pos:
            pieces.append(_Piece("text", text[pos:start]))
        pieces.append(_Piece("at", match.group()[1:]))
        pos = last_end = match.end()
    if pos < len(text):
        pieces.append(_Piece("text", text[pos:]))
    return pieces


def _rich_pieces(items: list[Any], where: str) -> list[_Piece]:
    """richText items in display order. Items come as ``{type, text}`` or as DingTalk's own
    ``{msgType, content}``; emoji, links and other kinds carry no text we can trust and are skipped."""
    pieces: list[_Piece] = []
    for index, item in enumerate(items):
        here = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise FrameError(f"{here} is not an object")
        kind = _str(item, "type", f"{here}.type") or _str(item, "msgType", f"{here}.msgType")
        text = _str(item, "text", f"{here}.text")
        if not text and isinstance(item.get("content"), str):
            text = item["content"]
        looks_like_picture = not text and ("downloadCode" in item or "pictureDownloadCode" in item)
        if kind == "picture" or (not kind and looks_like_picture):
            code = _str(item, "downloadCode", f"{here}.downloadCode") or _str(
                item, "pictureDownloadCode", f"{here}.pictureDownloadCode"
            )
            pieces.append(_Piece("picture", code=code))
        elif kind == "at":
            name = _str(item, "atName", f"{here}.atName") or text.strip().lstrip("@")
            pieces.append(_Piece("at", name, user_id=_str(item, "atUserId", f"{here}.atUserId")))
        elif kind in ("", "text"):
            pieces.extend(_split_runs(text))
    return pieces


def _settle_mentions(
    pieces: list[_Piece], at_users: list[_AtUser], bot_id: str, *, repeated: bool, bot_mentioned: bool
) -> dict[_AtUser, str]:
    """Mark the robot's own runs (the rule is in the module docstring) and name the other people.

    ``repeated``: the body repeats every mention, the robot's included (richText); a ``text`` body
    has lost the robot's, which DingTalk removes. Returns the name shown for each other person."""
    runs = [p for p in pieces if p.kind == "at"]
    others = [u for u in at_users if not u.is_bot]
    names: dict[_AtUser, str] = {}
    for run in runs:
        if run.user_id and bot_id and run.user_id == bot_id:
            run.robot = True
        elif run.user_id:
            for user in others:
                if user.has(run.user_id) and run.text:
                    names.setdefault(user, run.text)
    if (
        repeated
        and len(runs) == len(at_users)
        and all(not run.user_id or user.has(run.user_id) for run, user in zip(runs, at_users, strict=True))
    ):
        for run, user in zip(runs, at_users, strict=True):
            if user.is_bot:
                run.robot = True
            elif run.text:
                names.setdefault(user, run.text)
        return names
    typed = [run for run in runs if not run.user_id]
    unnamed = [user for user in others if user not in names]
    if typed and len(typed) == len(unnamed):
        for run, user in zip(typed, unnamed, strict=True):
            names[user] = run.text
    elif bot_mentioned and not others and not any(run.robot for run in runs):
        first = next((p for p in pieces if p.kind != "text" or p.text.strip()), None)
        if first is not None and first.kind == "at" and not first.user_id:
            first.robot = True
    return names


def _render(pieces: list[_Piece]) -> list[Part]:
    """The pieces minus the robot's runs, as ordered parts: text runs and pictures. A mention is
    spaced from its neighbours, as the client shows it, when the payload has no space there."""
    parts: list[Part] = []
    run = ""
    after_at = False
    for piece in pieces:
        if piece.robot:
            continue
        if piece.kind == "picture":
            if run.strip():
                parts.append(Part("text", run.strip()))
            run, after_at = "", False
            if piece.code:
                parts.append(Part("picture", download_code=piece.code))
            continue
        text = f"@{piece.text}" if piece.kind == "at" and piece.text else piece.text
        if not text:
            continue
        if (piece.kind == "at" or after_at) and run and not run[-1].isspace() and not text[0].isspace():
            text = " " + text
        run += text
        after_at = piece.kind == "at"
    if run.strip():
        parts.append(Part("text", run.strip()))
    return parts


def _joined(parts: list[Part], *, pictures: bool) -> str:
    """Text runs one per line; with ``pictures``, ``[picture]`` where each picture was."""
    return "\n".join(p.render() for p in parts if p.kind == "text" or pictures)


def _chat_record(content: dict[str, Any], where: str) -> str:
    """A forwarded conversation (``chatRecord``): its title, DingTalk's summary lines, and the
    records themselves when the payload carries them."""
    title = _str(content, "title", f"{where}.title").strip()
    summary = _str(content, "summary", f"{where}.summary").strip()
    lines = [f"[chat record: {title}]" if title else "[chat record]"]
    if summary and summary != "[]":
        lines.append(summary)
    records = content.get("chatRecord", content.get("records", content.get("messages")))
    for record in records if isinstance(records, list) else ():
        if not isinstance(record, dict):
            continue
        who = next((v for k in ("senderName", "senderNick") if isinstance(v := record.get(k), str) and v), "")
        said = record.get("content", record.get("text", record.get("message")))
        if isinstance(said, dict):
            said = said.get("text")
        if isinstance(said, str) and said.strip():
            lines.append(f"{who or '?'}: {said.strip()}")
    return "\n".join(lines) if len(lines) > 1 or title else ""


def _card(content: dict[str, Any], where: str) -> str:
    """A shared card (a DingTalk document, a link): its title and link; empty when it has neither."""
    title = next(
        (
            t
            for key in ("title", "biz_custom_title", "fileName")
            if (t := _str(content, key, f"{where}.{key}").strip())
        ),
        "",
    )
    link = next(
        (
            u
            for key in ("biz_custom_action_url", "url")
            if (u := _str(content, key, f"{where}.{key}").strip())
        ),
        "",
    )
    if link and not urlsplit(link).scheme:
        link = ""
    if not (title or link):
        return ""
    return "\n".join(filter(None, [f"[shared card: {title}]" if title else "[shared card]", link]))


def _quote_text(replied: dict[str, Any], kind: str) -> str:
    content = replied.get("content")
    if not isinstance(content, dict):
        return QUOTE_UNAVAILABLE
    if kind == "interactiveCard":
        return _card(content, "repliedMsg.content") or QUOTE_UNAVAILABLE
    if kind == "chatRecord":
        return _chat_record(content, "repliedMsg.content") or QUOTE_UNAVAILABLE
    if kind == "richText" or isinstance(content.get("richText"), list):
        items = _list(content, "richText", "repliedMsg.content.richText")
        parts = _render(_rich_pieces(items, "repliedMsg.content.richText"))
        return _joined(parts, pictures=True) or QUOTE_UNAVAILABLE
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


@dataclass(slots=True)
class _Body:
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    quote: Quote | None = None
    unsupported: bool = False
    parts: tuple[Part, ...] = ()
    names: dict[_AtUser, str] | None = None


@dataclass(frozen=True, slots=True)
class _Audience:
    """What mention handling needs to know about the message."""

    at_users: list[_AtUser]
    bot_id: str
    is_group: bool
    bot_mentioned: bool

    def settle(self, pieces: list[_Piece], *, repeated: bool) -> dict[_AtUser, str]:
        return _settle_mentions(
            pieces, self.at_users, self.bot_id, repeated=repeated, bot_mentioned=self.bot_mentioned
        )


def _body(data: Mapping[str, Any], msgtype: str, audience: _Audience) -> _Body:
    """Text, attachments, quote, ``unsupported``, ordered parts and the names of people mentioned."""
    if msgtype == "text":
        text_obj = _obj(data, "text", "text")
        if text_obj is None:
            return _Body()
        said = _str(text_obj, "content", "text.content")
        if not audience.is_group:
            return _Body(said.lstrip(), quote=_quote(text_obj))
        pieces = _split_runs(said)
        names = audience.settle(pieces, repeated=False)
        return _Body(_joined(_render(pieces), pictures=False), quote=_quote(text_obj), names=names)

    if msgtype not in SUPPORTED_MSGTYPES:
        return _Body(unsupported=True)
    if msgtype == "interactiveCard":  # a shared document or link; bare cards stay unreadable
        card = data.get("content")
        text = _card(card, "content") if isinstance(card, dict) else ""
        return _Body(text, unsupported=not text)
    content = _obj(data, "content", "content")
    if content is None:
        raise FrameError(f"{msgtype} message has no content")
    if msgtype == "chatRecord":
        text = _chat_record(content, "content")
        return _Body(text, quote=_quote(content), unsupported=not text)
    if msgtype == "richText":
        pieces = _rich_pieces(_list(content, "richText", "content.richText"), "content.richText")
        names = audience.settle(pieces, repeated=True) if audience.is_group else {}
        parts = _render(pieces)
        pictures = tuple(
            Attachment(kind="picture", download_code=p.download_code) for p in parts if p.kind == "picture"
        )
        return _Body(
            _joined(parts, pictures=False), pictures, _quote(content), parts=tuple(parts), names=names
        )
    attachment = _media(content, msgtype, _MEDIA_FACTS[msgtype])
    attachments = (attachment,) if attachment else ()
    text = _str(content, "recognition", "content.recognition").strip() if msgtype == "audio" else ""
    # A media message without a download code (and no transcript) is unreadable, not empty.
    return _Body(text, attachments, _quote(content), unsupported=not (attachments or text))


def _at_users(data: Mapping[str, Any]) -> list[_AtUser]:
    """``atUsers`` in order; the robot's entry is the one equal to ``chatbotUserId`` or, when that is
    unknown, any entry without a ``staffId`` (the robot's entry never has one)."""
    bot_user_id = _str(data, "chatbotUserId")
    found: list[_AtUser] = []
    for index, entry in enumerate(_list(data, "atUsers", "atUsers")):
        if not isinstance(entry, dict):
            raise FrameError(f"atUsers[{index}] is not an object")
        dingtalk_id = _str(entry, "dingtalkId", f"atUsers[{index}].dingtalkId")
        staff_id = _str(entry, "staffId", f"atUsers[{index}].staffId")
        if not dingtalk_id and not staff_id:
            continue
        is_bot = dingtalk_id == bot_user_id if bot_user_id else not staff_id
        found.append(_AtUser(dingtalk_id, staff_id, is_bot))
    return found


def _mentions(at_users: list[_AtUser], names: dict[_AtUser, str]) -> tuple[Mention, ...]:
    """The people mentioned other than the robot, with the names the message showed for them."""
    return tuple(
        Mention(dingtalk_id=u.dingtalk_id, staff_id=u.staff_id, name=names.get(u, ""))
        for u in at_users
        if not u.is_bot
    )


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
    at_users = _at_users(data)
    body = _body(data, msgtype, _Audience(at_users, _str(data, "chatbotUserId"), is_group, bot_mentioned))

    route = _route(data, robot, conversation_id, is_group, sender)
    return Message(
        id=msg_id,
        robot=robot,
        conversation=Conversation(
            id=conversation_id, is_group=is_group, title=_str(data, "conversationTitle")
        ),
        sender=sender,
        text=body.text,
        msgtype=msgtype,
        bot_mentioned=bot_mentioned,
        mentions=_mentions(at_users, body.names or {}),
        created_at=_epoch_s(data, "createAt"),
        route=route,
        attachments=body.attachments,
        quote=body.quote,
        unsupported=body.unsupported,
        bot_corp_id=_str(data, "chatbotCorpId"),
        stream_message_id=stream_message_id,
        parts=body.parts,
    )
