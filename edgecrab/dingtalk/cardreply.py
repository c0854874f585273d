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
  a crash or a stop is finished with :data:`INTERRUPTED_TEXT`;
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
from edgecrab.dingtalk.cards import CardClient, CardError, CardHandle, CardState, CardsUnavailable
from edgecrab.dingtalk.cardstream import CardStreamer, split_for_card
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
        try:
            await self.streamer.finish(text, state)
            return True
        except CardError as err:
            self.owner.card_failed(err)
            return False
        finally:
            self.streamer.close()
            await self.owner.forget(self)


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
        self._lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self.opened = 0
        self.recovered = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        raw = await self.store.kv_get(OPEN_CARDS_KEY + self.robot)
        left_open = json.loads(raw) if raw else {}
        self._records = dict(left_open)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            tg.start_soon(self._recover, list(left_open.values()))
            await self._watch()

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

    async def forget(self, card: LiveCard) -> None:
        self.live.pop(card.out_track_id, None)
        self._records.pop(card.out_track_id, None)
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
        """Finish the cards that had no new text for ``watchdog_s``."""
        while True:
            await anyio.sleep(max(0.05, min(self.watchdog_s / 4, 30.0)))
            now = self.clock()
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
        """Finish the cards the last run left open (a crash, a restart) with :data:`INTERRUPTED_TEXT`."""
        for rec in left_open:
            route = ReplyRoute(self.robot, str(rec.get("conversation", "")), bool(rec.get("group")))
            handle = CardHandle(str(rec["id"]), route, str(rec.get("content_key") or self.card.content_key))
            try:
                await self.client.finish(handle, INTERRUPTED_TEXT, "failed")
                self.recovered += 1
                log.info(
                    "[cards] card %s left open by the last run: finished as interrupted", handle.out_track_id
                )
            except CardError as err:
                log.warning(
                    "[cards] could not finish card %s left open by the last run: %s", handle.out_track_id, err
                )
            self._records.pop(handle.out_track_id, None)
        if left_open:
            await self._save()

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
