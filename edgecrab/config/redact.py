"""Showing the configuration: plain data in the YAML layout, and the same with every secret as ``***``.

Secrets are found by key name (:func:`is_secret_key`, the rule :mod:`~edgecrab.config.check` also uses)
and, anywhere else they appear (a URL, an argv), by value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from edgecrab.config import check
from edgecrab.config.load import SECTIONS
from edgecrab.config.model import Config
from edgecrab.logs import redact

REDACTED = "***"


def is_secret_key(name: str) -> bool:
    """True for key names whose string values must never be shown (``app_key`` is an id, not a secret)."""
    return check.is_secret_name(name)


def secret_values(config: Config) -> list[str]:
    """Every secret string in ``config``, longest first, for redacting logs and ``config show``."""
    agents = [config.agent, *config.agents.values()]
    found = [*(r.app_secret for r in config.robots), *(a.api_key for a in agents), config.http.token]

    def walk(value: Any, name: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, str(key))
        elif isinstance(value, str) and is_secret_key(name):
            found.append(value)

    for agent in agents:
        walk(agent.env, "")
    walk(config.hooks.config, "")
    found.extend(config.secret_refs)
    return sorted({s for s in found if s}, key=len, reverse=True)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The effective configuration in the YAML layout, as plain data (secrets included)."""
    listed = any(key.startswith("platforms.dingtalk.robots") for key in config.sources)
    dingtalk = {"robots": [_plain(r) for r in config.robots]} if listed else _plain(config.dingtalk)
    agents = {"agents": _plain(config.agents)} if config.agents else {}  # only when the file has some
    return {
        "platforms": {"dingtalk": dingtalk},
        **agents,
        **{n: _plain(getattr(config, n)) for n in SECTIONS if n not in ("platforms", "agents")},
        # Only the keys an entry sets: empty ones would not validate when the output is read back.
        "schedules": [{k: v for k, v in _plain(s).items() if v not in ("", [])} for s in config.schedules],
        "schedules_catch_up_s": config.schedules_catch_up_s,
    }


def redacted_dict(config: Config) -> dict[str, Any]:
    """:func:`config_to_dict` with every secret shown as ``***``, by key name and by value."""
    secrets = [s for s in secret_values(config) if len(s) >= 4]

    def scrub(value: Any, name: str) -> Any:
        if isinstance(value, dict):
            return {key: scrub(item, key) for key, item in value.items()}
        if isinstance(value, list):
            return [scrub(item, name) for item in value]
        if isinstance(value, str) and value and is_secret_key(name):
            return REDACTED
        if isinstance(value, str):
            value = redact(value, secrets)  # also URL userinfo and secret query values
        return value

    result: dict[str, Any] = scrub(config_to_dict(config), "")
    return result


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
