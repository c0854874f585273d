"""Published payload shapes through the real ``edgecrab`` CLI (issue 15, "Real payload shapes").

``tests/component/test_payload_routing.py`` snapshots every sample in ``tests/data/frames`` through an
in-process gateway; this test takes the shapes that used to lose the user's words through
``edgecrab gateway start --sandbox`` as a subprocess, the way a user meets them: the sample's own content,
sender and mentions, pushed by the emulator into one of its conversations, answered by the echo agent,
whose reply shows what the agent was given.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.component.test_payload_routing import FRAMES
from tests.component.test_payload_routing import WIRING as ROUTING_WIRING
from tests.e2e.test_day_one import clean_env, sandbox_process

# What ties a payload to a conversation and the means to answer in it (the routing test's list), plus the
# robot's own id: all taken from the emulator.
WIRING = (*ROUTING_WIRING, "chatbotUserId")

pytestmark = pytest.mark.timeout(90)


def pushed(client: httpx.Client, sample: str) -> str:
    """Push ``sample``'s payload into a conversation of the emulator; the bot's reply."""
    data: dict[str, Any] = json.loads(json.loads((FRAMES / f"{sample}.json").read_text("utf-8"))["data"])
    kind = "group" if str(data.get("conversationType")) == "2" else "dm"
    wired = client.post("/_fake/build", json={"kind": kind, "text": "x", "at_bot": True}).json()["data"]
    robot_id = wired.get("chatbotUserId")
    for user in data.get("atUsers") or []:  # the sample's @robot is this emulator's robot
        if user.get("dingtalkId") == data.get("chatbotUserId") and robot_id:
            user["dingtalkId"] = robot_id
    data |= {key: wired[key] for key in WIRING if key in wired}
    data["msgId"] = f"{sample}-{time.monotonic_ns()}"
    cid = data["conversationId"]

    def replies() -> list[dict[str, Any]]:
        return list(client.get("/_fake/outbound", params={"conversation_id": cid}).json()["outbound"])

    seen = len(replies())  # groups share the emulator's one group: only what comes after counts
    client.post("/_fake/push", json={"data": data})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        out = replies()
        if len(out) > seen:
            return str(out[seen]["text"])
        time.sleep(0.05)
    raise AssertionError(f"no reply to {sample}")


def test_the_request_survives_the_shapes_that_used_to_lose_it(tmp_path: Path) -> None:
    config = tmp_path / "edgecrab.yaml"
    config.write_text(
        "platforms:\n  dingtalk:\n    allowed_users: '*'\nagent:\n  type: echo\n", encoding="utf-8"
    )
    with sandbox_process(tmp_path, config, clean_env(tmp_path)) as (base, _), httpx.Client(
        base_url=base, timeout=5
    ) as client:
        # @name runs with no spaces: only the robot's own @name goes, the request and @Ann stay.
        reply = pushed(client, "group_rich_text_at_runs_request")
        assert "review Ann's merge request" in reply and "@Ann" in reply
        assert "Hi! Ask me anything" not in reply
        # Other people mentioned are named to the agent.
        assert "also mentioned: @Tom" in pushed(client, "group_text_other_mentions")
        # A shared document card: its title and link, not "can't read this kind of message".
        reply = pushed(client, "group_interactive_card_title_link")
        assert "项目看板" in reply and "https://dingtalk.com/doc/kanban" in reply
        # A quoted chat record: its title and summary, not "quoted content unavailable".
        reply = pushed(client, "quoted_chat_record")
        assert "重新学习一下" in reply and "这个就是" in reply and "unavailable" not in reply
        # Quoted richText with DingTalk's {msgType, content} item keys keeps its text.
        reply = pushed(client, "quoted_rich_text_msgtype_keys")
        assert "unavailable" not in reply
