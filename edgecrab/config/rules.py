"""Configuration rules that JSON Schema cannot say clearly, and the warnings ``config validate`` prints.

:func:`semantic_problems` runs after the schema (each rule guards its own types, the schema reports those):
alias targets, what each agent type needs, reconnect delays in order, ``extra_allowed_hosts`` and
``media.allowed_hosts`` entries that are plain hosts. :func:`cleartext_warnings` names each URL that would
carry secrets over plain http.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from edgecrab.config.check import BUILTIN_COMMANDS
from edgecrab.config.schedule_rules import schedule_problems
from edgecrab.config.source import KeyPath, format_path, line_of
from edgecrab.dingtalk.webhook import host_entry_problem
from edgecrab.errors import Problem
from edgecrab.outbound import is_loopback

Add = Callable[[KeyPath, str, str], None]


def semantic_problems(data: dict[str, Any], lines: Mapping[KeyPath, int]) -> list[Problem]:
    """Rules JSON Schema cannot say clearly. Each guards its own types: the schema reports those."""
    found: list[Problem] = []

    def add(path: KeyPath, message: str, hint: str) -> None:
        found.append(Problem(format_path(path), message, line=line_of(path, lines), hint=hint))

    commands = data.get("commands")
    _alias_problems(commands.get("aliases") if isinstance(commands, dict) else None, add)
    agent = data.get("agent")
    if isinstance(agent, dict):
        _agent_problems(agent, add)
    platforms = data.get("platforms")
    dingtalk = platforms.get("dingtalk") if isinstance(platforms, dict) else None
    if isinstance(dingtalk, dict):
        _dingtalk_problems(dingtalk, data.get("http"), add)
        robot_problems(dingtalk, data.get("agents"), add)
    schedule_problems(data, add)
    media = data.get("media")
    if isinstance(media, dict):
        _host_list_problems(media.get("allowed_hosts"), ("media", "allowed_hosts"), add)
    return found


def _alias_problems(aliases: Any, add: Add) -> None:
    for alias, target in aliases.items() if isinstance(aliases, dict) else ():
        if not isinstance(target, str) or not target.startswith("/"):
            continue
        at = ("commands", "aliases", alias)
        if alias in BUILTIN_COMMANDS:
            add(at, f"`{alias}` is a built-in command and cannot be redefined", "choose another name")
        elif target not in BUILTIN_COMMANDS:
            close = difflib.get_close_matches(target, BUILTIN_COMMANDS, n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`? " if close else ""
            hint += f"aliases can point at {' '.join(BUILTIN_COMMANDS)}"
            hint += " (commands added by hooks cannot be aliased yet)"
            add(at, f"alias target `{target}` is not a built-in command", hint)


def _agent_problems(agent: dict[str, Any], add: Add) -> None:
    kind = agent.get("type", "echo")
    needs = {
        "command": ("command", "command: [python, -m, mybot]"),
        "python": ("callable", "callable: mybot:answer"),
        "openai": ("model", "model: deepseek-chat"),
    }
    if isinstance(kind, str) and kind in needs and not agent.get(needs[kind][0]):
        key, example = needs[kind]
        add(("agent", key), f"required when agent.type is `{kind}`", f"for example `{example}`")
    if isinstance(agent.get("command"), str):
        try:
            shlex.split(agent["command"])
        except ValueError as exc:
            add(("agent", "command"), f"cannot split into arguments: {exc}",
                "balance the quotes, or write a list")


def _dingtalk_problems(dingtalk: dict[str, Any], http: Any, add: Add) -> None:
    first, most = dingtalk.get("reconnect_initial_s", 1.0), dingtalk.get("reconnect_max_s", 60.0)
    if _is_number(first) and _is_number(most) and most < first:
        add(("platforms", "dingtalk", "reconnect_max_s"),
            f"must be at least reconnect_initial_s ({first}), got {most}",
            "the longest delay cannot be shorter than the first one")
    _host_list_problems(dingtalk.get("extra_allowed_hosts"), ("platforms", "dingtalk", "extra_allowed_hosts"),
                        add)
    port = http.get("port", 0) if isinstance(http, dict) else 0
    if dingtalk.get("mode") == "http" and port == 0:
        add(("http", "port"), "required when platforms.dingtalk.mode is `http`",
            "DingTalk POSTs messages to a URL registered in the developer console, so the port cannot "
            "be a random one: set http.port (or DINGTALK_WEBHOOK_PORT), e.g. `port: 8080`")


def _host_list_problems(hosts: Any, at: KeyPath, add: Add) -> None:
    """A list of hosts (``extra_allowed_hosts``, ``media.allowed_hosts``): each a plain host, or host:port."""
    entries: list[tuple[int | None, Any]] = list(enumerate(hosts)) if isinstance(hosts, list) else []
    if isinstance(hosts, str):  # comma-separated (from the environment): the key itself is the path
        entries = [(None, item) for item in hosts.split(",") if item.strip()]
    for index, entry in entries:
        problem = host_entry_problem(entry) if isinstance(entry, str) else ""
        if problem:
            add(at if index is None else (*at, index), f"`{entry}`: {problem}",
                "list plain host names or IP addresses, each optionally with :port, e.g. "
                "[hooks.example.com, 10.0.0.5:8443]")


_ROBOTS: KeyPath = ("platforms", "dingtalk", "robots")


def robot_problems(dingtalk: dict[str, Any], agents: Any, add: Add) -> None:
    """``platforms.dingtalk.robots``: names unique, agents that exist, credentials for each robot (its own or
    the ones beside the list), one secret per app, one entry per robot of an app."""
    entries = dingtalk.get("robots")
    known = sorted(agents) if isinstance(agents, dict) else []
    if not isinstance(entries, list):
        _agent_name_problem(dingtalk.get("agent"), known, ("platforms", "dingtalk", "agent"), add)
        return
    names: dict[str, int] = {}
    apps: dict[str, tuple[int, Any]] = {}
    codes: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        at: KeyPath = (*_ROBOTS, index)
        robot = {**{k: v for k, v in dingtalk.items() if k != "robots"}, **entry}
        name = entry.get("name")
        if isinstance(name, str) and name in names:
            add(
                (*at, "name"),
                f"robot name `{name}` is used twice (robots[{names[name]}] has it too)",
                "give every robot its own name: `edgecrab send --robot NAME` and the metrics use it",
            )
        elif isinstance(name, str):
            names[name] = index
        _agent_name_problem(robot.get("agent"), known, (*at, "agent"), add)
        for needed in ("app_key", "app_secret"):
            if not robot.get(needed):
                add(
                    (*at, needed),
                    f"robot `{name}` has no {needed}",
                    f"write `{needed}` in the entry, or beside `robots` (platforms.dingtalk) for all of them",
                )
        key, secret = robot.get("app_key"), robot.get("app_secret")
        if not isinstance(key, str) or not key:
            continue
        if key in apps and apps[key][1] != secret:
            add(
                (*at, "app_secret"),
                f"robots[{apps[key][0]}] and robots[{index}] share app_key `{key}` but not its app_secret",
                "an app has one secret: write the same app_secret for both",
            )
        apps.setdefault(key, (index, secret))
        code = robot.get("robot_code") or key
        if isinstance(code, str) and (key, code) in codes:
            add(
                (*at, "robot_code"),
                f"robots[{codes[key, code]}] and robots[{index}] are the same robot "
                f"(app_key `{key}`, robot_code `{code}`)",
                "robots sharing an app need their own robot_code (the robot's code in the developer console)",
            )
        codes.setdefault((key, code), index)
    if len(entries) > 1 and dingtalk.get("mode") == "http":
        add(
            (*_ROBOTS,),
            "several robots need `mode: stream` (http mode serves one robot)",
            "remove `mode: http`, or keep one robot in this gateway",
        )


def _agent_name_problem(name: Any, known: list[str], at: KeyPath, add: Add) -> None:
    if not isinstance(name, str) or not name or name in known:
        return
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`? " if close else ""
    hint += f"the agents map has: {', '.join(known)}" if known else "define it under the top-level `agents:`"
    add(at, f"no agent called `{name}` in `agents`", hint)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def cleartext_warnings(api_base: str, agent_type: str, base_url: str) -> list[str]:
    """A warning for each URL secrets are sent to in clear text: plain ``http://`` to a host that is not
    loopback (``api_base`` carries the app secret, an openai ``base_url`` the api key and conversations)."""
    urls = [("platforms.dingtalk.api_base", api_base, "the app secret and every message")]
    if agent_type == "openai":
        urls.append(("agent.base_url", base_url, "agent.api_key and the conversations"))
    found = []
    for key, url, what in urls:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            continue
        if parsed.scheme == "http" and not is_loopback(parsed.host):
            found.append(
                f"{key} uses plain http:// to {parsed.host}, which is not this machine: {what} would "
                "travel in clear text; use https://"
            )
    return found

