"""Platform-neutral events: what the core of the gateway works on.

Only ``edgecrab.dingtalk`` knows DingTalk payloads; it converts a robot callback into a :class:`Message`
and turns reply text into API calls. Everything else (router, runs, hooks, delivery) sees these
small frozen dataclasses. Hook authors may rely on these attribute names:
``message.text``, ``message.sender.id``, ``message.sender.name``, ``message.conversation.id``,
``message.conversation.is_group``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Sender:
    id: str
    """Staff id (``senderStaffId``); empty for people outside the robot's organisation."""
    name: str = ""
    dingtalk_id: str = ""
    """DingTalk's encrypted ``senderId``: always present, stable per person."""
    corp_id: str = ""
    is_admin: bool = False

    @property
    def key(self) -> str:
        """The id used for session keys: staff id when known, else the encrypted DingTalk id."""
        return self.id or self.dingtalk_id


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    is_group: bool
    title: str = ""


@dataclass(frozen=True, slots=True)
class Mention:
    """Someone other than the robot @-mentioned in a group message (DingTalk's ``atUsers``)."""

    dingtalk_id: str
    staff_id: str = ""
    name: str = ""
    """The name shown in the message (``@Tom``), when the message text lets us tell whose it is."""

    def describe(self) -> str:
        ids = ", ".join(
            f"{label} {value}"
            for label, value in (("staffId", self.staff_id), ("dingtalkId", self.dingtalk_id))
            if value
        )
        return f"@{self.name} ({ids})" if self.name else ids


@dataclass(frozen=True, slots=True)
class Attachment:
    kind: str
    """``picture``, ``audio``, ``video`` or ``file``."""
    download_code: str
    file_name: str = ""
    extra: tuple[tuple[str, str], ...] = ()
    """Other string facts (duration, videoType, ...), as sorted pairs so the dataclass stays hashable."""
    path: str = ""
    """Where the downloaded file is (:mod:`edgecrab.media`), once it is; kept ``media.keep_hours``."""
    mime: str = ""
    """The MIME type read from the file's bytes, once downloaded."""
    size: int = 0
    """Bytes downloaded."""
    note: str = ""
    """Why there is no file (too large, the download failed), once that is known."""

    def describe(self) -> dict[str, Any]:
        """What ``command`` and ``python`` agents are given about it (the request's ``attachments``)."""
        return {
            "kind": self.kind,
            "name": self.file_name,
            "path": self.path,
            "mime": self.mime,
            "size": self.size,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Part:
    """One piece of a message body in display order: a run of text or a picture (richText)."""

    kind: str
    """``text`` or ``picture``."""
    text: str = ""
    download_code: str = ""

    def render(self) -> str:
        return self.text if self.kind == "text" else f"[{self.kind}]"


@dataclass(frozen=True, slots=True)
class Quote:
    """A message the user quoted when writing this one (DingTalk's ``repliedMsg``)."""

    text: str
    sender_name: str = ""
    msgtype: str = "text"
    attachments: tuple[Attachment, ...] = field(default=(), compare=False)
    """Pictures and files in the quoted message (their download codes), downloaded like the message's."""


@dataclass(frozen=True, slots=True)
class ReplyRoute:
    """Everything needed to answer in the conversation, persisted with the message."""

    robot_code: str
    conversation_id: str
    is_group: bool
    sender_staff_id: str = ""
    sender_name: str = ""
    session_webhook: str = ""
    session_webhook_expires_at: float = 0.0
    """Epoch seconds; 0 when unknown."""

    def to_dict(self) -> dict[str, Any]:
        # By hand: dataclasses.asdict deep-copies field by field, several times slower (once per reply).
        return {
            "robot_code": self.robot_code,
            "conversation_id": self.conversation_id,
            "is_group": self.is_group,
            "sender_staff_id": self.sender_staff_id,
            "sender_name": self.sender_name,
            "session_webhook": self.session_webhook,
            "session_webhook_expires_at": self.session_webhook_expires_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplyRoute:
        return cls(**{k: v for k, v in data.items() if k in _ROUTE_FIELDS})


_ROUTE_FIELDS = frozenset(f.name for f in dataclasses.fields(ReplyRoute))


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    """DingTalk ``msgId``: the primary dedup key."""
    robot: str
    """The name of the robot that received it (``default`` in the single-robot form; hooks see it as
    ``message.robot``); the start of every session key. Its code is ``route.robot_code``."""
    conversation: Conversation
    sender: Sender
    text: str
    msgtype: str = "text"
    bot_mentioned: bool = False
    mentions: tuple[Mention, ...] = ()
    """Other people @-mentioned in the message (not the bot)."""
    created_at: float = 0.0
    """Epoch seconds (DingTalk ``createAt``)."""
    route: ReplyRoute | None = None
    attachments: tuple[Attachment, ...] = ()
    quote: Quote | None = None
    unsupported: bool = False
    """True for ``unknownMsgType`` and other kinds the gateway cannot read."""
    bot_corp_id: str = ""
    """``chatbotCorpId``: the robot's own organisation."""
    stream_message_id: str = ""
    """``headers.messageId`` of the frame that carried it (secondary dedup key)."""
    parts: tuple[Part, ...] = ()
    """The body in display order when it mixes text and pictures (richText): text runs and pictures
    where the sender put them. Empty for other messages; ``text`` and ``attachments`` say it all."""

    def replace(self, **changes: Any) -> Message:
        """A copy with some fields changed (what ``prepare_message`` hooks return)."""
        return dataclasses.replace(self, **changes)

    def agent_text(self) -> str:
        """The text given to the agent: the quote (as context), who else was mentioned, then the body.

        A richText body keeps its pictures where they were, as ``[picture]`` between the text runs;
        other attachments are listed before the text."""
        parts: list[str] = []
        if self.quote is not None and self.quote.text:
            who = f" from {self.quote.sender_name}" if self.quote.sender_name else ""
            quoted = "\n".join("> " + line for line in self.quote.text[:2000].splitlines())
            parts.append(f"(quoting a message{who})\n{quoted}")
        if self.mentions:
            parts.append("(also mentioned: " + "; ".join(m.describe() for m in self.mentions) + ")")
        if self.parts and self.text == _text_of_parts(self.parts):
            parts.append("\n".join(part.render() for part in self.parts))
        else:  # no ordered body, or a hook rewrote the text: the text as it now is
            for att in self.attachments:
                label = att.file_name or att.kind
                parts.append(f"[{att.kind}: {label}]")
            if self.text:
                parts.append(self.text)
        return "\n\n".join(parts)


def _text_of_parts(parts: tuple[Part, ...]) -> str:
    """``Message.text`` of an ordered body: its text runs, one per line."""
    return "\n".join(part.text for part in parts if part.kind == "text" and part.text)


@dataclass(frozen=True, slots=True)
class Command:
    """A slash command after @mention stripping: ``/retry@bot now`` -> name ``/retry``, args ``now``."""

    name: str
    args: str = ""
    raw: str = ""


@dataclass(slots=True)
class AgentRequest:
    """What a backend receives. Mutable: ``prepare_agent_request`` hooks may edit it in place."""

    messages: list[dict[str, Any]]
    """OpenAI-style turns, oldest first, ending with the new user message; no system turn. A ``content``
    is a string, or (a message with pictures, for the openai agent) a list of OpenAI content parts."""
    system_prompt: str = ""
    session_key: str = ""
    message_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    """The new message's files (:meth:`Attachment.describe`: kind, name, local path, MIME type, size)."""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ReplyAttachment:
    """A picture or a file an agent sends with its answer: a local ``path`` or the bytes (``data``).

    The gateway checks it (size, type, where the path points), keeps a copy until it is delivered and
    sends it right after the answer's text; one it cannot send becomes a short note to the user."""

    name: str = ""
    """The file name the user sees; default: the path's last part, or ``attachment``."""
    kind: str = ""
    """``image`` or ``file``; empty: ``image`` for JPEG, PNG, GIF and BMP bytes, else ``file``."""
    path: str = ""
    data: bytes | None = None
    error: str = ""
    """Set by an agent that could not read it: the reason, sent to the user as a note instead."""


@dataclass(frozen=True, slots=True)
class AgentResult:
    text: str
    usage: Usage = Usage()
    duration_s: float = 0.0
    stopped: bool = False
    """Cancelled by /stop, /new or the interrupt policy."""
    failed: bool = False
    error: str = ""
    """A short, user-presentable reason when ``failed``."""
    attachments: tuple[ReplyAttachment, ...] = ()
    """Pictures and files sent after the answer, in this order (``python`` and ``command`` agents)."""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What ``session_reset`` hooks receive: the session that was cleared and the message that asked."""

    key: str
    message: Message | None = None
