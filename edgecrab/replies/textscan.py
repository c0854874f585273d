"""One-pass scan of reply text for the chunker: code fences, tables and grapheme boundaries.

:mod:`edgecrab.replies.chunking` needs to know, for any offset, whether a split there would fall inside a code
fence (so the fence must be closed and reopened), inside a markdown table (so the header can be repeated),
or inside a fence delimiter line or a user-perceived character (so the split should move). This module
answers those questions after one pass over the text (``str.find`` for candidate lines, then one anchored
match per line), so the chunker stays linear.

Fences follow CommonMark loosely: a line of at least three backticks or tildes opens a fence (a backtick
info string may not contain a backtick); the fence closes at a line of the same character, at least as
long, with nothing but blanks after it. Any indentation is accepted because agents often indent fences
inside list items. A fence left open runs to the end of the text.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

_FENCE_LINE = re.compile(r"([ \t]*)(`{3,}|~{3,})([^\n]*)")
"""Used with ``match`` bounded to one line: indentation, fence run, info string."""
# Written so no two adjacent parts can both match the same blanks: no polynomial backtracking.
_SEPARATOR_LINE = re.compile(r"[ \t]*(?:\|[ \t]*)?:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*(?:\|[ \t]*)?")
_TABLE_ROWS = re.compile(r"(?:[^\n]*\|[^\n]*(?:\n|\Z))*")

_ZWJ = "\u200d"


@dataclass(frozen=True, slots=True)
class Fence:
    """A fenced code block. Offsets index the scanned text."""

    open_start: int
    """Start of the opener line."""
    body_start: int
    """Just past the opener line's newline (``len(text) + 1`` when the opener is the last line)."""
    close_start: int
    """Start of the closing line, or ``len(text)`` when the fence is never closed."""
    close_end: int
    """Just past the closing line and its newline, or ``len(text)``."""
    opener: str
    """The opener line as written (indentation and info string included), without its newline."""
    closer: str
    """What we append to close the fence ourselves: the opener's indentation and fence run."""
    decorated: bool = True
    """False when opener and closer are too long to repeat in every chunk."""


@dataclass(frozen=True, slots=True)
class Table:
    """A markdown table: header row, separator row, then body rows up to ``end``."""

    start: int
    body_start: int
    end: int
    header: str
    """Header and separator rows including their newlines, ready to repeat."""


class TextScan:
    """Fences and tables of one text, with offset lookups in O(log n)."""

    def __init__(self, text: str, can_decorate: Callable[[str, str], bool]) -> None:
        self.text = text
        self.fences = _scan_fences(text, can_decorate)
        self.fence_starts = [f.open_start for f in self.fences]
        # The longest closing line the chunker may have to add, in characters and JSON bytes (a tab is 2).
        decorated = [f for f in self.fences if f.decorated]
        self.max_closer = max((len(f.closer) for f in decorated), default=0)
        self.max_closer_bytes = max((len(f.closer) + f.closer.count("\t") for f in decorated), default=0)
        self.tables = _scan_tables(text, self)
        self._table_starts = [t.start for t in self.tables]

    def fence_before(self, pos: int) -> Fence | None:
        """The last fence whose opener starts strictly before ``pos``."""
        i = bisect.bisect_left(self.fence_starts, pos) - 1
        return self.fences[i] if i >= 0 else None

    def open_fence_at(self, pos: int) -> Fence | None:
        """The fence a split at ``pos`` would cut through (content side), if any."""
        fence = self.fence_before(pos)
        if (
            fence is not None
            and fence.decorated
            and fence.body_start <= pos <= fence.close_start
            and pos < len(self.text)
        ):
            return fence
        return None

    def table_before(self, pos: int) -> Table | None:
        i = bisect.bisect_left(self._table_starts, pos) - 1
        return self.tables[i] if i >= 0 else None

    def table_body_at(self, pos: int) -> Table | None:
        """The table whose body rows a split at line start ``pos`` would separate from the header."""
        table = self.table_before(pos)
        if table is not None and table.body_start < pos < table.end and self.text[pos - 1] == "\n":
            return table
        return None

    def in_fence(self, pos: int) -> bool:
        fence = self.fence_before(pos + 1)
        return fence is not None and fence.open_start <= pos < fence.close_end


def _fence_lines(text: str) -> list[re.Match[str]]:
    """Every line that could open or close a fence, in order, as ``_FENCE_LINE`` matches.

    ``str.find`` for the run, then one anchored match at its line start: each line is looked at once,
    so a megabyte of backticks or blanks stays linear (a ``^``-anchored search tries every offset).
    """
    found: list[re.Match[str]] = []
    for needle in ("```", "~~~"):
        pos = text.find(needle)
        while pos >= 0:
            line_start = text.rfind("\n", 0, pos) + 1
            line_end = text.find("\n", pos)
            line_end = len(text) if line_end < 0 else line_end
            m = _FENCE_LINE.match(text, line_start, line_end)
            if m is not None and m.start(2) == pos:
                found.append(m)
            pos = text.find(needle, line_end)
    found.sort(key=lambda m: m.start())
    return found


def _scan_fences(text: str, can_decorate: Callable[[str, str], bool]) -> list[Fence]:
    fences: list[Fence] = []
    decorate_cache: dict[str, bool] = {}

    def fence(opener: re.Match[str], close_start: int, close_end: int) -> Fence:
        line, closer = opener.group(0), opener.group(1) + opener.group(2)
        if line not in decorate_cache:
            decorate_cache[line] = can_decorate(line, closer)
        return Fence(
            opener.start(), opener.end() + 1, close_start, close_end, line, closer, decorate_cache[line]
        )

    current: re.Match[str] | None = None
    for m in _fence_lines(text):
        run, info = m.group(2), m.group(3)
        if current is None:
            if not (run[0] == "`" and "`" in info):
                current = m
        elif run[0] == current.group(2)[0] and len(run) >= len(current.group(2)) and not info.strip():
            fences.append(fence(current, m.start(), min(m.end() + 1, len(text))))
            current = None
    if current is not None:
        fences.append(fence(current, len(text), len(text)))
    return fences


def _scan_tables(text: str, scan: TextScan) -> list[Table]:
    """Tables: a row with a pipe, then a separator row, then rows with pipes up to a non-row line."""
    tables: list[Table] = []
    pos = text.find("|")
    while pos >= 0:
        line_start = text.rfind("\n", 0, pos) + 1
        line_end = text.find("\n", pos)
        line_end = len(text) if line_end < 0 else line_end
        table = _table_at(text, scan, line_start, line_end)
        if table is not None and (not tables or table.start >= tables[-1].end):
            tables.append(table)
            line_end = max(line_end, table.end - 1)
        pos = text.find("|", line_end)
    return tables


def _table_at(text: str, scan: TextScan, sep_start: int, sep_end: int) -> Table | None:
    """The table whose separator row is ``text[sep_start:sep_end]``, if it is one."""
    if sep_start == 0 or not _SEPARATOR_LINE.fullmatch(text, sep_start, sep_end) or scan.in_fence(sep_start):
        return None
    header_start = text.rfind("\n", 0, sep_start - 1) + 1
    header = text[header_start : sep_start - 1]
    if "|" not in header or not header.strip():
        return None
    body_start = min(sep_end + 1, len(text))
    rows = _TABLE_ROWS.match(text, body_start)
    end = rows.end() if rows else body_start
    # A fence opener among the rows ends the table: fence and table regions must never overlap.
    i = bisect.bisect_left(scan.fence_starts, body_start)
    if i < len(scan.fences):
        end = min(end, max(scan.fences[i].open_start, body_start))
    return Table(header_start, body_start, end, text[header_start:body_start])


def is_grapheme_boundary(text: str, pos: int) -> bool:
    """Best-effort extended-grapheme boundary test (UAX #29 subset).

    Keeps CR LF, surrogate pairs, combining marks, variation selectors, emoji modifiers and tags, ZWJ
    sequences, regional-indicator pairs (flags) and Hangul jamo together.
    """
    if pos <= 0 or pos >= len(text):
        return True
    prev, cur = text[pos - 1], text[pos]
    if prev == "\r":
        return cur != "\n"
    if prev == "\n":
        return True
    code = ord(cur)
    if 0xDC00 <= code <= 0xDFFF and 0xD800 <= ord(prev) <= 0xDBFF:
        return False
    if cur == _ZWJ or prev == _ZWJ:
        return False
    if (
        0xFE00 <= code <= 0xFE0F
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
        or 0xE0100 <= code <= 0xE01EF
        or 0x1160 <= code <= 0x11FF
    ):
        return False
    if 0x1F1E6 <= code <= 0x1F1FF:
        run = 0
        i = pos - 1
        while i >= 0 and 0x1F1E6 <= ord(text[i]) <= 0x1F1FF:
            run += 1
            i -= 1
        return run % 2 == 0
    return code < 0x300 or unicodedata.category(cur) not in ("Mn", "Me", "Mc")
