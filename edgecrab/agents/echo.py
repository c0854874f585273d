"""The echo agent: the default when no agent is configured, for trying the gateway end to end.

It answers every message with a clearly marked copy of it and a hint on how to connect a real agent, so
nobody mistakes it for an AI. It reports no token usage.
"""

from __future__ import annotations

import time

from edgecrab.agents.base import Agent
from edgecrab.events import AgentRequest, AgentResult, Usage

HINT = "(this is the echo agent: set agent.type in the edgecrab config to connect a real one)"


class EchoAgent(Agent):
    name = "echo"

    async def run(self, request: AgentRequest) -> AgentResult:
        started = time.monotonic()
        text = ""
        for message in reversed(request.messages):
            if message.get("role") == "user":
                text = message.get("content", "")
                break
        earlier = max(len(request.messages) - 1, 0)
        history = f" · {earlier} earlier message{'s' if earlier != 1 else ''} in this conversation"
        reply = f"🦀 echo: {text}\n\n{HINT[:-1]}{history})"
        return AgentResult(text=reply, usage=Usage(), duration_s=time.monotonic() - started)
