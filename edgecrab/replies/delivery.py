"""Delivery: reply text -> formatted chunks in the ledger -> sent in order, once, paced.

Every reply (agent answers, command answers, notices) goes through :meth:`Delivery.enqueue`, which
formats it, splits it (:mod:`edgecrab.replies.format`) and records all its chunks in the store's outbox before
anything is sent. One worker per conversation then sends that conversation's chunks strictly in order:
chunk k+1 leaves only after chunk k succeeded, at least ``chunk_interval_s`` after it (DingTalk shows
messages sent within the same second out of order). The pause is kept per conversation, not per worker,
so it also holds between two replies. A restart resumes from the ledger, so chunks are neither lost nor
repeated.

A chunk DingTalk rejects as too long (``460101``, or the OpenAPI's body-size error) is never dropped: it
is split again and the pieces are sent in its place (:mod:`edgecrab.replies.resplit`, which also keeps the
pieces still to send in the store, so a restart half-way through a re-split chunk repeats nothing either).

A conversation whose sender has nothing left to send is *settled*: the ledger holds nothing unsent for
it. The next reply's chunks, just recorded, then go to a new sender as they are, without reading them
back from the store (one query a reply, in the profile of 1a). Only where this process is the store's
sole writer (:attr:`edgecrab.store.base.Store.sole_writer`; not with Redis, where replicas share it).

Replicas on Redis: a sender takes the conversation's delivery lease (:mod:`edgecrab.coordination`) and
keeps it until the ledger holds nothing unsent for it; a replica that finds it held leaves its chunks to
the holder. Each chunk is checked and marked just before it goes out (:mod:`edgecrab.replies.inflight`).

``/stop`` and ``/new`` call :meth:`Delivery.cancel`: the unsent chunks are marked cancelled in the ledger
and the conversation's epoch is bumped, so a worker that has already read them re-reads the ledger
before its next send (and gives up waiting to retry one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import anyio.abc

from edgecrab.activity import reply_line
from edgecrab.events import Message, ReplyRoute
from edgecrab.replies.conversations import ConversationMemory
from edgecrab.replies.format import ROUTE_FORMAT, Format, PreparedReply, conversation_key, prepare_reply
from edgecrab.replies.inflight import FINISHED, ON_THE_WIRE, InFlight, LeaseLost
from edgecrab.replies.resplit import TOO_LONG_CODES, Resplits
from edgecrab.replies.wire import Wire
from edgecrab.store.base import PENDING, SENT, UNDELIVERABLE, OutboxChunk, Store, UsageDelta
from edgecrab.workers import Workers

log = logging.getLogger("edgecrab.replies.delivery")


class SendOutcome(Protocol):
    ok: bool
    permanent: bool
    code: str
    message: str


class ChunkSender(Protocol):
    async def send(self, route: ReplyRoute, *, text: str, title: str, mention: bool, fmt: str) -> Any: ...


Notifier = Callable[[str, str, Any, Message | None], Awaitable[None]]


# What sending one message came to.
_OK, _TOO_LONG, _FAILED, _CANCELLED = "ok", "too long", "failed", "cancelled"


class Delivery:
    def __init__(
        self,
        store: Store,
        sender: ChunkSender,
        fmt: Format,
        *,
        chunk_interval_s: float = 0.3,
        notify: Notifier | None = None,
    ) -> None:
        """One message is one ``sender.send`` call, final for it (the sender retries: edgecrab.retry)."""
        self.store, self.sender, self.format = store, sender, fmt
        self.resumes: Callable[[str], bool] = lambda ckey: True
        """Whose unsent chunks :meth:`run` resumes, by conversation key (a robot's own, on a shared store)."""
        self._notify = notify
        self._tg: anyio.abc.TaskGroup | None = None
        self._senders = Workers(self._worker)  # a conversation's unsent chunks are a job (edgecrab.workers)
        self._workers: set[str] = set()
        """The conversations a worker (sender) is live for."""
        self._woken: set[str] = set()
        """Of those, the ones wake() was called for since their worker last read the ledger."""
        self._epochs: dict[str, int] = {}
        """Bumped by cancel(): a worker holding an older epoch re-reads the ledger before sending."""
        self._memory = ConversationMemory(chunk_interval_s, remember_settled=store.sole_writer)
        self._replies: dict[str, tuple[str, Message | None]] = {}
        """Replies recorded by this process and not finished yet: their text and message, for hooks."""
        self._cancelling: dict[str, list[anyio.Event]] = {}
        """Cancellations in progress by conversation: a sender reads the ledger only after they committed
        (else it could read, and send, chunks a /stop had just dropped)."""
        self._handed: dict[str, tuple[int, list[OutboxChunk]]] = {}
        """Chunks handed to a sender about to start, with the conversation's epoch at that moment."""
        self._resplits = Resplits(store)
        self._coord = store.coordination()  # replicas: one at a time sends a conversation's chunks
        self._inflight = InFlight(store, self._coord, chunk_interval_s)
        self._via: dict[str, str] = {}  # the route each unfinished reply's last chunk took (its log line)
        self._wire = Wire()
        self.sent_chunks = 0  # messages DingTalk accepted (a re-split chunk counts once per piece)
        self.failed_replies = 0
        self.failed_in_a_row = 0
        """Messages that failed since the last one DingTalk accepted (the ops port's readiness)."""

    @property
    def sending(self) -> frozenset[str]:
        """The conversations (keys) a sender of this process is working on now; empty when it is idle."""
        return frozenset(self._workers)

    @property
    def resplits(self) -> int:
        """Chunks (or pieces) DingTalk refused as too long and that were split again."""
        return self._resplits.count

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
        prepared = self.prepare(route, text, session_key=session_key, message=message, mention=mention)
        if prepared.chunks:
            await self.store.outbox_add(prepared.chunks)
            self.recorded(prepared)
        return prepared.reply_id

    def prepare(
        self,
        route: ReplyRoute,
        text: str,
        *,
        session_key: str = "",
        message: Message | None = None,
        mention: bool | None = None,
    ) -> PreparedReply:
        """A reply formatted and split into ledger chunks, not yet recorded: the caller records them (with
        other writes, in one transaction: ``Store.finish_turn``) and then calls :meth:`recorded`."""
        return prepare_reply(
            self.format, route, text, session_key=session_key, message=message, mention=mention
        )

    def recorded(self, prepared: PreparedReply) -> None:
        """``prepared``'s chunks are in the ledger: wake the conversation's sender."""
        if prepared.chunks:
            self._replies[prepared.reply_id] = (prepared.text, prepared.message)
            ckey = prepared.conversation_key
            if ckey not in self._workers and self._tg is not None and self._memory.take_settled(ckey):
                self._handed[ckey] = (self._epochs.get(ckey, 0), list(prepared.chunks))
            self.wake(ckey)

    async def cancel(self, route: ReplyRoute, *, session_key: str | None = None) -> int:
        """Drop unsent chunks (``/stop``, ``/new``: nothing more of that answer is sent).

        With ``session_key``, only that session's replies are dropped: in a group with
        ``group_scope: per_user`` one member's ``/stop`` must not silence another's answer.
        Returns how many chunks were dropped.
        """
        ckey = conversation_key(route)
        self._epochs[ckey] = self._epochs.get(ckey, 0) + 1
        done = anyio.Event()
        self._cancelling.setdefault(ckey, []).append(done)
        try:
            dropped = await self._drop(ckey, session_key)
        finally:
            done.set()
            self._cancelling[ckey].remove(done)
            if not self._cancelling[ckey]:
                del self._cancelling[ckey]
        if dropped:
            log.info("[delivery] %d unsent chunk(s) to %s cancelled", dropped, ckey)
        return dropped

    async def _drop(self, ckey: str, session_key: str | None) -> int:
        pending = await self.store.outbox_pending(ckey)
        reply_ids = list(
            dict.fromkeys(c.reply_id for c in pending if session_key is None or c.session_key == session_key)
        )
        if session_key is None:
            dropped = await self.store.outbox_cancel(ckey)
        else:
            dropped = 0
            for reply_id in reply_ids:
                dropped += await self.store.outbox_cancel(ckey, reply_id)
        for reply_id in reply_ids:
            self._replies.pop(reply_id, None)
            self._via.pop(reply_id, None)
            self._resplits.forget(reply_id)
        self._wire.stop(ckey, None if session_key is None else reply_ids)
        return dropped

    # -- workers -----------------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._senders.bind(tg)
            pending = [c for c in await self.store.outbox_pending() if self.resumes(c.conversation_key)]
            for ckey in dict.fromkeys(c.conversation_key for c in pending):
                log.info("[delivery] resuming unsent chunks for %s", ckey)
                self.wake(ckey)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._wire.stopping()  # every worker is being cancelled; sends on the wire may finish

    def wake(self, ckey: str) -> None:
        if ckey in self._workers:
            self._woken.add(ckey)
            return
        if self._tg is None:
            return  # run() will pick it up from the ledger
        self._memory.forget_old(self._workers)
        self._workers.add(ckey)
        self._senders.submit(ckey)

    async def _worker(self, ckey: str) -> None:
        held = False
        try:
            held = await self._coord.take_delivery(ckey)  # False: another replica sends them, ours too
            while held:
                self._woken.discard(ckey)  # wake() adds it again for chunks recorded from now on
                handed = self._handed.pop(ckey, None)
                if handed is not None:
                    epoch, pending = handed  # a /stop since then shows as a newer epoch: re-read
                else:
                    for cancelling in list(self._cancelling.get(ckey, ())):
                        await cancelling.wait()
                    epoch = self._epochs.get(ckey, 0)
                    pending = await self.store.outbox_pending(ckey)
                sent_all = True
                for chunk in pending:
                    if not await self._deliver(chunk, epoch):
                        sent_all = False
                        break  # cancelled, or the rest of the reply was given up: re-read the ledger
                # Done when nothing was recorded meanwhile (here, or by a replica that left it to us).
                if (sent_all or not pending) and ckey not in self._woken:
                    if await self._coord.give_delivery_back(ckey):
                        held = False
                        self._memory.settle(ckey)
        except LeaseLost:
            held = False  # the replica that took the lease over sends the rest
        finally:
            self._workers.discard(ckey)
            self._woken.discard(ckey)
            if held:  # cancelled or crashed: a live replica's failover sweep sends the rest
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await self._coord.give_delivery_back(ckey, finished=False)

    def _cancelled(self, chunk: OutboxChunk, epoch: int) -> bool:
        return self._epochs.get(chunk.conversation_key, 0) != epoch

    async def _deliver(self, chunk: OutboxChunk, epoch: int) -> bool:
        """Send one ledger chunk (as several messages if DingTalk finds it too long). True when sent."""
        route = ReplyRoute.from_dict(chunk.route)
        pieces = await self._pieces_left(chunk)
        split = pieces is not None
        if pieces is None:
            pieces = [chunk.text]
        whole_sent = False
        while pieces:
            # The chunker keeps boundary whitespace at the end of the earlier chunk (lossless joins);
            # trailing blank lines in a message only make the bubble taller, and DingTalk refuses blank ones.
            if not pieces[0].strip():
                pieces.pop(0)
                continue
            await self._memory.pace(chunk.conversation_key)
            if self._cancelled(chunk, epoch):
                return False
            started = await self._inflight.begin(chunk)  # replicas: one atomic check-and-mark
            if started == ON_THE_WIRE:  # its sender died mid-send
                break
            if started == FINISHED:  # cancelled or sent meanwhile, on another replica
                return False
            mention = chunk.mention and not any(p.strip() for p in pieces[1:])  # on the last piece
            outcome, error = await self._send(chunk, route, pieces[0].rstrip(), mention, epoch)
            if outcome == _OK:
                pieces.pop(0)
                if split:
                    # Re-split (rare): progress and the session's count are saved piece by piece.
                    with anyio.CancelScope(shield=True):  # a piece went out: see _mark_sent
                        await self._resplits.save(chunk, pieces)
                        await self._count_sent(chunk)
                else:
                    whole_sent = True  # counted with the SENT mark, in one write
                continue
            if outcome == _CANCELLED:
                return False
            if outcome == _TOO_LONG and await self._resplits.split(chunk, pieces, error, self.format):
                split = True
                continue
            await self._give_up(chunk, error)
            return False
        await self._mark_sent(chunk, whole_sent=whole_sent, split=split)
        return True

    async def _pieces_left(self, chunk: OutboxChunk) -> list[str] | None:
        """What is still to send of a chunk re-split before a restart; None if it was never re-split."""
        pieces = await self._resplits.load(chunk, recorded_here=chunk.reply_id in self._replies)
        if pieces:
            log.info("[delivery] resuming re-split chunk %d/%d of %s: %d piece(s) left",
                     chunk.index + 1, chunk.total, chunk.reply_id, len(pieces))
        return pieces

    async def _mark_sent(self, chunk: OutboxChunk, *, whole_sent: bool, split: bool) -> None:
        """Record the chunk as sent (``whole_sent``: counted here, not piece by piece)."""
        # Shielded: the chunk is out, and a stop must not lose the record of it (the next start would
        # send it again). The write waits at most one group commit window.
        with anyio.CancelScope(shield=True):
            await self.store.outbox_sent(
                chunk.reply_id,
                chunk.index,
                session_key=chunk.session_key,
                chunks_sent=int(whole_sent),
                now=time.time(),
            )
        if split:
            self._resplits.sent(chunk)
        if chunk.index == chunk.total - 1:
            await self._finished(chunk, None)

    async def _send(
        self, chunk: OutboxChunk, route: ReplyRoute, text: str, mention: bool, epoch: int
    ) -> tuple[str, str]:
        """One message, ``(outcome, error)``. The sender has retried what was worth retrying."""
        try:
            result = await self._send_once(chunk, route, text, mention)
        except Exception as exc:  # a bug, or a failure the sender did not expect: the reply is given up
            log.exception(
                "[delivery] sending chunk %d/%d of %s failed", chunk.index + 1, chunk.total, chunk.reply_id
            )
            self.failed_in_a_row += 1
            return _FAILED, f"{type(exc).__name__}: {exc}"
        if result is None or self._cancelled(chunk, epoch):
            # /stop, or the gateway stopped and the send did not finish in time. DingTalk may have it:
            # the next message to the conversation keeps its distance from this one too.
            self._memory.sent(chunk.conversation_key)
            return _CANCELLED, ""
        if result.ok:
            self._via[chunk.reply_id] = getattr(result, "via", "")
            self._memory.sent(chunk.conversation_key)
            self.sent_chunks += 1
            self.failed_in_a_row = 0
            return _OK, ""
        error = f"{result.code} {result.message}".strip()
        if result.code in TOO_LONG_CODES:
            return _TOO_LONG, error
        self.failed_in_a_row += 1
        return _FAILED, error

    async def _send_once(
        self, chunk: OutboxChunk, route: ReplyRoute, text: str, mention: bool
    ) -> SendOutcome | None:
        """One send on the Wire, as its route's :data:`ROUTE_FORMAT` if any; None when it was cut off."""
        fmt = chunk.route.get(ROUTE_FORMAT) or self.format.fmt
        return await self._wire.send(
            chunk.conversation_key,
            chunk.reply_id,
            lambda: self.sender.send(route, text=text, title=chunk.title, mention=mention, fmt=fmt),
        )

    async def _count_sent(self, chunk: OutboxChunk) -> None:
        if chunk.session_key:
            await self.store.usage_add(chunk.session_key, UsageDelta(chunks_sent=1), time.time())

    async def _give_up(self, chunk: OutboxChunk, error: str) -> None:
        log.error("[delivery] giving up on reply %s to %s: %s", chunk.reply_id, chunk.conversation_key, error)
        # The reason first: a reader between the two writes sees the reply failed, and why.
        await self.store.outbox_mark(chunk.reply_id, chunk.index, UNDELIVERABLE, error)
        await self.store.outbox_cancel(chunk.conversation_key, chunk.reply_id)
        self.failed_replies += 1
        await self._finished(chunk, error or "undeliverable")

    async def _finished(self, chunk: OutboxChunk, error: str | None) -> None:
        reply_id = chunk.reply_id
        text, message = self._replies.pop(reply_id, ("", None))
        self._resplits.forget(reply_id)
        conversation, group = chunk.route.get("conversation_id", ""), bool(chunk.route.get("is_group"))
        reply_line(reply_id, message, conversation=conversation, group=group, chunks=chunk.total,
                   via=self._via.pop(reply_id, ""), error=error, text=text)
        if self._notify is not None:
            await self._notify("reply_sent" if error is None else "send_failed", text, error, message)


__all__ = ["Delivery", "Format", "ChunkSender", "TOO_LONG_CODES", "conversation_key", "SENT", "PENDING"]
