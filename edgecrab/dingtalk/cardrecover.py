"""Cards left open, and finishing them: never a card "thinking" forever, never an answer twice.

A card is recorded in the store before DingTalk creates it (:mod:`edgecrab.store.cardrecords`), with the
message it answers and the replica streaming it, and forgotten once its run's end is recorded. A card whose
replica died (SIGKILL, a crash, a restart) is picked up in one of two ways, exactly once across replicas:

* **its message runs again** (at the restart, or on a live replica after ``storage.lease_s``: failover):
  that run takes the card (:meth:`CardRecords.card_open`) and streams its answer into it from the start,
  then finishes it. The person sees one card, which ends with one complete answer. (A run of it in
  markdown mode, cards being unavailable then, finishes the card with what it showed and
  :data:`~edgecrab.dingtalk.cardstream.CONTINUED_NOTICE`: the answer follows as messages.)
* **its message is finished** without running again (given up after three interrupted runs, dropped by
  ``/stop`` or ``/new`` while queued): :meth:`LeftOpen.take_over` adopts it and finishes it with the text
  it showed when last saved and :data:`INTERRUPTED_TEXT`.

A card whose create's answer never came (its replica killed meanwhile, the answer lost on the wire) is
known by the ``outTrackId`` we chose: taken over when DingTalk has it; when DingTalk does not know it
(never created, or not yet), its answer goes out as markdown and :meth:`LeftOpen.absent` keeps it until
its create could no longer land (:attr:`CardClient.create_settle_s`), to finish it with
:data:`SENT_AS_MESSAGES` if it appears.

A card whose finish failed (cards became unavailable, QpsLimit to the end) is :attr:`LeftOpen.pending`:
its record keeps the text and state to finish it with, and it is tried again (the watchdog's ticks, the
next start, or another replica once this one is gone), for up to :data:`RETRY_FOR_S`.

:meth:`LeftOpen.take_over` runs at start, then every ``storage.lease_s / 3`` with replicas (the failover
sweep) or at every watchdog tick for one process.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from edgecrab.dingtalk.cards import (
    CardClient,
    CardError,
    CardHandle,
    CardState,
    CardsUnavailable,
    CardThrottled,
)
from edgecrab.dingtalk.cardstream import CONTINUED_NOTICE
from edgecrab.events import ReplyRoute
from edgecrab.store.base import Store
from edgecrab.store.cardrecords import CardRecord

log = logging.getLogger("edgecrab.dingtalk.cardreply")

INTERRUPTED_TEXT = "⚠️ Interrupted — send your question again. (回复被中断，请重新发送你的问题)"
SENT_AS_MESSAGES = "⚠️ This answer was sent as messages. (回复已以消息形式发送)"
"""Finishes a card DingTalk did not know (yet) when its answer was ready: the answer went out as markdown."""
RETRY_FOR_S = 86400.0
"""A card whose finish keeps failing is given up this long after it was opened (one day)."""
LEGACY_OPEN_KEY = "cards.open."
LEGACY_SHOWN_KEY = "cards.shown."
"""kv keys (+ robot code) where edgecrab before the card records kept a robot's open cards and what they
showed; read once at start, then emptied."""


@dataclass
class Pending:
    """A card to finish later, with ``text`` in ``state``."""

    handle: CardHandle
    state: CardState
    text: str
    opened_at: float
    absent: bool = False
    """DingTalk did not know the card at the last try (its create may still land)."""


def route_fields(route: ReplyRoute) -> dict[str, Any]:
    """What a card record keeps of its route: where the card is, without the session webhook."""
    fields = route.to_dict()
    fields.pop("session_webhook", None)
    fields.pop("session_webhook_expires_at", None)
    return fields


def with_notice(shown: str, notice: str) -> str:
    shown = shown.rstrip()
    return f"{shown}\n\n{notice}" if shown else notice


class LeftOpen:
    """One robot's cards left open (by a crash, a dead replica, a failed finish) and their finishing.
    ``live``: the cards streaming in this process (never taken over here); ``card_failed``: told when a
    finish finds cards unavailable."""

    def __init__(
        self,
        client: CardClient,
        store: Store,
        name: str,
        content_key: str,
        *,
        live: Container[str],
        card_failed: Callable[[CardError], None],
    ) -> None:
        self.client, self.store, self.name, self.content_key = client, store, name, content_key
        self.live, self.card_failed = live, card_failed
        self.replica = ""
        """This replica's id (:attr:`edgecrab.coordination.Coordination.replica_id`), its cards' owner."""
        self.pending: dict[str, Pending] = {}
        self.awaiting: set[str] = set()
        """This replica's own cards from an earlier life whose message is to run again here."""
        self.recovered = 0
        """Cards left open by a crash or a dead replica: finished, or continued by a run of their message."""

    def handle(self, record: CardRecord, route: ReplyRoute | None = None) -> CardHandle:
        route = route or ReplyRoute.from_dict({"robot_code": "", "conversation_id": "", "is_group": False,
                                               **record.route})
        return CardHandle(record.card_id, route, record.content_key or self.content_key)

    def resumed(self, record: CardRecord, route: ReplyRoute) -> CardHandle:
        """A run of the message took ``record``'s card (:meth:`CardRecords.card_open`): it streams on."""
        self.awaiting.discard(record.card_id)
        self.pending.pop(record.card_id, None)
        self.recovered += 1
        whose = "an earlier run" if record.owner in ("", self.replica) else f"replica {record.owner}"
        log.info("[cards] card %s left open by %s: message %s answers in it again", record.card_id, whose,
                 record.msg_id)
        return self.handle(record, route)

    async def keep(self, card_id: str, pending: Pending) -> None:
        """Finish this card later (its finish failed, or it is taken over): recorded, then tried again."""
        await self.store.card_update(self.name, card_id, state=pending.state, text=pending.text)
        self.pending[card_id] = pending

    async def absent(self, handle: CardHandle, state: CardState, opened_at: float) -> None:
        """DingTalk does not know the card (never created, or not yet: a dead run's create on its way), or
        may have it (an open whose answer was lost); its answer goes out as markdown. Kept: finished when
        it appears before its create could no longer land (:meth:`finish_pending`), else forgotten."""
        stopped = state == "stopped"
        pending = Pending(handle, "stopped" if stopped else "failed", "" if stopped else SENT_AS_MESSAGES,
                          opened_at)
        await self.keep(handle.out_track_id, pending)

    async def markdown_instead(self, msg_id: str) -> None:
        """A run of ``msg_id`` answers in markdown: a card an earlier run left open says so."""
        record = await self.store.card_take(self.name, msg_id, self.replica)
        if record is not None:
            self.recovered += 1
            text = with_notice(record.shown, CONTINUED_NOTICE)
            await self.keep(record.card_id, Pending(self.handle(record), "failed", text, record.opened_at))

    async def take_over(self, *, starting: bool = False) -> None:
        """Adopt the cards of gone owners whose message is finished (and, ``starting``, this replica's
        earlier life's), and finish them."""
        mine = sorted(self.awaiting)
        adoption = await self.store.card_adopt(self.name, self.replica, starting=starting, mine=mine)
        self.awaiting = {c for c in adoption.waiting if c not in self.live}
        found = [r for r in adoption.finish if r.card_id not in self.live and r.card_id not in self.pending]
        for record in found:
            if record.state in ("stopped", "failed"):  # its finish failed: with what was recorded for it
                state: CardState = "stopped" if record.state == "stopped" else "failed"
                text = record.text or with_notice(record.shown, INTERRUPTED_TEXT)
            else:
                state, text = "failed", with_notice(record.shown, INTERRUPTED_TEXT)
            self.pending[record.card_id] = Pending(self.handle(record), state, text, record.opened_at)
            whose = "an earlier run" if record.owner in ("", self.replica) else f"replica {record.owner}"
            log.info("[cards] card %s was left open by %s (message %s): finishing it", record.card_id, whose,
                     record.msg_id or "unknown")
        if found:
            self.recovered += len(found)
            await self.finish_pending()

    async def finish_pending(self) -> None:
        """Finish the cards left without a final state; keep those that fail for a passing reason."""
        for card_id, pending in list(self.pending.items()):
            try:
                await self.client.finish(pending.handle, pending.text, pending.state)
            except CardError as err:
                age = time.time() - pending.opened_at
                if pending.handle.finalized:  # out of "writing", though its final frame failed
                    pass
                elif err.unknown_card and age < self.client.create_settle_s:
                    if not pending.absent:
                        log.info("[cards] DingTalk does not know card %s yet (its create may still land): "
                                 "tried again for %.0f s", card_id, self.client.create_settle_s - age)
                    pending.absent = True
                    continue
                elif isinstance(err, CardsUnavailable | CardThrottled) and age < RETRY_FOR_S:
                    log.warning("[cards] could not finish card %s yet: %s", card_id, err)
                    if isinstance(err, CardsUnavailable):
                        self.card_failed(err)
                        break
                    continue
                elif err.unknown_card:
                    log.info("[cards] card %s was never created at DingTalk: nothing to finish", card_id)
                else:
                    log.warning("[cards] gave up finishing card %s: %s", card_id, err)
            else:
                log.info("[cards] card %s left unfinished: finished now (%s)", card_id, pending.state)
            await self.store.card_close(self.name, card_id)
            self.pending.pop(card_id, None)

    async def import_legacy(self, robot_code: str) -> None:
        """Cards an edgecrab before the card records left open (kv keys per robot): recorded as a gone
        owner's, so that :meth:`take_over` finishes them; the keys are emptied."""
        raw = await self.store.kv_get(LEGACY_OPEN_KEY + robot_code)
        records = json.loads(raw) if raw else {}
        if not records:
            return
        raw = await self.store.kv_get(LEGACY_SHOWN_KEY + robot_code)
        shown = json.loads(raw) if raw else {}
        for card_id, rec in records.items():
            route = {"robot_code": robot_code, "conversation_id": str(rec.get("conversation", "")),
                     "is_group": bool(rec.get("group"))}
            await self.store.card_open(CardRecord(
                self.name, str(card_id), "", "", "", route, str(rec.get("content_key") or ""),
                float(rec.get("opened_at") or time.time()), str(shown.get(card_id) or ""),
                str(rec.get("state") or ""), str(rec.get("text") or ""),
            ))
        await self.store.kv_set(LEGACY_OPEN_KEY + robot_code, "{}")
        await self.store.kv_set(LEGACY_SHOWN_KEY + robot_code, "{}")
