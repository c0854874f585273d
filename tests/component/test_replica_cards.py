"""AI cards with replicas on one real redis-server (issue 21): a card belongs to the replica streaming it
while that replica lives; once its heartbeat expired, exactly one live replica takes the card (a run of its
message again, or the adoption of a card whose message is finished: the failover sweep finishes it); and
the replicas' card calls take their tokens from one bucket per app.

The end-to-end side (a SIGKILLed replica's cards, the stop button on another replica) is
``tests/e2e/test_replica_cards.py``."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from edgecrab.config import Config, StorageConfig
from edgecrab.config.model import CardConfig
from edgecrab.dingtalk.cardreply import INTERRUPTED_TEXT
from edgecrab.gateway import Gateway
from edgecrab.store import DONE, PROCESSING, CardRecord
from edgecrab.store.redis_coord import RedisCoordination
from edgecrab.store.redis_store import RedisStore
from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.component.gwkit import ScriptedAgent, make_config, running_gateway
from tests.component.test_card_replies import GatedAgent
from tests.redisserver import RedisServer

pytestmark = pytest.mark.anyio

ROBOT = "default"


@asynccontextmanager
async def replicas(server: RedisServer, count: int) -> AsyncIterator[list[RedisStore]]:
    """Stores of ``count`` replicas on one prefix, each with its heartbeat set (alive)."""
    prefix = f"cards-{uuid.uuid4().hex[:10]}:"
    async with AsyncExitStack() as stack:
        stores = []
        for _ in range(count):
            store = RedisStore(server.url, prefix, lease_s=30)
            await store.open()
            stack.push_async_callback(store.close)
            coord = store.coordination()
            assert isinstance(coord, RedisCoordination)
            await coord._renew()  # the heartbeat: replica:<id>
            stores.append(store)
        yield stores


async def die(store: RedisStore) -> None:
    """What SIGKILL leaves once ``storage.lease_s`` has passed: the replica's heartbeat is gone."""
    await store.client.delete(f"{store.prefix}replica:{store.replica}")


def record(store: RedisStore, card_id: str, msg_id: str) -> CardRecord:
    route = {"robot_code": "code", "conversation_id": "cid", "is_group": True}
    return CardRecord(ROBOT, card_id, msg_id, "session", store.replica, route, "msgContent", 100.0)


async def test_a_card_stays_its_live_replicas_and_one_replica_takes_it_once_the_owner_is_gone(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server, 3) as (a, b, c):
        assert await a.inbox_claim(ROBOT, "m1", "s1", "{}", 100.0)
        await a.inbox_set_state(ROBOT, "m1", PROCESSING)
        await a.card_open(record(a, "card-1", "m1"))
        assert await b.card_take(ROBOT, "m1", b.replica) is None  # a streams it
        await a.inbox_set_state(ROBOT, "m1", DONE)
        adoption = await b.card_adopt(ROBOT, b.replica)
        assert adoption.finish == [] and adoption.waiting == []  # a lives: a finishes it
        await die(a)
        results = []

        async def adopt(store: RedisStore) -> None:
            results.append((store.replica, await store.card_adopt(ROBOT, store.replica)))

        async with anyio.create_task_group() as tg:
            for store in (b, c):
                tg.start_soon(adopt, store)
        taken = [(who, r.card_id) for who, adoption in results for r in adoption.finish]
        assert len(taken) == 1 and taken[0][1] == "card-1"  # exactly one of the two
        assert (await a.card_get(ROBOT, "card-1")) == dataclasses.replace(
            record(a, "card-1", "m1"), owner=taken[0][0]
        )


async def test_a_run_again_on_one_of_two_live_replicas_takes_the_dead_ones_card(
    redis_server: RedisServer,
) -> None:
    async with replicas(redis_server, 3) as (a, b, c):
        assert await a.inbox_claim(ROBOT, "m1", "s1", "{}", 100.0)
        await a.card_open(record(a, "card-1", "m1"))
        await die(a)
        results: list[CardRecord | None] = []

        async def take(store: RedisStore) -> None:
            results.append(await store.card_open(record(store, f"new-{store.replica}", "m1")))

        async with anyio.create_task_group() as tg:
            for store in (b, c):
                tg.start_soon(take, store)
        assert [r.card_id for r in results if r is not None] == ["card-1"]


async def test_replicas_take_card_calls_from_one_bucket_per_app(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with FakeDingTalk() as fake, AsyncExitStack() as stack:
        config = make_config(fake, tmp_path, reply_mode="card", card=CardConfig())
        storage = StorageConfig(url=redis_server.url, prefix=f"cards-{uuid.uuid4().hex[:10]}:")
        config = dataclasses.replace(config, storage=storage)
        gateways = [
            await stack.enter_async_context(running_gateway(config, ScriptedAgent())) for _ in range(2)
        ]
        limiters = [g.first.cards.client.limiter for g in gateways if g.first.cards is not None]
        assert len(limiters) == 2
        assert {limiter.name for limiter in limiters} == {f"{fake.apps[0].client_id}:card"}
        for limiter, gateway in zip(limiters, gateways, strict=True):
            coord = gateway.first.runner.coord
            assert limiter.shared is coord and gateway.first.cards is not None
            assert gateway.first.cards.replica == coord.replica_id  # the owner of the cards it streams


async def serve(
    config: Config,
    stop: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[Gateway] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A gateway (a replica) in a task of its own, until ``stop`` is set."""
    async with running_gateway(config, GatedAgent()) as gateway:
        task_status.started(gateway)
        await stop.wait()


async def test_a_dead_replicas_card_whose_message_will_not_run_again_is_finished_by_a_live_one(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with FakeDingTalk() as fake, anyio.create_task_group() as tg:
        config = make_config(fake, tmp_path, reply_mode="card", card=CardConfig(update_interval_ms=100))
        storage = StorageConfig(url=redis_server.url, prefix=f"cards-{uuid.uuid4().hex[:10]}:", lease_s=3)
        config = dataclasses.replace(config, storage=storage)
        stop_doomed, stop_live = anyio.Event(), anyio.Event()
        doomed = await tg.start(serve, config, stop_doomed)  # alone: the message is its
        await fake.push(fake.dm(fake.users[1], "go"))
        await fake.wait_for(lambda: any(c.text == "Hello" for c in fake.cards.cards.values()), 10)
        card = next(iter(fake.cards.cards.values()))
        live = await tg.start(serve, config, stop_live)
        msg_id = (await doomed.store.inbox_unfinished("default"))[0].msg_id
        stop_doomed.set()  # stopped mid-answer; its heartbeat expires within lease_s
        await live.store.inbox_set_state("default", msg_id, DONE, "dropped")  # will not run again
        await fake.wait_for(lambda: card.status == "failed", 10)
        assert card.text == f"Hello\n\n{INTERRUPTED_TEXT}"  # what it showed, then the notice
        assert live.first.cards is not None and live.first.cards.recovered == 1
        with anyio.fail_after(5):  # the record goes right after the card is finished
            while await live.store.card_get("default", card.out_track_id) is not None:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        stop_live.set()
