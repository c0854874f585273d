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
from edgecrab.testing.fakedingtalk import FakeDingTalk


class ScriptedAgent(Agent):
    """Answers ``You said: <text>`` after ``delay`` seconds; records requests and cancellations."""

    name = "scripted"

    def __init__(self, delay: float = 0.0, reply: str | None = None) -> None:
        self.delay = delay
        self.reply = reply
        self.requests: list[AgentRequest] = []
        self.cancelled = 0

    async def run(self, request: AgentRequest) -> AgentResult:
        self.requests.append(request)
        try:
            if self.delay:
                await anyio.sleep(self.delay)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
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
