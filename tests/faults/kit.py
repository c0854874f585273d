"""What the fault, fuzz and security tests share.

* reply counting: every message a test sends carries unique words (``q00042z`` or ``q00042z-07``), so the
  fake's ``outbound`` records tell, per message, whether it was answered, lost or answered twice;
* :class:`FastRetryGateway`: the product gateway with its send back-off scaled down, so a test that injects
  hundreds of REST failures runs in seconds (the product has no config knob for that, see ``_build``);
* :func:`gateway_running`: an in-process gateway (any Gateway class) in the caller's task group;
* :func:`fault_config`: the component-test config with rate limits raised for a fast run.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from edgecrab.agents.base import Agent
from edgecrab.config import Config, SessionsConfig
from edgecrab.dingtalk.attachsend import AttachmentSender
from edgecrab.dingtalk.rest import DingTalkSender
from edgecrab.gateway import Gateway
from edgecrab.testing.fakedingtalk import FakeDingTalk, FakeUser
from tests.component.gwkit import make_config

WORD = re.compile(r"q\d{5}z(?:-\d{2})?")
"""A counted word: ``q00042z`` (message 42) or ``q00042z-07`` (its 8th word)."""


def word(n: int, part: int | None = None) -> str:
    return f"q{n:05d}z" if part is None else f"q{n:05d}z-{part:02d}"


def words(n: int, count: int) -> list[str]:
    return [word(n, i) for i in range(count)]


@dataclass(repr=False)
class Tally:
    """Per message: answered (all its words arrived), lost (one never did), duplicated (one arrived twice)."""

    name: str
    sent: int
    answered: int
    lost: list[str]
    duplicated: list[str]
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.sent == self.answered and not self.lost and not self.duplicated

    def __str__(self) -> str:
        notes = "".join(f" {k}={v}" for k, v in self.notes.items())
        text = (
            f"[{self.name}] sent={self.sent} answered={self.answered} lost={len(self.lost)} "
            f"duplicated={len(self.duplicated)}{notes}"
        )
        if self.lost:
            text += f" lost(first)={self.lost[:5]}"
        if self.duplicated:
            text += f" duplicated(first)={self.duplicated[:5]}"
        return text

    __repr__ = __str__


def count_words(texts: Iterable[str]) -> Counter[str]:
    return Counter(w for text in texts for w in WORD.findall(text))


def tally(name: str, fake: FakeDingTalk, expected: Mapping[str, Sequence[str]], **notes: Any) -> Tally:
    """``expected`` maps a message key to the words its reply must contain exactly once each."""
    seen = count_words(r.text for r in fake.outbound)
    lost = [key for key, ws in expected.items() if any(seen[w] == 0 for w in ws)]
    duplicated = [key for key, ws in expected.items() if any(seen[w] > 1 for w in ws)]
    answered = sum(1 for ws in expected.values() if all(seen[w] >= 1 for w in ws))
    return Tally(name, len(expected), answered, lost, duplicated, dict(notes))


def add_users(fake: FakeDingTalk, count: int, prefix: str = "fault") -> list[FakeUser]:
    """Members of the robot's own organisation (allowed by default), one DM conversation each."""
    return [fake.add_user(FakeUser(f"{prefix}{i:04d}", f"{prefix.title()} {i}")) for i in range(count)]


def fault_config(
    fake: FakeDingTalk, tmp_path: Path, *, sessions: SessionsConfig | None = None, **dingtalk: Any
) -> Config:
    """The component-test config (fast reconnects) with rate limits raised, as a paid tenant would."""
    options: dict[str, Any] = dict(
        openapi_qps=5000, webhook_qps=5000, chunk_interval_ms=5, healthy_after_s=1.0
    )
    options.update(dingtalk)
    config = make_config(fake, tmp_path, **options)
    return replace(config, sessions=sessions or SessionsConfig(queue_limit=100))


class FastRetryGateway(Gateway):
    """The product gateway, with every send back-off ``time_scale`` times shorter.

    The product has no configuration for its REST back-off (``rest.BACKOFF_BASE_S`` = 0.5 s doubling to 8 s,
    a 1 s floor after a QpsLimit answer): a run with hundreds of injected failures would take minutes.
    ``DingTalkSender`` accepts a ``sleep`` function, so the sender is rebuilt with a scaled one right after
    the gateway assembled itself. Retry *counts* and the order of events are untouched.
    """

    time_scale = 0.02

    def _build(self) -> None:
        super()._build()
        scale = self.time_scale

        async def sleep(seconds: float) -> None:
            await anyio.sleep(seconds * scale)

        for robot in self.robots.values():
            robot.sender = DingTalkSender(robot.dt, client=robot.http, sleep=sleep)
            robot.delivery.sender = AttachmentSender(robot.sender, robot.answers.spool)


@contextlib.asynccontextmanager
async def gateway_running(
    config: Config, agent: Agent, *, cls: type[Gateway] = Gateway, **kw: Any
) -> AsyncIterator[Gateway]:
    gateway = cls(config, agent=agent, **kw)
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.run)
        try:
            yield gateway
        finally:
            tg.cancel_scope.cancel()


async def every(seconds: float, action: Any, count: list[int] | None = None) -> None:
    """Call ``await action()`` every ``seconds`` until cancelled; ``count[0]`` counts the calls."""
    while True:
        await anyio.sleep(seconds)
        await action()
        if count is not None:
            count[0] += 1


async def start_gateway_process(
    fake: FakeDingTalk, config: Path, log_path: Path, *, llm_key: str, options: Sequence[str] = ()
) -> anyio.abc.Process:
    """``edgecrab --config CONFIG [OPTIONS] gateway start`` as a subprocess with the fake's app credentials,
    its output appended to ``log_path``; returns once it opened a Stream connection to ``fake``."""
    app = fake.apps[0]
    env = dict(
        os.environ,
        DINGTALK_APP_KEY=app.client_id,
        DINGTALK_APP_SECRET=app.client_secret,
        FAKE_LLM_KEY=llm_key,
        EDGECRAB_HOME=str(config.parent),
    )
    env.pop("EDGECRAB_CONFIG", None)
    opened = fake.connections_opened
    with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - a local log file, opened once per start
        proc = await anyio.open_process(
            [sys.executable, "-m", "edgecrab", "--config", str(config), *options, "gateway", "start"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    # A Python process's start (its imports) took over 15 s on a 2-core machine at load 12-18.
    await fake.wait_for(lambda: fake.connections_opened > opened, 60)
    return proc
