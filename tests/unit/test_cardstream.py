"""Coalescing one card's updates: the pacing arithmetic, the card/markdown split, and the streamer's loop
against a recording stand-in for the card client (no network).

The loop tests run in real time with short intervals and assert what a slow machine cannot break: the
newest text wins, nothing queues, one call in flight, one per interval, the call-count bound.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import anyio
import pytest

from edgecrab.dingtalk.cards import CardHandle, CardState, CardsUnavailable, CardThrottled
from edgecrab.dingtalk.cardstream import CONTINUED_NOTICE, CardStreamer, Pacer, split_for_card
from edgecrab.events import ReplyRoute
from edgecrab.retry import Backoff

ROUTE = ReplyRoute("robot", "cid", is_group=False, sender_staff_id="u1")


class Recorder:
    """Records update and finish calls with their start times; each call takes ``call_s``."""

    def __init__(self, call_s: float = 0.0, fail: list[Exception] | None = None) -> None:
        self.call_s = call_s
        self.fail = list(fail or [])
        self.updates: list[tuple[float, str]] = []
        self.finished: list[tuple[str, CardState]] = []
        self.in_flight = self.max_in_flight = 0

    async def update(self, handle: CardHandle, text: str) -> None:
        handle.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.updates.append((anyio.current_time(), text))
            await anyio.sleep(self.call_s)
            if self.fail:
                raise self.fail.pop(0)
        finally:
            self.in_flight -= 1

    async def finish(self, handle: CardHandle, text: str, state: CardState) -> None:
        handle.calls += 2
        self.finished.append((text, state))


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Poll ``predicate`` every few milliseconds (the streamer has no event to wait on); fail after
    ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        for _ in itertools.count():
            if predicate():
                return
            await anyio.sleep(0.005)


def handle() -> CardHandle:
    return CardHandle("track", ROUTE, "msgContent", calls=1)  # open cost one call


# --- pacing arithmetic ----------------------------------------------------------------------------------


def test_the_first_update_waits_only_for_the_gap_after_delivery() -> None:
    pacer = Pacer(interval_s=0.8, opened_at=10.0, open_gap_s=0.5, close_gap_s=0.5)
    assert pacer.update_due() == 10.5
    assert pacer.final_due() == 10.5


def test_later_updates_are_one_interval_apart_and_the_last_frame_keeps_its_gap() -> None:
    pacer = Pacer(interval_s=0.8, opened_at=10.0, open_gap_s=0.5, close_gap_s=0.3)
    pacer.sent(12.0)
    assert pacer.update_due() == pytest.approx(12.8)
    assert pacer.final_due() == pytest.approx(12.3)


def test_a_throttled_update_blocks_until_its_backoff_has_passed() -> None:
    pacer = Pacer(interval_s=0.8, opened_at=10.0)
    pacer.throttled(11.0, 2.0)
    assert pacer.update_due() == 13.0


def test_split_for_card_cuts_at_a_line_break_near_the_limit() -> None:
    assert split_for_card("short", 100) == ("short", "")
    text = "a" * 95 + "\n" + "b" * 20
    assert split_for_card(text, 100) == ("a" * 95, "b" * 20)
    no_break = "c" * 150
    assert split_for_card(no_break, 100) == ("c" * 100, "c" * 50)


# --- the loop -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_first_text_goes_at_once_and_the_newest_text_wins() -> None:
    recorder, card = Recorder(call_s=0.05), handle()
    async with CardStreamer(recorder, card, interval_s=0.2, open_gap_s=0, close_gap_s=0) as streamer:
        started = anyio.current_time()
        streamer.push("a")
        await until(lambda: recorder.updates)
        assert recorder.updates[0][0] - started < 0.1  # not a whole interval later
        for text in ("ab", "abc", "abcd"):  # all while the first call is in flight
            streamer.push(text)
        await until(lambda: streamer.shown == "abcd")
        await streamer.finish("abcde", "finished")
    assert [text for _, text in recorder.updates] == ["a", "abcd"]  # nothing queued behind "a"
    assert recorder.finished == [("abcde", "finished")]
    assert recorder.max_in_flight == 1


@pytest.mark.anyio
async def test_a_fast_agent_costs_at_most_three_calls_plus_one_per_interval() -> None:
    interval = 0.1
    recorder, card = Recorder(call_s=0.03), handle()
    started = anyio.current_time()
    async with CardStreamer(recorder, card, interval_s=interval, open_gap_s=0.02, close_gap_s=0.02) as s:
        text = ""
        for i in range(100):  # a token every 5 ms for 0.5 s
            text += f"t{i} "
            s.push(text)
            await anyio.sleep(0.005)
        await s.finish(text, "finished")
    duration = anyio.current_time() - started
    assert card.calls <= 3 + math.ceil(duration / interval)
    starts = [t for t, _ in recorder.updates]
    assert all(b - a >= interval - 0.005 for a, b in zip(starts, starts[1:], strict=False))
    assert recorder.max_in_flight == 1 and len(recorder.updates) >= 2
    assert recorder.finished == [(text, "finished")]


@pytest.mark.anyio
async def test_finish_drops_a_pending_update_and_waits_for_the_one_in_flight() -> None:
    recorder, card = Recorder(call_s=0.1), handle()
    async with CardStreamer(recorder, card, interval_s=5.0, open_gap_s=0, close_gap_s=0) as streamer:
        streamer.push("one")
        await until(lambda: recorder.updates)
        streamer.push("one two")  # would wait 5 s for its turn
        await streamer.finish("one two three", "stopped")
        assert recorder.in_flight == 0
    assert [text for _, text in recorder.updates] == ["one"]
    assert recorder.finished == [("one two three", "stopped")]


@pytest.mark.anyio
async def test_text_beyond_max_chars_stays_off_the_card() -> None:
    recorder, card = Recorder(), handle()
    async with CardStreamer(recorder, card, interval_s=0.01, max_chars=100, open_gap_s=0, close_gap_s=0) as s:
        s.push("x" * 150)
        await until(lambda: recorder.updates)
        await s.finish("x" * 150, "finished")
    assert recorder.updates[0][1] == "x" * 100 and recorder.finished == [("x" * 100, "finished")]


@pytest.mark.anyio
async def test_a_throttled_update_is_retried_with_the_newest_text_after_the_backoff() -> None:
    throttled = CardThrottled("qps", status=403, code="Forbidden.AccessDenied.QpsLimitForAppkeyAndApi")
    recorder, card = Recorder(fail=[throttled]), handle()
    backoff = Backoff(0, 0.05, 0.05)
    async with CardStreamer(
        recorder, card, interval_s=0.01, open_gap_s=0, close_gap_s=0, backoff=backoff
    ) as streamer:
        streamer.push("a")
        await until(lambda: recorder.updates)
        streamer.push("ab")
        await until(lambda: streamer.shown == "ab")
        await streamer.finish("ab", "finished")
    (t1, first), (t2, second) = recorder.updates
    assert (first, second) == ("a", "ab")
    assert t2 - t1 >= 1.0 - 0.01  # a QpsLimit waits at least DingTalk's second, whatever the policy says


@pytest.mark.anyio
async def test_cards_unavailable_stops_updates_and_finish_still_ends_the_card_then_raises() -> None:
    denied = CardsUnavailable("no permission", status=403, required_scopes=("Card.Streaming.Write",))
    recorder, card = Recorder(fail=[denied]), handle()
    async with CardStreamer(recorder, card, interval_s=0.01, open_gap_s=0, close_gap_s=0) as streamer:
        streamer.push("a")
        await until(lambda: streamer.error is not None)
        streamer.push("ab")
        with pytest.raises(CardsUnavailable):
            await streamer.finish("ab", "finished")
    # The card still leaves "writing" (failed, with what it shows and a notice); the answer goes as markdown.
    assert len(recorder.updates) == 1 and recorder.finished == [(CONTINUED_NOTICE, "failed")]


@pytest.mark.anyio
async def test_server_errors_in_a_row_make_the_card_unavailable() -> None:
    errors = [CardThrottled("busy", status=503, code="ServiceUnavailable") for _ in range(4)]
    recorder, card = Recorder(fail=list(errors)), handle()
    backoff = Backoff(0, 0.01, 0.01)
    async with CardStreamer(
        recorder, card, interval_s=0.01, open_gap_s=0, close_gap_s=0, backoff=backoff
    ) as s:
        s.push("a")
        await until(lambda: s.error is not None)
    assert isinstance(s.error, CardsUnavailable) and len(recorder.updates) == 4
