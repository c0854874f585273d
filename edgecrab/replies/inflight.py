"""Chunks on the wire with replicas: never sent twice, never after a ``/stop``, paced across replicas.

With replicas (a store with several writers, :attr:`edgecrab.store.base.Store.sole_writer` False), the
replica holding a conversation's delivery lease marks each chunk ``sending`` just before it goes out,
in one atomic step with a check of the chunk and the lease (:meth:`edgecrab.coordination.Coordination.
start_sending`, one round trip per chunk):

* If that replica is SIGKILLed, another one takes the conversation over (:mod:`edgecrab.failover`) and
  finds the chunk still ``sending``: DingTalk may or may not have it, and there is no way to ask. It is not
  sent again (recorded as sent, with a warning): a reply missing a chunk in that rare case is better than
  every reply in flight repeating one. So is a chunk an earlier life of this replica marked (restarted
  under the same ``EDGECRAB_REPLICA_ID``); a chunk this process marked itself (a send it retries) is sent
  again as before.
* A chunk cancelled meanwhile (``/stop`` or ``/new`` handled by another replica) is skipped, though this
  sender had read it before the cancel.
* A replica whose lease lapsed (its heartbeat could not reach Redis for ``storage.lease_s``) and was
  taken over by another stops sending: :class:`LeaseLost`.
* The conversation's last message may have gone out from another replica: the chunk waits until
  ``chunk_interval_s`` has passed since then.

With one process (SQLite) nothing of this happens: a restart resends a chunk whose send was not recorded.
"""

from __future__ import annotations

import logging

from edgecrab.coordination import FINISHED, LEASE_LOST, ON_THE_WIRE, SEND, Coordination
from edgecrab.store.base import OutboxChunk, Store

log = logging.getLogger("edgecrab.replies.delivery")

__all__ = ["InFlight", "LeaseLost", "SEND", "ON_THE_WIRE", "FINISHED"]


class LeaseLost(Exception):
    """Another replica took over the conversation's delivery lease: this one stops sending it."""


class InFlight:
    def __init__(self, store: Store, coord: Coordination, interval_s: float) -> None:
        self.store, self.coord, self.interval_s = store, coord, interval_s
        self.lost = 0
        """Chunks found ``sending`` by a replica that stopped, not sent again."""

    async def begin(self, chunk: OutboxChunk) -> str:
        """Whether ``chunk`` is to be sent now (``SEND``, once the pace across replicas allows), was
        ``ON_THE_WIRE`` when its replica stopped, or ``FINISHED`` meanwhile. Raises :class:`LeaseLost`."""
        if self.store.sole_writer:
            return SEND
        outcome = await self.coord.start_sending(
            chunk.conversation_key, chunk.reply_id, chunk.index, self.interval_s
        )
        if outcome == LEASE_LOST:
            log.warning(
                "[delivery] another replica took over sending to %s (this one's lease lapsed)",
                chunk.conversation_key,
            )
            raise LeaseLost(chunk.conversation_key)
        if outcome == ON_THE_WIRE:
            self.lost += 1
            log.warning(
                "[delivery] chunk %d/%d of reply %s was on the wire when its replica stopped: not sending "
                "it again (DingTalk may have it)",
                chunk.index + 1,
                chunk.total,
                chunk.reply_id,
            )
        return outcome
