"""A card whose create's answer never came (issue 21): the answer lost on the wire, the gateway stopped (as in
a SIGKILL) while DingTalk was creating it, a dead replica's create landing after its message ran again.

We choose each card's ``outTrackId`` and record it before the create, so whoever handles the card next
works on it by that id: streams into it when DingTalk has it, answers in markdown when DingTalk does not
know it, and finishes it with :data:`SENT_AS_MESSAGES` if it appears later. Each message is answered
once, and no card is left "thinking". The gateway runs in-process against the fake DingTalk over real
sockets; the fake's faults lose a create's answer (``lose_answer``: done, then the connection aborted) or
hold the request before DingTalk does it (``delay``).
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import anyio
import anyio.abc
import pytest

from edgecrab.config import Config, StorageConfig
from edgecrab.config.model import CardConfig
from edgecrab.dingtalk.cardrecover import SENT_AS_MESSAGES
from edgecrab.dingtalk.cards import CREATE_AND_DELIVER_PATH
from edgecrab.dingtalk.cardtext import to_card_markdown
from edgecrab.gateway import Gateway
from edgecrab.retry import Backoff
from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.component.gwkit import make_config, quiescent, running_gateway
from tests.component.test_card_replies import REPLY, GatedAgent, card_gateway, cards, forgotten, until
from tests.redisserver import RedisServer

pytestmark = pytest.mark.anyio

QUICK_RETRIES = Backoff(3, 0.01, 0.05)


def answered(fake: FakeDingTalk, cid: str) -> list[int]:
    """How often each markdown message to ``cid`` says the answer's second piece."""
    return [m.text.count("there.") for m in fake.messages_for(cid)]


async def settled(gateway: Gateway) -> None:
    """Wait until no card is left to finish (finished, or forgotten as never created)."""
    with anyio.fail_after(15):
        while gateway.cards is not None and gateway.cards.unfinished:  # noqa: ASYNC110 - no event for it
            await anyio.sleep(0.02)


async def serve(
    config: Config,
    stop: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[Gateway] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A replica whose agent answers at once, until ``stop`` is set."""
    agent = GatedAgent()
    agent.gate.set()
    async with running_gateway(config, agent) as gateway:
        task_status.started(gateway)
        await stop.wait()


async def test_a_create_whose_answer_was_lost_goes_on_in_the_card_its_retry_finds(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        user, agent = fake.users[1], GatedAgent()
        agent.gate.set()
        async with card_gateway(tmp_path, agent, fake) as (_, gateway):
            assert gateway.cards is not None
            gateway.cards.client.backoff_policy = QUICK_RETRIES
            fake.faults.lose_answer(CREATE_AND_DELIVER_PATH)  # created, and the gateway never hears it
            await fake.push(fake.dm(user, "go"))
            await until(fake, lambda: cards(fake) and cards(fake)[0].status == "finished")
            await quiescent(fake, gateway)
            # The retry's "outTrackId exists" is the card the lost attempt made: the answer is in it.
            assert [c.text for c in cards(fake)] == [to_card_markdown("".join(REPLY))]
            assert fake.messages_for(fake.dm_conversation_id(user)) == []
            await forgotten(gateway, cards(fake)[0].out_track_id)


async def test_a_create_that_never_answered_finishes_the_card_dingtalk_made_anyway(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        user, agent, cid = fake.users[1], GatedAgent(), fake.dm_conversation_id(fake.users[1])
        agent.gate.set()
        # Both attempts time out (2 s) while DingTalk still creates the card (4 s after the first began).
        quick = {"send_timeout_s": 2.0, "send_retries": 1}
        async with card_gateway(tmp_path, agent, fake, dingtalk=quick, watchdog_s=1.0) as (_, gateway):
            fake.faults.delay(CREATE_AND_DELIVER_PATH, 4.0, times=2)
            await fake.push(fake.dm(user, "go"))
            await until(fake, lambda: fake.messages_for(cid))  # the answer, as markdown
            await until(fake, lambda: cards(fake) and cards(fake)[0].status == "failed")
            assert cards(fake)[0].text == SENT_AS_MESSAGES  # the card says where the answer went
            await quiescent(fake, gateway)
            assert answered(fake, cid) == [1] and len(cards(fake)) == 1
            await settled(gateway)
            await forgotten(gateway, cards(fake)[0].out_track_id)


async def test_a_run_again_goes_on_in_the_card_a_stopped_gateways_create_made(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        user = fake.users[1]
        lost = fake.faults.lose_answer(CREATE_AND_DELIVER_PATH, hold_s=60)
        async with card_gateway(tmp_path, GatedAgent(), fake) as (_, _gateway):
            await fake.push(fake.dm(user, "go"))
            await until(fake, lambda: lost.hits == 1 and cards(fake))  # created; the answer is held
        left = cards(fake)[0]  # stopped as by a SIGKILL: DingTalk has the card, the gateway never knew
        again = GatedAgent()
        again.gate.set()
        async with card_gateway(tmp_path, again, fake) as (_, gateway):
            await until(fake, lambda: left.status == "finished")
            assert left.text == to_card_markdown("".join(REPLY)) and len(cards(fake)) == 1
            await quiescent(fake, gateway)
        assert fake.messages_for(fake.dm_conversation_id(user)) == []


async def test_a_run_again_before_a_stopped_gateways_create_lands_finishes_that_card(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        user, cid = fake.users[1], fake.dm_conversation_id(fake.users[1])
        slow = fake.faults.delay(CREATE_AND_DELIVER_PATH, 4.0, times=1)
        async with card_gateway(tmp_path, GatedAgent(), fake) as (_, _gateway):
            await fake.push(fake.dm(user, "go"))
            await until(fake, lambda: slow.hits == 1)  # the create is on its way to DingTalk
        assert cards(fake) == []  # stopped as by a SIGKILL before DingTalk made the card
        again = GatedAgent()
        again.gate.set()
        async with card_gateway(tmp_path, again, fake, watchdog_s=1.0) as (_, gateway):
            await until(fake, lambda: fake.messages_for(cid))  # DingTalk does not know the card: markdown
            assert cards(fake) == [], "the run again must answer before the create lands"
            await until(fake, lambda: cards(fake) and cards(fake)[0].status == "failed")  # it landed
            assert cards(fake)[0].text == SENT_AS_MESSAGES
            await quiescent(fake, gateway)
            assert answered(fake, cid) == [1] and again.runs == 1


async def test_a_live_replica_finishes_the_card_a_dead_ones_late_create_made(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with FakeDingTalk() as fake, anyio.create_task_group() as tg:
        user, cid = fake.users[1], fake.dm_conversation_id(fake.users[1])
        config = make_config(fake, tmp_path, reply_mode="card",
                             card=CardConfig(update_interval_ms=100, watchdog_s=1.0))
        storage = StorageConfig(url=redis_server.url, prefix=f"cards-{uuid.uuid4().hex[:10]}:", lease_s=3)
        config = dataclasses.replace(config, storage=storage)
        stop_doomed, stop_live = anyio.Event(), anyio.Event()
        await tg.start(serve, config, stop_doomed)  # alone: the message is its
        slow = fake.faults.delay(CREATE_AND_DELIVER_PATH, 9.0, times=1)
        await fake.push(fake.dm(user, "go"))
        await fake.wait_for(lambda: slow.hits == 1, 10)
        live = await tg.start(serve, config, stop_live)
        stop_doomed.set()  # dead while its create is on the way; its heartbeat expires within lease_s
        await fake.wait_for(lambda: fake.messages_for(cid), 10)  # the run again: markdown, the card unknown
        assert cards(fake) == [], "the run again must answer before the create lands"
        await fake.wait_for(lambda: cards(fake) and cards(fake)[0].status == "failed", 15)
        assert cards(fake)[0].text == SENT_AS_MESSAGES
        await quiescent(fake, live)
        assert answered(fake, cid) == [1]
        await settled(live)
        stop_live.set()
