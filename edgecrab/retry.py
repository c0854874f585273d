"""The one retry and backoff policy: every call edgecrab may try again goes through here.

:class:`Backoff` says how often and how long to wait: ``first_s * 2**n`` capped at ``cap_s``, with "equal
jitter" (at least half of the step, the rest random) so that a fleet of gateways, or 200 conversations hit
by the same outage, do not retry in step. :func:`retrying` runs an awaitable function under a policy with
tenacity (``AsyncRetrying``: its public API, with ``anyio.sleep`` so a cancelled caller stops waiting at
once); a retry waits at least what the failure itself asked for (a ``Retry-After`` header, DingTalk's
QpsLimit pause).

Who retries, and the worst case (stated here so that nobody nests another loop around these):

- **a reply chunk** (:mod:`edgecrab.replies.delivery`): ``send_retries + 1`` attempts in all (6 by default).
  One attempt is one send on one route: the sessionWebhook while it is valid, else the OpenAPI, plus at
  most one repeat with a fresh token when DingTalk rejects the cached one. Nothing below delivery retries.
- **an agent call** (:mod:`edgecrab.agents.openai`): ``agent.max_retries + 1`` attempts, only before the
  first token arrived, and never past ``agent.timeout_s``.
- **the Stream connection** (:mod:`edgecrab.dingtalk.stream`): reconnects forever by design (a gateway
  must come back when DingTalk does), waiting :meth:`Backoff.delay` between attempts, 1 s doubling to 60 s,
  reset once a connection has been healthy.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, retry_if_result, stop_after_attempt

T = TypeVar("T")

__all__ = ["Backoff", "RetryNotice", "retrying"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """``attempts`` tries in all, the first included (0: no limit); waits grow from ``first_s`` to
    ``cap_s``."""

    attempts: int
    first_s: float
    cap_s: float

    def step(self, retry: int) -> float:
        """The un-jittered wait before retry number ``retry + 1`` (``retry`` counts from 0)."""
        return min(self.cap_s, self.first_s * 2 ** min(retry, 62))

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before retry number ``retry + 1``: half the step, plus up to half again at random
        (``rand()`` in [0, 1))."""
        step = self.step(retry)
        return step / 2 + rand() * step / 2

    def worst_case_wait_s(self) -> float:
        """The longest the waits of one call can add up to (``inf`` without an attempt limit)."""
        if self.attempts <= 0:
            return float("inf")
        return sum(self.step(n) for n in range(self.attempts - 1))


@dataclass(frozen=True, slots=True)
class RetryNotice:
    """What :func:`retrying` tells ``on_retry`` before it waits: for a log line."""

    retry: int
    """The retry about to happen: 1 for the second attempt."""
    of: int
    """Retries allowed in all."""
    delay_s: float
    result: Any
    """The failed attempt's result, or None when it raised."""
    error: BaseException | None


async def retrying(
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    retry_result: Callable[[T], bool] = lambda result: False,
    retry_error: Callable[[BaseException], bool] = lambda error: False,
    min_wait: Callable[[T | None, BaseException | None], float] = lambda result, error: 0.0,
    on_retry: Callable[[RetryNotice], None] | None = None,
    rand: Callable[[], float] = random.random,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> T:
    """Await ``call()`` until it gives a result ``retry_result`` does not want repeated, or raises an error
    ``retry_error`` does not, or ``backoff.attempts`` ran out. Then return that last result or raise that
    last error, as they are: callers never see a tenacity type.

    The first attempt runs before any tenacity object is made: almost every call succeeds at once, and
    setting up ``AsyncRetrying`` cost a send about a tenth of its CPU (BENCHMARKS.md, issue 14).
    """
    try:
        first: T = await call()
    except Exception as exc:
        if backoff.attempts == 1 or not retry_error(exc):
            raise
        first_error: BaseException | None = exc
        first_result: Any = None
    else:
        if backoff.attempts == 1 or not retry_result(first):
            return first
        first_error, first_result = None, first

    def wait(state: RetryCallState) -> float:
        result, error = _outcome(state)
        return max(backoff.delay(state.attempt_number, rand), min_wait(result, error))

    def notify(retry: int, delay: float, result: Any, error: BaseException | None) -> None:
        if on_retry is not None:
            on_retry(RetryNotice(retry, max(backoff.attempts - 1, 0), delay, result, error))

    def before_sleep(state: RetryCallState) -> None:
        result, error = _outcome(state)
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        notify(state.attempt_number + 1, delay, result, error)

    delay = max(backoff.delay(0, rand), min_wait(first_result, first_error))
    notify(1, delay, first_result, first_error)
    await sleep(delay)
    policy = AsyncRetrying(
        sleep=sleep,
        stop=stop_after_attempt(backoff.attempts - 1) if backoff.attempts > 0 else _never,
        wait=wait,
        retry=retry_if_result(retry_result) | retry_if_exception(retry_error),
        before_sleep=before_sleep,
        retry_error_callback=_last_outcome,
        reraise=True,
    )
    result: T = await policy(call)
    return result


def _never(state: RetryCallState) -> bool:
    return False


def _outcome(state: RetryCallState) -> tuple[Any, BaseException | None]:
    outcome = state.outcome
    if outcome is None:
        return None, None
    if outcome.failed:
        return None, outcome.exception()
    return outcome.result(), None


def _last_outcome(state: RetryCallState) -> Any:
    """Out of attempts: the last result as it is, or the last error raised again."""
    assert state.outcome is not None
    return state.outcome.result()
