"""Where downloaded files live: one directory (0700), one file per download (0600), deleted after
``media.keep_hours``.

File names are a random prefix and the sender's file name with anything but letters, digits, ``.``, ``-``
and ``_`` replaced, so a name from a message can never leave the directory. The MIME type is read from the
bytes (``filetype``, pure Python, magic numbers only); a file it does not know is ``text/...`` when it is
valid UTF-8 (by its name's extension, else ``text/plain``), else ``application/octet-stream``.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import secrets
import time
from pathlib import Path

import filetype

log = logging.getLogger("edgecrab.media")

_UNSAFE = re.compile(r"[^\w.\-]+", re.ASCII)
TEXT_TYPES = {
    ".md": "text/markdown",
    ".json": "application/json",
    ".yaml": "text/yaml",
    ".yml": "text/yaml",
    ".csv": "text/csv",
    ".toml": "text/plain",
    ".log": "text/plain",
}
"""Extensions whose text the platform's ``mimetypes`` table names badly or not at all."""


def sniff(head: bytes, name: str) -> str:
    """The MIME type of a file from its first bytes (and its name, for text)."""
    kind = filetype.guess(head)
    if kind is not None:
        return str(kind.mime)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4 or b"\x00" in head:  # not just a character cut at the end
            return "application/octet-stream"
    if b"\x00" in head:
        return "application/octet-stream"
    ext = os.path.splitext(name)[1].lower()
    guessed = TEXT_TYPES.get(ext) or mimetypes.guess_type(name)[0] or ""
    return guessed if guessed.startswith("text/") or guessed in TEXT_TYPES.values() else "text/plain"


class MediaFiles:
    def __init__(self, directory: str, keep_hours: float) -> None:
        self.directory = Path(directory).expanduser()
        self.keep_s = keep_hours * 3600

    def ensure(self) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        return self.directory

    def create(self, name: str) -> tuple[Path, int]:
        """A new, empty file for ``name`` (0600) and its open descriptor."""
        safe = _UNSAFE.sub("_", name)[-80:].lstrip(".") or "file"
        path = self.ensure() / f"{secrets.token_hex(6)}-{safe}"
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    @staticmethod
    def head(path: Path) -> bytes:
        """The first 4 KB of a file (enough for every magic number ``filetype`` knows)."""
        with open(path, "rb") as f:
            return f.read(4096)

    def cleanup(self, now: float | None = None) -> int:
        """Delete the files older than ``keep_hours``; how many were deleted."""
        limit = (now if now is not None else time.time()) - self.keep_s
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
            except OSError as exc:
                log.warning("[media] could not delete %s: %s", entry.name, exc)
        if removed:
            log.info("[media] deleted %d file(s) older than %g h", removed, self.keep_s / 3600)
        return removed
