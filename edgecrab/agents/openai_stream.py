"""Reading an OpenAI-compatible streaming answer: what has arrived so far (:class:`Answer`), the SSE body
split into lines (:func:`sse_lines`) and the usage block (:func:`parse_usage`). :mod:`edgecrab.agents.openai`
makes the call."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from edgecrab.agents.base import Deltas, ignore_deltas
from edgecrab.events import Usage

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass
class Answer:
    """What has arrived so far for one attempt."""

    on_delta: Deltas = ignore_deltas
    """Gets each piece of content as it arrives (``Agent.stream``)."""
    parts: list[str] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None
    done: bool = False
    chars: int = 0
    truncated: bool = False
    """The answer reached ``agent.max_answer_chars``: reading stopped there."""

    @property
    def text(self) -> str:
        return "".join(self.parts)


async def sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The body's lines, split on ``\r\n``, ``\r`` or ``\n`` (SSE's line ends), without them."""
    pending = ""  # the start of a line whose end has not arrived
    cr = False  # the last piece ended with "\r": a "\n" first in the next is part of that line end
    async for text in response.aiter_text():
        if cr and text.startswith("\n"):
            text = text[1:]
        cr = text.endswith("\r")
        lines = _LINE_BREAK.split(pending + text)
        pending = lines.pop()
        for line in lines:
            yield line
    if pending:
        yield pending


def parse_usage(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else 0,
        completion_tokens=completion if isinstance(completion, int) else 0,
    )
