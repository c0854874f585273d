"""Card scenarios (issue 17), in one process: the gateway's own card machinery against the fake DingTalk.

Each card is driven the way ``reply_mode: card`` drives it (:class:`~edgecrab.dingtalk.cards.CardClient`,
one per robot with its shared ``card.qps`` budget, and one :class:`~edgecrab.dingtalk.cardstream.CardStreamer`
per card), by a modelled agent: its first token comes ``first_token_s`` after the card opened, then one token
every ``token_s`` until ``duration_s``. What a user sees is read from the fake's card state: a frame's time
is when the fake accepted it, which is when the card shows it.

The **peer model** is the same client and streamer configured the way peers do it: a fixed 300 ms per-card
interval and no shared budget (every card calls as soon as its own pacing allows; DingTalk's QpsLimit
answers are all it learns from).

The fake and the driver share one event loop here (the fake is the instrument, and its own CPU time shows
up in the figures); ack latency while cards stream is measured separately, against the gateway process
(:func:`bench.scenarios.cards`).
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import anyio

from edgecrab.config.model import CardConfig, DingTalkConfig
from edgecrab.dingtalk.cards import CardClient, CardError
from edgecrab.dingtalk.cardstream import CardStreamer
from edgecrab.events import ReplyRoute
from edgecrab.testing.fakedingtalk import DEFAULT_APP_KEY, DEFAULT_APP_SECRET, FakeDingTalk

PEER_INTERVAL_MS = 300
UNLIMITED_QPS = 1_000_000


@dataclass
class CardRun:
    """What came of one batch of streamed cards."""

    cards: int
    interval_s: float
    duration_s: float
    first_text_s: list[float] = field(default_factory=list)
    """Per card: first agent token -> the fake accepted the first frame with text."""
    calls: list[int] = field(default_factory=list)
    """Per card: card API calls, open and retries included."""
    exact: int = 0
    """Cards finished with exactly the final text."""
    finished: int = 0
    qps_limit_errors: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        goal = 3 + math.ceil(self.duration_s / self.interval_s)
        return {
            "cards": self.cards,
            "interval_ms": round(self.interval_s * 1000),
            "duration_s": self.duration_s,
            "first_text_p50_s": _median(self.first_text_s),
            "first_text_max_s": max(self.first_text_s, default=None),
            "calls_per_reply_mean": statistics.fmean(self.calls) if self.calls else None,
            "calls_per_reply_max": max(self.calls, default=None),
            "calls_goal": goal,
            "finished": self.finished,
            "exact": self.exact,
            "qps_limit_errors": self.qps_limit_errors,
            "errors": self.errors[:5],
            "error_count": len(self.errors),
            "wall_s": self.wall_s,
        }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _config(fake: FakeDingTalk, interval_ms: int, qps: float) -> DingTalkConfig:
    return DingTalkConfig(
        app_key=DEFAULT_APP_KEY,
        app_secret=DEFAULT_APP_SECRET,
        robot_code=DEFAULT_APP_KEY,
        api_base=fake.base_url,
        send_timeout_s=30.0,
        send_retries=6,
        reply_mode="card",
        card=CardConfig(update_interval_ms=interval_ms, qps=qps),
    )


def answer(words: int) -> list[str]:
    return [f"word{i} " if i % 12 else f"\nline{i} " for i in range(words)]


async def stream_cards(
    fake: FakeDingTalk,
    *,
    cards: int,
    duration_s: float,
    first_token_s: float,
    token_s: float = 0.05,
    interval_ms: int = 800,
    qps: float = 20,
) -> CardRun:
    """Open ``cards`` cards at once, stream a modelled answer into each, finish them, and read the fake."""
    config = _config(fake, interval_ms, qps)
    run = CardRun(cards, interval_ms / 1000, duration_s)
    tokens = answer(max(1, int((duration_s - first_token_s) / token_s)))
    final = "".join(tokens)
    throttled_before = fake.cards.throttled
    first_token_at: dict[str, float] = {}
    started = anyio.current_time()

    async def one(client: CardClient, index: int) -> None:
        route = ReplyRoute(DEFAULT_APP_KEY, f"cidBench{index}", is_group=False, sender_staff_id="user1001")
        try:
            handle = await client.open(route)
        except CardError as err:
            run.errors.append(f"open: {err}")
            return
        streamer = CardStreamer(
            client, handle, interval_s=interval_ms / 1000, max_chars=config.card.max_chars
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(streamer.run)
            await anyio.sleep(first_token_s)
            first_token_at[handle.out_track_id] = fake.state.now()
            text = ""
            for token in tokens:
                text += token
                streamer.push(text)
                await anyio.sleep(token_s)
            try:
                await streamer.finish(final, "finished")
            except CardError as err:
                run.errors.append(f"finish: {err}")
            streamer.close()
        run.calls.append(handle.calls)

    async with CardClient(config) as client:
        async with anyio.create_task_group() as tg:
            for index in range(cards):
                tg.start_soon(one, client, index)
    run.wall_s = anyio.current_time() - started
    for card_id, t0 in first_token_at.items():
        card = fake.cards.cards.get(card_id)
        if card is None:
            continue
        shown = [f.t for f in card.frames if f.content.strip()]
        if shown:
            run.first_text_s.append(max(0.0, shown[0] - t0))
        run.finished += card.status == "finished"
        run.exact += card.status == "finished" and card.text == final.rstrip("\n")
    run.qps_limit_errors = fake.cards.throttled - throttled_before
    return run


async def first_text(samples: int, first_token_s: float, interval_ms: int = 800) -> dict[str, Any]:
    """One streaming reply at a time, ``samples`` times: first agent token -> first visible card text."""
    runs: list[dict[str, Any]] = []
    values: list[float] = []
    async with FakeDingTalk(seed=17) as fake:
        for _ in range(samples):
            run = await stream_cards(
                fake,
                cards=1,
                duration_s=first_token_s + 0.3,
                first_token_s=first_token_s,
                interval_ms=interval_ms,
            )
            values += run.first_text_s
            runs.append(run.summary())
    return {
        "samples": samples,
        "first_token_s": first_token_s,
        "interval_ms": interval_ms,
        "p50_s": _median(values),
        "max_s": max(values, default=None),
        "values_s": values,
        "errors": sum(r["error_count"] for r in runs),
    }


async def many_cards(cards: int, duration_s: float, qps_limit: int) -> dict[str, Any]:
    """``cards`` concurrent ``duration_s`` answers on one robot, the fake enforcing ``qps_limit`` per API:
    edgecrab's settings (default interval, one shared budget at ``qps_limit``) and the peer model."""
    out: dict[str, Any] = {"cards": cards, "duration_s": duration_s, "fake_qps_limit": qps_limit}
    # The peer model's QpsLimit retries are the finding, counted below; one log line each is noise.
    logging.getLogger("edgecrab.dingtalk.cards").setLevel(logging.ERROR)
    for name, interval_ms, qps in (
        ("edgecrab", CardConfig().update_interval_ms, float(qps_limit)),
        ("peer", PEER_INTERVAL_MS, float(UNLIMITED_QPS)),
    ):
        async with FakeDingTalk(seed=17) as fake:
            fake.cards.qps_limit = qps_limit
            run = await stream_cards(
                fake, cards=cards, duration_s=duration_s, first_token_s=1.0, interval_ms=interval_ms, qps=qps
            )
        out[name] = run.summary()
    return out


def run_first_text(samples: int) -> dict[str, Any]:
    return {
        "typical": anyio.run(first_text, samples, 1.0),
        "instant": anyio.run(first_text, samples, 0.0),
    }


def run_many_cards(cards: int, duration_s: float, qps_limit: int) -> dict[str, Any]:
    return anyio.run(many_cards, cards, duration_s, qps_limit)
