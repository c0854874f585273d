"""One robot's DingTalk AI cards: open a card in a conversation, stream the answer into it, finish it.

:class:`CardClient` makes the card API calls of ``wave2.md`` section 1 in the order every peer that stopped
getting "stuck thinking" reports converged on, with the fewest calls::

    open()    POST /v1.0/card/instances/createAndDeliver   the card, already "inputting" (flowStatus "2"),
                                                           delivered to the DM or group in the same call
    update()  PUT  /v1.0/card/streaming                    the full text so far (isFull), a new guid each call
    finish()  PUT  /v1.0/card/streaming                    the final text with isFinalize, then
              PUT  /v1.0/card/instances                    flowStatus "3" (finished, also when stopped, with a
                                                           stop mark) or "5" (failed), updateCardDataByKey

so a reply costs ``3 + updates`` calls. Every call of the robot takes a token from one
:class:`~edgecrab.dingtalk.ratelimit.RateLimiter` at ``card.qps``, shared by all its cards: DingTalk counts
QPS per app, and peers without a shared budget hit ``QpsLimit`` storms with three users.

What a failure means for the caller (each is a :class:`~edgecrab.dingtalk.tokens.DingTalkError`)::

    CardError              a card call failed
     ├── CardsUnavailable  cards cannot work for this robot now: a missing permission (403, the scope is in
     │                     ``required_scopes`` and the message), an unknown or unpublished template, the
     │                     template does not stream ``content_key`` (500 unknownError), the monthly quota,
     │                     5xx that outlasted the retries. Reply through markdown and leave cards alone
     │                     for a while.
     ├── CardThrottled     transient (QpsLimit, 429, 5xx, network): try again later with the newest text.
     └── CardRejected      this card failed (a space refused it inside HTTP 200 ``deliverResults``, a DM
                           sender without staff id, a parameter DingTalk refused): markdown for this reply.

``open`` and ``finish`` retry transient failures under :mod:`edgecrab.retry`'s policy (a QpsLimit waits at
least a second). A create whose answer was lost (a timeout, a reset, 5xx) may have been done: we chose the
``outTrackId``, so a retry's ``param.outTrackIdExist`` is that card, and ``open`` returns it; a failed
open after such an attempt says :attr:`CardError.may_exist`. ``update`` tries once, because a later
update carries newer text anyway: pacing and coalescing are
:class:`~edgecrab.dingtalk.cardstream.CardStreamer`'s job. A streaming retry always carries
a new ``guid`` (DingTalk refuses a repeated one).
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import httpx

from edgecrab.config.model import DingTalkConfig
from edgecrab.dingtalk.cardbodies import (
    FLOW_FAILED,
    FLOW_FINISHED,
    failed_deliveries,
    open_body,
    streaming_body,
)
from edgecrab.dingtalk.carderrors import (
    CARD_EXISTS,
    INSTANCE_SCOPE,
    PUBLIC_AI_TEMPLATE,
    STREAMING_SCOPE,
    UNKNOWN_ERROR,
    CardError,
    CardRejected,
    CardsUnavailable,
    CardThrottled,
    classify,
)
from edgecrab.dingtalk.ratelimit import Clock, RateLimiter, Sleep
from edgecrab.dingtalk.tokens import (
    DingTalkError,
    TokenCache,
    error_from_response,
    transport_error,
)
from edgecrab.events import ReplyRoute
from edgecrab.outbound import failure_kind, http_client
from edgecrab.retry import Backoff, RetryNotice, retrying

log = logging.getLogger(__name__)

__all__ = [
    "INSTANCE_SCOPE",
    "PUBLIC_AI_TEMPLATE",
    "STREAMING_SCOPE",
    "UNKNOWN_ERROR",
    "CardClient",
    "CardError",
    "CardHandle",
    "CardRejected",
    "CardState",
    "CardThrottled",
    "CardsUnavailable",
    "classify",
]

CREATE_AND_DELIVER_PATH = "/v1.0/card/instances/createAndDeliver"
INSTANCES_PATH = "/v1.0/card/instances"
STREAMING_PATH = "/v1.0/card/streaming"
TOKEN_HEADER = "x-acs-dingtalk-access-token"

STOPPED_MARK = "⏹️ 已停止 (stopped)"
"""Appended to the text of a card whose run was stopped."""
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 8.0

QPS_MARGIN = 0.9
"""The robot's card calls are spaced at this share of ``card.qps``: DingTalk counts calls per second where
they arrive, and arrivals bunch up (scheduling, connection reuse). Spaced at exactly 20 per second, 200
streaming cards got 38 QpsLimit answers out of about 1,200 calls in the benchmark (scenario 6b)."""

CardState = Literal["finished", "failed", "stopped"]


@dataclass
class CardHandle:
    """One open card: its id, where it is, and how many API calls it has cost."""

    out_track_id: str
    route: ReplyRoute
    content_key: str
    process_query_key: str = ""
    calls: int = 0
    """Card API requests made for this card, retries included."""
    unsure: bool = False
    """An open attempt's answer was lost (the network, a timeout, 5xx): DingTalk may have the card."""
    state: str = "open"
    """``open``, then the :data:`CardState` it was finished in: set once the card's final state was
    accepted, so a card whose finish failed is still ``open`` (someone must finish it later)."""

    @property
    def finalized(self) -> bool:
        return self.state != "open"


class CardClient:
    """The card API calls of one robot. Safe to share across tasks; all cards share one rate budget."""

    def __init__(
        self,
        config: DingTalkConfig,
        *,
        tokens: TokenCache | None = None,
        client: httpx.AsyncClient | None = None,
        limiter: RateLimiter | None = None,
        monotonic: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """``tokens``: the robot's token cache (the sender's, so the robot fetches one token);
        ``client``: an httpx client (one is made and closed here when not given)."""
        self.config = config
        self.card = config.card
        self._owns_client = client is None
        self._client = client or http_client(timeout=config.send_timeout_s)
        self._api_base = config.api_base.rstrip("/")
        self._timeout = config.send_timeout_s
        self._sleep = sleep
        self._random = rand
        self.limiter = limiter or RateLimiter(self.card.qps * QPS_MARGIN, clock=monotonic, sleep=sleep)
        """The robot's card budget: every card API call of every card takes a token here."""
        self.tokens = tokens or TokenCache(
            self._client,
            config.api_base,
            config.app_key,
            config.app_secret,
            clock=monotonic,
            timeout_s=config.send_timeout_s,
        )
        self.backoff_policy = Backoff(config.send_retries + 1, BACKOFF_FIRST_S, BACKOFF_CAP_S)
        """Retries of ``open`` and ``finish`` (:mod:`edgecrab.retry`); tests may shorten its waits."""
        self.calls = 0
        """Card API requests made by this client, all cards together."""

    @property
    def create_settle_s(self) -> float:
        """How long after an open began DingTalk may still create its card: every attempt's timeout and the
        waits between them, and one more timeout for a request DingTalk took in just before its sender
        gave up. A card DingTalk does not know this long after it was recorded was never created."""
        policy = self.backoff_policy
        return (max(policy.attempts, 1) + 1) * self._timeout + policy.worst_case_wait_s()

    @property
    def robot_code(self) -> str:
        return self.config.robot_code or self.config.app_key

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> CardClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the three steps ---------------------------------------------------------------------------

    async def open(self, route: ReplyRoute, out_track_id: str = "") -> CardHandle:
        """Create the card in the conversation of ``route``, "inputting" and empty (``out_track_id``: its id,
        chosen by the caller so that it can record the card first; default: a new one)."""
        handle = CardHandle(out_track_id or f"edgecrab_{uuid.uuid4().hex}", route, self.card.content_key)
        what = f"card for conversation {route.conversation_id}"
        if not route.is_group and not route.sender_staff_id:
            raise CardRejected(f"{what}: a DM card needs the sender's staff id (outside the organisation?)")
        body = open_body(self.card, route, handle.out_track_id, route.robot_code or self.robot_code)
        try:
            data = await self._call("POST", CREATE_AND_DELIVER_PATH, lambda: body, handle, what, retry=True)
        except CardError as err:
            if handle.unsure and err.code == CARD_EXISTS:  # we chose the id: an attempt of ours made it
                log.info("[cards] card %s: made by an attempt whose answer was lost", handle.out_track_id)
                return handle
            err.may_exist = handle.unsure
            raise
        failures = failed_deliveries(data)
        if failures:
            handle.state = "failed"
            message = f"{what}: DingTalk did not deliver it: {'; '.join(failures)}"
            raise CardRejected(message, status=200, code="deliverResults")
        result = data.get("result")
        if isinstance(result, dict):
            handle.process_query_key = str(result.get("processQueryKey") or "")
        log.debug("[cards] opened card %s in conversation %s", handle.out_track_id, route.conversation_id)
        return handle

    async def update(self, handle: CardHandle, text: str) -> None:
        """Show ``text`` (the full text so far) on the card: one try, plus one with a renewed token."""
        what = f"update of card {handle.out_track_id}"
        frame = functools.partial(streaming_body, handle.out_track_id, handle.content_key, text, final=False)
        await self._call("PUT", STREAMING_PATH, frame, handle, what)

    async def finish(self, handle: CardHandle, text: str, state: CardState) -> None:
        """The final frame, then the card's final state. Both are tried even when the first fails, so a
        card is not left "thinking"; the first failure is raised after."""
        if state == "stopped":
            text = f"{text.rstrip()}\n\n{STOPPED_MARK}" if text.strip() else STOPPED_MARK
        what = f"finishing card {handle.out_track_id} ({state})"
        first: CardError | None = None
        try:
            await self._call(
                "PUT",
                STREAMING_PATH,
                lambda: streaming_body(handle.out_track_id, handle.content_key, text, final=True),
                handle,
                what,
                retry=True,
            )
        except CardError as err:
            first = err
        params = {"flowStatus": FLOW_FAILED if state == "failed" else FLOW_FINISHED, handle.content_key: text}
        if self.card.stop_button:
            params.update(hasAction="false", stop_action="false")
        body = {
            "outTrackId": handle.out_track_id,
            "cardData": {"cardParamMap": params},
            "cardUpdateOptions": {"updateCardDataByKey": True},
        }
        try:
            await self._call("PUT", INSTANCES_PATH, lambda: body, handle, what, retry=True)
            handle.state = state  # out of "writing" (this call sets the text too), whatever the frame did
        except CardError as err:
            first = first or err
        if first is not None:
            raise first

    # -- one call ----------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: Callable[[], dict[str, Any]],
        handle: CardHandle,
        what: str,
        *,
        retry: bool = False,
    ) -> dict[str, Any]:
        """One card API call (a new body per attempt: a streaming retry needs a new guid); a rejected token
        is renewed and the call repeated once. With ``retry``, transient failures are retried under
        :attr:`backoff_policy`. Raises :class:`CardError`."""
        refreshed = False

        async def once() -> dict[str, Any] | DingTalkError:
            nonlocal refreshed
            while True:
                token = ""
                try:
                    token = await self.tokens.get()
                    return await self._request(method, path, body(), token, handle, what)
                except DingTalkError as err:
                    if not (err.needs_new_token and token and not refreshed):
                        return err
                    refreshed = True
                    self.tokens.invalidate(token)

        def warn(notice: RetryNotice) -> None:
            log.warning(
                "[cards] %s failed: %s; retry %d/%d in %.1fs",
                what,
                notice.result,
                notice.retry,
                notice.of,
                notice.delay_s,
            )

        if retry:
            outcome = await retrying(
                once,
                self.backoff_policy,
                retry_result=lambda r: isinstance(r, DingTalkError) and r.retryable,
                min_wait=lambda r, _: r.min_wait if isinstance(r, DingTalkError) else 0.0,
                on_retry=warn,
                rand=self._random,
                sleep=self._sleep,
            )
        else:
            outcome = await once()
        if isinstance(outcome, DingTalkError):
            raise classify(outcome, what, handle.out_track_id, exhausted=retry)
        return outcome

    async def _request(
        self, method: str, path: str, body: dict[str, Any], token: str, handle: CardHandle, what: str
    ) -> dict[str, Any]:
        await self.limiter.acquire()
        handle.calls += 1
        self.calls += 1
        headers = {"Content-Type": "application/json", TOKEN_HEADER: token}
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            with anyio.fail_after(self._timeout):
                response = await self._client.request(
                    method,
                    self._api_base + path,
                    content=content,
                    headers=headers,
                    timeout=self._timeout,
                    follow_redirects=False,
                )
        except (TimeoutError, httpx.RequestError) as exc:
            sent = failure_kind(exc) != "refused"  # else it may have reached DingTalk
            handle.unsure = handle.unsure or (path == CREATE_AND_DELIVER_PATH and sent)
            raise transport_error(exc, what) from None
        if not response.is_success:
            handle.unsure = handle.unsure or (path == CREATE_AND_DELIVER_PATH and response.status_code >= 500)
            raise error_from_response(response, what)
        try:
            data = json.loads(response.content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise DingTalkError(f"{what}: the answer is not a JSON object", status=response.status_code)
        if data.get("success") is False:
            raise error_from_response(response, what)
        return data
