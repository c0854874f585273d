"""Sessions and agent runs: one run per session at a time, the busy policy, and the eight commands.

A session key is ``robot:dm:<sender>`` for a direct message and ``robot:group:<conversation>`` for a
group (``...:<sender>`` with ``group_scope: per_user``), so DM and group sessions never mix and two
robots never share history. The same key scopes history, the run slot, the queue and ``/stop``.

Each busy session has one worker task (in the runner's task group) that takes queued messages in order.
A run lives in its own cancel scope: ``/stop``, ``/new`` and the ``interrupt`` policy cancel exactly that
scope, which closes the backend's HTTP stream or kills its subprocess.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from edgecrab.agents.base import Agent, AgentError
from edgecrab.config import SessionsConfig
from edgecrab.events import AgentRequest, AgentResult, Message
from edgecrab.store.base import DONE, FAILED, PROCESSING, Store, Turn, UsageDelta

log = logging.getLogger("edgecrab.runs")

Reply = Callable[[Message, str, str], Awaitable[None]]
"""reply(message, text, session_key): send text to the message's conversation."""


def session_key(message: Message, group_scope: str = "shared") -> str:
    if not message.conversation.is_group:
        return f"{message.robot}:dm:{message.sender.key}"
    if group_scope == "per_user":
        return f"{message.robot}:group:{message.conversation.id}:{message.sender.key}"
    return f"{message.robot}:group:{message.conversation.id}"


@dataclass(slots=True)
class _Item:
    message: Message
    retry: bool = False


@dataclass(slots=True)
class _Session:
    key: str
    queue: deque[_Item] = field(default_factory=deque)
    scope: anyio.CancelScope | None = None
    current: Message | None = None
    started: float = 0.0
    worker: bool = False
    stopped: bool = False


class Runner:
    """Owns the sessions' run slots and queues. ``run()`` hosts the worker tasks until cancelled."""

    def __init__(
        self,
        config: SessionsConfig,
        store: Store,
        agent: Agent,
        reply: Reply,
        *,
        system_prompt: str = "",
        agent_timeout_s: float = 120.0,
        hooks: Any = None,
    ) -> None:
        self.config = config
        self.store = store
        self.agent = agent
        self._reply = reply
        self.system_prompt = system_prompt
        self.agent_timeout_s = agent_timeout_s
        self.hooks = hooks
        self._sessions: dict[str, _Session] = {}
        self._limiter = anyio.CapacityLimiter(config.max_concurrent_runs)
        self._tg: anyio.abc.TaskGroup | None = None
        self.runs_started = 0
        self.runs_finished = 0

    def key(self, message: Message) -> str:
        return session_key(message, self.config.group_scope)

    def _session(self, key: str) -> _Session:
        s = self._sessions.get(key)
        if s is None:
            s = self._sessions[key] = _Session(key)
        return s

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    # -- intake --------------------------------------------------------------------------------------
    async def submit(self, message: Message, *, retry: bool = False) -> None:
        """A message for the agent: run now, or follow the busy policy."""
        key = self.key(message)
        s = self._session(key)
        busy = s.scope is not None or bool(s.queue)
        policy = self.config.busy_policy
        if busy and policy == "reject":
            await self._reply(message, "⏳ I'm still working on your previous message. Send /stop to cancel it, "
                              "or wait for the answer.", key)
            await self.store.inbox_set_state(message.robot, message.id, DONE, "rejected: busy")
            return
        if busy and policy == "interrupt":
            self._cancel(s, clear_queue=True)
        elif busy and len(s.queue) >= self.config.queue_limit:
            await self._reply(message, f"⏳ The queue is full ({self.config.queue_limit} messages waiting). "
                              "Send /stop to clear it, or try again later.", key)
            await self.store.inbox_set_state(message.robot, message.id, DONE, "rejected: queue full")
            return
        s.queue.append(_Item(message, retry))
        if busy and policy == "queue":
            await self._reply(message, f"⏳ Queued — position {len(s.queue)}. I'll answer when the current "
                              "reply is done (/stop cancels).", key)
        self._start_worker(s)

    def _start_worker(self, s: _Session) -> None:
        if s.worker or self._tg is None:
            return
        s.worker = True
        self._tg.start_soon(self._work, s)

    async def _work(self, s: _Session) -> None:
        try:
            while s.queue:
                item = s.queue.popleft()
                await self._run_one(s, item)
        finally:
            s.worker = False
            if not s.queue and s.scope is None:
                self._sessions.pop(s.key, None)

    # -- one run -------------------------------------------------------------------------------------
    async def _run_one(self, s: _Session, item: _Item) -> None:
        message = item.message
        key = s.key
        now = time.time()
        await self.store.session_ensure(key, now)
        await self.store.inbox_set_state(message.robot, message.id, PROCESSING)
        text = message.agent_text()
        if item.retry:
            popped = await self.store.history_pop_last_exchange(key)
            if popped is not None:
                text = popped.content
            else:
                stats = await self.store.session_stats(key)
                text = stats.last_user_text if stats else ""
            if not text:
                await self._reply(message, "There's no previous message to retry.", key)
                await self.store.inbox_set_state(message.robot, message.id, DONE)
                return
        history = await self.store.history(key, self.config.history_limit)
        request = AgentRequest(
            messages=[{"role": t.role, "content": t.content} for t in history] + [{"role": "user", "content": text}],
            system_prompt=self.system_prompt,
            session_key=key,
            message_id=message.id,
        )
        if self.hooks is not None:
            request = await self.hooks.pipeline("prepare_agent_request", "request", request, message=message)
        scope = anyio.CancelScope()
        s.scope, s.current, s.started, s.stopped = scope, message, time.monotonic(), False
        self.runs_started += 1
        result: AgentResult | None = None
        started = time.monotonic()
        try:
            with scope:
                async with self._limiter:
                    result = await self._call_agent(request, message)
        finally:
            s.scope, s.current = None, None
            self.runs_finished += 1
        elapsed = time.monotonic() - started
        if result is None:  # cancelled by /stop, /new or interrupt
            result = AgentResult(text="", duration_s=elapsed, stopped=True)
        user_turn = Turn("user", text, message.id, now)
        delta = UsageDelta(messages_in=1, agent_seconds=elapsed, prompt_tokens=result.usage.prompt_tokens,
                           completion_tokens=result.usage.completion_tokens)
        if self.hooks is not None:
            await self.hooks.notify("agent_finished", result=result, message=message)
        if result.stopped:
            log.info("[runs] %s: run for message %s stopped after %.1f s", key, message.id, elapsed)
            await self.store.usage_add(key, delta, time.time(), last_user=user_turn)
            await self.store.inbox_set_state(message.robot, message.id, DONE, "stopped")
            return
        if result.failed:
            text_out = result.error or "The agent failed to answer — /retry to try again."
            if self.hooks is not None:
                custom = await self.hooks.first("handle_error", error=result.error, message=message)
                if isinstance(custom, str) and custom:
                    text_out = custom
            await self.store.usage_add(key, delta, time.time(), last_user=user_turn)
            await self._reply(message, text_out, key)
            await self.store.inbox_set_state(message.robot, message.id, FAILED, result.error)
            return
        reply = result.text
        if self.hooks is not None:
            reply = await self.hooks.pipeline("prepare_reply", "reply", reply, message=message)
        delta.turns, delta.messages_out = 1, 1
        await self.store.history_append(key, [user_turn, Turn("assistant", reply, message.id, time.time())])
        await self.store.usage_add(key, delta, time.time(), last_user=user_turn)
        await self._reply(message, reply or "(the agent returned an empty answer)", key)
        await self.store.inbox_set_state(message.robot, message.id, DONE)

    async def _call_agent(self, request: AgentRequest, message: Message) -> AgentResult:
        started = time.monotonic()
        try:
            with anyio.fail_after(self.agent_timeout_s + 5):
                result = await self.agent.run(request)
        except AgentError as exc:
            log.warning("[runs] agent failed for message %s: %s", message.id, exc.cause)
            return AgentResult("", duration_s=time.monotonic() - started, failed=True, error=exc.user_message)
        except TimeoutError:
            log.warning("[runs] agent timed out for message %s", message.id)
            return AgentResult("", duration_s=time.monotonic() - started, failed=True,
                               error=f"The agent timed out after {self.agent_timeout_s:.0f} s — /retry to try again.")
        except Exception as exc:
            log.exception("[runs] agent crashed for message %s", message.id)
            return AgentResult("", duration_s=time.monotonic() - started, failed=True,
                               error=f"The agent failed ({type(exc).__name__}) — /retry to try again.")
        return result

    # -- control ---------------------------------------------------------------------------------------
    def _cancel(self, s: _Session, *, clear_queue: bool) -> tuple[bool, int]:
        cleared = 0
        if clear_queue:
            cleared = len(s.queue)
            s.queue.clear()
        running = s.scope is not None
        if s.scope is not None:
            s.stopped = True
            s.scope.cancel()
        return running, cleared

    def queued_messages(self, key: str) -> list[Message]:
        s = self._sessions.get(key)
        return [i.message for i in s.queue] if s else []

    def stop(self, key: str) -> tuple[bool, list[Message]]:
        """Cancel the running response and clear the queue. Returns (was running, dropped messages)."""
        s = self._sessions.get(key)
        if s is None:
            return False, []
        dropped = [i.message for i in s.queue]
        running, _ = self._cancel(s, clear_queue=True)
        return running, dropped

    def status(self, key: str) -> tuple[bool, float, int, str]:
        """(running, elapsed seconds, queue length, preview of the running message)."""
        s = self._sessions.get(key)
        if s is None or s.scope is None:
            return False, 0.0, len(s.queue) if s else 0, ""
        preview = (s.current.text[:40] if s.current else "")
        return True, time.monotonic() - s.started, len(s.queue), preview

    @property
    def active_runs(self) -> int:
        return sum(1 for s in self._sessions.values() if s.scope is not None)
