"""One call to the agent: under a time limit, with every failure turned into an :class:`AgentResult`
carrying the text the user sees (:func:`failure_text`), so a broken or hanging backend never breaks a run.

:mod:`edgecrab.core.runs` makes the call stoppable (``/stop``, ``/new``) and decides what is recorded.
"""

from __future__ import annotations

import logging
import time

import anyio

from edgecrab.agents.base import Agent, AgentError
from edgecrab.events import AgentRequest, AgentResult

log = logging.getLogger("edgecrab.core.agentcall")


def failure_text(error: str) -> str:
    """An agent failure as the user sees it: ``⚠️ The agent timed out after 120 s — /retry to try again.``"""
    error = error.strip() or "the agent failed to answer — /retry to try again"
    return f"⚠️ {error[:1].upper()}{error[1:]}"


async def call_agent(
    agent: Agent, request: AgentRequest, *, timeout_s: float, message_id: str
) -> AgentResult:
    """``agent.run(request)``, cut off after ``timeout_s`` plus 5 s of slack."""
    started = time.monotonic()

    def failed(error: str) -> AgentResult:
        return AgentResult("", duration_s=time.monotonic() - started, failed=True, error=error)

    try:
        with anyio.fail_after(timeout_s + 5):
            result = await agent.run(request)
    except AgentError as exc:
        log.warning("[runs] agent failed for message %s: %s", message_id, exc.cause)
        return failed(exc.user_message)
    except TimeoutError:
        log.warning("[runs] agent timed out for message %s", message_id)
        return failed(f"the agent timed out after {timeout_s:.0f} s — /retry to try again")
    except Exception as exc:
        log.exception("[runs] agent crashed for message %s", message_id)
        return failed(f"the agent failed ({type(exc).__name__}) — /retry to try again")
    return result


__all__ = ["call_agent", "failure_text"]
