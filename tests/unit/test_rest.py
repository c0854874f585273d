"""DingTalk REST side: tokens, route choice, SSRF guard, fallbacks, retries, rate limits.

``httpx.MockTransport`` plays DingTalk; every test checks the exact requests it saw. Time is fake: the
sender gets an injected wall clock, monotonic clock and sleep, so backoff and pacing are asserted
exactly and nothing waits for real.
"""

from __future__ import annotations

import json
import logging
import sys
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from edgecrab import errors
from edgecrab.config import DingTalkConfig
from edgecrab.dingtalk.ratelimit import RateLimiter
from edgecrab.dingtalk.rest import DingTalkError, DingTalkSender, SendResult, TokenCache, redact_url
from edgecrab.dingtalk.webhook import WebhookGuard
from edgecrab.events import ReplyRoute

API = "https://api.dingtalk.com"
TOKEN_URL = f"{API}/v1.0/oauth2/accessToken"
BATCH_URL = f"{API}/v1.0/robot/oToMessages/batchSend"
GROUP_URL = f"{API}/v1.0/robot/groupMessages/send"
SESSION_VALUE = "5f3c0ffee0ddba11"
WEBHOOK = f"https://oapi.dingtalk.com/robot/sendBySession?session={SESSION_VALUE}"
NOW = 1_700_000_000.0
SECRET = "app-secret-do-not-log"

Reply = httpx.Response | Callable[[httpx.Request], httpx.Response] | Exception


class FakeTime:
    """Wall and monotonic clocks that only move when someone sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.wall = NOW
        self.mono = 1000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


class FakeDingTalk:
    """A scripted DingTalk: queued replies per URL (query ignored), sensible defaults otherwise."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.scripts: dict[str, list[Reply]] = {}
        self.tokens_issued = 0
        self.expire_in = 7200

    def script(self, url: str, *replies: Reply) -> None:
        self.scripts.setdefault(url, []).extend(replies)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = str(request.url.copy_with(query=None))
        queue = self.scripts.get(key)
        if queue:
            reply = queue.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply(request) if callable(reply) else reply
        if key == TOKEN_URL:
            self.tokens_issued += 1
            return httpx.Response(
                200, json={"accessToken": f"tok-{self.tokens_issued}", "expireIn": self.expire_in}
            )
        if key.endswith("/robot/sendBySession"):
            return httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})
        if key.endswith("/oToMessages/batchSend"):
            return httpx.Response(
                200,
                json={"processQueryKey": "pqk-dm", "invalidStaffIdList": [], "flowControlledStaffIdList": []},
                headers={"x-acs-request-id": "req-dm"},
            )
        if key.endswith("/groupMessages/send"):
            return httpx.Response(200, json={"processQueryKey": "pqk-group"})
        return httpx.Response(404, json={"code": "notFound", "message": key})

    def urls(self) -> list[str]:
        """Every request as ``METHOD url``, the webhook session value redacted."""
        return [f"{r.method} {redact_url(str(r.url))}" for r in self.requests]

    def bodies(self, url: str) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if str(r.url.copy_with(query=None)) == url]


def config(**overrides: Any) -> DingTalkConfig:
    values: dict[str, Any] = {"app_key": "appkey1", "app_secret": SECRET, "robot_code": "robot1"}
    values.update(overrides)
    return DingTalkConfig(**values)


def dm_route(**overrides: Any) -> ReplyRoute:
    values: dict[str, Any] = {
        "robot_code": "robot1",
        "conversation_id": "cidDM==",
        "is_group": False,
        "sender_staff_id": "manager807",
        "sender_name": "Li Lei",
        "session_webhook": WEBHOOK,
        "session_webhook_expires_at": NOW + 5400,
    }
    values.update(overrides)
    return ReplyRoute(**values)


def group_route(**overrides: Any) -> ReplyRoute:
    return dm_route(**{"conversation_id": "cidGroup==", "is_group": True, **overrides})


def expired(route: ReplyRoute) -> ReplyRoute:
    return ReplyRoute.from_dict({**route.to_dict(), "session_webhook_expires_at": NOW - 1})


@dataclass
class Env:
    fake: FakeDingTalk = field(default_factory=FakeDingTalk)
    clock: FakeTime = field(default_factory=FakeTime)
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.fake.handler))
        self.clients.append(client)
        return client

    def sender(self, rand: float = 0.5, **overrides: Any) -> DingTalkSender:
        return DingTalkSender(
            config(**overrides),
            client=self.client(),
            clock=self.clock.time,
            monotonic=self.clock.monotonic,
            sleep=self.clock.sleep,
            rand=lambda: rand,
        )


@pytest.fixture
async def env(anyio_backend: str) -> AsyncIterator[Env]:
    environment = Env()
    yield environment
    for client in environment.clients:
        await client.aclose()


async def send(sender: DingTalkSender, route: ReplyRoute, **kw: Any) -> SendResult:
    kw.setdefault("text", "**hello**")
    kw.setdefault("title", "hello")
    kw.setdefault("mention", False)
    return await sender.send(route, **kw)


def api_error(status: int, code: str, message: str = "denied", requestid: str = "req-x", **extra: Any):
    return httpx.Response(status, json={"code": code, "message": message, "requestid": requestid, **extra})


# -- tokens ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_token_is_cached_until_expire_in_minus_five_minutes(env: Env) -> None:
    cache = TokenCache(env.client(), API, "appkey1", SECRET, clock=env.clock.monotonic)
    assert await cache.get() == "tok-1"
    env.clock.advance(7200 - 300 - 1)
    assert await cache.get() == "tok-1"
    env.clock.advance(1)
    assert await cache.get() == "tok-2"
    assert env.fake.urls() == [f"POST {TOKEN_URL}"] * 2
    assert env.fake.bodies(TOKEN_URL)[0] == {"appKey": "appkey1", "appSecret": SECRET}


@pytest.mark.anyio
async def test_short_lived_token_keeps_half_its_life(env: Env) -> None:
    env.fake.expire_in = 60
    cache = TokenCache(env.client(), API, "appkey1", SECRET, clock=env.clock.monotonic)
    assert await cache.get() == "tok-1"
    env.clock.advance(29)
    assert await cache.get() == "tok-1"
    env.clock.advance(1)
    assert await cache.get() == "tok-2"


@pytest.mark.anyio
async def test_concurrent_callers_share_one_token_request(env: Env) -> None:
    gate = anyio.Event()

    async def slow_token(request: httpx.Request) -> httpx.Response:
        env.fake.requests.append(request)
        await gate.wait()
        return httpx.Response(200, json={"accessToken": "tok-shared", "expireIn": 7200})

    client = httpx.AsyncClient(transport=httpx.MockTransport(slow_token))
    env.clients.append(client)
    cache = TokenCache(client, API, "appkey1", SECRET, clock=env.clock.monotonic)
    got: list[str] = []

    async def get() -> None:
        got.append(await cache.get())

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(get)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert got == ["tok-shared"] * 5
    assert len(env.fake.requests) == 1


@pytest.mark.anyio
async def test_token_failure_raises_with_dingtalk_details(env: Env) -> None:
    env.fake.script(TOKEN_URL, api_error(400, "invalidClientIdOrSecret", "bad secret", "req-tok"))
    cache = TokenCache(env.client(), API, "appkey1", SECRET, clock=env.clock.monotonic)
    with pytest.raises(DingTalkError) as caught:
        await cache.get()
    err = caught.value
    assert (err.status, err.code, err.message, err.request_id) == (
        400,
        "invalidClientIdOrSecret",
        "bad secret",
        "req-tok",
    )
    assert err.permanent and not err.retryable
    assert isinstance(err, errors.DingTalkError)
    assert await cache.get() == "tok-1"  # nothing bad was cached


@pytest.mark.anyio
async def test_invalidate_drops_only_the_current_token(env: Env) -> None:
    cache = TokenCache(env.client(), API, "appkey1", SECRET, clock=env.clock.monotonic)
    assert await cache.get() == "tok-1"
    cache.invalidate("some-older-token")
    assert await cache.get() == "tok-1"
    cache.invalidate("tok-1")
    assert await cache.get() == "tok-2"
    assert len(env.fake.requests) == 2


@pytest.mark.anyio
async def test_tokens_are_registered_with_the_log_redactor(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets: list[str] = []
    fake_logs = types.ModuleType("edgecrab.logs")
    fake_logs.register_secret = secrets.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edgecrab.logs", fake_logs)
    cache = TokenCache(env.client(), API, "appkey1", SECRET, clock=env.clock.monotonic)
    await cache.get()
    assert secrets == [SECRET, "tok-1"]


@pytest.mark.anyio
async def test_each_robot_has_its_own_token_and_robot_code(env: Env) -> None:
    tokens = iter(["tok-A", "tok-B"])

    def issue(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"accessToken": next(tokens), "expireIn": 7200})

    env.fake.script(TOKEN_URL, issue, issue)
    robot_a = env.sender(app_key="keyA", robot_code="")
    robot_b = env.sender(app_key="keyB", robot_code="")
    route = expired(dm_route(robot_code=""))
    assert (await send(robot_a, route)).ok
    assert (await send(robot_b, route)).ok
    assert (await send(robot_a, route)).ok
    token_bodies = env.fake.bodies(TOKEN_URL)
    assert [b["appKey"] for b in token_bodies] == ["keyA", "keyB"]
    sends = [r for r in env.fake.requests if r.url.path.endswith("batchSend")]
    assert [r.headers["x-acs-dingtalk-access-token"] for r in sends] == ["tok-A", "tok-B", "tok-A"]
    assert [json.loads(r.content)["robotCode"] for r in sends] == ["keyA", "keyB", "keyA"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "rejection",
    [
        api_error(400, "InvalidAuthentication", "不合法的access_token"),
        httpx.Response(401, text="unauthorized"),
    ],
    ids=["InvalidAuthentication", "http-401"],
)
async def test_rejected_token_is_refreshed_once_and_the_call_retried(
    env: Env, rejection: httpx.Response
) -> None:
    env.fake.script(BATCH_URL, rejection)
    sender = env.sender(openapi_qps=0)  # no pacing: any sleep would be a backoff
    result = await send(sender, expired(dm_route()))
    assert result.ok and result.via == "batchSend"
    assert env.fake.urls() == [
        f"POST {TOKEN_URL}",
        f"POST {BATCH_URL}",
        f"POST {TOKEN_URL}",
        f"POST {BATCH_URL}",
    ]
    sends = [r for r in env.fake.requests if r.url.path.endswith("batchSend")]
    assert [r.headers["x-acs-dingtalk-access-token"] for r in sends] == ["tok-1", "tok-2"]
    assert env.clock.sleeps == []


@pytest.mark.anyio
async def test_token_rejected_twice_is_a_permanent_failure(env: Env) -> None:
    env.fake.script(
        BATCH_URL, api_error(400, "InvalidAuthentication"), api_error(400, "InvalidAuthentication")
    )
    result = await send(env.sender(), expired(dm_route()))
    assert (result.ok, result.permanent, result.code) == (False, True, "InvalidAuthentication")
    assert len(env.fake.requests) == 4


# -- route choice ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_valid_webhook_is_used_without_a_token(env: Env) -> None:
    result = await send(env.sender(), dm_route())
    assert result == SendResult(ok=True, via="webhook", permanent=False, code="", message="", request_id="")
    assert env.fake.urls() == ["POST https://oapi.dingtalk.com/robot/sendBySession?session=***"]
    request = env.fake.requests[0]
    assert request.url.params["session"] == SESSION_VALUE
    assert "x-acs-dingtalk-access-token" not in request.headers
    assert json.loads(request.content) == {
        "msgtype": "markdown",
        "markdown": {"title": "hello", "text": "**hello**"},
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("margin", "seconds_left", "via"),
    [
        (300.0, 301.0, "webhook"),
        (300.0, 300.0, "batchSend"),
        (300.0, 299.0, "batchSend"),
        (10.0, 60.0, "webhook"),
        (10.0, 10.0, "batchSend"),
    ],
)
async def test_webhook_expiry_margin(env: Env, margin: float, seconds_left: float, via: str) -> None:
    sender = env.sender(webhook_expiry_margin_s=margin)
    result = await send(sender, dm_route(session_webhook_expires_at=NOW + seconds_left))
    assert result.ok and result.via == via
    webhook_hits = [r for r in env.fake.requests if r.url.host == "oapi.dingtalk.com"]
    assert len(webhook_hits) == (1 if via == "webhook" else 0)


@pytest.mark.anyio
async def test_expiry_given_in_milliseconds_is_understood(env: Env) -> None:
    result = await send(env.sender(), dm_route(session_webhook_expires_at=(NOW + 5400) * 1000))
    assert result.via == "webhook"
    result = await send(env.sender(), dm_route(session_webhook_expires_at=(NOW + 60) * 1000))
    assert result.via == "batchSend"


@pytest.mark.anyio
async def test_expired_dm_goes_to_batch_send_with_the_staff_id(env: Env) -> None:
    result = await send(env.sender(), expired(dm_route()))
    assert result == SendResult(True, "batchSend", False, "", "", "req-dm", "pqk-dm")
    assert env.fake.urls() == [f"POST {TOKEN_URL}", f"POST {BATCH_URL}"]
    request = env.fake.requests[1]
    assert request.headers["x-acs-dingtalk-access-token"] == "tok-1"
    body = json.loads(request.content)
    assert body == {
        "robotCode": "robot1",
        "userIds": ["manager807"],
        "msgKey": "sampleMarkdown",
        "msgParam": '{"title":"hello","text":"**hello**"}',
    }
    assert isinstance(body["msgParam"], str)


@pytest.mark.anyio
async def test_expired_group_goes_to_group_send_with_the_conversation_id(env: Env) -> None:
    result = await send(env.sender(), expired(group_route()), fmt="text", text="hi there")
    assert result == SendResult(True, "groupSend", False, "", "", "", "pqk-group")
    assert env.fake.urls() == [f"POST {TOKEN_URL}", f"POST {GROUP_URL}"]
    body = env.fake.bodies(GROUP_URL)[0]
    assert body == {
        "robotCode": "robot1",
        "openConversationId": "cidGroup==",
        "msgKey": "sampleText",
        "msgParam": '{"content":"hi there"}',
    }


@pytest.mark.anyio
async def test_missing_webhook_goes_to_openapi(env: Env) -> None:
    result = await send(env.sender(), dm_route(session_webhook="", session_webhook_expires_at=0.0))
    assert result.via == "batchSend"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("route_code", "config_code", "expected"),
    [("routeRobot", "robot1", "routeRobot"), ("", "robot1", "robot1"), ("", "", "appkey1")],
)
async def test_robot_code_falls_back_to_config_then_app_key(
    env: Env, route_code: str, config_code: str, expected: str
) -> None:
    await send(env.sender(robot_code=config_code), expired(dm_route(robot_code=route_code)))
    assert env.fake.bodies(BATCH_URL)[0]["robotCode"] == expected


@pytest.mark.anyio
async def test_session_gone_falls_back_and_later_chunks_skip_the_dead_webhook(env: Env) -> None:
    env.fake.script(
        "https://oapi.dingtalk.com/robot/sendBySession",
        httpx.Response(200, json={"errcode": 300001, "errmsg": "session 不存在"}),
    )
    sender = env.sender()
    first = await send(sender, dm_route(), text="chunk 1")
    second = await send(sender, dm_route(), text="chunk 2")
    assert (first.ok, first.via, second.ok, second.via) == (True, "batchSend", True, "batchSend")
    hook = "POST https://oapi.dingtalk.com/robot/sendBySession?session=***"
    assert env.fake.urls() == [hook, f"POST {TOKEN_URL}", f"POST {BATCH_URL}", f"POST {BATCH_URL}"]
    texts = [json.loads(b["msgParam"])["text"] for b in env.fake.bodies(BATCH_URL)]
    assert texts == ["chunk 1", "chunk 2"]
    # A fresh webhook (a newer message) is used again.
    fresh = dm_route(session_webhook=WEBHOOK.replace(SESSION_VALUE, "0123"))
    assert (await send(sender, fresh)).via == "webhook"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(200, json={"errcode": 400013, "errmsg": "bad message"}),
        httpx.Response(200, json={"unexpected": True}),
        httpx.Response(200, text="<html>ok?</html>"),
        httpx.Response(404, json={"errcode": 404, "errmsg": "not found"}),
    ],
    ids=["errcode-on-200", "no-errcode", "not-json", "http-404"],
)
async def test_webhook_failure_on_http_200_is_not_success(env: Env, reply: httpx.Response) -> None:
    env.fake.script("https://oapi.dingtalk.com/robot/sendBySession", reply)
    result = await send(env.sender(), dm_route())
    assert result.ok and result.via == "batchSend"
    assert [r.url.host for r in env.fake.requests] == [
        "oapi.dingtalk.com",
        "api.dingtalk.com",
        "api.dingtalk.com",
    ]
    assert env.clock.sleeps == []


@pytest.mark.anyio
async def test_message_too_long_is_permanent_without_fallback(env: Env) -> None:
    env.fake.script(
        "https://oapi.dingtalk.com/robot/sendBySession",
        httpx.Response(200, json={"errcode": 460101, "errmsg": "message too long, exceed 20000 bytes"}),
    )
    result = await send(env.sender(), dm_route())
    assert (result.ok, result.via, result.permanent, result.code) == (False, "webhook", True, "460101")
    assert len(env.fake.requests) == 1


@pytest.mark.anyio
async def test_webhook_throttle_130101_waits_at_least_a_second_then_retries(env: Env) -> None:
    env.fake.script(
        "https://oapi.dingtalk.com/robot/sendBySession",
        httpx.Response(200, json={"errcode": 130101, "errmsg": "send too fast"}),
    )
    result = await send(env.sender(), dm_route())
    assert result.ok and result.via == "webhook"
    assert len(env.fake.requests) == 2
    assert env.clock.sleeps == [1.0]


@pytest.mark.anyio
async def test_webhook_retries_exhausted_falls_back_to_openapi(env: Env) -> None:
    hook = "https://oapi.dingtalk.com/robot/sendBySession"
    env.fake.script(hook, *[httpx.Response(502) for _ in range(3)])
    result = await send(env.sender(send_retries=2), dm_route())
    assert result.ok and result.via == "batchSend"
    assert [r.url.host for r in env.fake.requests].count("oapi.dingtalk.com") == 3


# -- SSRF guard ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_webhook_to_foreign_host_is_refused_and_never_contacted(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgecrab.dingtalk")
    evil = "https://evil.example/robot/sendBySession?session=abc"
    result = await send(env.sender(), dm_route(session_webhook=evil))
    assert result.ok and result.via == "batchSend"
    assert all(r.url.host != "evil.example" for r in env.fake.requests)
    assert env.fake.urls() == [f"POST {TOKEN_URL}", f"POST {BATCH_URL}"]
    assert "[dingtalk] refusing sessionWebhook to host evil.example (not in allow-list)" in caplog.messages


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://oapi.dingtalk.com/robot/sendBySession?session=1", True),
        ("https://api.dingtalk.com/robot/sendBySession?session=1", True),
        ("https://OAPI.dingtalk.com./robot/sendBySession?session=1", True),
        ("https://oapi.dingtalk.com:443/robot/sendBySession", True),
        ("http://127.0.0.1:8080/robot/sendBySession", True),
        ("http://localhost:9000/robot/sendBySession", True),
        ("https://hooks.example.org/relay/robot/sendBySession", True),
        ("http://localhost:9000/hook", False),  # the path is pinned
        ("https://hooks.example.org/x", False),
        ("https://oapi.dingtalk.com/robot/send?access_token=1", False),
        ("http://oapi.dingtalk.com/robot/sendBySession", False),
        ("https://oapi.dingtalk.com:8443/robot/sendBySession", False),
        ("https://oapi.dingtalk.com.evil.example/robot/sendBySession", False),
        ("https://oapi.dingtalk.com@evil.example/robot/sendBySession", False),
        ("https://evil.example/?next=https://oapi.dingtalk.com/", False),
        ("http://127.0.0.1:8081/robot/sendBySession", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("ftp://oapi.dingtalk.com/x", False),
        ("file:///etc/passwd", False),
        ("not a url", False),
    ],
)
def test_webhook_guard(url: str, allowed: bool) -> None:
    guard = WebhookGuard("http://127.0.0.1:8080", ["hooks.example.org", "localhost:9000"])
    assert (guard.refusal(url) == "") is allowed


# -- OpenAPI retries and errors --------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("failure", "first_sleep"),
    [
        (httpx.Response(500), 0.375),
        (httpx.Response(503, text="<html>busy</html>"), 0.375),
        (httpx.Response(504), 0.375),
        (httpx.Response(429), 0.375),
        (httpx.Response(429, headers={"Retry-After": "3"}), 3.0),
        (api_error(403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"), 1.0),
        (api_error(403, "Forbidden.AccessDenied.QpsLimitForApi"), 1.0),
        (httpx.ConnectError("connection refused"), 0.375),
        (httpx.ReadTimeout("timed out"), 0.375),
    ],
    ids=["500", "503-html", "504", "429", "429-retry-after", "qps-app", "qps-api", "connect", "timeout"],
)
async def test_transient_failures_are_retried_then_succeed(
    env: Env, failure: Reply, first_sleep: float
) -> None:
    env.fake.script(BATCH_URL, failure, failure)
    result = await send(env.sender(), expired(dm_route()))
    assert result.ok and result.via == "batchSend"
    assert env.fake.urls() == [f"POST {TOKEN_URL}"] + [f"POST {BATCH_URL}"] * 3
    assert env.clock.sleeps[0] == first_sleep
    assert len(env.clock.sleeps) == 2


@pytest.mark.anyio
async def test_backoff_is_exponential_capped_and_bounded_by_send_retries(env: Env) -> None:
    env.fake.script(GROUP_URL, *[httpx.Response(500) for _ in range(10)])
    result = await send(env.sender(send_retries=6), expired(group_route()))
    assert (result.ok, result.permanent, result.code, result.via) == (False, False, "500", "groupSend")
    assert env.fake.urls().count(f"POST {GROUP_URL}") == 7
    # rand() == 0.5: three quarters of min(8, 0.5 * 2**n).
    assert env.clock.sleeps == [0.375, 0.75, 1.5, 3.0, 6.0, 6.0]


@pytest.mark.anyio
async def test_backoff_jitter_stays_between_half_and_full_step(env: Env) -> None:
    low = env.sender(rand=0.0)
    high = env.sender(rand=1.0)
    assert [low.backoff(n) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert [high.backoff(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert low.backoff(0, floor=1.0) == 1.0


@pytest.mark.anyio
async def test_permission_error_is_not_retried_and_logs_the_scope(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgecrab.dingtalk")
    env.fake.script(
        BATCH_URL,
        api_error(
            403,
            "Forbidden.AccessDenied.AccessTokenPermissionDenied",
            "no permission",
            "req-perm",
            accessdenieddetail={"requiredScopes": ["qyapi_robot_sendmsg"]},
        ),
    )
    result = await send(env.sender(), expired(dm_route()))
    assert (result.ok, result.permanent, result.request_id) == (False, True, "req-perm")
    assert result.code == "Forbidden.AccessDenied.AccessTokenPermissionDenied"
    assert env.fake.urls().count(f"POST {BATCH_URL}") == 1
    assert env.clock.sleeps == []
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "requiredScopes=qyapi_robot_sendmsg" in line.getMessage()
    assert "requestid=req-perm" in line.getMessage()
    assert "cidDM==" in line.getMessage()


@pytest.mark.anyio
async def test_invalid_parameter_is_permanent_and_logged_with_dingtalk_details(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgecrab.dingtalk")
    env.fake.script(GROUP_URL, api_error(400, "invalidParameter", "openConversationId is invalid", "req-400"))
    result = await send(env.sender(), expired(group_route()))
    assert (result.ok, result.permanent, result.code, result.message) == (
        False,
        True,
        "invalidParameter",
        "openConversationId is invalid",
    )
    assert env.fake.urls().count(f"POST {GROUP_URL}") == 1
    assert (
        "[dingtalk] groupSend to conversation cidGroup== failed permanently: code=invalidParameter "
        "message=openConversationId is invalid requestid=req-400"
    ) in caplog.messages


@pytest.mark.anyio
async def test_monthly_quota_exhaustion_is_explained_and_remembered(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgecrab.dingtalk")
    env.fake.script(BATCH_URL, api_error(403, "Forbidden.AccessDenied.ApiCountLimitForOrg", "quota", "req-q"))
    sender = env.sender()
    first = await send(sender, expired(dm_route()))
    assert (first.ok, first.permanent, first.code) == (
        False,
        True,
        "Forbidden.AccessDenied.ApiCountLimitForOrg",
    )
    explanation = [m for m in caplog.messages if "monthly" in m]
    assert explanation and "sessionWebhook" in explanation[0] and "req-q" in explanation[0]
    assert "developer console" in explanation[0]
    seen = len(env.fake.requests)
    # Later sends do not hammer OpenAPI...
    again = await send(sender, expired(group_route()))
    assert (again.ok, again.permanent, again.code) == (
        False,
        True,
        "Forbidden.AccessDenied.ApiCountLimitForOrg",
    )
    assert len(env.fake.requests) == seen
    # ...but a live sessionWebhook still works...
    assert (await send(sender, dm_route())).via == "webhook"
    # ...and OpenAPI is tried again after the pause.
    env.clock.advance(3600)
    assert (await send(sender, expired(dm_route()))).ok


@pytest.mark.anyio
async def test_invalid_staff_id_is_a_permanent_failure(env: Env) -> None:
    env.fake.script(
        BATCH_URL,
        httpx.Response(200, json={"processQueryKey": "k", "invalidStaffIdList": ["manager807"]}),
    )
    result = await send(env.sender(), expired(dm_route()))
    assert (result.ok, result.permanent, result.code) == (False, True, "invalidStaffIdList")
    assert env.fake.urls().count(f"POST {BATCH_URL}") == 1


@pytest.mark.anyio
async def test_flow_controlled_recipient_is_retried(env: Env) -> None:
    throttled = httpx.Response(
        200, json={"processQueryKey": "k", "flowControlledStaffIdList": ["manager807"]}
    )
    env.fake.script(BATCH_URL, throttled)
    sender = env.sender(send_retries=1)
    assert (await send(sender, expired(dm_route()))).ok
    env.fake.script(BATCH_URL, throttled, throttled)
    result = await send(sender, expired(dm_route()))
    assert (result.ok, result.permanent, result.code) == (False, False, "flowControlledStaffIdList")
    assert env.fake.urls().count(f"POST {BATCH_URL}") == 4


@pytest.mark.anyio
async def test_dm_from_outsider_without_staff_id_is_undeliverable(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgecrab.dingtalk")
    result = await send(env.sender(), expired(dm_route(sender_staff_id="")))
    assert (result.ok, result.permanent, result.message) == (
        False,
        True,
        "undeliverable: no staff id for OpenAPI fallback",
    )
    assert env.fake.requests == []
    assert any("undeliverable" in m and "cidDM==" in m for m in caplog.messages)


@pytest.mark.anyio
async def test_outsider_with_flaky_webhook_keeps_the_retryable_failure(env: Env) -> None:
    env.fake.script("https://oapi.dingtalk.com/robot/sendBySession", httpx.Response(500), httpx.Response(500))
    result = await send(env.sender(send_retries=1), dm_route(sender_staff_id=""))
    assert (result.ok, result.via, result.permanent) == (False, "webhook", False)


@pytest.mark.anyio
async def test_each_request_carries_the_configured_timeout(env: Env) -> None:
    await send(env.sender(send_timeout_s=3.5), expired(dm_route()))
    token, *sends = env.fake.requests
    assert str(token.url) == TOKEN_URL
    assert token.extensions["timeout"] == {"connect": 3.5, "read": 3.5, "write": 3.5, "pool": 3.5}
    assert sends
    for request in sends:
        # A send's read has no timer of its own: the whole exchange is bounded by the send timeout
        # (test_rest_wire: a server that stalls in the body times out).
        assert request.extensions["timeout"] == {"connect": 3.5, "read": None, "write": 3.5, "pool": 3.5}


@pytest.mark.anyio
async def test_redirects_are_not_followed(env: Env) -> None:
    env.fake.script(
        "https://oapi.dingtalk.com/robot/sendBySession",
        httpx.Response(302, headers={"Location": "https://evil.example/steal"}),
    )
    result = await send(env.sender(), dm_route())
    assert result.via == "batchSend"
    assert all(r.url.host != "evil.example" for r in env.fake.requests)


# -- mentions and formats --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_group_webhook_mention_is_real_and_visible(env: Env) -> None:
    await send(env.sender(), group_route(), text="**done**", mention=True)
    assert json.loads(env.fake.requests[0].content) == {
        "msgtype": "markdown",
        "markdown": {"title": "hello", "text": "**done**\n\n@manager807"},
        "at": {"atUserIds": ["manager807"], "isAtAll": False},
    }


@pytest.mark.anyio
async def test_group_webhook_mention_in_text_format(env: Env) -> None:
    await send(env.sender(), group_route(), text="done", fmt="text", mention=True)
    assert json.loads(env.fake.requests[0].content) == {
        "msgtype": "text",
        "text": {"content": "done\n@manager807"},
        "at": {"atUserIds": ["manager807"], "isAtAll": False},
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    "route",
    [dm_route(), group_route(sender_staff_id="")],
    ids=["dm", "group-without-staff-id"],
)
async def test_no_at_block_without_a_mentionable_group_member(env: Env, route: ReplyRoute) -> None:
    await send(env.sender(), route, text="done", fmt="text", mention=True)
    assert json.loads(env.fake.requests[0].content) == {"msgtype": "text", "text": {"content": "done"}}


@pytest.mark.anyio
async def test_no_at_block_when_mention_not_wanted(env: Env) -> None:
    await send(env.sender(), group_route(), text="done", mention=False)
    body = json.loads(env.fake.requests[0].content)
    assert "at" not in body and body["markdown"]["text"] == "done"


@pytest.mark.anyio
async def test_group_send_names_the_user_in_plain_text(env: Env) -> None:
    await send(env.sender(), expired(group_route()), text="**done**", mention=True)
    body = env.fake.bodies(GROUP_URL)[0]
    assert json.loads(body["msgParam"]) == {"title": "hello", "text": "**done**\n\n@Li Lei"}
    assert set(body) == {"robotCode", "openConversationId", "msgKey", "msgParam"}


@pytest.mark.anyio
async def test_unknown_format_is_a_programming_error(env: Env) -> None:
    with pytest.raises(ValueError, match="html"):
        await send(env.sender(), dm_route(), fmt="html")


# -- secrets stay out of logs ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_logs_never_contain_tokens_secrets_or_the_session_value(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env.fake.script(
        "https://oapi.dingtalk.com/robot/sendBySession",
        httpx.ConnectError(f"cannot reach {WEBHOOK}"),
        httpx.Response(200, json={"errcode": 300001, "errmsg": "session 不存在"}),
    )
    env.fake.script(BATCH_URL, api_error(400, "InvalidAuthentication"), httpx.Response(500))
    result = await send(env.sender(), dm_route())
    assert result.ok
    text = caplog.text
    assert "[dingtalk]" in text
    for secret in (SESSION_VALUE, SECRET, "tok-1", "tok-2"):
        assert secret not in text


def test_redact_url_hides_every_query_value() -> None:
    assert redact_url(WEBHOOK) == "https://oapi.dingtalk.com/robot/sendBySession?session=***"
    assert (
        redact_url("http://127.0.0.1:8080/hook?session=a&x=b")
        == "http://127.0.0.1:8080/hook?session=***&x=***"
    )


# -- rate limiting ---------------------------------------------------------------------------------


def test_rate_limiter_spaces_calls_at_one_over_rate() -> None:
    clock = FakeTime()
    limiter = RateLimiter(2.0, clock=clock.monotonic)
    assert [limiter.reserve() for _ in range(4)] == [0.0, 0.5, 1.0, 1.5]
    clock.advance(10)
    assert limiter.reserve() == 0.0  # refilled, but never above the burst
    assert limiter.reserve() == 0.5


def test_rate_limiter_burst() -> None:
    clock = FakeTime()
    limiter = RateLimiter(4.0, burst=3, clock=clock.monotonic)
    assert [limiter.reserve() for _ in range(5)] == [0.0, 0.0, 0.0, 0.25, 0.5]
    clock.advance(0.5)  # pays for the two reservations made on credit
    assert limiter.reserve() == 0.25


def test_rate_limiter_zero_rate_is_unlimited() -> None:
    limiter = RateLimiter(0.0, clock=FakeTime().monotonic)
    assert [limiter.reserve() for _ in range(100)] == [0.0] * 100


def test_rate_limiter_rejects_burst_below_one() -> None:
    with pytest.raises(ValueError):
        RateLimiter(1.0, burst=0.5)


@pytest.mark.anyio
async def test_rate_limiter_acquire_sleeps_the_reserved_time(anyio_backend: str) -> None:
    clock = FakeTime()
    limiter = RateLimiter(10.0, clock=clock.monotonic, sleep=clock.sleep)
    for _ in range(3):
        await limiter.acquire()
    assert clock.sleeps == pytest.approx([0.1, 0.1])


@pytest.mark.anyio
async def test_openapi_sends_are_paced_per_path_and_webhooks_separately(env: Env) -> None:
    sender = env.sender(openapi_qps=2.0, webhook_qps=4.0)
    for _ in range(3):
        assert (await send(sender, expired(dm_route()))).ok
    assert env.clock.sleeps == [0.5, 0.5]
    # Another API path has its own budget: the first group send does not wait.
    assert (await send(sender, expired(group_route()))).ok
    assert env.clock.sleeps == [0.5, 0.5]
    for _ in range(3):
        assert (await send(sender, dm_route())).via == "webhook"
    assert env.clock.sleeps == [0.5, 0.5, 0.25, 0.25]


# -- snapshot of what DingTalk receives ------------------------------------------------------------


@pytest.mark.anyio
async def test_request_bodies_snapshot(env: Env, snapshot: Any) -> None:
    sender = env.sender()
    await send(sender, group_route(), text="## Result\n\n- one\n- two", title="Result", mention=True)
    await send(sender, expired(dm_route()), text="**私信** reply", title="私信")
    await send(sender, expired(group_route()), text="plain reply", fmt="text", mention=True)
    seen = [
        {
            "request": f"{r.method} {redact_url(str(r.url))}",
            "token": r.headers.get("x-acs-dingtalk-access-token", ""),
            "content_type": r.headers["content-type"],
            "body": json.loads(r.content),
        }
        for r in env.fake.requests
    ]
    assert seen == snapshot
    # Bodies are compact UTF-8 (CJK is 3 bytes, not a 6-byte \\uXXXX escape), so the byte budget holds.
    dm_body = env.fake.requests[2].content
    assert "私信".encode() in dm_body and b"\\u" not in dm_body
