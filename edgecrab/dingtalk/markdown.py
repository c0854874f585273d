"""DingTalk markdown: turn an agent's markdown into what DingTalk renders well, or into plain text.

DingTalk officially renders a small subset (headings, quotes, emphasis, links, images, lists) and its
clients differ on the rest (reference section 12, field notes 1.4). :func:`to_dingtalk_markdown` works
line by line with a small state machine (code fences, tables, lists, quotes) and applies these rules:

* **Blocks get air.** A blank line goes between any two non-blank lines of different blocks: before and
  after headings, lists, tables, fences and rules. Consecutive list items, rows of one table and a setext
  underline stay attached.
* **Line breaks are kept by doubling the newline.** DingTalk ignores a single newline inside a paragraph.
  Trailing double spaces are invisible, often stripped by editors and hooks, and not reliably honoured by
  every DingTalk client; a paragraph break renders everywhere (satori and other DingTalk adapters do the
  same). Inside a quote the break is a bare ``>`` line so the quote continues.
* **HTML is escaped.** DingTalk's PC client renders raw HTML, even inside code, and the mobile client
  then shows a blank message. ``<`` and ``>`` become ``&lt;``/``&gt;`` everywhere except blockquote
  markers; autolinks ``<https://...>`` become bare URLs. Outside code a bare ``&`` is left alone (it is
  already literal in markdown, and an entity the agent wrote is meant to render). Inside code spans and
  fences ``&`` is escaped too when it would otherwise read as an entity, because there the text is
  literal. (A report, eryajf/chatgpt-dingtalk #222, says some client shows ``&lt;`` literally in code;
  the blank-message failure is worse, so we escape.)
* **Fences are normalised.** The fence moves to column 0, the code is dedented by its common indentation
  (DingTalk shows indentation flush anyway), a ``#`` starting a code line is escaped as ``\\#`` so it is
  not rendered as a heading, and a fence left open is closed.
* **Headings deeper than ``###`` become ``###``.** Tables are kept as written.

:func:`to_plain_text` is the ``reply_format: text`` fallback and :func:`title_preview` makes the
``markdown.title`` shown in notifications.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from edgecrab.config import DingTalkConfig
from edgecrab.replies.format import Format
from edgecrab.replies.textscan import is_grapheme_boundary

__all__ = ["reply_format", "title_preview", "to_dingtalk_markdown", "to_plain_text"]

_FENCE = re.compile(r"([ \t]*)(`{3,}|~{3,})(.*)")
_HEADING = re.compile(r"( {0,3})(#{1,6})(?=[ \t]|$)(.*)")
_HRULE = re.compile(r" {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*")
_SETEXT = re.compile(r" {0,3}(?:=+|-+)[ \t]*")
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+]|\d{1,9}[.)])(?:[ \t]+|$)")
_QUOTE = re.compile(r"(?:[ \t]{0,3}>[ \t]?)+")
_TABLE_SEP = re.compile(r"[ \t]*(?:\|[ \t]*)?:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*(?:\|[ \t]*)?")
_BACKTICKS = re.compile(r"`+")
_AUTOLINK = re.compile(r"<((?:https?|ftp)://[^\s<>]+|mailto:[^\s<>]+)>")
_ENTITY_LIKE = re.compile(r"&(?=#?[0-9A-Za-z]+;)")
_ENTITY = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
# Labels and URLs exclude the brackets that could start another one, so a failed match stops at the next
# bracket instead of rescanning the rest of the line (quadratic on "[a](" repeated).
_IMAGE = re.compile(r"!\[([^\[\]\n]*)\]\(([^()\[\]\s]+)(?:[ \t]+\"[^\"\n]*\")?\)")
_LINK = re.compile(r"\[([^\[\]\n]+)\]\(([^()\[\]\s]+)(?:[ \t]+\"[^\"\n]*\")?\)")
# Delimited spans whose content cannot contain the delimiter: linear, never backtracks across a line.
_EMPHASIS = (
    ("*", re.compile(r"(?<![\w*\\])\*(?=[^\s*])([^*\n]*?[^\s*\\])\*(?![\w*])")),
    ("_", re.compile(r"(?<![\w\\])_(?=[^\s_])([^_\n]*?[^\s_\\])_(?!\w)")),
    ("**", re.compile(r"(?<!\\)\*\*(?=[^\s*])([^*\n]*?[^\s*\\])\*\*")),
    ("__", re.compile(r"(?<!\\)__(?=[^\s_])([^_\n]*?[^\s_\\])__")),
    ("~~", re.compile(r"(?<!\\)~~(?=[^\s~])([^~\n]*?[^\s~\\])~~")),
)
_BACKSLASH_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_TITLE_NOISE = re.compile(r"^(?:[ \t]*>[ \t]?)*[ \t]*(?:[-*+][ \t]+|\d{1,9}[.)][ \t]+)?")


@dataclass(frozen=True, slots=True)
class _Line:
    """One classified source line, or a whole fenced block (``kind == "fence"``)."""

    kind: str
    """blank, para, heading, list, list_cont, quote, table, table_sep, hrule, setext or fence."""
    text: str
    code: tuple[str, ...] = ()
    """Fence only: the code lines between the fence lines."""


def _lines(text: str) -> Iterator[_Line]:
    """Classify lines outside fences; gather each fence with its code into one item."""
    lines = _split_lines(text)
    i, prev, table, in_list = 0, "blank", "", False
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.fullmatch(line)
        if fence and not (fence.group(2)[0] == "`" and "`" in fence.group(3)):
            run, code = fence.group(2), []
            i += 1
            while i < len(lines):
                close = _FENCE.fullmatch(lines[i])
                if close and close.group(2)[0] == run[0] and len(close.group(2)) >= len(run):
                    if not close.group(3).strip():
                        break
                code.append(lines[i])
                i += 1
            trailing_blanks = 0
            while i == len(lines) and code and not code[-1].strip():
                code.pop()  # an open fence at the end: its trailing blank lines stay outside the fence
                trailing_blanks += 1
            yield _Line("fence", run + fence.group(3), tuple(code))
            yield from [_Line("blank", "")] * trailing_blanks
            i, prev, table, in_list = i + 1, "fence", "", False
            continue
        next_line = lines[i + 1] if i + 1 < len(lines) else ""
        if table == "header":
            kind, table = "table_sep", "body"
        elif table == "body" and "|" in line and line.strip():
            kind = "table"
        elif "|" in line and "|" in next_line and _TABLE_SEP.fullmatch(next_line):
            kind, table = "table", "header"
        else:
            kind, table = _classify(line, prev, in_list), ""
        # A list goes on across blank lines for as long as lines stay indented under it.
        in_list = kind == "list" or (in_list and kind in ("list_cont", "blank"))
        yield _Line(kind, line)
        i, prev = i + 1, kind


def _classify(line: str, prev: str, in_list: bool) -> str:
    if not line.strip():
        return "blank"
    if _HEADING.match(line):
        return "heading"
    if prev == "para" and _SETEXT.fullmatch(line):
        return "setext"
    if _HRULE.fullmatch(line):
        return "hrule"
    if _LIST_ITEM.match(line):
        return "list"
    if _QUOTE.match(line):
        return "quote"
    if in_list and line[:1] in (" ", "\t"):
        return "list_cont"  # indented: part of the item. An unindented line starts a paragraph for us.
    return "para"


# ---------------------------------------------------------------------------------------------------------
# DingTalk markdown


def to_dingtalk_markdown(text: str) -> str:
    """Normalise agent markdown for a DingTalk ``markdown`` message (rules in the module docstring)."""
    normal = _newlines(text)
    if _MARKUP.search(normal) is None:
        return _plain_paragraphs(normal.split("\n"))
    return _markdown(normal)


def _markdown(text: str) -> str:
    """:func:`to_dingtalk_markdown` by the line classes, for any text."""
    out: list[str] = []
    prev: _Line | None = None
    for item in _lines(text):
        if item.kind == "blank":
            out.append(item.text)
            prev = None
            continue
        if prev is not None:
            gap = _gap(prev, item)
            if gap is not None:
                out.append(gap)
        out.extend(_render(item))
        prev = item
    return "\n".join(out)


_MARKUP = re.compile(r"[#>*+=_|`~<-]|^[ \t]*\d", re.M)
"""What can make a line anything but a paragraph, or change it when rendered: without any, text is plain."""


def _plain_paragraphs(lines: list[str]) -> str:
    """:func:`to_dingtalk_markdown` of text without markup (:data:`_MARKUP`): every line a paragraph kept
    as it is, a blank line put between two that touch. A reply of plain sentences takes this way, without
    the line classes and their patterns."""
    out: list[str] = []
    touching = False
    for line in lines:
        blank = not line.strip()
        if touching and not blank:
            out.append("")
        out.append(line)
        touching = not blank
    return "\n".join(out)


def _gap(prev: _Line, cur: _Line) -> str | None:
    """The line to put between two adjacent non-blank lines, or ``None`` to keep them together."""
    if cur.kind in ("table", "table_sep") and prev.kind in ("table", "table_sep"):
        return None
    if cur.kind == "setext" or (cur.kind == "list" and prev.kind in ("list", "list_cont")):
        return None
    if cur.kind == "quote" and prev.kind == "quote":
        prev_marks, cur_marks = _QUOTE.match(prev.text), _QUOTE.match(cur.text)
        if prev_marks is None or cur_marks is None:
            return ""
        if not prev.text[prev_marks.end() :].strip() or not cur.text[cur_marks.end() :].strip():
            return None  # an empty quote line already separates them
        return cur_marks.group(0).rstrip()
    return ""


def _render(item: _Line) -> list[str]:
    if item.kind == "fence":
        run = _FENCE.fullmatch(item.text)
        closer = run.group(2) if run else "```"
        return [_escape_code(item.text), *(_escape_code_line(line) for line in _dedent(item.code)), closer]
    line = item.text
    if item.kind == "heading":
        m = _HEADING.match(line)
        assert m is not None
        return [m.group(1) + m.group(2)[:3] + _escape_inline(m.group(3))]
    if item.kind == "quote":
        marks = _QUOTE.match(line)
        assert marks is not None
        return [marks.group(0) + _escape_inline(line[marks.end() :])]
    return [_escape_inline(line)]


def _dedent(lines: tuple[str, ...]) -> list[str]:
    indents = [line[: len(line) - len(line.lstrip(" \t"))] for line in lines if line.strip()]
    margin = len(os.path.commonprefix(indents)) if indents else 0
    return [line[margin:] if line.strip() else "" for line in lines]


def _escape_code_line(line: str) -> str:
    escaped = _escape_code(line)
    stripped = escaped.lstrip(" \t")
    if stripped.startswith("#"):
        escaped = escaped[: len(escaped) - len(stripped)] + "\\" + stripped
    return escaped


def _escape_code(text: str) -> str:
    if "&" in text:
        text = _ENTITY_LIKE.sub("&amp;", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _escape_text(text: str) -> str:
    if "<" in text:
        text = _AUTOLINK.sub(r"\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _escape_inline(line: str) -> str:
    return "".join(_escape_code(part) if code else _escape_text(part) for code, part in _code_spans(line))


def _code_spans(line: str) -> list[tuple[bool, str]]:
    """Split a line into ``(is_code_span, text)`` parts; a code span keeps its backticks.

    A run of N backticks opens a span closed by the next run of exactly N. Unmatched openers have
    pairwise different lengths, so the forward search stays linear in the line length overall.
    """
    runs = [(m.start(), m.end()) for m in _BACKTICKS.finditer(line)]
    parts: list[tuple[bool, str]] = []
    pos, k = 0, 0
    while k < len(runs):
        start, end = runs[k]
        width = end - start
        if start > 0 and line[start - 1] == "\\":
            k += 1
            continue
        match = next((j for j in range(k + 1, len(runs)) if runs[j][1] - runs[j][0] == width), None)
        if match is None:
            k += 1
            continue
        parts.append((False, line[pos:start]))
        parts.append((True, line[start : runs[match][1]]))
        pos, k = runs[match][1], match + 1
    parts.append((False, line[pos:]))
    return parts


# ---------------------------------------------------------------------------------------------------------
# Plain text and titles


def to_plain_text(text: str) -> str:
    """Markdown to readable plain text for ``reply_format: text``.

    Emphasis markers and heading hashes go; code keeps its content without fences or backticks; links
    become ``label (url)``; table separator rows and setext underlines go; quote and list markers stay,
    since they read naturally as text. Newlines are kept as they are.
    """
    return "\n".join(_plain_lines(text))


def _has_markup(text: str) -> bool:
    """Whether :func:`_plain_lines` could give anything but the lines as they are: :data:`_MARKUP`, or
    what the plain rendering of a segment reads (links, escapes, entities). A reply of plain sentences (the
    echo agent's) has its title made without the line classes (BENCHMARKS.md, sixth session)."""
    return _MARKUP.search(text) is not None or "](" in text or "\\" in text or "&" in text


def _newlines(text: str) -> str:
    """``text`` with every line ending (CRLF, CR) made ``\\n``."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _split_lines(text: str) -> list[str]:
    return _newlines(text).split("\n")


def _plain_lines(text: str) -> Iterator[str]:
    for item in _lines(text):
        if item.kind == "fence":
            yield from _dedent(item.code)
        elif item.kind in ("table_sep", "setext"):
            continue
        elif item.kind == "blank":
            yield ""
        elif item.kind == "heading":
            m = _HEADING.match(item.text)
            assert m is not None
            yield _plain_inline(m.group(3).strip().rstrip("#").rstrip())
        else:
            yield _plain_inline(item.text)


def _plain_inline(line: str) -> str:
    parts = []
    for code, part in _code_spans(line):
        if code:
            width = len(part) - len(part.lstrip("`"))
            inner = part[width:-width]
            parts.append(inner[1:-1] if len(inner) > 2 and inner[0] == inner[-1] == " " else inner)
        else:
            parts.append(_plain_segment(part))
    return "".join(parts)


def _plain_segment(text: str) -> str:
    # Each pattern runs only when its trigger character is present: most segments are plain words.
    if "](" in text:
        text = _IMAGE.sub(lambda m: _label_url(m.group(1), m.group(2)), text)
        text = _LINK.sub(lambda m: _label_url(m.group(1), m.group(2)), text)
    if "<" in text:
        text = _AUTOLINK.sub(r"\1", text)
    for trigger, pattern in _EMPHASIS * 2:  # twice: "**a *b* c**" and "***a***" nest either way round
        if trigger in text:
            text = pattern.sub(r"\1", text)
    if "\\" in text:
        text = _BACKSLASH_ESCAPE.sub(r"\1", text)
    if "&" in text:
        text = _ENTITY.sub(lambda m: html.unescape(m.group(0)), text)
    return text


def _label_url(label: str, url: str) -> str:
    label = label.strip()
    return url if not label or label == url else f"{label} ({url})"


def title_preview(text: str, limit: int = 20) -> str:
    """A short preview for ``markdown.title``: the first non-empty line as plain text, at most ``limit``
    characters, whitespace collapsed, cut with ``…``; ``"Reply"`` when the text has no visible line."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    for line in _plain_lines(text) if _has_markup(text) else _split_lines(text):
        words = _TITLE_NOISE.sub("", line).replace("|", " ").split()
        if words:
            preview = " ".join(words)
            break
    else:
        return "Reply"
    if len(preview) <= limit:
        return preview
    cut = limit - 1
    while cut > 0 and not is_grapheme_boundary(preview, cut):
        cut -= 1
    return preview[:cut].rstrip() + "…"


def reply_format(config: DingTalkConfig) -> Format:
    """How replies are rendered for DingTalk: ``reply_format`` (markdown or text), the size limits of one
    message, the chunk markers and the chunk cap."""
    return Format(
        fmt=config.reply_format,
        render=to_dingtalk_markdown if config.reply_format == "markdown" else to_plain_text,
        title=title_preview,
        max_chars=config.max_message_length,
        max_bytes=config.max_message_bytes,
        markers=config.chunk_markers,
        max_chunks=config.max_chunks_per_reply,
    )
