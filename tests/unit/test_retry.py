"""The one retry policy (edgecrab.retry): attempt counts, waits, Retry-After floors, what callers get back."""

from __future__ import annotations

import random

import anyio
import pytest

from edgecrab.retry import Backoff, RetryNotice, retrying

pytestmark = pytest.mark.anyio


def test_steps_double_to_the_cap_and_jitter_stays_in_the_upper_half() -> None:
    backoff = Backoff(attempts=6, first_s=0.5, cap_s=4.0)
    assert [backoff.step(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    rng = random.Random(7)
    for n in range(6):
        for _ in range(50):
            assert backoff.step(n) / 2 <= backoff.delay(n, rng.random) <= backoff.step(n)
    assert backoff.delay(2, lambda: 0.0) == 1.0 and backoff.delay(2, lambda: 1.0) == 2.0


def test_worst_case_wait_is_the_sum_of_the_steps_between_attempts() -> None:
    assert Backoff(attempts=6, first_s=0.5, cap_s=4.0).worst_case_wait_s() == 0.5 + 1 + 2 + 4 + 4
    assert Backoff(attempts=1, first_s=0.5, cap_s=4.0).worst_case_wait_s() == 0
    assert Backoff(attempts=0, first_s=1, cap_s=60).worst_case_wait_s() == float("inf")


def test_a_huge_retry_number_does_not_overflow() -> None:
    assert Backoff(attempts=0, first_s=1, cap_s=60).step(10_000) == 60


async def test_a_wanted_result_is_returned_after_the_unwanted_ones() -> None:
    answers = iter(["busy", "busy", "ok"])
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        return next(answers)

    notices: list[RetryNotice] = []
    result = await retrying(
        call, Backoff(5, 0.001, 0.002), retry_result=lambda r: r == "busy", on_retry=notices.append
    )
    assert (result, calls) == ("ok", 3)
    assert [(n.retry, n.of, n.result) for n in notices] == [(1, 4, "busy"), (2, 4, "busy")]


async def test_out_of_attempts_the_last_result_comes_back_as_it_is() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        return f"busy {calls}"

    result = await retrying(call, Backoff(3, 0.001, 0.001), retry_result=lambda r: r.startswith("busy"))
    assert (result, calls) == ("busy 3", 3)


async def test_out_of_attempts_the_last_error_is_raised_as_it_is() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"down {calls}")

    with pytest.raises(ConnectionError, match="down 4"):
        await retrying(call, Backoff(4, 0.001, 0.001), retry_error=lambda e: isinstance(e, ConnectionError))
    assert calls == 4


async def test_an_error_not_to_retry_is_raised_at_once() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        await retrying(call, Backoff(4, 0.001, 0.001), retry_error=lambda e: isinstance(e, ConnectionError))
    assert calls == 1


async def test_the_failure_s_own_minimum_wait_wins_over_a_shorter_backoff() -> None:
    answers = iter(["slow down", "ok"])

    async def call() -> str:
        return next(answers)

    notices: list[RetryNotice] = []
    await retrying(
        call,
        Backoff(3, 0.001, 0.001),
        retry_result=lambda r: r != "ok",
        min_wait=lambda result, error: 0.05 if result == "slow down" else 0.0,
        on_retry=notices.append,
    )
    assert notices[0].delay_s == 0.05


async def test_a_cancelled_caller_stops_waiting_at_once() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        return "busy"

    with anyio.move_on_after(0.2) as scope:
        await retrying(call, Backoff(0, 60.0, 60.0), retry_result=lambda r: True)
    assert scope.cancelled_caught and calls == 1
