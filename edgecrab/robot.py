"""One robot of the gateway: everything that belongs to it alone, assembled from its config.

A :class:`Robot` owns the robot's DingTalk sender (its token cache and rate limiters: a token is never used
for another app), its card replies and their budget, its delivery ledger view, its runner (its sessions:
the same person talking to two robots has two conversations, since every session key starts with the
robot's name), its commands, its access rules and its agent. It reads its messages from its own
:class:`~edgecrab.dingtalk.intake.Intake`, so a message is always answered by the robot it was sent to.

Robots of one app share one Stream connection (DingTalk pushes an app's callbacks to one of its
connections): the first robot of the app owns it and :class:`~edgecrab.dingtalk.fanout.Fanout` hands each
callback to the robot its ``robotCode`` names. The gateway (:mod:`edgecrab.gateway`) holds the robots by
name with what they share: the store, the hooks, the ops port.
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
from edgecrab.agents.base import Agent
from edgecrab.config import Config, DingTalkConfig
from edgecrab.core.commands import Commands, ConnectionInfo
from edgecrab.core.router import cap_text, parse_command
from edgecrab.core.runs import Runner
from edgecrab.dingtalk.access import AccessPolicy
from edgecrab.dingtalk.attachsend import AttachmentSender
from edgecrab.dingtalk.cardreply import CARD_CALLBACK_TOPIC, card_replies
from edgecrab.dingtalk.connwatch import ConnectionWatch
from edgecrab.dingtalk.convert import FrameError, decode_payload, to_message
from edgecrab.dingtalk.fanout import Fanout
from edgecrab.dingtalk.intake import Intake
from edgecrab.dingtalk.markdown import reply_format
from edgecrab.dingtalk.ratelimit import share
from edgecrab.dingtalk.rest import DingTalkSender
from edgecrab.dingtalk.stream import StreamClient
from edgecrab.events import Message, ReplyRoute
from edgecrab.failover import GAVE_UP_TEXT as GAVE_UP_TEXT  # re-exported: the gateway reads them here
from edgecrab.failover import MAX_RUN_ATTEMPTS as MAX_RUN_ATTEMPTS
from edgecrab.failover import Failover
from edgecrab.hooks.manager import HookManager
from edgecrab.media import MediaStage
from edgecrab.ops.parts import GatewayParts
from edgecrab.outbound import http_client
from edgecrab.replies.answers import Answers
from edgecrab.replies.delivery import Delivery
from edgecrab.replies.proactive import SendRequest, submit
from edgecrab.replies.proactive import send as send_proactive
from edgecrab.store.base import DONE, FAILED, Store

log = logging.getLogger("edgecrab.gateway")

_DINGTALK_CONNECTIONS = 100
"""Connections to DingTalk at once, per robot (httpx's default pool size)."""


class Robot:
    """One robot's parts; :meth:`build` makes them, :meth:`run` runs them until cancelled."""

    def __init__(
        self, config: Config, dt: DingTalkConfig, store: Store, agent: Agent, hooks: HookManager | None
    ) -> None:
        self.config, self.dt, self.store, self.agent, self.hooks = config, dt, store, agent, hooks
        self.name = dt.name
        self.code = dt.robot_code or dt.app_key
        self.access = AccessPolicy(dt)
        self.intake = Intake(store, self.name)
        self.stream: StreamClient | None = None
        """The Stream connection this robot owns (the first robot of its app); None for the others."""
        self.watch = ConnectionWatch(self.code, dt, lambda: self.hooks.notify if self.hooks else None)
        self.ops_url: Callable[[], str] = lambda: ""
        self.schedule_lines: Callable[[], list[str]] = lambda: []
        """The gateway's schedules for ``/status`` (set by the gateway)."""
        self.shares_store = False
        """Other robots use the store too: resume only this robot's unsent chunks at start."""
        self.stream_http: httpx.AsyncClient | None = None

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
                await self.store.inbox_set_state(self.name, msg_id, FAILED, str(exc))
                return
            # A message picked up from the store (data is None) was received before a restart: if it
            # already waited behind another, that notice went out then.
            await self._route(message, resumed=data is None)
        except Exception as exc:
            log.exception("[gateway] handling message %s failed", msg_id)
            await self.store.inbox_set_state(self.name, msg_id, FAILED, f"{type(exc).__name__}: {exc}")
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
        """A recorded callback as this robot's :class:`Message` (``data``: the payload already decoded);
        ``message.robot`` is the robot's name, the start of its session keys."""
        message = to_message(
            data if data is not None else decode_payload(payload),
            stream_message_id=stream_mid,
            robot_code_fallback=self.code,
            scrubbed=True,
            robot_name=self.name,
        )
        return cap_text(message, self.dt.max_inbound_chars)

    async def _route(self, message: Message, *, resumed: bool = False) -> None:
        decision = self.access.decide(message, time.time())
        if not decision.allowed:
            message_event(message, DENIED, decision.reason)
            if decision.notice:
                await self.reply(message, decision.notice, self.runner.key(message))
            await self.store.inbox_set_state(self.name, message.id, DONE, decision.reason)
            return
        hooks = self.hooks
        if hooks is not None:
            await hooks.notify("message_received", message=message)
            if not await hooks.allow("allow_message", message=message):
                message_event(message, VETOED, "by an allow_message hook")
                await self.store.inbox_set_state(self.name, message.id, DONE, "vetoed by hook")
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
            await self.store.inbox_set_state(self.name, message.id, DONE, "unsupported")
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
                        await self.store.inbox_set_state(self.name, message.id, DONE)
                    return
        if not message.text.strip() and not message.attachments and message.quote is None:
            message_event(message, EMPTY)
            await self.reply(message, "👋 Hi! Ask me anything — or send /help to see what I can do.", key)
            await self.store.inbox_set_state(self.name, message.id, DONE, "empty")
            return
        await self.media.submit(message, quiet=resumed)

    async def reply(self, message: Message, text: str, session_key: str) -> None:
        if message.route is None:
            log.error("[gateway] no reply route for message %s; reply dropped", message.id)
            return
        await self.delivery.enqueue(message.route, text, session_key=session_key, message=message)

    async def _delivery_event(self, kind: str, reply: str, error: Any, message: Message | None) -> None:
        if self.hooks is None:
            return
        if kind == "reply_sent":
            await self.hooks.notify("reply_sent", reply=reply, message=message)
        else:
            await self.hooks.notify("send_failed", error=error, reply=reply, message=message)

    async def send(self, **fields: Any) -> str:
        """A proactive message from this robot (:func:`~edgecrab.replies.proactive.send`)."""
        return await send_proactive(self.delivery, self.code, **fields)

    async def send_request(self, request: SendRequest) -> str:
        return await submit(self.delivery, request, self.code)

    # -- lifecycle -----------------------------------------------------------------------------------
    def build(self) -> None:
        """Make the robot's parts (its Stream connection, when it owns one: :meth:`own_stream`)."""
        dt = self.dt
        self.http = http = http_client(timeout=dt.send_timeout_s, max_connections=_DINGTALK_CONNECTIONS)
        self.sender = DingTalkSender(dt, client=http)
        self.cards = card_replies(
            dt, self.sender.tokens, http, self.store, lambda m: self.commands.stop(m), self._stop_elsewhere
        )
        self.delivery = Delivery(
            self.store, self.sender, reply_format(dt), chunk_interval_s=dt.chunk_interval_ms / 1000,
            notify=self._delivery_event,
        )
        agent = self.config.agent_for(dt)
        # An agent's attachments go after its text (answers), through the same ledger (AttachmentSender).
        self.answers = Answers.build(self.config, self.delivery, self.store, agent.attachment_dirs)
        self.delivery.sender = AttachmentSender(self.sender, self.answers.spool)
        if self.shares_store:  # another robot's unsent chunks are its own (its token), not this robot's
            self.delivery.resumes = lambda ckey: ckey.startswith(self.code + ":")
        # Pictures and files people send: downloaded after the ack, before the run (the runner's turns).
        self.media = MediaStage(
            self.config, self.sender.tokens, submit=lambda m, quiet: self.runner.submit(m, quiet=quiet),
            key=lambda m: self.runner.key(m), robot=dt, agent=agent,
            merged=lambda m, first: self.store.inbox_set_state(self.name, m.id, DONE, f"merged into {first}"),
        )
        self.runner = Runner(
            self.config.sessions, self.store, self.agent, self.reply, system_prompt=agent.system_prompt,
            agent_timeout_s=agent.timeout_s, hooks=self.hooks, prepare=self.answers.prepare, live=self.cards,
            turns=self.media,
        )
        self.commands = Commands(
            self.config.commands, self.runner, self.reply, hooks=self.hooks,
            connection=ConnectionInfo(
                self.watch.describe, ops=lambda: self.ops_url(), schedules=lambda: self.schedule_lines(),
                robot=self.name if len(self.config.robots) > 1 else "",
            ),
            cancel_outbox=lambda m: (
                self.delivery.cancel(m.route, session_key=self.runner.key(m)) if m.route else _zero()
            ),
        )
        self.failover = self._replicas()

    def _replicas(self) -> Failover:
        """Failover and rate limits shared by the replicas (without replicas: nothing to share or sweep)."""
        coord, cards = self.runner.coord, self.cards
        if cards is not None:
            cards.replica = coord.replica_id  # the owner of the cards it streams
            cards.sweeps_itself = not coord.shared
        if coord.shared:
            self.sender.share_limits(coord)
            if cards is not None:
                share(cards.client.limiter, coord, f"{self.dt.app_key}:card")
        return Failover(
            self.store, coord, self.name, read=lambda e: self._read_message(e.payload, None),
            reply=lambda m, text: self.reply(m, text, self.runner.key(m)), requeue=self.intake.requeue,
            wake=lambda c: self.delivery.wake(c) if self.delivery.resumes(c) else None,
            every_s=self.config.storage.lease_s / 3, cards=cards.take_over if cards is not None else None,
        )

    async def _stop_elsewhere(self, key: str, route: ReplyRoute) -> None:
        """The stop button of a card another replica streams: ``/stop`` for its session (a signal to the
        replica running it), without an answer (the card shows that it stopped)."""
        await self.runner.stop(key)
        await self.delivery.cancel(route, session_key=key)

    def own_stream(self, fanout: Fanout) -> None:
        """Open (when run) the Stream connection of this robot's app, for the robots of ``fanout`` (built
        first: their cards take the card buttons, :meth:`Fanout.on_card_callback`)."""
        # The Stream client's own HTTP client (open-connection has its own timeouts).
        self.stream_http = http_client(timeout=10.0, max_connections=4)
        topics = {CARD_CALLBACK_TOPIC: fanout.on_card_callback} if fanout.cards else None
        self.stream = StreamClient(
            self.dt, fanout.on_callback, on_state=self.watch.on_state, http=self.stream_http,
            on_callbacks_now=fanout.on_callbacks_now if self.store.records_at_once else None,
            on_callbacks=fanout.on_callbacks,
            topics=topics,
        )
        self.watch.stream = self.stream

    def parts_for_ops(self, stream: StreamClient) -> GatewayParts:
        """What the ops port reads; ``stream``: the connection this robot's messages come on."""
        self.parts = GatewayParts(
            self.code, stream, self.intake, self.sender, self.delivery, self.runner, self.store,
            agent=self.agent.name, name=self.name,
        )
        self.parts.mode, self.parts.cards = self.dt.mode, self.cards
        return self.parts

    async def run(
        self,
        hook_commands: dict[str, Any],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """The robot's tasks (its ledger, cards, runner, ingest, and its Stream connection when it owns
        one), until cancelled; started once it takes messages."""
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.delivery.run)
                if self.cards is not None:
                    await tg.start(self.cards.run)
                await tg.start(self.runner.run)
                await tg.start(self.media.run)
                self.commands.hook_commands = self._own(hook_commands)
                self.intake.requeue(await self.failover.unfinished())
                tg.start_soon(self.failover.run)
                tg.start_soon(self._ingest)
                tg.start_soon(self.answers.run)
                if self.stream is not None and self.dt.mode != "http":
                    tg.start_soon(self.watch.notify)
                    tg.start_soon(self.watch.refuse_to_start)
                    await tg.start(self._serve_stream)
                log.info("%s", self.access.posture())
                task_status.started()
        finally:
            self.intake.close()
            with anyio.move_on_after(1, shield=True):
                await self.http.aclose()
                if self.stream_http is not None:
                    await self.stream_http.aclose()

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

    def _own(self, hook_commands: dict[str, Any]) -> dict[str, Any]:
        """The hook commands this robot has (``register(..., robots=[...])``: /help and /hooks show them)."""
        return {n: c for n, c in hook_commands.items() if not c.robots or self.name in c.robots}

    def reload(self, config: Config, hooks: HookManager, hook_commands: dict[str, Any]) -> None:
        """Apply what can change in place (:meth:`edgecrab.gateway.Gateway.reload`)."""
        dt = config.robot(self.name) or self.dt
        self.config, self.dt, self.hooks = config, dt, hooks
        self.access = AccessPolicy(dt, notice_times=self.access.notice_times)
        self.commands.config = config.commands
        agent = config.agent_for(dt) if not dt.agent or dt.agent in config.agents else config.agent
        self.runner.system_prompt = agent.system_prompt
        self.runner.agent_timeout_s = agent.timeout_s
        self.runner.hooks = self.commands.hooks = hooks
        self.commands.hook_commands = self._own(hook_commands)
        log.info("%s", self.access.posture())


async def _zero() -> int:
    return 0


__all__ = ["GAVE_UP_TEXT", "MAX_RUN_ATTEMPTS", "Robot"]
