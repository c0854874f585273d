"""AI cards (``reply_mode: card``) with ``edgecrab gateway start`` replicas on one real redis-server, against
the fake DingTalk (each callback, card buttons included, to one random live connection) and the fake
OpenAI server streaming slowly (issue 21).

* A replica streaming cards is SIGKILLed mid-answer: its messages run again on the others, each in the
  card it left open, so every card ends finished with one whole answer and no message is answered twice
  (no second card, no markdown copy).
* A card's stop button pressed on a replica that does not stream the card stops the run on the one that
  does within a second, and the card ends stopped.
* A replica killed while DingTalk creates its card, the card made or not yet: answered once, in that card
  or in markdown, and the card that appears late is finished.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio
import yaml

from edgecrab.dingtalk.cardrecover import SENT_AS_MESSAGES
from edgecrab.dingtalk.cardreply import CARD_CALLBACK_TOPIC, INTERRUPTED_TEXT
from edgecrab.dingtalk.cards import CREATE_AND_DELIVER_PATH, STOPPED_MARK
from edgecrab.testing.fake_openai import FakeOpenAI
from edgecrab.testing.fakedingtalk import FakeDingTalk
from edgecrab.testing.fakedingtalk.cardcontrol import button_callback
from edgecrab.testing.fakedingtalk.cardstate import FakeCard
from tests.e2e.replicakit import LLM_KEY, Replicas, replicas, write_replica_config
from tests.faults.kit import WORD, word
from tests.redisserver import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(90)]

ROBOT = "default"
"""The robot's name: its inbox and card records are kept under it."""


def answer(messages: list[dict[str, Any]]) -> str:
    """``<word>-00``, 24 filler words, ``<word>-01``: a card that shows ``-01`` shows the whole answer."""
    found = WORD.findall(str(messages[-1].get("content", "")))
    w = found[0] if found else "nothing"
    return f"{w}-00 " + "lorem " * 24 + f"{w}-01"


def write_config(directory: Path, fake: FakeDingTalk, llm: FakeOpenAI, url: str, lease_s: float) -> Path:
    dingtalk = {"reply_mode": "card", "card": {"update_interval_ms": 200, "stop_button": True}}
    agent = {"timeout_s": 60}
    return write_replica_config(directory, fake, llm, url, lease_s, dingtalk=dingtalk, agent=agent)


class Named(Replicas):
    """Replicas named ``rep-<index>`` (``EDGECRAB_REPLICA_ID``: the owner in card records), each with the
    fake's connection it opened."""

    def __init__(self, fake: FakeDingTalk, config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(fake, config)
        self.monkeypatch = monkeypatch
        self.connection: dict[str, str] = {}

    async def start(self, index: int | None = None) -> None:
        n = len(self.procs) if index is None else index
        known = {c.connection_id for c in self.fake.all_connections}
        self.monkeypatch.setenv("EDGECRAB_REPLICA_ID", f"rep-{n}")
        await super().start(index)
        await self.fake.wait_for(lambda: any(c.connection_id not in known for c in self.fake.connections), 10)
        opened = next(c.connection_id for c in self.fake.connections if c.connection_id not in known)
        self.connection[f"rep-{n}"] = opened


def named_replicas(
    fake: FakeDingTalk, config: Path, count: int, monkeypatch: pytest.MonkeyPatch
) -> AbstractAsyncContextManager[Replicas]:
    return replicas(fake, config, count, Named(fake, config, monkeypatch))


class Records:
    """The card records and inbox in Redis (the test's view; the gateway's are the store's methods)."""

    def __init__(self, url: str, config: Path) -> None:
        self.client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        self.prefix = str(yaml.safe_load(config.read_text("utf-8"))["storage"]["prefix"])

    async def owner(self, msg_id: str) -> str | None:
        """The replica that claimed (or took over) message ``msg_id``: the one running it."""
        return await self.client.hget(f"{self.prefix}inbox:{ROBOT}:msg:{msg_id}", "owner")  # type: ignore[misc]

    async def left(self) -> tuple[int, int]:
        """(cards still recorded, messages unfinished)."""
        cards = await self.client.zcard(f"{self.prefix}cards:{ROBOT}")
        unfinished = await self.client.zcard(f"{self.prefix}inbox:{ROBOT}:open")
        return int(cards), int(unfinished)


async def streaming_on(
    records: Records, fake: FakeDingTalk, msg_ids: dict[str, str], replica: str
) -> list[FakeCard]:
    """The cards showing part of an answer whose message ``replica`` runs."""
    return [
        c for c in fake.cards.cards.values()
        if c.status == "inputting" and "lorem" in c.text and c.conversation_ids
        and await records.owner(msg_ids[c.conversation_ids[0]]) == replica
    ]


def card_frame(fake: FakeDingTalk, data: dict[str, Any], connection_id: str) -> str:
    """A card-button callback frame for one given connection (the test picks the replica)."""
    headers = {
        "appId": fake.apps[0].app_id,
        "contentType": "application/json",
        "messageId": uuid.uuid4().hex,
        "time": str(int(time.time() * 1000)),
        "topic": CARD_CALLBACK_TOPIC,
        "connectionId": connection_id,
    }
    frame = {"specVersion": "1.0", "type": "CALLBACK", "headers": headers, "data": json.dumps(data)}
    return json.dumps(frame)


async def test_cards_of_a_killed_replica_end_finished_with_one_whole_answer_each(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        FakeDingTalk(redeliver_after_s=1.0, max_redeliveries=60, redeliver_new_id=True, seed=17) as fake,
        FakeOpenAI(reply=answer, api_key=LLM_KEY, token_delay_s=0.1) as llm,
    ):
        config = write_config(tmp_path, fake, llm, redis_server.url, lease_s=3)
        records = Records(redis_server.url, config)
        plan = {fake.add_group(f"cid-card-{n:02d}", f"group {n}"): n for n in range(1, 16)}
        async with named_replicas(fake, config, 3, monkeypatch) as group:
            msg_ids: dict[str, str] = {}
            for cid, n in plan.items():
                data = fake.group(fake.users[n % 4], f"question {word(n)}", conversation_id=cid)
                msg_ids[cid] = data["msgId"]
                await fake.push(data)
            victims: list[FakeCard] = []

            async def streaming_somewhere() -> int | None:
                """A replica streaming two cards or more (their cards in ``victims``)."""
                for index in range(3):
                    victims[:] = await streaming_on(records, fake, msg_ids, f"rep-{index}")
                    if len(victims) >= 2:
                        return index
                return None

            with anyio.fail_after(20):
                while (index := await streaming_somewhere()) is None:  # noqa: ASYNC110 - owners in Redis
                    await anyio.sleep(0.05)
            await group.kill(index)  # SIGKILL mid-answer: its cards show part of an answer
            assert all(c.status == "inputting" for c in victims)

            def all_answered() -> bool:
                cards = list(fake.cards.cards.values())
                return len(cards) >= len(plan) and all(c.status != "inputting" for c in cards)

            try:
                await fake.wait_for(all_answered, 40)
                with anyio.fail_after(20):
                    while await records.left() != (0, 0):  # noqa: ASYNC110 - Redis drains
                        await anyio.sleep(0.1)
            except TimeoutError:
                pytest.fail(f"{fake.stats()}\n{await records.left()}\n{group.logs()}")
        logs = group.logs()
        await records.client.aclose()
        for card in victims:  # the killed replica's cards: continued in place, to the end
            assert card.status == "finished" and "-01" in card.text, logs
            assert INTERRUPTED_TEXT not in card.text, logs
        for cid, n in plan.items():
            in_cards = [c for c in fake.cards.in_conversation(cid) if word(n, 1) in c.text]
            in_messages = [m for m in fake.messages_for(cid) if word(n, 1) in m.text]
            assert len(in_cards) + len(in_messages) == 1, (cid, logs)  # answered exactly once
            assert len(fake.cards.in_conversation(cid)) <= 1, (cid, logs)  # no second card
        assert all(c.status == "finished" for c in fake.cards.cards.values()), logs
        assert logs.count("answers in it again") >= len(victims), logs


async def test_the_stop_button_pressed_on_another_replica_stops_the_run_within_a_second(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        FakeDingTalk(redeliver_after_s=1.0, redeliver_new_id=True, seed=8) as fake,
        FakeOpenAI(reply=answer, api_key=LLM_KEY, token_delay_s=0.5) as llm,
    ):
        config = write_config(tmp_path, fake, llm, redis_server.url, lease_s=5)
        records = Records(redis_server.url, config)
        cid = fake.add_group("cid-stop", "stop")
        async with named_replicas(fake, config, 2, monkeypatch) as group:
            data = fake.group(fake.users[1], f"question {word(1)}", conversation_id=cid)
            await fake.push(data)
            await fake.wait_for(lambda: any("lorem" in c.text for c in fake.cards.cards.values()), 15)
            card = next(iter(fake.cards.cards.values()))
            owner = await records.owner(data["msgId"])
            await records.client.aclose()
            other = next(name for name in group.connection if name != owner)
            _app, data = button_callback(fake.cards, card.out_track_id)
            before, pressed = llm.disconnects, time.monotonic()
            await fake.push_raw(card_frame(fake, data, group.connection[other]), conn=group.connection[other])
            with anyio.fail_after(5):
                await llm.wait_disconnects(before + 1)  # the model's stream closed: the run was cancelled
            took = time.monotonic() - pressed
            await fake.wait_for(lambda: card.status == "finished", 10)
            logs = group.logs()
        print(f"stop button to the model stream closed: {took * 1000:.0f} ms")
        assert took < 1.0, (took, logs)
        assert card.text.endswith(STOPPED_MARK) and word(1, 1) not in card.text, logs
        assert f"streamed by replica {owner}" in logs
        assert fake.messages_for(cid) == []  # the card says it stopped; no other answer


@pytest.mark.timeout(180)  # three replicas start, two are killed, a create is held 10 s
async def test_a_replica_killed_while_dingtalk_creates_its_card_leaves_no_card_open(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed with the create's answer held (DingTalk made the card): the run again goes on in it.
    Killed before DingTalk made it (the create lands after the run again answered in markdown): the card
    that appears is finished with the notice. Each message answered once, no card left "thinking"."""
    async with (
        FakeDingTalk(redeliver_after_s=1.0, redeliver_new_id=True, seed=23) as fake,
        FakeOpenAI(reply=answer, api_key=LLM_KEY, token_delay_s=0.02) as llm,
    ):
        config = write_config(tmp_path, fake, llm, redis_server.url, lease_s=3)
        records = Records(redis_server.url, config)
        made, late = fake.add_group("cid-made", "made"), fake.add_group("cid-late", "late")
        async with named_replicas(fake, config, 3, monkeypatch) as group:

            async def kill_mid_create(cid: str, n: int, rule: Any) -> None:
                data = fake.group(fake.users[1], f"question {word(n)}", conversation_id=cid)
                await fake.push(data)
                await fake.wait_for(lambda: rule.hits == 1, 15)  # the create is at DingTalk
                owner = await records.owner(data["msgId"])
                await group.kill(int(str(owner).removeprefix("rep-")))

            held = fake.faults.lose_answer(CREATE_AND_DELIVER_PATH, hold_s=60)  # made, never answered
            await kill_mid_create(made, 1, held)
            card = fake.cards.in_conversation(made)[0]
            await fake.wait_for(lambda: card.status == "finished", 30)  # the run again went on in it
            slow = fake.faults.delay(CREATE_AND_DELIVER_PATH, 10.0, times=1)  # made 10 s later
            await kill_mid_create(late, 2, slow)
            await fake.wait_for(lambda: any(word(2, 1) in m.text for m in fake.messages_for(late)), 30)
            assert fake.cards.in_conversation(late) == [], "the run again must answer before the create lands"
            landed = fake.cards.in_conversation
            await fake.wait_for(lambda: [c.status for c in landed(late)] == ["failed"], 30)
            logs = group.logs()
        await records.client.aclose()
        assert word(1, 1) in card.text and fake.messages_for(made) == [], logs
        assert [c.text for c in fake.cards.in_conversation(late)] == [SENT_AS_MESSAGES], logs
        assert [m.text.count(word(2, 1)) for m in fake.messages_for(late)] == [1], logs
        assert all(c.status != "inputting" for c in fake.cards.cards.values()), logs
