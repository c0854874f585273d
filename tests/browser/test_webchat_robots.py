"""Issue 20 in the browser: the web chat of a sandbox with two robots (of one app: one Stream connection,
two robot codes). The robot picker chooses whom you talk to; each robot has its own DM and answers with
its own agent and robot code; a proactive message (``edgecrab send --robot help``) shows in that robot's
DM, with an unread badge on the robot while another robot's DM is open."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_webchat import (
    REPLY_S,
    ROOT,
    _bot_bubbles,
    _page,
    _sandbox,
    _send,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

TOKEN = "webchat-robots-token"
CONFIG = """\
platforms:
  dingtalk:
    robots:
      - name: sales
        robot_code: sales-code
      - name: help
        robot_code: help-code
        agent: helper
agent:
  type: echo
agents:
  helper:
    type: python
    callable: helpbot:answer
http:
  port: PORT
  token: TOKEN
storage:
  url: sqlite:///{db}
"""
HELPBOT = """
def answer(request):
    return "help desk here: " + request.messages[-1]["content"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def robots_sandbox() -> Iterator[tuple[str, str]]:
    """The sandbox with two robots; yields the chat URL and the config text (for ``edgecrab send``)."""
    config = CONFIG.replace("PORT", str(_free_port())).replace("TOKEN", TOKEN)
    for url in _sandbox(config, {"helpbot": HELPBOT}):
        yield url, config


@pytest.fixture
def robots_page(browser: Any, robots_sandbox: tuple[str, str]) -> Iterator[Any]:
    yield from _page(browser, robots_sandbox[0])


def _outbound(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url + "/_fake/outbound", timeout=10) as response:
        return list(json.load(response)["outbound"])


def _send_cli(config_text: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``edgecrab send`` with the sandbox's config: through the running gateway's ops port (the dummy
    credentials only let the config load; they are never used)."""
    work = Path(tempfile.mkdtemp(prefix="edgecrab-send-"))
    config = work / "edgecrab.yaml"
    config.write_text(config_text.format(db=work / "state.db"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
    env.update(EDGECRAB_HOME=str(work), DINGTALK_APP_KEY="unused", DINGTALK_APP_SECRET="unused")
    command = [sys.executable, "-m", "edgecrab", "--config", str(config), "send", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def test_the_robot_picker_talks_to_the_second_robot_and_shows_its_proactive_message(
    robots_page: Any, robots_sandbox: tuple[str, str]
) -> None:
    from playwright.sync_api import expect

    page, (url, config) = robots_page, robots_sandbox
    picker = page.locator("#robots button .name")
    expect(picker).to_have_text(["sales", "help"])
    page.click("#people button:has-text('Alice Chen')")
    page.click("#robots button:has-text('help')")
    expect(page.locator("#robots button[aria-current='true'] .name")).to_have_text("help")
    expect(page.locator("#chat-title")).to_have_text("help")
    expect(page.locator("#chat-subtitle")).to_contain_text("robot code sandbox-robot-help")

    _send(page, "where is my order?")
    expect(_bot_bubbles(page).last).to_have_text("help desk here: where is my order?", timeout=REPLY_S)
    expect(page.locator("#messages .msg.bot .who").last).to_contain_text("help")
    [answer] = [r for r in _outbound(url) if r["text"].startswith("help desk here")]
    assert answer["robot"] == "sandbox-robot-help" and answer["app"] == "sandbox-app-key"

    # The first robot: its own DM, empty; it answers with its own agent.
    page.click("#robots button:has-text('sales')")
    expect(page.locator("#chat-title")).to_have_text("sales")
    expect(page.locator("#messages .empty")).to_contain_text("Say hi to sales")
    _send(page, "and you?")
    expect(_bot_bubbles(page).last).to_contain_text("echo: and you?", timeout=REPLY_S)

    # A proactive message from the help robot lands in its DM with Alice, marked unread on the picker.
    done = _send_cli(config, "--robot", "help", "--user", "user1002", "ticket 42 is closed")
    assert done.returncode == 0, done.stderr
    expect(page.locator("#robots button:has-text('help') .badge-unread")).to_have_text("1", timeout=REPLY_S)
    expect(_bot_bubbles(page)).to_have_count(1)  # not in the sales DM
    page.click("#robots button:has-text('help')")
    expect(_bot_bubbles(page).last).to_have_text("ticket 42 is closed")
    expect(page.locator("#robots button .badge-unread")).to_have_count(0)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "artifacts" / "webchat-robots.png"))
