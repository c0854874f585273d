"""Loading the configuration: :func:`load_config`, the one way to make a :class:`~.model.Config`.

The steps, in order: read the YAML (:mod:`~edgecrab.config.source`, keeping line numbers); fill keys the
file leaves out from the product's environment variables (:data:`ENV_DEFAULTS`); expand ``${VAR}``
references; give empty sections their defaults (and the sandbox its dummy credentials); validate
(:mod:`~edgecrab.config.check`, every problem at once); build the frozen dataclasses; record where each
value came from (:attr:`Config.sources <edgecrab.config.model.Config.sources>`).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from edgecrab.config import check, rules
from edgecrab.config import source as reader
from edgecrab.config.model import (
    AgentConfig,
    CommandsConfig,
    Config,
    DingTalkConfig,
    HooksConfig,
    HttpConfig,
    MediaConfig,
    ScheduleConfig,
    SessionsConfig,
    StorageConfig,
    frozen_map,
)
from edgecrab.errors import ConfigError, Problem

log = logging.getLogger(__name__)

BUILTIN_COMMANDS = check.BUILTIN_COMMANDS
"""The gateway's own chat commands: the only targets ``commands.aliases`` may name."""

SANDBOX_APP_KEY = "sandbox-app-key"
SANDBOX_APP_SECRET = "sandbox-app-secret"
"""Filled in by ``load_config(..., sandbox=True)`` when no credentials are configured."""

load_schema = check.load_schema

BUILTIN_SOURCE = "built-in defaults from environment variables, no config file"

_DINGTALK = ("platforms", "dingtalk")
_SANDBOX_CREDENTIALS = {
    (*_DINGTALK, "app_key"): SANDBOX_APP_KEY,
    (*_DINGTALK, "app_secret"): SANDBOX_APP_SECRET,
}
SECTIONS = ("platforms", "agent", "agents", "sessions", "commands", "hooks", "storage", "http", "media")

ENV_DEFAULTS: dict[reader.KeyPath, str] = {
    (*_DINGTALK, "app_key"): "DINGTALK_APP_KEY",
    (*_DINGTALK, "app_secret"): "DINGTALK_APP_SECRET",
    (*_DINGTALK, "robot_code"): "DINGTALK_ROBOT_CODE",
    (*_DINGTALK, "api_base"): "DINGTALK_API_BASE",
    (*_DINGTALK, "allowed_users"): "DINGTALK_ALLOWED_USERS",
    ("http", "port"): "DINGTALK_WEBHOOK_PORT",
}
"""The product page's environment variables: each is the default of its key, with or without a config file.
A key the file leaves out (or leaves empty) takes the variable when it is set; a value in the file wins."""

# The configuration used without a file: the credentials must come from the environment (the message for a
# missing one names the variable); the other variables of ENV_DEFAULTS apply as they do to a file.
_BUILTIN_DEFAULT: dict[str, Any] = {
    "platforms": {"dingtalk": {"app_key": "${DINGTALK_APP_KEY}", "app_secret": "${DINGTALK_APP_SECRET}"}},
    "agent": {"type": "echo"},
}


def load_config(
    path: Path | str | None = None, env: Mapping[str, str] | None = None, *, sandbox: bool = False
) -> Config:
    """Read, check and freeze the configuration; raise :class:`ConfigError` listing every problem found.

    ``path`` None means ``$EDGECRAB_CONFIG`` if set, else the built-in default that reads the ``DINGTALK_*``
    variables. ``env`` is the environment for ``${VAR}`` references (default ``os.environ``). ``sandbox``
    (the local emulator) fills in dummy DingTalk credentials where none are configured and keeps state
    in :func:`sandbox_storage_url` instead of ``storage.url`` (an in-memory store stays in memory).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if path is None and environ.get("EDGECRAB_CONFIG"):
        path = environ["EDGECRAB_CONFIG"]
    source: Path | None = None
    if path is None:
        label = BUILTIN_SOURCE
        parsed = reader.ParsedYaml(data=_copy_plain(_BUILTIN_DEFAULT))
    else:
        label, source = str(path), Path(path).expanduser()
        parsed = _read(source, label)
    config = _check(parsed, environ, sandbox=sandbox, source=source, label=label)
    log.debug(
        "[config] loaded %s: agent %s, %d hook folder(s)", label, config.agent.type, len(config.hooks.paths)
    )
    return config


def _read(path: Path, label: str) -> reader.ParsedYaml:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = "check the path given with --config or $EDGECRAB_CONFIG"
        raise ConfigError(Problem("", "file not found", hint=hint), source=label) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file: {exc}", source=label) from None
    parsed = reader.parse_yaml(text)
    if parsed.fatal:
        raise ConfigError(parsed.problems, source=label)
    return parsed


def _check(
    parsed: reader.ParsedYaml, env: Mapping[str, str], *, sandbox: bool, source: Path | None, label: str
) -> Config:
    problems = list(parsed.problems)
    from_env = _apply_env_defaults(parsed.data, env)
    expanded = reader.expand_env(parsed.data, env, parsed.lines)
    data: dict[str, Any] = expanded.data
    missing = dict(expanded.missing)
    for section in SECTIONS:
        if data.get(section) is None and (section in data or section == "platforms"):
            data[section] = {}  # an empty section (`agent:` with nothing under it) means all defaults
    if "schedules" in data and data["schedules"] is None:
        data["schedules"] = []
    platforms = data["platforms"]
    if isinstance(platforms, dict) and platforms.get("dingtalk") is None:
        platforms["dingtalk"] = {}
    dummies: set[reader.KeyPath] = set()
    if sandbox and isinstance(platforms, dict) and isinstance(platforms["dingtalk"], dict):
        for key_path, dummy in _SANDBOX_CREDENTIALS.items():
            missing.pop(key_path, None)
            if not platforms["dingtalk"].get(key_path[-1]):
                platforms["dingtalk"][key_path[-1]] = dummy
                dummies.add(key_path)
    problems += missing.values()
    check.coerce_env_strings(data, expanded.origins)
    problems += check.schema_problems(data, parsed.lines, expanded.origins, skip=set(missing))
    problems += rules.semantic_problems(data, parsed.lines)
    if problems:
        raise ConfigError(problems, source=label)
    config = _build(data, env, source)
    listed = isinstance(platforms, dict) and isinstance(platforms["dingtalk"].get("robots"), list)
    sources = _sources(config, parsed.lines, expanded.origins, from_env, dummies, env, listed=listed)
    if sandbox and config.storage.url != MEMORY_URL:
        config = replace(config, storage=StorageConfig(url=sandbox_storage_url(env)))
        sources["storage.url"] = "sandbox (apart from the gateway's own state)"
    return replace(config, sources=frozen_map(sources), secret_refs=secret_refs(expanded.origins, env))


def secret_refs(origins: Mapping[reader.KeyPath, str], env: Mapping[str, str]) -> tuple[str, ...]:
    """The values of the secret-named variables that the ``${VAR}`` references in ``origins`` read."""
    names = {name for text in origins.values() for name in _REF_NAME.findall(text)}
    return tuple(sorted({env[n] for n in names if check.is_secret_name(n) and env.get(n)}))


MEMORY_URL = "sqlite:///:memory:"


def state_dir(env: Mapping[str, str]) -> str:
    """Where state lives by default: ``$EDGECRAB_HOME``, else ``~/.edgecrab`` (not expanded)."""
    return (env.get("EDGECRAB_HOME") or "~/.edgecrab").rstrip("/")


def sandbox_storage_url(env: Mapping[str, str]) -> str:
    """The sandbox's store: ``sandbox.db`` in the state directory, never the configured ``storage.url``, so
    that chats with the emulator never become history (or unfinished messages) of the real gateway."""
    return f"sqlite:///{state_dir(env)}/sandbox.db"


def _apply_env_defaults(data: Any, env: Mapping[str, str]) -> dict[reader.KeyPath, str]:
    """Fill each key of :data:`ENV_DEFAULTS` that ``data`` leaves out with a ``${VAR}`` reference, when the
    variable is set; return the keys filled. A reference (rather than the value) lets the usual expansion
    convert it to the key's type and name the variable in any error about it."""
    filled: dict[reader.KeyPath, str] = {}
    if not isinstance(data, dict):
        return filled
    for path, name in ENV_DEFAULTS.items():
        if not env.get(name):
            continue
        node: Any = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                break
        else:
            if node.get(path[-1]) is None:
                node[path[-1]] = "${" + name + "}"
                filled[path] = name
    return filled


_REF_NAME = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _sources(
    config: Config,
    lines: Mapping[reader.KeyPath, int],
    origins: Mapping[reader.KeyPath, str],
    from_env: Mapping[reader.KeyPath, str],
    dummies: set[reader.KeyPath],
    env: Mapping[str, str],
    *,
    listed: bool = False,
) -> dict[str, str]:
    """Where each key of ``config`` came from; see :attr:`Config.sources`. ``listed``: the robots are
    written as ``platforms.dingtalk.robots`` (a key an entry leaves out comes from beside the list)."""
    found: dict[str, str] = {}

    def where(path: reader.KeyPath) -> str:
        names = ", ".join(dict.fromkeys(_REF_NAME.findall(origins.get(path, ""))))
        if path in dummies:
            return "sandbox (dummy credentials)"
        if path in from_env:
            return f"env {from_env[path]}"
        if path in lines:
            return f"file line {lines[path]}" + (f" ({names})" if names else "")
        if names:
            return f"env {names}"  # the built-in configuration's references
        if path == ("storage", "url") and env.get("EDGECRAB_HOME"):
            return "default (env EDGECRAB_HOME)"
        if path == (*_DINGTALK, "robot_code"):
            return "default (the app key)"
        if path == (*_DINGTALK, "allow_own_org"):
            return "default (true when allowed_users is empty)"
        return "default"

    for section, value in _section_values(config, listed):
        for f in fields(value):
            path: reader.KeyPath = (*section, f.name)
            if section[:3] == (*_DINGTALK, "robots") and path not in lines:
                found[reader.format_path(path)] = where((*_DINGTALK, f.name))  # beside the list, or default
            else:
                found[reader.format_path(path)] = where(path)
    for key in ("schedules", "schedules_catch_up_s"):
        found[key] = f"file line {lines[(key,)]}" if (key,) in lines else "default"
    for index, schedule in enumerate(config.schedules):
        for f in fields(schedule):
            path = ("schedules", index, f.name)
            first = f.name == "robot" and path not in lines
            found[reader.format_path(path)] = "default (the first robot)" if first else where(path)
    return found


def _section_values(config: Config, listed: bool = False) -> list[tuple[reader.KeyPath, Any]]:
    if listed:
        robots: list[tuple[reader.KeyPath, Any]] = [
            ((*_DINGTALK, "robots", i), robot) for i, robot in enumerate(config.robots)
        ]
    else:
        robots = [(_DINGTALK, config.dingtalk)]
    agents: list[tuple[reader.KeyPath, Any]] = [(("agents", name), a) for name, a in config.agents.items()]
    rest = [((name,), getattr(config, name)) for name in SECTIONS if name not in ("platforms", "agents")]
    return robots + agents + rest


def _build(data: dict[str, Any], env: Mapping[str, str], source: Path | None) -> Config:
    robots = [_robot(r) for r in robot_entries(data["platforms"]["dingtalk"])]
    hooks = dict(data.get("hooks", {}))
    hooks["paths"] = _hook_paths(hooks.get("paths"), source)
    storage = dict(data.get("storage", {}))
    storage.setdefault("url", f"sqlite:///{state_dir(env)}/state.db")
    agents = {name: _agent(value or {}, source) for name, value in (data.get("agents") or {}).items()}
    return Config(
        dingtalk=robots[0],
        other_robots=tuple(robots[1:]),
        agent=_agent(data.get("agent", {}), source),
        agents=frozen_map(agents),
        sessions=_make(SessionsConfig, data.get("sessions", {})),
        commands=_make(CommandsConfig, data.get("commands", {})),
        hooks=_make(HooksConfig, hooks),
        storage=_make(StorageConfig, storage),
        http=_make(HttpConfig, data.get("http", {})),
        schedules=tuple(
            # A schedule without `robot` is the first robot's, as an `edgecrab send` without --robot.
            _make(ScheduleConfig, {"robot": robots[0].name, **entry}) for entry in data.get("schedules") or ()
        ),
        schedules_catch_up_s=float(data.get("schedules_catch_up_s", 300.0)),
        media=_make(MediaConfig, _media(data.get("media", {}), env)),
        source=source.resolve() if source else None,
    )


def robot_entries(dingtalk: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The robots of ``platforms.dingtalk`` as plain mappings: each ``robots`` entry over the keys written
    beside ``robots`` (their defaults), or ``platforms.dingtalk`` itself when it has no ``robots``."""
    shared = {k: v for k, v in dingtalk.items() if k != "robots"}
    entries = dingtalk.get("robots")
    if not isinstance(entries, list):
        return [shared]
    return [{**shared, **entry} for entry in entries if isinstance(entry, dict)]


def _robot(values: Mapping[str, Any]) -> DingTalkConfig:
    robot = dict(values)
    for key in ("allowed_users", "allowed_groups", "extra_allowed_hosts"):
        if isinstance(robot.get(key), str):
            robot[key] = [item.strip() for item in robot[key].split(",") if item.strip()]
    robot["robot_code"] = robot.get("robot_code") or robot["app_key"]
    return _make(DingTalkConfig, robot)  # type: ignore[no-any-return]


def _agent(values: Mapping[str, Any], source: Path | None) -> AgentConfig:
    agent = dict(values)
    if isinstance(agent.get("command"), str):
        agent["command"] = shlex.split(agent["command"])
    if agent.get("attachment_dirs"):  # relative to the config file's folder
        base = source.resolve().parent if source else Path.cwd()
        agent["attachment_dirs"] = [(base / Path(p).expanduser()).resolve() for p in agent["attachment_dirs"]]
    return _make(AgentConfig, agent)  # type: ignore[no-any-return]
def _media(values: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    media = dict(values)
    if isinstance(media.get("allowed_hosts"), str):
        media["allowed_hosts"] = [h.strip() for h in media["allowed_hosts"].split(",") if h.strip()]
    if not media.get("directory"):
        media["directory"] = str(Path(state_dir(env)) / "media")
    return media


def _hook_paths(value: list[str] | None, source: Path | None) -> tuple[Path, ...]:
    base = source.resolve().parent if source else Path.cwd()
    if value is None:
        # The default folder is optional: only used when it is there, so a bare config needs no hooks/.
        default = base / "hooks"
        return (default,) if default.is_dir() else ()
    return tuple((base / Path(p).expanduser()).resolve() for p in value)


def _make(cls: Any, values: Mapping[str, Any]) -> Any:
    kwargs = {f.name: _convert(str(f.type), values[f.name]) for f in fields(cls) if f.name in values}
    return cls(**kwargs)


def _convert(annotation: str, value: Any) -> Any:
    if annotation.startswith("tuple["):
        return tuple(value)
    if annotation.startswith("Mapping[str, Mapping"):
        return frozen_map({k: frozen_map(v) for k, v in value.items()})
    if annotation.startswith("Mapping["):
        return frozen_map(value)
    if annotation in ("float", "float | None"):
        return None if value is None else float(value)
    if annotation == "int":
        return int(value)
    return value


def _copy_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_plain(v) for k, v in value.items()}
    return value
