"""Keyword veto: silently drop messages that contain a configured word or phrase (case-insensitive).

Settings (``hooks.config.20_keyword_veto``)::

    words: [salary, "internal only"]   # none configured: every message is allowed

A veto only drops: the sender gets no answer and the agent never sees the message; the gateway logs
which hook vetoed it. To answer instead, register a command or use ``prepare_message``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgecrab import hookimpl
from edgecrab.events import Message

_words: tuple[str, ...] = ()


@hookimpl
def hook_loaded(config: Mapping[str, Any]) -> None:
    global _words
    words = config.get("words", [])
    if isinstance(words, str) or not all(isinstance(w, str) for w in words):
        raise ValueError("words must be a list of strings")
    _words = tuple(w.casefold() for w in words if w.strip())


@hookimpl
def allow_message(message: Message) -> bool:
    text = message.text.casefold()
    return not any(word in text for word in _words)
