"""Chunks on the wire when their replica died: never sent twice.

With replicas (a store with several writers, :attr:`edgecrab.store.base.Store.sole_writer` False), the
replica holding a conversation's delivery lease marks each chunk ``sending`` in the ledger before it goes
out (one more write per chunk). If that replica is SIGKILLed, another one takes the conversation over
(:mod:`edgecrab.failover`) and finds the chunk still ``sending``: DingTalk may or may not have it, and
there is no way to ask. It is not sent again (recorded as sent, with a warning): a reply missing a chunk
in that rare case is better than every reply in flight repeating one. A chunk this replica marked itself
(a send it retries) is sent again as before. With one process (SQLite) nothing changes: a restart resends
a chunk whose send was not recorded.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from edgecrab.store.base import SENDING, OutboxChunk, Store

log = logging.getLogger("edgecrab.replies.delivery")

REMEMBERED = 10_000
"""Chunks this process marked ``sending`` that it remembers (the oldest are long finished)."""


class InFlight:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._mine: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.lost = 0
        """Chunks found ``sending`` by a replica that stopped, not sent again."""

    async def sent_elsewhere(self, chunk: OutboxChunk) -> bool:
        """True if another replica (or this one's earlier life) was sending ``chunk`` when it stopped;
        else the chunk is marked ``sending`` by this replica (with several writers)."""
        if self.store.sole_writer:
            return False
        ref = (chunk.reply_id, chunk.index)
        if ref in self._mine:
            return False
        if chunk.state == SENDING:
            self.lost += 1
            log.warning(
                "[delivery] chunk %d/%d of reply %s was on the wire when its replica stopped: not sending "
                "it again (DingTalk may have it)",
                chunk.index + 1,
                chunk.total,
                chunk.reply_id,
            )
            return True
        self._mine[ref] = None
        if len(self._mine) > REMEMBERED:
            self._mine.popitem(last=False)
        await self.store.outbox_mark(chunk.reply_id, chunk.index, SENDING)
        return False
