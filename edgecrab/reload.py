"""Reload without a restart (SIGHUP, ``POST /reload``): re-read the config file and the hooks, apply what can
change in place, keep everything else running.

What a reload applies: the access rules (:data:`RELOADED_DINGTALK_KEYS`), ``commands`` (aliases,
``forward_unknown``), ``agent.system_prompt`` and ``agent.timeout_s``, and ``hooks`` (loaded again, their
commands registered again). The Stream connection, the queues and the runs in flight are not touched. Any
other key that changed is logged as needing a restart and keeps its running value. A file that does not
load, or hooks that do not, change nothing: the errors are logged and returned. ``docs/deploy.md`` has the
table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any

from edgecrab.config import Config, load_config
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
    dt = replace(running.dingtalk, **{k: getattr(new.dingtalk, k) for k in RELOADED_DINGTALK_KEYS})
    agent = replace(running.agent, system_prompt=new.agent.system_prompt, timeout_s=new.agent.timeout_s)
    applied = replace(running, dingtalk=dt, agent=agent, commands=new.commands, hooks=new.hooks)
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


def _changed(running: Config, new: Config) -> list[str]:
    """The keys (``section.key``) whose value differs between two configs, ``source`` and the like aside."""
    found = []
    for section in ("dingtalk", "agent", "sessions", "commands", "hooks", "storage", "http"):
        a, b = getattr(running, section), getattr(new, section)
        for f in fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                found.append(f"{'platforms.dingtalk' if section == 'dingtalk' else section}.{f.name}")
    top = ("schedules", "schedules_catch_up_s")
    found += [key for key in top if getattr(running, key) != getattr(new, key)]
    return found
