"""What ``python`` and ``command`` agents may give as attachments, read into
:class:`~edgecrab.events.ReplyAttachment` items. The gateway checks and sends them
(:mod:`edgecrab.replies.attachments`); here only their shape is read.

* A ``python`` agent returns ``{"text": ..., "attachments": [...]}`` (or an
  :class:`~edgecrab.events.AgentResult` with ``attachments``), each item a ``ReplyAttachment``, a path
  (``str`` or :class:`pathlib.Path`), or a dict ``{"path": ... | "data": bytes, "name"?, "kind"?}`` (kind:
  ``image`` or ``file``).
* A ``command`` agent writes files into the folder named by ``attachments_dir`` in its stdin JSON (also in its
  environment as ``EDGECRAB_ATTACHMENTS_DIR``): after it exits 0, each regular file there, in name order, is
  an attachment named after the file. The folder is made for the run and removed after it, so its files are
  read here (each up to the size DingTalk takes; a larger one becomes a note).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgecrab.events import ReplyAttachment
from edgecrab.replies.attachments import MAX_BYTES, MAX_PER_REPLY


def from_python(items: Any) -> tuple[ReplyAttachment, ...]:
    """A python agent's ``attachments`` value; an entry edgecrab cannot read becomes one with ``error``."""
    if items is None:
        return ()
    if isinstance(items, (str, bytes, Mapping, ReplyAttachment, Path)) or not hasattr(items, "__iter__"):
        items = [items]
    return tuple(_one(item) for item in items)


def _one(item: Any) -> ReplyAttachment:
    if isinstance(item, ReplyAttachment):
        return item
    if isinstance(item, (str, os.PathLike)):
        return ReplyAttachment(path=os.fspath(item))
    if isinstance(item, Mapping):
        name, kind = item.get("name") or "", item.get("kind") or ""
        path, data = item.get("path") or "", item.get("data")
        if not isinstance(name, str) or not isinstance(kind, str) or not isinstance(path, (str, os.PathLike)):
            return ReplyAttachment(name=str(name), error="name, kind and path must be strings")
        if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
            return ReplyAttachment(name=name, error="data must be bytes")
        return ReplyAttachment(
            name=name, kind=kind, path=os.fspath(path), data=bytes(data) if data is not None else None
        )
    return ReplyAttachment(error=f"an attachment must be a path or a dict, not {type(item).__name__}")


def from_folder(folder: Path) -> tuple[ReplyAttachment, ...]:
    """The regular files a command agent left in ``folder``, in name order (symbolic links are skipped:
    they could point anywhere the gateway can read). Blocking: call it in a worker thread."""
    found: list[ReplyAttachment] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False):
            continue
        if len(found) >= MAX_PER_REPLY:
            found.append(ReplyAttachment(name=entry.name))  # only named, in the "not sent" note
            continue
        size = entry.stat(follow_symlinks=False).st_size
        if size > MAX_BYTES:
            found.append(
                ReplyAttachment(
                    name=entry.name, error=f"it is {size:,} bytes; DingTalk takes at most {MAX_BYTES:,}"
                )
            )
            continue
        with open(entry.path, "rb") as handle:
            found.append(ReplyAttachment(name=entry.name, data=handle.read(MAX_BYTES + 1)))
    return tuple(found)
