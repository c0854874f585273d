"""Schedules: messages the robot sends on its own at the slots of a cron expression (``schedules:``).

:class:`Scheduler` runs in the gateway's task group, one task per schedule: wait for the next slot
(:class:`Clock`, injected by tests), claim it in the store, then send, through the gateway's
proactive-send path (:func:`~edgecrab.replies.proactive.submit`: the delivery ledger, in order, paced,
retried). A ``prompt`` schedule first asks the robot's agent (:class:`AgentAsk`) in a session of its own.

**Once per slot.** A slot is sent only after :meth:`~edgecrab.store.base.Store.schedule_claim` recorded it
as fired, an atomic "advance to this slot if it is later": a restart in the same slot finds it claimed, and
of several replicas sharing a Redis store exactly one wins it. The claim comes before the send, so a crash
between the two loses that one message rather than sending it twice (for a ``prompt``, the agent's answer
is awaited in between).

**Catch-up.** At start, the latest slot that passed while the gateway was down fires at once when it is at
most ``schedules_catch_up_s`` old; an older one is recorded and logged as skipped (earlier missed slots are
not replayed: one reminder, not a burst). A schedule seen for the first time is *armed*: only slots after
that instant are due. While running, a slot woken up late (a suspended host, a stepped clock) still fires
within :data:`LATE_GRACE_S` or the catch-up window, whichever is longer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Protocol

import anyio
import anyio.abc

from edgecrab.agents.base import Agent
from edgecrab.config.model import AgentConfig, Config, ScheduleConfig
from edgecrab.core.agentcall import call_agent
from edgecrab.core.cron import CronTimes, resolve_zone, span, when_text
from edgecrab.events import AgentRequest
from edgecrab.replies.proactive import SendRequest
from edgecrab.store.base import ARMED, FIRED, SKIPPED, Store, Turn, UsageDelta

log = logging.getLogger("edgecrab.core.schedules")

LATE_GRACE_S = 60.0
"""A running gateway still sends a slot it woke up for this late (a busy or suspended host)."""
RETRY_S = 30.0
"""After a failure (the store unreachable), a schedule tries again this much later."""


class Clock(Protocol):
    """Wall-clock time and waiting for it: :class:`SystemClock`, or a fake one in tests."""

    def now(self) -> float: ...

    async def sleep_until(self, when: float) -> None: ...


class SystemClock:
    """``time.time()``; waits in naps of at most a minute, re-reading the clock after each, so a clock
    stepped by NTP or a suspended host does not make a schedule sleep past its slot."""

    MAX_NAP_S = 60.0

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        while True:
            left = when - time.time()
            if left <= 0:
                return
            await anyio.sleep(min(left, self.MAX_NAP_S))


Send = Callable[[SendRequest], Awaitable[str]]
"""The gateway's proactive send (:meth:`Gateway.send_request <edgecrab.gateway.Gateway.send_request>`):
records the request in the delivery ledger and returns its delivery id."""
Ask = Callable[[ScheduleConfig, float], Awaitable[str | None]]
"""Asks a ``prompt`` schedule's agent for the slot: the answer, or None when it failed (logged)."""


def session_key(schedule: ScheduleConfig) -> str:
    """The session a ``prompt`` schedule's agent runs in: its own, apart from every chat."""
    return f"schedule:{schedule.robot}:{schedule.name}"


def target_text(schedule: ScheduleConfig) -> str:
    """``group cid…`` or ``users a, b``, and ``@x`` names; the robot when not the default."""
    text = f"group {schedule.group}" if schedule.group else f"users {', '.join(schedule.users)}"
    if schedule.at:
        text += " @" + " @".join(schedule.at)
    return f"{schedule.robot}: {text}" if schedule.robot != "default" else text


@dataclass
class Schedule:
    """One configured schedule and where it stands in this process."""

    config: ScheduleConfig
    times: CronTimes
    zone_name: str
    handled: float = 0.0
    """The last slot fired or skipped (or when the schedule was armed): only later slots are due."""
    next_run: float | None = None
    last_fired: float | None = None

    @classmethod
    def of(cls, config: ScheduleConfig) -> Schedule:
        zone_name, zone = resolve_zone(config.timezone)
        return cls(config, CronTimes(config.cron, zone), zone_name)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def zone(self) -> tzinfo:
        return self.times.zone


class Scheduler:
    """Every schedule of one gateway: started with ``await tg.start(scheduler.run)``."""

    def __init__(
        self,
        schedules: Sequence[ScheduleConfig],
        store: Store,
        send: Send,
        *,
        ask: Ask | None = None,
        catch_up_s: float = 300.0,
        clock: Clock | None = None,
    ) -> None:
        self.schedules = [Schedule.of(s) for s in schedules]
        self.store = store
        self.send = send
        self.ask = ask
        self.catch_up_s = catch_up_s
        self.clock: Clock = clock or SystemClock()
        self.fired = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if not self.schedules:
            task_status.started()
            return
        async with anyio.create_task_group() as tg:
            for schedule in self.schedules:
                tg.start_soon(self._follow, schedule)
            task_status.started()

    async def _follow(self, s: Schedule) -> None:
        started = False
        while True:
            try:
                if not started:
                    await self._start(s)
                    started = True
                slot = s.times.next_after(max(self.clock.now(), s.handled))
                s.next_run = slot
                await self.clock.sleep_until(slot)
                await self._due(s, slot, grace=max(self.catch_up_s, LATE_GRACE_S))
            except Exception as exc:
                log.error(
                    "[schedules] %s: %s: %s; trying again in %.0f s", s.name, type(exc).__name__, exc, RETRY_S
                )
                await self.clock.sleep_until(self.clock.now() + RETRY_S)

    async def _start(self, s: Schedule) -> None:
        """Arm a new schedule, or catch up the slot missed while the gateway was down."""
        record = (await self.store.schedule_records()).get(s.name)
        now = self.clock.now()
        if record is None:
            await self.store.schedule_claim(s.name, now, ARMED, now)
            s.handled = now
            log.info(
                "[schedules] %s: new schedule (%s, %s); first run %s",
                s.name,
                s.config.cron,
                s.zone_name,
                when_text(s.times.next_after(now), s.zone, now),
            )
            return
        s.handled, s.last_fired = record.slot, record.fired_slot
        due = s.times.latest_at_or_before(now)
        if due > record.slot:
            await self._due(s, due, grace=self.catch_up_s, missed=True)
        elif record.outcome == FIRED and record.slot == due:
            log.info(
                "[schedules] %s: the slot of %s already fired; next %s",
                s.name,
                when_text(due, s.zone),
                when_text(s.times.next_after(now), s.zone, now),
            )

    async def _due(self, s: Schedule, slot: float, *, grace: float, missed: bool = False) -> None:
        now = self.clock.now()
        at = when_text(slot, s.zone)
        if now - slot > grace:
            if await self.store.schedule_claim(s.name, slot, SKIPPED, now):
                why = "missed while the gateway was down" if missed else "woken up too late"
                log.warning(
                    "[schedules] %s: the slot of %s was %s (%s ago, more than %.0f s): skipped",
                    s.name,
                    at,
                    why,
                    span(now - slot),
                    grace,
                )
            s.handled = max(s.handled, slot)
            return
        claimed = await self.store.schedule_claim(s.name, slot, FIRED, now)
        s.handled = max(s.handled, slot)
        if not claimed:
            log.info("[schedules] %s: the slot of %s was already fired (by another replica)", s.name, at)
            return
        s.last_fired = slot
        self.fired += 1
        late = " (missed while the gateway was down; catching up)" if missed else ""
        log.info("[schedules] %s: firing the slot of %s%s", s.name, at, late)
        await self._send(s, slot)

    async def _send(self, s: Schedule, slot: float) -> None:
        c = s.config
        text = c.text
        if c.prompt:
            if self.ask is None:
                raise RuntimeError("no agent to ask for a prompt schedule")
            answer = await self.ask(c, slot)
            if answer is None:
                return  # the agent failed: logged by ask; nothing to send
            text = answer
        request = SendRequest(
            text=text, users=c.users, group=c.group, at=c.at, fmt=c.format, title=c.title, robot=c.robot
        )
        delivery_id = await self.send(request)
        log.info("[schedules] %s: sent to %s (delivery %s)", s.name, target_text(c), delivery_id)

    def status_lines(self) -> list[str]:
        """For admins' ``/status``: one line per schedule with its next run."""
        now = self.clock.now()
        return [
            f"- Schedule **{s.name}** (`{s.config.cron}`, {s.zone_name}): next "
            f"{when_text(s.next_run or s.times.next_after(now), s.zone, now)}"
            for s in self.schedules
        ]

    def status(self) -> list[dict[str, object]]:
        """For ``GET /status``: each schedule's next run and last fired slot (ISO 8601, its zone)."""
        now = self.clock.now()
        return [
            {
                "name": s.name,
                "cron": s.config.cron,
                "timezone": s.zone_name,
                "target": target_text(s.config),
                "next_run": s.times.local(s.next_run or s.times.next_after(now)).isoformat(),
                "last_fired": s.times.local(s.last_fired).isoformat() if s.last_fired else None,
            }
            for s in self.schedules
        ]


def build_scheduler(
    config: Config, store: Store, agent_for: Callable[[str], tuple[Agent, AgentConfig]], send: Send
) -> Scheduler:
    """The gateway's scheduler: ``config.schedules``, sent through ``send``, prompts asked of the agent
    ``agent_for(robot name)`` gives (with its configuration: system prompt and timeout)."""
    ask = AgentAsk(agent_for, store, history_limit=config.sessions.history_limit)
    return Scheduler(config.schedules, store, send, ask=ask, catch_up_s=config.schedules_catch_up_s)


class AgentAsk:
    """Runs a ``prompt`` schedule's prompt through its robot's agent, in the schedule's own session
    (:func:`session_key`): the agent sees its earlier answers (up to ``history_limit``), and the
    exchange and its usage are recorded like a chat's."""

    def __init__(
        self, agent_for: Callable[[str], tuple[Agent, AgentConfig]], store: Store, *, history_limit: int
    ) -> None:
        self.agent_for, self.store, self.history_limit = agent_for, store, history_limit

    async def __call__(self, schedule: ScheduleConfig, slot: float) -> str | None:
        key = session_key(schedule)
        msg_id = f"schedule:{schedule.name}:{slot:.0f}"
        agent, agent_config = self.agent_for(schedule.robot)
        history = await self.store.history(key, self.history_limit)
        request = AgentRequest(
            messages=[{"role": t.role, "content": t.content} for t in history]
            + [{"role": "user", "content": schedule.prompt}],
            system_prompt=agent_config.system_prompt,
            session_key=key,
            message_id=msg_id,
        )
        result = await call_agent(agent, request, timeout_s=agent_config.timeout_s, message_id=msg_id)
        if result.failed or not result.text.strip():
            log.error(
                "[schedules] %s: the agent gave no answer (%s); nothing sent for this slot",
                schedule.name,
                result.error or "empty",
            )
            return None
        now = time.time()
        usage = UsageDelta(
            turns=1,
            messages_in=1,
            messages_out=1,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            agent_seconds=result.duration_s,
        )
        user = Turn("user", schedule.prompt, msg_id, now)
        await self.store.history_append(key, [user, Turn("assistant", result.text, msg_id, now)])
        await self.store.usage_add(key, usage, now, user)
        return result.text


__all__ = [
    "AgentAsk", "Clock", "Schedule", "Scheduler", "SystemClock", "build_scheduler", "session_key",
    "target_text",
]
