"""DingTalk API errors and the per-robot access-token cache.

:class:`DingTalkError` is what every failed DingTalk call becomes, whatever its shape on the wire: the
new API's ``{"code","message","requestid"}``, the legacy/sessionWebhook ``{"errcode","errmsg"}``, a bare
HTTP status, or a timeout. It knows whether trying again can help (:attr:`DingTalkError.retryable`),
whether only a new token can (:attr:`DingTalkError.needs_new_token`), or neither
(:attr:`DingTalkError.permanent`).

:class:`TokenCache` holds one robot's access token. A cache is never shared between robots: a single
global cache once sent replies as the wrong robot (field notes 1.13).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import anyio
import httpx

from edgecrab import errors
from edgecrab.dingtalk.ratelimit import Clock, RateLimiter
from edgecrab.outbound import failure_kind

log = logging.getLogger(__name__)

TOKEN_PATH = "/v1.0/oauth2/accessToken"
TOKEN_MARGIN_S = 300.0
"""A token is renewed this long before DingTalk says it expires."""

QPS_CODES = frozenset(
    {
        "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi",
        "Forbidden.AccessDenied.QpsLimitForApi",
        "90018",
        "90002",
    }
)
QUOTA_CODES = frozenset({"Forbidden.AccessDenied.ApiCountLimitForOrg", "90020"})
AUTH_CODES = frozenset({"InvalidAuthentication", "40014"})
PERMISSION_CODE = "Forbidden.AccessDenied.AccessTokenPermissionDenied"
WEBHOOK_THROTTLED = "130101"
"""sessionWebhook/custom robot: more than 20 messages a minute."""
FLOW_CONTROLLED = "flowControlledStaffIdList"
TRANSPORT_CODES = frozenset({"timeout", "network"})
SESSION_GONE = "300001"
"""sessionWebhook: the session expired or never existed."""
TOO_LONG = "460101"
"""sessionWebhook: the body is over 20,000 bytes."""
NEVER_RETRY_CODES = frozenset({SESSION_GONE, TOO_LONG, "invalidStaffIdList", "authFailed"})


class DingTalkError(errors.DingTalkError):
    """A DingTalk call that did not succeed (the REST side's branch of :mod:`edgecrab.errors`).

    ``status`` is the HTTP status (0 when no response arrived), ``code`` DingTalk's code as a string
    (``errcode`` numbers included), ``request_id`` the ``requestid`` to quote to DingTalk support.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        request_id: str = "",
        required_scopes: tuple[str, ...] = (),
        retry_after: float = 0.0,
    ) -> None:
        super().__init__(message, errcode=code or None, status=status)
        self.status: int = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.required_scopes = required_scopes
        self.retry_after = retry_after
        """Seconds the server asked us to wait (``Retry-After``), 0 when it did not say."""

    def __str__(self) -> str:
        parts = [f"status={self.status}", f"code={self.code or '-'}", f"requestid={self.request_id or '-'}"]
        return f"{self.message} ({', '.join(parts)})"

    @property
    def needs_new_token(self) -> bool:
        """The access token was rejected: drop it, fetch another, try once more."""
        return self.code in AUTH_CODES or (self.status == 401 and self.code != "authFailed")

    @property
    def quota_exhausted(self) -> bool:
        return self.code in QUOTA_CODES

    @property
    def retryable(self) -> bool:
        """A transient failure: the same request may succeed after a pause."""
        if self.needs_new_token or self.quota_exhausted or self.code == PERMISSION_CODE:
            return False
        if self.code in NEVER_RETRY_CODES:
            return False
        if self.code in QPS_CODES or self.code in TRANSPORT_CODES:
            return True
        if self.code in (WEBHOOK_THROTTLED, FLOW_CONTROLLED):
            return True
        return self.status == 429 or self.status >= 500

    @property
    def permanent(self) -> bool:
        """Repeating the request cannot help (bad parameter, missing permission, quota used up, ...)."""
        return not self.retryable and not self.needs_new_token

    @property
    def min_wait(self) -> float:
        """The shortest sensible pause before a retry, whatever the backoff says."""
        floor = 1.0 if self.code in QPS_CODES or self.code == WEBHOOK_THROTTLED else 0.0
        return max(floor, self.retry_after)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _retry_after(response: httpx.Response) -> float:
    raw = response.headers.get("retry-after", "")
    try:
        return min(max(float(raw), 0.0), 60.0)
    except ValueError:
        return 0.0


def error_from_response(response: httpx.Response, what: str) -> DingTalkError:
    """Turn a failed response of either API style into a :class:`DingTalkError`."""
    data = _json_or_none(response)
    request_id = response.headers.get("x-acs-request-id", "")
    code = ""
    message = ""
    scopes: tuple[str, ...] = ()
    if isinstance(data, dict):
        if "code" in data or "message" in data:
            code = str(data.get("code") or "")
            message = str(data.get("message") or "")
            request_id = str(data.get("requestid") or data.get("requestId") or request_id)
            detail = data.get("accessdenieddetail")
            if isinstance(detail, dict) and isinstance(detail.get("requiredScopes"), list):
                scopes = tuple(str(s) for s in detail["requiredScopes"])
        elif "errcode" in data:
            code = str(data.get("errcode"))
            message = str(data.get("errmsg") or "")
    if not message:
        # An HTML ban page or an empty body: keep a short excerpt, never the whole page.
        excerpt = response.text[:120].strip() if data is None else ""
        message = f"{what}: HTTP {response.status_code}" + (f" {excerpt!r}" if excerpt else "")
    return DingTalkError(
        message,
        status=response.status_code,
        code=code,
        request_id=request_id,
        required_scopes=scopes,
        retry_after=_retry_after(response),
    )


def transport_error(exc: BaseException, what: str) -> DingTalkError:
    """A call that got no response: timed out, refused, hung up on, or another network failure."""
    kind = failure_kind(exc)
    if kind == "timeout":
        return DingTalkError(f"{what}: timed out", code="timeout")
    # No exception text: some transport messages embed the URL, which may carry a credential.
    return DingTalkError(f"{what}: {_FAILURE_WORDS[kind]}", code="network")


_FAILURE_WORDS = {
    "refused": "connection refused or host unreachable",
    "disconnected": "the server closed the connection",
    "network": "network error",
}


def _register_secret(value: str) -> None:
    """Tell the log redactor about a secret, when the redactor exists."""
    try:
        from edgecrab.logs import register_secret
    except ImportError:
        return
    register_secret(value)


class TokenCache:
    """One robot's access token, fetched on demand and renewed ahead of expiry.

    Concurrent callers share a single in-flight request. The token lives ``expireIn - 300`` seconds (or
    half of ``expireIn`` when DingTalk, or a test fake, grants less than ten minutes).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        api_base: str,
        app_key: str,
        app_secret: str,
        *,
        clock: Clock = time.monotonic,
        timeout_s: float = 10.0,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._client = client
        self._url = api_base.rstrip("/") + TOKEN_PATH
        self._app_key = app_key
        self._app_secret = app_secret
        self._clock = clock
        self._timeout_s = timeout_s
        self._limiter = limiter
        self._lock = anyio.Lock()
        self._token = ""
        self._valid_until = 0.0
        self.fetches = 0
        """How many token requests were made (for status pages and tests)."""
        _register_secret(app_secret)

    @property
    def app_key(self) -> str:
        return self._app_key

    def _cached(self) -> str:
        if self._token and self._clock() < self._valid_until:
            return self._token
        return ""

    async def get(self) -> str:
        """The current token, fetching a new one if none is cached or it is about to expire."""
        token = self._cached()
        if token:
            return token
        async with self._lock:
            # Whoever held the lock before us may have fetched one already.
            token = self._cached()
            if token:
                return token
            return await self._fetch()

    def invalidate(self, token: str) -> None:
        """Forget ``token`` after DingTalk rejected it, unless it was already replaced."""
        if token and token == self._token:
            self._token = ""
            self._valid_until = 0.0

    async def _fetch(self) -> str:
        if self._limiter is not None:
            await self._limiter.acquire()
        self.fetches += 1
        started = self._clock()
        body = {"appKey": self._app_key, "appSecret": self._app_secret}
        try:
            with anyio.fail_after(self._timeout_s):
                response = await self._client.post(
                    self._url, json=body, timeout=self._timeout_s, follow_redirects=False
                )
        except (TimeoutError, httpx.RequestError) as exc:
            err = transport_error(exc, "access token request")
            log.warning("[dingtalk] access token request for app %s failed: %s", self._app_key, err)
            raise err from None
        data = _json_or_none(response)
        if not response.is_success or not isinstance(data, dict) or not data.get("accessToken"):
            err = error_from_response(response, "access token request")
            if response.is_success and not err.code:
                err = DingTalkError("access token response has no accessToken", status=response.status_code)
            log.error("[dingtalk] access token request for app %s failed: %s", self._app_key, err)
            raise err
        token = str(data["accessToken"])
        try:
            expire_in = float(data.get("expireIn", 7200))
        except (TypeError, ValueError):
            expire_in = 7200.0
        _register_secret(token)
        self._token = token
        self._valid_until = started + expire_in - min(TOKEN_MARGIN_S, expire_in / 2)
        log.debug("[dingtalk] got access token for app %s (expires in %.0fs)", self._app_key, expire_in)
        return token
