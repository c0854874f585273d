"""The markdown dialect of DingTalk's AI card (template ``02fcf2f4``; wave2.md section 1.9).

The card's markdown view ignores a single line break inside a paragraph, like DingTalk's markdown
messages, but unlike them it renders ``<br>``. :func:`to_card_markdown` therefore keeps the agent's line
breaks as ``<br>`` outside code fences, keeps a real line break before the lines that start a block
(list items, table rows, headings, fences, rules), merges consecutive quote lines with ``<br>``, and puts
a blank line before a table (without it the table is shown as text). Code fences are left as written.
This is the port DingTalk's own connector ships (``fixNewlines``, ``ensureTableBlankLines``).
"""

from __future__ import annotations

import re

__all__ = ["mention_prefix", "to_card_markdown"]

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_BLOCK_START = re.compile(r" {0,3}(?:#{1,6}(?:\s|$)|[-*+]\s|\d{1,9}[.)]\s|\||(?:[-*_][ \t]*){3,}$)")
_QUOTE = re.compile(r" {0,3}>[ \t]?")


def _is_table(line: str) -> bool:
    return line.lstrip().startswith("|")


def to_card_markdown(text: str) -> str:
    """``text`` (markdown) as the AI card renders it best."""
    out: list[str] = []
    fence = ""
    prev = ""  # the previous line outside fences ("" after a blank line)
    for line in text.split("\n"):
        opening = _FENCE.match(line)
        if fence:
            out.append("\n" + line)
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence, prev = "", ""
            continue
        out.append(_join(prev, line, first=not out))
        if opening:
            fence, prev = opening.group(1), ""
        else:
            prev = line if line.strip() else ""
    return "".join(out)


def _join(prev: str, line: str, *, first: bool) -> str:
    """``line`` with what goes between it and ``prev`` (the line before, "" when blank)."""
    if first:
        return line
    if not prev or not line.strip():
        return "\n" + line
    if _is_table(line):
        return "\n" + line if _is_table(prev) else "\n\n" + line
    if _BLOCK_START.match(line) or _FENCE.match(line):
        return "\n" + line
    quote = _QUOTE.match(line)
    if quote and _QUOTE.match(prev):
        return "<br>" + line[quote.end() :]
    if quote:
        return "\n" + line
    return "<br>" + line


def mention_prefix(name: str) -> str:
    """The first line of a group card: a card cannot @ anyone, so the asker is named in its text."""
    return f"@{name}\n\n" if name else ""
