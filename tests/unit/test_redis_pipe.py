"""The Redis store's :class:`~edgecrab.store.redis_pipe.Pipeliner` against a real redis-server: commands that
many tasks issue together share pipelines, each caller gets its own answer or its own error, a command whose
caller was cancelled before its pipeline left is not sent, and a script the server forgot is loaded again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio
import redis.exceptions

from edgecrab.store import redis_rows as rows
from edgecrab.store.redis_pipe import MAX_BATCH, Pipeliner
from tests.redisserver import RedisServer, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    c = rows.connect(redis_server.url, rows.ACK_RETRY, connections=4, wait_s=2.0)
    try:
        yield c
    finally:
        await c.aclose()


def key() -> str:
    return f"t-pipe-{uuid.uuid4().hex[:12]}"


async def test_commands_of_many_tasks_share_pipelines_and_each_gets_its_answer(
    client: redis.asyncio.Redis,
) -> None:
    pipe = Pipeliner(client, in_flight=1)
    k = key()
    answers: dict[int, int] = {}

    async def incr(n: int) -> None:
        answers[n] = int(await pipe.call("INCR", k))

    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(incr, n)
    assert sorted(answers.values()) == list(range(1, 201))  # every caller its own answer
    assert pipe.commands == 200
    assert pipe.pipelines <= 200 // MAX_BATCH + 3  # not one round trip each


async def test_calls_go_out_in_order_with_their_answers(client: redis.asyncio.Redis) -> None:
    pipe = Pipeliner(client)
    k = key()
    commands = [("RPUSH", k, "a"), ("RPUSH", k, "b"), ("LRANGE", k, 0, -1), ("HGETALL", k + "h")]
    answers = await pipe.calls(commands)
    assert answers == [1, 2, ["a", "b"], {}]  # redis-py's usual answer types (HGETALL: a dict)


async def test_an_error_answer_goes_to_its_own_caller_only(client: redis.asyncio.Redis) -> None:
    pipe = Pipeliner(client, in_flight=1)
    k = key()
    await pipe.call("SET", k, "not a number")
    outcomes: dict[str, object] = {}

    async def run(name: str, *args: object) -> None:
        try:
            outcomes[name] = await pipe.call(*args)
        except redis.exceptions.ResponseError as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "before", "INCR", k + "n")
        tg.start_soon(run, "bad", "INCR", k)
        tg.start_soon(run, "after", "GET", k)
    assert outcomes["before"] == 1 and outcomes["after"] == "not a number"
    assert isinstance(outcomes["bad"], redis.exceptions.ResponseError)
    assert pipe.pipelines == 2  # the SET, then the three together


async def test_a_command_whose_caller_was_cancelled_before_it_left_is_not_sent(
    client: redis.asyncio.Redis,
) -> None:
    pipe = Pipeliner(client)
    k = key()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await pipe.call("SET", k, "1")
    assert await pipe.call("GET", k) is None


async def test_a_script_the_server_forgot_is_loaded_again(client: redis.asyncio.Redis) -> None:
    pipe = Pipeliner(client)
    source = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
    k = key()
    assert await pipe.script(source, [k], [2]) == 2
    await pipe.call("SCRIPT FLUSH")  # as after a restart of Redis
    assert await pipe.script(source, [k], [3]) == 5  # NOSCRIPT ran nothing: loaded, then run once


async def test_when_redis_is_gone_every_caller_of_the_pipeline_gets_the_error() -> None:
    c = rows.connect(f"redis://127.0.0.1:{free_port()}/0", rows.ACK_RETRY, connections=2, wait_s=1.0)
    pipe = Pipeliner(c)
    failed: list[type[BaseException]] = []

    async def get(name: str) -> None:
        try:
            await pipe.call("GET", name)
        except redis.exceptions.ConnectionError as exc:
            failed.append(type(exc))

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for n in range(5):
                    tg.start_soon(get, f"k{n}")
    finally:
        await c.aclose()
    assert len(failed) == 5
