"""Token-bucket rate limiting for outbound DingTalk calls.

DingTalk throttles each app per API (20 requests/s on a standard plan) and answers an excess with
``403 QpsLimitForAppkeyAndApi``. The sender keeps one :class:`RateLimiter` per OpenAPI path and one for
sessionWebhook posts, so a burst of replies is spread out instead of bounced.

The bucket works by reservation: :meth:`RateLimiter.reserve` takes a token at once (the balance may go
negative) and says how long the caller must wait before using it. Callers therefore leave in the order
they arrived, without holding a lock while they sleep. Clock and sleep are injectable so tests can check
the arithmetic without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


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
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)
