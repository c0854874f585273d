"""Agent runs: one run per session at a time, the busy policy, /stop, /new and /retry.
Session keys and what a session holds in memory (queue, run in flight, epochs): :mod:`edgecrab.core.sessions`.
Each busy session has one worker (a task of the runner's task group, reused: :mod:`edgecrab.workers`) that
takes queued messages in order. A session is *busy* from the moment its worker takes a message until that
run's reply is handed to delivery, so a message arriving while the run is still preparing is queued (or
rejected, or interrupts) like any other.
With live replies (``reply_mode: card``, :mod:`edgecrab.core.live`) the run opens one when it starts, streams
the agent's text into it, and settles it as the run ends. The agent call lives in its own cancel scope:
``/stop``, ``/new`` and the ``interrupt`` policy cancel exactly that scope, which closes the backend's HTTP
stream or kills its subprocess. They also bump the session's epoch, so a run stopped before or after its agent
call sends nothing either. Replicas (:mod:`edgecrab.coordination`): a session's messages wait in its queue
across replicas, a run needs its lease; /stop, /new and interrupts reach its replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import anyio.abc

from edgecrab.activity import QUEUED, REJECTED, RUN, message_event
from edgecrab.agents.base import Agent
from edgecrab.config import SessionsConfig
from edgecrab.coordination import INTERRUPT, NEW, STOP, Coordination, NotFirst
from edgecrab.core import sessions as texts
from edgecrab.core.agentcall import call_agent, failure_answer, run_crashed, timed_out
from edgecrab.core.agentcall import failure_text as failure_text  # re-exported: tests and hooks read it here
from edgecrab.core.live import LiveReplies, LiveReply, settle
from edgecrab.core.sessions import QueuedMessage, RunStatus, Session, expire_if_idle, retry_text, session_key
from edgecrab.core.turns import PlainTurns, TurnContent, conversation
from edgecrab.events import AgentRequest, AgentResult, Message, ReplyAttachment
from edgecrab.store.base import DONE, FAILED, OutboxChunk, Store, Turn, UsageDelta
from edgecrab.workers import Workers

log = logging.getLogger("edgecrab.core.runs")

Reply = Callable[[Message, str, str], Awaitable[None]]
"""reply(message, text, session_key): send text to the message's conversation."""

Files = tuple[ReplyAttachment, ...]
Prepare = Callable[[Message, str | None, str, Files], Awaitable[tuple[list[OutboxChunk], Callable[[], None]]]]
"""prepare(message, text, session_key, files) -> (chunks, recorded): a run's answer (None: a live reply showed
it) and files as ledger chunks, recorded with the run's end (``Store.finish_turn``); then ``recorded()``."""

NO_RETRY_TEXT = "🤷 There's no earlier message to retry — just send me a new one."
EMPTY_ANSWER_TEXT = "(the agent returned an empty answer — /retry to ask again)"


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
        prepare: Prepare | None = None,
        live: LiveReplies | None = None,
        coord: Coordination | None = None,
        turns: TurnContent | None = None,
    ) -> None:
        """Without ``prepare``, a run's answer goes out through ``reply`` before the run is recorded as
        finished (a crash in between runs the message again); with it, in the same store transaction.
        ``turns``: the agent's user turns (:mod:`edgecrab.core.turns`)."""
        self.config = config
        self.store = store
        self.agent = agent
        self._reply = reply
        self._prepare = prepare
        self.live = live
        self.turns: TurnContent = turns or PlainTurns()
        self.system_prompt = system_prompt
        self.agent_timeout_s = agent_timeout_s
        self.hooks = hooks
        self.coord = coord or store.coordination()
        """Other replicas (Redis): the session's lease and queue across them, their /stop and /new."""
        self._sessions: dict[str, Session] = {}
        self._limiter = anyio.CapacityLimiter(config.max_concurrent_runs)
        self._tg: anyio.abc.TaskGroup | None = None
        self._workers = Workers(self._work)  # a session's queue is a job: no task made per message
        self.runs_started = 0
        self.runs_finished = 0
        self.on_agent_result: Callable[[AgentResult, float], None] | None = None
        """Told every agent call's result (the ops port's latency and token metrics)."""

    def key(self, message: Message) -> str:
        return session_key(message, self.config.group_scope)

    def _session(self, key: str) -> Session:
        s = self._sessions.get(key)
        if s is None:
            s = self._sessions[key] = Session(key)
        return s

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._workers.bind(tg)
            await tg.start(self.coord.run, self._on_signal)
            task_status.started()
            await anyio.sleep_forever()

    # -- intake --------------------------------------------------------------------------------------
    async def submit(self, message: Message, *, retry: bool = False, quiet: bool = False) -> None:
        """A message for the agent: run now, or follow the busy policy. ``quiet``: no "queued" notice (a
        message picked up again after a restart, whose notice went out before it)."""
        key = self.key(message)
        s = self._session(key)
        here = s.current is not None or bool(s.queue)
        # Messages waiting: the queue's head is not waiting when no run is in flight (it starts next).
        waiting_here = len(s.queue) - (1 if s.current is None and s.queue else 0)
        policy, limit = self.config.busy_policy, self.config.queue_limit
        how = "retry" if retry else "picked up after a restart" if quiet else ""
        turned_away = here and (policy == "reject" or (policy == "queue" and waiting_here >= limit))
        # One step (Redis: one script run): this session's messages on every replica counted, and this
        # one queued unless the policy turns it away with that count.
        most = None if policy == "interrupt" else 0 if policy == "reject" else limit
        elsewhere = None if turned_away else await self.coord.enqueue(key, message.id, at_most=most)
        if elsewhere is None:
            busy_now = policy == "reject"
            why = "busy with the previous message" if busy_now else f"queue full ({limit} waiting)"
            message_event(message, REJECTED, why)
            await self._reply(message, texts.busy_text() if busy_now else texts.queue_full_text(limit), key)
            state = "rejected: busy" if busy_now else "rejected: queue full"
            await self.store.inbox_set_state(message.robot, message.id, DONE, state)
            return
        busy = here or elsewhere > 0
        if busy and policy == "interrupt":
            await self._interrupt(s, QueuedMessage(message, retry), how, elsewhere > 0)
            return
        waiting = max(waiting_here, elsewhere - 1)
        s.queue.append(QueuedMessage(message, retry))
        self._start_worker(s)
        if busy:
            message_event(message, QUEUED, ", ".join(filter(None, (how, f"position {waiting + 1}"))))
        else:
            message_event(message, RUN, how)
        if busy and not quiet:
            await self._reply(message, texts.queued_text(waiting + 1), key)

    async def _interrupt(self, s: Session, item: QueuedMessage, how: str, elsewhere: bool) -> None:
        """The ``interrupt`` policy: stop the run in flight (on whichever replica), then run ``item`` (in
        the session's queue already)."""
        message = item.message
        message_event(message, RUN, ", ".join(filter(None, (how, "interrupting the previous run"))))
        running, dropped = s.cancel()
        if elsewhere:
            await self.coord.signal(s.key, INTERRUPT)
        s.queue.append(item)
        self._start_worker(s)
        await self._finish_dropped(dropped, "replaced by a newer message (interrupt)")
        if running or elsewhere:
            await self._reply(message, "⏹ Stopped the previous answer — working on your new message.", s.key)

    def _start_worker(self, s: Session) -> None:
        if s.worker or self._tg is None:
            return
        s.worker = True
        self._workers.submit(s)

    async def _work(self, s: Session) -> None:
        try:
            while s.queue:
                item = s.queue.popleft()
                s.current, s.started, s.scope = item.message, time.monotonic(), anyio.CancelScope()
                epoch = s.epoch
                try:  # other replicas: wait for this message's turn in the session (or a /stop meanwhile)
                    async with self.coord.hold(s.key, item.message.id, partial(s.moved_on, epoch), s.queued):
                        await self._run_one(s, item, epoch, s.resets)
                except NotFirst as first:  # another message of ours came first (cluster-wide arrival order)
                    s.bring_forward(first.msg_id, item)
                except Exception as exc:  # a storage error, a bug: the other sessions go on
                    await run_crashed(self.store, self._reply, item.message, s.key, exc)
                finally:
                    s.current, s.scope = None, None
        finally:
            s.worker = False
            if not s.queue and self._sessions.get(s.key) is s:
                del self._sessions[s.key]

    # -- one run -------------------------------------------------------------------------------------
    async def _run_one(self, s: Session, item: QueuedMessage, epoch: int, resets: int) -> None:
        now = time.time()
        begun = await self._begin(s, item, epoch, now)
        if begun is None:
            return
        message = begun[2]  # its files downloaded
        live = await self.live.open(message, s.key) if self.live is not None else None
        try:
            outcome = await self._call_stoppably(s, epoch, begun[1], message, live)
            user_turn = Turn("user", begun[0], message.id, now)
            await self._conclude(s, message, outcome, user_turn, live, (epoch, resets))
        except Exception:
            if live is not None:
                await live.stopped()  # the crash is reported as ordinary text; the card must not stay open
                await live.recorded()
            raise
        if live is not None:
            await live.recorded()  # after the run's end is recorded: a crash before it runs it again

    async def _conclude(
        self,
        s: Session,
        message: Message,
        outcome: tuple[AgentResult, float],
        user_turn: Turn,
        live: LiveReply | None,
        marks: tuple[int, int],
    ) -> None:
        """The run's end: its reply (or failure notice) and records. ``outcome``: the agent's result and how
        long the call took; ``marks``: the session's (epoch, resets) when the run started."""
        key, (result, elapsed), (epoch, resets) = s.key, outcome, marks
        delta = UsageDelta(
            messages_in=1,
            agent_seconds=elapsed,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
        )
        if self.hooks is not None:
            await self.hooks.notify("agent_finished", result=result, message=message)
        reply = ""
        if not result.stopped and not result.failed:
            reply = result.text
            if self.hooks is not None:
                reply = await self.hooks.pipeline("prepare_reply", "reply", reply, message=message)
        stopped = result.stopped or s.epoch != epoch or s.resets != resets
        failure = (
            await failure_answer(self.hooks, result.error, message) if result.failed and not stopped else None
        )
        empty = "" if result.attachments else EMPTY_ANSWER_TEXT  # files alone are an answer
        answer: str | None = None if stopped or failure is not None else reply or empty
        if live is not None:
            answer = await settle(live, stopped=stopped, failure=failure, answer=answer)
            delta.extra = {"card_calls": live.calls, "card_replies": 1}
        elif failure is not None:
            answer = failure
        if s.resets != resets:  # /new: this run belongs to a conversation that no longer exists
            await self.store.inbox_set_state(message.robot, message.id, DONE, "session reset")
            return
        if stopped:
            log.info("[runs] %s: run for message %s stopped after %.1f s", key, message.id, elapsed)
            await self._finish(message, key, DONE, "stopped", usage=delta, last_user=user_turn)
            return
        if result.failed:
            await self._finish(
                message, key, FAILED, result.error, usage=delta, last_user=user_turn, answer=answer
            )
            return
        delta.turns, delta.messages_out = 1, 1
        turns = [user_turn, Turn("assistant", reply, message.id, time.time())]
        await self._finish(message, key, DONE, turns=turns, usage=delta, last_user=user_turn, answer=answer,
                           files=result.attachments)

    async def _begin(
        self, s: Session, item: QueuedMessage, epoch: int, now: float
    ) -> tuple[str, AgentRequest, Message] | None:
        """Record the turn's start, build the request: ``(stored user turn, request, message with files)``;
        None: nothing to run (nothing to retry, or stopped already)."""
        message, key = item.message, s.key
        await expire_if_idle(self.store, key, self.config.idle_expiry_s, now)
        await self.store.turn_started(key, robot=message.robot, msg_id=message.id, now=now)
        turn = await self.turns.user(message)
        text, content, message = turn.stored, turn.content, turn.message
        if item.retry:
            text = await retry_text(self.store, key)
            if not text:
                await self._reply(message, NO_RETRY_TEXT, key)
                await self.store.inbox_set_state(message.robot, message.id, DONE, "nothing to retry")
                return None
            content = await self.turns.stored_content(text)
        if s.epoch != epoch:
            await self.store.inbox_set_state(message.robot, message.id, DONE, "stopped before it started")
            return None
        history = await self.store.history(key, self.config.history_limit) if self.agent.uses_history else []
        request = AgentRequest(
            await conversation(self.turns, history, content), system_prompt=self.system_prompt,
            session_key=key, message_id=message.id, attachments=turn.attachments,
        )
        if self.hooks is not None:
            request = await self.hooks.pipeline("prepare_agent_request", "request", request, message=message)
        return text, request, message

    async def _call_stoppably(
        self, s: Session, epoch: int, request: AgentRequest, message: Message, live: LiveReply | None = None
    ) -> tuple[AgentResult, float]:
        """The agent call in the session's cancel scope (/stop, /new, interrupt): result, and its duration."""
        scope = s.scope or anyio.CancelScope()
        self.runs_started += 1
        result: AgentResult | None = None
        started = time.monotonic()
        try:
            with scope:
                if s.epoch == epoch:  # else stopped while the request was being prepared
                    result = await call_agent(
                        self.agent, request, timeout_s=self.agent_timeout_s, message_id=message.id,
                        on_delta=live.push if live is not None else None, limiter=self._limiter, scope=scope,
                    )
        finally:
            self.runs_finished += 1
        elapsed = time.monotonic() - started
        if result is None and s.epoch == epoch and scope.cancelled_caught:  # its time limit, not a /stop
            result = timed_out(self.agent_timeout_s, message.id, elapsed)
        elif result is None:  # cancelled by /stop, /new or interrupt
            result = AgentResult(text="", duration_s=elapsed, stopped=True)
        if self.on_agent_result is not None:
            self.on_agent_result(result, elapsed)
        return result, elapsed

    async def _finish(
        self, message: Message, key: str, state: str, error: str = "", *, turns: list[Turn] | None = None,
        usage: UsageDelta, last_user: Turn, answer: str | None = None, files: Files = (),
    ) -> None:
        """Record the run's end (history, usage, the answer's chunks, inbox state) as one store write."""
        chunks: list[OutboxChunk] = []
        recorded: Callable[[], None] | None = None
        if self._prepare is not None and (answer is not None or files):
            chunks, recorded = await self._prepare(message, answer, key, files)
        elif answer is not None:
            await self._reply(message, answer, key)
        mine = await self.store.finish_turn(
            key,
            robot=message.robot,
            msg_id=message.id,
            state=state,
            error=error,
            now=time.time(),
            turns=turns or (),
            usage=usage,
            last_user=last_user,
            reply=chunks,
        )
        if not mine:  # replicas: this one's lease lapsed while it ran; the one that took over answers
            log.warning("[replicas] message %s was taken over by another replica: answer dropped", message.id)
        elif recorded is not None:
            recorded()

    # -- control ---------------------------------------------------------------------------------------
    def queued_messages(self, key: str) -> list[Message]:
        s = self._sessions.get(key)
        return [i.message for i in s.queue] if s else []

    async def stop(self, key: str) -> tuple[bool, list[Message]]:
        """``/stop``: cancel the running response and clear the queue. Returns (was running, dropped)."""
        return await self._cancel(key, "/stop", reset=False)

    async def reset(self, key: str) -> tuple[bool, list[Message]]:
        """``/new``: like :meth:`stop`, and the run in flight writes nothing to the session afterwards."""
        return await self._cancel(key, "/new", reset=True)

    async def _cancel(self, key: str, command: str, *, reset: bool) -> tuple[bool, list[Message]]:
        elsewhere = await self.coord.waiting(key) > 0
        if elsewhere:  # the replica running the session (maybe another) hears it and stops within 1 s
            await self.coord.signal(key, NEW if reset else STOP)
        s = self._sessions.get(key)
        if s is None:
            return elsewhere, []
        s.resets += int(reset)
        running, dropped = s.cancel()
        await self._finish_dropped(dropped, f"dropped by {command}")
        return running or elsewhere, dropped

    async def _on_signal(self, key: str, what: str) -> None:
        """Another replica's /stop, /new or interrupt for a session that may run here."""
        s = self._sessions.get(key)
        if s is not None:
            s.resets += int(what == NEW)
            _running, dropped = s.cancel()
            await self._finish_dropped(dropped, f"dropped by {what} (on another replica)")

    async def _finish_dropped(self, messages: list[Message], reason: str) -> None:
        """Queued messages that will never run: finished in the inbox so a restart does not revive them."""
        for m in messages:
            await self.store.inbox_set_state(m.robot, m.id, DONE, reason)
        if messages:
            await self.coord.drop(self.key(messages[0]), [m.id for m in messages])

    def status(self, key: str) -> RunStatus:
        s = self._sessions.get(key)
        return s.status() if s is not None else RunStatus(False, 0.0, 0, "")

    @property
    def active_runs(self) -> int:
        return sum(1 for s in self._sessions.values() if s.current is not None)

    @property
    def queued_total(self) -> int:  # messages waiting behind a run, over all sessions
        return sum(len(s.queue) for s in self._sessions.values())
