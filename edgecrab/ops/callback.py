"""HTTP-callback mode (``platforms.dingtalk.mode: http``): DingTalk POSTs each robot message to
``http.callback_path`` on the ops port instead of pushing it down a Stream connection.

The request carries two headers, ``timestamp`` (ms) and ``sign``: base64 of HMAC-SHA256 keyed by the app
secret over ``timestamp + "\\n" + appSecret`` (DingTalk's rule, as its channel SDK and NoneBot check it).
A request is refused with 401, and nothing recorded, when the sign differs (constant-time compare) or the
timestamp is more than an hour from now; a body above :data:`MAX_BODY` bytes gets 413. The body is the
same chatbot JSON a Stream callback carries in ``data``, so it goes through the same
:meth:`Intake.on_callback <edgecrab.dingtalk.intake.Intake.on_callback>`: decoded, claimed durably in the
inbox (a ``msgId`` claimed before is a retry: answered 200, not processed again), then the usual access
rules and hooks. The answer is 200 right after the durable claim; 503 when the store could not record it
(DingTalk retries). Replies go out through the sessionWebhook / OpenAPI, never in the HTTP answer.

The sign covers the timestamp only, not the body: anyone who sees one signed request can replay its
headers with another body for an hour. Put the port behind a reverse proxy with TLS (docs/deploy.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from edgecrab.dingtalk.convert import Frame
from edgecrab.dingtalk.streamconn import AckDecision

log = logging.getLogger("edgecrab.ops.callback")

MAX_BODY = 1024 * 1024
"""Largest callback body accepted (1 MiB)."""
MAX_SKEW_S = 3600.0
"""How far the ``timestamp`` header may be from now."""
CALLBACK_TOPIC = "/v1.0/im/bot/messages/get"


def sign(timestamp: str, secret: str) -> str:
    """DingTalk's ``sign`` header for ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def check_signature(timestamp: str, given: str, secret: str, now: float) -> str:
    """``""`` when the headers are DingTalk's for this secret, else what is wrong (safe to log)."""
    if not timestamp or not given:
        return "no timestamp or sign header"
    try:
        ms = int(timestamp)
    except ValueError:
        return "timestamp is not a number"
    seconds = ms / 1000 if ms > 10**11 else float(ms)  # milliseconds, as DingTalk sends; seconds tolerated
    if abs(now - seconds) > MAX_SKEW_S:
        return f"timestamp is {abs(now - seconds):.0f} s from now (more than {MAX_SKEW_S:.0f} s)"
    if not hmac.compare_digest(sign(timestamp, secret).encode(), given.strip().encode()):
        return "sign does not match"
    return ""


def callback_handler(
    secret: str, on_callback: Callable[[Frame], Awaitable[AckDecision]]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The aiohttp handler of the callback path, recording through ``on_callback``."""

    async def handle(request: web.Request) -> web.Response:
        problem = check_signature(
            request.headers.get("timestamp", ""), request.headers.get("sign", ""), secret, time.time()
        )
        if problem:
            log.warning("[dingtalk] refused an HTTP callback from %s: %s", request.remote, problem)
            return _answer(401, "unauthorized: bad timestamp or sign")
        if (request.content_length or 0) > MAX_BODY:
            return _answer(413, f"body larger than {MAX_BODY} bytes")
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_BODY:
                return _answer(413, f"body larger than {MAX_BODY} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _answer(400, "bad request: body is not UTF-8")
        frame = Frame("CALLBACK", {"topic": CALLBACK_TOPIC, "messageId": ""}, text)
        try:
            decision = await on_callback(frame)
        except Exception as exc:
            log.error("[dingtalk] an HTTP callback could not be recorded: %s: %s", type(exc).__name__, exc)
            return _answer(503, "not recorded; try again")
        if decision.code != 200:
            return _answer(decision.code, decision.message or "refused")
        return web.Response(text='{"msgtype":"empty"}', content_type="application/json")

    return handle


def _answer(status: int, error: str) -> web.Response:
    return web.Response(text=json.dumps({"error": error}), status=status, content_type="application/json")


__all__ = ["MAX_BODY", "MAX_SKEW_S", "callback_handler", "check_signature", "sign"]
