"""The agent backend interface.

A backend turns an :class:`~edgecrab.events.AgentRequest` into an :class:`~edgecrab.events.AgentResult`.
The gateway runs each call inside its own cancel scope: ``/stop`` cancels it, and a backend must
release what it holds (close the HTTP stream, kill the subprocess) when cancelled, within a second.
Backends raise :class:`AgentError` with a short, user-presentable message for expected failures
(timeout, 401, garbage); the gateway turns any other exception into a generic failure.

Streaming: :meth:`Agent.stream` is :meth:`Agent.run` that also hands each piece of text to ``on_delta`` as
it is produced (``openai``: tokens; ``command``: stdout lines; ``python``: what an async generator yields;
``echo``: words, paced). The joined deltas are the answer so far; the returned result is still the whole
answer, which is what the reply carries (a backend may tidy it, e.g. strip it). The gateway calls
:meth:`~Agent.stream` only when the answer is shown live (``reply_mode: card``), :meth:`~Agent.run`
otherwise; a backend that cannot stream inherits the default, one delta with the whole answer at the end.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

from edgecrab.events import AgentRequest, AgentResult

Deltas = Callable[[str], None]
"""Receives the answer piece by piece, in order (never awaited: it must not block)."""


def ignore_deltas(piece: str) -> None:
    """An ``on_delta`` for :meth:`Agent.run` implemented as :meth:`Agent.stream`."""


class AgentError(Exception):
    """A failure to show the user, e.g. ``the agent returned 401: check agent.api_key``."""

    def __init__(self, user_message: str, *, cause: str = "") -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.cause = cause or user_message


class Agent(abc.ABC):
    name: str = "agent"
    uses_history: bool = True
    """False for a backend that never reads the conversation's earlier turns (``echo``): the runner reads
    none from the store for it, and its requests carry the new user turn alone."""

    @abc.abstractmethod
    async def run(self, request: AgentRequest) -> AgentResult:
        """Produce the reply. ``result.text`` is the whole answer (markdown allowed)."""

    async def stream(self, request: AgentRequest, on_delta: Deltas) -> AgentResult:
        """:meth:`run`, calling ``on_delta(piece)`` with each piece of the answer as it is produced."""
        result = await self.run(request)
        if result.text:
            on_delta(result.text)
        return result

    async def aclose(self) -> None:
        """Release shared resources (HTTP clients) at gateway shutdown."""
        return None
