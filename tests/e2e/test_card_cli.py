"""End to end with ``reply_mode: card``: ``edgecrab gateway start`` as a subprocess against the fake DingTalk
and the fake OpenAI server streaming slowly, token by token."""

from __future__ import annotations

import math

import pytest

from edgecrab.dingtalk.cards import STOPPED_MARK
from edgecrab.dingtalk.cardtext import to_card_markdown
from edgecrab.testing.fakedingtalk.cardcontrol import press
from edgecrab.testing.gatewayconfig import write_gateway_config

from .test_gateway_cli import stack, start_gateway, stop_gateway

__all__ = ["stack"]  # the fixture, shared with test_gateway_cli

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

INTERVAL_S = 0.2


async def test_cards_stream_slow_tokens_and_the_stop_button_stops_the_model(stack) -> None:
    fake, llm, tmp = stack
    reply = "Here is the plan:\n" + " ".join(f"step{i}" for i in range(30))
    llm.configure({"token_delay_s": 0.05, "reply": reply})
    config = write_gateway_config(
        tmp / "edgecrab.yaml",
        api_base=fake.base_url,
        llm_base_url=llm.base_url,
        dingtalk={
            "reconnect_initial_s": 0.1,
            "reply_mode": "card",
            "card": {"update_interval_ms": int(INTERVAL_S * 1000), "stop_button": True},
        },
        agent={"timeout_s": 30},
    )
    gw = await start_gateway(fake, config)
    try:
        user = fake.users[1]
        cid = fake.dm_conversation_id(user)
        await fake.push(fake.dm(user, "plan my day"))
        await fake.wait_for(lambda: fake.cards.cards, 10)
        card = next(iter(fake.cards.cards.values()))
        # Text shows up while the model is still answering.
        await fake.wait_for(lambda: "step" in card.text, 10)
        assert card.status == "inputting" and llm.tokens_sent < 30
        await fake.wait_for(lambda: card.status == "finished", 20)
        assert card.text == to_card_markdown(reply)
        assert fake.messages_for(cid) == []  # the card was the reply
        duration = (card.frames[-1].t - card.created_t) if card.frames else 0.0
        calls = 1 + len(card.frames) + len(card.updates)
        assert calls <= 3 + math.ceil(duration / INTERVAL_S) + 1, (calls, duration)

        # A long answer, stopped with the card's button: the model's stream is closed too.
        llm.configure({"token_delay_s": 0.3, "reply": " ".join(["word"] * 80)})
        before = llm.disconnects
        await fake.push(fake.dm(user, "tell me a long story"))
        await fake.wait_for(lambda: len(fake.cards.cards) == 2, 10)
        second = list(fake.cards.cards.values())[1]
        await fake.wait_for(lambda: "word" in second.text, 10)
        await press(fake.cards, second.out_track_id)
        await llm.wait_disconnects(before + 1)
        await fake.wait_for(lambda: second.status == "finished", 10)
        assert second.text.endswith(STOPPED_MARK)
    finally:
        code, _ = await stop_gateway(gw)
    assert code == 0, gw.log
