"""The storage interface. SQLite (WAL) implements it today; a Redis backend can replace it for replicas.

Five things live in storage:

* the **inbox**: every robot callback, recorded before it is acked, so a crash loses nothing and a
  redelivery (same ``msgId`` or same stream ``messageId``) is recognised, also after a restart;
* **sessions**: per session key, the conversation history and usage stats;
* the **outbox** (delivery ledger): each reply's chunks and their state, so a restart neither loses nor
  repeats the chunks still to send;
* small **key/value** facts (e.g. when a denied user was last told so);
* the **open AI cards** and the replica streaming each (:mod:`edgecrab.store.cardrecords`).

Methods are ``async`` so that a network-backed store fits the same interface; the SQLite store does its
short synchronous work inline (an insert in WAL mode takes well under a millisecond).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgecrab.coordination import Coordination, LocalCoordination
from edgecrab.errors import EdgecrabError
from edgecrab.store.cardrecords import CardRecords

# Inbox states
RECEIVED = "received"
PROCESSING = "processing"
DONE = "done"
FAILED = "failed"

# Outbox chunk states
PENDING = "pending"
SENDING = "sending"
SENT = "sent"
UNDELIVERABLE = "undeliverable"
CANCELLED = "cancelled"
"""Set by :meth:`Store.outbox_cancel` (/stop, /new): never sent."""

# What became of a schedule's slot (:meth:`Store.schedule_claim`)
ARMED = "armed"
"""The schedule was first seen: its ``slot`` is that instant, and only later slots are due."""
FIRED = "fired"
SKIPPED = "skipped"
"""Missed while the gateway was down, longer ago than ``schedules_catch_up_s``."""


class StoreUnavailableError(EdgecrabError):
    """A network-backed store (Redis) cannot be reached: nothing was recorded, or the outcome is unknown.
    On the ack path this means no ack (a 500): DingTalk delivers the message again."""


@dataclass(frozen=True, slots=True)
class InboxEntry:
    robot: str
    msg_id: str
    stream_message_id: str
    payload: str
    """The callback's ``data`` JSON text, exactly as received."""
    received_at: float
    state: str
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Turn:
    role: str
    """``user`` or ``assistant``."""
    content: str
    msg_id: str = ""
    at: float = 0.0


@dataclass(slots=True)
class SessionStats:
    key: str
    created_at: float
    last_active_at: float
    turns: int = 0
    messages_in: int = 0
    messages_out: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    agent_seconds: float = 0.0
    chunks_sent: int = 0
    last_user_text: str = ""
    last_user_msg_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other counters (``UsageDelta.extra``): ``card_calls`` and ``card_replies`` with AI cards."""


@dataclass(frozen=True, slots=True)
class OutboxChunk:
    reply_id: str
    index: int
    total: int
    conversation_key: str
    """Chunks of one conversation go out strictly in (created, reply_id, index) order."""
    route: dict[str, Any]
    """A serialised :class:`edgecrab.events.ReplyRoute`."""
    text: str
    mention: bool
    """@-mention the asker with this chunk (groups: the last chunk)."""
    title: str
    state: str
    created_at: float
    attempts: int = 0
    session_key: str = ""


@dataclass(frozen=True, slots=True)
class ChunkState:
    """Where one chunk of a reply stands in the ledger (:meth:`Store.outbox_reply`)."""

    index: int
    total: int
    state: str
    """``PENDING``, ``SENDING``, ``SENT``, ``UNDELIVERABLE`` or ``CANCELLED``."""
    error: str = ""


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """Where one schedule stands (:meth:`Store.schedule_records`)."""

    name: str
    slot: float
    """The last slot handled (epoch seconds): fired, skipped, or (``ARMED``) when it was first seen."""
    outcome: str
    """``ARMED``, ``FIRED`` or ``SKIPPED``."""
    at: float
    """When that was recorded."""
    fired_slot: float | None = None
    """The last slot that fired, and when (None: none yet)."""
    fired_at: float | None = None


@dataclass(slots=True)
class UsageDelta:
    turns: int = 0
    messages_in: int = 0
    messages_out: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    agent_seconds: float = 0.0
    chunks_sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Store(CardRecords):
    """Everything the gateway persists. One instance per gateway process. The open AI cards' methods are
    :class:`~edgecrab.store.cardrecords.CardRecords`'."""

    # -- lifecycle -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Create tables / connect. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    def coordination(self) -> Coordination:
        """How the session runner coordinates with other replicas sharing this store: nothing to do for
        one process (the default); Redis: session leases, queues and signals
        (:mod:`edgecrab.coordination`)."""
        return LocalCoordination()

    server: str = ""
    """The server a network-backed store talks to (``redis``): ``/readyz`` has a check by that name
    (:meth:`ping`). Empty for an embedded store."""

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailableError` (saying why) when the store's server cannot be reached."""
        return None

    async def maintain(self) -> None:
        """Periodic upkeep the gateway runs every second or so, off its event loop where it can (SQLite:
        the WAL checkpoint). Nothing by default."""
        return None

    # -- inbox -------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def inbox_claim(
        self, robot: str, msg_id: str, stream_message_id: str, payload: str, received_at: float
    ) -> bool:
        """Atomically record a callback. True if new; False if ``msg_id`` (or a non-empty
        ``stream_message_id``) was already recorded for this robot, whatever its state."""

    sole_writer: bool = True
    """True when this process is the only one that writes the store (SQLite): what it recorded and sent
    is all there is, so the delivery may hand chunks it just recorded straight to the conversation's
    sender instead of reading them back (:class:`edgecrab.replies.delivery.Delivery`). False for a store
    that several replicas share (Redis)."""

    records_at_once: bool = False
    """True for a store that commits in microseconds (SQLite): :meth:`inbox_claim_now` works, and the
    Stream connection records each callback with it right after ``recv()`` returns the frame, without
    awaiting, then acks it."""

    def inbox_claim_now(
        self, robot: str, items: Sequence[tuple[str, str, str]], received_at: float
    ) -> list[bool]:
        """:meth:`inbox_claim` for several callbacks (``(msg_id, stream_message_id, payload)``) in one
        commit and without awaiting: which were new, in order. Only when :attr:`records_at_once`."""
        raise NotImplementedError(f"{type(self).__name__} cannot record at once: await inbox_claim")

    async def inbox_claim_many(
        self, robot: str, items: Sequence[tuple[str, str, str]], received_at: float
    ) -> list[bool]:
        """:meth:`inbox_claim` for callbacks that arrived together (``(msg_id, stream_message_id,
        payload)``), recorded at once where the store can (Redis: one script run, one round trip): which
        were new, in order. A msgId twice in one call is new only the first time."""
        if self.records_at_once:
            return self.inbox_claim_now(robot, items, received_at)
        return [await self.inbox_claim(robot, *item, received_at) for item in items]

    @abc.abstractmethod
    async def inbox_set_state(self, robot: str, msg_id: str, state: str, error: str = "") -> None: ...

    @abc.abstractmethod
    async def inbox_unfinished(self, robot: str) -> list[InboxEntry]:
        """Entries in RECEIVED or PROCESSING state, oldest first (picked up again on start)."""

    async def inbox_backlog(self, robot: str) -> tuple[int, float | None]:
        """How many of ``robot``'s messages are unfinished, and when the oldest arrived (epoch seconds;
        None when there is none): the ops port's inbox depth and age. Stores override it with a cheaper
        query; this default reads the unfinished entries."""
        entries = await self.inbox_unfinished(robot)
        return len(entries), min((e.received_at for e in entries), default=None)

    @abc.abstractmethod
    async def inbox_prune(self, older_than: float) -> int:
        """Forget finished entries received before ``older_than`` (epoch s); returns how many."""

    # -- sessions ----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def session_stats(self, key: str) -> SessionStats | None: ...

    @abc.abstractmethod
    async def session_ensure(self, key: str, now: float) -> SessionStats:
        """Return the session's stats, creating the session if needed."""

    async def turn_started(self, key: str, *, robot: str, msg_id: str, now: float) -> None:
        """A run for inbox entry (``robot``, ``msg_id``) starts in session ``key``: the entry goes to
        ``PROCESSING`` (its ``attempts`` counted) and the session exists, in one write where the store can.
        """
        await self.inbox_set_state(robot, msg_id, PROCESSING)
        await self.session_ensure(key, now)

    @abc.abstractmethod
    async def history(self, key: str, limit: int) -> list[Turn]:
        """The last ``limit`` turns, oldest first."""

    @abc.abstractmethod
    async def history_append(self, key: str, turns: list[Turn]) -> None: ...

    @abc.abstractmethod
    async def history_pop_last_exchange(self, key: str) -> Turn | None:
        """For /retry: delete the trailing assistant turn(s) and the user turn before them;
        return that user turn (None if there is none)."""

    @abc.abstractmethod
    async def session_reset(self, key: str, now: float) -> None:
        """For /new: clear history and stats; the session starts afresh at ``now``."""

    @abc.abstractmethod
    async def usage_add(self, key: str, delta: UsageDelta, now: float, last_user: Turn | None = None) -> None:
        """Add to the session's counters; remember ``last_user`` for /retry when given."""

    @abc.abstractmethod
    async def sessions_expire(self, idle_before: float) -> int:
        """Reset sessions idle since before ``idle_before``; returns how many."""

    @abc.abstractmethod
    async def session_count(self) -> int: ...

    @abc.abstractmethod
    async def finish_turn(
        self,
        key: str,
        *,
        robot: str,
        msg_id: str,
        state: str,
        now: float,
        error: str = "",
        turns: Sequence[Turn] = (),
        usage: UsageDelta | None = None,
        last_user: Turn | None = None,
        reply: Sequence[OutboxChunk] = (),
    ) -> bool:
        """The end of one message's run, all or nothing: ``turns`` appended to session ``key``'s history,
        ``usage`` added to its counters (as :meth:`usage_add`, with ``last_user`` and ``now``), the
        ``reply`` chunks recorded as :meth:`outbox_add` does, and inbox entry (``robot``, ``msg_id``) set to
        ``state`` (``DONE`` or ``FAILED``) with ``error``. The session is created if turns or usage are given.

        Atomic: after a crash either none of it happened (the message is still unfinished, runs again on
        start, and nothing of it was sent) or all of it did (its reply is in the ledger and goes out, and
        it does not run again). Never an answer in the ledger for a message that will also run again.

        Returns False, having written nothing, when the message is no longer this process's: with
        replicas, another one took it over (this one's lease lapsed) and answers it instead."""

    # -- outbox (delivery ledger) ------------------------------------------------------------------
    @abc.abstractmethod
    async def outbox_add(self, chunks: list[OutboxChunk]) -> None:
        """Record all chunks of one reply atomically, in PENDING state."""

    @abc.abstractmethod
    async def outbox_pending(self, conversation_key: str | None = None) -> list[OutboxChunk]:
        """Chunks in PENDING or SENDING state, in send order (optionally for one conversation)."""

    @abc.abstractmethod
    async def outbox_mark(self, reply_id: str, index: int, state: str, error: str = "") -> None: ...

    @abc.abstractmethod
    async def outbox_sent(
        self, reply_id: str, index: int, *, session_key: str, chunks_sent: int, now: float
    ) -> None:
        """Mark a chunk ``SENT`` (as :meth:`outbox_mark`) and, atomically with it, add ``chunks_sent`` to
        session ``session_key``'s counter (``last_active_at`` advanced to ``now``; nothing when
        ``session_key`` is empty or ``chunks_sent`` is 0)."""

    @abc.abstractmethod
    async def outbox_prune(self, finished_before: float) -> int:
        """Delete chunks that were finished (sent, cancelled or undeliverable) before ``finished_before``
        (a ``time.time()``); returns how many. Unsent chunks are never deleted."""

    @abc.abstractmethod
    async def outbox_cancel(self, conversation_key: str, reply_id: str | None = None) -> int:
        """Mark unsent chunks (of one reply, or the whole conversation) as cancelled; returns how many."""

    @abc.abstractmethod
    async def outbox_reply(self, reply_id: str) -> list[ChunkState]:
        """The state of each chunk of one reply, in order; empty when the ledger has none (never
        recorded, or pruned)."""

    # -- small facts -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def kv_get(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def kv_set(self, key: str, value: str) -> None: ...

    # -- schedules ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def schedule_claim(self, name: str, slot: float, outcome: str, now: float) -> bool:
        """Atomically record that schedule ``name`` handled ``slot`` (``outcome``: ``FIRED``, ``SKIPPED``
        or ``ARMED``) at ``now``: True when this call did, because ``slot`` is later than the slot recorded
        (or none is); False when that slot or a later one was recorded already (before a restart, or by
        another replica sharing the store), and nothing changes. A caller sends only after a True
        ``FIRED`` claim, so a slot is never sent twice."""

    @abc.abstractmethod
    async def schedule_records(self) -> dict[str, ScheduleRecord]:
        """Every schedule's record, by name (a schedule never claimed has none)."""
