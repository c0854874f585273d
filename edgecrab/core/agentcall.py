"""One call to the agent: under a time limit, with every failure turned into an :class:`AgentResult`
carrying what went wrong (:func:`failure_text` words it for the person who asked), so a broken or hanging
backend never breaks a run.

:mod:`edgecrab.core.runs` makes the call stoppable (``/stop``, ``/new``) and decides what is recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from edgecrab.agents.base import Agent, AgentError, Deltas
from edgecrab.events import AgentRequest, AgentResult, Message
from edgecrab.store.base import FAILED, Store

log = logging.getLogger("edgecrab.core.agentcall")


USER_FAILURE_TEXT = "⚠️ Sorry — I couldn't answer this time. Send /retry to try again."
"""What an ordinary user is told when the run failed: the detail is for admins and the log."""
ADMIN_NOTE = "_(Only admins see this detail; everyone else is asked to /retry.)_"


def failure_text(error: str, *, admin: bool = False) -> str:
    """An agent failure as the person who asked sees it. An ordinary user: :data:`USER_FAILURE_TEXT`. A
    DingTalk admin (the payload's ``isAdmin``) gets the detail, which says what to fix:
    ``⚠️ The agent returned 401: check agent.api_key``."""
    if not admin:
        return USER_FAILURE_TEXT
    error = error.strip() or "the agent failed to answer — /retry to try again"
    return f"⚠️ {error[:1].upper()}{error[1:]}\n\n{ADMIN_NOTE}"


async def failure_answer(hooks: Any, error: str, message: Message) -> str:
    """What the user is told when the agent failed: a ``handle_error`` hook's text, or ours."""
    if hooks is not None:
        custom = await hooks.first("handle_error", error=error, message=message)
        if isinstance(custom, str) and custom:
            return custom
    return failure_text(error, admin=message.sender.is_admin)


async def call_agent(
    agent: Agent,
    request: AgentRequest,
    *,
    timeout_s: float,
    message_id: str,
    on_delta: Deltas | None = None,
    limiter: anyio.Semaphore | None = None,
    scope: anyio.CancelScope | None = None,
) -> AgentResult:
    """``agent.run(request)`` (``agent.stream`` with ``on_delta``), cut off after ``timeout_s`` plus 5 s of
    slack; with ``limiter``, once it lends a token (the runner's ``max_concurrent_runs``: a semaphore, not a
    ``CapacityLimiter``, which looks up the current task to take a token and to give it back, two system
    calls a run on CPython 3.11).

    ``scope``: the caller's cancel scope around this call (the run's, which ``/stop`` cancels), given the
    time limit as its deadline instead of a scope of the call's own (a cancel scope with a deadline is about
    44,000 instructions; one a run). The call then ends in that scope's cancellation, and the caller tells
    it from a stop and answers with :func:`timed_out`."""
    if limiter is None:
        return await _call_agent(agent, request, timeout_s, message_id, on_delta, scope)
    try:
        # A free token is taken at once: ``async with limiter`` gives the event loop a turn first even then,
        # one more step of the loop for every run (BENCHMARKS.md 1a).
        limiter.acquire_nowait()
    except anyio.WouldBlock:
        await limiter.acquire()
    try:
        return await _call_agent(agent, request, timeout_s, message_id, on_delta, scope)
    finally:
        limiter.release()


def timed_out(timeout_s: float, message_id: str, elapsed: float) -> AgentResult:
    """The result of an agent call cut off at its time limit."""
    log.warning("[runs] agent timed out for message %s", message_id)
    error = f"the agent timed out after {timeout_s:.0f} s — /retry to try again"
    return AgentResult("", duration_s=elapsed, failed=True, error=error)


async def _call_agent(
    agent: Agent,
    request: AgentRequest,
    timeout_s: float,
    message_id: str,
    on_delta: Deltas | None,
    scope: anyio.CancelScope | None,
) -> AgentResult:
    started = time.monotonic()

    def failed(error: str) -> AgentResult:
        return AgentResult("", duration_s=time.monotonic() - started, failed=True, error=error)

    try:
        answer = agent.run(request) if on_delta is None else agent.stream(request, on_delta)
        if scope is not None:
            scope.deadline = min(scope.deadline, anyio.current_time() + timeout_s + 5)
            return await answer
        # move_on_after and the raise below, not fail_after: the same bound for two thirds of the CPU.
        with anyio.move_on_after(timeout_s + 5):
            return await answer
        raise TimeoutError
    except AgentError as exc:
        detail = exc.user_message if exc.cause == exc.user_message else f"{exc.user_message} ({exc.cause})"
        log.warning("[runs] agent failed for message %s: %s", message_id, detail)
        return failed(exc.user_message)
    except TimeoutError:
        return timed_out(timeout_s, message_id, time.monotonic() - started)
    except Exception as exc:
        log.exception("[runs] agent crashed for message %s", message_id)
        return failed(f"the agent failed ({type(exc).__name__}) — /retry to try again")


__all__ = ["USER_FAILURE_TEXT", "call_agent", "failure_answer", "failure_text"]


async def run_crashed(
    store: Store,
    reply: Callable[[Message, str, str], Awaitable[None]],
    message: Message,
    key: str,
    exc: Exception,
) -> None:
    """A run that broke (a storage error, a bug): logged, the message failed, and its sender told so. One
    broken run must never take the other sessions down."""
    runs_log = logging.getLogger("edgecrab.core.runs")
    runs_log.error(
        "[runs] %s: run for message %s failed unexpectedly: %s: %s",
        key,
        message.id,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    try:
        reason = f"internal error: {type(exc).__name__}"
        await store.inbox_set_state(message.robot, message.id, FAILED, reason)
        await reply(message, "⚠️ Sorry — something went wrong while answering. /retry to try again.", key)
    except Exception:
        runs_log.exception("[runs] %s: could not report the failure of message %s", key, message.id)
