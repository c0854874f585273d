"""Plain data of the fake: apps, users, the default directory, observation records and id generators.

Everything here is inert (no I/O, no event loop), so records can be read from any thread.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

DEFAULT_CORP_ID = "dingcorp0001"
OTHER_CORP_ID = "dingcorp9999"
DEFAULT_APP_KEY = "ding_test_key"
DEFAULT_APP_SECRET = "test_secret_value"
CALLBACK_TOPIC = "/v1.0/im/bot/messages/get"
CARD_CALLBACK_TOPIC = "/v1.0/card/instances/callback"


def _digest(*parts: str, size: int = 24) -> bytes:
    return hashlib.sha256("\x1f".join(parts).encode()).digest()[:size]


def lwcp_id(*seed: str) -> str:
    """An encrypted-looking DingTalk id (``$:LWCP_v1:$…``), stable for the same seed."""
    return "$:LWCP_v1:$" + base64.b64encode(_digest("lwcp", *seed)).decode()


def conversation_id_for(*seed: str) -> str:
    """A ``cid…`` conversation id (44 base64 characters, like real ones), stable for the same seed."""
    return "cid" + base64.b64encode(_digest("cid", *seed, size=32)).decode()


def new_msg_id() -> str:
    """A fresh ``msgId`` in DingTalk's style (``msg`` + base64 of 16 random bytes)."""
    return "msg" + base64.b64encode(secrets.token_bytes(16)).decode()


_frame_counter = itertools.count(0x1000)
_frame_host = f"{os.getpid() & 0xFFF:03x}"


def new_frame_message_id() -> str:
    """A ``headers.messageId``: four underscore-separated hex segments.

    Real example: ``212b9d7c_165f_19bfa1a500a_1461def``.

    The third segment is the epoch time in ms in hex, as in real ids.
    """
    now_ms = int(time.time() * 1000)
    return f"{secrets.token_hex(4)}_{_frame_host}_{now_ms:x}_{next(_frame_counter):x}"


def new_request_id() -> str:
    """A ``requestid`` in the upper-case UUID style DingTalk uses."""
    return str(uuid.uuid4()).upper()


@dataclass
class FakeApp:
    """One robot app: its credentials, robotCode and identity inside its organisation.

    An app can have several robots (``more_robots``: the codes of the others). They share the app's
    credentials, token and Stream connections; each has its own robotCode, chatbotUserId and DM
    conversations. :meth:`as_robot` is the app as one of its robots: build messages with it (or pass
    the robot code as ``app=``) and they carry that robot's code.
    """

    client_id: str
    client_secret: str
    robot_code: str = ""
    corp_id: str = DEFAULT_CORP_ID
    chatbot_user_id: str = ""
    name: str = "EdgeCrab"
    app_id: str = ""  # headers.appId on frames (a UUID for real apps)
    more_robots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.robot_code = self.robot_code or self.client_id
        self.chatbot_user_id = self.chatbot_user_id or lwcp_id("bot", self.client_id)
        self.app_id = self.app_id or str(uuid.UUID(bytes=_digest("app", self.client_id, size=16)))
        self.more_robots = tuple(self.more_robots)

    @property
    def robot_codes(self) -> tuple[str, ...]:
        """The codes of every robot of the app, its first robot's first."""
        return (self.robot_code, *self.more_robots)

    def as_robot(self, code: str) -> FakeApp:
        """The app as its robot ``code`` (KeyError for a code of no robot of this app)."""
        if code == self.robot_code:
            return self
        if code not in self.more_robots:
            codes = list(self.robot_codes)
            raise KeyError(f"app {self.client_id!r} has no robot {code!r}; its robots: {codes}")
        bot, name = lwcp_id("bot", self.client_id, code), f"{self.name} ({code})"
        return replace(self, robot_code=code, chatbot_user_id=bot, name=name, more_robots=())

    def public(self) -> dict[str, Any]:
        """Everything but the secret (for the control API and the web chat)."""
        data = asdict(self)
        data.pop("client_secret")
        return data


@dataclass
class FakeUser:
    """A person in the directory. ``staff_id`` is ``""`` for people outside the robot's organisation."""

    staff_id: str
    nick: str
    corp_id: str = DEFAULT_CORP_ID
    dingtalk_id: str = ""
    is_admin: bool = False

    def __post_init__(self) -> None:
        self.dingtalk_id = self.dingtalk_id or lwcp_id("user", self.corp_id, self.staff_id or self.nick)

    def public(self) -> dict[str, Any]:
        return asdict(self)


def default_users() -> list[FakeUser]:
    """A small organisation: an admin, members with Chinese and English nicks, and one outsider."""
    return [
        FakeUser("manager807", "张三", is_admin=True),
        FakeUser("user1001", "李四"),
        FakeUser("user1002", "Alice Chen"),
        FakeUser("user1003", "Bob Smith"),
        FakeUser("", "王五 (external)", corp_id=OTHER_CORP_ID),
    ]


def default_apps() -> list[FakeApp]:
    return [FakeApp(DEFAULT_APP_KEY, DEFAULT_APP_SECRET)]


@dataclass
class AckRecord:
    """One ack frame the client sent. ``latency_s`` is measured from the latest send of that frame."""

    message_id: str | None
    code: int | None
    message: str | None
    data: Any
    latency_s: float | None
    connection_id: str
    t: float = field(default_factory=time.monotonic)
    topic: str | None = None
    frame_type: str | None = None
    attempt: int | None = None  # 1 for the first delivery, 2 for the first redelivery, ...
    raw: str = ""


@dataclass
class OutboundRecord:
    """One bot->user message DingTalk accepted (one record per recipient of a batchSend); ``robot``: the
    robot code it went out as (the sessionWebhook's robot, or the OpenAPI call's ``robotCode``)."""

    app: str
    via: Literal["webhook", "batchSend", "groupSend"]
    conversation_id: str
    user_ids: list[str]
    msgtype: str  # msgtype for webhooks, msgKey for OpenAPI sends
    title: str | None
    text: str
    at_user_ids: list[str]
    body_bytes: int
    status: int
    errcode: int
    t: float = field(default_factory=time.monotonic)
    is_at_all: bool = False
    process_query_key: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    robot: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RestRecord:
    """One HTTP request to the REST side, accepted or rejected, with what the fake answered."""

    method: str
    path: str
    status: int
    body: Any
    headers: dict[str, str]
    t: float = field(default_factory=time.monotonic)
    query: dict[str, str] = field(default_factory=dict)
    response: Any = None
    fault: str | None = None  # name of the injected fault that produced the answer, if any

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PingRecord:
    """One SYSTEM ping the fake sent and whether the client echoed its ``opaque``."""

    message_id: str
    opaque: str
    connection_id: str
    sent_t: float
    ack_t: float | None = None
    echoed: Any = None
    ok: bool | None = None


@dataclass
class OpenRequest:
    """One call to ``/v1.0/gateway/connections/open``."""

    body: Any
    headers: dict[str, str]
    status: int
    ticket: str | None
    t: float = field(default_factory=time.monotonic)
