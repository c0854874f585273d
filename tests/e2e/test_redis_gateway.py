"""``edgecrab gateway start`` on a Redis store (a real redis-server) against the fake DingTalk.

* A DM is answered once; its redeliveries (the identical frame, and the same message under a new stream
  frame id, as DingTalk redelivers) are acked and not answered again, also by a restarted gateway.
* Redis stopped mid-run: a message pushed meanwhile is never acked 200 while Redis is down (its acks are
  500s: DingTalk delivers it again), and once Redis is back it is answered, once.
"""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import yaml

from edgecrab.testing.fake_openai import FakeOpenAI
from edgecrab.testing.fakedingtalk import FakeDingTalk
from edgecrab.testing.gatewayconfig import write_gateway_config
from tests.faults.kit import WORD, start_gateway_process, word
from tests.redisserver import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(90)]

LLM_KEY = "sk-redis-e2e-key-0123456789"


def answer(messages: list[dict[str, Any]]) -> str:
    found = WORD.findall(str(messages[-1].get("content", "")))
    return f"answer to {found[0] if found else 'nothing'}"


def write_config(directory: Path, fake: FakeDingTalk, llm: FakeOpenAI, redis_url: str, prefix: str) -> Path:
    path = write_gateway_config(
        directory / "edgecrab.yaml",
        api_base=fake.base_url,
        llm_base_url=llm.base_url,
        dingtalk={"reconnect_initial_s": 0.1, "reconnect_max_s": 0.5},
    )
    config = yaml.safe_load(path.read_text("utf-8"))
    config["storage"] = {"url": redis_url, "prefix": prefix}
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@asynccontextmanager
async def gateway(fake: FakeDingTalk, config: Path) -> AsyncIterator[anyio.abc.Process]:
    """A gateway subprocess, connected to the fake; stopped with SIGTERM at the end."""
    proc = await start_gateway_process(fake, config, config.parent / "gateway.log", llm_key=LLM_KEY)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                await proc.wait()


def answers(fake: FakeDingTalk) -> Counter[str]:
    return Counter(w for r in fake.outbound for w in WORD.findall(r.text))


def log_tail(config: Path) -> str:
    return (config.parent / "gateway.log").read_text("utf-8", errors="replace")[-3000:]


async def test_a_dm_and_its_redeliveries_are_answered_once_also_after_a_restart(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        FakeDingTalk(redeliver_after_s=1.0, max_redeliveries=10) as fake,
        FakeOpenAI(reply=answer, api_key=LLM_KEY) as llm,
    ):
        config = write_config(tmp_path, fake, llm, redis_server.url, f"e2e-{uuid.uuid4().hex[:8]}:")
        user = fake.users[1]
        data = fake.dm(user, f"question {word(1)}")
        async with gateway(fake, config):
            first = await fake.push(data)
            await fake.wait_for(lambda: answers(fake)[word(1)] == 1, 20)
            assert await fake.inject_duplicate(first)  # the identical frame again
            again = await fake.push(data)  # DingTalk's redelivery: same msgId, new stream frame id
            await fake.wait_for(lambda: any(a.code == 200 for a in fake.acks_for(again)), 10)

        async with gateway(fake, config):  # a new process on the same Redis
            third = await fake.push(data)
            await fake.wait_for(lambda: any(a.code == 200 for a in fake.acks_for(third)), 10)
            await fake.push(fake.dm(user, f"question {word(2)}"))  # answered after any repeat would be
            await fake.wait_for(lambda: answers(fake)[word(2)] == 1, 20)

        assert answers(fake)[word(1)] == 1, log_tail(config)
        assert len(llm.requests) == 2, log_tail(config)


async def test_redis_stopped_mid_run_acks_nothing_unrecorded_and_answers_everything_after(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        async with (
            FakeDingTalk(redeliver_after_s=0.5, max_redeliveries=60) as fake,
            FakeOpenAI(reply=answer, api_key=LLM_KEY, delay_s=0.8) as llm,
        ):
            config = write_config(tmp_path, fake, llm, server.url, "edgecrab:")
            user, other = fake.users[1], fake.users[2]
            async with gateway(fake, config):
                await fake.push(fake.dm(user, f"question {word(1)}"))
                await fake.wait_for(lambda: answers(fake)[word(1)] == 1, 20)
                await fake.push(fake.dm(user, f"question {word(2)}"))
                await fake.wait_for(lambda: len(llm.requests) == 2, 10)  # its run is under way

                server.stop()  # the run above ends while Redis is down
                during = await fake.push(fake.dm(other, f"question {word(3)}"))
                # Refused (500), delivered again and refused again, and again: never acked 200.
                await fake.wait_for(lambda: len(fake.acks_for(during)) >= 3, 15)
                acks_while_down = [a.code for a in fake.acks_for(during)]
                answered_while_down = answers(fake)
                server.start()

                await fake.wait_for(lambda: answers(fake)[word(2)] == answers(fake)[word(3)] == 1, 30)
                await fake.push(fake.dm(user, f"question {word(4)}"))
                await fake.wait_for(lambda: answers(fake)[word(4)] == 1, 20)
                await fake.wait_for(lambda: not fake.stats()["pending"], 10)

            assert acks_while_down and 200 not in acks_while_down, (acks_while_down, log_tail(config))
            assert 200 in [a.code for a in fake.acks_for(during)]
            assert answered_while_down == Counter({word(1): 1}), answered_while_down
            expected = Counter({word(n): 1 for n in range(1, 5)})
            assert answers(fake) == expected, log_tail(config)
    finally:
        server.stop()
