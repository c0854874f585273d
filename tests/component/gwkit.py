"""Helpers for running a Gateway in-process against the fake DingTalk over real loopback sockets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from edgecrab.agents.base import Agent
from edgecrab.config import Config, DingTalkConfig, HooksConfig, SessionsConfig, StorageConfig
from edgecrab.events import AgentRequest, AgentResult, Usage
from edgecrab.gateway import Gateway
from edgecrab.testing.fakedingtalk import FakeDingTalk, FakeUser


class ScriptedAgent(Agent):
    """Answers ``You said: <text>`` after ``delay`` seconds; records requests, cancellations and how many
    runs it had at once."""

    name = "scripted"

    def __init__(self, delay: float = 0.0, reply: str | None = None) -> None:
        self.delay = delay
        self.reply = reply
        self.requests: list[AgentRequest] = []
        self.cancelled = 0
        self.in_flight = 0
        self.most_in_flight = 0
        """The most runs this agent had at once."""

    async def run(self, request: AgentRequest) -> AgentResult:
        self.requests.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                await anyio.sleep(self.delay)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        text = self.reply if self.reply is not None else f"You said: {request.messages[-1]['content']}"
        return AgentResult(text, usage=Usage(prompt_tokens=7, completion_tokens=3))


def make_config(fake: FakeDingTalk, tmp_path: Path, **dingtalk: Any) -> Config:
    app = fake.apps[0]
    dt = DingTalkConfig(
        app_key=app.client_id,
        app_secret=app.client_secret,
        robot_code=app.robot_code or app.client_id,
        api_base=fake.base_url,
        chunk_interval_ms=20,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.5,
        webhook_expiry_margin_s=0,
    )
    dt = replace(dt, **dingtalk)
    return Config(
        dingtalk=dt,
        sessions=SessionsConfig(),
        hooks=HooksConfig(),
        storage=StorageConfig(url=f"sqlite:///{tmp_path / 'state.db'}"),
    )


@contextlib.asynccontextmanager
async def running_gateway(config: Config, agent: Agent, **kw: Any) -> AsyncIterator[Gateway]:
    gateway = Gateway(config, agent=agent, **kw)
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.run)
        try:
            yield gateway
        finally:
            tg.cancel_scope.cancel()


async def quiescent(fake: FakeDingTalk, gateway: Gateway, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Wait until nothing more can reach DingTalk: the fake has no frame left to (re)deliver, and the
    gateway no message unfinished in its inbox and no reply chunk unsent in its ledger.

    This is what a test waits on before asserting that something did *not* happen (no duplicate, no
    second notice, no reply to a refused message): a message is marked done only after its replies are in
    the ledger, and a chunk leaves the ledger's open states only once DingTalk has answered its send.
    """
    with anyio.fail_after(timeout):
        while True:
            stats = fake.stats()
            if (
                not stats["pending"]
                and not stats["queued"]
                and not await gateway.store.inbox_unfinished(gateway.robot)
                and not await gateway.store.outbox_pending()
            ):
                return
            await anyio.sleep(0.01)


PROBE_STAFF_ID = "probe0001"


async def routed(fake: FakeDingTalk, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Wait until the gateway has routed every callback pushed before this call.

    A probe user (added on first use, in its own DM) sends ``/help``: the gateway routes callbacks one after
    the other, so when the probe's answer arrives, every earlier message was decided on (refused, answered
    by a command, queued or handed to the runner) and the replies that decision made are in the ledger.
    """
    if not any(u.staff_id == PROBE_STAFF_ID for u in fake.users):
        fake.add_user(FakeUser(PROBE_STAFF_ID, "Probe"))
    data = fake.dm(PROBE_STAFF_ID, "/help")
    before = len(fake.messages_for(data["conversationId"]))
    await fake.push(data)
    await fake.wait_for(lambda: len(fake.messages_for(data["conversationId"])) > before, timeout)
