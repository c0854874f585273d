"""Several robots in the configuration (issue 20): the robots list over its shared keys, the agents map,
``config show`` listing the robots, secrets of every robot hidden; and the Fanout that routes one app's
callbacks to its robots by robotCode."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgecrab.config import load_config, secret_values
from edgecrab.config.show import effective_yaml
from edgecrab.dingtalk.convert import Frame
from edgecrab.dingtalk.fanout import Fanout
from edgecrab.dingtalk.intake import Intake
from edgecrab.errors import ConfigError
from edgecrab.store.sqlite import SQLiteStore

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "configs"
README = Path(__file__).resolve().parents[2] / "README.md"


def test_robots_take_the_keys_beside_the_list_and_their_agents() -> None:
    config = load_config(CONFIGS / "valid" / "two_robots.yaml", env={})
    sales, helpdesk = config.robots
    assert (sales.name, helpdesk.name) == ("sales", "helpdesk")
    assert config.dingtalk is sales and config.robot("helpdesk") is helpdesk and config.robot("x") is None
    assert sales.api_base == helpdesk.api_base == "https://api.dingtalk.com"
    assert (sales.robot_code, helpdesk.robot_code) == ("dingsaleskey01", "dinghelpkey001")
    assert helpdesk.allowed_users == ("user1001",) and sales.allowed_users == ()
    assert config.agent_for(sales) is config.agent
    assert config.agent_for(helpdesk).system_prompt == "You answer support questions."
    assert {"sales-secret-01", "help-secret-001"} <= set(secret_values(config))


def test_the_readme_examples_of_several_robots_are_valid(tmp_path: Path) -> None:
    text = README.read_text("utf-8")
    section = text[text.index("### Several robots in one gateway") :]
    section = section[: section.index("\n### ")]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    env = {name: name.lower() for name in set(re.findall(r"\$\{(\w+)\}", section))}
    robots = []
    for index, block in enumerate(blocks):
        (tmp_path / f"{index}.yaml").write_text(block, encoding="utf-8")
        config = load_config(tmp_path / f"{index}.yaml", env=env)
        robots.append([(r.name, r.app_key, r.robot_code) for r in config.robots])
    assert robots == [
        [("sales", "sales_app_key", "sales_app_key"), ("helpdesk", "help_app_key", "help_app_key")],
        [
            ("sales", "dingtalk_app_key", "sales_robot_code"),
            ("helpdesk", "dingtalk_app_key", "help_robot_code"),
        ],
    ]


def test_the_single_robot_form_is_one_robot_called_default() -> None:
    config = load_config(CONFIGS / "valid" / "minimal.yaml", env={})
    assert [r.name for r in config.robots] == ["default"]


def test_config_show_lists_each_robot_with_its_sources() -> None:
    shown = effective_yaml(load_config(CONFIGS / "valid" / "two_robots.yaml", env={}))
    assert "    robots:\n      - app_key: dingsaleskey01" in shown
    assert "sales-secret-01" not in shown and "help-secret-001" not in shown
    lines = {line.split("#")[0].strip(): line.split("#")[-1].strip() for line in shown.splitlines()}
    assert lines["name: helpdesk"] == "file line 9"
    assert lines["api_base: https://api.dingtalk.com"] == "file line 4"  # beside the list
    assert lines["agent: support"] == "file line 13"
    assert lines["system_prompt: You answer support questions."] == "file line 17"


SCHEDULES = """
schedules:
  - {name: offers, cron: "@daily", users: [u1], text: hi}
  - name: tickets
    cron: "@hourly"
    robot: helpdesk
    group: cid1
    text: open tickets
"""


def test_a_schedule_without_robot_is_the_first_robots_and_config_show_says_where_keys_came_from(
    tmp_path: Path,
) -> None:
    """As ``edgecrab send`` without --robot: the first robot, not a robot called ``default`` the list
    lacks (which refused every such schedule of a robots list)."""
    path = tmp_path / "robots.yaml"
    path.write_text((CONFIGS / "valid" / "two_robots.yaml").read_text("utf-8") + SCHEDULES, "utf-8")
    config = load_config(path, env={})
    assert [(s.name, s.robot) for s in config.schedules] == [("offers", "sales"), ("tickets", "helpdesk")]
    shown = effective_yaml(config).splitlines()
    at = shown.index(next(line for line in shown if line.startswith("schedules:")))
    rows = [(line.split("#")[0].strip(), line.split("#")[-1].strip()) for line in shown[at + 1 :]]
    assert ("- name: offers", "file line 20") in rows
    assert ("robot: sales", "default (the first robot)") in rows
    assert ("robot: helpdesk", "file line 23") in rows and ("text: open tickets", "file line 25") in rows
    path.write_text(path.read_text("utf-8").replace("robot: helpdesk", "robot: helpdsk"), "utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    [problem] = caught.value.problems
    assert (problem.path, problem.message) == ("schedules[1].robot", "unknown robot 'helpdsk'")
    assert "did you mean 'helpdesk'?" in problem.hint


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("robots_duplicate_name", "robot name `sales` is used twice"),
        ("robots_unknown_agent", "no agent called `seller` in `agents`"),
        ("robots_one_app_two_secrets", "share app_key `dingsharedkey1` but not its app_secret"),
        ("robots_no_credentials", "robot `sales` has no app_secret"),
    ],
)
def test_robot_config_errors_name_the_entry(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIGS / "invalid" / f"{name}.yaml", env={})
    assert any(message in p.message and "robots[" in p.path for p in caught.value.problems)


def _frame(robot_code: str, msg_id: str) -> Frame:
    data = {"msgId": msg_id, "robotCode": robot_code, "conversationType": "1", "text": {"content": "hi"}}
    return Frame(type="CALLBACK", headers={"messageId": "f-" + msg_id}, data_text=json.dumps(data))


@pytest.mark.anyio
async def test_fanout_hands_each_callback_to_the_robot_its_code_names() -> None:
    store = SQLiteStore(":memory:")
    await store.open()
    try:
        sales, helpdesk = Intake(store, "sales"), Intake(store, "helpdesk")
        fanout = Fanout({"codeSales": sales, "codeHelp": helpdesk})
        await fanout.on_callback(_frame("codeHelp", "m1"))
        fanout.on_callbacks_now([_frame("codeSales", "m2"), _frame("codeHelp", "m3"), _frame("other", "m4")])
        assert [e.msg_id for e in await store.inbox_unfinished("helpdesk")] == ["m1", "m3"]
        assert [e.msg_id for e in await store.inbox_unfinished("sales")] == ["m2", "m4"]  # unknown: first
        sales.close()
        helpdesk.close()
    finally:
        await store.close()
