"""The gateway's card client and streamer against the fake DingTalk over real loopback sockets.

What a user would see is read from the fake's card state (``fake.cards``); backoff waits of ``open`` and
``finish`` are recorded, not slept. Streaming tests use real time with short intervals and assert only
bounds that a slow machine cannot break (slowness means fewer updates, never more).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from edgecrab.config.model import CardConfig, DingTalkConfig
from edgecrab.dingtalk.cards import (
    STOPPED_MARK,
    CardClient,
    CardRejected,
    CardsUnavailable,
    CardThrottled,
)
from edgecrab.dingtalk.cardstream import CardStreamer
from edgecrab.events import ReplyRoute
from edgecrab.testing.fakedingtalk import DEFAULT_APP_KEY, DEFAULT_APP_SECRET, FakeDingTalk

pytestmark = pytest.mark.anyio

GROUP = "cidCardGroup0000000000000000000000000000000="
STREAM = "/v1.0/card/streaming"


class Sleeps:
    """Records backoff waits and yields once instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await anyio.lowlevel.checkpoint()


@pytest.fixture
async def fake() -> AsyncIterator[FakeDingTalk]:
    async with FakeDingTalk(seed=5) as f:
        f.add_group(GROUP, "卡片群")
        yield f


def make_client(fake: FakeDingTalk, sleep: Any = anyio.sleep, **card: Any) -> CardClient:
    config = DingTalkConfig(
        app_key=DEFAULT_APP_KEY,
        app_secret=DEFAULT_APP_SECRET,
        robot_code=DEFAULT_APP_KEY,
        api_base=fake.base_url,
        send_timeout_s=5.0,
        send_retries=3,
        reply_mode="card",
        card=CardConfig(**card),
    )
    return CardClient(config, sleep=sleep)


@pytest.fixture
async def client(fake: FakeDingTalk) -> AsyncIterator[CardClient]:
    async with make_client(fake, Sleeps()) as c:
        yield c


def dm(staff: str = "user1001") -> ReplyRoute:
    return ReplyRoute(DEFAULT_APP_KEY, "cidDm", is_group=False, sender_staff_id=staff, sender_name="李四")


def group() -> ReplyRoute:
    return ReplyRoute(DEFAULT_APP_KEY, GROUP, is_group=True, sender_staff_id="user1002")


async def test_a_dm_card_opens_streams_and_finishes(fake: FakeDingTalk, client: CardClient) -> None:
    handle = await client.open(dm())
    card = fake.cards.card(handle.out_track_id)
    assert (card.status, card.text, card.visible) == ("inputting", "", True)
    assert card.conversation_ids == [fake.dm_conversation_id("user1001")]
    [delivery] = card.deliveries
    assert delivery.robot_code == DEFAULT_APP_KEY  # the DM deliver model names the robot
    await client.update(handle, "Hello\n")
    assert card.text == "Hello"  # a trailing newline is trimmed on frames that are not the last
    await client.finish(handle, "Hello, world.\n", "finished")
    assert (card.status, card.text, card.stream_finalized) == ("finished", "Hello, world.\n", True)
    assert card.frames[-1].is_finalize and not card.frames[0].is_finalize
    assert card.updates[-1]["by_key"] is True
    assert handle.calls == 4 == client.calls and handle.state == "finished"
    assert handle.process_query_key == card.process_query_key


async def test_a_group_card_and_the_failed_and_stopped_states(fake: FakeDingTalk, client: CardClient) -> None:
    failed = await client.open(group())
    assert fake.cards.card(failed.out_track_id).conversation_ids == [GROUP]
    await client.finish(failed, "抱歉，出错了。", "failed")
    assert (fake.cards.card(failed.out_track_id).status, fake.cards.card(failed.out_track_id).text) == (
        "failed",
        "抱歉，出错了。",
    )
    stopped = await client.open(group())
    await client.update(stopped, "half an ans")
    await client.finish(stopped, "half an ans", "stopped")
    card = fake.cards.card(stopped.out_track_id)
    assert card.status == "finished" and card.text == f"half an ans\n\n{STOPPED_MARK}"


async def test_every_streaming_call_has_a_new_guid(fake: FakeDingTalk, client: CardClient) -> None:
    handle = await client.open(dm())
    for text in ("a", "ab", "ab"):
        await client.update(handle, text)
    await client.finish(handle, "abc", "finished")
    guids = [f.guid for f in fake.cards.card(handle.out_track_id).frames]
    assert len(guids) == 4 == len(set(guids))


async def test_a_missing_permission_makes_cards_unavailable_and_names_the_scope(
    fake: FakeDingTalk, client: CardClient
) -> None:
    fake.cards.revoke("Card.Instance.Write")
    with pytest.raises(CardsUnavailable) as caught:
        await client.open(dm())
    assert caught.value.required_scopes == ("Card.Instance.Write",)
    assert "Card.Instance.Write" in str(caught.value) and "developer console" in str(caught.value)
    fake.cards.grant()
    handle = await client.open(dm())
    fake.cards.revoke("Card.Streaming.Write")
    with pytest.raises(CardsUnavailable, match="Card.Streaming.Write"):
        await client.update(handle, "x")
    with pytest.raises(CardsUnavailable):  # the final frame fails, but the card is still closed
        await client.finish(handle, "x", "finished")
    assert fake.cards.card(handle.out_track_id).status == "finished"


async def test_unknown_template_and_wrong_content_key_make_cards_unavailable(fake: FakeDingTalk) -> None:
    async with make_client(fake, Sleeps(), template_id="mine.schema") as client:
        with pytest.raises(CardsUnavailable, match="template_id"):
            await client.open(dm())
    assert fake.cards.cards == {}
    async with make_client(fake, Sleeps(), content_key="content") as client:
        handle = await client.open(dm())
        with pytest.raises(CardsUnavailable, match="content_key"):
            await client.update(handle, "x")


async def test_a_failed_delivery_inside_http_200_is_a_failure(fake: FakeDingTalk, client: CardClient) -> None:
    fake.cards.fail_deliveries(1, "user blocked the robot")
    with pytest.raises(CardRejected, match="user blocked the robot"):
        await client.open(dm())
    with pytest.raises(CardRejected, match="staff id"):
        await client.open(dm(staff=""))


async def test_qps_limit_on_open_and_finish_backs_off_and_succeeds(fake: FakeDingTalk) -> None:
    sleeps = Sleeps()
    async with make_client(fake, sleeps) as client:
        fake.faults.fail("/v1.0/card/instances/createAndDeliver", 403, times=2, kinds=["qps"])
        handle = await client.open(dm())
        backoffs = [w for w in sleeps.calls if w >= 1.0]  # the others are the budget's pacing
        assert len(backoffs) == 2  # a QpsLimit waits at least a second before the retry
        fake.faults.fail(STREAM, 403, times=1, kinds=["qps"])
        with pytest.raises(CardThrottled):  # an update is tried once: the next one carries newer text
            await client.update(handle, "x")
        fake.faults.fail(STREAM, 403, times=1, kinds=["qps"])
        await client.finish(handle, "done", "finished")
    card = fake.cards.card(handle.out_track_id)
    assert (card.status, card.text) == ("finished", "done") and handle.calls == 3 + 1 + 3
    guids = [r.body["guid"] for r in fake.state.requests if r.path == STREAM]
    assert len(guids) == len(set(guids)) == 3  # the finish retry carried a new guid


async def test_server_errors_on_open_that_outlast_the_retries_make_cards_unavailable(
    fake: FakeDingTalk, client: CardClient
) -> None:
    fake.faults.fail("/v1.0/card/*", 503, times=10)
    with pytest.raises(CardsUnavailable, match="keeps failing"):
        await client.open(dm())


async def test_all_cards_of_a_robot_share_one_budget(fake: FakeDingTalk) -> None:
    fake.cards.qps_limit = 20  # per API, as DingTalk's standard tier
    async with make_client(fake, qps=15) as client:
        handles = [await client.open(dm()) for _ in range(3)]
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for handle in handles:
                for i in range(10):
                    tg.start_soon(client.update, handle, f"text {i}")
        elapsed = anyio.current_time() - started
    assert fake.cards.throttled == 0
    assert elapsed >= 29 / 15 - 0.05  # 30 calls at 15 per second, whichever card they are for


async def test_streamer_coalesces_and_finishes_with_the_final_text(fake: FakeDingTalk) -> None:
    interval = 0.2
    async with make_client(fake, update_interval_ms=200) as client:
        handle = await client.open(dm())
        started = anyio.current_time()
        async with CardStreamer(client, handle, interval_s=interval, open_gap_s=0.05, close_gap_s=0.05) as s:
            text = ""
            for i in range(60):  # a token every 10 ms for 0.6 s
                text += f"w{i} "
                s.push(text)
                await anyio.sleep(0.01)
            await s.finish(text + "end", "finished")
        duration = anyio.current_time() - started
    card = fake.cards.card(handle.out_track_id)
    assert (card.status, card.text) == ("finished", text + "end")
    assert handle.calls <= 3 + math.ceil(duration / interval)
    assert s.updates >= 2  # the text showed while it grew
    frames = card.frames
    assert all(b.t - a.t >= interval - 0.02 for a, b in zip(frames[:-2], frames[1:-1], strict=True))
    assert fake.cards.card(handle.out_track_id).frames[0].content.startswith("w0")


async def test_streamer_rides_out_a_qps_limit_storm(fake: FakeDingTalk) -> None:
    async with make_client(fake) as client:
        handle = await client.open(dm())
        fake.faults.fail(STREAM, 403, times=1, kinds=["qps"])
        async with CardStreamer(client, handle, interval_s=0.05, open_gap_s=0, close_gap_s=0) as s:
            s.push("first")
            await fake.wait_for(lambda: s.pacer.blocked_until > 0)  # throttled: backs off at least 1 s
            s.push("first second")
            s.push("first second third")
            await fake.wait_for(lambda: s.shown == "first second third", timeout=5)
            await s.finish("first second third!", "finished")
    frames = fake.cards.card(handle.out_track_id).frames
    assert [f.content for f in frames] == ["first second third", "first second third!"]  # no queue behind
    assert s.error is None
