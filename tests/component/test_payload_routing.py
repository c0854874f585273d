"""Every sample robot callback in ``tests/data/frames`` through a running gateway (issue 15).

Each payload is pushed over the fake DingTalk's real websocket to a gateway with a recording agent, one
after another, and what came of it is snapshotted per sample: the text of the user turn the agent was
given (or none), and every reply the user saw (a command's answer, the greeting, "can't read this").
Only the fields that tie a payload to the fake (conversation, session webhook, robot code, times) are
taken from the fake's own builder; everything the sender wrote is the sample's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.component.gwkit import ScriptedAgent, make_config, quiescent, running_gateway

pytestmark = pytest.mark.anyio

FRAMES = Path(__file__).parents[1] / "data" / "frames"
SAMPLES = sorted(
    p.stem for p in FRAMES.glob("*.json") if json.loads(p.read_text("utf-8"))["type"] == "CALLBACK"
)
# What ties a payload to the fake DingTalk: its conversation and the means to answer in it.
WIRING = (
    "conversationId",
    "sessionWebhook",
    "sessionWebhookExpiredTime",
    "robotCode",
    "createAt",
    "openThreadId",
)


def sample_data(name: str) -> dict[str, Any]:
    frame = json.loads((FRAMES / f"{name}.json").read_text("utf-8"))
    data: dict[str, Any] = json.loads(frame["data"])
    return data


def is_group(data: dict[str, Any]) -> bool:
    kind = data.get("conversationType")
    return str(kind) == "2" if kind else bool(data.get("conversationTitle"))


async def route_all(tmp_path: Path) -> dict[str, dict[str, Any]]:
    outcomes: dict[str, dict[str, Any]] = {}
    # Delivered even unmentioned (as for a robot that receives all group messages): the gateway decides.
    async with FakeDingTalk(deliver_unmentioned=True) as fake:
        agent = ScriptedAgent(reply="(answered)")
        config = make_config(fake, tmp_path, allowed_users=("*",))  # access has its own tests
        async with running_gateway(config, agent) as gateway:
            user = fake.users[0]
            for name in SAMPLES:
                sample = sample_data(name)
                wired = fake.group(user, "x") if is_group(sample) else fake.dm(user, "x")
                data = {k: v for k, v in sample.items() if k not in WIRING}
                data |= {k: wired[k] for k in WIRING if k in wired}
                conversation = data["conversationId"]
                seen_replies, seen_runs = len(fake.messages_for(conversation)), len(agent.requests)
                mid = await fake.push(data)
                await fake.wait_for_ack(mid)
                await quiescent(fake, gateway)
                runs = agent.requests[seen_runs:]
                outcomes[name] = {
                    "agent_user_turn": [r.messages[-1]["content"] for r in runs],
                    "replies": [
                        re.sub(r"connected for \d+ s", "connected for N s", m.text)  # /status: the uptime
                        for m in fake.messages_for(conversation)[seen_replies:]
                    ],
                }
    return outcomes


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return await route_all(tmp_path_factory.mktemp("routing"))


@pytest.mark.parametrize("name", SAMPLES)
async def test_sample_routing_snapshot(name: str, outcomes: dict[str, dict[str, Any]], snapshot: Any) -> None:
    assert outcomes[name] == snapshot


async def test_the_issue_15_payloads_reach_the_agent_as_they_should(
    outcomes: dict[str, dict[str, Any]],
) -> None:
    # @EdgeCrab/status from HarmonyOS is the command, not an empty message answered with the greeting
    runs = outcomes["group_rich_text_at_runs"]
    assert runs["agent_user_turn"] == [] and "👋" not in runs["replies"][0]
    assert runs["replies"] == outcomes["group_text_command"]["replies"]
    assert outcomes["group_rich_text_at_runs_request"]["agent_user_turn"][0].endswith(
        "@Ann review Ann's merge request"
    )
    # a shared document card reaches the agent as its title and link
    (card,) = outcomes["group_interactive_card_title_link"]["agent_user_turn"]
    assert card.endswith("[shared card: 项目看板]\nhttps://dingtalk.com/doc/kanban")
    assert not any("can't read" in r for r in outcomes["group_interactive_card_title_link"]["replies"])
    # a quoted chat record keeps its title and summary
    (record,) = outcomes["quoted_chat_record"]["agent_user_turn"]
    assert "> [chat record: 溯煜与祝欣莹的聊天记录]" in record and "unavailable" not in record
    # pictures stay between the text runs; other people mentioned are named
    (between,) = outcomes["group_rich_text_pictures_between"]["agent_user_turn"]
    # (the recorded frames' download codes are unknown to the fake: each picture is a note saying so)
    note = "[picture could not be downloaded: DingTalk refused the download code"
    runs = ["这个问题示例图如下：", note, "通过以上示意图可以明白完整的交互流程", note, "第二张图是结果"]
    pieces = between.split("\n\n")
    assert len(pieces) == len(runs) and all(p.startswith(r) for p, r in zip(pieces, runs, strict=True))
    (others,) = outcomes["group_text_other_mentions"]["agent_user_turn"]
    assert others.startswith("(also mentioned: @Tom (staffId 16650123698")
