"""What the agent is given for a message with media: OpenAI content parts, or text with notes.

A message becomes a list of *pieces* in display order: the quote and who else was mentioned (as
:meth:`~edgecrab.events.Message.agent_text` words them), the quoted message's media, then the body: a
richText's text runs and pictures where the sender put them, or the attachments and then the text. Each
attachment becomes:

- a picture: an ``image_url`` part with a base64 data URL when the agent is the ``openai`` one and
  ``agent.vision`` is on (scaled down with Pillow above ``media.max_image_pixels``, and converted to JPEG or
  PNG when the model may not read its format), else a note;
- a voice note: a short marker; its text is DingTalk's transcript (``recognition``), already the text;
- a text-like file (txt, md, csv, json, yaml, source code) or a PDF (its text, by pypdf): inlined up to
  ``media.inline_text_bytes``, with its name; other files and videos: a note with name, type and size;
- a file that could not be downloaded: a note saying why.

The request's content is a plain string unless there is a picture to show (servers without vision, such as
DeepSeek's, refuse a list of parts). What is stored in the history is what the agent saw: the same string,
or the parts with each picture as a reference to its kept file (:data:`STORED_PREFIX` + JSON), turned back
into a data URL for later requests without downloading again; once the file is deleted (``keep_hours``),
a note takes its place. Pillow, pypdf and base64 run in worker threads (at most
:func:`~edgecrab.media.images.work_limiter` at once): a 5 MB photo costs about 200 ms of CPU, which must not
stall the event loop that acks messages.

**Ahead of the turn.** :meth:`Renderer.prepare` does a downloaded picture's work (scaled down, base64) as
soon as it is downloaded, while the message still waits (in the merge window, or in its session's queue);
:meth:`Renderer.render` takes those results (``ready``) and does only what is left.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgecrab.config import MediaConfig
from edgecrab.events import Attachment, Message
from edgecrab.media.fetch import human_size
from edgecrab.media.images import data_url, in_worker, vision_picture
from edgecrab.media.text import TEXT_LIKE, pdf_text, read_text

log = logging.getLogger("edgecrab.media")

STORED_PREFIX = "\x1eedgecrab-parts:"
"""Starts a stored user turn that holds content parts (JSON) rather than plain text."""
Piece = dict[str, Any]
"""``{"type": "text", "text": ...}`` or ``{"type": "image_file", "path": ..., "mime": ...}`` (and, while a
turn is rendered, ``"url"``: its data URL when already made; never stored)."""


@dataclass(slots=True)
class Rendered:
    content: str | list[dict[str, Any]]
    """The user turn's ``content`` in the request."""
    stored: str
    """What the history keeps (:data:`STORED_PREFIX` + JSON when the turn has pictures)."""
    attachments: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A picture's work done ahead of its turn (:meth:`Renderer.prepare`)."""

    path: str = ""
    """The picture to send (the original, or its smaller copy); ``""``: Pillow could not read it."""
    mime: str = ""
    url: str = ""
    """Its base64 data URL."""


class Renderer:
    def __init__(self, config: MediaConfig, *, vision: bool, parts: bool) -> None:
        """``parts``: the agent reads OpenAI content parts (``openai``); ``vision``: pictures as well."""
        self.config, self.vision, self.parts = config, vision, parts

    async def prepare(self, att: Attachment) -> Prepared | None:
        """The work to show a downloaded picture, done now; ``None`` when this agent is not shown it."""
        if att.kind != "picture" or not att.path or not (self.parts and self.vision):
            return None
        try:
            made = await in_worker(vision_picture, att.path, att.mime, self.config.max_image_pixels)
        except Exception as exc:  # not a picture Pillow can read, or a damaged one
            log.warning("[media] picture %s cannot be shown: %s: %s", att.file_name, type(exc).__name__, exc)
            return Prepared()
        return Prepared(*made)

    async def render(self, message: Message, ready: Mapping[str, Prepared] | None = None) -> Rendered:
        """``ready``: pictures :meth:`prepare` did already, by their downloaded file's path."""
        ready = ready or {}
        pieces: list[Piece] = []
        context = message.replace(text="", parts=(), attachments=()).agent_text()
        if context:
            pieces.append(_text(context))
        if message.quote is not None:
            for att in message.quote.attachments:
                pieces += await self._attachment(att, ready, quoted=True)
        pieces += await self._body(message, ready)
        every = [*(message.quote.attachments if message.quote else ()), *message.attachments]
        stored = _merge(pieces)
        return Rendered(
            content=await self.content_of(stored),
            stored=_store(stored),
            attachments=[a.describe() for a in every],
        )

    async def _body(self, message: Message, ready: Mapping[str, Prepared]) -> list[Piece]:
        pieces: list[Piece] = []
        runs = "\n".join(p.text for p in message.parts if p.kind == "text" and p.text)
        if message.parts and message.text == runs:
            unused = list(message.attachments)
            for part in message.parts:
                if part.kind == "text":
                    pieces.append(_text(part.text))
                    continue
                att = next((a for a in unused if a.download_code == part.download_code), None)
                if att is not None:
                    unused.remove(att)
                    pieces += await self._attachment(att, ready)
            for att in unused:
                pieces += await self._attachment(att, ready)
            return pieces
        for att in message.attachments:
            pieces += await self._attachment(att, ready)
        if message.text:
            pieces.append(_text(message.text))
        return pieces

    async def _attachment(
        self, att: Attachment, ready: Mapping[str, Prepared], *, quoted: bool = False
    ) -> list[Piece]:
        label = "the quoted message's " if quoted else ""
        if not att.path:
            why = f": {att.note}" if att.note else ""
            return [_text(f"[{label}{att.kind}{_name(att)} could not be downloaded{why}]")]
        if att.kind == "picture":
            return await self._picture(att, label, ready.get(att.path))
        if att.kind == "audio":
            return [_text(f"[{label}voice message{_duration(att)}; DingTalk's transcript is the text]")]
        if att.kind == "file":
            return [_text(await self._file(att, label))]
        return [_text(f"[{label}{att.kind}: {att.file_name} ({att.mime}, {human_size(att.size)})]")]

    async def _picture(self, att: Attachment, label: str, prepared: Prepared | None) -> list[Piece]:
        if not self.parts:
            return [_text(f"[{label}picture: {att.file_name} ({att.mime}, {human_size(att.size)})]")]
        if not self.vision:
            return [_text(f"[{label}picture: the user sent a picture; this agent cannot see pictures]")]
        prepared = prepared or await self.prepare(att)
        if prepared is None or not prepared.path:
            return [_text(f"[{label}picture: could not be read as an image ({att.mime})]")]
        return [{"type": "image_file", "path": prepared.path, "mime": prepared.mime, "url": prepared.url}]

    async def _file(self, att: Attachment, label: str) -> str:
        head = f"[{label}file: {att.file_name} ({att.mime}, {human_size(att.size)})]"
        limit = self.config.inline_text_bytes
        if not limit:
            return head
        try:
            if att.mime in TEXT_LIKE or att.mime.startswith("text/"):
                text, cut = await in_worker(read_text, att.path, limit)
            elif att.mime == "application/pdf":
                text, cut = await in_worker(pdf_text, att.path, limit)
            else:
                return head
        except Exception as exc:
            log.warning("[media] text of %s not read: %s: %s", att.file_name, type(exc).__name__, exc)
            return head
        if not text.strip():
            return head
        note = f"\n(only the first {human_size(limit)} are shown)" if cut else ""
        return f"{head}\n```\n{text}\n```{note}"

    async def content_of(self, pieces: list[Piece]) -> str | list[dict[str, Any]]:
        """The request's content for ``pieces``: a string, or parts with the pictures as data URLs."""
        if not self.parts or not any(p["type"] == "image_file" for p in pieces):
            return "\n\n".join(p.get("text", "[picture]") for p in pieces)
        parts: list[dict[str, Any]] = []
        for piece in pieces:
            if piece["type"] == "text":
                parts.append(piece)
                continue
            url = piece.get("url") or await in_worker(data_url, piece["path"], piece["mime"])
            if url:
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                parts.append(_text("[a picture sent earlier; it is no longer kept]"))
        return parts

    async def stored_content(self, stored: str) -> str | list[dict[str, Any]]:
        """A history turn's content: text as stored, or parts again (pictures read from their files)."""
        if not stored.startswith(STORED_PREFIX):
            return stored
        try:
            pieces = json.loads(stored[len(STORED_PREFIX) :])
        except ValueError:
            return ""
        return await self.content_of(pieces)


def _text(text: str) -> Piece:
    return {"type": "text", "text": text}


def _merge(pieces: list[Piece]) -> list[Piece]:
    """Neighbouring text pieces as one."""
    merged: list[Piece] = []
    for piece in pieces:
        if piece["type"] == "text" and not piece["text"]:
            continue
        if piece["type"] == "text" and merged and merged[-1]["type"] == "text":
            merged[-1] = _text(merged[-1]["text"] + "\n\n" + piece["text"])
        else:
            merged.append(piece)
    return merged


def _store(pieces: list[Piece]) -> str:
    if any(p["type"] == "image_file" for p in pieces):
        kept = [{k: v for k, v in p.items() if k != "url"} for p in pieces]
        return STORED_PREFIX + json.dumps(kept, ensure_ascii=False)
    return "\n\n".join(p["text"] for p in pieces)


def _name(att: Attachment) -> str:
    return f" {att.file_name}" if att.file_name else ""


def _duration(att: Attachment) -> str:
    """``, 4 s``. DingTalk's ``duration`` is in seconds in its documentation's samples and in milliseconds
    in its SDKs (``4000``); a voice note lasts at most 60 s, so a value above 600 is milliseconds."""
    value = dict(att.extra).get("duration", "")
    if not value.isdigit():
        return ""
    seconds = int(value)
    return f", {round(seconds / 1000) if seconds > 600 else seconds} s"


__all__ = ["STORED_PREFIX", "Prepared", "Rendered", "Renderer"]
