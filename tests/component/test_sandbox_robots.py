"""The sandbox with several robots (issue 20): the emulated apps mirror the configured ones (robots sharing
an app key share one emulated app, with a robot code each), and the web chat API sends to the robot the
page picked, in that robot's own DM."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from edgecrab.config import SANDBOX_APP_KEY, load_config
from edgecrab.sandbox import emulated_apps, open_emulator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

CONFIG = """\
platforms:
  dingtalk:
    robots:
      - {name: sales, robot_code: sales-code}
      - {name: help, robot_code: help-code}
      - {name: ops, app_key: real-ops-key, app_secret: real-ops-secret}
"""


async def test_robots_of_one_app_share_an_emulated_app_and_the_chat_sends_to_the_robot_picked(
    tmp_path: Path,
) -> None:
    (tmp_path / "edgecrab.yaml").write_text(CONFIG, encoding="utf-8")
    config = load_config(tmp_path / "edgecrab.yaml", env={"EDGECRAB_HOME": str(tmp_path)}, sandbox=True)
    apps, robots = emulated_apps(config)
    assert [(a.client_id, a.robot_codes) for a in apps] == [
        (SANDBOX_APP_KEY, (SANDBOX_APP_KEY, "sandbox-robot-help")),
        (SANDBOX_APP_KEY + "-ops", (SANDBOX_APP_KEY + "-ops",)),  # never the configured credentials
    ]
    assert robots == [
        ("sales", SANDBOX_APP_KEY),
        ("help", "sandbox-robot-help"),
        ("ops", SANDBOX_APP_KEY + "-ops"),
    ]

    async with (
        open_emulator(apps, port=0, robots=robots) as fake,
        httpx.AsyncClient(base_url=fake.base_url, timeout=5) as http,
    ):
        directory = (await http.get("/sandbox/directory")).json()
        assert [(r["name"], r["code"], r["app"]) for r in directory["robots"]] == [
            ("sales", SANDBOX_APP_KEY, SANDBOX_APP_KEY),
            ("help", "sandbox-robot-help", SANDBOX_APP_KEY),
            ("ops", SANDBOX_APP_KEY + "-ops", SANDBOX_APP_KEY + "-ops"),
        ]
        alice = next(u for u in directory["users"] if u["staff_id"] == "user1002")
        dms = alice["dm_conversation_ids"]
        assert len(set(dms.values())) == 3 and alice["dm_conversation_id"] == dms[SANDBOX_APP_KEY]

        async with fake.subscribe() as events:
            body = {"user": alice["key"], "text": "hi help", "robot": "sandbox-robot-help"}
            sent = (await http.post("/sandbox/send", json=body)).json()
            assert sent["conversation_id"] == dms["sandbox-robot-help"]
            chat = await anext(e async for e in events if e["kind"] == "chat")
            assert chat["robot"] == "sandbox-robot-help"
            frame = await anext(e async for e in events if e["kind"] == "frame")
            assert frame["app"] == SANDBOX_APP_KEY  # the help robot's app: queued for its connection

        refused = await http.post("/sandbox/send", json={**body, "robot": "nope"})
        assert refused.status_code == 400 and refused.json()["error"].startswith("unknown robot 'nope';")
