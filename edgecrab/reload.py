"""Reload without a restart (SIGHUP, ``POST /reload``): re-read the config file and the hooks, apply what can
change in place, keep everything else running.

What a reload applies: each robot's access rules (:data:`RELOADED_DINGTALK_KEYS`; the robots are matched by
name), ``commands`` (aliases, ``forward_unknown``), the ``system_prompt`` and ``timeout_s`` of ``agent`` and
of each ``agents`` entry, and ``hooks`` (loaded again, their
commands registered again). The Stream connection, the queues and the runs in flight are not touched. Any
other key that changed is logged as needing a restart and keeps its running value. A file that does not
load, or hooks that do not, change nothing: the errors are logged and returned. ``docs/deploy.md`` has the
table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any

from edgecrab.config import AgentConfig, Config, DingTalkConfig, load_config
from edgecrab.config.model import frozen_map
from edgecrab.errors import ConfigError
from edgecrab.hooks.manager import HookManager

log = logging.getLogger("edgecrab.gateway")


@dataclass(frozen=True)
class Reloaded:
    """What a reload applies: the running config with the reloadable keys replaced, and the new hooks."""

    config: Config
    hooks: HookManager
    hook_commands: dict[str, Any]


async def prepare_reload(running: Config, *, sandbox: bool) -> Reloaded | list[str]:
    """Read ``running``'s config file and hooks again; what to apply, or the errors (nothing to apply)."""
    try:
        new = load_config(running.source, sandbox=sandbox)
    except ConfigError as exc:
        errors = [p.render() for p in exc.problems] or [str(exc)]
        log.error("[gateway] reload refused, the running config is kept: %s", "; ".join(errors))
        return errors
    try:
        hooks = HookManager.load(new.hooks)
        hook_commands = dict(await hooks.register_commands())
    except Exception as exc:
        log.error("[gateway] reload refused, the running config and hooks are kept: hooks: %s", exc)
        return [f"hooks: {exc}"]
    robots = [_reloaded_robot(dt, new.robot(dt.name)) for dt in running.robots]
    agents = {name: _reloaded_agent(a, new.agents.get(name)) for name, a in running.agents.items()}
    applied = replace(
        running, dingtalk=robots[0], other_robots=tuple(robots[1:]),
        agent=_reloaded_agent(running.agent, new.agent), agents=frozen_map(agents),
        commands=new.commands, hooks=new.hooks,
    )
    kept = _changed(applied, new)
    log.info("[gateway] config reloaded from %s", running.source or "the environment")
    if kept:
        log.warning(
            "[gateway] reload: %s changed but need(s) a restart; running values kept", ", ".join(kept)
        )
    return Reloaded(applied, hooks, hook_commands)


RELOADED_DINGTALK_KEYS = (
    "allowed_users", "allow_own_org", "allowed_groups", "require_mention", "max_message_age_s",
    "backlog_policy", "denied_notice_interval_s",
)
"""``platforms.dingtalk`` keys a reload applies (the access rules)."""


def _reloaded_robot(running: DingTalkConfig, new: DingTalkConfig | None) -> DingTalkConfig:
    """``running`` with the access rules of the robot of its name in the new config (none: unchanged)."""
    if new is None:
        return running
    return replace(running, **{k: getattr(new, k) for k in RELOADED_DINGTALK_KEYS})


def _reloaded_agent(running: AgentConfig, new: AgentConfig | None) -> AgentConfig:
    """``running`` with the new config's prompt and timeout for it (none: unchanged)."""
    if new is None:
        return running
    return replace(running, system_prompt=new.system_prompt, timeout_s=new.timeout_s)


def _changed(running: Config, new: Config) -> list[str]:
    """The keys (``section.key``) whose value differs between two configs, ``source`` and the like aside."""
    pairs: list[tuple[str, Any, Any]] = [
        (section, getattr(running, section), getattr(new, section))
        for section in ("agent", "sessions", "commands", "hooks", "storage", "http")
    ]
    if [r.name for r in running.robots] != [r.name for r in new.robots]:
        pairs.append(("platforms.dingtalk.robots", None, None))  # robots added, removed or renamed
    elif running.other_robots:
        pairs += [(f"platforms.dingtalk.robots[{r.name}]", r, new.robot(r.name)) for r in running.robots]
    else:
        pairs.append(("platforms.dingtalk", running.dingtalk, new.dingtalk))
    if set(running.agents) != set(new.agents):
        pairs.append(("agents", None, None))
    else:
        pairs += [(f"agents.{name}", a, new.agents[name]) for name, a in running.agents.items()]
    found = []
    for label, a, b in pairs:
        if a is None:
            found.append(label)
            continue
        found += [f"{label}.{f.name}" for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    top = ("schedules", "schedules_catch_up_s")
    found += [key for key in top if getattr(running, key) != getattr(new, key)]
    return found
