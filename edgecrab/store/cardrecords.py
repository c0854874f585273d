"""The open AI cards of the storage interface (part of :class:`~edgecrab.store.base.Store`).

A card is recorded *before* DingTalk creates it and forgotten once the run it answers is recorded as
finished, so no card can be shown without a record, and a record outlives its card only by a store write.
Each record names the message it answers and its **owner**, the replica streaming it
(:attr:`edgecrab.coordination.Coordination.replica_id`). When the owner is gone (killed, restarted) its
cards are picked up in one of two ways, each exactly once across replicas:

* the message is unfinished, so it runs again (a restart, a live replica's failover): that run *takes the
  card* (:meth:`CardRecords.card_take`, or :meth:`CardRecords.card_open` when it opens its card) and
  streams its answer into it, so the person gets one card with one complete answer;
* the message is finished (given up, dropped by ``/stop`` or ``/new``, or the card's finish failed):
  :meth:`CardRecords.card_adopt` hands the card to one live replica, which finishes it with what it showed
  and a notice, or with the text and state recorded for a finish that failed.

"Gone" is the store's notion: on Redis an owner whose heartbeat key (``replica:<id>``) expired; for SQLite,
one process, any owner but the caller (an earlier life). The ``robot`` of these methods is the robot's
name, as in the inbox (``Message.robot``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

CARD_STREAMING = ""
"""A record's state while its run streams into the card."""
CARD_DONE = "done"
"""The card was finished; the record waits for its run's end to be recorded, then goes."""
# "stopped" and "failed": the card's finish failed; finish it later with the record's ``text``.


@dataclass(frozen=True, slots=True)
class CardRecord:
    robot: str
    card_id: str
    """The card's ``outTrackId``."""
    msg_id: str
    """The message the card answers ("" for none known)."""
    session_key: str
    owner: str
    """The replica streaming it, or that took it over."""
    route: dict[str, Any] = field(default_factory=dict)
    """Where it is: the :class:`~edgecrab.events.ReplyRoute` fields without the session webhook."""
    content_key: str = ""
    opened_at: float = 0.0
    """When it was recorded (epoch seconds)."""
    shown: str = ""
    """The text the card showed when last saved (the watchdog's ticks, shutdown)."""
    state: str = CARD_STREAMING
    text: str = ""
    """With state ``stopped`` or ``failed``: the text to finish it with."""


class CardAdoption(NamedTuple):
    finish: list[CardRecord]
    """Cards now the caller's, to finish (their owner is gone and their message finished)."""
    waiting: list[str]
    """The caller's own cards (an earlier life's, or ``mine``) whose message is still unfinished: a run of
    it will take the card; ask again later with these as ``mine``."""


class CardRecords(abc.ABC):
    @abc.abstractmethod
    async def card_open(self, record: CardRecord) -> CardRecord | None:
        """Record a card about to be created, streamed by ``record.owner``. If ``record.msg_id`` has an
        open card already whose owner is gone or is ``record.owner`` (an earlier run of the message left
        it), nothing is recorded: that card is taken (its owner and state set as in :meth:`card_take`)
        and returned, for the run to stream into instead. Atomic."""

    @abc.abstractmethod
    async def card_take(self, robot: str, msg_id: str, replica: str) -> CardRecord | None:
        """The open card of message ``msg_id`` whose owner is gone or is ``replica``, now ``replica``'s,
        state ``CARD_STREAMING`` (returned as it was before); None when there is none. Atomic: of
        several callers at once one gets it."""

    @abc.abstractmethod
    async def card_update(
        self,
        robot: str,
        card_id: str,
        *,
        shown: str | None = None,
        state: str | None = None,
        text: str | None = None,
    ) -> None:
        """Change the given fields of a recorded card; nothing when it is not recorded."""

    @abc.abstractmethod
    async def card_close(self, robot: str, card_id: str, owner: str = "") -> None:
        """Forget a card (nothing when it is not recorded); with ``owner``, only while it is that replica's
        (a replica whose lease lapsed must not forget a card another one took over)."""

    @abc.abstractmethod
    async def card_get(self, robot: str, card_id: str) -> CardRecord | None: ...

    @abc.abstractmethod
    async def card_adopt(
        self, robot: str, replica: str, *, starting: bool = False, mine: Sequence[str] = ()
    ) -> CardAdoption:
        """Look at ``robot``'s recorded cards, oldest first: forget those ``CARD_DONE`` whose message is
        finished; take those whose owner is gone (or is ``replica`` and ``starting``, or named in
        ``mine``) and whose message is finished (or unknown): their owner becomes ``replica`` and they are
        returned to finish. Atomic: a card is taken by one caller only."""
