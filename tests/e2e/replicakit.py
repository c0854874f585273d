"""What the end-to-end tests with ``edgecrab gateway start`` replicas on one Redis share: their config, and
the processes (started, SIGKILLed, restarted, their logs read back)."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import yaml

from edgecrab.testing.fake_openai import FakeOpenAI
from edgecrab.testing.fakedingtalk import FakeDingTalk
from edgecrab.testing.gatewayconfig import write_gateway_config
from tests.faults.kit import start_gateway_process

LLM_KEY = "sk-replicas-e2e-key-0123456789"


def write_replica_config(
    directory: Path,
    fake: FakeDingTalk,
    llm: FakeOpenAI,
    url: str,
    lease_s: float,
    *,
    dingtalk: dict[str, Any],
    **sections: Any,
) -> Path:
    """``directory/edgecrab.yaml`` for replicas on the Redis at ``url`` (a fresh key prefix, ``lease_s``),
    reconnecting quickly; ``dingtalk`` and ``sections`` (``agent``, ``sessions``) as in
    :func:`~edgecrab.testing.gatewayconfig.write_gateway_config`."""
    path = write_gateway_config(
        directory / "edgecrab.yaml",
        api_base=fake.base_url,
        llm_base_url=llm.base_url,
        dingtalk={"reconnect_initial_s": 0.1, "reconnect_max_s": 0.5, **dingtalk},
        **sections,
    )
    config = yaml.safe_load(path.read_text("utf-8"))
    config["storage"] = {"url": url, "prefix": f"rep-{uuid.uuid4().hex[:8]}:", "lease_s": lease_s}
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class Replicas:
    """``edgecrab gateway start`` processes sharing one config (each its own log)."""

    def __init__(self, fake: FakeDingTalk, config: Path) -> None:
        self.fake, self.config = fake, config
        self.procs: list[anyio.abc.Process] = []

    async def start(self, index: int | None = None) -> None:
        n = len(self.procs) if index is None else index
        log = self.config.parent / f"replica-{n}.log"
        proc = await start_gateway_process(self.fake, self.config, log, llm_key=LLM_KEY)
        if index is None:
            self.procs.append(proc)
        else:
            self.procs[index] = proc

    async def kill(self, index: int) -> None:
        self.procs[index].kill()
        with anyio.fail_after(10):
            await self.procs[index].wait()

    async def stop_all(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            with anyio.fail_after(15):
                await proc.wait()

    def lost_on_the_wire(self) -> int:
        """Chunks a replica found on the wire when their sender was killed (logged, not sent again)."""
        logs = self.config.parent.glob("replica-*.log")
        return sum(log.read_text("utf-8", errors="replace").count("was on the wire when") for log in logs)

    def trace(self, fake: FakeDingTalk, words: dict[str, int]) -> str:
        """For a failure message: every log line about the messages that asked ``words`` (by msgId), and
        the replicas' takeover and lease lines."""
        asked = {w.split("-")[0] for w in words}
        ids = {
            json.loads(d.data).get("msgId", "")
            for d in fake.hub.deliveries.values()
            if any(a in d.data for a in asked)
        }
        marks = ("on the wire", "took over", "lease lapsed", "unsent chunks", "taken over", "picking up")
        lines = []
        for log in sorted(self.config.parent.glob("replica-*.log")):
            for line in log.read_text("utf-8", errors="replace").splitlines():
                if any(i and i in line for i in ids) or any(m in line for m in marks):
                    lines.append(f"{log.name}: {line}")
        return "\n".join(lines[-200:])

    def logs(self) -> str:
        tails = []
        for log in sorted(self.config.parent.glob("replica-*.log")):
            tails.append(f"--- {log.name}\n" + log.read_text("utf-8", errors="replace")[-2500:])
        return "\n".join(tails)


@asynccontextmanager
async def replicas(
    fake: FakeDingTalk, config: Path, count: int = 3, group: Replicas | None = None
) -> AsyncIterator[Replicas]:
    """``count`` replicas started (of ``group``, a :class:`Replicas` or a subclass; default a new one),
    every one stopped afterwards."""
    group = group or Replicas(fake, config)
    try:
        for _ in range(count):
            await group.start()
        yield group
    finally:
        await group.stop_all()
