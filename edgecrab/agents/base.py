"""The agent backend interface.

A backend turns an :class:`~edgecrab.events.AgentRequest` into an :class:`~edgecrab.events.AgentResult`.
The gateway runs each call inside its own cancel scope: ``/stop`` cancels it, and a backend must
release what it holds (close the HTTP stream, kill the subprocess) when cancelled, within a second.
Backends raise :class:`AgentError` with a short, user-presentable message for expected failures
(timeout, 401, garbage); the gateway turns any other exception into a generic failure.
"""

from __future__ import annotations

import abc

from edgecrab.events import AgentRequest, AgentResult


class AgentError(Exception):
    """A failure to show the user, e.g. ``the agent returned 401: check agent.api_key``."""

    def __init__(self, user_message: str, *, cause: str = "") -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.cause = cause or user_message


class Agent(abc.ABC):
    name: str = "agent"

    @abc.abstractmethod
    async def run(self, request: AgentRequest) -> AgentResult:
        """Produce the reply. ``result.text`` is the whole answer (markdown allowed)."""

    async def aclose(self) -> None:
        """Release shared resources (HTTP clients) at gateway shutdown."""
        return None
