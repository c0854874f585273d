"""Configuration: YAML -> ``${ENV}`` references -> JSON Schema validation -> frozen dataclasses.

Nothing downstream reads raw dicts: the gateway is assembled from :class:`Config`. This module owns the
dataclasses (the contract other modules read), :func:`load_config` (the one way to make them) and
:func:`redacted_dict` (what ``edgecrab config show`` prints). Parsing and ``${VAR}`` expansion live in
:mod:`edgecrab.config.source`, schema checks and readable problems in :mod:`edgecrab.config.check`; the schema
is ``schemas/config.schema.json``.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edgecrab.config import check
from edgecrab.config import source as reader
from edgecrab.errors import ConfigError, Problem

log = logging.getLogger(__name__)


def _frozen_map(data: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class CardConfig:
    """``platforms.dingtalk.card``: how answers stream into DingTalk AI cards (``reply_mode: card``)."""

    template_id: str = "02fcf2f4-5e02-4a85-b672-46d1f715543e.schema"
    """DingTalk's public AI card template; a template of your own must be published with streaming on."""
    content_key: str = "msgContent"
    """The template's streaming variable."""
    update_interval_ms: int = 800
    qps: float = 20.0
    """Card API calls per second for the robot, shared by all its cards."""
    max_chars: int = 20000
    stop_button: bool = False


@dataclass(frozen=True)
class DingTalkConfig:
    app_key: str
    app_secret: str = field(repr=False)
    robot_code: str = ""
    """Empty in YAML means: use ``app_key`` (resolved by the loader, so never empty here)."""
    api_base: str = "https://api.dingtalk.com"
    allowed_users: tuple[str, ...] = ()
    """Staff ids, or DingTalk ids (``senderId``) for people outside the organisation. ``("*",)``: everyone."""
    allow_own_org: bool | None = None
    """Members of the robot's own organisation may talk too. None (the default): only when
    ``allowed_users`` is empty (:class:`~edgecrab.dingtalk.access.AccessPolicy` decides)."""
    allowed_groups: tuple[str, ...] = ()
    """Empty: every group. Otherwise only these conversation ids."""
    require_mention: bool = True
    max_message_length: int = 6000
    max_message_bytes: int = 20000
    reply_format: str = "markdown"
    chunk_interval_ms: int = 300
    chunk_markers: bool = False
    openapi_qps: float = 20.0
    webhook_qps: float = 20.0
    webhook_expiry_margin_s: float = 300.0
    send_timeout_s: float = 10.0
    send_retries: int = 5
    idle_timeout_s: float = 90.0
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0
    healthy_after_s: float = 30.0
    """A connection that stayed up this long resets the backoff."""
    max_message_age_s: float = 300.0
    backlog_policy: str = "process"
    """``process`` | ``drop`` | ``notify`` for messages older than ``max_message_age_s`` on arrival."""
    denied_notice_interval_s: float = 3600.0
    extra_allowed_hosts: tuple[str, ...] = ()
    """Hosts besides api.dingtalk.com, oapi.dingtalk.com and the api_base host that replies may go to."""
    reply_mode: str = "markdown"
    """``markdown`` (chunked messages) | ``card`` (one AI card per run, streamed)."""
    card: CardConfig = CardConfig()

    def __post_init__(self) -> None:
        # The loader builds sections from plain mappings; the nested card section arrives as one.
        if isinstance(self.card, Mapping):
            object.__setattr__(self, "card", CardConfig(**self.card))


@dataclass(frozen=True)
class AgentConfig:
    type: str = "echo"
    base_url: str = "https://api.openai.com/v1"
    model: str = ""
    api_key: str = field(default="", repr=False)
    system_prompt: str = "You are a helpful assistant."
    temperature: float | None = None
    timeout_s: float = 120.0
    max_retries: int = 2
    command: tuple[str, ...] = ()
    """argv for ``type: command``."""
    callable: str = ""
    """``package.module:function`` for ``type: python``."""
    env: Mapping[str, str] = field(default_factory=_frozen_map)


@dataclass(frozen=True)
class SessionsConfig:
    group_scope: str = "shared"
    busy_policy: str = "queue"
    queue_limit: int = 10
    history_limit: int = 40
    idle_expiry_s: float = 0.0
    """0 = never expire."""
    max_concurrent_runs: int = 256


@dataclass(frozen=True)
class CommandsConfig:
    aliases: Mapping[str, str] = field(default_factory=_frozen_map)
    forward_unknown: bool = False


@dataclass(frozen=True)
class HooksConfig:
    paths: tuple[Path, ...] = ()
    """Absolute folders (resolved relative to the config file by the loader)."""
    modules: tuple[str, ...] = ()
    enabled: tuple[str, ...] = ()
    """Empty: all. Otherwise only hooks with these names."""
    disabled: tuple[str, ...] = ()
    config: Mapping[str, Mapping[str, Any]] = field(default_factory=_frozen_map)
    on_error: str = "fail"
    """``fail`` (stop start-up) | ``skip`` (log and go on) for hook files that cannot be loaded."""
    timeout_s: float = 5.0
    entry_points: bool = True


@dataclass(frozen=True)
class StorageConfig:
    url: str = "sqlite:///~/.edgecrab/state.db"

    @property
    def sqlite_path(self) -> Path | None:
        """Filesystem path for ``sqlite:///`` URLs (``~`` and ``$EDGECRAB_HOME`` expanded)."""
        if not self.url.startswith("sqlite:///"):
            return None
        raw = self.url[len("sqlite:///") :]
        if raw == ":memory:":
            return Path(":memory:")
        return Path(raw).expanduser()


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True)
class Config:
    dingtalk: DingTalkConfig
    agent: AgentConfig = AgentConfig()
    sessions: SessionsConfig = SessionsConfig()
    commands: CommandsConfig = CommandsConfig()
    hooks: HooksConfig = HooksConfig()
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    source: Path | None = None
    """The YAML file it came from; None for the built-in env-only default."""
    sources: Mapping[str, str] = field(default_factory=_frozen_map, compare=False, repr=False)
    """Where each key's value came from, by key path (``platforms.dingtalk.app_key``): ``file line 4``
    (plus the variables it reads), ``env DINGTALK_APP_KEY``, ``sandbox`` or ``default``; ``config show``
    prints them."""


# --- loading ---------------------------------------------------------------------------------------------

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
_SECTIONS = ("platforms", "agent", "sessions", "commands", "hooks", "storage", "http")

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
    log.debug("[config] loaded %s: agent %s, %d hook folder(s)", label, config.agent.type,
              len(config.hooks.paths))
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
    for section in _SECTIONS:
        if data.get(section) is None and (section in data or section == "platforms"):
            data[section] = {}  # an empty section (`agent:` with nothing under it) means all defaults
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
    problems += check.semantic_problems(data, parsed.lines)
    if problems:
        raise ConfigError(problems, source=label)
    config = _build(data, env, source)
    sources = _sources(config, parsed.lines, expanded.origins, from_env, dummies, env)
    if sandbox and config.storage.url != MEMORY_URL:
        config = replace(config, storage=StorageConfig(url=sandbox_storage_url(env)))
        sources["storage.url"] = "sandbox (apart from the gateway's own state)"
    return replace(config, sources=_frozen_map(sources))


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
) -> dict[str, str]:
    """Where each key of ``config`` came from; see :attr:`Config.sources`."""
    found: dict[str, str] = {}
    for section, value in _section_values(config):
        for f in fields(value):
            path: reader.KeyPath = (*section, f.name)
            names = ", ".join(dict.fromkeys(_REF_NAME.findall(origins.get(path, ""))))
            if path in dummies:
                where = "sandbox (dummy credentials)"
            elif path in from_env:
                where = f"env {from_env[path]}"
            elif path in lines:
                where = f"file line {lines[path]}" + (f" ({names})" if names else "")
            elif names:
                where = f"env {names}"  # the built-in configuration's references
            elif path == ("storage", "url") and env.get("EDGECRAB_HOME"):
                where = "default (env EDGECRAB_HOME)"
            elif path == (*_DINGTALK, "robot_code"):
                where = "default (the app key)"
            elif path == (*_DINGTALK, "allow_own_org"):
                where = "default (true when allowed_users is empty)"
            else:
                where = "default"
            found[reader.format_path(path)] = where
    return found


def _section_values(config: Config) -> list[tuple[reader.KeyPath, Any]]:
    return [(_DINGTALK, config.dingtalk)] + [
        ((name,), getattr(config, name)) for name in _SECTIONS if name != "platforms"
    ]


def _build(data: dict[str, Any], env: Mapping[str, str], source: Path | None) -> Config:
    dingtalk = dict(data["platforms"]["dingtalk"])
    for key in ("allowed_users", "allowed_groups", "extra_allowed_hosts"):
        if isinstance(dingtalk.get(key), str):
            dingtalk[key] = [item.strip() for item in dingtalk[key].split(",") if item.strip()]
    dingtalk["robot_code"] = dingtalk.get("robot_code") or dingtalk["app_key"]
    agent = dict(data.get("agent", {}))
    if isinstance(agent.get("command"), str):
        agent["command"] = shlex.split(agent["command"])
    hooks = dict(data.get("hooks", {}))
    hooks["paths"] = _hook_paths(hooks.get("paths"), source)
    storage = dict(data.get("storage", {}))
    storage.setdefault("url", f"sqlite:///{state_dir(env)}/state.db")
    return Config(
        dingtalk=_make(DingTalkConfig, dingtalk),
        agent=_make(AgentConfig, agent),
        sessions=_make(SessionsConfig, data.get("sessions", {})),
        commands=_make(CommandsConfig, data.get("commands", {})),
        hooks=_make(HooksConfig, hooks),
        storage=_make(StorageConfig, storage),
        http=_make(HttpConfig, data.get("http", {})),
        source=source.resolve() if source else None,
    )


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
        return _frozen_map({k: _frozen_map(v) for k, v in value.items()})
    if annotation.startswith("Mapping["):
        return _frozen_map(value)
    if annotation in ("float", "float | None"):
        return None if value is None else float(value)
    if annotation == "int":
        return int(value)
    return value


def _copy_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy_plain(v) for k, v in value.items()}
    return value


# --- showing ---------------------------------------------------------------------------------------------

REDACTED = "***"
def is_secret_key(name: str) -> bool:
    """True for key names whose string values must never be shown (``app_key`` is an id, not a secret)."""
    return check.is_secret_name(name)


def secret_values(config: Config) -> list[str]:
    """Every secret string in ``config``, longest first, for redacting logs and ``config show``."""
    found = [config.dingtalk.app_secret, config.agent.api_key]

    def walk(value: Any, name: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, str(key))
        elif isinstance(value, str) and is_secret_key(name):
            found.append(value)

    walk(config.agent.env, "")
    walk(config.hooks.config, "")
    return sorted({s for s in found if s}, key=len, reverse=True)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The effective configuration in the YAML layout, as plain data (secrets included)."""
    return {
        "platforms": {"dingtalk": _plain(config.dingtalk)},
        **{name: _plain(getattr(config, name)) for name in _SECTIONS if name != "platforms"},
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
            for secret in secrets:
                value = value.replace(secret, REDACTED)
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
