"""Split a long reply into ordered chunks DingTalk accepts, and join them back losslessly.

DingTalk has no published message size; connectors report rejections above 20 000 bytes of request body
and rendering limits of a few thousand characters (reference sections 8.1 and 11). :func:`split_text`
therefore bounds every chunk twice: by characters (``max_chars``) and by the UTF-8 size of the chunk as a
JSON string (``json_bytes``) plus ``overhead_bytes`` for the rest of the body (title, msgtype, at block).
The byte count assumes the body is serialised with ``ensure_ascii=False``; ASCII-escaped JSON would cost 6
bytes per CJK character and 12 per emoji.

Where a chunk ends (the boundary rule)
    Inside the window that fits, the split goes at the best boundary kind found in the **second half**
    of the window, in this order: paragraph (after a blank line), line (after a newline), sentence
    (after ``. ! ?`` plus whitespace, or after ``。！？``), word (after whitespace or ``，、；：``). A
    paragraph break at 30% of the window loses to a line break at 90%, so chunks stay full. When no
    boundary of any kind lies in the second half, the latest boundary anywhere in the window wins (a
    short chunk beats cutting a URL or identifier in half); only when there is none at all is the text
    cut hard at the window end. Every split point is then moved back to a grapheme boundary (combining
    marks, ZWJ emoji, flags stay whole), out of fence delimiter lines and table header rows, and away
    from a mid-line ```` ``` ```` that would open a fence at the next chunk's start.

Decorations (the only text a chunk has that the reply has not)
    * A split inside a code fence closes the fence at the end of the chunk (``suffix``) and reopens it
      with the original opener line, language included, at the start of the next (``prefix``).
    * A split between a table's body rows repeats the header and separator rows (``prefix``), unless the
      header is longer than a quarter of the limits.
    * With ``markers=True`` and more than one chunk, each chunk starts with ``"(i/n) "``; when its first
      line is block markdown (fence, heading, list, quote, table) the marker goes on its own paragraph,
      ``"(i/n)\\n\\n"``, so it does not break that block.
    All decorations are budgeted, and :class:`Chunk` records them, so :func:`join_chunks` restores the
    original text exactly. Whitespace at a boundary stays at the end of the earlier chunk; nothing is
    stripped.

Empty text gives ``[]``: an empty message is never valid to send, so the caller decides what to say.
The work is linear in the text: one scan for fences and tables, then each chunk looks only at its window.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from edgecrab.replies.textscan import TextScan, is_grapheme_boundary

__all__ = ["Chunk", "join_chunks", "json_bytes", "split_text"]

# The leading greedy ``(?s:.*)`` plus ``match`` (never ``search``) finds the LAST boundary in one
# right-to-left backtrack: cheap when a boundary is near the window end, linear when there is none.
_PARAGRAPH = re.compile(r"(?s:.*)\n(?:[ \t]*\n)+")
_LATIN_SENTENCE = re.compile(r"(?s:.*)[.!?]+[\"')\]”’]*\s+")
_CJK_SENTENCE = re.compile(r"(?s:.*)[。！？]+[」』”’）]*\s*")
_WORD_BREAKS = (" ", "\t", "\n", "\r", "\u3000", "，", "、", "；", "：")
"""Split after these (not after U+00A0: a no-break space asks not to be broken)."""
_BLOCK_START = re.compile(r"`{3}|~{3}|#{1,6}(?:[ \t]|$)|[-*+][ \t]|\d{1,9}[.)][ \t]|>")
_FENCE_RUN = re.compile(r"[ \t]*(?:```|~~~)")
_MAX_CHAR_COST = 6
"""Most JSON bytes one code point can cost (a control character escaped as ``\\u00XX``)."""


@dataclass(frozen=True)
class Chunk:
    """One message's worth of a reply. ``text = marker + prefix + body + suffix``."""

    text: str
    index: int
    """1-based position, as in the ``(i/n)`` marker."""
    total: int
    marker: str = ""
    """The ``(i/n)`` prefix added, or ``""``."""
    prefix: str = ""
    """Added after the marker: a reopened fence line or a repeated table header, or ``""``."""
    suffix: str = ""
    """Added at the end: the line closing a fence this chunk cut through, or ``""``."""

    @property
    def body(self) -> str:
        """This chunk's slice of the original text."""
        head = self.marker + self.prefix
        if not self.text.startswith(head) or not self.text.endswith(self.suffix):
            raise ValueError(f"chunk {self.index}/{self.total} text no longer matches its decorations")
        return self.text[len(head) : len(self.text) - len(self.suffix)]


_JSON = json.JSONEncoder(ensure_ascii=False)
"""``json.dumps(..., ensure_ascii=False)`` without making an encoder per call (each reply measures a few)."""


def json_bytes(text: str) -> int:
    """UTF-8 size of ``text`` as a JSON string literal, quotes and escapes included."""
    return len(_JSON.encode(text).encode("utf-8", "surrogatepass"))


def _json_bytes_at_most(text: str) -> int:
    """An upper bound of :func:`json_bytes` without encoding: a character takes at most 6 bytes (``\\u001f``;
    UTF-8 takes at most 4), plus the quotes."""
    return 6 * len(text) + 2


def join_chunks(chunks: Sequence[Chunk]) -> str:
    """Inverse of :func:`split_text`: drop markers and added fence/table lines, concatenate."""
    return "".join(chunk.body for chunk in chunks)


def split_text(
    text: str,
    *,
    max_chars: int = 6000,
    max_bytes: int = 20000,
    markers: bool = False,
    overhead_bytes: int = 0,
) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_chars`` characters and ``max_bytes`` request bytes.

    Each chunk's ``json_bytes(chunk.text) + overhead_bytes <= max_bytes``. Raises :class:`ValueError`
    when the limits leave no room for even one character next to the decorations a chunk needs.
    """
    if max_chars < 1 or max_bytes - overhead_bytes < 3:
        raise ValueError(f"limits too small: max_chars={max_chars}, bytes left={max_bytes - overhead_bytes}")
    if not text:
        return []
    room = max_bytes - overhead_bytes
    if len(text) <= max_chars and (_json_bytes_at_most(text) <= room or json_bytes(text) <= room):
        return [Chunk(text, 1, 1)]  # fits (most replies: without encoding them to measure)
    splitter = _Splitter(text, max_chars, max_bytes - overhead_bytes)
    if not markers:
        pieces = splitter.split(0)
        return [
            Chunk(p.prefix + text[p.start : p.end] + p.suffix, i, len(pieces), "", p.prefix, p.suffix)
            for i, p in enumerate(pieces, 1)
        ]
    # Start from a lower bound on the chunk count so the loop below usually runs once.
    digits = len(str(max(-(-len(text) // max_chars), -(-json_bytes(text) // (max_bytes - overhead_bytes)))))
    while True:
        # The marker's width depends on the chunk count, which depends on the marker's width.
        pieces = splitter.split(digits)
        if len(str(len(pieces))) <= digits:
            break
        digits = len(str(len(pieces)))
    total = len(pieces)
    chunks = []
    for i, p in enumerate(pieces, 1):
        body = p.prefix + text[p.start : p.end] + p.suffix
        marker = f"({i}/{total})" + ("\n\n" if _starts_block(body) else " ")
        chunks.append(Chunk(marker + body, i, total, marker, p.prefix, p.suffix))
    return chunks


def _starts_block(body: str) -> bool:
    newline = body.find("\n")
    first_line = body[: newline if newline >= 0 else len(body)]
    # Leading blanks may be indented code or a nested list: keep them at the line start too.
    return first_line[:1] in (" ", "\t") or bool(_BLOCK_START.match(first_line)) or "|" in first_line


@dataclass(frozen=True, slots=True)
class _Piece:
    start: int
    end: int
    prefix: str
    suffix: str


class _Splitter:
    """Holds the scan of one text; :meth:`split` may run several times (once per marker width)."""

    def __init__(self, text: str, max_chars: int, max_bytes: int) -> None:
        self.text = text
        self.max_chars = max_chars
        self.max_bytes = max_bytes
        self.scan = TextScan(text, self._can_decorate)

    def _can_decorate(self, opener: str, closer: str) -> bool:
        """Close and reopen a fence across chunks only if its two lines take at most half a chunk.

        A longer fence line is pathological; such a fence is split like plain text.
        """
        lines = f"{opener}\n\n{closer}"
        return 2 * len(lines) <= self.max_chars and 2 * json_bytes(lines) <= self.max_bytes

    def split(self, marker_digits: int) -> list[_Piece]:
        reserve_chars = 0 if marker_digits == 0 else 5 + 2 * marker_digits  # "(n/n)\n\n"
        reserve_bytes = 0 if marker_digits == 0 else 7 + 2 * marker_digits  # a newline escapes to 2 bytes
        pieces: list[_Piece] = []
        start = 0
        while start < len(self.text):
            piece = self._next_piece(start, self.max_chars - reserve_chars, self.max_bytes - reserve_bytes)
            pieces.append(piece)
            start = piece.end
        return pieces

    def _next_piece(self, start: int, max_chars: int, max_bytes: int) -> _Piece:
        text = self.text
        prefix = self._prefix_at(start, max_chars, max_bytes)
        chars = max_chars - len(prefix)
        nbytes = max_bytes - json_bytes(prefix)  # the 2 quote bytes are counted once, here
        if len(text) - start <= chars and _inner_bytes(text[start:]) <= nbytes:
            return _Piece(start, len(text), prefix, "")
        # First try the whole window; only if the split lands inside a fence and its closing line does
        # not fit after it, choose again in a window that leaves room for the longest closing line.
        end, suffix = self._end_and_suffix(start, self._fit(start, chars, nbytes), chars, nbytes)
        if not self._fits(start, end, chars - len(suffix), nbytes - _inner_bytes(suffix)):
            limit = self._fit(
                start, chars - self.scan.max_closer - 1, nbytes - self.scan.max_closer_bytes - 2
            )
            end, suffix = self._end_and_suffix(start, limit, chars, nbytes)
        return _Piece(start, end, prefix, suffix)

    def _end_and_suffix(self, start: int, limit: int, chars: int, nbytes: int) -> tuple[int, str]:
        if limit <= start:
            raise ValueError(
                f"limits too small to make progress at offset {start} "
                f"(max_chars={self.max_chars}, max_bytes={self.max_bytes})"
            )
        end = self._choose(start, limit)
        end = self._snap(start, self._avoid_fence_lookalike(start, self._grapheme_floor(start, end, limit)))
        fence = self.scan.fence_before(end)
        if fence is not None and end == fence.body_start and fence.open_start == start and end < limit:
            # At a boundary only the opener line would fit: cut the first code line rather than send an
            # empty code block.
            end = self._avoid_fence_lookalike(start, self._grapheme_floor(start, limit, limit))
        fence = self.scan.open_fence_at(end)
        if fence is None:
            return end, ""
        if end == fence.close_start:
            # Keep the real closing line instead of adding one: with its newline if that fits, else without
            # (the next chunk then starts with that newline, outside the fence).
            newline = self.text.find("\n", end, fence.close_end)
            for close in (fence.close_end, newline):
                if close > end and self._fits(start, close, chars, nbytes):
                    return close, ""
        return end, ("" if self.text[end - 1] == "\n" else "\n") + fence.closer

    def _prefix_at(self, start: int, max_chars: int, max_bytes: int) -> str:
        fence = self.scan.open_fence_at(start)
        if fence is not None:
            return fence.opener + "\n"
        table = self.scan.table_body_at(start)
        if (
            table is not None
            and 4 * len(table.header) <= max_chars
            and 4 * json_bytes(table.header) <= max_bytes
        ):
            return table.header
        return ""

    def _fits(self, start: int, end: int, chars: int, nbytes: int) -> bool:
        return end - start <= chars and _inner_bytes(self.text[start:end]) <= nbytes

    def _fit(self, start: int, chars: int, nbytes: int) -> int:
        """Largest end such that ``text[start:end]`` fits ``chars`` characters and ``nbytes`` bytes."""
        hi = min(len(self.text), start + max(chars, 0))
        if hi <= start:
            return start
        if _inner_bytes(self.text[start:hi]) <= nbytes:
            return hi
        # Bisect; each probe measures only the slice beyond the known-good prefix, so this stays O(window).
        lo = start + min(hi - start, max(nbytes, 0) // _MAX_CHAR_COST)
        lo_cost = _inner_bytes(self.text[start:lo])
        while hi - lo > 1:
            mid = (lo + hi) // 2
            cost = lo_cost + _inner_bytes(self.text[lo:mid])
            if cost <= nbytes:
                lo, lo_cost = mid, cost
            else:
                hi = mid
        return lo

    def _choose(self, start: int, limit: int) -> int:
        """Pick the split point in ``(start, limit]`` by the boundary rule in the module docstring."""
        half = start + (limit - start + 1) // 2
        # Searching from just before the half is enough: a boundary straddling it ends where a
        # lower-priority boundary found by the next finder ends too.
        second_half = max(start, half - 16)
        for finder in _FINDERS:
            end = finder(self.text, second_half, limit)
            if end is not None and end >= half:
                return end
        # Nothing in the second half: the latest boundary of any kind in the first half wins.
        found = [end for finder in _FINDERS if (end := finder(self.text, start, half)) is not None]
        return max(found) if found else limit

    def _grapheme_floor(self, start: int, end: int, limit: int) -> int:
        """Move ``end`` back to a grapheme boundary; cut inside one only if it alone overflows."""
        pos = end
        while pos > start and not is_grapheme_boundary(self.text, pos):
            pos -= 1
        if pos > start:
            return pos
        pos = limit
        if pos < len(self.text) and 0xDC00 <= ord(self.text[pos]) <= 0xDFFF and pos - 1 > start:
            pos -= 1  # never between the halves of a surrogate pair
        return pos

    def _avoid_fence_lookalike(self, start: int, end: int) -> int:
        """Don't start a chunk mid-line with a fence run: at the chunk's line start it would open a fence."""
        text = self.text
        while text[end - 1] != "\n" and _FENCE_RUN.match(text, end):
            earlier = _word_end(text, start, end - 1)
            if earlier is None or earlier <= start:
                earlier = end - 1  # no word boundary: keep one more character with the run
            if earlier <= start:
                break
            end = earlier
        return end

    def _snap(self, start: int, end: int) -> int:
        """Move a split out of a fence delimiter line or a table's header rows, when possible."""
        fence = self.scan.fence_before(end)
        if fence is not None:
            if fence.open_start < end <= fence.body_start and fence.open_start > start:
                return fence.open_start
            if fence.close_start < end < fence.close_end and fence.close_start > start:
                return fence.close_start
        table = self.scan.table_before(end)
        if table is not None and table.start < end <= table.body_start and table.start > start:
            return table.start
        return end


def _inner_bytes(text: str) -> int:
    """JSON bytes of ``text`` without the two quotes; additive over concatenation."""
    return json_bytes(text) - 2


def _paragraph_end(text: str, lo: int, hi: int) -> int | None:
    last_newline = text.rfind("\n", lo, hi)  # memchr-fast prefilter: no newline, no paragraph
    return _last_match_end(_PARAGRAPH, text, lo, last_newline + 1) if last_newline >= lo else None


def _line_end(text: str, lo: int, hi: int) -> int | None:
    i = text.rfind("\n", lo, hi)
    return i + 1 if i >= 0 else None


def _sentence_end(text: str, lo: int, hi: int) -> int | None:
    # memchr-fast prefilters keep pathological text (a megabyte of "a.a.a.") from regex backtracking.
    ends = []
    if max(text.rfind(c, lo, hi) for c in "。！？") >= 0:
        ends.append(_last_match_end(_CJK_SENTENCE, text, lo, hi))
    last_blank = max(text.rfind(c, lo, hi) for c in " \t\n\r")
    if last_blank > lo and max(text.rfind(c, lo, last_blank) for c in ".!?") >= 0:
        ends.append(_last_match_end(_LATIN_SENTENCE, text, lo, last_blank + 1))
    return max((end for end in ends if end is not None), default=None)


def _word_end(text: str, lo: int, hi: int) -> int | None:
    i = max(text.rfind(c, lo, hi) for c in _WORD_BREAKS)
    return i + 1 if i >= 0 else None


_FINDERS = (_paragraph_end, _line_end, _sentence_end, _word_end)
"""Boundary finders in order of preference; each returns the last split point in ``[lo, hi]``."""


def _last_match_end(pattern: re.Pattern[str], text: str, lo: int, hi: int) -> int | None:
    m = pattern.match(text, lo, hi)
    return m.end() if m else None


def bench(size: int = 1_000_000, repeat: int = 3) -> float:
    """Best wall time in seconds to split ``size`` characters of typical agent markdown."""
    code = "\n".join(f'    result_{i} = compute("value", {i})  # step {i}' for i in range(30))
    unit = (
        "## Findings\n\nThe service answered 42 requests. Latency stayed under 120 ms! Was it cached?\n"
        "中文说明：请求全部成功，没有错误。继续观察😀。\n\n- first point\n- second point\n\n"
        f"```python\ndef run():\n{code}\n```\n\n| key | value |\n|---|---|\n| a | 1 |\n| b | 2 |\n\n"
    )
    text = (unit * (size // len(unit) + 1))[:size]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        split_text(text, markers=True)
        best = min(best, time.perf_counter() - t0)
    return best
