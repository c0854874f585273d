"""Fault injection for the REST side: scripted failures, delays, QPS and monthly quotas, flow control.

Named kinds (``fail(..., kinds=[...])`` picks one at random per failure), each answered in the dialect of the
path (new API ``{"code","message","requestid"}`` or legacy ``{"errcode","errmsg"}``):
``500 502 503 504 429 qps qps_api count token too_fast session_gone reset``. ``reset`` aborts the TCP
connection without an answer. A rule's path pattern is a shell glob on the URL path (``/v1.0/robot/*``).

:meth:`FaultPlan.lose_answer` is the other half of an ambiguous failure: the request is *done* (a card
created, a message sent), then its answer is held and the connection aborted, so the client cannot tell
whether DingTalk did it (a timeout or a reset after the server committed).
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from edgecrab.testing.fakedingtalk import wire
from edgecrab.testing.fakedingtalk.state import FakeState

FAULT_KINDS = (
    "500",
    "502",
    "503",
    "504",
    "429",
    "qps",
    "qps_api",
    "count",
    "token",
    "too_fast",
    "session_gone",
    "reset",
)
_STATUS_KIND = {403: "qps", 429: "429", 504: "504", 400: "token", 502: "502", 503: "503"}
_UNCOUNTED = ("/v1.0/oauth2/", "/v1.0/gateway/", "/gettoken")  # token endpoints never count (reference 10)


class ResetConnection(Exception):
    """Raised by a ``reset`` fault: the middleware aborts the socket."""


def kind_response(kind: str, path: str) -> web.Response:
    """The canned answer of a named fault kind on ``path``."""
    if kind in ("500", "502", "503"):
        return wire.generic_error(
            path,
            int(kind),
            code="ServiceUnavailable" if kind == "503" else "InternalError",
            message="系统繁忙，请稍后重试",
            errcode=-1,
        )
    if kind == "504":
        return wire.generic_error(path, 504, code="GatewayTimeout", message="服务端超时", errcode=88)
    if kind == "429":
        return wire.generic_error(path, 429, code="Throttling", message="请求过于频繁", errcode=90018)
    if kind in ("qps", "qps_api", "count"):
        code, message = {"qps": wire.QPS_APP, "qps_api": wire.QPS_API, "count": wire.COUNT_LIMIT}[kind]
        errcode = {"qps": 90018, "qps_api": 90002, "count": 90020}[kind]
        if wire.is_new_api(path):
            return wire.api_error(403, code, message)
        return wire.legacy_error(errcode, message)
    if kind == "token":
        if wire.is_new_api(path):
            return wire.api_error(400, *wire.INVALID_TOKEN)
        return wire.legacy_error(*wire.LEGACY_BAD_TOKEN)
    if kind == "too_fast":
        return wire.legacy_error(*wire.WEBHOOK_TOO_FAST)
    if kind == "session_gone":
        return wire.legacy_error(*wire.SESSION_GONE)
    if kind == "reset":
        raise ResetConnection
    raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS}")


def _matches(rule: FailRule | DelayRule | LoseRule, method: str, path: str) -> bool:
    """A rule with uses left (``times``) whose pattern and method fit the request."""
    if rule.times is not None and rule.hits >= rule.times:
        return False
    return fnmatch.fnmatchcase(path, rule.pattern) and (rule.method is None or rule.method == method)


@dataclass
class FailRule:
    """Fail matching requests: the next ``times`` ones, or each with probability ``rate``.

    With ``rate`` set, ``times`` caps the number of failures (``None``: no cap).
    """

    pattern: str
    status: int = 500
    body: Any = None
    times: int | None = None
    rate: float | None = None
    kinds: tuple[str, ...] = ()
    method: str | None = None
    hits: int = 0

    def __post_init__(self) -> None:
        if self.times is None and self.rate is None:
            self.times = 1
        for kind in self.kinds:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS}")

    def matches(self, method: str, path: str) -> bool:
        return _matches(self, method, path)

    def answer(self, path: str, pick: str | None) -> web.Response:
        if pick is not None:
            return kind_response(pick, path)
        if self.body is None:
            return (
                kind_response(_STATUS_KIND.get(self.status, "500"), path)
                if self.status in _STATUS_KIND
                else wire.generic_error(
                    path, self.status, code="InternalError", message="系统繁忙", errcode=-1
                )
            )
        if isinstance(self.body, dict | list):
            return wire.json_response(self.body, self.status, new_api=wire.is_new_api(path))
        return web.Response(text=str(self.body), status=self.status)


@dataclass
class DelayRule:
    pattern: str
    seconds: float
    times: int | None = None
    rate: float | None = None
    method: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return _matches(self, method, path)


@dataclass
class LoseRule:
    """Do matching requests, then lose their answers: held ``hold_s`` seconds, then the connection aborted."""

    pattern: str
    times: int | None = 1
    hold_s: float = 0.0
    method: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return _matches(self, method, path)


@dataclass
class FaultPlan:
    """What goes wrong, and when. Attributes may be changed at any time; ``clear()`` resets everything."""

    state: FakeState = field(repr=False)
    rules: list[FailRule] = field(default_factory=list)
    delays: list[DelayRule] = field(default_factory=list)
    losses: list[LoseRule] = field(default_factory=list)
    reject_credentials: bool = False  # open-connection answers 401 authFailed even to the right secret
    qps_limit: int | None = None  # per app, per API path, per second (real standard tier: 20)
    api_count_limit: int | None = None  # per organisation; token endpoints excluded
    flow_control: set[str] = field(default_factory=set)  # staff ids batchSend reports as flow-controlled
    webhook_dies_after_s: float | None = (
        None  # "expires early": webhooks die this long after they were issued
    )
    webhook_per_minute: int | None = None  # per webhook session; over it -> 130101
    api_calls: Counter[str] = field(default_factory=Counter)
    _windows: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    # scripting --------------------------------------------------------------------------------------------
    def fail(
        self,
        path_pattern: str,
        status: int = 500,
        body: Any = None,
        *,
        times: int | None = None,
        rate: float | None = None,
        kinds: list[str] | tuple[str, ...] | None = None,
        method: str | None = None,
    ) -> FailRule:
        """Fail requests whose path matches the glob. ``times``/``rate`` both unset means once."""
        rule = FailRule(path_pattern, status, body, times, rate, tuple(kinds or ()), method)
        self.rules.append(rule)
        return rule

    def delay(
        self,
        path_pattern: str,
        seconds: float,
        *,
        times: int | None = None,
        rate: float | None = None,
        method: str | None = None,
    ) -> DelayRule:
        """Answer matching requests ``seconds`` late (longer than the client's timeout = a hung server)."""
        rule = DelayRule(path_pattern, seconds, times, rate, method)
        self.delays.append(rule)
        return rule

    def lose_answer(
        self, path_pattern: str, *, times: int | None = 1, hold_s: float = 0.0, method: str | None = None
    ) -> LoseRule:
        """Do the next ``times`` matching requests (``None``: all), then lose each answer: held ``hold_s``
        seconds (longer than the client's timeout: it gives up first), then the connection aborted."""
        rule = LoseRule(path_pattern, times, hold_s, method)
        self.losses.append(rule)
        return rule

    def loses(self, method: str, path: str) -> LoseRule | None:
        """The rule that loses this request's answer (counted as used), if any."""
        for rule in self.losses:
            if rule.matches(method, path):
                rule.hits += 1
                return rule
        return None

    def clear(self) -> None:
        self.rules.clear()
        self.delays.clear()
        self.losses.clear()
        self.reject_credentials = False
        self.qps_limit = self.api_count_limit = self.webhook_dies_after_s = self.webhook_per_minute = None
        self.flow_control.clear()
        self.api_calls.clear()
        self._windows.clear()

    def expire_tokens_now(self, app: str | None = None) -> int:
        """Expire every live access token (of one app); returns how many."""
        now, count = self.state.now(), 0
        for info in self.state.tokens.values():
            if (app is None or info.app == app) and info.expires_t > now:
                info.expires_t, count = now, count + 1
        return count

    def expire_webhooks_now(self, app: str | None = None, conversation_id: str | None = None) -> int:
        """Invalidate issued sessionWebhooks (of one app / conversation); returns how many."""
        count = 0
        for session in self.state.sessions.values():
            if (app is None or session.app == app) and conversation_id in (None, session.conversation_id):
                if not session.invalidated:
                    session.invalidated, count = True, count + 1
        return count

    def describe(self) -> dict[str, Any]:
        return {
            "rules": [asdict(r) for r in self.rules],
            "delays": [asdict(d) for d in self.delays],
            "losses": [asdict(r) for r in self.losses],
            "reject_credentials": self.reject_credentials,
            "qps_limit": self.qps_limit,
            "api_count_limit": self.api_count_limit,
            "flow_control": sorted(self.flow_control),
            "webhook_dies_after_s": self.webhook_dies_after_s,
            "webhook_per_minute": self.webhook_per_minute,
            "api_calls": dict(self.api_calls),
        }

    # evaluation -------------------------------------------------------------------------------------------
    def _throttled(self, key: tuple[str, str], limit: int, window_s: float) -> bool:
        now = time.monotonic()
        window = self._windows.setdefault(key, deque())
        while window and now - window[0] >= window_s:
            window.popleft()
        window.append(now)
        return len(window) > limit

    async def before(
        self, request: web.Request, app: str | None, corp: str | None
    ) -> tuple[web.Response | None, str | None]:
        """Apply delays and failures; returns (answer to send instead of the real one, fault name)."""
        method, path = request.method, request.path
        for rule in self.delays:
            if rule.matches(method, path) and (rule.rate is None or self.state.rng.random() < rule.rate):
                rule.hits += 1
                await asyncio.sleep(rule.seconds)
        for fail in self.rules:
            if fail.matches(method, path) and (fail.rate is None or self.state.rng.random() < fail.rate):
                fail.hits += 1
                pick = self.state.rng.choice(fail.kinds) if fail.kinds else None
                return fail.answer(path, pick), pick or str(fail.status)
        counted = wire.is_new_api(path) and not path.startswith(_UNCOUNTED)
        if (
            self.qps_limit is not None
            and counted
            and self._throttled((app or "?", path), self.qps_limit, 1.0)
        ):
            return kind_response("qps", path), "qps_limit"
        if counted and corp is not None:
            self.api_calls[corp] += 1
            if self.api_count_limit is not None and self.api_calls[corp] > self.api_count_limit:
                return kind_response("count", path), "api_count_limit"
        session = request.query.get("session")
        if (
            path == "/robot/sendBySession"
            and session
            and self.webhook_per_minute is not None
            and self._throttled(("webhook", session), self.webhook_per_minute, 60.0)
        ):
            return kind_response("too_fast", path), "webhook_per_minute"
        return None, None

    def configure(self, spec: dict[str, Any]) -> None:
        """Apply a JSON fault spec (the control API's ``POST /_fake/faults``)."""
        if spec.get("clear"):
            self.clear()
        for item in spec.get("fail", []):
            self.fail(
                item["path"],
                int(item.get("status", 500)),
                item.get("body"),
                times=item.get("times"),
                rate=item.get("rate"),
                kinds=item.get("kinds"),
                method=item.get("method"),
            )
        for item in spec.get("delay", []):
            self.delay(
                item["path"],
                float(item["seconds"]),
                times=item.get("times"),
                rate=item.get("rate"),
                method=item.get("method"),
            )
        for item in spec.get("lose", []):
            self.lose_answer(
                item["path"],
                times=item.get("times", 1),
                hold_s=float(item.get("hold_s", 0.0)),
                method=item.get("method"),
            )
        for key in (
            "reject_credentials",
            "qps_limit",
            "api_count_limit",
            "webhook_dies_after_s",
            "webhook_per_minute",
        ):
            if key in spec:
                setattr(self, key, spec[key])
        if "flow_control" in spec:
            self.flow_control = set(spec["flow_control"])
        if spec.get("expire_tokens_now"):
            self.expire_tokens_now(spec.get("app"))
        if spec.get("expire_webhooks_now"):
            self.expire_webhooks_now(spec.get("app"), spec.get("conversation_id"))
