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
  The agent never runs here: the ack leaves within milliseconds.

The gateway runs this client in a thread of its own, with its own event loop (:func:`run_in_thread`): the
ack path (read a frame, record it, send the ack) then never waits behind the agent runs, hooks and sends on
the main loop.

Health: exponential backoff (1 s doubling, capped, with jitter) that resets once a connection stayed up
``healthy_after_s``; an idle watchdog reconnects when no frame at all arrived for ``idle_timeout_s``
(a "zombie" socket whose websocket pings still work but which delivers nothing); 401 ``authFailed``
keeps retrying at the cap with a hint about the credentials. Every state change is logged with a
``[dingtalk]`` prefix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import anyio
import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from edgecrab import __version__
from edgecrab.config import DingTalkConfig
from edgecrab.dingtalk.convert import Frame, FrameError, ack_frame, parse_frame
from edgecrab.httpclient import async_client

log = logging.getLogger("edgecrab.dingtalk.stream")

THREAD_SWITCH_INTERVAL_S = 0.001
"""``sys.setswitchinterval`` while a :func:`run_in_thread` thread runs. A thread waiting for the GIL gets it
only once the holder has run this long (default 5 ms), and the ack path needs the GIL several times per
frame (socket read, SQLite, socket write) while the main loop is busy. 1 ms bounds each wait; the cost, a
forced switch at most every millisecond, is paid only while both threads want to run. (Measured in
scenario 2 of the benchmarks, 0.2, 0.5, 1 and 5 ms were within the machine's noise of one another, 1 ms
a little ahead: BENCHMARKS.md, fix 4.)"""
_switch_lock = threading.Lock()
_switch_saved: list[float] = []

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


class _Connection:
    """One websocket: reads frames until it closes, idles out, or is told to go away."""

    def __init__(self, client: StreamClient, ws: ClientConnection, cid: str) -> None:
        self.client = client
        self.ws = ws
        self.cid = cid
        self.server_id = ""
        self.opened_at = time.monotonic()
        self.frames = 0
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
                with anyio.move_on_after(idle):
                    raw = await self.ws.recv()
                if raw is None:
                    log.warning(
                        "[dingtalk] conn %s: no frame for %.0f s; forcing a reconnect", self.cid, idle
                    )
                    self._end("idle")
                    return
                self.frames += 1
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
            self.server_id = headers["connectionId"]
            log.info("[dingtalk] conn %s is server connection %s", self.cid, self.server_id)
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
    ) -> None:
        self.config = config
        self.on_callback = on_callback
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
            ws = await websockets.connect(url, open_timeout=10, max_size=2**20, close_timeout=1)
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


class _ThreadStarted:
    """The ``task_status`` a body running in another thread reports its start through."""

    def __init__(self, report: Callable[[], None]) -> None:
        self._report = report

    def started(self, value: Any = None) -> None:
        self._report()


async def run_in_thread(
    body: Callable[[anyio.abc.TaskStatus[None]], Awaitable[None]],
    *,
    name: str,
    stop_grace_s: float = 1.0,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``body(task_status)`` in a new thread with its own event loop, for as long as this task runs.

    This task stands for the thread in the caller's task group: it reports started when ``body`` does,
    ends (or raises) when ``body`` does, and when cancelled it cancels ``body`` in its thread and waits,
    shielded, up to ``stop_grace_s`` for the thread and its event loop to end. The thread's loop is closed
    by then, default executor included: nothing of it outlives this task.
    """
    main_loop = asyncio.get_running_loop()
    started, ended = anyio.Event(), anyio.Event()
    lock = threading.Lock()
    stop_requested = False
    thread_loop: asyncio.AbstractEventLoop | None = None
    thread_scope: anyio.CancelScope | None = None
    error: BaseException | None = None

    def set_all(events: tuple[anyio.Event, ...]) -> None:
        for event in events:
            event.set()

    def tell_main(*events: anyio.Event) -> None:
        # One callback for several events: their order holds on the main loop.
        try:
            main_loop.call_soon_threadsafe(set_all, events)
        except RuntimeError:  # the main loop is closed: nobody is waiting any more
            pass

    async def thread_main() -> None:
        nonlocal thread_loop, thread_scope
        with anyio.CancelScope() as scope:
            with lock:
                thread_loop, thread_scope = asyncio.get_running_loop(), scope
                if stop_requested:
                    scope.cancel()
            await body(_ThreadStarted(lambda: tell_main(started)))

    def target() -> None:
        nonlocal error
        try:
            anyio.run(thread_main)
        except BaseException as exc:  # handed to the main thread, raised there
            error = exc
        finally:
            tell_main(ended, started)  # ended first: a start that never came is seen as such

    def stop() -> None:
        nonlocal stop_requested
        with lock:
            stop_requested = True
            loop, scope = thread_loop, thread_scope
        if loop is not None and scope is not None:
            try:
                loop.call_soon_threadsafe(scope.cancel)
            except RuntimeError:  # its loop is already closed: the thread is ending by itself
                pass

    thread = threading.Thread(target=target, name=name, daemon=True)
    _lower_switch_interval()
    try:
        thread.start()
    except BaseException:  # no thread could be made
        _restore_switch_interval()
        raise
    try:
        await started.wait()
        if not ended.is_set():
            task_status.started()
            await ended.wait()
    finally:
        stop()
        with anyio.move_on_after(stop_grace_s, shield=True):
            await ended.wait()
        if ended.is_set() or not thread.is_alive():
            thread.join()  # it has only to return now
            _restore_switch_interval()
        else:
            log.error("[dingtalk] thread %s did not stop within %.1f s", name, stop_grace_s)
    if error is not None:
        raise error


def _lower_switch_interval() -> None:
    with _switch_lock:
        _switch_saved.append(sys.getswitchinterval())
        sys.setswitchinterval(min(_switch_saved[0], THREAD_SWITCH_INTERVAL_S))


def _restore_switch_interval() -> None:
    """Back to the interval from before the first thread, once the last one has ended."""
    with _switch_lock:
        first = _switch_saved.pop(0) if len(_switch_saved) == 1 else _switch_saved.pop()
        if not _switch_saved:
            sys.setswitchinterval(first)
