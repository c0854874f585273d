"""Message bodies, one reader per ``msgtype``: what the agent is given for each kind of message.

:func:`read_body` reads the body of a robot callback into text, attachments, a quote and ordered parts:
``text`` and ``richText`` (with mentions settled by :mod:`~edgecrab.dingtalk.mentions`), media
(``picture``, ``audio``, ``video``, ``file`` as attachments, an audio transcript as text), forwarded chat
records, shared cards, and the message a reply quotes. A kind it cannot read is ``unsupported``, never an
error; a body of the wrong shape raises :class:`~edgecrab.dingtalk.frames.FrameError`, except in a quote,
which is context and degrades to :data:`QUOTE_UNAVAILABLE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edgecrab.dingtalk.fields import list_of as _list
from edgecrab.dingtalk.fields import obj as _obj
from edgecrab.dingtalk.fields import string as _str
from edgecrab.dingtalk.frames import FrameError
from edgecrab.dingtalk.mentions import AtUser, Audience, joined, render, rich_pieces, split_runs
from edgecrab.events import Attachment, Part, Quote

__all__ = ["QUOTE_UNAVAILABLE", "SUPPORTED_MSGTYPES", "Body", "read_body"]

QUOTE_UNAVAILABLE = "quoted content unavailable"
SUPPORTED_MSGTYPES = frozenset(
    {"text", "richText", "picture", "audio", "video", "file", "chatRecord", "interactiveCard"}
)
"""Kinds read into text or attachments (a ``chatRecord`` or ``interactiveCard`` only when it has some)."""


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
        parts = render(rich_pieces(items, "repliedMsg.content.richText"))
        return joined(parts, pictures=True) or QUOTE_UNAVAILABLE
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
    return Quote(text=text, sender_name=nick, msgtype=kind, attachments=_quoted_media(replied, kind))


def _quoted_media(replied: dict[str, Any], kind: str) -> tuple[Attachment, ...]:
    """The download codes in a quoted message: its picture, file, voice or video, its richText pictures."""
    content = replied.get("content")
    if not isinstance(content, dict):
        return ()
    try:
        if kind in _MEDIA_FACTS:
            found = _media(content, kind, ())
            return (found,) if found else ()
        items = content.get("richText")
        if isinstance(items, list):
            codes = (
                _str(i, "downloadCode", "richText") or _str(i, "pictureDownloadCode", "richText")
                for i in items
                if isinstance(i, dict) and i.get("type") == "picture"
            )
            return tuple(Attachment(kind="picture", download_code=c) for c in codes if c)
    except FrameError:
        pass
    return ()


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
    "audio": ("duration", "fileExtension"),
    "video": ("duration", "videoType"),
    "file": ("fileId", "spaceId"),
}


@dataclass(slots=True)
class Body:
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    quote: Quote | None = None
    unsupported: bool = False
    parts: tuple[Part, ...] = ()
    names: dict[AtUser, str] | None = None


def read_body(data: Mapping[str, Any], msgtype: str, audience: Audience) -> Body:
    """Text, attachments, quote, ``unsupported``, ordered parts and the names of people mentioned."""
    if msgtype == "text":
        text_obj = _obj(data, "text", "text")
        if text_obj is None:
            return Body()
        said = _str(text_obj, "content", "text.content")
        if not audience.is_group:
            return Body(said.lstrip(), quote=_quote(text_obj))
        pieces = split_runs(said)
        names = audience.settle(pieces, repeated=False)
        return Body(joined(render(pieces), pictures=False), quote=_quote(text_obj), names=names)

    if msgtype not in SUPPORTED_MSGTYPES:
        return Body(unsupported=True)
    if msgtype == "interactiveCard":  # a shared document or link; bare cards stay unreadable
        card = data.get("content")
        text = _card(card, "content") if isinstance(card, dict) else ""
        return Body(text, unsupported=not text)
    content = _obj(data, "content", "content")
    if content is None:
        raise FrameError(f"{msgtype} message has no content")
    if msgtype == "chatRecord":
        text = _chat_record(content, "content")
        return Body(text, quote=_quote(content), unsupported=not text)
    if msgtype == "richText":
        pieces = rich_pieces(_list(content, "richText", "content.richText"), "content.richText")
        names = audience.settle(pieces, repeated=True) if audience.is_group else {}
        parts = render(pieces)
        pictures = tuple(
            Attachment(kind="picture", download_code=p.download_code) for p in parts if p.kind == "picture"
        )
        return Body(joined(parts, pictures=False), pictures, _quote(content), parts=tuple(parts), names=names)
    attachment = _media(content, msgtype, _MEDIA_FACTS[msgtype])
    attachments = (attachment,) if attachment else ()
    text = _str(content, "recognition", "content.recognition").strip() if msgtype == "audio" else ""
    # A media message without a download code (and no transcript) is unreadable, not empty.
    return Body(text, attachments, _quote(content), unsupported=not (attachments or text))
