"""Schedules in a running gateway against the fake DingTalk over loopback sockets (issue 20): a text
schedule is sent through batchSend and recorded as fired in the store, a prompt schedule runs the agent in
its own session and sends the answer into a group, and an admin's /status (and GET /status) show the next
run of each."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgecrab.config.model import ScheduleConfig
from edgecrab.store import FIRED
from edgecrab.testing.fakedingtalk import DEFAULT_GROUP_ID, FakeDingTalk
from tests.component.gwkit import ScriptedAgent, make_config, running_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

ADMIN = "manager807"
"""An admin of the fake's organisation (``isAdmin`` in the callbacks)."""


async def test_a_text_schedule_is_sent_and_admins_see_its_next_run(tmp_path: Path) -> None:
    tick = ScheduleConfig(name="tick", cron="* * * * * *", timezone="UTC", users=(ADMIN,), text="tick")
    async with FakeDingTalk() as fake:
        config = replace(make_config(fake, tmp_path), schedules=(tick,))
        async with running_gateway(config, ScriptedAgent()) as gw:
            [sent, *_] = await fake.wait_for_outbound(1)
            assert (sent.via, sent.user_ids, sent.text) == ("batchSend", [ADMIN], "tick")
            record = (await gw.store.schedule_records())["tick"]
            assert record.fired_slot is not None and record.fired_slot == int(record.fired_slot)

            data = fake.dm(ADMIN, "/status")
            await fake.push(data)
            await fake.wait_for(lambda: any("Idle" in m.text for m in fake.outbound))
            [status] = [m for m in fake.outbound if "Idle" in m.text]
            assert "Schedule **tick** (`* * * * * *`, UTC): next " in status.text
            [json_status] = gw.ops.status()["schedules"]
            assert (json_status["name"], json_status["target"]) == ("tick", f"users {ADMIN}")
            assert record.outcome == FIRED


async def test_a_prompt_schedule_asks_the_agent_in_its_own_session(tmp_path: Path) -> None:
    digest = ScheduleConfig(
        name="digest", cron="* * * * * *", group=DEFAULT_GROUP_ID, prompt="Summarise the day"
    )
    agent = ScriptedAgent()
    async with FakeDingTalk() as fake:
        fake.add_group(DEFAULT_GROUP_ID)
        config = replace(make_config(fake, tmp_path), schedules=(digest,))
        async with running_gateway(config, agent) as gw:
            [sent, *_] = await fake.wait_for_outbound(1)
            assert (sent.via, sent.conversation_id) == ("groupSend", DEFAULT_GROUP_ID)
            assert sent.text == "You said: Summarise the day"
            assert agent.requests[0].session_key == "schedule:default:digest"
            history = await gw.store.history("schedule:default:digest", 10)
            assert [t.role for t in history[:2]] == ["user", "assistant"]
