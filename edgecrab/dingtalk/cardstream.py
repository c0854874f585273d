"""Pacing one card: the agent's text as it grows, turned into as few card updates as a typewriter needs.

The agent may produce a token every few milliseconds; DingTalk allows about 20 card calls a second per app,
and each call counts against a monthly quota. :class:`CardStreamer` sits between them:

- **newest text wins**: :meth:`CardStreamer.push` only replaces the pending text; nothing queues;
- **at most one update in flight** per card, and **at most one per interval** (``card.update_interval_ms``);
- **the first text goes at once**, or as soon as DingTalk is ready for it: the reference's field evidence
  wants a gap (``open_gap_s``, 0.5 s) between delivering a card and its first frame, and between the last
  two frames (``close_gap_s``), or the card may show "content load failed";
- a throttled update (QpsLimit) waits the retry policy's backoff, then sends whatever text is newest then;
  5xx that keep coming make the card unavailable (:class:`~edgecrab.dingtalk.cards.CardsUnavailable`);
- :meth:`CardStreamer.finish` drops a pending update (the final frame carries the same text), waits for the
  one in flight, and finishes the card.

So a reply of duration D at interval I costs at most ``1 (open) + ceil(D / I) (updates) + 2 (finish)``
calls, whatever the agent's token rate. :class:`Pacer` holds the timing rules as plain arithmetic, so unit
tests check them without a clock.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import anyio

from edgecrab.dingtalk.cards import (
    CardError,
    CardHandle,
    CardState,
    CardsUnavailable,
    CardThrottled,
)
from edgecrab.retry import Backoff

OPEN_GAP_S = 0.5
CLOSE_GAP_S = 0.5
THROTTLE_BACKOFF = Backoff(0, 1.0, 8.0)
"""Waits after throttled updates: 1 s doubling to 8 s (never fewer than DingTalk's 1 s for a QpsLimit)."""
CONTINUED_NOTICE = "⚠️ The answer continues below as messages. (回复将以消息形式继续)"
"""Ends a card that became unavailable mid-stream; the whole answer follows as markdown messages."""
MAX_SERVER_ERRORS = 4
"""Consecutive 5xx answers to updates after which the card is given up as unavailable."""


class CardUpdater(Protocol):
    """What the streamer needs from :class:`~edgecrab.dingtalk.cards.CardClient`."""

    async def update(self, handle: CardHandle, text: str) -> None: ...

    async def finish(self, handle: CardHandle, text: str, state: CardState) -> None: ...


def split_for_card(text: str, max_chars: int) -> tuple[str, str]:
    """(what the card shows, what must follow as markdown messages): a cut at the last line break in the
    last tenth of the window, else at ``max_chars`` itself."""
    if len(text) <= max_chars:
        return text, ""
    cut = text.rfind("\n", max_chars - max_chars // 10, max_chars)
    cut = cut if cut > 0 else max_chars
    return text[:cut], text[cut:].lstrip("\n")


@dataclass
class Pacer:
    """When a card may be updated next, and when it may be finished. Times are ``anyio.current_time()``
    seconds (any monotonic clock in tests)."""

    interval_s: float
    opened_at: float
    open_gap_s: float = OPEN_GAP_S
    close_gap_s: float = CLOSE_GAP_S
    last_sent_at: float | None = None
    """When the last frame was sent (its request started)."""
    blocked_until: float = 0.0
    """No update before this (a throttled update's backoff)."""

    def update_due(self) -> float:
        due = self.opened_at + self.open_gap_s
        if self.last_sent_at is not None:
            due = max(due, self.last_sent_at + self.interval_s)
        return max(due, self.blocked_until)

    def final_due(self) -> float:
        if self.last_sent_at is None:
            return self.opened_at + self.open_gap_s
        return self.last_sent_at + self.close_gap_s

    def sent(self, at: float) -> None:
        self.last_sent_at = at

    def throttled(self, at: float, wait_s: float) -> None:
        self.last_sent_at = at
        self.blocked_until = at + wait_s


class CardStreamer:
    """Streams the growing text of one card; use ``async with``, :meth:`push`, then :meth:`finish`.

    Leaving the ``async with`` block without :meth:`finish` stops the updates and leaves the card as it
    is: the caller owns finishing it (a stopped or failed run finishes it too, with its state).
    """

    def __init__(
        self,
        client: CardUpdater,
        handle: CardHandle,
        *,
        interval_s: float,
        max_chars: int = 20000,
        opened_at: float | None = None,
        open_gap_s: float = OPEN_GAP_S,
        close_gap_s: float = CLOSE_GAP_S,
        backoff: Backoff = THROTTLE_BACKOFF,
        render: Callable[[str], str] = str,
    ) -> None:
        """``opened_at``: when the card was delivered (``anyio.current_time()``; default: now).
        ``render``: turns the card's part of the text (its first ``max_chars``) into what the card shows
        (the card's markdown dialect); applied when an update is sent, not on every push."""
        self.client, self.handle = client, handle
        self.max_chars = max_chars
        self.render = render
        self.backoff = backoff
        start = anyio.current_time() if opened_at is None else opened_at
        self.pacer = Pacer(interval_s, start, open_gap_s, close_gap_s)
        self.error: CardError | None = None
        """Why updates stopped early (cards unavailable, card rejected); ``finish`` raises it if fatal."""
        self.updates = 0
        """Update calls made (each counts in ``handle.calls`` too)."""
        self._pending = ""
        self._sent = ""
        self._wake = anyio.Event()
        self._closing = anyio.Event()
        self._done = anyio.Event()
        self._stack: AsyncExitStack | None = None

    @property
    def calls(self) -> int:
        """Card API calls made for this card so far, open included."""
        return self.handle.calls

    @property
    def shown(self) -> str:
        """The text the card shows (as far as the last successful update)."""
        return self._sent

    def push(self, text: str) -> None:
        """The agent's whole text so far; the card will show it, or a newer one. Cheap: called per token."""
        if text != self._pending:
            self._pending = text
            self._wake.set()

    def card_text(self, text: str) -> str:
        """What the card shows for the whole text ``text``: its first part, rendered."""
        return self.render(split_for_card(text, self.max_chars)[0])

    async def __aenter__(self) -> CardStreamer:
        stack = AsyncExitStack()
        group = await stack.enter_async_context(anyio.create_task_group())
        group.start_soon(self.run)
        self._stack = stack
        return self

    async def run(self) -> None:
        """The update loop, for a caller that hosts it in a task group of its own rather than using
        ``async with`` (then :meth:`finish` or :meth:`close` may be called from any task). It returns once
        the card is being finished or closed."""
        await self._run()

    def close(self) -> None:
        """Stop sending updates (the card is left as it is)."""
        self._closing.set()
        self._wake.set()

    _close = close

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._close()
        assert self._stack is not None
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def finish(self, text: str, state: CardState) -> None:
        """Finish the card with ``text`` (cut to ``max_chars``; the caller sends the rest as markdown).
        Raises :class:`CardsUnavailable` found while streaming (after trying to finish the card in the
        failed state with the text it shows and :data:`CONTINUED_NOTICE`), or the finish call's
        :class:`CardError`. ``handle.finalized`` tells whether the card left "writing" either way."""
        self._close()
        await self._done.wait()
        wait = self.pacer.final_due() - anyio.current_time()
        if wait > 0:
            await anyio.sleep(wait)
        if isinstance(self.error, CardsUnavailable):
            # Cards became unavailable mid-stream: still try to take the card out of "writing", with what it
            # shows and a notice, then raise so that the caller sends the answer as markdown. When even this
            # fails, ``handle.finalized`` stays False and the caller keeps the card for a later finish.
            shown = self._sent.rstrip()
            text = f"{shown}\n\n{CONTINUED_NOTICE}" if shown else CONTINUED_NOTICE
            with contextlib.suppress(CardError):
                await self.client.finish(self.handle, text, "failed")
            raise self.error
        await self.client.finish(self.handle, self.card_text(text), state)

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            self._done.set()

    async def _loop(self) -> None:
        throttles = server_errors = 0
        while not self._closing.is_set():
            await self._wake.wait()  # new text, or closing
            self._wake = anyio.Event()
            # Pace: wait for the due time, unless the card is being finished (its last frame says it all).
            with anyio.move_on_after(max(0.0, self.pacer.update_due() - anyio.current_time())):
                await self._closing.wait()
            if self._closing.is_set():
                return
            text = self.card_text(self._pending)
            if text == self._sent:
                continue
            started = anyio.current_time()
            try:
                self.updates += 1
                await self.client.update(self.handle, text)
            except CardThrottled as err:
                server_errors = server_errors + 1 if err.status >= 500 or err.status == 0 else 0
                if server_errors >= MAX_SERVER_ERRORS:
                    self.error = CardsUnavailable.wrap(err, f"{err} ({server_errors} times in a row)")
                    return
                wait_s = max(err.min_wait, self.backoff.delay(throttles, random.random))
                throttles += 1
                self.pacer.throttled(started, wait_s)
                self._wake.set()  # try again with whatever text is newest then
                continue
            except CardError as err:
                self.error = err
                return
            throttles = server_errors = 0
            self.pacer.sent(started)
            self._sent = text
