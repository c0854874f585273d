"""Pictures and files an agent sends with its answer, from the agent's result to the delivery ledger.

An agent returns :class:`~edgecrab.events.ReplyAttachment` items (a local path or bytes, a name, a kind).
:meth:`AttachmentSpool.admit` checks each one and copies it into the spool folder of the state directory
(``<state dir>/attachments``: the folder 0700, each file 0600 and named by a random id), so that a restart
between the answer's text and its attachments neither loses them (the copy is still there, whatever the
agent did with its own file) nor sends one twice (its ledger row says whether it went).

Each attachment becomes one ledger row right after the answer's text rows, in the same reply: its ``text``
is :data:`MARKER` followed by a small JSON object naming the spool file, its kind, name and size
(:func:`row_text`, :func:`read_row`), which the sender (:mod:`edgecrab.dingtalk.attachsend`) recognises,
uploads and sends as a picture or a file. The random id is the only handle to a spooled file and never leaves
the gateway, so a reply text that happens to begin with the marker names no file (it is sent as a note).

What cannot be sent (a missing file, an empty or too big one, a path outside ``agent.attachment_dirs``,
more than :data:`MAX_PER_REPLY`) becomes a short note to the user in the same place, and a log line.
:meth:`AttachmentSpool.sweep` deletes the spool files no pending ledger row refers to any more (delivered,
cancelled, or copied for a run that never finished), once a minute.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mimetypes
import os
import re
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from edgecrab.events import Message, ReplyAttachment, ReplyRoute
from edgecrab.replies.format import Format, PreparedReply, conversation_key, new_reply_id
from edgecrab.store.base import PENDING, OutboxChunk, Store

log = logging.getLogger("edgecrab.replies.attachments")

MARKER = "\x00edgecrab-attachment:"
"""How a ledger row that is an attachment begins (a NUL: no formatted reply text starts with one)."""
MAX_BYTES = 20 * 1024 * 1024
"""DingTalk's ``media/upload`` takes images and files of up to 20 MB."""
MAX_PER_REPLY = 10
"""Attachments sent with one answer; the rest are named in a note."""
KINDS = ("image", "file")
SWEEP_EVERY_S = 60.0
SWEEP_GRACE_S = 120.0
"""A spool file younger than this is kept even when no pending row names it yet (its run is finishing)."""
_ID = re.compile(r"[0-9a-f]{32}")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


@dataclass(frozen=True, slots=True)
class SpooledAttachment:
    """An attachment copied into the spool: what its ledger row records."""

    file: str
    """The spool file's random id (its name in the spool folder)."""
    name: str
    kind: str
    size: int
    mime: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def sniff_image(head: bytes) -> str:
    """The MIME type of a picture DingTalk shows as an image (JPEG, PNG, GIF, BMP), or ``""``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"BM"):
        return "image/bmp"
    return ""


def row_text(spooled: SpooledAttachment) -> str:
    return MARKER + json.dumps(spooled.as_dict(), ensure_ascii=False, separators=(",", ":"))


def read_row(text: str) -> SpooledAttachment | None | str:
    """The attachment a ledger row's text names; None for an ordinary text row; a short reason (str) for a
    row that begins with the marker but names nothing usable."""
    if not text.startswith(MARKER):
        return None
    try:
        data = json.loads(text[len(MARKER) :])
        spooled = SpooledAttachment(
            str(data["file"]), str(data["name"]), str(data["kind"]), int(data["size"]), str(data["mime"])
        )
    except (ValueError, KeyError, TypeError):
        return "the attachment's ledger row is unreadable"
    if not _ID.fullmatch(spooled.file) or spooled.kind not in KINDS:
        return "the attachment's ledger row is unreadable"
    return spooled


def safe_name(name: str, fallback: str) -> str:
    """A file name fit to show: its last path part, no control characters, at most 100 characters."""
    name = _UNSAFE_NAME.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return (name or fallback)[-100:]


class AttachmentSpool:
    """The spool folder, the checks an attachment passes before it is copied there, and its cleaning."""

    def __init__(self, folder: Path | None, allowed_dirs: Sequence[Path] = ()) -> None:
        """``folder``: where copies are kept (None: a temporary folder, removed by :meth:`close`);
        ``allowed_dirs``: where an attachment's path may point (empty: the system's temporary folder)."""
        self._temp = tempfile.TemporaryDirectory(prefix="edgecrab-spool-") if folder is None else None
        self.folder: Path = Path(self._temp.name) if self._temp is not None else Path(str(folder))
        self.allowed = tuple(Path(os.path.realpath(d)) for d in allowed_dirs or (tempfile.gettempdir(),))
        self._ready = False

    def close(self) -> None:
        if self._temp is not None:
            self._temp.cleanup()

    def path(self, spooled: SpooledAttachment) -> Path:
        return self.folder / spooled.file

    def _prepare_folder(self) -> None:
        if not self._ready:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.folder, 0o700)
            self._ready = True

    # -- admitting ---------------------------------------------------------------------------------
    async def admit(self, attachment: ReplyAttachment) -> SpooledAttachment | str:
        """``attachment`` copied into the spool, or the note to send instead (a str)."""
        label = safe_name(attachment.name or attachment.path, "attachment")
        try:
            return await anyio.to_thread.run_sync(self._admit, attachment, label)
        except OSError as exc:
            log.warning("[attachments] %s cannot be read: %s", label, exc.strerror or exc)
            return f"⚠️ {label} was not sent: it cannot be read ({exc.strerror or type(exc).__name__})."

    def _admit(self, attachment: ReplyAttachment, label: str) -> SpooledAttachment | str:
        if attachment.error:
            return self._refused(label, attachment.error)
        if attachment.kind not in ("", *KINDS):
            return self._refused(label, f"kind {attachment.kind!r} is not image or file")
        data = attachment.data
        if data is None:
            if not attachment.path:
                return self._refused(label, "it has neither a path nor data")
            problem, data = self._read_path(attachment.path)
            if data is None:
                return self._refused(label, problem)
        if not data:
            return self._refused(label, "it is empty")
        if len(data) > MAX_BYTES:
            return self._refused(label, f"it is {len(data):,} bytes; DingTalk takes at most {MAX_BYTES:,}")
        mime = sniff_image(data[:16])
        kind = attachment.kind or ("image" if mime else "file")
        if kind == "image" and not mime:
            log.info("[attachments] %s is not a JPEG, PNG, GIF or BMP picture: sent as a file", label)
            kind = "file"
        self._prepare_folder()
        spooled = SpooledAttachment(secrets.token_hex(16), label, kind, len(data), mime or _file_mime(label))
        fd = os.open(self.path(spooled), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return spooled

    def _read_path(self, raw: str) -> tuple[str, bytes | None]:
        """The bytes at ``raw`` when it may be sent, else ``(reason, None)``."""
        real = Path(os.path.realpath(raw))
        if not any(real.is_relative_to(d) for d in self.allowed):
            return "its path is outside agent.attachment_dirs", None
        spool = Path(os.path.realpath(self.folder))
        if real.is_relative_to(spool) or real.parent == spool.parent:  # the spool; the database and its kin
            return "its path is in the gateway's own state directory", None
        if not real.exists():
            return "the file does not exist", None
        if not real.is_file():
            return "it is not a regular file", None
        size = real.stat().st_size
        if size > MAX_BYTES:
            return f"it is {size:,} bytes; DingTalk takes at most {MAX_BYTES:,}", None
        with real.open("rb") as handle:
            return "", handle.read(MAX_BYTES + 1)

    @staticmethod
    def _refused(label: str, reason: str) -> str:
        log.warning("[attachments] %s not sent: %s", label, reason)
        return f"⚠️ {label} was not sent: {reason}."

    # -- ledger rows -------------------------------------------------------------------------------
    async def add_rows(
        self,
        prepared: PreparedReply | None,
        fmt: Format,
        route: ReplyRoute,
        attachments: Sequence[ReplyAttachment],
        *,
        session_key: str,
        message: Message | None = None,
    ) -> PreparedReply | None:
        """``prepared`` (the answer's text rows, or None) followed by a row for each attachment."""
        items: list[SpooledAttachment | str] = [await self.admit(a) for a in attachments[:MAX_PER_REPLY]]
        if len(attachments) > MAX_PER_REPLY:
            left = ", ".join(safe_name(a.name or a.path, "attachment") for a in attachments[MAX_PER_REPLY:])
            items.append(f"⚠️ Only {MAX_PER_REPLY} attachments go with one answer; not sent: {left}.")
            log.warning(
                "[attachments] %d over the limit of %d not sent: %s",
                len(attachments) - MAX_PER_REPLY,
                MAX_PER_REPLY,
                left,
            )
        if not items:
            return prepared
        base = prepared.chunks if prepared is not None else []
        reply_id = prepared.reply_id if prepared is not None else new_reply_id()
        ckey, route_dict = conversation_key(route), route.to_dict()
        total = len(base) + len(items)
        rows = [dataclasses.replace(c, total=total) for c in base]
        now = time.time()
        for i, item in enumerate(items, start=len(base)):
            if isinstance(item, SpooledAttachment):
                text, title = row_text(item), item.name
            else:
                text, title = fmt.render(item), fmt.title(item)
            rows.append(
                OutboxChunk(
                    reply_id=reply_id,
                    index=i,
                    total=total,
                    conversation_key=ckey,
                    route=route_dict,
                    text=text,
                    mention=False,
                    title=title,
                    state=PENDING,
                    created_at=now,
                    session_key=session_key,
                )
            )
        text = prepared.text if prepared is not None else ""
        message = prepared.message if prepared is not None else message
        return PreparedReply(reply_id, ckey, rows, text, message)

    # -- cleaning ----------------------------------------------------------------------------------
    async def sweep(self, store: Store, now: float | None = None) -> int:
        """Delete spool files no pending ledger row names (and older than :data:`SWEEP_GRACE_S`)."""
        if not self._ready and not self.folder.is_dir():
            return 0  # nothing was ever spooled
        pending = await store.outbox_pending()
        wanted = {r.file for c in pending if isinstance(r := read_row(c.text), SpooledAttachment)}
        horizon = (time.time() if now is None else now) - SWEEP_GRACE_S
        return await anyio.to_thread.run_sync(self._sweep, wanted, horizon)

    def _sweep(self, wanted: set[str], horizon: float) -> int:
        removed = 0
        if not self.folder.is_dir():
            return 0
        for entry in os.scandir(self.folder):
            if _ID.fullmatch(entry.name) and entry.name not in wanted:
                try:
                    if entry.stat().st_mtime < horizon:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    async def run(self, store: Store) -> None:
        """:meth:`sweep` every :data:`SWEEP_EVERY_S` seconds, for as long as the gateway runs."""
        try:
            while True:
                await anyio.sleep(SWEEP_EVERY_S)
                try:
                    removed = await self.sweep(store)
                except Exception:
                    log.exception("[attachments] cleaning the spool failed")
                else:
                    if removed:
                        log.info("[attachments] %d delivered attachment file(s) deleted", removed)
        finally:
            self.close()


def _file_mime(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"
