"""The gateway: assembles the store, the hooks, the robots (:mod:`edgecrab.robot`) and the ops port from a
Config, and owns the task group they all live in.

Message flow::

    Stream frame --(record in inbox, ack 200: milliseconds)--> the robot's ingest queue
    ingest: convert -> access rules -> hooks (received / allow / prepare) -> command or runner
    runner: agent run per session (busy policy) -> reply text
    delivery: format + chunk -> outbox ledger -> ordered, paced sends (sessionWebhook, OpenAPI fallback)

Each robot has its own sender (token, rate limits), cards, ledger, runner, commands and agent; robots of
one app share its Stream connection (:class:`~edgecrab.dingtalk.fanout.Fanout` routes by ``robotCode``).
The store, the hooks and the ops port are the gateway's.

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
from typing import Any

import anyio
import anyio.abc

from edgecrab.agents import build_agent
from edgecrab.agents.base import Agent
from edgecrab.config import AgentConfig, Config
from edgecrab.core.schedules import build_scheduler
from edgecrab.dingtalk.fanout import Fanout
from edgecrab.hooks.manager import HookManager
from edgecrab.ops.callback import callback_handler
from edgecrab.ops.metrics import GatewayMetrics
from edgecrab.ops.server import OpsServer
from edgecrab.reload import prepare_reload
from edgecrab.replies.proactive import SendRequest, unknown_robot
from edgecrab.robot import GAVE_UP_TEXT, MAX_RUN_ATTEMPTS, Robot
from edgecrab.store import open_store
from edgecrab.store.base import Store
from edgecrab.store.upkeep import housekeeping, store_upkeep

log = logging.getLogger("edgecrab.gateway")


def _first(name: str) -> Any:
    """An attribute of the first robot, as the gateway's (what a one-robot gateway had itself)."""
    return property(lambda self: getattr(self.first, name), doc=f"The first robot's ``{name}``.")


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        agent: Agent | None = None,
        hooks: HookManager | None = None,
    ) -> None:
        """``agent``: the agent of the robots that name none (built from ``config.agent`` when None)."""
        self.config = config
        self.store = store or open_store(config.storage)
        self.hooks = hooks
        self.started = anyio.Event()
        self._reload_lock = anyio.Lock()
        # Loaded with sandbox=True (dummy credentials, the sandbox store): a reload reads it the same way.
        self._sandbox = any(str(v).startswith("sandbox") for v in config.sources.values())
        agents: dict[str, Agent] = {"": agent or build_agent(config.agent)}
        self.robots: dict[str, Robot] = {}
        for dt in config.robots:
            if dt.agent not in agents:
                agents[dt.agent] = build_agent(config.agent_for(dt))
            self.robots[dt.name] = Robot(config, dt, self.store, agents[dt.agent], hooks)
        self.agents = list(agents.values())
        self.first = next(iter(self.robots.values()))

    robot = _first("name")
    agent = _first("agent")
    access = _first("access")
    intake = _first("intake")
    watch = _first("watch")
    stream = _first("stream")
    sender = _first("sender")
    cards = _first("cards")
    delivery = _first("delivery")
    runner = _first("runner")
    commands = _first("commands")
    parts = _first("parts")
    answers = _first("answers")
    media = _first("media")

    def robot_named(self, name: str) -> Robot:
        """The robot called ``name`` (empty: the first); ValueError naming the robots there are."""
        robot = self.robots.get(name) if name else self.first
        if robot is None:
            raise ValueError(unknown_robot(name, list(self.robots)))
        return robot

    async def send(self, robot: str = "", **fields: Any) -> str:
        """A proactive message through a robot's ledger, for hooks: ``gateway.send(robot=..., user=... |
        group=..., text=..., at=, format=, title=)`` (:func:`edgecrab.replies.proactive.send`; ``robot``
        empty: the first robot); the delivery id."""
        return await self.robot_named(robot).send(robot=robot, **fields)

    async def send_request(self, request: SendRequest) -> str:
        """:meth:`send` for a :class:`~edgecrab.replies.proactive.SendRequest` (``POST /v1/send``)."""
        return await self.robot_named(request.robot).send_request(request)

    def _agent_for(self, robot: str) -> tuple[Agent, AgentConfig]:
        """A robot's agent and its configuration (for ``prompt`` schedules)."""
        named = self.robot_named(robot)
        return named.agent, self.config.agent_for(named.dt)

    # -- lifecycle -----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.schedules = build_scheduler(self.config, self.store, self._agent_for, self.send_request)
        apps: dict[str, list[Robot]] = {}
        for robot in self.robots.values():
            apps.setdefault(robot.dt.app_key, []).append(robot)
        for owner, *others in apps.values():
            for robot in others:
                robot.watch = owner.watch  # one connection: one state, one /status line for it
            for robot in (owner, *others):
                robot.shares_store = len(self.robots) > 1
                robot.ops_url = lambda: self.ops.url if self.ops.port else ""
                robot.schedule_lines = self.schedules.status_lines
                robot.build()
            cards = [r.cards for r in (owner, *others) if r.cards is not None]
            owner.own_stream(Fanout({r.code: r.intake for r in (owner, *others)}, cards))
        parts = []
        for owner, *others in apps.values():
            assert owner.stream is not None  # built in http mode too (not run): the ops port reads it
            parts += [r.parts_for_ops(owner.stream) for r in (owner, *others)]
        for part in parts:
            part.schedules = self.schedules
        self.metrics = GatewayMetrics(parts)
        for robot in self.robots.values():
            self.metrics.attach(robot.parts, robot.http, *([robot.stream_http] if robot.stream_http else []))
        first, dt = self.first, self.first.dt
        callback = callback_handler(dt.app_secret, first.intake.on_callback) if dt.mode == "http" else None
        self.ops = OpsServer(
            self.config.http, parts[0], self.metrics, callback=callback, reload=self.reload,
            send=self.send_request, robots=parts,
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            if self.hooks is None:
                self.hooks = HookManager.load(self.config.hooks)
            for robot in self.robots.values():
                robot.hooks = self.hooks
            await self.store.open()
        except BaseException:
            # Start-up refused (a hook file that cannot load, storage that cannot open): close what exists.
            for robot in self.robots.values():
                robot.intake.close()
            raise
        self._build()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.ops.run)  # first: /healthz answers while the rest starts
                hook_commands = dict(await self.hooks.register_commands())
                _unknown_command_robots(hook_commands, list(self.robots))
                for robot in self.robots.values():
                    await tg.start(robot.run, hook_commands)
                tg.start_soon(housekeeping, self.store, self.config.sessions.idle_expiry_s)
                tg.start_soon(store_upkeep, self.store)
                await tg.start(self.schedules.run)
                if self.first.dt.mode == "http":
                    log.info(
                        "[dingtalk] http mode: receiving robot callbacks at %s%s (no Stream connection)",
                        self.ops.url, self.config.http.callback_path,
                    )
                for robot in self.robots.values():
                    log.info(
                        "[gateway] started: robot %s, agent %s, busy policy %s, group scope %s",
                        robot.code if len(self.robots) == 1 else f"{robot.name} ({robot.code})",
                        robot.agent.name, self.config.sessions.busy_policy, self.config.sessions.group_scope,
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
            with anyio.move_on_after(1, shield=True):
                for agent in self.agents:
                    await agent.aclose()
                await self.store.close()
            log.info("[gateway] stopped")

    # -- reload --------------------------------------------------------------------------------------
    async def reload(self) -> list[str]:
        """Re-read the config file and the hooks (SIGHUP, ``POST /reload``) and apply what can change in
        place (:func:`edgecrab.reload.prepare_reload`): each robot's access rules, commands and agent
        prompt and timeout, the hooks. Returns the errors (empty when applied)."""
        async with self._reload_lock:
            ready = await prepare_reload(self.config, sandbox=self._sandbox)
            if isinstance(ready, list):
                return ready
            self.config = ready.config
            self.hooks = ready.hooks
            _unknown_command_robots(ready.hook_commands, list(self.robots))
            for robot in self.robots.values():
                robot.reload(ready.config, ready.hooks, ready.hook_commands)
            return []


def _unknown_command_robots(hook_commands: dict[str, Any], robots: list[str]) -> None:
    """Log each hook command registered for a robot this gateway does not have (a typo: no robot has it)."""
    for command in hook_commands.values():
        unknown = [r for r in command.robots if r not in robots]
        if unknown:
            log.warning(
                "[hooks] %s: %s is registered for robot(s) %s, which this gateway does not have (its robots: "
                "%s)", command.plugin, command.name, ", ".join(unknown), ", ".join(robots),
            )


__all__ = ["GAVE_UP_TEXT", "MAX_RUN_ATTEMPTS", "Gateway"]
