"""Sending one reply chunk to DingTalk: the sessionWebhook first, the OpenAPI robot sends as fallback.

:class:`DingTalkSender` owns everything one robot needs to talk REST to DingTalk: its access-token cache
(:mod:`edgecrab.dingtalk.tokens`), its rate limiters (:mod:`edgecrab.dingtalk.ratelimit`), the memory of
dead webhooks and of an exhausted monthly quota; it chooses the route and retries. What a send carries and
what its answer means is :mod:`edgecrab.dingtalk.robotapi`. The delivery module calls
:meth:`DingTalkSender.send` once per chunk and decides what to do with a failed :class:`SendResult`.

Route choice for one chunk:

1. the message's ``sessionWebhook``, while it is further than ``webhook_expiry_margin_s`` from its expiry,
   not known to be dead, and its host passes the SSRF allow-list;
2. otherwise, or when the webhook fails (``300001`` "session gone", an error retrying cannot fix, or a
   transient one that outlasted the retries), ``oToMessages/batchSend`` for a DM or
   ``groupMessages/send`` for a group. A ``300001`` webhook is remembered as dead.

A ``460101`` (message too long) is returned as a permanent failure without fallback: the caller must
split the chunk again. Nothing logged here contains a token, a secret or a webhook's session value.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx

from edgecrab.config import DingTalkConfig
from edgecrab.dingtalk.outcomes import QUOTA_PAUSE_S, SendStats, log_failure
from edgecrab.dingtalk.ratelimit import Buckets, Clock, RateLimiter, Sleep, share
from edgecrab.dingtalk.robotapi import (
    BATCH_SEND_PATH,
    GROUP_SEND_PATH,
    SendResult,
    encode_body,
    openapi_body,
    openapi_result,
    webhook_result,
)
from edgecrab.dingtalk.tokens import (
    SESSION_GONE,
    TOKEN_PATH,
    TOO_LONG,
    DingTalkError,
    TokenCache,
    transport_error,
)
from edgecrab.dingtalk.webhook import (
    WebhookGuard,
    expiry_seconds,
    install_httpx_redaction,
    redact_url,
    url_host,
    webhook_body,
)
from edgecrab.events import ReplyRoute
from edgecrab.outbound import http_client
from edgecrab.retry import Backoff, retrying

__all__ = [
    "DingTalkError",
    "DingTalkSender",
    "RateLimiter",
    "SendResult",
    "SendStats",
    "TokenCache",
    "openapi_body",
    "redact_url",
    "webhook_body",
]

log = logging.getLogger(__name__)

QUOTA_CODE = "Forbidden.AccessDenied.ApiCountLimitForOrg"
UNDELIVERABLE = "undeliverable"
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
DEAD_WEBHOOKS_MAX = 4096
JSON_HEADERS = {"Content-Type": "application/json"}


class DingTalkSender:
    """One robot's outbound REST side: tokens, limiters, route choice, retries. Safe to share across tasks."""

    def __init__(
        self,
        config: DingTalkConfig,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """``clock``: wall clock (webhook expiry is epoch time); ``monotonic``: tokens and limiters;
        ``sleep``: limiter and backoff waits; ``rand`` (0..1): backoff jitter."""
        self._config = config
        self._owns_client = client is None
        self._client = client or http_client(timeout=config.send_timeout_s)
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._random = rand
        self._api_base = config.api_base.rstrip("/")
        self._timeout = config.send_timeout_s
        # Each step bounded by the send timeout except the read, which the whole exchange's bound (_post)
        # covers already: with a read timeout aiohttp arms, re-arms and cancels a timer for every answer
        # (two timer handles a send). Made once: httpx builds a Timeout from a number on every call.
        self._step_timeouts = httpx.Timeout(self._timeout, read=None)
        self._limiters: dict[str, RateLimiter] = {}
        self._webhook_limiter = RateLimiter(config.webhook_qps, clock=monotonic, sleep=sleep)
        self._buckets: Buckets | None = None
        self._dead_webhooks: OrderedDict[str, None] = OrderedDict()
        self._quota_paused_until = 0.0
        self.backoff_policy = Backoff(config.send_retries + 1, BACKOFF_BASE_S, BACKOFF_CAP_S)
        """The retry policy of every send (:mod:`edgecrab.retry`); tests may shorten its waits."""
        self.stats = SendStats()
        self.guard = WebhookGuard(config.api_base, config.extra_allowed_hosts)
        install_httpx_redaction()
        self.tokens = TokenCache(
            self._client,
            config.api_base,
            config.app_key,
            config.app_secret,
            clock=monotonic,
            timeout_s=config.send_timeout_s,
            limiter=self.limiter(TOKEN_PATH),
        )

    @property
    def robot_code(self) -> str:
        return self._config.robot_code or self._config.app_key

    def limiter(self, path: str) -> RateLimiter:
        """The shared limiter for one OpenAPI path (DingTalk counts QPS per app per API)."""
        if path not in self._limiters:
            limiter = RateLimiter(self._config.openapi_qps, clock=self._monotonic, sleep=self._sleep)
            if self._buckets is not None:
                share(limiter, self._buckets, f"{self._config.app_key}:{path}")
            self._limiters[path] = limiter
        return self._limiters[path]

    def share_limits(self, buckets: Buckets) -> None:
        """Replicas: keep every limiter's bucket in ``buckets`` (DingTalk's limits are per app)."""
        self._buckets = buckets
        share(self._webhook_limiter, buckets, f"{self._config.app_key}:webhook")
        for path, limiter in self._limiters.items():
            share(limiter, buckets, f"{self._config.app_key}:{path}")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> DingTalkSender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- route choice ------------------------------------------------------------------------------

    def _webhook_usable(self, route: ReplyRoute) -> httpx.URL | None:
        """The route's sessionWebhook, parsed, when a reply may go through it."""
        url = route.session_webhook
        if not url:
            return None
        if url in self._dead_webhooks:
            log.debug("[dingtalk] sessionWebhook of conversation %s is known dead", route.conversation_id)
            return None
        expires_at = expiry_seconds(route.session_webhook_expires_at)
        # 0 means unknown: try it; a dead webhook answers 300001 and we fall back.
        if expires_at and self._clock() >= expires_at - self._config.webhook_expiry_margin_s:
            log.debug(
                "[dingtalk] sessionWebhook of conversation %s expires within %.0fs; using OpenAPI",
                route.conversation_id,
                self._config.webhook_expiry_margin_s,
            )
            return None
        reason, parsed = self.guard.check(url)
        if reason:
            log.warning("[dingtalk] refusing sessionWebhook to host %s (%s)", url_host(url), reason)
            return None
        return parsed

    def _mark_dead(self, url: str) -> None:
        self._dead_webhooks[url] = None
        while len(self._dead_webhooks) > DEAD_WEBHOOKS_MAX:
            self._dead_webhooks.popitem(last=False)

    # -- sending -----------------------------------------------------------------------------------

    async def send(
        self, route: ReplyRoute, *, text: str, title: str, mention: bool, fmt: str = "markdown"
    ) -> SendResult:
        """Send one chunk, choosing the route and retrying transient failures; never raises DingTalkError."""
        if fmt not in ("markdown", "text"):
            raise ValueError(f"unknown reply format {fmt!r}")
        webhook_failure: SendResult | None = None
        webhook = self._webhook_usable(route)
        if webhook is not None:
            at = route.sender_staff_id if mention and route.is_group else ""
            result = await self._send_webhook(route, webhook, webhook_body(text, title, fmt, at))
            if result.ok or result.code == TOO_LONG:
                return result
            webhook_failure = result
            log.info("[dingtalk] falling back to OpenAPI for conversation %s", route.conversation_id)
        result = await self._send_openapi(route, text, title, mention, fmt)
        if (
            webhook_failure is not None
            and not webhook_failure.permanent
            and not result.ok
            and result.code in (UNDELIVERABLE, QUOTA_CODE)
        ):
            # OpenAPI was never an option; the webhook's transient failure is the useful answer.
            return webhook_failure
        return result

    async def _post(
        self, url: str | httpx.URL, content: bytes, headers: dict[str, str], what: str
    ) -> httpx.Response:
        """One POST of a JSON body (``headers`` include the Content-Type), redirects not followed; the
        whole exchange bounded by the send timeout, as each of its steps is."""
        try:
            # move_on_after and the raise below, not fail_after: the same bound for two thirds of the CPU
            # (fail_after wraps the cancel scope in a generator-based context manager; one per send).
            with anyio.move_on_after(self._timeout):
                return await self._client.post(
                    url, content=content, headers=headers, timeout=self._step_timeouts, follow_redirects=False
                )
        except (TimeoutError, httpx.RequestError) as exc:
            raise transport_error(exc, what) from None
        raise transport_error(TimeoutError(), what)  # the exchange as a whole outlasted the send timeout

    async def _send_webhook(self, route: ReplyRoute, webhook: httpx.URL, body: dict[str, Any]) -> SendResult:
        url = route.session_webhook
        content = encode_body(body)

        async def attempt() -> SendResult:
            await self._webhook_limiter.acquire()
            response = await self._post(webhook, content, JSON_HEADERS, "sessionWebhook")
            try:
                return webhook_result(response)
            except DingTalkError as err:
                if err.code == SESSION_GONE:
                    self._mark_dead(url)
                raise

        return await self._retrying("webhook", route, attempt)

    async def _send_openapi(
        self, route: ReplyRoute, text: str, title: str, mention: bool, fmt: str
    ) -> SendResult:
        mention_name = (route.sender_name or route.sender_staff_id) if mention and route.is_group else ""
        robot_code = route.robot_code or self.robot_code
        return await self._openapi(route, openapi_body(route, robot_code, text, title, fmt, mention_name))

    async def _openapi(self, route: ReplyRoute, body: dict[str, Any]) -> SendResult:
        """One OpenAPI robot send of ``body`` (its recipient, ``msgKey`` and ``msgParam``), retried."""
        via = "groupSend" if route.is_group else "batchSend"
        cid = route.conversation_id
        if not route.is_group and not route.sender_staff_id:
            log.error(
                "[dingtalk] reply to conversation %s is undeliverable: no usable sessionWebhook, and the "
                "sender has no staff id (outside the organisation?), which the OpenAPI fallback needs",
                cid,
            )
            return SendResult(
                False, via, True, UNDELIVERABLE, "undeliverable: no staff id for OpenAPI fallback", ""
            )
        if self._monotonic() < self._quota_paused_until:
            log.warning(
                "[dingtalk] not sending to conversation %s via %s: monthly OpenAPI quota used up", cid, via
            )
            return SendResult(
                False, via, True, QUOTA_CODE, "monthly OpenAPI quota of the organisation used up", ""
            )
        content = encode_body(body)
        path = GROUP_SEND_PATH if route.is_group else BATCH_SEND_PATH
        url = self._api_base + path
        limiter = self.limiter(path)

        async def attempt() -> SendResult:
            token = await self.tokens.get()
            await limiter.acquire()
            headers = {**JSON_HEADERS, "x-acs-dingtalk-access-token": token}
            response = await self._post(url, content, headers, via)
            try:
                return openapi_result(response, via, route.sender_staff_id)
            except DingTalkError as err:
                if err.needs_new_token:
                    self.tokens.invalidate(token)
                raise

        return await self._retrying(via, route, attempt)

    # -- retries and outcomes ----------------------------------------------------------------------

    def backoff(self, retry: int, floor: float = 0.0) -> float:
        """Pause before retry ``retry + 1`` (:class:`~edgecrab.retry.Backoff`), never below ``floor``."""
        return max(floor, self.backoff_policy.delay(retry, self._random))

    async def _retrying(
        self, via: str, route: ReplyRoute, attempt: Callable[[], Awaitable[SendResult]]
    ) -> SendResult:
        """``attempt`` under the retry policy: ``send_retries`` more tries of a transient failure, each
        after :meth:`backoff` (or longer, when DingTalk asked for a pause). A token DingTalk rejects is
        renewed and the call repeated at once, once: that repeat is part of the attempt, not a retry."""
        refreshed = False

        async def once() -> SendResult | DingTalkError:
            nonlocal refreshed
            try:
                return await attempt()
            except DingTalkError as err:
                if not (err.needs_new_token and not refreshed and via != "webhook"):
                    return err
                refreshed = True
                log.info(
                    "[dingtalk] %s for conversation %s: access token rejected (code=%s requestid=%s); "
                    "refreshing it and retrying once",
                    via,
                    route.conversation_id,
                    err.code or err.status,
                    err.request_id or "-",
                )
            try:
                return await attempt()
            except DingTalkError as err:
                return err

        started = self._monotonic()
        outcome = await retrying(
            once,
            self.backoff_policy,
            retry_result=lambda r: isinstance(r, DingTalkError) and r.retryable,
            min_wait=lambda r, _: r.min_wait if isinstance(r, DingTalkError) else 0.0,
            on_retry=lambda notice: self.stats.retrying(via, route.conversation_id, notice),
            rand=self._random,
            sleep=self._sleep,
        )
        self.stats.count(via, outcome, self._monotonic() - started)
        if isinstance(outcome, DingTalkError):
            return self._failed(via, route, outcome)
        log.debug(
            "[dingtalk] sent via %s to conversation %s (requestid=%s processQueryKey=%s)",
            via,
            route.conversation_id,
            outcome.request_id or "-",
            outcome.process_query_key or "-",
        )
        return outcome

    def _failed(self, via: str, route: ReplyRoute, err: DingTalkError) -> SendResult:
        if err.quota_exhausted and via != "webhook":
            self._quota_paused_until = self._monotonic() + QUOTA_PAUSE_S
        log_failure(via, route.conversation_id, err, self._config.send_retries)
        return SendResult(
            False, via, not err.retryable, err.code or str(err.status), err.message, err.request_id
        )
