"""Three ``edgecrab gateway start`` replicas on one real redis-server against the fake DingTalk, which
pushes each callback to one random live connection and redelivers an unacked one under a new stream
message id (issue 21).

* 600 messages over 60 group conversations, a slow agent, two-chunk answers; one replica SIGKILLed
  mid-run and restarted: every message answered exactly once, each conversation's answers in order,
  no chunk twice, nothing left unfinished in Redis.
* ``/stop`` delivered to one replica cancels the run on another.
* Redis stopped for 10 s mid-run: no callback acked 200 while it is down, everything answered once after.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import redis.asyncio
import yaml

from edgecrab.testing.fake_openai import FakeOpenAI
from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.e2e.replicakit import LLM_KEY, Replicas, replicas, write_replica_config
from tests.faults.kit import WORD, word
from tests.redisserver import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(240)]

MESSAGES, CONVERSATIONS = 600, 60
REPLICAS = 3


def answer(messages: list[dict[str, Any]]) -> str:
    """Two chunks (``max_message_length`` 60): ``<word>-00 ...`` and ``<word>-01 ...``."""
    found = WORD.findall(str(messages[-1].get("content", "")))
    w = found[0] if found else "nothing"
    return f"{w}-00 " + "a" * 40 + "\n\n" + f"{w}-01 " + "b" * 40


def write_config(directory: Path, fake: FakeDingTalk, llm: FakeOpenAI, url: str, lease_s: float) -> Path:
    dingtalk = {"max_message_length": 60, "chunk_interval_ms": 20, "webhook_qps": 2000, "openapi_qps": 2000}
    sessions = {"busy_policy": "queue", "queue_limit": 100}
    return write_replica_config(directory, fake, llm, url, lease_s, dingtalk=dingtalk, sessions=sessions)


def parts(fake: FakeDingTalk) -> Counter[str]:
    return Counter(w for r in fake.outbound for w in WORD.findall(r.text) if "-" in w)


def acked(fake: FakeDingTalk, mid: str) -> bool:
    return fake.hub.deliveries[mid].acked_ok


async def converse(fake: FakeDingTalk, cid: str, numbers: list[int], users: list[Any]) -> None:
    """A group's messages, each pushed once the one before is acked (arrival order = push order)."""
    for k, n in enumerate(numbers):
        mid = await fake.push(fake.group(users[k % len(users)], f"question {word(n)}", conversation_id=cid))
        await fake.wait_for(lambda mid=mid: acked(fake, mid), 60)


def check_answers(fake: FakeDingTalk, plan: dict[str, list[int]], group: Replicas) -> None:
    """Every message's two chunks exactly once, each conversation's in the order asked. A chunk on the wire
    when its replica was killed is not sent again (DingTalk may have it): only such a chunk may be missing.
    """
    counted, logs = parts(fake), group.logs()
    expected = [word(n, p) for numbers in plan.values() for n in numbers for p in (0, 1)]
    twice = {w: c for w, c in counted.items() if c > 1}
    missing = [w for w in expected if w not in counted]
    assert not twice, (f"twice: {twice}", group.trace(fake, twice), logs)
    assert len(missing) <= group.lost_on_the_wire(), (f"missing: {missing[:20]}", logs)
    for cid, numbers in plan.items():
        said = [
            w for r in fake.outbound if r.conversation_id == cid for w in WORD.findall(r.text) if "-" in w
        ]
        asked = [word(n, p) for n in numbers for p in (0, 1)]
        assert said == [w for w in asked if w not in missing], (cid, " ".join(said), logs)


async def nothing_left(url: str, prefix: str) -> tuple[int, int]:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        unsent = await client.zcard(f"{prefix}outbox:open")
        robots = await client.smembers(f"{prefix}inbox:robots")
        unfinished = sum([await client.zcard(f"{prefix}inbox:{robot}:open") for robot in robots])
        return int(unsent), int(unfinished)
    finally:
        await client.aclose()


async def redis_state(url: str, prefix: str) -> str:
    """What is left in Redis (for a failure message): session queues, leases, owners."""
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        lines = []
        async for key in client.scan_iter(f"{prefix}*"):
            kind = await client.type(key)
            if "sessq:" in key:
                lines.append(f"{key} = {await client.lrange(key, 0, -1)}")
            elif ":owned:" in key or key.endswith(":owners") or key.endswith(":open"):
                members = await (client.smembers(key) if kind == "set" else client.zrange(key, 0, 20))
                lines.append(f"{key} = {sorted(members)[:20]}")
            elif any(part in key for part in ("lease:", "replica:", "deliver:")):
                lines.append(f"{key} = {await client.get(key)} ttl {await client.pttl(key)}")
        return "\n".join(sorted(lines))
    finally:
        await client.aclose()


def prefix_of(config: Path) -> str:
    return str(yaml.safe_load(config.read_text("utf-8"))["storage"]["prefix"])


async def test_three_replicas_answer_every_message_once_in_order_with_one_killed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        FakeDingTalk(redeliver_after_s=1.0, max_redeliveries=60, redeliver_new_id=True, seed=21) as fake,
        FakeOpenAI(reply=answer, api_key=LLM_KEY, delay_s=0.2) as llm,
    ):
        config = write_config(tmp_path, fake, llm, redis_server.url, lease_s=3)
        users = fake.users[:4]
        plan: dict[str, list[int]] = defaultdict(list)
        for n in range(1, MESSAGES + 1):
            plan[fake.add_group(f"cid-rep-{n % CONVERSATIONS:02d}", f"group {n % CONVERSATIONS}")].append(n)
        started = time.monotonic()
        async with replicas(fake, config) as group:
            async with anyio.create_task_group() as tg:
                for cid, numbers in plan.items():
                    tg.start_soon(converse, fake, cid, numbers, users)
                await fake.wait_for(lambda: len(parts(fake)) >= MESSAGES * 2 // 3, 120)  # a third answered
                await group.kill(0)  # SIGKILL, mid-run: its runs, queued messages and unsent chunks
                await fake.wait_for(lambda: len(parts(fake)) >= MESSAGES, 120)  # the others go on
                await group.start(0)  # restarted: a new replica
            # Every message pushed and acked; wait until Redis holds nothing unfinished and nothing unsent.
            try:
                with anyio.fail_after(120):
                    while await nothing_left(redis_server.url, prefix_of(config)) != (0, 0):  # noqa: ASYNC110
                        await anyio.sleep(0.2)  # polling Redis: the ledger and inbox drain
            except TimeoutError:
                state = await redis_state(redis_server.url, prefix_of(config))
                pytest.fail(f"{fake.stats()}\n{state}\n{group.logs()}")
        took = time.monotonic() - started
        check_answers(fake, plan, group)
        assert len(llm.requests) >= MESSAGES  # a killed run is run again
        lost, missing = group.lost_on_the_wire(), MESSAGES * 2 - len(parts(fake))
        print(f"{MESSAGES} messages, one killed: {took:.1f} s; {lost} chunks on the wire, {missing} missing")


def raw_callback(fake: FakeDingTalk, data: dict[str, Any], connection_id: str) -> str:
    """A robot callback frame for one given connection (untracked: the test chooses the replica)."""
    app = fake.apps[0]
    headers = {
        "appId": app.app_id,
        "contentType": "application/json",
        "messageId": uuid.uuid4().hex,
        "time": str(int(time.time() * 1000)),
        "topic": "/v1.0/im/bot/messages/get",
        "connectionId": connection_id,
    }
    return json.dumps(
        {"specVersion": "1.0", "type": "CALLBACK", "headers": headers, "data": json.dumps(data)}
    )


async def test_stop_delivered_to_one_replica_cancels_the_run_on_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        FakeDingTalk(redeliver_after_s=1.0, redeliver_new_id=True, seed=5) as fake,
        FakeOpenAI(reply=answer, api_key=LLM_KEY, delay_s=30) as llm,
    ):
        config = write_config(tmp_path, fake, llm, redis_server.url, lease_s=5)
        user = fake.users[1]
        async with replicas(fake, config, 2) as group:
            mid = await fake.push(fake.dm(user, f"question {word(1)}"))
            await fake.wait_for(lambda: acked(fake, mid) and len(llm.requests) == 1, 15)
            runner = next(a.connection_id for a in fake.acks if a.message_id == mid and a.code == 200)
            other = next(c.connection_id for c in fake.connections if c.connection_id != runner)
            stopped_at = time.monotonic()
            await fake.push_raw(raw_callback(fake, fake.dm(user, "/stop"), other), conn=other)
            await fake.wait_for(lambda: any("Stopped" in r.text for r in fake.outbound), 10)
            took = time.monotonic() - stopped_at
            await fake.push(fake.dm(user, f"question {word(2)}"))
            await fake.wait_for(lambda: len(llm.requests) == 2, 10)  # the session is free: the run ended
            assert took < 3, group.logs()
        assert parts(fake)[word(1, 0)] == 0  # the stopped run answered nothing


async def test_redis_stopped_for_ten_seconds_acks_nothing_and_answers_everything_after(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    async with AsyncExitStack() as stack:
        stack.callback(server.stop)
        fake = await stack.enter_async_context(
            FakeDingTalk(redeliver_after_s=0.5, max_redeliveries=200, redeliver_new_id=True, seed=9)
        )
        llm = await stack.enter_async_context(FakeOpenAI(reply=answer, api_key=LLM_KEY, delay_s=0.3))
        config = write_config(tmp_path, fake, llm, server.url, lease_s=20)
        plan: dict[str, list[int]] = defaultdict(list)
        for n in range(1, 61):
            plan[fake.add_group(f"cid-down-{n % 12:02d}", "down")].append(n)
        late = {fake.add_group(f"cid-late-{n % 6:02d}", "late"): [n] for n in range(61, 67)}
        async with replicas(fake, config) as group, anyio.create_task_group() as tg:
            for cid, numbers in plan.items():
                tg.start_soon(converse, fake, cid, numbers, fake.users[:3])
            await fake.wait_for(lambda: len(parts(fake)) >= 20, 60)
            server.stop()
            down_from = time.monotonic()
            for cid, numbers in late.items():  # pushed while Redis is down: refused until it is back
                tg.start_soon(converse, fake, cid, numbers, fake.users[:3])
            await anyio.sleep(10)  # Redis away for 10 s: the outage itself, not a wait for a result
            down_until = time.monotonic()
            server.start()
            plan.update(late)
            await fake.wait_for(lambda: len(parts(fake)) >= 2 * 66, 120)
            await fake.wait_for(lambda: not fake.stats()["pending"], 30)
        acked_while_down = [a for a in fake.acks if a.code == 200 and down_from + 0.5 < a.t < down_until]
        assert acked_while_down == [], group.logs()
        refused = [a for a in fake.acks if down_from < a.t < down_until]
        assert len(refused) >= 6, "the callbacks pushed while Redis was down were not refused"
        check_answers(fake, plan, group)
