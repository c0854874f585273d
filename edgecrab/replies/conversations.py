"""What the delivery remembers per conversation between its senders: when the last message went out (the
pacing between chunks, kept across replies) and whether the ledger holds anything unsent (*settled*).

Both memories are bounded: forgetting a pacing reference older than the interval changes nothing, and
forgetting a settled conversation costs one read of the ledger when it next gets a reply.
"""

from __future__ import annotations

import time
from collections.abc import Container

import anyio

PACING_KEPT = 1024
"""Pacing references kept before the ones older than the interval are dropped."""

SETTLED_MAX = 4096
"""Settled conversations remembered."""


class ConversationMemory:
    def __init__(self, chunk_interval_s: float, *, remember_settled: bool) -> None:
        self.chunk_interval_s = chunk_interval_s
        self._remember_settled = remember_settled
        self._last_sent: dict[str, float] = {}
        """Monotonic time of each conversation's last accepted message (the pacing reference)."""
        self._settled: dict[str, None] = {}

    async def pace(self, ckey: str) -> None:
        """Wait until the conversation's last message is ``chunk_interval_s`` old."""
        last = self._last_sent.get(ckey)
        if last is not None:
            wait = self.chunk_interval_s - (time.monotonic() - last)
            if wait > 0:
                await anyio.sleep(wait)

    def sent(self, ckey: str) -> None:
        self._last_sent[ckey] = time.monotonic()

    def settle(self, ckey: str) -> None:
        """The conversation's sender found nothing more to send, and nothing was recorded meanwhile."""
        if self._remember_settled:
            self._settled[ckey] = None

    def take_settled(self, ckey: str) -> bool:
        """True (once) if the conversation was settled: a reply just recorded is all it has unsent."""
        try:
            del self._settled[ckey]
        except KeyError:
            return False
        return True

    def forget_old(self, working: Container[str]) -> None:
        """Keep the memories bounded (``working``: conversations whose sender runs)."""
        if len(self._settled) > SETTLED_MAX:
            self._settled.clear()
        if len(self._last_sent) < PACING_KEPT:
            return
        horizon = time.monotonic() - self.chunk_interval_s
        self._last_sent = {k: t for k, t in self._last_sent.items() if t > horizon or k in working}
