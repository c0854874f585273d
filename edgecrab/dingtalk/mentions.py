"""Mentions in group messages, and message bodies as ordered parts.

A body is first read into pieces (text, ``@name`` runs, pictures) in display order; :func:`settle_mentions`
marks the robot's own mention; :func:`render` turns the rest into :class:`~edgecrab.events.Part` runs.

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

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgecrab.dingtalk.fields import list_of as _list
from edgecrab.dingtalk.fields import string as _str
from edgecrab.dingtalk.frames import FrameError
from edgecrab.events import Mention, Part

__all__ = [
    "AtUser",
    "Audience",
    "Piece",
    "joined",
    "mentions_of",
    "read_at_users",
    "render",
    "rich_pieces",
    "settle_mentions",
    "split_runs",
]

_RUN = re.compile(r"@[^\s@/]+")


@dataclass(slots=True)
class Piece:
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
class AtUser:
    dingtalk_id: str
    staff_id: str
    is_bot: bool

    def has(self, user_id: str) -> bool:
        return user_id in (self.dingtalk_id, self.staff_id)


def split_runs(text: str) -> list[Piece]:
    """Text as text and ``@name`` pieces; a run starts the text, follows whitespace or follows a run."""
    pieces: list[Piece] = []
    pos = 0
    last_end = -1
    for match in _RUN.finditer(text):
        start = match.start()
        if start and not text[start - 1].isspace() and start != last_end:
            continue  # a@b.c: not a mention
        if start > pos:
            pieces.append(Piece("text", text[pos:start]))
        pieces.append(Piece("at", match.group()[1:]))
        pos = last_end = match.end()
    if pos < len(text):
        pieces.append(Piece("text", text[pos:]))
    return pieces


def rich_pieces(items: list[Any], where: str) -> list[Piece]:
    """richText items in display order. Items come as ``{type, text}`` or as DingTalk's own
    ``{msgType, content}``; emoji, links and other kinds carry no text we can trust and are skipped."""
    pieces: list[Piece] = []
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
            pieces.append(Piece("picture", code=code))
        elif kind == "at":
            name = _str(item, "atName", f"{here}.atName") or text.strip().lstrip("@")
            pieces.append(Piece("at", name, user_id=_str(item, "atUserId", f"{here}.atUserId")))
        elif kind in ("", "text"):
            pieces.extend(split_runs(text))
    return pieces


def settle_mentions(
    pieces: list[Piece], at_users: list[AtUser], bot_id: str, *, repeated: bool, bot_mentioned: bool
) -> dict[AtUser, str]:
    """Mark the robot's own runs (the rule is in the module docstring) and name the other people.

    ``repeated``: the body repeats every mention, the robot's included (richText); a ``text`` body
    has lost the robot's, which DingTalk removes. Returns the name shown for each other person."""
    runs = [p for p in pieces if p.kind == "at"]
    others = [u for u in at_users if not u.is_bot]
    names: dict[AtUser, str] = {}
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


def render(pieces: list[Piece]) -> list[Part]:
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


def joined(parts: list[Part], *, pictures: bool) -> str:
    """Text runs one per line; with ``pictures``, ``[picture]`` where each picture was."""
    return "\n".join(p.render() for p in parts if p.kind == "text" or pictures)


@dataclass(frozen=True, slots=True)
class Audience:
    """What mention handling needs to know about the message."""

    at_users: list[AtUser]
    bot_id: str
    is_group: bool
    bot_mentioned: bool

    def settle(self, pieces: list[Piece], *, repeated: bool) -> dict[AtUser, str]:
        return settle_mentions(
            pieces, self.at_users, self.bot_id, repeated=repeated, bot_mentioned=self.bot_mentioned
        )


def read_at_users(data: Mapping[str, Any]) -> list[AtUser]:
    """``atUsers`` in order; the robot's entry is the one equal to ``chatbotUserId`` or, when that is
    unknown, any entry without a ``staffId`` (the robot's entry never has one)."""
    bot_user_id = _str(data, "chatbotUserId")
    found: list[AtUser] = []
    for index, entry in enumerate(_list(data, "atUsers", "atUsers")):
        if not isinstance(entry, dict):
            raise FrameError(f"atUsers[{index}] is not an object")
        dingtalk_id = _str(entry, "dingtalkId", f"atUsers[{index}].dingtalkId")
        staff_id = _str(entry, "staffId", f"atUsers[{index}].staffId")
        if not dingtalk_id and not staff_id:
            continue
        is_bot = dingtalk_id == bot_user_id if bot_user_id else not staff_id
        found.append(AtUser(dingtalk_id, staff_id, is_bot))
    return found


def mentions_of(at_users: list[AtUser], names: dict[AtUser, str]) -> tuple[Mention, ...]:
    """The people mentioned other than the robot, with the names the message showed for them."""
    return tuple(
        Mention(dingtalk_id=u.dingtalk_id, staff_id=u.staff_id, name=names.get(u, ""))
        for u in at_users
        if not u.is_bot
    )
