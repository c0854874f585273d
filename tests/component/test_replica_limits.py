"""Replicas on one real redis-server (issue 21): DingTalk's per-app rate limits are one bucket shared by
every replica (a limiter falls back to its own bucket while Redis is away), and ``/readyz`` has a
``redis`` check that says why Redis cannot be reached."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from edgecrab.dingtalk.ratelimit import RateLimiter, share
from edgecrab.ops.ready import CHECK_TIMEOUT_S, readiness
from edgecrab.store.redis_store import RedisStore
from tests.redisserver import RedisServer

pytestmark = pytest.mark.anyio


async def test_two_replicas_share_one_bucket(redis_server: RedisServer) -> None:
    prefix = f"rl-{uuid.uuid4().hex[:10]}:"
    stores = [RedisStore(redis_server.url, prefix) for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)

        limiters = [share(RateLimiter(10, sleep=sleep), s.coordination(), "app:/v1.0/x") for s in stores]
        for n in range(6):  # alternately, as two replicas would
            await limiters[n % 2].acquire()
        # One slot every 0.1 s across both: the n-th call waits about n * 0.1 s (less the time spent).
        assert len(waits) == 5
        for n, wait in enumerate(waits, start=1):
            assert n * 0.1 - 0.05 < wait <= n * 0.1 + 1e-6, waits
        other = share(RateLimiter(10, sleep=sleep), stores[0].coordination(), "app:/v1.0/other")
        await other.acquire()
        assert len(waits) == 5  # another API's bucket is full: no wait
    finally:
        for store in stores:
            await store.close()


async def test_a_limiter_limits_on_its_own_while_redis_is_away_and_readyz_says_why(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    store = RedisStore(server.url, "rl:")
    await store.open()
    try:
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)

        parts: Any = SimpleNamespace(
            mode="http",
            store=store,
            sender=SimpleNamespace(tokens=SimpleNamespace(get=_token)),
            delivery=SimpleNamespace(failed_in_a_row=0),
        )
        assert (await readiness(parts))["redis"] == "ok"
        server.stop()
        broken = SimpleNamespace(reserve=_unreachable)
        limiter = share(RateLimiter(10, sleep=sleep), broken, "app:/v1.0/x")
        await limiter.acquire()
        await limiter.acquire()
        assert len(waits) == 1 and 0.05 < waits[0] <= 0.1  # its own bucket: still one call per 0.1 s
        started = time.monotonic()
        checks = await readiness(parts)
        assert time.monotonic() - started < CHECK_TIMEOUT_S + 2  # the store check waits its 3 s
        assert checks["redis"].startswith(
            f"[store] Redis at redis://127.0.0.1:{server.port}/0 is unreachable: ConnectionError"
        )
    finally:
        server.stop()
        with anyio.move_on_after(5):
            await store.close()


async def _token() -> str:
    return "token"


async def _unreachable(*_: Any) -> float:
    raise ConnectionError("Redis is away")
