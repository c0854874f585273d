"""Sessions: which messages share a conversation (the session key), and what the gateway holds in memory
for each session while it runs (its run slot and queue).

A session key is ``robot:dm:<sender>`` for a direct message and ``robot:group:<conversation>`` for a
group (``...:<sender>`` with ``group_scope: per_user``), so DM and group sessions never mix and two
robots never share history. The same key scopes history, the run slot, the queue and ``/stop``.

What a session keeps across restarts (history, usage) is in the store; a :class:`Session` is the rest,
which :class:`~edgecrab.core.runs.Runner` drives: the messages waiting, the run in flight and its cancel
scope, and the epochs that ``/stop``, ``/new`` and the ``interrupt`` policy bump. :func:`retry_text` reads
the store for what ``/retry`` asks again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import anyio

from edgecrab.events import Message
from edgecrab.store.base import Store

log = logging.getLogger("edgecrab.core.runs")


def session_key(message: Message, group_scope: str = "shared") -> str:
    if not message.conversation.is_group:
        return f"{message.robot}:dm:{message.sender.key}"
    if group_scope == "per_user":
        return f"{message.robot}:group:{message.conversation.id}:{message.sender.key}"
    return f"{message.robot}:group:{message.conversation.id}"


def busy_text() -> str:
    return "⏳ I'm still working on your previous message. Wait for the answer, or send /stop to cancel it."


def queue_full_text(limit: int) -> str:
    return (
        f"⏳ The queue is full ({limit} message{'' if limit == 1 else 's'} waiting). "
        "Try again when I've caught up, or send /stop to clear it."
    )


def queued_text(position: int) -> str:
    return f"⏳ Queued — position {position}. I'll answer when the current reply is done (/stop cancels)."


@dataclass(slots=True)
class QueuedMessage:
    message: Message
    retry: bool = False


@dataclass(frozen=True, slots=True)
class RunStatus:
    running: bool
    elapsed_s: float
    queued: int
    preview: str


@dataclass(slots=True)
class Session:
    key: str
    queue: deque[QueuedMessage] = field(default_factory=deque)
    scope: anyio.CancelScope | None = None
    current: Message | None = None
    """The message being answered, from the moment the worker takes it until its reply is handed over."""
    started: float = 0.0
    worker: bool = False
    epoch: int = 0
    """Bumped by /stop, /new and interrupt: a run that started under an older epoch sends nothing."""
    resets: int = 0
    """Bumped by /new: a run that started before it writes nothing into the fresh session."""

    def moved_on(self, epoch: int) -> bool:
        """A /stop, /new or interrupt came since ``epoch``."""
        return self.epoch != epoch

    def queued(self, msg_id: str) -> bool:
        return any(i.message.id == msg_id for i in self.queue)

    def bring_forward(self, msg_id: str, taken: QueuedMessage) -> None:
        """``taken`` goes back to the front of the queue, and ``msg_id`` (queued) ahead of it."""
        first = next(i for i in self.queue if i.message.id == msg_id)
        self.queue.remove(first)
        self.queue.extendleft([taken, first])

    def cancel(self) -> tuple[bool, list[Message]]:
        """Stop the run in flight (whatever phase it is in) and empty the queue."""
        dropped = [i.message for i in self.queue]
        self.queue.clear()
        running = self.current is not None
        if running:
            self.epoch += 1
            if self.scope is not None:
                self.scope.cancel()
        return running, dropped

    def status(self) -> RunStatus:
        if self.current is None:
            return RunStatus(False, 0.0, len(self.queue), "")
        return RunStatus(True, time.monotonic() - self.started, len(self.queue), self.current.text)


async def expire_if_idle(store: Store, key: str, limit: float, now: float) -> None:
    """``sessions.idle_expiry_s`` (``limit``): a session idle for longer starts afresh (housekeeping also
    prunes them)."""
    if limit <= 0:
        return
    stats = await store.session_stats(key)
    if stats is not None and stats.last_active_at < now - limit:
        log.info("[runs] %s: idle for %.0f s; starting a fresh conversation", key, now - stats.last_active_at)
        await store.session_reset(key, now)


async def retry_text(store: Store, key: str) -> str:
    """The user text ``/retry`` runs again, after dropping its answer from the history.

    If the last message was answered, that exchange is popped from the history. If it failed or was
    stopped, it never reached the history: it is run again as it is (from the session's stats).
    """
    stats = await store.session_stats(key)
    last_text = stats.last_user_text if stats else ""
    last_id = stats.last_user_msg_id if stats else ""
    tail = await store.history(key, 2)
    asked = next((t for t in reversed(tail) if t.role == "user"), None)
    answered = asked is not None and (asked.msg_id == last_id if last_id else asked.content == last_text)
    if answered or not last_text:
        popped = await store.history_pop_last_exchange(key)
        if popped is not None:
            return popped.content
    return last_text
