"""Messages and replies left unfinished, picked up again: by this process when it starts, and, with
replicas on Redis, by the live replicas when one of them dies.

At start, :meth:`Failover.unfinished` takes the messages the last run left unfinished (on Redis: only
those whose replica is gone, or this replica's own from an earlier life; a message a live replica works on
stays with it). Messages whose runs were started :data:`MAX_RUN_ATTEMPTS` times are given up on, and
their senders told so: a message that crashes the process on every start must not keep it from ever
getting up again.

With replicas (:attr:`edgecrab.coordination.Coordination.shared`), :meth:`Failover.run` sweeps every
third of ``storage.lease_s``: a replica killed mid-run leaves messages received or processing whose owner's
heartbeat (``replica:<id>``) has expired; one live replica takes each over (a Lua script: exactly once)
and processes it as if it had just arrived (its session's queue entry is replaced, so the busy policy
does not count it twice). Conversations with unsent chunks whose delivery lease is free or held by a dead
replica get a sender here (which takes the lease first, so only one replica sends them). AI cards a dead
replica left open go with their message: a run of it again streams into the same card; the sweep finishes
those whose message will not run again (:mod:`edgecrab.dingtalk.cardrecover`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from edgecrab.coordination import Coordination
from edgecrab.dingtalk.convert import FrameError
from edgecrab.events import Message
from edgecrab.store.base import FAILED, InboxEntry, Store

log = logging.getLogger("edgecrab.failover")

MAX_RUN_ATTEMPTS = 3
"""Runs of one message started (and never finished: the process stopped) before it is given up on."""
GAVE_UP_TEXT = (
    "⚠️ Sorry — answering this message was interrupted {attempts} times (the gateway restarted), so I've "
    "given up on it. Send it again if you still need an answer."
)


class Failover:
    """One robot's pick-up of unfinished work. ``read`` turns an inbox entry into its message, ``reply``
    answers one (text, session key), ``requeue`` hands entries to the ingest queue, ``wake`` starts a
    conversation's sender, ``cards`` finishes the AI cards dead replicas left open
    (:meth:`edgecrab.dingtalk.cardreply.CardReplies.take_over`)."""

    def __init__(
        self,
        store: Store,
        coord: Coordination,
        robot: str,
        *,
        read: Callable[[InboxEntry], Message],
        reply: Callable[[Message, str], Awaitable[None]],
        requeue: Callable[[list[InboxEntry]], None],
        wake: Callable[[str], None],
        every_s: float,
        cards: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store, self.coord, self.robot = store, coord, robot
        self._read, self._reply, self._requeue, self._wake = read, reply, requeue, wake
        self._cards = cards
        self.every_s = max(every_s, 0.2)
        self.messages_taken_over = 0
        self.conversations_taken_over = 0

    async def unfinished(self, *, starting: bool = True) -> list[InboxEntry]:
        """Unfinished messages this replica is to process again (at start: what the last run left)."""
        adopted = await self.coord.adopt(self.robot, starting=starting)
        if adopted is not None and not adopted:
            return []
        entries = await self.store.inbox_unfinished(self.robot)
        if adopted is not None:
            taken = set(adopted)
            entries = [e for e in entries if e.msg_id in taken]
        again = [e for e in entries if e.attempts < MAX_RUN_ATTEMPTS]
        if again:
            whose = "the last run" if starting else "a replica that stopped"
            log.info("[gateway] picking up %d message(s) left unfinished by %s", len(again), whose)
        for e in entries:
            if e.attempts >= MAX_RUN_ATTEMPTS:
                await self._give_up(e)
        return again

    async def _give_up(self, entry: InboxEntry) -> None:
        reason = f"gave up after {entry.attempts} interrupted runs"
        log.error("[gateway] message %s: %s; not running it again", entry.msg_id, reason)
        await self.store.inbox_set_state(self.robot, entry.msg_id, FAILED, reason)
        try:
            message = self._read(entry)
        except FrameError:
            return  # unreadable: nobody to tell
        await self._reply(message, GAVE_UP_TEXT.format(attempts=entry.attempts))

    async def run(self) -> None:
        """The sweep, until cancelled; returns at once without replicas."""
        if not self.coord.shared:
            return
        while True:
            await anyio.sleep(self.every_s)
            try:
                await self.sweep()
            except Exception as exc:  # Redis away: the next sweep tries again
                log.warning("[replicas] failover sweep failed: %s: %s", type(exc).__name__, exc)

    async def sweep(self) -> None:
        """Once: take over dead replicas' unfinished messages, unsent chunks and open cards."""
        entries = await self.unfinished(starting=False)
        if entries:
            self.messages_taken_over += len(entries)
            self._requeue(entries)
        for conversation in await self.coord.orphaned_conversations():
            log.info("[replicas] sending the unsent chunks of %s (their sender stopped)", conversation)
            self.conversations_taken_over += 1
            self._wake(conversation)
        if self._cards is not None:
            await self._cards()
