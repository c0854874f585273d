"""The DingTalk Stream connection manager: open-connection POST, websocket, reconnects.

We own this loop instead of running ``dingtalk_stream.DingTalkStreamClient`` because the 0.24.3 client
blocks the event loop in its open-connection call, swallows cancellation and leaks keepalive tasks
(see the protocol reference, section 13.3). The protocol itself is small:

* ``POST {api_base}/v1.0/gateway/connections/open`` returns an endpoint and a single-use ticket;
* the websocket at ``endpoint?ticket=...`` carries JSON text frames; every frame is acked on the
  connection that carried it (:class:`~edgecrab.dingtalk.streamconn.StreamConnection`, which reads and
  acks through websockets' public ``connect()`` / ``recv()`` / ``send()``);
* SYSTEM ``ping`` is echoed; SYSTEM ``disconnect`` means "this connection will be dropped": we open the
  next connection **before** closing this one (make before break), so nothing is lost in between;
* robot callbacks are recorded durably before their ack leaves: ``on_callbacks_now`` (a store that records
  at once, as SQLite does: one synchronous commit right after ``recv()`` returns the frame),
  ``on_callbacks`` (a store that awaits a round trip, as Redis does: the callbacks that arrive together
  recorded in one, while the connection reads on) or else the awaited ``on_callback``. The agent never runs
  here: the ack leaves within milliseconds.

This module hands each connection only what it needs (the websocket, the recorders, the idle timeout);
:mod:`~edgecrab.dingtalk.streamconn` does not import it back.

The gateway runs this client on its one event loop. (It ran in a thread of its own for a while, so acks
would not wait behind the main loop's tasks; under load the two threads queued for the GIL, which cost
more than it saved: BENCHMARKS.md, fix 6.)

Health: exponential backoff (1 s doubling, capped, with jitter) that resets once a connection stayed up
``healthy_after_s``; an idle watchdog reconnects when no frame at all arrived for ``idle_timeout_s``
(a "zombie" socket whose websocket pings still work but which delivers nothing); 401 ``authFailed``
keeps retrying at the cap with a hint about the credentials. Every state change is logged with a
``[dingtalk]`` prefix.
"""

from __future__ import annotations

import logging
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import quote_plus

import anyio
import httpx
import websockets

from edgecrab import __version__
from edgecrab.config import DingTalkConfig
from edgecrab.dingtalk.streamconn import (
    BOT_TOPIC,
    AckDecision,
    BatchHandler,
    CallbackHandler,
    NowHandler,
    StreamConnection,
    StreamStats,
    open_websocket,
)
from edgecrab.logs import redact
from edgecrab.outbound import http_client
from edgecrab.retry import Backoff

log = logging.getLogger("edgecrab.dingtalk.stream")

OPEN_PATH = "/v1.0/gateway/connections/open"

# States reported to on_state (and the connection_changed hook)
CONNECTING = "connecting"
CONNECTED = "connected"
RECONNECTING = "reconnecting"
FAILED = "failed"
STOPPED = "stopped"


StateHandler = Callable[[str, str], Awaitable[None]]


class AuthFailed(Exception):
    """The open-connection call answered 401: the AppKey/AppSecret pair is wrong."""


class OpenFailed(Exception):
    pass


def local_ip() -> str:
    """The address of the interface a connection would leave from (diagnostics only; no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 80))
            return str(s.getsockname()[0])
    except OSError:
        return ""


class StreamClient:
    """Keeps one robot's Stream connection alive. ``run()`` returns only when cancelled."""

    def __init__(
        self,
        config: DingTalkConfig,
        on_callback: CallbackHandler,
        *,
        on_state: StateHandler | None = None,
        http: httpx.AsyncClient | None = None,
        on_callbacks_now: NowHandler | None = None,
        topics: Mapping[str, CallbackHandler] | None = None,
        on_callbacks: BatchHandler | None = None,
    ) -> None:
        """``topics``: other CALLBACK topics to subscribe to, each with the handler that answers its frames
        (the card buttons' ``/v1.0/card/instances/callback``)."""
        self.config = config
        self.on_callback = on_callback
        self.on_callbacks_now = on_callbacks_now
        self.on_callbacks = on_callbacks
        self.topics = dict(topics or {})
        self._on_state = on_state
        self._http = http
        self.state = STOPPED
        self.state_detail = ""
        self.state_since = time.monotonic()
        self.connections_opened = 0
        self.current: StreamConnection | None = None
        self.stats = StreamStats()
        """Frames by topic, reconnects by reason, the last frame's time: for the ops port."""
        self._rng = random.Random()
        self._backoff = Backoff(0, config.reconnect_initial_s, config.reconnect_max_s)
        """Reconnects never stop (:mod:`edgecrab.retry`); the waits grow from 1 s to 60 s by default."""

    @property
    def robot(self) -> str:
        return self.config.robot_code or self.config.app_key

    async def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state and detail == self.state_detail:
            return
        self.state, self.state_detail, self.state_since = state, detail, time.monotonic()
        if self._on_state is not None:
            try:
                await self._on_state(state, detail)
            except Exception:
                log.exception("[dingtalk] state listener failed")

    def _count_reconnect(self, reason: str) -> None:
        self.stats.reconnects[reason] = self.stats.reconnects.get(reason, 0) + 1

    async def open_ticket(self, http: httpx.AsyncClient) -> str:
        """The open-connection call; returns the websocket URL with its single-use ticket."""
        body = {
            "clientId": self.config.app_key,
            "clientSecret": self.config.app_secret,
            "subscriptions": [
                {"type": "CALLBACK", "topic": topic} for topic in (BOT_TOPIC, *self.topics)
            ],
            "ua": f"edgecrab/{__version__}",
            "localIp": local_ip(),
        }
        url = self.config.api_base.rstrip("/") + OPEN_PATH
        try:
            resp = await http.post(url, json=body, headers={"Accept": "application/json"}, timeout=10.0)
        except httpx.HTTPError as exc:
            raise OpenFailed(f"open-connection request failed: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 401:
            raise AuthFailed(_error_text(resp))
        if resp.status_code != 200:
            raise OpenFailed(f"open-connection answered HTTP {resp.status_code}: {_error_text(resp)}")
        try:
            data = resp.json()
            endpoint, ticket = data["endpoint"], data["ticket"]
        except (ValueError, KeyError, TypeError) as exc:
            raise OpenFailed("open-connection answered without endpoint/ticket") from exc
        if not endpoint or not ticket:
            raise OpenFailed("open-connection answered an empty endpoint or ticket")
        if not isinstance(endpoint, str) or not isinstance(ticket, str):
            raise OpenFailed("open-connection answered an endpoint or ticket that is not a string")
        problem = _endpoint_problem(endpoint)
        if problem:
            raise OpenFailed(f"open-connection answered endpoint {redact(endpoint)[:200]!r}: {problem}")
        return f"{endpoint}?ticket={quote_plus(ticket)}"

    async def _open(self, http: httpx.AsyncClient) -> StreamConnection:
        url = await self.open_ticket(http)
        try:
            ws = await open_websocket(url)
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise OpenFailed(f"websocket handshake failed: {type(exc).__name__}: {redact(str(exc))}") from exc
        self.connections_opened += 1
        return StreamConnection(
            ws,
            uuid.uuid4().hex[:8],
            on_callback=self.on_callback,
            on_callbacks_now=self.on_callbacks_now,
            on_callbacks=self.on_callbacks,
            topics=self.topics,
            idle_timeout_s=self.config.idle_timeout_s,
            stats=self.stats,
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        own_http = self._http is None
        http = self._http or http_client(timeout=10.0, max_connections=4)
        started = False
        try:
            async with anyio.create_task_group() as tg:
                await self._supervise(tg, http, task_status)
                started = True
        finally:
            if own_http:
                with anyio.move_on_after(0.5, shield=True):
                    await http.aclose()
            with anyio.CancelScope(shield=True):
                await self._set_state(STOPPED, "")
            del started

    async def _supervise(
        self, tg: anyio.abc.TaskGroup, http: httpx.AsyncClient, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        failures = 0
        draining: StreamConnection | None = None
        # State first: whoever waits for the start (in another thread, too) finds it connecting, not stopped.
        await self._set_state(CONNECTING, "")
        task_status.started()
        while True:
            log.info("[dingtalk] connecting to %s (attempt %d)", self.config.api_base, failures + 1)
            conn = await self._connect(http, failures)
            if conn is None:
                failures += 1
                continue
            tg.start_soon(conn.serve)
            self.current = conn
            if draining is not None:
                # Make before break: the replacement is up, now let the old one go.
                tg.start_soon(draining.close)
                draining = None
            log.info("[dingtalk] connected: conn %s (connection #%d)", conn.cid, self.connections_opened)
            await self._set_state(CONNECTED, conn.cid)
            await conn.ended.wait()
            failures = await self._ended(conn, failures)
            if conn.end_reason == "disconnect":
                draining = conn

    async def _connect(self, http: httpx.AsyncClient, failures: int) -> StreamConnection | None:
        """A new connection, or None after logging why there is none and waiting before the next try."""
        try:
            return await self._open(http)
        except AuthFailed as exc:
            self._count_reconnect("auth_failed")
            delay = self.config.reconnect_max_s
            log.error(
                "[dingtalk] authentication failed (%s): check DINGTALK_APP_KEY / DINGTALK_APP_SECRET "
                "(app credentials page at open.dingtalk.com); retrying in %.0f s (attempt %d)",
                exc,
                delay,
                failures + 1,
            )
            await self._set_state(
                FAILED, "authentication failed: check DINGTALK_APP_KEY / DINGTALK_APP_SECRET"
            )
        except OpenFailed as exc:
            self._count_reconnect("open_failed")
            delay = self._backoff.delay(failures, self._rng.random)
            log.warning("[dingtalk] %s; reconnecting in %.1f s (attempt %d)", exc, delay, failures + 2)
            await self._set_state(RECONNECTING, str(exc))
        await anyio.sleep(delay)
        return None

    async def _ended(self, conn: StreamConnection, failures: int) -> int:
        """After ``conn`` ended: the failure count to go on with, once any wait before reconnecting is over.
        A ``disconnect`` frame asks for a new connection at once (the old one drains meanwhile)."""
        lived = time.monotonic() - conn.opened_at
        self._count_reconnect(reason_label(conn.end_reason))
        if lived >= self.config.healthy_after_s or conn.end_reason == "disconnect":
            failures = 0
        if conn.end_reason == "disconnect":
            await self._set_state(RECONNECTING, "server requested disconnect")
            return failures
        delay = self._backoff.delay(failures, self._rng.random)
        log.warning(
            "[dingtalk] conn %s ended: %s after %.1f s; reconnecting in %.1f s (attempt %d)",
            conn.cid,
            conn.end_reason,
            lived,
            delay,
            failures + 2,
        )
        await self._set_state(RECONNECTING, conn.end_reason)
        await anyio.sleep(delay)
        return failures + 1


def _endpoint_problem(endpoint: str) -> str:
    """Why ``endpoint`` (from open-connection) is not a websocket URL to connect to, or ``""``."""
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL:
        return "not a URL"
    if url.scheme not in ("ws", "wss"):
        return "not a ws:// or wss:// URL"
    if not url.host:
        return "no host"
    return ""


def reason_label(end_reason: str) -> str:
    """A connection's end reason as a bounded metrics label: ``idle``, ``disconnect``, ``closed`` or
    ``network`` (the reason itself may carry a close code or an error's text)."""
    if end_reason in ("idle", "disconnect"):
        return end_reason
    return "network" if end_reason.startswith("network") else "closed"


def _error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        code, message, request_id = data.get("code", ""), data.get("message", ""), data.get("requestid", "-")
        return f"{code} {message} (requestid {request_id})".strip()
    except ValueError:
        return resp.text[:200]


__all__ = [
    "BOT_TOPIC",
    "CONNECTED",
    "CONNECTING",
    "FAILED",
    "RECONNECTING",
    "STOPPED",
    "AckDecision",
    "AuthFailed",
    "OpenFailed",
    "StreamClient",
    "StreamStats",
    "local_ip",
    "reason_label",
]
