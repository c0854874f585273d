"""The DingTalk Stream connection manager: open-connection POST, websocket, frames, acks, reconnects.

We own this loop instead of running ``dingtalk_stream.DingTalkStreamClient`` because the 0.24.3 client
blocks the event loop in its open-connection call, swallows cancellation and leaks keepalive tasks
(see the protocol reference, section 13.3). The protocol itself is small:

* ``POST {api_base}/v1.0/gateway/connections/open`` returns an endpoint and a single-use ticket;
* the websocket at ``endpoint?ticket=...`` carries JSON text frames; every frame is acked on the
  connection that carried it;
* SYSTEM ``ping`` is echoed; SYSTEM ``disconnect`` means "this connection will be dropped": we open the
  next connection **before** closing this one (make before break), so nothing is lost in between;
* robot callbacks are handed to ``on_callback``, which records them durably and returns the ack code.
  The agent never runs here: the ack leaves within milliseconds. With ``on_callback_now`` (a store that
  records in microseconds, as SQLite does) a callback is recorded and acked inside the read of the
  socket, before the event loop runs anything else (:class:`_AckingConnection`).

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

import json
import logging
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote_plus

import anyio
import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.protocol import State

from edgecrab import __version__
from edgecrab.config import DingTalkConfig
from edgecrab.dingtalk.frames import Frame, FrameError, ack_frame, parse_frame
from edgecrab.httpclient import async_client

log = logging.getLogger("edgecrab.dingtalk.stream")

BOT_TOPIC = "/v1.0/im/bot/messages/get"
OPEN_PATH = "/v1.0/gateway/connections/open"

# States reported to on_state (and the connection_changed hook)
CONNECTING = "connecting"
CONNECTED = "connected"
RECONNECTING = "reconnecting"
FAILED = "failed"
STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class AckDecision:
    code: int = 200
    message: str = "OK"


CallbackHandler = Callable[[Frame], Awaitable[AckDecision]]
NowHandler = Callable[[Frame], "AckDecision | None"]
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


def backoff_delay(failures: int, initial: float, cap: float, rng: random.Random | None = None) -> float:
    """``initial * 2**(failures-1)`` capped at ``cap``, +-20 % jitter so fleets don't reconnect in step."""
    base = min(cap, initial * (2 ** max(0, failures - 1)))
    jitter = (rng or random).uniform(-0.2, 0.2) * base
    return max(0.0, min(cap, base + jitter))


class _AckingConnection(ClientConnection):
    """A websocket that can answer a text frame in the step of the event loop that read it.

    websockets hands each complete frame to ``process_event`` from ``data_received``; the base class
    queues it for ``recv()``, a task switch (and a turn of the event loop's queue) later. When
    ``on_text`` is set and takes the frame (returns True), that hop is skipped: the frame is recorded and
    acked before the loop runs anything else. Anything ``on_text`` declines (and fragmented messages)
    takes the ordinary ``recv()`` path, so the fast path is only ever an optimisation.
    """

    on_text: Callable[[str], bool] | None = None

    def process_event(self, event: object) -> None:
        on_text = self.on_text
        if (
            on_text is not None
            and self.response is not None  # past the handshake
            and isinstance(event, WsFrame)
            and event.opcode is Opcode.TEXT
            and event.fin
        ):
            try:
                text = bytes(event.data).decode("utf-8")
            except UnicodeDecodeError:
                text = None  # recv() closes the connection with 1007, as the protocol says
            if text is not None and on_text(text):
                return
        super().process_event(event)  # type: ignore[arg-type]

    def send_now(self, text: str) -> bool:
        """Send a text frame without awaiting (no flow control: acks are a few hundred bytes)."""
        if self.protocol.state is not State.OPEN:
            return False
        self.protocol.send_text(text.encode("utf-8"))
        self.send_data()
        return True


class _Connection:
    """One websocket: reads frames until it closes, idles out, or is told to go away."""

    def __init__(self, client: StreamClient, ws: ClientConnection, cid: str) -> None:
        self.client = client
        self.ws = ws
        self.cid = cid
        self.server_id = ""
        self.opened_at = time.monotonic()
        self.last_frame_at = self.opened_at
        self.frames = 0
        if isinstance(ws, _AckingConnection) and client.on_callback_now is not None:
            ws.on_text = self._handle_now
        self.ended = anyio.Event()
        self.end_reason = ""

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    async def serve(self) -> None:
        idle = self.client.config.idle_timeout_s
        try:
            while True:
                raw: str | bytes | None = None
                # Frames acked on the fast path never reach recv(): the watchdog goes by the last frame.
                with anyio.move_on_after(max(0.0, self.last_frame_at + idle - time.monotonic())):
                    raw = await self.ws.recv()
                if raw is None:
                    if time.monotonic() - self.last_frame_at < idle:
                        continue
                    log.warning(
                        "[dingtalk] conn %s: no frame for %.0f s; forcing a reconnect", self.cid, idle
                    )
                    self._end("idle")
                    return
                self.frames += 1
                self.last_frame_at = time.monotonic()
                await self._handle(raw)
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            self._end(f"closed ({code})")
        except OSError as exc:
            self._end(f"network error: {exc}")
        finally:
            await self.close()

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except websockets.ConnectionClosed:
            log.warning("[dingtalk] conn %s: closed before an ack could be sent", self.cid)

    def _handle_now(self, raw: str) -> bool:
        """The fast path (see :class:`_AckingConnection`): a robot callback recorded and acked at once.
        False for every other frame, and when the store cannot record at once: ``_handle`` takes those."""
        on_callback_now = self.client.on_callback_now
        if on_callback_now is None:
            return False
        try:
            frame = parse_frame(raw)
        except FrameError:
            return False  # _handle logs it and salvages the messageId
        if frame.type != "CALLBACK" or frame.headers.get("topic") != BOT_TOPIC:
            return False
        try:
            decision = on_callback_now(frame)
        except Exception:
            # Not recorded, so not acked as OK: DingTalk may deliver it again.
            log.exception("[dingtalk] conn %s: could not record message %s", self.cid, frame.message_id)
            decision = AckDecision(500, "internal error")
        if decision is None:
            return False
        self.frames += 1
        self.last_frame_at = time.monotonic()
        if not self.server_id and frame.headers.get("connectionId"):
            self._learn_server_id(frame.headers["connectionId"])
        ack = ack_frame(frame.message_id, code=decision.code, message=decision.message)
        try:
            sent = self.ws.send_now(ack) if isinstance(self.ws, _AckingConnection) else False
        except Exception as exc:  # the transport failed under us: recv() reports the closed connection
            log.warning("[dingtalk] conn %s: ack for %s not sent: %s", self.cid, frame.message_id, exc)
            return True
        if not sent:
            log.warning("[dingtalk] conn %s: closed before an ack could be sent", self.cid)
        return True

    def _learn_server_id(self, server_id: str) -> None:
        self.server_id = server_id
        log.info("[dingtalk] conn %s is server connection %s", self.cid, server_id)

    async def _handle(self, raw: str | bytes) -> None:
        try:
            frame = parse_frame(raw)
        except FrameError as exc:
            log.warning("[dingtalk] conn %s: rejected frame: %s", self.cid, exc.reason)
            salvaged = _salvage_message_id(raw)
            if salvaged:
                await self._send(ack_frame(salvaged, code=400, message=f"bad frame: {exc.reason}", data="{}"))
            return
        headers = frame.headers
        topic = headers.get("topic", "")
        mid = frame.message_id
        if not self.server_id and headers.get("connectionId"):
            self._learn_server_id(headers["connectionId"])
        if frame.type == "SYSTEM":
            if topic == "ping":
                await self._send(ack_frame(mid, data=frame.data_text))
            elif topic == "disconnect":
                log.info(
                    "[dingtalk] conn %s: server asked to disconnect (%s); opening a new connection first",
                    self.cid,
                    _reason(frame.data_text),
                )
                await self._send(ack_frame(mid, data=frame.data_text))
                self._end("disconnect")
            else:
                log.debug("[dingtalk] conn %s: SYSTEM %s", self.cid, topic)
            return
        if frame.type == "CALLBACK" and topic == BOT_TOPIC:
            try:
                decision = await self.client.on_callback(frame)
            except Exception:
                # Not recorded, so not acked as OK: DingTalk may deliver it again.
                log.exception("[dingtalk] conn %s: could not record message %s", self.cid, mid)
                decision = AckDecision(500, "internal error")
            await self._send(ack_frame(mid, code=decision.code, message=decision.message))
            return
        log.info("[dingtalk] conn %s: %s topic %r is not handled; acked 404", self.cid, frame.type, topic)
        await self._send(ack_frame(mid, code=404, message="not implement", data=frame.data_text or "{}"))

    async def close(self) -> None:
        self._end("closed by us")
        with anyio.move_on_after(0.5, shield=True):
            await self.ws.close()
        if self.ws.transport is not None and not self.ws.transport.is_closing():
            self.ws.transport.abort()


def _salvage_message_id(raw: str | bytes) -> str:
    try:
        obj = json.loads(raw)
        mid = obj.get("headers", {}).get("messageId")
        return mid if isinstance(mid, str) else ""
    except Exception:
        return ""


def _reason(data_text: str) -> str:
    try:
        return str(json.loads(data_text).get("reason", ""))
    except Exception:
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
        on_callback_now: NowHandler | None = None,
    ) -> None:
        self.config = config
        self.on_callback = on_callback
        self.on_callback_now = on_callback_now
        self._on_state = on_state
        self._http = http
        self.state = STOPPED
        self.state_detail = ""
        self.state_since = time.monotonic()
        self.connections_opened = 0
        self.current: _Connection | None = None
        self._rng = random.Random()

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

    async def open_ticket(self, http: httpx.AsyncClient) -> str:
        """The open-connection call; returns the websocket URL with its single-use ticket."""
        body = {
            "clientId": self.config.app_key,
            "clientSecret": self.config.app_secret,
            "subscriptions": [{"type": "CALLBACK", "topic": BOT_TOPIC}],
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
        return f"{endpoint}?ticket={quote_plus(ticket)}"

    async def _open(self, http: httpx.AsyncClient) -> _Connection:
        url = await self.open_ticket(http)
        try:
            # compression=None: no permessage-deflate. Frames are a few KB of JSON on a connection that
            # idles most of the time; deflating every ack and inflating every frame cost more CPU per
            # message than anything else on the ack path but SQLite (BENCHMARKS.md, fix 6).
            ws = await websockets.connect(
                url,
                open_timeout=10,
                max_size=2**20,
                close_timeout=1,
                compression=None,
                create_connection=_AckingConnection,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise OpenFailed(f"websocket handshake failed: {type(exc).__name__}: {exc}") from exc
        self.connections_opened += 1
        return _Connection(self, ws, uuid.uuid4().hex[:8])

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        own_http = self._http is None
        http = self._http or async_client(max_connections=4)
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
        cfg = self.config
        failures = 0
        draining: _Connection | None = None
        # State first: whoever waits for the start (in another thread, too) finds it connecting, not stopped.
        await self._set_state(CONNECTING, "")
        task_status.started()
        while True:
            attempt = failures + 1
            log.info("[dingtalk] connecting to %s (attempt %d)", cfg.api_base, attempt)
            try:
                conn = await self._open(http)
            except AuthFailed as exc:
                failures += 1
                delay = cfg.reconnect_max_s
                log.error(
                    "[dingtalk] authentication failed (%s): check DINGTALK_APP_KEY / DINGTALK_APP_SECRET "
                    "(app credentials page at open.dingtalk.com); retrying in %.0f s (attempt %d)",
                    exc,
                    delay,
                    attempt,
                )
                await self._set_state(
                    FAILED, "authentication failed: check DINGTALK_APP_KEY / DINGTALK_APP_SECRET"
                )
                await anyio.sleep(delay)
                continue
            except OpenFailed as exc:
                failures += 1
                delay = backoff_delay(failures, cfg.reconnect_initial_s, cfg.reconnect_max_s, self._rng)
                log.warning("[dingtalk] %s; reconnecting in %.1f s (attempt %d)", exc, delay, attempt + 1)
                await self._set_state(RECONNECTING, str(exc))
                await anyio.sleep(delay)
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
            lived = time.monotonic() - conn.opened_at
            if lived >= cfg.healthy_after_s or conn.end_reason == "disconnect":
                failures = 0
            if conn.end_reason == "disconnect":
                draining = conn
                await self._set_state(RECONNECTING, "server requested disconnect")
                continue
            failures += 1
            delay = backoff_delay(failures, cfg.reconnect_initial_s, cfg.reconnect_max_s, self._rng)
            log.warning(
                "[dingtalk] conn %s ended: %s after %.1f s; reconnecting in %.1f s (attempt %d)",
                conn.cid,
                conn.end_reason,
                lived,
                delay,
                failures + 1,
            )
            await self._set_state(RECONNECTING, conn.end_reason)
            await anyio.sleep(delay)


def _error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        code, message, request_id = data.get("code", ""), data.get("message", ""), data.get("requestid", "-")
        return f"{code} {message} (requestid {request_id})".strip()
    except ValueError:
        return resp.text[:200]
