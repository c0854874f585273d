"""Two robots of ONE app in one gateway (issue 20), against the fake DingTalk over real sockets.

Robots sharing an app key share its token and its Stream connection: what tells them apart is the robot
code. The fake models an app with several robots (``FakeApp(more_robots=...)``) and refuses a robot code
of another app on every OpenAPI send, card deliver and media download, and a download code sent to one
robot when another robot asks for it; so a robot answering with the other's code fails these tests.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from edgecrab.agents.base import Agent, Deltas, ignore_deltas
from edgecrab.config import Config, MediaConfig
from edgecrab.config.model import CardConfig
from edgecrab.dingtalk.cards import STOPPED_MARK
from edgecrab.events import AgentRequest, AgentResult
from edgecrab.testing.fakedingtalk import FakeApp, FakeDingTalk
from edgecrab.testing.fakedingtalk.cardcontrol import press
from tests.component.gwkit import ScriptedAgent, make_config, running_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

TEAM = FakeApp("ding_team_key", "team_secret_value", robot_code="codeSales", more_robots=("codeHelp",))
OTHER = FakeApp("ding_other_key", "other_secret_value", name="Other")
TOKEN = "x-acs-dingtalk-access-token"


def one_app(fake: FakeDingTalk, tmp_path: Path, **common: Any) -> Config:
    """Robots ``sales`` (codeSales) and ``help`` (codeHelp) of the app TEAM; replies through the OpenAPI
    (only OpenAPI sends carry a robotCode)."""
    base = make_config(fake, tmp_path, webhook_expiry_margin_s=10**9, **common)
    sales, help_ = (
        replace(
            base.dingtalk, name=name, app_key=TEAM.client_id, app_secret=TEAM.client_secret, robot_code=code
        )
        for name, code in (("sales", "codeSales"), ("help", "codeHelp"))
    )
    return replace(base, dingtalk=sales, other_robots=(help_,))


def sends(fake: FakeDingTalk) -> list[Any]:
    return [r for r in fake.requests if "/robot/" in r.path or "/card/" in r.path]


async def test_two_robots_of_one_app_answer_over_one_connection_each_with_its_code(tmp_path: Path) -> None:
    async with FakeDingTalk(apps=[TEAM]) as fake:
        user = fake.user("user1001")
        async with running_gateway(one_app(fake, tmp_path), ScriptedAgent()) as gw:
            await fake.wait_for_connections(1)
            assert gw.robots["help"].stream is None and gw.robots["sales"].stream is not None
            to_sales = fake.dm(user, "hi sales", app="codeSales")
            to_help = fake.dm(user, "hi help", app="codeHelp")
            assert to_help["robotCode"] == "codeHelp"
            assert to_sales["conversationId"] != to_help["conversationId"]  # a DM per robot
            await fake.push(to_sales)
            await fake.push(to_help)
            await fake.wait_for(lambda: len(fake.outbound) == 2)
            [sales_reply] = fake.messages_for(to_sales["conversationId"])
            [help_reply] = fake.messages_for(to_help["conversationId"])
            assert (sales_reply.robot, sales_reply.body["robotCode"], sales_reply.text) == (
                "codeSales",
                "codeSales",
                "You said: hi sales",
            )
            assert (help_reply.robot, help_reply.body["robotCode"], help_reply.text) == (
                "codeHelp",
                "codeHelp",
                "You said: hi help",
            )

            await gw.send(robot="help", user=user.staff_id, text="ticket closed")
            await fake.wait_for(lambda: any(r.text == "ticket closed" for r in fake.outbound))
            closed = next(r for r in fake.outbound if r.text == "ticket closed")
            assert closed.robot == "codeHelp" and closed.conversation_id == to_help["conversationId"]
            assert all(r.status == 200 for r in sends(fake))
            assert fake.connections_opened == 1  # one connection for the app, never one per robot


async def test_the_fake_refuses_a_robot_code_of_another_app(tmp_path: Path) -> None:
    """What makes these tests able to fail: a robot code must belong to the token's app, and a download code
    to the robot that received it."""
    async with FakeDingTalk(apps=[TEAM, OTHER]) as fake, httpx.AsyncClient(base_url=fake.base_url) as http:
        token = (
            await http.post(
                "/v1.0/oauth2/accessToken", json={"appKey": TEAM.client_id, "appSecret": TEAM.client_secret}
            )
        ).json()["accessToken"]
        message = {"msgKey": "sampleText", "msgParam": '{"content": "hi"}', "userIds": ["user1001"]}

        async def send(code: str) -> int:
            body = {**message, "robotCode": code}
            return (
                await http.post("/v1.0/robot/oToMessages/batchSend", json=body, headers={TOKEN: token})
            ).status_code

        codes = ("codeSales", "codeHelp", OTHER.robot_code)
        assert [await send(code) for code in codes] == [200, 200, 400]
        picture = fake.picture("user1001", app="codeHelp")

        async def download(code: str) -> int:
            body = {"downloadCode": picture["content"]["downloadCode"], "robotCode": code}
            return (
                await http.post("/v1.0/robot/messageFiles/download", json=body, headers={TOKEN: token})
            ).status_code

        assert [await download("codeSales"), await download("codeHelp")] == [400, 200]
        with pytest.raises(KeyError, match="has no robot 'nope'"):
            TEAM.as_robot("nope")


class GatedAgent(Agent):
    """Streams ``Hello``, then waits for ``gate`` (or a stop) before the rest."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.cancelled: list[str] = []

    async def run(self, request: AgentRequest) -> AgentResult:
        return await self.stream(request, ignore_deltas)

    async def stream(self, request: AgentRequest, on_delta: Deltas) -> AgentResult:
        on_delta("Hello")
        try:
            await self.gate.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(request.session_key)
            raise
        on_delta(" world")
        return AgentResult("Hello world")


async def test_the_stop_button_stops_the_run_of_the_robot_whose_card_it_is(tmp_path: Path) -> None:
    """Card callbacks come on the app's one connection and name only the card: the second robot's card
    stops the second robot's run (its cards, not the first robot's, hold the card)."""
    agent = GatedAgent()
    card = CardConfig(update_interval_ms=100, stop_button=True)
    async with FakeDingTalk(apps=[TEAM]) as fake:
        user = fake.user("user1001")
        async with running_gateway(one_app(fake, tmp_path, reply_mode="card", card=card), agent):
            await fake.wait_for_connections(1)
            await fake.push(fake.dm(user, "go", app="codeHelp"))
            await fake.wait_for(lambda: any(c.text == "Hello" for c in fake.cards.cards.values()))
            [opened] = fake.cards.cards.values()
            assert [d.robot_code for d in opened.deliveries] == ["codeHelp"]
            await press(fake.cards, opened.out_track_id)
            await fake.wait_for(lambda: opened.status == "finished")
            assert opened.text == f"Hello\n\n{STOPPED_MARK}"
            assert [key.split(":")[0] for key in agent.cancelled] == ["help"]


@pytest.mark.parametrize("layout", ["one app", "two apps"])
async def test_a_picture_is_downloaded_with_the_receiving_robots_code_and_token(
    tmp_path: Path, layout: str
) -> None:
    """A picture to the second robot: downloaded with its robot code (one app: the first robot's code is
    refused for it) and its app's token (two apps: the first app's token is refused)."""
    agent = ScriptedAgent()
    media = MediaConfig(directory=str(tmp_path / "media"), merge_window_ms=0)
    async with FakeDingTalk(apps=[TEAM, OTHER]) as fake:
        config = replace(one_app(fake, tmp_path), media=media)
        second = "codeHelp"
        if layout == "two apps":
            second = OTHER.robot_code
            help_ = replace(
                config.other_robots[0],
                app_key=OTHER.client_id,
                app_secret=OTHER.client_secret,
                robot_code=second,
            )
            config = replace(config, other_robots=(help_,))
        async with running_gateway(config, agent):
            await fake.wait_for_connections(1 if layout == "one app" else 2)
            await fake.push(fake.picture("user1001", app=second))
            await fake.wait_for(lambda: bool(agent.requests))
            downloads = [r for r in fake.requests if r.path.endswith("/messageFiles/download")]
            assert [(r.status, r.body["robotCode"]) for r in downloads] == [(200, second)]
            assert fake.state.counters["files_served"] == 1
            assert agent.requests[0].session_key.startswith("help:")
            assert "could not be downloaded" not in str(agent.requests[0].messages[-1]["content"])
