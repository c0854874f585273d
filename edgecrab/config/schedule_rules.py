"""The rules of ``schedules:`` that JSON Schema cannot say clearly (the schema checks types and keys).

Each entry needs a valid cron expression and time zone, exactly one of ``text`` and ``prompt``, exactly one
target (``users`` or ``group``), ``at`` only with a group, a robot the configuration has (left out: the
first robot, as for ``edgecrab send``), and a name no other entry has. (``format`` may differ from the
robot's ``reply_format``: the ledger records it with the message.)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from edgecrab.config.source import KeyPath
from edgecrab.core.cron import cron_problem, zone_problem

Add = Callable[[KeyPath, str, str], None]
DEFAULT_ROBOT = "default"


def robot_names(data: dict[str, Any]) -> list[str]:
    """The robots a configuration has: the names under ``platforms.dingtalk.robots`` when it lists any,
    else the one robot ``default``."""
    platforms = data.get("platforms")
    dingtalk = platforms.get("dingtalk") if isinstance(platforms, dict) else None
    robots = dingtalk.get("robots") if isinstance(dingtalk, dict) else None
    if isinstance(robots, list) and robots:
        return [str(r.get("name")) for r in robots if isinstance(r, dict) and r.get("name")]
    return [DEFAULT_ROBOT]


def schedule_problems(data: dict[str, Any], add: Add) -> None:
    entries = data.get("schedules")
    if not isinstance(entries, list):
        return
    robots = robot_names(data)
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        at: KeyPath = ("schedules", index)
        name = entry.get("name")
        if isinstance(name, str):
            if name in seen:
                add((*at, "name"), f"two schedules are named {name!r}", "give each schedule its own name")
            seen.add(name)
        _when_problems(entry, at, add)
        _what_problems(entry, at, add)
        robot = entry.get("robot", robots[0] if robots else DEFAULT_ROBOT)  # left out: the first robot
        if isinstance(robot, str) and robot not in robots:
            close = difflib.get_close_matches(robot, robots, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            add((*at, "robot"), f"unknown robot {robot!r}", hint + f"the robots are: {', '.join(robots)}")


def _when_problems(entry: dict[str, Any], at: KeyPath, add: Add) -> None:
    cron = entry.get("cron")
    problem = cron_problem(cron) if isinstance(cron, str) else ""
    if problem:
        add((*at, "cron"), problem, "e.g. '0 9 * * 1-5' (9:00 on weekdays) or '*/15 * * * *'")
    zone = entry.get("timezone")
    if isinstance(zone, str) and zone and zone_problem(zone):
        add((*at, "timezone"), zone_problem(zone), "an IANA name such as Asia/Shanghai or Europe/Berlin")


def _what_problems(entry: dict[str, Any], at: KeyPath, add: Add) -> None:
    if ("text" in entry) == ("prompt" in entry):
        add(
            at,
            _both_or_neither(entry, "text", "prompt"),
            "give text (a fixed message) or prompt (asked of the robot's agent), exactly one",
        )
    if ("users" in entry) == ("group" in entry):
        add(
            at,
            _both_or_neither(entry, "users", "group"),
            "give users (staff ids, each sent a DM) or group (an openConversationId), exactly one",
        )
    if "at" in entry and "group" not in entry:
        add((*at, "at"), "at is for group messages only", "remove at, or send to a group")


def _both_or_neither(entry: dict[str, Any], one: str, other: str) -> str:
    return f"has both {one} and {other}" if one in entry else f"has neither {one} nor {other}"


__all__ = ["robot_names", "schedule_problems"]
