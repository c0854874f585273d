"""Token-bucket rate limiting for outbound DingTalk calls.

DingTalk throttles each app per API (20 requests/s on a standard plan) and answers an excess with
``403 QpsLimitForAppkeyAndApi``. The sender keeps one :class:`RateLimiter` per OpenAPI path and one for
sessionWebhook posts, so a burst of replies is spread out instead of bounced.

The bucket works by reservation: :meth:`RateLimiter.reserve` takes a token at once (the balance may go
negative) and says how long the caller must wait before using it. Callers therefore leave in the order
they arrived, without holding a lock while they sleep. Clock and sleep are injectable so tests can check
the arithmetic without waiting.

DingTalk's limits are per app, not per process: with replicas on Redis every limiter also has a
:class:`Buckets` (the replicas' coordination, :mod:`edgecrab.store.redis_buckets`), which keeps the same
bucket in Redis, shared by every replica (one script run per call; Redis's clock). If Redis cannot be
reached the limiter falls back to its own bucket rather than stop sending.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

log = logging.getLogger("edgecrab.dingtalk.ratelimit")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Buckets(Protocol):
    async def reserve(self, bucket: str, rate: float, burst: float) -> float | None:
        """Take one token from the shared bucket ``bucket``: the seconds to wait before acting on it, or
        None when there are no shared buckets (one process)."""
        ...


class RateLimiter:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst`` tokens.

    ``rate <= 0`` disables limiting. ``burst`` defaults to 1, which spaces calls evenly at ``1 / rate``
    seconds: a bucket that starts full and refills during the same second could let through nearly
    twice ``rate`` calls in one second, which is exactly what DingTalk's per-second counter punishes.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._updated = clock()
        self.shared: Buckets | None = None
        """Set with :func:`share`: the bucket lives there (every replica's calls count)."""
        self.name = ""
        self._shared_failing = False

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)

    def reserve(self) -> float:
        """Take one token now; return the seconds to wait before acting on it (0 when one was ready)."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        self._tokens -= 1.0
        if self._tokens > -1e-9:  # float residue of a refill that was exactly enough
            return 0.0
        return -self._tokens / self.rate

    async def acquire(self) -> None:
        """Wait until this caller may make one request."""
        delay = await self._reserve_shared() if self.shared is not None and self.rate > 0 else None
        if delay is None:
            delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)

    async def _reserve_shared(self) -> float | None:
        assert self.shared is not None
        try:
            delay = await self.shared.reserve(self.name, self.rate, self.burst)
        except Exception as exc:  # Redis away: this replica's own bucket meanwhile
            if not self._shared_failing:
                log.warning("[dingtalk] shared rate limit %s unavailable (%s); limiting here", self.name, exc)
            self._shared_failing = True
            return None
        self._shared_failing = False
        return delay


def share(limiter: RateLimiter, buckets: Buckets, name: str) -> RateLimiter:
    """Keep ``limiter``'s bucket in ``buckets`` under ``name`` (the app and the API it limits)."""
    limiter.shared, limiter.name = buckets, name
    return limiter
