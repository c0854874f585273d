"""Delivery: reply text -> formatted chunks in the ledger -> sent in order, once, paced.

Every reply (agent answers, command answers, notices) goes through :meth:`Delivery.enqueue`, which
formats it, splits it and records all its chunks in the store's outbox before anything is sent. One
worker per conversation then sends that conversation's chunks strictly in order: chunk k+1 leaves only
after chunk k succeeded, at least ``chunk_interval_ms`` later (DingTalk shows messages sent within the
same second out of order). A restart resumes from the ledger, so chunks are neither lost nor repeated.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc

from edgecrab.chunking import split_text
from edgecrab.events import Message, ReplyRoute
from edgecrab.store.base import PENDING, SENDING, SENT, UNDELIVERABLE, OutboxChunk, Store, UsageDelta

log = logging.getLogger("edgecrab.delivery")


class SendOutcome(Protocol):
    ok: bool
    permanent: bool
    code: str
    message: str


class ChunkSender(Protocol):
    async def send(self, route: ReplyRoute, *, text: str, title: str, mention: bool, fmt: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Format:
    """How replies look on the platform: a body formatter, a title function and the limits."""

    fmt: str
    render: Callable[[str], str]
    title: Callable[[str], str]
    max_chars: int
    max_bytes: int
    markers: bool
    overhead_bytes: int = 400
    """Room for the rest of the request body (msgtype, title, at block)."""


Notifier = Callable[[str, str, Any, Message | None], Awaitable[None]]


def conversation_key(route: ReplyRoute) -> str:
    return f"{route.robot_code}:{route.conversation_id}"


class Delivery:
    def __init__(
        self,
        store: Store,
        sender: ChunkSender,
        fmt: Format,
        *,
        chunk_interval_s: float = 0.3,
        retry_delay_s: float = 2.0,
        max_rounds: int = 5,
        notify: Notifier | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.format = fmt
        self.chunk_interval_s = chunk_interval_s
        self.retry_delay_s = retry_delay_s
        self.max_rounds = max_rounds
        self._notify = notify
        self._tg: anyio.abc.TaskGroup | None = None
        self._workers: dict[str, anyio.Event] = {}
        self._epochs: dict[str, int] = {}
        """Bumped by cancel(): a worker holding an older epoch re-reads the ledger before sending."""
        self._replies: dict[str, tuple[str, Message | None]] = {}
        self.sent_chunks = 0
        self.failed_replies = 0

    # -- enqueue -----------------------------------------------------------------------------------
    async def enqueue(
        self,
        route: ReplyRoute,
        text: str,
        *,
        session_key: str = "",
        message: Message | None = None,
        mention: bool | None = None,
    ) -> str:
        """Record a reply's chunks in the ledger and wake the conversation's sender. Returns the reply id."""
        fmt = self.format
        rendered = fmt.render(text)
        title = fmt.title(text)
        chunks = split_text(
            rendered,
            max_chars=fmt.max_chars,
            max_bytes=fmt.max_bytes,
            markers=fmt.markers,
            overhead_bytes=fmt.overhead_bytes + len(title.encode()),
        )
        if mention is None:
            mention = route.is_group
        reply_id = uuid.uuid4().hex
        ckey = conversation_key(route)
        now = time.time()
        total = len(chunks)
        rows = [
            OutboxChunk(
                reply_id=reply_id,
                index=i,
                total=total,
                conversation_key=ckey,
                route=route.to_dict(),
                text=c.text,
                mention=bool(mention and i == total - 1),
                title=title if total == 1 else f"{title} ({i + 1}/{total})",
                state=PENDING,
                created_at=now,
                session_key=session_key,
            )
            for i, c in enumerate(chunks)
        ]
        await self.store.outbox_add(rows)
        self._replies[reply_id] = (text, message)
        self._wake(ckey)
        return reply_id

    async def cancel(self, route: ReplyRoute) -> int:
        """Drop the unsent chunks of a conversation (``/stop``: nothing more of that answer is sent)."""
        ckey = conversation_key(route)
        self._epochs[ckey] = self._epochs.get(ckey, 0) + 1
        return await self.store.outbox_cancel(ckey)

    # -- workers -----------------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            pending = await self.store.outbox_pending()
            for ckey in dict.fromkeys(c.conversation_key for c in pending):
                log.info("[delivery] resuming unsent chunks for %s", ckey)
                self._wake(ckey)
            task_status.started()
            await anyio.sleep_forever()

    def _wake(self, ckey: str) -> None:
        event = self._workers.get(ckey)
        if event is not None:
            event.set()
            return
        if self._tg is None:
            return  # run() will pick it up from the ledger
        self._workers[ckey] = anyio.Event()
        self._tg.start_soon(self._worker, ckey)

    async def _worker(self, ckey: str) -> None:
        last_sent = 0.0
        try:
            while True:
                self._workers[ckey] = anyio.Event()
                pending = await self.store.outbox_pending(ckey)
                if not pending:
                    return
                epoch = self._epochs.get(ckey, 0)
                for chunk in pending:
                    wait = self.chunk_interval_s - (time.monotonic() - last_sent)
                    if last_sent and wait > 0:
                        await anyio.sleep(wait)
                    if self._epochs.get(ckey, 0) != epoch:
                        break  # /stop cancelled chunks we had read: re-read the ledger
                    if not await self._deliver(chunk):
                        break  # the rest of this reply was marked undeliverable; re-read the ledger
                    last_sent = time.monotonic()
        finally:
            self._workers.pop(ckey, None)

    async def _deliver(self, chunk: OutboxChunk) -> bool:
        route = ReplyRoute.from_dict(chunk.route)
        await self.store.outbox_mark(chunk.reply_id, chunk.index, SENDING)
        error = ""
        for round_ in range(self.max_rounds):
            try:
                result = await self.sender.send(
                    route, text=chunk.text, title=chunk.title, mention=chunk.mention, fmt=self.format.fmt
                )
            except Exception as exc:  # a bug or an unexpected transport failure: retry, then give up
                log.exception("[delivery] sending chunk %d/%d of %s failed", chunk.index + 1, chunk.total,
                              chunk.reply_id)
                error = f"{type(exc).__name__}: {exc}"
            else:
                if result.ok:
                    await self.store.outbox_mark(chunk.reply_id, chunk.index, SENT)
                    self.sent_chunks += 1
                    if chunk.session_key:
                        await self.store.usage_add(chunk.session_key, UsageDelta(chunks_sent=1), time.time())
                    if chunk.index == chunk.total - 1:
                        await self._finished(chunk.reply_id, None)
                    return True
                error = f"{result.code} {result.message}".strip()
                if result.permanent:
                    break
            delay = self.retry_delay_s * (2**round_)
            log.warning("[delivery] chunk %d/%d for %s not delivered (%s); trying again in %.1f s",
                        chunk.index + 1, chunk.total, chunk.conversation_key, error, delay)
            await anyio.sleep(delay)
        log.error("[delivery] giving up on reply %s to %s: %s", chunk.reply_id, chunk.conversation_key, error)
        await self.store.outbox_cancel(chunk.conversation_key, chunk.reply_id)
        await self.store.outbox_mark(chunk.reply_id, chunk.index, UNDELIVERABLE, error)
        self.failed_replies += 1
        await self._finished(chunk.reply_id, error or "undeliverable")
        return False

    async def _finished(self, reply_id: str, error: str | None) -> None:
        text, message = self._replies.pop(reply_id, ("", None))
        if self._notify is None:
            return
        if error is None:
            await self._notify("reply_sent", text, None, message)
        else:
            await self._notify("send_failed", text, error, message)


__all__ = ["Delivery", "Format", "ChunkSender", "conversation_key", "SENT", "PENDING"]
