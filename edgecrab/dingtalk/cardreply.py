"""``reply_mode: card``: every agent run streams its answer into one DingTalk AI card.

:class:`CardReplies` (one per robot) is the :class:`~edgecrab.core.live.LiveReplies` the runner uses. For
each run it opens a card (:class:`~edgecrab.dingtalk.cards.CardClient`) and returns a :class:`LiveCard`,
which feeds the agent's growing text to a :class:`~edgecrab.dingtalk.cardstream.CardStreamer` (paced,
newest text wins) and finishes the card as the run ends: finished with the reply, stopped with the text so
far and a stop mark, or failed with the short failure notice. The card shows the text in the card's
markdown dialect (:mod:`edgecrab.dingtalk.cardtext`); in a group it starts with ``@name``, since a card
cannot @ anyone.

Never stuck "thinking":

- open cards are recorded in the store (one kv key per robot); at the next start every card left open by
  a crash or a stop is finished with the text it showed (as last saved: at every watchdog tick, at most
  every 30 s, and at shutdown) and :data:`INTERRUPTED_TEXT`;
- a card is forgotten only once its final state was accepted: a card whose finish failed (cards became
  unavailable mid-stream, QpsLimit to the end) stays recorded, and the watchdog (or the next start) finishes
  it later, with the text it showed and :data:`~edgecrab.dingtalk.cardstream.CONTINUED_NOTICE`;
- a watchdog finishes a card that had no new text for ``card.watchdog_s`` (10 minutes by default);
- the card's stop button (topic :data:`CARD_CALLBACK_TOPIC`) does what ``/stop`` does (``on_stop``).

Never lost: when cards are unavailable (:class:`~edgecrab.dingtalk.cards.CardsUnavailable`: a missing
permission, an unpublished template, 5xx that keep coming, ``unknownError``) the reply goes out as
markdown, and the robot stays on markdown for :data:`MARKDOWN_STAY_S` before trying cards again; this is
logged once, with the fix. A card refused alone (:class:`~edgecrab.dingtalk.cards.CardRejected`) sends
that one reply as markdown.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import httpx

from edgecrab.config.model import DingTalkConfig
from edgecrab.dingtalk.cards import (
    CardClient,
    CardError,
    CardHandle,
    CardState,
    CardsUnavailable,
    CardThrottled,
)
from edgecrab.dingtalk.cardstream import CONTINUED_NOTICE, CardStreamer, split_for_card
from edgecrab.dingtalk.cardtext import mention_prefix, to_card_markdown
from edgecrab.dingtalk.frames import Frame
from edgecrab.dingtalk.streamconn import AckDecision
from edgecrab.dingtalk.tokens import TokenCache
from edgecrab.events import Message, ReplyRoute
from edgecrab.store.base import Store

log = logging.getLogger("edgecrab.dingtalk.cardreply")

CARD_CALLBACK_TOPIC = "/v1.0/card/instances/callback"
MARKDOWN_STAY_S = 1800.0
"""After cards turned out to be unavailable, replies are markdown for this long (30 minutes)."""
INTERRUPTED_TEXT = "⚠️ Interrupted — send your question again. (回复被中断，请重新发送你的问题)"
WATCHDOG_TEXT = "⚠️ No answer came for {minutes:g} minutes — send your question again."
OPEN_CARDS_KEY = "cards.open."
"""kv key prefix (+ robot code): the cards this robot has open, as a JSON object by outTrackId."""
SHOWN_TEXTS_KEY = "cards.shown."
"""kv key prefix (+ robot code): the text each open card showed when last saved (a JSON object by
outTrackId), kept apart from the records so that opening and closing cards stay small writes."""
RETRY_FOR_S = 86400.0
"""A card whose finish keeps failing is given up this long after it was opened (one day)."""

StopHandler = Callable[[Message], Awaitable[None]]
"""on_stop(message): a card's stop button was pressed during the run answering ``message``."""


class LiveCard:
    """One run's card (a :class:`~edgecrab.core.live.LiveReply`)."""

    def __init__(self, owner: CardReplies, streamer: CardStreamer, message: Message, key: str) -> None:
        self.owner, self.streamer, self.message, self.key = owner, streamer, message, key
        self.text = ""
        """The agent's text so far."""
        self.closed = False
        self.last_push = owner.clock()

    @property
    def out_track_id(self) -> str:
        return self.streamer.handle.out_track_id

    @property
    def calls(self) -> int:
        return self.streamer.calls

    def push(self, delta: str) -> None:
        if not self.closed:
            self.text += delta
            self.last_push = self.owner.clock()
            self.streamer.push(self.text)

    async def stopped(self) -> None:
        await self._end(self.text, "stopped")

    async def failed(self, text: str) -> bool:
        return await self._end(text, "failed")

    async def finished(self, text: str) -> str | None:
        if not await self._end(text, "finished"):
            return None
        return split_for_card(text, self.streamer.max_chars)[1]

    async def expire(self, notice: str) -> None:
        """The watchdog's end: the text so far and ``notice``, in the failed state."""
        await self._end(f"{self.text.rstrip()}\n\n{notice}" if self.text.strip() else notice, "failed")

    async def _end(self, text: str, state: CardState) -> bool:
        """Finish the card once (whoever comes first); False when it was finished already or failed."""
        if self.closed:
            return False
        self.closed = True
        failed = False
        try:
            await self.streamer.finish(text, state)
            return True
        except CardError as err:
            failed = True
            self.owner.card_failed(err)
            return False
        finally:
            self.streamer.close()
            # Cancelled before the finish was made (a shutdown): the card stays recorded as open.
            await self.owner.forget(self, state if failed or self.streamer.handle.finalized else None)


class CardReplies:
    """The cards of one robot; ``run()`` hosts their update loops, the watchdog and start-up recovery."""

    def __init__(
        self,
        config: DingTalkConfig,
        client: CardClient,
        store: Store,
        robot: str,
        *,
        on_stop: StopHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.card = config.card
        self.client, self.store, self.robot = client, store, robot
        self.on_stop = on_stop
        self.clock = clock
        self.watchdog_s = config.card.watchdog_s
        self.markdown_until = 0.0
        """``clock()`` time until which replies are markdown (cards were found unavailable)."""
        self.live: dict[str, LiveCard] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._unfinished: dict[str, CardHandle] = {}
        """Cards closed without a final state (their record carries the text and state to finish with)."""
        self._shown_saved: dict[str, str] = {}
        self._lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self.opened = 0
        self.recovered = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        raw = await self.store.kv_get(OPEN_CARDS_KEY + self.robot)
        left_open = json.loads(raw) if raw else {}
        raw = await self.store.kv_get(SHOWN_TEXTS_KEY + self.robot)
        shown = json.loads(raw) if raw else {}
        for card_id, rec in left_open.items():
            if "state" not in rec:  # open when the last run ended: what it showed, then "interrupted"
                text = str(shown.get(card_id) or "").rstrip()
                rec.update(text=f"{text}\n\n{INTERRUPTED_TEXT}" if text else INTERRUPTED_TEXT, state="failed")
        self._records = dict(left_open)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                tg.start_soon(self._recover, list(left_open.values()))
                await self._watch()
        finally:
            with anyio.CancelScope(shield=True):
                await self._save_shown()  # a restart finishes the open cards with what they show now

    @property
    def unfinished(self) -> int:
        """Cards closed without a final state, waiting for the watchdog (or the next start) to finish them."""
        return len(self._unfinished)

    # -- opening -----------------------------------------------------------------------------------
    async def open(self, message: Message, session_key: str) -> LiveCard | None:
        route = message.route
        if self._tg is None or route is None or self.clock() < self.markdown_until:
            return None
        try:
            handle = await self.client.open(route)
        except CardsUnavailable as err:
            self.card_failed(err)
            return None
        except CardError as err:
            log.warning("[cards] %s; this reply goes out as markdown", err)
            return None
        prefix = mention_prefix(route.sender_name) if route.is_group else ""
        streamer = CardStreamer(
            self.client,
            handle,
            interval_s=self.card.update_interval_ms / 1000,
            max_chars=self.card.max_chars,
            render=lambda text: prefix + to_card_markdown(text),
        )
        card = LiveCard(self, streamer, message, session_key)
        self.live[handle.out_track_id] = card
        self._records[handle.out_track_id] = _record(handle, route)
        self.opened += 1
        self._tg.start_soon(streamer.run)
        await self._save()
        return card

    def card_failed(self, err: CardError) -> None:
        """A card call failed: markdown for this reply, and for a while when cards are unavailable."""
        if not isinstance(err, CardsUnavailable):
            log.warning("[cards] %s; the reply goes out as markdown", err)
            return
        now = self.clock()
        if now >= self.markdown_until:
            log.error(
                "[cards] %s. Replies go out as markdown messages for the next %g minutes, then cards are "
                "tried again",
                err,
                MARKDOWN_STAY_S / 60,
            )
        self.markdown_until = max(self.markdown_until, now + MARKDOWN_STAY_S)

    async def forget(self, card: LiveCard, state: CardState | None) -> None:
        """``card`` was closed: forgotten when its final state was accepted; else kept for a later finish
        (its record then carries the text and ``state`` to finish with), or, with ``state`` None (the
        finish was cancelled: a shutdown), left recorded as open for the next start."""
        card_id = card.out_track_id
        if state is None:
            return  # still in ``live``, so that what it shows is saved as the gateway stops
        self.live.pop(card_id, None)
        handle = card.streamer.handle
        if handle.finalized or card_id not in self._records:
            self._records.pop(card_id, None)
        else:
            shown = card.streamer.shown.rstrip()
            if state == "stopped":
                text = shown
            else:
                state = "failed"
                text = f"{shown}\n\n{CONTINUED_NOTICE}" if shown else CONTINUED_NOTICE
            self._records[card_id].update(text=text, state=state)
            self._unfinished[card_id] = handle
            log.warning("[cards] card %s could not be finished; it is tried again later", card_id)
        with anyio.CancelScope(shield=True):
            await self._save()

    # -- the stop button ---------------------------------------------------------------------------
    async def on_callback(self, frame: Frame) -> AckDecision:
        """A card button was pressed (topic :data:`CARD_CALLBACK_TOPIC`): the stop button stops the run."""
        try:
            data = json.loads(frame.data_text or "{}")
            content = json.loads(data.get("content") or "{}")
            actions = content.get("cardPrivateData", {}).get("actionIds", [])
        except (ValueError, AttributeError, TypeError):
            log.warning("[cards] unreadable card callback %s", frame.message_id)
            return AckDecision()
        card = self.live.get(str(data.get("outTrackId", "")))
        if card is not None and any("stop" in str(action).lower() for action in actions):
            log.info("[cards] stop button pressed on card %s (session %s)", card.out_track_id, card.key)
            if self.on_stop is not None:
                await self.on_stop(card.message)
        return AckDecision()

    # -- never stuck -------------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Finish the cards that had no new text for ``watchdog_s``, try again to finish the cards whose
        finish failed, and save what the open cards show."""
        while True:
            await anyio.sleep(max(0.05, min(self.watchdog_s / 4, 30.0)))
            now = self.clock()
            if self._unfinished and now >= self.markdown_until:
                await self._finish_unfinished()
            await self._save_shown()
            for card in list(self.live.values()):
                if not card.closed and now - card.last_push >= self.watchdog_s:
                    log.warning(
                        "[cards] card %s had no update for %g s: finished by the watchdog",
                        card.out_track_id,
                        self.watchdog_s,
                    )
                    assert self._tg is not None
                    self._tg.start_soon(card.expire, WATCHDOG_TEXT.format(minutes=self.watchdog_s / 60))

    async def _recover(self, left_open: list[dict[str, Any]]) -> None:
        """Finish the cards the last run left open (a crash, a restart) with the text they showed and
        :data:`INTERRUPTED_TEXT`, or left unfinished (their finish failed) with the text recorded."""
        for rec in left_open:
            route = ReplyRoute(self.robot, str(rec.get("conversation", "")), bool(rec.get("group")))
            handle = CardHandle(str(rec["id"]), route, str(rec.get("content_key") or self.card.content_key))
            self._unfinished[handle.out_track_id] = handle
        if left_open:
            await self._finish_unfinished()

    async def _finish_unfinished(self) -> None:
        """Finish the cards closed without a final state; keep those that fail for a passing reason."""
        for card_id, handle in list(self._unfinished.items()):
            rec = self._records.get(card_id)
            if rec is None:
                self._unfinished.pop(card_id, None)
                continue
            state: CardState = "stopped" if rec.get("state") == "stopped" else "failed"
            try:
                await self.client.finish(handle, str(rec.get("text") or INTERRUPTED_TEXT), state)
            except CardError as err:
                if handle.finalized:  # out of "writing", though its final frame failed
                    pass
                elif isinstance(err, CardsUnavailable | CardThrottled) and (
                    time.time() - float(rec.get("opened_at", 0.0)) < RETRY_FOR_S
                ):
                    log.warning("[cards] could not finish card %s yet: %s", card_id, err)
                    if isinstance(err, CardsUnavailable):
                        self.card_failed(err)
                        break
                    continue
                else:
                    log.warning("[cards] gave up finishing card %s: %s", card_id, err)
            else:
                self.recovered += 1
                log.info("[cards] card %s left unfinished: finished now (%s)", card_id, state)
            self._unfinished.pop(card_id, None)
            self._records.pop(card_id, None)
        await self._save()

    async def _save_shown(self) -> None:
        """Save what each open card shows, when it changed (one small write; none when nothing did)."""
        shown = {card_id: card.streamer.shown for card_id, card in self.live.items() if card.streamer.shown}
        if shown != self._shown_saved:
            await self.store.kv_set(SHOWN_TEXTS_KEY + self.robot, json.dumps(shown))
            self._shown_saved = shown

    async def _save(self) -> None:
        async with self._lock:
            await self.store.kv_set(OPEN_CARDS_KEY + self.robot, json.dumps(self._records))


def card_replies(
    config: DingTalkConfig,
    tokens: TokenCache,
    http: httpx.AsyncClient,
    store: Store,
    on_stop: StopHandler | None = None,
) -> CardReplies | None:
    """The robot's cards with ``reply_mode: card`` (sharing the sender's token cache and connections),
    else None."""
    if config.reply_mode != "card":
        return None
    client = CardClient(config, tokens=tokens, client=http)
    return CardReplies(config, client, store, config.robot_code or config.app_key, on_stop=on_stop)


def _record(handle: CardHandle, route: ReplyRoute) -> dict[str, Any]:
    """What is kept of an open card, to finish it after a crash."""
    return {
        "id": handle.out_track_id,
        "process_query_key": handle.process_query_key,
        "conversation": route.conversation_id,
        "group": route.is_group,
        "content_key": handle.content_key,
        "opened_at": time.time(),
    }
