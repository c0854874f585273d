"""The gateway: assembles store, hooks, agent, DingTalk adapter, runner and delivery from a Config,
and owns the task group they all live in.

Message flow::

    Stream frame --(record in inbox, ack 200: milliseconds)--> ingest queue
    ingest: convert -> access rules -> hooks (received / allow / prepare) -> command or runner
    runner: agent run per session (busy policy) -> reply text
    delivery: format + chunk -> outbox ledger -> ordered, paced sends (sessionWebhook, OpenAPI fallback)

Everything runs on one event loop. The ack path (read a frame, record it, ack it) does no more than that:
the Stream connection records the frame as soon as ``recv()`` returns it
(:meth:`~edgecrab.dingtalk.intake.Intake.on_callbacks_now`, one synchronous commit) and then sends its ack;
the message then waits in the ingest queue. The store
commits the other writes in groups (2 ms windows), which keeps the loop's steps, and so the wait of a frame
that arrives during one, short.
(The ack path ran in a thread of its own for a while: under load the two threads queued for the GIL, which
cost a fifth of the throughput and, once the main loop became cheaper, made acks slower, not faster:
BENCHMARKS.md, fix 6.)

Cancelling :meth:`Gateway.run` stops every task; nothing outlives it. The process around it (signals,
garbage collection, ``edgecrab gateway start``) is :mod:`edgecrab.serve`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import httpx

from edgecrab.activity import COMMAND, DENIED, EMPTY, UNSUPPORTED, VETOED, message_event
from edgecrab.agents import build_agent
from edgecrab.agents.base import Agent
from edgecrab.config import Config
from edgecrab.core.commands import Commands, ConnectionInfo
from edgecrab.core.router import cap_text, parse_command
from edgecrab.core.runs import Runner
from edgecrab.dingtalk.access import AccessPolicy
from edgecrab.dingtalk.cardreply import CARD_CALLBACK_TOPIC, card_replies
from edgecrab.dingtalk.connwatch import ConnectionWatch
from edgecrab.dingtalk.convert import FrameError, decode_payload, to_message
from edgecrab.dingtalk.intake import Intake
from edgecrab.dingtalk.markdown import reply_format
from edgecrab.dingtalk.ratelimit import share
from edgecrab.dingtalk.rest import DingTalkSender
from edgecrab.dingtalk.stream import StreamClient
from edgecrab.events import Message
from edgecrab.failover import GAVE_UP_TEXT as GAVE_UP_TEXT  # re-exported: tests read them here
from edgecrab.failover import MAX_RUN_ATTEMPTS as MAX_RUN_ATTEMPTS
from edgecrab.failover import Failover
from edgecrab.hooks.manager import HookManager
from edgecrab.ops.callback import callback_handler
from edgecrab.ops.metrics import GatewayMetrics
from edgecrab.ops.parts import GatewayParts
from edgecrab.ops.server import OpsServer
from edgecrab.outbound import http_client
from edgecrab.reload import prepare_reload
from edgecrab.replies.delivery import Delivery
from edgecrab.replies.proactive import SendRequest, submit
from edgecrab.replies.proactive import send as send_proactive
from edgecrab.store import open_store
from edgecrab.store.base import DONE, FAILED, OutboxChunk, Store
from edgecrab.store.upkeep import housekeeping, store_upkeep

log = logging.getLogger("edgecrab.gateway")

_DINGTALK_CONNECTIONS = 100
"""Connections to DingTalk at once (httpx's default pool size, which the gateway used before)."""


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        agent: Agent | None = None,
        hooks: HookManager | None = None,
    ) -> None:
        self.config = config
        dt = config.dingtalk
        self.robot = dt.robot_code or dt.app_key
        self.store = store or open_store(config.storage)
        self.agent = agent or build_agent(config.agent)
        self.hooks = hooks
        self.access = AccessPolicy(dt)
        self.stream: StreamClient | None = None
        self.started = anyio.Event()
        self.intake = Intake(self.store, self.robot)
        self._reload_lock = anyio.Lock()
        # Loaded with sandbox=True (dummy credentials, the sandbox store): a reload reads it the same way.
        self._sandbox = any(str(v).startswith("sandbox") for v in config.sources.values())
        self.watch = ConnectionWatch(self.robot, dt, lambda: self.hooks.notify if self.hooks else None)

    # -- ingest --------------------------------------------------------------------------------------
    async def _ingest(self) -> None:
        while True:
            await self._process(*await self.intake.get())

    async def _process(self, msg_id: str, stream_mid: str, payload: str, data: dict[str, Any] | None) -> None:
        message: Message | None = None
        try:
            try:
                message = self._read_message(payload, data, stream_mid)
            except (FrameError, ValueError) as exc:
                log.warning("[dingtalk] message %s cannot be read: %s", msg_id, exc)
                await self.store.inbox_set_state(self.robot, msg_id, FAILED, str(exc))
                return
            # A message picked up from the store (data is None) was received before a restart: if it
            # already waited behind another, that notice went out then.
            await self._route(message, resumed=data is None)
        except Exception as exc:
            log.exception("[gateway] handling message %s failed", msg_id)
            await self.store.inbox_set_state(self.robot, msg_id, FAILED, f"{type(exc).__name__}: {exc}")
            if message is not None:
                text = None
                if self.hooks is not None:
                    text = await self.hooks.first("handle_error", error=exc, message=message)
                await self.reply(
                    message,
                    text or "⚠️ Sorry — something went wrong while handling your message. Please try again.",
                    self.runner.key(message),
                )

    def _read_message(self, payload: str, data: dict[str, Any] | None, stream_mid: str = "") -> Message:
        """A recorded callback as this robot's :class:`Message` (``data``: the payload already decoded)."""
        message = to_message(
            data if data is not None else decode_payload(payload),
            stream_message_id=stream_mid,
            robot_code_fallback=self.robot,
            scrubbed=True,
        )
        return cap_text(message.replace(robot=self.robot), self.config.dingtalk.max_inbound_chars)

    async def _route(self, message: Message, *, resumed: bool = False) -> None:
        decision = self.access.decide(message, time.time())
        if not decision.allowed:
            message_event(message, DENIED, decision.reason)
            if decision.notice:
                await self.reply(message, decision.notice, self.runner.key(message))
            await self.store.inbox_set_state(self.robot, message.id, DONE, decision.reason)
            return
        hooks = self.hooks
        if hooks is not None:
            await hooks.notify("message_received", message=message)
            if not await hooks.allow("allow_message", message=message):
                message_event(message, VETOED, "by an allow_message hook")
                await self.store.inbox_set_state(self.robot, message.id, DONE, "vetoed by hook")
                return
            message = await hooks.pipeline("prepare_message", "message", message)
        key = self.runner.key(message)
        if message.unsupported:
            message_event(message, UNSUPPORTED, message.msgtype)
            await self.reply(
                message,
                f"⚠️ Sorry, I can't read this kind of message yet ({message.msgtype}). "
                "Please send it as text.",
                key,
            )
            await self.store.inbox_set_state(self.robot, message.id, DONE, "unsupported")
            return
        command = parse_command(message.text) if not message.attachments else None
        if command is not None:
            if (
                command.name in ("/retry",)
                or self.commands.is_known(command)
                or not self.config.commands.forward_unknown
            ):
                handled = await self.commands.handle(command, message)
                if handled:
                    if command.name != "/retry":  # /retry: the runner's line says what became of it
                        message_event(message, COMMAND, command.name)
                        await self.store.inbox_set_state(self.robot, message.id, DONE)
                    return
        if not message.text.strip() and not message.attachments and message.quote is None:
            message_event(message, EMPTY)
            await self.reply(message, "👋 Hi! Ask me anything — or send /help to see what I can do.", key)
            await self.store.inbox_set_state(self.robot, message.id, DONE, "empty")
            return
        await self.runner.submit(message, quiet=resumed)

    async def reply(self, message: Message, text: str, session_key: str) -> None:
        if message.route is None:
            log.error("[gateway] no reply route for message %s; reply dropped", message.id)
            return
        await self.delivery.enqueue(message.route, text, session_key=session_key, message=message)

    def _prepare_reply(
        self, message: Message, text: str, session_key: str
    ) -> tuple[list[OutboxChunk], Callable[[], None]]:
        """A run's answer as ledger chunks: the runner records them with the run's end, in one write."""
        if message.route is None:
            log.error("[gateway] no reply route for message %s; reply dropped", message.id)
            return [], _nothing
        prepared = self.delivery.prepare(message.route, text, session_key=session_key, message=message)
        return prepared.chunks, lambda: self.delivery.recorded(prepared)

    async def _delivery_event(self, kind: str, reply: str, error: Any, message: Message | None) -> None:
        if self.hooks is None:
            return
        if kind == "reply_sent":
            await self.hooks.notify("reply_sent", reply=reply, message=message)
        else:
            await self.hooks.notify("send_failed", error=error, reply=reply, message=message)

    async def _serve_stream(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The Stream connection and the ack path, for as long as this task runs."""
        assert self.stream is not None
        try:
            await self.stream.run(task_status=task_status)
        finally:
            with anyio.move_on_after(0.5, shield=True):
                await self.watch.drain()  # "stopped", as the client ended

    async def send(self, **fields: Any) -> str:
        """A proactive message through this gateway's ledger, for hooks: ``gateway.send(user=... | group=...,
        text=..., at=, format=, title=)`` (:func:`edgecrab.replies.proactive.send`); the delivery id."""
        return await send_proactive(self.delivery, self.robot, **fields)

    async def send_request(self, request: SendRequest) -> str:
        """:meth:`send` for a :class:`~edgecrab.replies.proactive.SendRequest` (``POST /v1/send``)."""
        return await submit(self.delivery, request, self.robot)

    # -- lifecycle -----------------------------------------------------------------------------------
    def _build(self, http: httpx.AsyncClient) -> None:
        dt = self.config.dingtalk
        fmt = reply_format(dt)
        self.sender = DingTalkSender(dt, client=http)
        self.cards = card_replies(dt, self.sender.tokens, http, self.store, lambda m: self.commands.stop(m))
        self.delivery = Delivery(
            self.store,
            self.sender,
            fmt,
            chunk_interval_s=dt.chunk_interval_ms / 1000,
            notify=self._delivery_event,
        )
        self.runner = Runner(
            self.config.sessions,
            self.store,
            self.agent,
            self.reply,
            system_prompt=self.config.agent.system_prompt,
            agent_timeout_s=self.config.agent.timeout_s,
            hooks=self.hooks,
            prepare=self._prepare_reply,
            live=self.cards,
        )
        self.commands = Commands(
            self.config.commands,
            self.runner,
            self.reply,
            hooks=self.hooks,
            connection=ConnectionInfo(self.watch.describe, ops=lambda: self.ops.url if self.ops.port else ""),
            cancel_outbox=lambda m: (
                self.delivery.cancel(m.route, session_key=self.runner.key(m)) if m.route else _zero()
            ),
        )
        # The Stream client's own HTTP client (open-connection has its own timeouts), here for the metrics.
        self._stream_http = http_client(timeout=10.0, max_connections=4)
        self.stream = StreamClient(
            dt,
            self.intake.on_callback,
            on_state=self.watch.on_state,
            http=self._stream_http,
            on_callbacks_now=self.intake.on_callbacks_now if self.store.records_at_once else None,
            topics={CARD_CALLBACK_TOPIC: self.cards.on_callback} if self.cards is not None else None,
        )
        self.watch.stream = self.stream
        self.failover = self._replicas()
        self.parts = GatewayParts(
            self.robot, self.stream, self.intake, self.sender, self.delivery, self.runner, self.store,
            agent=self.agent.name,
        )
        self.parts.mode, self.parts.cards = dt.mode, self.cards
        self.metrics = GatewayMetrics(self.parts)
        self.metrics.attach(http, self._stream_http)
        callback = callback_handler(dt.app_secret, self.intake.on_callback) if dt.mode == "http" else None
        self.ops = OpsServer(
            self.config.http, self.parts, self.metrics, callback=callback, reload=self.reload,
            send=self.send_request,
        )

    def _replicas(self) -> Failover:
        """Failover and rate limits shared by the replicas (without replicas: nothing to share or sweep)."""
        coord = self.runner.coord
        if coord.shared:
            self.sender.share_limits(coord)
            if self.cards is not None:
                share(self.cards.client.limiter, coord, f"{self.config.dingtalk.app_key}:card")
        return Failover(
            self.store, self.runner.coord, self.robot, read=lambda e: self._read_message(e.payload, None),
            reply=lambda m, text: self.reply(m, text, self.runner.key(m)), requeue=self.intake.requeue,
            wake=self.delivery.wake, every_s=self.config.storage.lease_s / 3,
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            if self.hooks is None:
                self.hooks = HookManager.load(self.config.hooks)
            await self.store.open()
        except BaseException:
            # Start-up refused (a hook file that cannot load, storage that cannot open): close what exists.
            self.intake.close()
            raise
        http = http_client(timeout=self.config.dingtalk.send_timeout_s, max_connections=_DINGTALK_CONNECTIONS)
        self._build(http)
        assert self.stream is not None
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.ops.run)  # first: /healthz answers while the rest starts
                await tg.start(self.delivery.run)
                if self.cards is not None:
                    await tg.start(self.cards.run)
                await tg.start(self.runner.run)
                self.commands.hook_commands = dict(await self.hooks.register_commands())
                self.intake.requeue(await self.failover.unfinished())
                tg.start_soon(self.failover.run)
                tg.start_soon(self._ingest)
                tg.start_soon(housekeeping, self.store, self.config.sessions.idle_expiry_s)
                tg.start_soon(store_upkeep, self.store)
                if self.config.dingtalk.mode == "http":
                    log.info(
                        "[dingtalk] http mode: receiving robot callbacks at %s%s (no Stream connection)",
                        self.ops.url, self.config.http.callback_path,
                    )
                else:
                    tg.start_soon(self.watch.notify)
                    tg.start_soon(self.watch.refuse_to_start)
                    await tg.start(self._serve_stream)
                log.info("%s", self.access.posture())
                log.info(
                    "[gateway] started: robot %s, agent %s, busy policy %s, group scope %s",
                    self.robot,
                    self.agent.name,
                    self.config.sessions.busy_policy,
                    self.config.sessions.group_scope,
                )
                await self.hooks.notify("gateway_started", gateway=self)
                self.started.set()
                task_status.started()
                try:
                    await anyio.sleep_forever()
                finally:
                    with anyio.move_on_after(1, shield=True):
                        await self.hooks.notify("gateway_stopping", gateway=self)
                    tg.cancel_scope.cancel()
        finally:
            self.intake.close()
            with anyio.move_on_after(1, shield=True):
                await self.agent.aclose()
                await http.aclose()
                await self._stream_http.aclose()
                await self.store.close()
            log.info("[gateway] stopped")

    # -- reload --------------------------------------------------------------------------------------
    async def reload(self) -> list[str]:
        """Re-read the config file and the hooks (SIGHUP, ``POST /reload``) and apply what can change in
        place (:func:`edgecrab.reload.prepare_reload`). Returns the errors (empty when applied)."""
        async with self._reload_lock:
            ready = await prepare_reload(self.config, sandbox=self._sandbox)
            if isinstance(ready, list):
                return ready
            new = self.config = ready.config
            self.access = AccessPolicy(new.dingtalk, notice_times=self.access.notice_times)
            self.commands.config = new.commands
            self.runner.system_prompt = new.agent.system_prompt
            self.runner.agent_timeout_s = new.agent.timeout_s
            self.hooks = self.runner.hooks = self.commands.hooks = ready.hooks
            self.commands.hook_commands = ready.hook_commands
            log.info("%s", self.access.posture())
            return []


async def _zero() -> int:
    return 0


def _nothing() -> None:
    return None


__all__ = ["Gateway"]
