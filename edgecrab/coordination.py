"""Coordination between gateway replicas, as the session runner sees it: one run per session cluster-wide,
the session's queue in arrival order across replicas, ``/stop``, ``/new`` and interrupts reaching the
replica that runs a session; a conversation's chunks sent by one replica at a time (the delivery lease);
a dead replica's unfinished messages and unsent chunks taken over by the live ones.

The store provides it (:meth:`edgecrab.store.base.Store.coordination`): one process on SQLite gets
:class:`LocalCoordination`, which does nothing (the runner's own per-session worker already serializes a
session's runs); replicas on Redis get :class:`edgecrab.store.redis_coord.RedisCoordination` (a session
lease and queue in Redis, signals over pub/sub). The core stays platform- and store-neutral.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Protocol

import anyio
import anyio.abc

STOP, NEW, INTERRUPT = "stop", "new", "interrupt"
SEND, ON_THE_WIRE, FINISHED, LEASE_LOST = "send", "on the wire", "finished", "lease lost"
"""What :meth:`Coordination.start_sending` says of a chunk about to go out."""
"""What a signal asks the replica running a session to do: cancel the run and drop the queue; /new also
makes the run in flight write nothing to the session."""

OnSignal = Callable[[str, str], Awaitable[None]]
"""on_signal(session_key, what): another replica sent ``what`` for a session."""


class NotFirst(Exception):
    """Raised by :meth:`Coordination.hold`: another of this replica's queued messages, ``msg_id``, comes
    first in the session's queue (it arrived earlier, or was taken over from a dead replica)."""

    def __init__(self, msg_id: str) -> None:
        super().__init__(msg_id)
        self.msg_id = msg_id


def replica_id() -> str:
    """This process's name among the replicas: ``$EDGECRAB_REPLICA_ID``, or host name, pid and a random tag
    (a restarted process is a new replica: the old one's leases expire on their own)."""
    given = os.environ.get("EDGECRAB_REPLICA_ID", "").strip()
    if given:
        return given[:64].replace("|", "_")
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Coordination(Protocol):
    replica_id: str
    shared: bool
    """True when other replicas share the store (Redis): the failover sweep runs
    (:mod:`edgecrab.failover`)."""

    async def run(
        self, on_signal: OnSignal, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Heartbeat and signal listener, until cancelled; ``on_signal`` hears other replicas' signals."""
        ...

    async def enqueue(self, key: str, msg_id: str, *, at_most: int | None = None) -> int | None:
        """Put a message in the session's cluster-wide queue (in arrival order; once), unless it holds
        more than ``at_most`` messages already (None: however many). How many it held before (every
        replica's, as :meth:`waiting` counts them), or None when the message was not enqueued: the busy
        policy's count and decision in one step (one round trip on Redis)."""
        ...

    def hold(
        self, key: str, msg_id: str, given_up: Callable[[], bool], queued: Callable[[str], bool] = ...
    ) -> AbstractAsyncContextManager[None]:
        """``async with coord.hold(key, msg_id, given_up, queued)``: wait until ``msg_id`` heads the
        session's queue and this replica holds the session's lease (renewed while held), or ``given_up()``
        turns true; on exit the message leaves the queue and the lease is released. Raises
        :class:`NotFirst` when another message this replica has queued (``queued(msg_id)``) comes first."""
        ...

    async def waiting(self, key: str) -> int:
        """Messages in the session's queue on every replica, the running one included (0: idle)."""
        ...

    async def drop(self, key: str, msg_ids: list[str]) -> None:
        """Take messages that will never run (/stop, /new, interrupt) out of the session's queue."""

    async def signal(self, key: str, what: str) -> None:
        """Tell the other replicas: ``what`` (STOP, NEW, INTERRUPT) for session ``key``."""

    async def take_delivery(self, conversation: str) -> bool:
        """Take the conversation's delivery lease (renewed while held): True when this replica is to send
        its unsent chunks, in order; False when another replica holds it (and will send ours too)."""
        ...

    async def give_delivery_back(self, conversation: str, *, finished: bool = True) -> bool:
        """Release the delivery lease. ``finished``: only if the ledger holds nothing unsent for the
        conversation; else the lease is kept and False returned (another replica recorded chunks and left
        them to this one: send them too). Not ``finished`` (cancelled, failed): released as it is."""
        ...

    async def start_sending(
        self, conversation: str, reply_id: str, index: int, interval_s: float
    ) -> str:
        """Just before a chunk goes out, while holding the conversation's delivery lease: ``SEND`` when it
        is to be sent now (marked as being sent by this replica; returned once ``interval_s`` has passed
        since the conversation's last message went out, from any replica); ``ON_THE_WIRE``: another
        replica was sending it when it stopped; ``FINISHED``: sent, cancelled or given up meanwhile (a
        ``/stop`` on another replica); ``LEASE_LOST``: this replica's lease lapsed and another live one
        took it over. One atomic step: a chunk never goes out twice."""
        ...

    async def adopt(self, robot: str, *, starting: bool = False) -> list[str] | None:
        """The unfinished messages this replica takes over, exactly once across replicas: those whose
        replica is gone (``starting``: this replica's earlier life's too). None: no other replicas, every
        unfinished message is this process's."""
        ...

    async def orphaned_conversations(self) -> list[str]:
        """Conversations with unsent chunks and no live replica sending them."""
        ...

    async def reserve(self, bucket: str, rate: float, burst: float) -> float | None:
        """A token from the rate-limit bucket every replica shares (DingTalk limits each app): the seconds
        to wait for it; None without replicas (:class:`edgecrab.dingtalk.ratelimit.Buckets`)."""
        ...


def _no(msg_id: str) -> bool:
    return False


_NOTHING: AbstractAsyncContextManager[None] = nullcontext()


class LocalCoordination:
    """One process: nothing to coordinate."""

    shared = False

    def __init__(self, replica: str = "") -> None:
        self.replica_id = replica or replica_id()

    async def run(
        self, on_signal: OnSignal, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()

    async def enqueue(self, key: str, msg_id: str, *, at_most: int | None = None) -> int | None:
        return 0

    def hold(
        self, key: str, msg_id: str, given_up: Callable[[], bool], queued: Callable[[str], bool] = _no
    ) -> AbstractAsyncContextManager[None]:
        return _NOTHING  # a generator-based context manager cost a run 1.2 us here for nothing

    async def waiting(self, key: str) -> int:
        return 0

    async def drop(self, key: str, msg_ids: list[str]) -> None:
        return None

    async def signal(self, key: str, what: str) -> None:
        return None

    async def take_delivery(self, conversation: str) -> bool:
        return True

    async def give_delivery_back(self, conversation: str, *, finished: bool = True) -> bool:
        return True

    async def start_sending(
        self, conversation: str, reply_id: str, index: int, interval_s: float
    ) -> str:
        return SEND

    async def adopt(self, robot: str, *, starting: bool = False) -> list[str] | None:
        return None if starting else []

    async def orphaned_conversations(self) -> list[str]:
        return []

    async def reserve(self, bucket: str, rate: float, burst: float) -> float | None:
        return None
