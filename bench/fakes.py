"""The fakes a run talks to: DingTalk in this process (own thread and loop), the LLM as a subprocess.

The fake DingTalk lives in the driver process so pushing and observing cost no control-API round trips;
its loop is separate from anything the contenders run, because the SDK bot blocks its own loop. Every
(scenario, contender) pair gets a fresh fake, so no pending frame, redelivery timer or record leaks from
one run into the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from edgecrab.testing.fakedingtalk import FakeDingTalk, FakeDingTalkThread, FakeUser

T = TypeVar("T")

APP_KEY = "ding_bench_key"
APP_SECRET = "bench_secret_value_0123456789"
REST_PATHS = ("/robot/*", "/v1.0/*", "/gettoken")
"""Every REST path a contender calls (the websocket ``/connect`` is not REST)."""


def make_users(count: int, prefix: str = "u") -> list[FakeUser]:
    """``count`` members of the robot's organisation: one DM conversation each."""
    return [FakeUser(f"{prefix}{i:05d}", f"Bench {prefix}{i}") for i in range(count)]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for contenders: no proxy may catch loopback traffic."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.pop("EDGECRAB_CONFIG", None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class BenchFake:
    """A started :class:`FakeDingTalk` in its own thread, with the bench's app and users."""

    def __init__(self, users: list[FakeUser], *, rest_delay_s: float = 0.0) -> None:
        from edgecrab.testing.fakedingtalk import FakeApp

        fake = FakeDingTalk(
            apps=[FakeApp(APP_KEY, APP_SECRET)],
            users=users,
            # No redelivery during a run: a bot that is slow to ack (the SDK bot) must not be handed the
            # same frames again, which would measure the fake's retries instead of the bot.
            redeliver_after_s=1e6,
            max_redeliveries=0,
            seed=8,
        )
        self.thread = FakeDingTalkThread(fake)
        self.fake = self.thread.start()
        for pattern in REST_PATHS if rest_delay_s > 0 else ():
            fake.faults.delay(pattern, rest_delay_s)

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the fake's loop and wait for its result."""
        return self.thread.call(coro, timeout=timeout)

    def build(self, user: FakeUser, text: str) -> dict[str, Any]:
        """A DM from ``user``; builders only touch plain dicts, so this is safe from this thread."""
        return self.fake.dm(user, text)

    def wait_connected(self, timeout: float = 30.0) -> None:
        self.call(self.fake.wait_for_connections(1, timeout=timeout))

    def close(self) -> None:
        self.thread.stop()


class LlmServer:
    """:mod:`bench.llm` as a subprocess: an OpenAI-compatible server that answers after ``delay_s``."""

    def __init__(self, delay_s: float, log_path: Path) -> None:
        self._log = open(log_path, "wb")  # closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.llm", "--delay", str(delay_s)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=clean_env(),
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError(f"the fake LLM did not start; see {log_path}")
        self.base_url: str = json.loads(line)["base_url"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
