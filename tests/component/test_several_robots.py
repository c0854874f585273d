"""Several robots in one gateway (issue 20) against the fake DingTalk over real sockets: each robot answers
the messages sent to it with its own app's token (the fake refuses a token of another app on every send
endpoint), hooks see the robot's name, the same person has one session per robot, ``gateway.send`` picks
the robot, and one robot's connection going down leaves the other answering."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from edgecrab import hookimpl
from edgecrab.config import Config, HooksConfig, load_config
from edgecrab.config.model import CardConfig
from edgecrab.dingtalk.stream import CONNECTED
from edgecrab.events import Message
from edgecrab.hooks.manager import HookManager
from edgecrab.testing.fakedingtalk import FakeApp, FakeDingTalk
from tests.component.gwkit import ScriptedAgent, make_config, quiescent, running_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

SALES = FakeApp("ding_sales_key", "sales_secret_value", name="Sales")
HELP = FakeApp("ding_help_key", "help_secret_value", name="Helpdesk")


def two_robots(fake: FakeDingTalk, tmp_path: Path, **sales: Any) -> Config:
    """Robots ``sales`` and ``help``, each its own app; replies through the OpenAPI (a sessionWebhook's URL
    is its own credential: only OpenAPI sends show which token a robot uses)."""
    base = make_config(fake, tmp_path, webhook_expiry_margin_s=10**9)
    robots = [
        replace(base.dingtalk, name=name, app_key=app.client_id, app_secret=app.client_secret,
                robot_code=app.robot_code)
        for name, app in (("sales", SALES), ("help", HELP))
    ]
    return replace(base, dingtalk=replace(robots[0], **sales), other_robots=(robots[1],))


def rejected_sends(fake: FakeDingTalk) -> list[Any]:
    return [r for r in fake.requests if "/robot/" in r.path and r.status != 200]


async def test_each_robot_answers_with_its_own_app_and_its_own_sessions(tmp_path: Path) -> None:
    seen: list[str] = []

    class Watch:
        @hookimpl
        async def message_received(self, message: Message) -> None:
            seen.append(message.robot)

    hooks = HookManager.load(HooksConfig(entry_points=False), builtins=[("watch", Watch())])
    agent = ScriptedAgent()
    async with FakeDingTalk(apps=[SALES, HELP]) as fake:
        user = fake.user("user1001")
        async with running_gateway(two_robots(fake, tmp_path), agent, hooks=hooks) as gw:
            await fake.wait_for_connections(2)
            assert sorted(c.app for c in fake.connections) == sorted([SALES.client_id, HELP.client_id])
            to_sales = fake.dm(user, "hi sales", app=SALES)
            to_help = fake.dm(user, "hi help", app=HELP)
            await fake.push(to_sales, app=SALES)
            await fake.push(to_help, app=HELP)
            await fake.wait_for_outbound(2)
            await quiescent(fake, gw)

            [sales_reply] = fake.messages_for(to_sales["conversationId"])
            [help_reply] = fake.messages_for(to_help["conversationId"])
            assert (sales_reply.app, sales_reply.via, sales_reply.text) == (
                SALES.client_id, "batchSend", "You said: hi sales")
            assert (help_reply.app, help_reply.via, help_reply.text) == (
                HELP.client_id, "batchSend", "You said: hi help")
            assert rejected_sends(fake) == []
            assert sorted(seen) == ["help", "sales"]
            # The same person, two robots: two sessions, each robot's own.
            keys = sorted(r.session_key for r in agent.requests)
            assert [k.split(":")[0] for k in keys] == ["help", "sales"]
            assert keys[0].split(":", 1)[1] == keys[1].split(":", 1)[1]

            # Proactive sends go out as the robot named, with its token.
            await gw.send(robot="help", user=user.staff_id, text="ticket closed")
            await gw.send(user=user.staff_id, text="new offer")  # no robot: the first one
            await quiescent(fake, gw)
            sent = {r.text: r.app for r in fake.outbound if r.via == "batchSend"}
            assert sent["ticket closed"] == HELP.client_id and sent["new offer"] == SALES.client_id
            with pytest.raises(ValueError, match="unknown robot 'nope': the robots here are 'sales', 'help'"):
                await gw.send(robot="nope", user=user.staff_id, text="x")
            assert rejected_sends(fake) == []


async def test_the_fake_refuses_a_token_of_another_app(tmp_path: Path) -> None:
    """What makes the test above able to fail: the help robot's code sent with the sales app's token."""
    async with FakeDingTalk(apps=[SALES, HELP]) as fake:
        config = two_robots(fake, tmp_path)
        mixed = replace(config, dingtalk=replace(config.dingtalk, robot_code=HELP.robot_code))
        async with running_gateway(mixed, ScriptedAgent()) as gw:
            await gw.send(user=fake.user("user1001").staff_id, text="hi")
            await fake.wait_for(lambda: bool(rejected_sends(fake)))
            assert rejected_sends(fake)[0].status == 400 and not fake.outbound


async def test_one_robot_offline_the_other_keeps_answering(tmp_path: Path) -> None:
    async with FakeDingTalk(apps=[SALES, HELP]) as fake:
        config = two_robots(fake, tmp_path, reconnect_initial_s=1.0, reconnect_max_s=1.0)
        user = fake.user("user1001")
        async with running_gateway(config, ScriptedAgent()) as gw:
            await fake.wait_for_connections(2)
            sales = gw.robots["sales"]
            assert sales.stream is not None
            await fake.abort(app=SALES.client_id)
            stream = sales.stream
            await fake.wait_for(lambda: stream.state != CONNECTED)
            to_help = fake.dm(user, "still there?", app=HELP)
            await fake.push(to_help, app=HELP)
            await fake.wait_for(lambda: bool(fake.messages_for(to_help["conversationId"])))
            assert sales.stream.state != CONNECTED  # answered while the other robot was offline
            assert gw.ops.status()["robots"]["sales"]["connection"]["state"] != CONNECTED
            # It comes back and answers what was sent to it meanwhile.
            to_sales = fake.dm(user, "back?", app=SALES)
            await fake.push(to_sales, app=SALES)
            await fake.wait_for(lambda: bool(fake.messages_for(to_sales["conversationId"])), timeout=10)
            assert fake.messages_for(to_sales["conversationId"])[0].app == SALES.client_id


def failed_codes(fake: FakeDingTalk) -> set[str]:
    return {r.body["robotCode"] for r in fake.requests if "/robot/" in r.path and r.status == 500}


async def test_after_a_restart_each_robot_resends_only_its_own_unsent_chunks(tmp_path: Path) -> None:
    """Two robots, one store: what each left unsent at stop goes out after the restart from that robot
    alone, with its own token (a chunk resumed by the other robot would be refused: its token is of the
    other app)."""
    async with FakeDingTalk(apps=[SALES, HELP]) as fake:
        config = two_robots(fake, tmp_path)
        user = fake.user("user1001").staff_id
        fake.faults.fail("/v1.0/robot/*", status=500, rate=1.0)  # DingTalk down: the chunks stay unsent
        async with running_gateway(config, ScriptedAgent()) as gw:
            await gw.send(robot="sales", user=user, text="from sales")
            await gw.send(robot="help", user=user, text="from help")
            await fake.wait_for(lambda: failed_codes(fake) == {SALES.robot_code, HELP.robot_code})
            assert len(await gw.store.outbox_pending()) == 2
        fake.faults.clear()
        fake.reset_records()
        async with running_gateway(config, ScriptedAgent()) as gw:
            await fake.wait_for(lambda: len(fake.outbound) == 2)
            await quiescent(fake, gw)
            sent = sorted((r.text, r.app) for r in fake.outbound)
            assert sent == [("from help", HELP.client_id), ("from sales", SALES.client_id)]
            assert rejected_sends(fake) == []
            assert await gw.store.outbox_pending() == []


RELOADABLE = """
platforms:
  dingtalk:
    api_base: {base}
    chunk_interval_ms: 20
    webhook_expiry_margin_s: 1000000000
    robots:
      - {{name: sales, app_key: {sales.client_id}, app_secret: {sales.client_secret}, agent: seller}}
      - name: help
        app_key: {help.client_id}
        app_secret: {help.client_secret}
        allowed_users: [{allowed}]
agents:
  seller: {{type: echo, system_prompt: {prompt}}}
storage:
  url: sqlite:///{db}
"""


async def test_a_reload_applies_each_robots_access_rules_and_agent_prompt(tmp_path: Path) -> None:
    """The second robot's allowed_users and a named agent's prompt are reloaded too (a reload applied
    only the first robot's keys and the top-level agent's)."""
    path = tmp_path / "edgecrab.yaml"

    def write(allowed: str, prompt: str) -> None:
        path.write_text(RELOADABLE.format(
            base=fake.base_url, sales=SALES, help=HELP, allowed=allowed, prompt=prompt, db=tmp_path / "s.db"
        ), encoding="utf-8")

    async with FakeDingTalk(apps=[SALES, HELP]) as fake:
        user = fake.user("user1001")
        write("someone-else", "Sell.")
        async with running_gateway(load_config(path, env={}), ScriptedAgent()) as gw:
            await fake.wait_for_connections(2)
            help_robot, sales = gw.robots["help"], gw.robots["sales"]
            denied = fake.dm(user, "let me in", app=HELP)
            await fake.push(denied, app=HELP)
            await fake.wait_for(lambda: bool(fake.messages_for(denied["conversationId"])))
            assert not fake.messages_for(denied["conversationId"])[0].text.startswith("You said")
            write(f"someone-else, {user.staff_id}", "Sell more.")
            assert await gw.reload() == []
            assert help_robot.dt.allowed_users == ("someone-else", user.staff_id)
            assert sales.runner.system_prompt == "Sell more."
            await fake.push(fake.dm(user, "now?", app=HELP), app=HELP)
            await fake.wait_for(lambda: len(fake.messages_for(denied["conversationId"])) == 2)
            assert fake.messages_for(denied["conversationId"])[1].text == "You said: now?"


async def test_help_hooks_and_status_are_each_robots_own(tmp_path: Path, snapshot: Any) -> None:
    """A hook command registered for one robot (``robots=``) is that robot's alone: /help and /hooks list
    it there only, and the other robot does not know it; /status names the robot answering."""

    class Commands:
        @hookimpl
        def register_commands(self, register: Any) -> None:
            register("/ticket", lambda: "ticket opened", help="Open a ticket", robots=["help"])
            register("/ping", lambda: "pong", help="Check the gateway")

    hooks = HookManager.load(HooksConfig(entry_points=False), builtins=[("commands", Commands())])
    async with FakeDingTalk(apps=[SALES, HELP]) as fake:
        user = fake.user("user1001")
        async with running_gateway(two_robots(fake, tmp_path), ScriptedAgent(), hooks=hooks) as gw:
            await fake.wait_for_connections(2)
            answers: dict[str, list[str]] = {}
            for app, name in ((SALES, "sales"), (HELP, "help")):
                for text in ("/help", "/hooks", "/status", "/ticket"):
                    sent = fake.dm(user, text, app=app)
                    await fake.push(sent, app=app)
                    count = len(answers.get(name, [])) + 1
                    cid = sent["conversationId"]
                    await fake.wait_for(lambda c=cid, n=count: len(fake.messages_for(c)) == n)
                    answers[name] = [m.text for m in fake.messages_for(sent["conversationId"])]
            await quiescent(fake, gw)
            assert answers["sales"][3] == "❓ Unknown command `/ticket` — try /help"
            assert answers["help"][3] == "ticket opened"
            status = {name: [line for line in texts[2].splitlines() if "Robot" in line]
                      for name, texts in answers.items()}
            assert status == {"sales": ["- Robot: sales"], "help": ["- Robot: help"]}
            assert {name: texts[:2] for name, texts in answers.items()} == snapshot


async def test_each_robot_has_its_own_token_cache_rate_limits_card_budget_and_metrics(tmp_path: Path) -> None:
    """Per robot, as configured for it: the token cache, the OpenAPI limiters, the cards' call budget; and
    one metrics series per robot."""
    card = CardConfig(qps=4.0)
    async with FakeDingTalk(apps=[SALES, HELP]) as fake:
        config = two_robots(fake, tmp_path, openapi_qps=2.0, reply_mode="card", card=card)
        config = replace(config, other_robots=(replace(config.other_robots[0], reply_mode="card"),))
        user = fake.user("user1001")
        async with running_gateway(config, ScriptedAgent()) as gw:
            await fake.wait_for_connections(2)
            sales, help_ = gw.robots["sales"], gw.robots["help"]
            assert sales.sender.tokens is not help_.sender.tokens
            batch = "/v1.0/robot/oToMessages/batchSend"
            assert (sales.sender.limiter(batch).rate, help_.sender.limiter(batch).rate) == (2.0, 20.0)
            assert sales.cards is not None and help_.cards is not None
            assert sales.cards.client.limiter is not help_.cards.client.limiter
            assert sales.cards.client.limiter.rate < 4.0 < help_.cards.client.limiter.rate
            for app in (SALES, HELP):
                await fake.push(fake.dm(user, "hi", app=app), app=app)
            await fake.wait_for(lambda: len(fake.cards.cards) == 2)
            await quiescent(fake, gw)
            metrics = generate_latest(gw.metrics.registry).decode()
            for app in (SALES, HELP):
                assert f'edgecrab_ack_seconds_count{{robot="{app.robot_code}"}} 1.0' in metrics
