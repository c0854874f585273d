"""What one robot's sends came to: counts for the ops port's ``/metrics`` (:class:`SendStats`), and the one
log line that says why a send failed for good and what fixes it (:func:`log_failure`). Nothing here sends."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from edgecrab.dingtalk.robotapi import SendResult
from edgecrab.dingtalk.tokens import (
    PERMISSION_CODE,
    QPS_CODES,
    SESSION_GONE,
    TOO_LONG,
    WEBHOOK_THROTTLED,
    DingTalkError,
)
from edgecrab.retry import RetryNotice

log = logging.getLogger("edgecrab.dingtalk.rest")

QUOTA_PAUSE_S = 3600.0
"""After ApiCountLimitForOrg, OpenAPI sends are not even tried for this long."""


@dataclass(slots=True)
class SendStats:
    """What one robot's sends came to, for the ops port's ``/metrics``: plain counts, read at scrape time.
    ``on_latency`` (when set) is told each send's route and seconds, its retries included."""

    sends: dict[tuple[str, str, str], int] = field(default_factory=dict)
    """By ``(route, "ok" | "failed", DingTalk's code or "")``."""
    throttled: dict[str, int] = field(default_factory=dict)
    """Retries DingTalk's rate limits forced (QpsLimit, the webhook's 20 a minute), by code."""
    on_latency: Callable[[str, float], None] | None = None

    def count(self, via: str, result: SendResult | DingTalkError, seconds: float) -> None:
        if isinstance(result, SendResult):
            key = (via, "ok", "") if result.ok else (via, "failed", result.code)
        else:
            key = (via, "failed", result.code or str(result.status))
        self.sends[key] = self.sends.get(key, 0) + 1
        if self.on_latency is not None:
            self.on_latency(via, seconds)

    def retrying(self, via: str, conversation_id: str, notice: RetryNotice) -> None:
        """A send is about to be tried again: count DingTalk's rate limits, and say so in the log."""
        code = getattr(notice.result, "code", "")
        if code in QPS_CODES or code == WEBHOOK_THROTTLED:
            self.throttled[code] = self.throttled.get(code, 0) + 1
        log.warning(
            "[dingtalk] %s to conversation %s failed: %s; retry %d/%d in %.1fs",
            via,
            conversation_id,
            notice.result,
            notice.retry,
            notice.of,
            notice.delay_s,
        )


def log_failure(via: str, cid: str, err: DingTalkError, send_retries: int) -> None:
    """The log line for a send that failed for good: its cause, and the fix where there is one."""
    rid = err.request_id or "-"
    if err.quota_exhausted and via != "webhook":
        log.error(
            "[dingtalk] %s to conversation %s refused with %s (requestid=%s): the organisation's monthly "
            "OpenAPI call quota is used up. Until it resets next month (or the plan is upgraded in the "
            "DingTalk developer console), replies can only go through the sessionWebhook of a recent "
            "message. OpenAPI sends are paused for %.0f minutes.",
            via,
            cid,
            err.code,
            rid,
            QUOTA_PAUSE_S / 60,
        )
    elif err.code == PERMISSION_CODE:
        scopes = ", ".join(err.required_scopes) or "unknown"
        log.error(
            "[dingtalk] %s to conversation %s refused: the app lacks permission (code=%s "
            "requiredScopes=%s requestid=%s message=%s); grant it in the DingTalk developer console",
            via,
            cid,
            err.code,
            scopes,
            rid,
            err.message,
        )
    elif via == "webhook" and err.code == SESSION_GONE:
        # Routine: webhooks die early and often (field notes 1.3); the fallback takes over.
        log.info("[dingtalk] sessionWebhook of conversation %s is gone: %s", cid, err)
    elif via == "webhook" and err.code != TOO_LONG:
        log.warning("[dingtalk] sessionWebhook send to conversation %s failed: %s", cid, err)
    elif err.retryable:
        log.warning(
            "[dingtalk] %s to conversation %s still failing after %d retries: %s",
            via,
            cid,
            send_retries,
            err,
        )
    else:
        log.error(
            "[dingtalk] %s to conversation %s failed permanently: code=%s message=%s requestid=%s",
            via,
            cid,
            err.code or err.status,
            err.message,
            rid,
        )
