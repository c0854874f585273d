"""Shared state of one fake DingTalk: directory, registries (webhooks, tokens, media, groups), records, clock.

Every component (payload builders, stream hub, REST handlers, faults, control API) reads and writes this one
object, so what a test observes is exactly what the wire saw.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

from edgecrab.testing.fakedingtalk.bus import EventBus
from edgecrab.testing.fakedingtalk.guard import Scrubber
from edgecrab.testing.fakedingtalk.models import (
    AckRecord,
    FakeApp,
    FakeUser,
    OpenRequest,
    OutboundRecord,
    PingRecord,
    RestRecord,
    conversation_id_for,
)


@dataclass
class Settings:
    """Tunable timings and limits; every field may be changed while the fake runs."""

    redeliver_after_s: float = 60.0
    max_redeliveries: int = 3
    redeliver_new_id: bool = False  # True: each redelivery has a new headers.messageId (DingTalk's MetaQ)
    webhook_ttl_s: float = 5400.0
    token_ttl_s: int = 7200
    body_limit: int = 20000
    ticket_ttl_s: float = 90.0
    disconnect_close_after_s: float = 10.0
    deliver_unmentioned: bool = False  # real DingTalk never pushes a group message that does not @ the robot
    kick_older: bool = False  # "a newer connection kicks the older one" mode (reports conflict, see 1.4)
    media_size: int = 2048  # default size of generated media bytes
    upload_limit: int = 20 * 1024 * 1024  # media/upload: largest image, video or file (DingTalk: 20 MB)
    duplicate_after_ack: float = 0.0
    zombie: bool = False
    callback_url: str = ""  # HTTP-callback mode: robot messages are signed and POSTed here, not streamed
    download_ttl_s: float = 300.0  # how long a messageFiles/download URL works
    download_base: str = ""  # where download URLs point ("": this fake); tests point it elsewhere (a canary)
    expire_downloads: int = 0  # the next this many download URLs are issued already expired


@dataclass
class WebhookSession:
    session: str
    app: str  # client_id
    conversation_id: str
    conversation_type: str  # "1" DM, "2" group
    sender_staff_id: str
    created_ms: int
    expires_ms: int
    created_t: float
    invalidated: bool = False


@dataclass
class MediaBlob:
    app: str
    content: bytes
    content_type: str
    file_name: str


@dataclass
class TokenInfo:
    app: str
    expires_t: float  # on the fake clock


@dataclass
class Group:
    conversation_id: str
    title: str
    members: set[str] = field(default_factory=set)  # staff ids seen in the group


class FakeState:
    """Registries and records, mutated from the fake's event loop (builders excepted: plain dict writes)."""

    def __init__(
        self, apps: list[FakeApp], users: list[FakeUser], settings: Settings, seed: int | None
    ) -> None:
        if not apps:
            raise ValueError("at least one FakeApp is required")
        self.apps: dict[str, FakeApp] = {a.client_id: a for a in apps}
        self.users: list[FakeUser] = list(users)
        self.settings = settings
        self.rng = random.Random(seed)
        self.bus = EventBus()
        self.base_url = ""
        self.clock_offset = 0.0
        self.sessions: dict[str, WebhookSession] = {}
        self.media: dict[str, MediaBlob] = {}  # downloadCode -> blob
        self.files: dict[str, tuple[MediaBlob, float]] = {}  # download URL key -> (blob, expiry, fake clock)
        self.uploads: dict[str, MediaBlob] = {}  # media_id -> blob
        self.tokens: dict[str, TokenInfo] = {}
        self.groups: dict[str, Group] = {}
        self.acks: list[AckRecord] = []
        self.outbound: list[OutboundRecord] = []
        self.requests: list[RestRecord] = []
        self.unknown_routes: list[RestRecord] = []  # also in ``requests``
        self.open_requests: list[OpenRequest] = []
        self.pings: list[PingRecord] = []
        self.counters: Counter[str] = Counter()
        # Applied to every recorded request: the control API and the event bus serve records to anyone local.
        self.scrub = Scrubber(lambda: [a.client_secret for a in self.apps.values()])

    # clock -----------------------------------------------------------------------------------------------
    def now(self) -> float:
        """Monotonic seconds on the fake clock (tests can move it forward with ``advance_clock``)."""
        return time.monotonic() + self.clock_offset

    def wall_ms(self) -> int:
        return int((time.time() + self.clock_offset) * 1000)

    # directory -------------------------------------------------------------------------------------------
    @property
    def default_app(self) -> FakeApp:
        return next(iter(self.apps.values()))

    def app(self, app: FakeApp | str | None) -> FakeApp:
        if app is None:
            return self.default_app
        if isinstance(app, FakeApp):
            return app
        if app in self.apps:
            return self.apps[app]
        for candidate in self.apps.values():
            if candidate.robot_code == app:
                return candidate
        raise KeyError(f"unknown app {app!r}; known: {sorted(self.apps)}")

    def app_by_robot_code(self, robot_code: str) -> FakeApp | None:
        for candidate in self.apps.values():
            if candidate.robot_code == robot_code:
                return candidate
        return None

    def user(self, user: FakeUser | str) -> FakeUser:
        """Find a user by staff id, nick or dingtalk id."""
        if isinstance(user, FakeUser):
            return user
        for attr in ("staff_id", "nick", "dingtalk_id"):
            for candidate in self.users:
                if user and getattr(candidate, attr) == user:
                    return candidate
        known = [u.staff_id or u.nick for u in self.users]
        raise KeyError(f"unknown user {user!r}; known: {known}")

    def staff(self, corp_id: str) -> dict[str, FakeUser]:
        return {u.staff_id: u for u in self.users if u.staff_id and u.corp_id == corp_id}

    def dm_conversation_id(self, app: FakeApp, user: FakeUser) -> str:
        return conversation_id_for("dm", app.client_id, user.dingtalk_id)

    def dm_conversation_for_staff(self, app: FakeApp, staff_id: str) -> str:
        user = self.staff(app.corp_id).get(staff_id)
        return self.dm_conversation_id(app, user) if user else ""

    def group_for(self, conversation_id: str, title: str | None) -> Group:
        group = self.groups.get(conversation_id)
        if group is None:
            group = Group(conversation_id, title or "测试群")
            self.groups[conversation_id] = group
        elif title:
            group.title = title
        return group

    # credentials -----------------------------------------------------------------------------------------
    def issue_token(self, app: FakeApp) -> tuple[str, int]:
        """Return the app's live token (extending it) or a new one, with its lifetime in seconds."""
        ttl = int(self.settings.token_ttl_s)
        now = self.now()
        for token, info in self.tokens.items():
            if info.app == app.client_id and info.expires_t > now:
                info.expires_t = now + ttl
                return token, ttl
        token = secrets.token_hex(16)
        self.tokens[token] = TokenInfo(app.client_id, now + ttl)
        self.counters["tokens_issued"] += 1
        return token, ttl

    def token_app(self, token: str | None) -> FakeApp | None:
        """The app a live token belongs to, or ``None`` if it is missing, unknown or expired."""
        info = self.tokens.get(token or "")
        if info is None or info.expires_t <= self.now():
            return None
        return self.apps.get(info.app)

    def session_alive(self, session: WebhookSession, dies_after_s: float | None) -> bool:
        if session.invalidated or self.wall_ms() >= session.expires_ms:
            return False
        return dies_after_s is None or self.now() - session.created_t < dies_after_s

    # records ---------------------------------------------------------------------------------------------
    def record_outbound(self, record: OutboundRecord) -> None:
        self.outbound.append(record)
        self.counters["outbound"] += 1
        self.bus.emit("outbound", **record.as_dict())
