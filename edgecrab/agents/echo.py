"""The echo agent: the default when no agent is configured, for trying the gateway end to end.

It answers every message with a clearly marked copy of it and a hint on how to connect a real agent, so
nobody mistakes it for an AI. It reports no token usage. Streamed (``reply_mode: card``), it hands the
answer out word by word, :data:`WORD_DELAY_S` apart, so the sandbox shows a card growing; :meth:`run`
(markdown replies) answers at once.
"""

from __future__ import annotations

import re
import time

import anyio

from edgecrab.agents.base import Agent, Deltas
from edgecrab.events import AgentRequest, AgentResult, Usage

HINT = "(this is the echo agent: set agent.type in the edgecrab config to connect a real one)"
WORD_DELAY_S = 0.08
"""Pause between two streamed words: slow enough to watch a card grow."""
_WORDS = re.compile(r"\S+\s*|\s+")


class EchoAgent(Agent):
    name = "echo"
    uses_history = False  # it repeats the new message: the history is not read for it

    def __init__(self, *, word_delay_s: float = WORD_DELAY_S) -> None:
        self.word_delay_s = word_delay_s

    async def run(self, request: AgentRequest) -> AgentResult:
        return AgentResult(text=_reply(request), usage=Usage())

    async def stream(self, request: AgentRequest, on_delta: Deltas) -> AgentResult:
        started = time.monotonic()
        reply = _reply(request)
        for index, word in enumerate(_WORDS.findall(reply)):
            if index:
                await anyio.sleep(self.word_delay_s)
            on_delta(word)
        return AgentResult(text=reply, usage=Usage(), duration_s=time.monotonic() - started)


def _reply(request: AgentRequest) -> str:
    text = ""
    for message in reversed(request.messages):
        if message.get("role") == "user":
            text = message.get("content", "")
            break
    return f"🦀 echo: {text}\n\n{HINT}"
