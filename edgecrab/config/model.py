"""The configuration's dataclasses: the contract the rest of the gateway reads.

Nothing downstream reads raw dicts: the gateway is assembled from :class:`Config`, which only
:func:`~edgecrab.config.load.load_config` makes. Parsing and ``${VAR}`` expansion live in
:mod:`edgecrab.config.source`, schema checks and readable problems in :mod:`edgecrab.config.check`, building
these dataclasses (defaults from the environment, where each value came from) in :mod:`edgecrab.config.load`,
and what ``edgecrab config show`` prints (secrets redacted) in :mod:`edgecrab.config.redact`; the schema is
``schemas/config.schema.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any


def frozen_map(data: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only copy of ``data``: what the dataclasses hold where YAML has a mapping."""
    return MappingProxyType(dict(data or {}))


DEFAULT_ROBOT = "default"
"""The name of the robot of the single-robot form (``platforms.dingtalk`` without ``robots``)."""


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
    watchdog_s: float = 600.0
    """A card with no update for this long is finished by the watchdog (never left "thinking")."""


@dataclass(frozen=True)
class DingTalkConfig:
    """One robot: ``platforms.dingtalk`` (the single-robot form, a robot named ``default``), or one entry of
    ``platforms.dingtalk.robots`` (the keys written beside ``robots`` being every entry's defaults)."""

    app_key: str
    app_secret: str = field(repr=False)
    name: str = DEFAULT_ROBOT
    """How the config, ``send --robot``, hooks (``message.robot``), metrics and ``/status`` call the robot."""
    agent: str = ""
    """An entry of the top-level ``agents`` map; empty: the top-level ``agent``."""
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
    max_chunks_per_reply: int = 20
    """At most this many messages per reply; the rest becomes an "answer truncated" note. 0: no limit."""
    max_inbound_chars: int = 20000
    """Longer inbound text is cut to this many characters, with a note the agent sees. 0: no limit."""
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
    mode: str = "stream"
    """How messages arrive: ``stream`` (the outbound websocket) or ``http`` (DingTalk POSTs them to
    ``http.callback_path`` on the ops port, signed; :mod:`edgecrab.ops.callback`)."""
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
    max_answer_chars: int = 100_000
    """The OpenAI agent stops reading an answer at this many characters and keeps it, marked truncated."""
    command: tuple[str, ...] = ()
    """argv for ``type: command``."""
    callable: str = ""
    """``package.module:function`` for ``type: python``."""
    env: Mapping[str, str] = field(default_factory=frozen_map)
    attachment_dirs: tuple[Path, ...] = ()
    """Folders a ``python`` agent's attachment paths may point into (absolute: resolved against the config
    file's folder by the loader); empty: the system's temporary folder."""
    vision: bool = False
    """The model reads pictures: the openai agent sends them as ``image_url`` parts (else a text note)."""


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
    aliases: Mapping[str, str] = field(default_factory=frozen_map)
    forward_unknown: bool = False


@dataclass(frozen=True)
class HooksConfig:
    paths: tuple[Path, ...] = ()
    """Absolute folders (resolved relative to the config file by the loader)."""
    modules: tuple[str, ...] = ()
    enabled: tuple[str, ...] = ()
    """Empty: all. Otherwise only hooks with these names."""
    disabled: tuple[str, ...] = ()
    config: Mapping[str, Mapping[str, Any]] = field(default_factory=frozen_map)
    on_error: str = "fail"
    """``fail`` (stop start-up) | ``skip`` (log and go on) for hook files that cannot be loaded."""
    timeout_s: float = 5.0
    entry_points: bool = True


@dataclass(frozen=True)
class StorageConfig:
    url: str = "sqlite:///~/.edgecrab/state.db"
    prefix: str = "edgecrab:"
    """Redis only: the start of every key, so that several gateways (or other programs) share one Redis."""
    lease_s: float = 15.0
    """Redis only: a replica's session leases expire this long after it stopped renewing them (it died):
    then the other replicas take over its sessions."""

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
    """The gateway's own HTTP port (:mod:`edgecrab.ops.server`): always on, loopback by default."""

    host: str = "127.0.0.1"
    port: int = 0
    """0: a free port, logged at start and shown by ``/status``."""
    token: str = field(default="", repr=False)
    """When set, ``/metrics``, ``/status`` and ``POST /reload`` need ``Authorization: Bearer <token>``."""
    callback_path: str = "/dingtalk/callback"
    """Where DingTalk POSTs robot messages when ``platforms.dingtalk.mode`` is ``http``."""


@dataclass(frozen=True)
class ScheduleConfig:
    """One entry of ``schedules:``: a message the robot sends on a cron schedule
    (:mod:`edgecrab.core.schedules`)."""

    name: str
    cron: str
    timezone: str = ""
    """An IANA name (``Asia/Shanghai``); empty: the host's zone."""
    robot: str = "default"
    """The robot that sends it (its name); an entry that leaves it out gets the first robot."""
    users: tuple[str, ...] = ()
    """Staff ids, each sent a DM; or ``group``."""
    group: str = ""
    """A group's openConversationId."""
    at: tuple[str, ...] = ()
    text: str = ""
    """A fixed message; or ``prompt``."""
    prompt: str = ""
    """Asked of the robot's agent, in a session of the schedule's own; the answer is sent."""
    format: str = ""
    """``markdown`` or ``text``; empty: ``reply_format``."""
    title: str = ""


@dataclass(frozen=True)
class MediaConfig:
    """``media``: pictures, voice, videos and files people send (:mod:`edgecrab.media`)."""

    max_bytes: int = 20 * 1024 * 1024
    """Larger downloads are stopped and become a note to the agent."""
    keep_hours: float = 24.0
    """Downloaded files are deleted this long after they arrived."""
    allowed_hosts: tuple[str, ...] = ()
    """Download hosts besides DingTalk's (``*.dingtalk.com``, ``*.aliyuncs.com``) and the api_base host."""
    max_image_pixels: int = 4_000_000
    """Pictures with more pixels are scaled down before they go to a vision model (a JPEG to between a quarter
    of this and all of it: the scale its decoder reaches fastest)."""
    inline_text_bytes: int = 64 * 1024
    """Text-like files (and PDF text) up to this many bytes are given to the agent inline."""
    merge_window_ms: int = 800
    """Pictures one sender sends one after the other within this long are one turn; 0: off."""
    timeout_s: float = 60.0
    """Longest time one download may take."""
    directory: str = ""
    """Where files are kept; empty: ``media/`` in the state directory (``$EDGECRAB_HOME``)."""


@dataclass(frozen=True)
class Config:
    dingtalk: DingTalkConfig
    agent: AgentConfig = AgentConfig()
    sessions: SessionsConfig = SessionsConfig()
    commands: CommandsConfig = CommandsConfig()
    hooks: HooksConfig = HooksConfig()
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    other_robots: tuple[DingTalkConfig, ...] = ()
    """The robots after the first (``dingtalk``) in ``platforms.dingtalk.robots``; see :attr:`robots`."""
    agents: Mapping[str, AgentConfig] = field(default_factory=frozen_map)
    """The top-level ``agents`` map: named agents that robots pick with ``agent:``."""
    schedules: tuple[ScheduleConfig, ...] = ()
    schedules_catch_up_s: float = 300.0
    """A slot missed while the gateway was down is fired on start when it is at most this old."""
    media: MediaConfig = MediaConfig()
    source: Path | None = None
    """The YAML file it came from; None for the built-in env-only default."""
    sources: Mapping[str, str] = field(default_factory=frozen_map, compare=False, repr=False)
    """Where each key's value came from, by key path (``platforms.dingtalk.app_key``): ``file line 4``
    (plus the variables it reads), ``env DINGTALK_APP_KEY``, ``sandbox`` or ``default``; ``config show``
    prints them."""
    secret_refs: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """Values of the ``${VAR}`` references whose variable names look secret (``DB_PASS``, ``*_TOKEN``,
    ``*_KEY``, ``*_SECRET``...), wherever they are used: :func:`~edgecrab.config.redact.secret_values`
    includes them, so logs, the chat and ``config show`` hide them even inside a URL or a key whose own name
    looks harmless."""

    @property
    def robots(self) -> tuple[DingTalkConfig, ...]:
        """Every robot, the first (``dingtalk``, which the single-robot form has alone) first."""
        return (self.dingtalk, *self.other_robots)

    def robot(self, name: str) -> DingTalkConfig | None:
        """The robot called ``name``, or None."""
        return next((r for r in self.robots if r.name == name), None)

    def agent_for(self, robot: DingTalkConfig) -> AgentConfig:
        """The agent answering ``robot``'s messages: its ``agents`` entry, else the top-level ``agent``."""
        return self.agents[robot.agent] if robot.agent else self.agent
