"""``reply_mode: card`` end to end in one process: the gateway against the fake DingTalk over real sockets.

What a user sees is read from the fake's card state (``fake.cards``) and its outbound messages. The agent
is gated by events, so each test decides when the answer grows, fails or ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from edgecrab.agents.base import Agent, AgentError, Deltas, ignore_deltas
from edgecrab.config.model import CardConfig, SessionsConfig
from edgecrab.core.agentcall import USER_FAILURE_TEXT
from edgecrab.dingtalk import cardreply
from edgecrab.dingtalk.cardreply import INTERRUPTED_TEXT, MARKDOWN_STAY_S
from edgecrab.dingtalk.cards import STOPPED_MARK
from edgecrab.dingtalk.cardstream import CONTINUED_NOTICE, CardStreamer, split_for_card
from edgecrab.dingtalk.cardtext import to_card_markdown
from edgecrab.events import AgentRequest, AgentResult
from edgecrab.gateway import Gateway
from edgecrab.store import DONE
from edgecrab.testing.fakedingtalk import FakeDingTalk
from edgecrab.testing.fakedingtalk.cardcontrol import press
from edgecrab.testing.fakedingtalk.cardstate import FakeCard

from .gwkit import make_config, quiescent, running_gateway

pytestmark = pytest.mark.anyio

REPLY = ["Hello", " there.\nA second line", "\n\n| a | b |\n|---|---|\n| 1 | 2 |"]


@pytest.fixture(autouse=True)
def short_card_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's cards wait 50 ms instead of 0.5 s between delivery and the first frame and between the
    last two frames. Those gaps are a product constant (DingTalk's field evidence, no config key) whose
    arithmetic tests/unit/test_cardstream.py checks; here they only made every test about a second longer."""
    short = functools.partial(CardStreamer, open_gap_s=0.05, close_gap_s=0.05)
    monkeypatch.setattr(cardreply, "CardStreamer", short)


class GatedAgent(Agent):
    """Streams ``pieces``; waits for ``gate`` after the first; optionally fails there instead."""

    name = "gated"

    def __init__(self, pieces: list[str] | None = None, *, fail: bool = False) -> None:
        self.pieces = pieces or REPLY
        self.fail = fail
        self.gate = anyio.Event()
        self.cancelled = 0
        self.runs = 0

    async def run(self, request: AgentRequest) -> AgentResult:
        return await self.stream(request, ignore_deltas)

    async def stream(self, request: AgentRequest, on_delta: Deltas) -> AgentResult:
        self.runs += 1
        try:
            for index, piece in enumerate(self.pieces):
                if index == 1:
                    await self.gate.wait()
                    if self.fail:
                        raise AgentError("the model fell over")
                on_delta(piece)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        return AgentResult("".join(self.pieces))


@contextlib.asynccontextmanager
async def card_gateway(
    tmp_path: Path,
    agent: Agent,
    fake: FakeDingTalk | None = None,
    sessions: SessionsConfig | None = None,
    dingtalk: dict[str, Any] | None = None,
    **card: Any,
) -> AsyncIterator[tuple[FakeDingTalk, Gateway]]:
    """A gateway in card mode (``card``: CardConfig fields; ``dingtalk``: other DingTalkConfig fields)."""
    async with contextlib.AsyncExitStack() as stack:
        if fake is None:
            fake = await stack.enter_async_context(FakeDingTalk())
        settings = CardConfig(**{"update_interval_ms": 100, **card})
        config = make_config(fake, tmp_path, reply_mode="card", card=settings, **(dingtalk or {}))
        if sessions is not None:
            config = dataclasses.replace(config, sessions=sessions)
        gateway = await stack.enter_async_context(running_gateway(config, agent))
        yield fake, gateway


def cards(fake: FakeDingTalk) -> list[FakeCard]:
    return list(fake.cards.cards.values())


async def until(fake: FakeDingTalk, predicate: Any, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    await fake.wait_for(predicate, timeout)


async def forgotten(gateway: Gateway, card_id: str) -> None:
    """Wait until the store has no record of the card (its run's end is recorded just before)."""
    with anyio.fail_after(5):
        while await gateway.store.card_get(gateway.first.name, card_id) is not None:  # noqa: ASYNC110
            await anyio.sleep(0.01)  # polling the store: no event for it


async def test_card_opens_at_run_start_streams_and_ends_with_the_markdown_reply(tmp_path: Path) -> None:
    agent = GatedAgent()
    async with card_gateway(tmp_path, agent) as (fake, gateway):
        user = fake.users[1]
        cid = fake.dm_conversation_id(user)
        await fake.push(fake.dm(user, "first"))
        await until(fake, lambda: cards(fake) and cards(fake)[0].text == "Hello")
        first = cards(fake)[0]
        assert first.status == "inputting" and first.visible
        await fake.push(fake.dm(user, "second"))  # queued behind the first: no card yet
        await until(fake, lambda: any("Queued" in m.text for m in fake.messages_for(cid)))
        assert len(cards(fake)) == 1
        agent.gate.set()
        await until(fake, lambda: len(cards(fake)) == 2 and all(c.status == "finished" for c in cards(fake)))
        whole = "".join(REPLY)
        assert [c.text for c in cards(fake)] == [to_card_markdown(whole)] * 2
        assert "<br>" in first.text and "\n\n| a | b |" in first.text
        assert first.stream_finalized
        assert [m.text for m in fake.messages_for(cid) if "Queued" not in m.text] == []  # no markdown copy
        await quiescent(fake, gateway)
        await fake.push(fake.dm(user, "/usage"))
        await until(fake, lambda: any("API calls" in m.text for m in fake.messages_for(cid)))
        usage = next(m.text for m in fake.messages_for(cid) if "API calls" in m.text)
        assert "for 2 AI cards" in usage
        for card in cards(fake):  # forgotten once their runs' ends were recorded
            await forgotten(gateway, card.out_track_id)


@pytest.mark.parametrize("how", ["/stop", "button", "/new"])
async def test_stopping_finishes_the_card_at_once_and_closes_the_agent_stream(
    tmp_path: Path, how: str
) -> None:
    agent = GatedAgent()
    async with card_gateway(tmp_path, agent, stop_button=True) as (fake, _gateway):
        user = fake.users[1]
        await fake.push(fake.dm(user, "go"))
        await until(fake, lambda: cards(fake) and cards(fake)[0].text == "Hello")
        card = cards(fake)[0]
        if how == "button":
            await press(fake.cards, card.out_track_id)
        else:
            await fake.push(fake.dm(user, how))
        await until(fake, lambda: card.status == "finished")
        assert card.text == f"Hello\n\n{STOPPED_MARK}"
        assert card.params.get("stop_action") == "false"  # the button is hidden once stopped
        assert agent.cancelled == 1
        if how == "button":
            acks = [a for a in fake.acks if a.message_id and a.code == 200]
            assert acks  # the card callback was acked like any callback


async def test_the_interrupt_policy_finishes_the_running_card_as_stopped(tmp_path: Path) -> None:
    agent = GatedAgent()
    sessions = SessionsConfig(busy_policy="interrupt")
    async with card_gateway(tmp_path, agent, sessions=sessions) as (fake, _gateway):
        user = fake.users[1]
        await fake.push(fake.dm(user, "first question"))
        await until(fake, lambda: cards(fake) and cards(fake)[0].text == "Hello")
        first = cards(fake)[0]
        await fake.push(fake.dm(user, "a newer question"))  # interrupts the run in flight
        await until(fake, lambda: first.status == "finished")
        assert first.text == f"Hello\n\n{STOPPED_MARK}" and agent.cancelled == 1
        agent.gate.set()  # the newer question's run streams into a card of its own, to the end
        await until(fake, lambda: len(cards(fake)) == 2 and cards(fake)[1].status == "finished")
        assert cards(fake)[1].text == to_card_markdown("".join(REPLY))


async def test_agent_failure_finishes_the_card_as_failed(tmp_path: Path) -> None:
    agent = GatedAgent(fail=True)
    agent.gate.set()
    async with card_gateway(tmp_path, agent) as (fake, gateway):
        user = fake.users[1]
        await fake.push(fake.dm(user, "go"))
        await until(fake, lambda: cards(fake) and cards(fake)[0].status == "failed")
        assert cards(fake)[0].text == USER_FAILURE_TEXT
        assert fake.messages_for(fake.dm_conversation_id(user)) == []  # the card says it all


async def test_group_card_names_the_asker_and_overflow_follows_as_markdown(tmp_path: Path) -> None:
    long = [f"Paragraph {i}: " + "word " * 30 + "\n\n" for i in range(8)]
    agent = GatedAgent(long)
    agent.gate.set()
    async with card_gateway(tmp_path, agent, max_chars=400) as (fake, gateway):
        user = fake.users[1]
        data = fake.group(user, "tell me a lot")
        await fake.push(data)
        cid = data["conversationId"]
        await until(fake, lambda: cards(fake) and cards(fake)[0].status == "finished")
        await until(fake, lambda: fake.messages_for(cid))
        shown, rest = split_for_card("".join(long), 400)
        assert cards(fake)[0].text == f"@{user.nick}\n\n" + to_card_markdown(shown)
        assert rest and rest[:40] in fake.messages_for(cid)[0].text


async def test_missing_permission_falls_back_to_markdown_and_stays_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = GatedAgent()
    agent.gate.set()
    async with card_gateway(tmp_path, agent) as (fake, gateway):
        fake.cards.revoke("Card.Instance.Write")
        user = fake.users[1]
        cid = fake.dm_conversation_id(user)
        with caplog.at_level(logging.ERROR, logger="edgecrab.dingtalk.cardreply"):
            await fake.push(fake.dm(user, "one"))
            await until(fake, lambda: len(fake.messages_for(cid)) == 1)
            fake.cards.grant()
            await fake.push(fake.dm(user, "two"))  # within 30 minutes: markdown, cards not even tried
            await until(fake, lambda: len(fake.messages_for(cid)) == 2)
        assert cards(fake) == []
        assert "Hello there." in fake.messages_for(cid)[0].text
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "Card.Instance.Write" in errors[0] and "30 minutes" in errors[0]
        assert gateway.cards is not None
        assert gateway.cards.markdown_until - time.monotonic() > MARKDOWN_STAY_S - 60
        gateway.cards.markdown_until = 0.0  # the 30 minutes are over
        await fake.push(fake.dm(user, "three"))
        await until(fake, lambda: cards(fake) and cards(fake)[0].status == "finished")
        assert len(fake.messages_for(cid)) == 2


async def test_restart_answers_again_in_the_card_left_open(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        user = fake.users[1]
        async with card_gateway(tmp_path, GatedAgent(), fake) as (_, _gateway):
            await fake.push(fake.dm(user, "go"))
            await until(fake, lambda: cards(fake) and cards(fake)[0].text == "Hello")
        left = cards(fake)[0]
        assert left.status == "inputting"  # the gateway stopped (as in a crash) with the card open
        again = GatedAgent()
        again.gate.set()
        async with card_gateway(tmp_path, again, fake) as (_, gateway):
            # The message runs again and answers in the same card: one card, one whole answer.
            await until(fake, lambda: left.status == "finished")
            assert left.text == to_card_markdown("".join(REPLY)) and len(cards(fake)) == 1
            assert gateway.cards is not None and gateway.cards.recovered == 1
            await quiescent(fake, gateway)
            await forgotten(gateway, left.out_track_id)
        assert fake.messages_for(fake.dm_conversation_id(user)) == []


async def test_a_run_again_whose_card_was_never_created_answers_in_markdown(tmp_path: Path) -> None:
    # Short timeouts: a create could no longer land a second after the card was recorded.
    quick = {"send_timeout_s": 0.5, "send_retries": 0}
    async with FakeDingTalk() as fake:
        user = fake.users[1]
        async with card_gateway(tmp_path, GatedAgent(), fake, dingtalk=quick) as (_, _gateway):
            await fake.push(fake.dm(user, "go"))
            await until(fake, lambda: cards(fake) and cards(fake)[0].text == "Hello")
        # As if the process had died while DingTalk was creating the card: recorded, never shown.
        fake.cards.reset()
        again = GatedAgent()
        again.gate.set()
        async with card_gateway(tmp_path, again, fake, dingtalk=quick, watchdog_s=1.0) as (_, gateway):
            cid = fake.dm_conversation_id(user)
            await until(fake, lambda: fake.messages_for(cid))  # the answer, once, as markdown
            await quiescent(fake, gateway)
            assert [m.text.count("Hello there.") for m in fake.messages_for(cid)] == [1]
            assert cards(fake) == [] and again.runs == 1
            await until(fake, lambda: gateway.cards is not None and gateway.cards.unfinished == 0)


async def test_restart_finishes_a_card_whose_message_will_not_run_again(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        user = fake.users[1]
        async with card_gateway(tmp_path, GatedAgent(), fake) as (_, gateway):
            await fake.push(fake.dm(user, "go"))
            await until(fake, lambda: cards(fake) and cards(fake)[0].text == "Hello")
            msg_id = next(iter(gateway.cards.live.values())).message.id if gateway.cards else ""
        left = cards(fake)[0]
        # As if the message had been given up on (or dropped by /stop while queued) before a run again.
        await gateway.store.open()
        await gateway.store.inbox_set_state(gateway.first.name, msg_id, DONE, "given up")
        await gateway.store.close()
        again = GatedAgent()
        async with card_gateway(tmp_path, again, fake) as (_, gateway):
            await until(fake, lambda: left.status == "failed")
            # What it showed (saved at shutdown), then the notice.
            assert left.text == f"Hello\n\n{INTERRUPTED_TEXT}"
            assert again.runs == 0 and len(cards(fake)) == 1
            assert gateway.cards is not None and gateway.cards.recovered == 1


async def test_cards_an_older_edgecrab_left_open_are_finished_at_start(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        user = fake.users[1]
        async with card_gateway(tmp_path, GatedAgent(), fake) as (_, gateway):
            await fake.push(fake.dm(user, "go"))
            await until(fake, lambda: cards(fake) and cards(fake)[0].text == "Hello")
            live = next(iter(gateway.cards.live.values())) if gateway.cards else None
        assert live is not None
        left, store, code = cards(fake)[0], gateway.store, gateway.first.code
        # What edgecrab kept before card records: one kv key per robot, the message finished.
        await store.open()
        await store.inbox_set_state(gateway.first.name, live.message.id, DONE)
        await store.card_close(gateway.first.name, left.out_track_id)
        legacy = {"id": left.out_track_id, "conversation": fake.dm_conversation_id(user), "group": False,
                  "content_key": "msgContent", "opened_at": time.time()}
        await store.kv_set(f"cards.open.{code}", json.dumps({left.out_track_id: legacy}))
        await store.kv_set(f"cards.shown.{code}", json.dumps({left.out_track_id: "Hello"}))
        await store.close()
        async with card_gateway(tmp_path, GatedAgent(), fake) as (_, gateway):
            await until(fake, lambda: left.status == "failed")
            assert left.text == f"Hello\n\n{INTERRUPTED_TEXT}"
            assert await gateway.store.kv_get(f"cards.open.{code}") == "{}"


async def test_watchdog_finishes_a_silent_card_and_the_reply_still_arrives(tmp_path: Path) -> None:
    agent = GatedAgent()
    async with card_gateway(tmp_path, agent, watchdog_s=0.6) as (fake, _gateway):
        user = fake.users[1]
        cid = fake.dm_conversation_id(user)
        await fake.push(fake.dm(user, "go"))
        await until(fake, lambda: cards(fake) and cards(fake)[0].status == "failed")
        assert cards(fake)[0].text.startswith("Hello\n\n⚠️ No answer came")
        agent.gate.set()  # the answer comes after all: never lost, it goes out as markdown
        await until(fake, lambda: fake.messages_for(cid))
        assert "A second line" in fake.messages_for(cid)[0].text


class TwoGateAgent(Agent):
    """Streams "Hello", waits for ``first``, streams the rest, waits for ``second``, answers."""

    name = "two-gates"

    def __init__(self) -> None:
        self.first, self.second = anyio.Event(), anyio.Event()

    async def run(self, request: AgentRequest) -> AgentResult:
        return await self.stream(request, ignore_deltas)

    async def stream(self, request: AgentRequest, on_delta: Deltas) -> AgentResult:
        on_delta(REPLY[0])
        await self.first.wait()
        on_delta(REPLY[1])
        await self.second.wait()
        on_delta(REPLY[2])
        return AgentResult("".join(REPLY))


async def unavailable_mid_stream(
    fake: FakeDingTalk, gateway: Gateway, agent: TwoGateAgent, *scopes: str
) -> str:
    """Start a card, let it show "Hello", revoke ``scopes``, let an update fail, end the run; returns the
    DM's conversation id."""
    user = fake.users[1]
    await fake.push(fake.dm(user, "go"))
    await until(fake, lambda: cards(fake) and cards(fake)[0].text == "Hello")
    for scope in scopes:
        fake.cards.revoke(scope)
    assert gateway.cards is not None
    live = list(gateway.cards.live.values())
    agent.first.set()
    await until(fake, lambda: live[0].streamer.error is not None)
    agent.second.set()
    cid = fake.dm_conversation_id(user)
    await until(fake, lambda: fake.messages_for(cid))
    assert "A second line" in fake.messages_for(cid)[0].text  # the whole answer, as markdown
    return cid


async def test_cards_unavailable_mid_stream_still_finish_the_card(tmp_path: Path) -> None:
    agent = TwoGateAgent()
    async with card_gateway(tmp_path, agent) as (fake, gateway):
        await unavailable_mid_stream(fake, gateway, agent, "Card.Streaming.Write")
        card = cards(fake)[0]
        await until(fake, lambda: card.status == "failed")  # never left "writing"
        assert card.text == f"Hello\n\n{CONTINUED_NOTICE}"
        await quiescent(fake, gateway)
        await forgotten(gateway, card.out_track_id)


async def test_a_card_that_cannot_be_finished_is_kept_and_finished_later(tmp_path: Path) -> None:
    agent = TwoGateAgent()
    async with card_gateway(tmp_path, agent, watchdog_s=0.6) as (fake, gateway):
        await unavailable_mid_stream(fake, gateway, agent, "Card.Streaming.Write", "Card.Instance.Write")
        card = cards(fake)[0]
        assert card.status == "inputting" and gateway.cards is not None and gateway.cards.unfinished == 1
        record = await gateway.store.card_get(gateway.first.name, card.out_track_id)
        assert record is not None and record.text == f"Hello\n\n{CONTINUED_NOTICE}"  # kept for later
        fake.cards.grant()
        assert gateway.cards is not None
        gateway.cards.markdown_until = 0.0  # the 30 minutes on markdown are over: the watchdog tries again
        await until(fake, lambda: card.status == "failed")
        assert card.text == f"Hello\n\n{CONTINUED_NOTICE}"
        await until(fake, lambda: gateway.cards is not None and gateway.cards.unfinished == 0)
        await forgotten(gateway, card.out_track_id)


def test_card_config_defaults() -> None:
    card = CardConfig()
    assert (card.watchdog_s, card.update_interval_ms) == (600.0, 800)
    assert replace(card, watchdog_s=1).watchdog_s == 1
