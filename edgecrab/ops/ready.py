"""``GET /readyz``: is this gateway able to do its job right now? Each check names what fails.

* ``stream``: the Stream connection is up **and** a frame arrived within ``idle_timeout_s``, counted over
  all connections (a reconnect does not reset it). That is the idle watchdog's rule, and it is what tells
  a gateway that is alive but deaf: a "zombie" socket answers websocket pings but delivers nothing, and
  one that reconnects into another zombie stays not ready. (Websocket pongs are not counted: a zombie
  answers them, and websockets closes a connection whose pongs stop anyway.) Before the first frame the
  start of the gateway counts.
  In http mode (``platforms.dingtalk.mode: http``) there is no Stream connection and no ``stream`` check.
* ``token``: the sender's token cache has a token or can fetch one (the cached one costs nothing).
* ``store``: the store accepts a write (one small key/value row).
* ``redis`` (a Redis store only): Redis answers a ``PING`` (on the ack path's connections, which give up
  within a second); else why not (refused, timed out), without the URL's password.
* ``sends``: fewer than :data:`FAILED_SENDS_IN_A_ROW` reply messages failed since the last one accepted.

Each check is bounded by :data:`CHECK_TIMEOUT_S`; the answer never includes a secret or message text.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

import anyio

from edgecrab.dingtalk.stream import CONNECTED
from edgecrab.ops.parts import GatewayParts

CHECK_TIMEOUT_S = 3.0
FAILED_SENDS_IN_A_ROW = 3
PROBE_KEY = "ops.readyz.probe"


async def readiness(parts: GatewayParts) -> dict[str, str]:
    """Every check's result: ``"ok"`` or what is wrong."""
    checks = {
        "token": await _bounded(_token(parts), "no token within"),
        "store": await _bounded(_store(parts), "no write within"),
        "sends": _sends(parts),
    }
    if parts.store.server:
        checks[parts.store.server] = await _bounded(_ping(parts), "no answer within")
    if parts.mode == "http":  # no Stream connection: DingTalk POSTs, nothing to be deaf on
        return checks
    return {"stream": _stream(parts), **checks}


def _stream(parts: GatewayParts) -> str:
    stream = parts.stream
    if stream.state != CONNECTED:
        detail = f" ({stream.state_detail})" if stream.state_detail else ""
        return f"not connected: {stream.state}{detail}"
    age = parts.last_frame_age_s()
    if age > parts.idle_timeout_s:
        return f"no frame for {age:.0f} s (idle_timeout_s {parts.idle_timeout_s:g})"
    return "ok"


async def _token(parts: GatewayParts) -> str:
    try:
        await parts.sender.tokens.get()
    except Exception as exc:  # DingTalkError's text names the code and request id, never the secret
        return f"no access token: {exc}"
    return "ok"


async def _store(parts: GatewayParts) -> str:
    try:
        await parts.store.kv_set(PROBE_KEY, str(time.time()))
    except Exception as exc:
        return f"write failed: {type(exc).__name__}: {exc}"
    return "ok"


async def _ping(parts: GatewayParts) -> str:
    try:
        await parts.store.ping()
    except Exception as exc:  # StoreUnavailableError names the server without its password
        return str(exc)  # "[store] Redis at redis://host:port is unreachable: ..."
    return "ok"


def _sends(parts: GatewayParts) -> str:
    failed = parts.delivery.failed_in_a_row
    if failed >= FAILED_SENDS_IN_A_ROW:
        return f"{failed} reply messages failed in a row"
    return "ok"


async def _bounded(check: Coroutine[Any, Any, str], words: str) -> str:
    result = "ok"
    with anyio.move_on_after(CHECK_TIMEOUT_S) as scope:
        result = await check
    if scope.cancelled_caught:
        return f"{words} {CHECK_TIMEOUT_S:g} s"
    return result


__all__ = ["CHECK_TIMEOUT_S", "FAILED_SENDS_IN_A_ROW", "readiness"]
