"""The REST sender against the fake DingTalk over real loopback sockets.

The unit tests pin the exact requests; these check that the sender and the fake (which follows the
protocol reference independently) agree on the wire: token expiry, 300001 fallback, injected faults.
Backoff sleeps are recorded, not slept, so retries do not slow the suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio.lowlevel
import pytest

from edgecrab.config import DingTalkConfig
from edgecrab.dingtalk.rest import DingTalkSender, SendResult
from edgecrab.events import ReplyRoute
from edgecrab.testing.fakedingtalk import DEFAULT_APP_KEY, DEFAULT_APP_SECRET, FakeDingTalk

pytestmark = pytest.mark.anyio

BATCH = "/v1.0/robot/oToMessages/batchSend"
GROUP = "/v1.0/robot/groupMessages/send"
TOKEN = "/v1.0/oauth2/accessToken"
WEBHOOK = "/robot/sendBySession"


class Sleeps:
    """Records backoff and pacing waits and yields once instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await anyio.lowlevel.checkpoint()


@pytest.fixture
async def fake() -> AsyncIterator[FakeDingTalk]:
    async with FakeDingTalk(seed=11) as f:
        yield f


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def sender(fake: FakeDingTalk, sleeps: Sleeps) -> AsyncIterator[DingTalkSender]:
    async with make_sender(fake, sleeps) as s:
        yield s


def make_sender(fake: FakeDingTalk, sleeps: Sleeps, **overrides: Any) -> DingTalkSender:
    values: dict[str, Any] = {
        "app_key": DEFAULT_APP_KEY,
        "app_secret": DEFAULT_APP_SECRET,
        "robot_code": "",
        "api_base": fake.base_url,
        "send_timeout_s": 5.0,
    }
    values.update(overrides)
    return DingTalkSender(DingTalkConfig(**values), sleep=sleeps)


def route_of(data: dict[str, Any], **overrides: Any) -> ReplyRoute:
    """The route the gateway would persist for a message the fake built."""
    route = ReplyRoute(
        robot_code=data["robotCode"],
        conversation_id=data["conversationId"],
        is_group=data["conversationType"] == "2",
        sender_staff_id=data.get("senderStaffId", ""),
        sender_name=data.get("senderNick", ""),
        session_webhook=data["sessionWebhook"],
        session_webhook_expires_at=data["sessionWebhookExpiredTime"] / 1000,
    )
    return ReplyRoute.from_dict({**route.to_dict(), **overrides})


def calls(fake: FakeDingTalk) -> list[tuple[str, int]]:
    return [(r.path, r.status) for r in fake.requests]


async def send(sender: DingTalkSender, route: ReplyRoute, text: str = "hello", **kw: Any) -> SendResult:
    kw.setdefault("title", "reply")
    kw.setdefault("mention", False)
    return await sender.send(route, text=text, **kw)


async def test_webhook_then_session_gone_falls_back_to_batch_send(
    fake: FakeDingTalk, sender: DingTalkSender
) -> None:
    route = route_of(fake.dm("manager807", "hi"))
    assert (await send(sender, route, "one")).via == "webhook"
    fake.expire_webhooks_now()
    assert (await send(sender, route, "two")).via == "batchSend"
    assert (await send(sender, route, "three")).via == "batchSend"
    assert calls(fake) == [(WEBHOOK, 200), (WEBHOOK, 200), (TOKEN, 200), (BATCH, 200), (BATCH, 200)]
    assert [(o.via, o.text, o.user_ids) for o in fake.outbound] == [
        ("webhook", "one", ["manager807"]),
        ("batchSend", "two", ["manager807"]),
        ("batchSend", "three", ["manager807"]),
    ]


async def test_expired_token_is_refreshed_and_the_send_retried(
    fake: FakeDingTalk, sender: DingTalkSender
) -> None:
    route = route_of(fake.dm("manager807", "hi"), session_webhook="")
    assert (await send(sender, route, "one")).ok
    fake.expire_tokens_now()
    assert (await send(sender, route, "two")).ok
    assert calls(fake) == [(TOKEN, 200), (BATCH, 200), (BATCH, 400), (TOKEN, 200), (BATCH, 200)]
    first, stale, fresh = (r.headers["x-acs-dingtalk-access-token"] for r in fake.requests if r.path == BATCH)
    assert first == stale != fresh
    assert [o.text for o in fake.outbound] == ["one", "two"]


@pytest.mark.parametrize("kind", ["500", "503", "504", "429", "qps"])
async def test_injected_faults_are_retried(
    fake: FakeDingTalk, sender: DingTalkSender, sleeps: Sleeps, kind: str
) -> None:
    fake.faults.fail(BATCH, kinds=[kind], times=2)
    route = route_of(fake.dm("manager807", "hi"), session_webhook="")
    result = await send(sender, route)
    assert result.ok and result.via == "batchSend"
    assert [status for path, status in calls(fake) if path == BATCH][-1] == 200
    assert len([path for path, _ in calls(fake) if path == BATCH]) == 3
    backoffs = [s for s in sleeps.calls if s >= 0.25]
    assert len(backoffs) == 2
    if kind == "qps":
        assert min(backoffs) >= 1.0
    assert len(fake.outbound) == 1


async def test_persistent_5xx_gives_up_after_send_retries(fake: FakeDingTalk, sleeps: Sleeps) -> None:
    fake.faults.fail(GROUP, status=500, times=10)
    route = route_of(fake.group("manager807", "hi"), session_webhook="")
    async with make_sender(fake, sleeps, send_retries=2) as sender:
        result = await send(sender, route)
    assert (result.ok, result.permanent, result.via) == (False, False, "groupSend")
    assert [p for p, _ in calls(fake)].count(GROUP) == 3
    assert fake.outbound == []


async def test_group_mentions_on_both_routes(fake: FakeDingTalk, sender: DingTalkSender) -> None:
    route = route_of(fake.group("user1002", "hi"))
    assert (await send(sender, route, "**done**", mention=True)).via == "webhook"
    assert (
        await send(sender, route_of(fake.group("user1002", "hi"), session_webhook=""), "again", mention=True)
    ).ok
    webhook, group = fake.outbound
    assert webhook.via == "webhook" and webhook.at_user_ids == ["user1002"]
    assert webhook.text.endswith("\n\n@user1002")
    assert group.via == "groupSend" and group.at_user_ids == []
    assert group.text == "again\n\n@Alice Chen"


async def test_body_over_the_limit_is_a_permanent_460101(fake: FakeDingTalk, sender: DingTalkSender) -> None:
    fake.body_limit = 200
    result = await send(sender, route_of(fake.dm("manager807", "hi")), "x" * 500)
    assert (result.ok, result.permanent, result.code, result.via) == (False, True, "460101", "webhook")
    assert calls(fake) == [(WEBHOOK, 200)]


async def test_slow_response_times_out_and_is_retried(fake: FakeDingTalk, sleeps: Sleeps) -> None:
    fake.faults.delay(BATCH, 3.0, times=1)
    route = route_of(fake.dm("manager807", "hi"), session_webhook="")
    async with make_sender(fake, sleeps, send_timeout_s=0.3) as sender:
        result = await send(sender, route)
    assert result.ok
    assert len([p for p, _ in calls(fake) if p == BATCH]) >= 1
    assert [s for s in sleeps.calls if s >= 0.25]  # one backoff after the timeout


async def test_flow_controlled_and_quota_exhausted(fake: FakeDingTalk, sleeps: Sleeps) -> None:
    route = route_of(fake.dm("manager807", "hi"), session_webhook="")
    fake.faults.flow_control = {"manager807"}
    async with make_sender(fake, sleeps, send_retries=1) as sender:
        result = await send(sender, route)
        assert (result.ok, result.permanent, result.code) == (False, False, "flowControlledStaffIdList")
        fake.faults.flow_control = set()
        fake.faults.api_count_limit = 0
        result = await send(sender, route)
        assert (result.ok, result.permanent) == (False, True)
        assert result.code == "Forbidden.AccessDenied.ApiCountLimitForOrg"
        seen = len(fake.requests)
        assert not (await send(sender, route)).ok
        assert len(fake.requests) == seen  # remembered: OpenAPI is not hammered


async def test_webhook_on_another_port_is_refused(fake: FakeDingTalk, sender: DingTalkSender) -> None:
    data = fake.dm("manager807", "hi")
    other = data["sessionWebhook"].replace(f":{fake.port}/", f":{fake.port + 1}/")
    result = await send(sender, route_of(data, session_webhook=other))
    assert result.via == "batchSend"
    assert calls(fake) == [(TOKEN, 200), (BATCH, 200)]
    body = fake.requests[1].body
    assert body["userIds"] == ["manager807"] and isinstance(body["msgParam"], str)
