"""``reply_mode: card``: every agent run streams its answer into one DingTalk AI card.

:class:`CardReplies` (one per robot) is the :class:`~edgecrab.core.live.LiveReplies` the runner uses. For
each run it opens a card (:class:`~edgecrab.dingtalk.cards.CardClient`) and returns a :class:`LiveCard`,
which feeds the agent's growing text to a :class:`~edgecrab.dingtalk.cardstream.CardStreamer` (paced,
newest text wins) and finishes the card as the run ends: finished with the reply, stopped with the text so
far and a stop mark, or failed with the short failure notice. The card shows the text in the card's
markdown dialect (:mod:`edgecrab.dingtalk.cardtext`); in a group it starts with ``@name``, since a card
cannot @ anyone.

Never stuck "thinking", never an answer twice, also with replicas:

- every card is recorded in the store before DingTalk creates it (:mod:`edgecrab.store.cardrecords`), with
  the message it answers and this replica as its owner, and what it shows is saved at every watchdog
  tick (at most every 30 s) and at shutdown; it is forgotten once its run's end is recorded;
- a card whose replica died is picked up by :mod:`edgecrab.dingtalk.cardrecover`: a run of its message
  again (restart, failover) streams its answer into that same card; a card whose message will not run
  again is finished with what it showed and :data:`INTERRUPTED_TEXT`;
- a card whose finish failed (cards became unavailable mid-stream, QpsLimit to the end) stays recorded,
  and is finished later, with the text it showed and
  :data:`~edgecrab.dingtalk.cardstream.CONTINUED_NOTICE`;
- a watchdog finishes a card that had no new text for ``card.watchdog_s`` (10 minutes by default);
- the card's stop button (topic :data:`CARD_CALLBACK_TOPIC`) does what ``/stop`` does (``on_stop``),
  whichever replica DingTalk hands the button's callback to: one that does not stream the card reads the
  session from the card's record (``on_stop_elsewhere``: a ``/stop`` signal to the replica running it).

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
import uuid
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import httpx

from edgecrab.config.model import DingTalkConfig
from edgecrab.dingtalk.cardrecover import INTERRUPTED_TEXT, LeftOpen, Pending, route_fields, with_notice
from edgecrab.dingtalk.cards import CardClient, CardError, CardRejected, CardState, CardsUnavailable
from edgecrab.dingtalk.cardstream import CONTINUED_NOTICE, CardStreamer, split_for_card
from edgecrab.dingtalk.cardtext import mention_prefix, to_card_markdown
from edgecrab.dingtalk.frames import Frame
from edgecrab.dingtalk.streamconn import AckDecision
from edgecrab.dingtalk.tokens import TokenCache
from edgecrab.events import Message, ReplyRoute
from edgecrab.store.base import Store
from edgecrab.store.cardrecords import CARD_DONE, CARD_STREAMING, CardRecord

log = logging.getLogger("edgecrab.dingtalk.cardreply")

__all__ = [
    "CARD_CALLBACK_TOPIC", "INTERRUPTED_TEXT", "MARKDOWN_STAY_S", "CardReplies", "LiveCard", "card_replies"
]

CARD_CALLBACK_TOPIC = "/v1.0/card/instances/callback"
MARKDOWN_STAY_S = 1800.0
"""After cards turned out to be unavailable, replies are markdown for this long (30 minutes)."""
WATCHDOG_TEXT = "⚠️ No answer came for {minutes:g} minutes — send your question again."

StopHandler = Callable[[Message], Awaitable[None]]
"""on_stop(message): a card's stop button was pressed during the run answering ``message``."""
StopElsewhere = Callable[[str, ReplyRoute], Awaitable[None]]
"""on_stop_elsewhere(session_key, route): the stop button of a card another replica streams was pressed."""


class LiveCard:
    """One run's card (a :class:`~edgecrab.core.live.LiveReply`)."""

    def __init__(self, owner: CardReplies, streamer: CardStreamer, message: Message, key: str) -> None:
        self.owner, self.streamer, self.message, self.key = owner, streamer, message, key
        self.text = ""
        """The agent's text so far."""
        self.closed = False
        self.last_push = owner.clock()
        self.opened_at = time.time()

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

    async def recorded(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.owner.recorded(self)

    async def expire(self, notice: str) -> None:
        """The watchdog's end: the text so far and ``notice``, in the failed state."""
        await self._end(with_notice(self.text, notice), "failed")

    async def _end(self, text: str, state: CardState) -> bool:
        """Finish the card once (whoever comes first); False when it was finished already or failed."""
        if self.closed:
            return False
        self.closed = True
        error: CardError | None = None
        try:
            await self.streamer.finish(text, state)
            return True
        except CardError as err:
            error = err
            self.owner.card_failed(err)
            return False
        finally:
            self.streamer.close()
            # Cancelled before the finish was made (a shutdown): the card stays recorded as open.
            ended = error is not None or self.streamer.handle.finalized
            await self.owner.forget(self, state if ended else None, error)


class CardReplies:
    """The cards of one robot; ``run()`` hosts their update loops, the watchdog and start-up recovery."""

    def __init__(
        self,
        config: DingTalkConfig,
        client: CardClient,
        store: Store,
        robot: str,
        *,
        name: str = "",
        on_stop: StopHandler | None = None,
        on_stop_elsewhere: StopElsewhere | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``robot``: the robot's code; ``name``: its name, as in the inbox (default: the code)."""
        self.card = config.card
        self.client, self.store, self.robot = client, store, robot
        self.name = name or robot
        self.on_stop, self.on_stop_elsewhere = on_stop, on_stop_elsewhere
        self.clock = clock
        self.watchdog_s = config.card.watchdog_s
        self.markdown_until = 0.0
        """``clock()`` time until which replies are markdown (cards were found unavailable)."""
        self.live: dict[str, LiveCard] = {}
        self.left = LeftOpen(
            client, store, self.name, config.card.content_key, live=self.live, card_failed=self.card_failed
        )
        self.sweeps_itself = True
        """Look for cards left open at every watchdog tick (one process); replicas: the failover sweep
        calls :meth:`take_over` instead."""
        self._shown_saved: dict[str, str] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.opened = 0

    @property
    def replica(self) -> str:
        return self.left.replica

    @replica.setter
    def replica(self, replica: str) -> None:
        self.left.replica = replica

    @property
    def recovered(self) -> int:
        return self.left.recovered

    @property
    def unfinished(self) -> int:
        """Cards closed without a final state, waiting for the watchdog (or the next start) to finish them."""
        return len(self.left.pending)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                tg.start_soon(self._recover)
                await self._watch()
        finally:
            with anyio.CancelScope(shield=True):
                await self._save_shown()  # a restart finishes the open cards with what they show now

    async def take_over(self) -> None:
        """Finish the cards left open by gone replicas whose messages will not run again (the failover
        sweep calls it with replicas)."""
        await self.left.take_over()

    # -- opening -----------------------------------------------------------------------------------
    async def open(self, message: Message, session_key: str) -> LiveCard | None:
        route = message.route
        if self._tg is None or route is None:
            return None
        if self.clock() < self.markdown_until:
            await self.left.markdown_instead(message.id)
            return None
        record = CardRecord(self.name, f"edgecrab_{uuid.uuid4().hex}", message.id, session_key, self.replica,
                            route_fields(route), self.card.content_key, time.time())
        taken = await self.store.card_open(record)  # recorded before it exists: never a card without one
        if taken is not None:
            handle = self.left.resumed(taken, route)
        else:
            try:
                handle = await self.client.open(route, out_track_id=record.card_id)
            except CardError as err:
                if err.may_exist:  # an answer was lost: DingTalk may have the card
                    await self.left.absent(self.left.handle(record, route), "failed", record.opened_at)
                else:
                    await self.store.card_close(self.name, record.card_id)
                if isinstance(err, CardsUnavailable):
                    self.card_failed(err)
                else:
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
        card.opened_at = (taken or record).opened_at  # when it was recorded: its create began after
        self.live[handle.out_track_id] = card
        self.opened += 1
        self._tg.start_soon(streamer.run)
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

    async def forget(self, card: LiveCard, state: CardState | None, error: CardError | None = None) -> None:
        """``card`` was closed: marked done when its final state was accepted (forgotten once its run's end
        is recorded: :meth:`recorded`), or refused for good (``error``: DingTalk refused this card alone,
        e.g. it never existed); else kept for a later finish with the text it shows and ``state``; with
        ``state`` None (the finish was cancelled: a shutdown), left recorded as open for the next start or
        another replica."""
        if state is None:
            return  # still in ``live``, so that what it shows is saved as the gateway stops
        card_id = card.out_track_id
        self.live.pop(card_id, None)
        self._shown_saved.pop(card_id, None)
        handle = card.streamer.handle
        with anyio.CancelScope(shield=True):
            if error is not None and error.unknown_card and not handle.finalized:
                await self.left.absent(handle, state, card.opened_at)  # never created, or not yet
                return
            if handle.finalized or isinstance(error, CardRejected):
                await self.store.card_update(self.name, card_id, state=CARD_DONE)
                return
            shown = card.streamer.shown
            if state == "stopped":
                text = shown.rstrip()
            else:
                state, text = "failed", with_notice(shown, CONTINUED_NOTICE)
            await self.left.keep(card_id, Pending(handle, state, text, card.opened_at))
            log.warning("[cards] card %s could not be finished; it is tried again later", card_id)

    async def recorded(self, card: LiveCard) -> None:
        """The end of ``card``'s run is recorded (the message is finished): forget the card, unless it is
        still to be finished."""
        if card.out_track_id not in self.left.pending and card.out_track_id not in self.live:
            await self.store.card_close(self.name, card.out_track_id, self.replica)

    # -- the stop button ---------------------------------------------------------------------------
    async def has(self, card_id: str) -> bool:
        """Whether ``card_id`` is one of this robot's cards (streamed here or by another replica)."""
        return card_id in self.live or await self.store.card_get(self.name, card_id) is not None

    async def on_callback(self, frame: Frame) -> AckDecision:
        """A card button was pressed (topic :data:`CARD_CALLBACK_TOPIC`): the stop button stops the run,
        here or on the replica streaming the card."""
        try:
            data = json.loads(frame.data_text or "{}")
            content = json.loads(data.get("content") or "{}")
            actions = content.get("cardPrivateData", {}).get("actionIds", [])
        except (ValueError, AttributeError, TypeError):
            log.warning("[cards] unreadable card callback %s", frame.message_id)
            return AckDecision()
        if not any("stop" in str(action).lower() for action in actions):
            return AckDecision()
        card_id = str(data.get("outTrackId", ""))
        card = self.live.get(card_id)
        if card is not None:
            log.info("[cards] stop button pressed on card %s (session %s)", card.out_track_id, card.key)
            if self.on_stop is not None:
                await self.on_stop(card.message)
            return AckDecision()
        record = await self.store.card_get(self.name, card_id) if self.on_stop_elsewhere else None
        if record is not None and record.state == CARD_STREAMING and self.on_stop_elsewhere is not None:
            log.info("[cards] stop button pressed on card %s, streamed by replica %s (session %s)",
                     card_id, record.owner, record.session_key)
            await self.on_stop_elsewhere(record.session_key, ReplyRoute.from_dict(record.route))
        return AckDecision()

    # -- never stuck -------------------------------------------------------------------------------
    async def _recover(self) -> None:
        """At start: the cards an earlier life left open (see :mod:`edgecrab.dingtalk.cardrecover`)."""
        await self.left.import_legacy(self.robot)
        await self.left.take_over(starting=True)

    async def _watch(self) -> None:
        """Finish the cards that had no new text for ``watchdog_s``, try again to finish the cards whose
        finish failed, save what the open cards show, and (one process) look for cards left open."""
        while True:
            await anyio.sleep(max(0.05, min(self.watchdog_s / 4, 30.0)))
            now = self.clock()
            try:
                if self.left.pending and now >= self.markdown_until:
                    await self.left.finish_pending()
                await self._save_shown()
                if self.sweeps_itself:
                    await self.left.take_over()
            except Exception as exc:  # the store away: the next tick tries again
                log.warning("[cards] could not look after the open cards: %s: %s", type(exc).__name__, exc)
            for card in list(self.live.values()):
                if not card.closed and now - card.last_push >= self.watchdog_s:
                    log.warning(
                        "[cards] card %s had no update for %g s: finished by the watchdog",
                        card.out_track_id,
                        self.watchdog_s,
                    )
                    assert self._tg is not None
                    self._tg.start_soon(card.expire, WATCHDOG_TEXT.format(minutes=self.watchdog_s / 60))

    async def _save_shown(self) -> None:
        """Save what each open card shows, when it changed (a small write per card; none when nothing did)."""
        for card_id, card in list(self.live.items()):
            shown = card.streamer.shown
            if shown and shown != self._shown_saved.get(card_id):
                await self.store.card_update(self.name, card_id, shown=shown)
                self._shown_saved[card_id] = shown


def card_replies(
    config: DingTalkConfig,
    tokens: TokenCache,
    http: httpx.AsyncClient,
    store: Store,
    on_stop: StopHandler | None = None,
    on_stop_elsewhere: StopElsewhere | None = None,
) -> CardReplies | None:
    """The robot's cards with ``reply_mode: card`` (sharing the sender's token cache and connections),
    else None."""
    if config.reply_mode != "card":
        return None
    client = CardClient(config, tokens=tokens, client=http)
    return CardReplies(
        config, client, store, config.robot_code or config.app_key, name=config.name,
        on_stop=on_stop, on_stop_elsewhere=on_stop_elsewhere,
    )
