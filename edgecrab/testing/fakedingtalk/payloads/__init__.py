"""Robot message builders: the decoded ``data`` dict of a ``/v1.0/im/bot/messages/get`` callback, per msgtype.

Field sets follow the protocol reference, section 7. Every build gets a unique ``msgId``, ``createAt`` = now
(epoch ms), a fresh ``sessionWebhook`` that points at this fake and expires ``webhook_ttl_s`` later, and
``conversationType`` as a string. Media builders register their download codes (valid only for the app that
received the message) with bytes the fake serves. ``DROP`` as an override value removes a key.
"""

from __future__ import annotations

from typing import Any

from edgecrab.testing.fakedingtalk.payloads.common import (
    DEFAULT_GROUP_ID,
    DEFAULT_GROUP_TITLE,
    DROP,
    KINDS,
    UNKNOWN_TEXT,
    PayloadBase,
    UserRef,
    filler,
    tiny_png,
)
from edgecrab.testing.fakedingtalk.payloads.media import MediaPayloads
from edgecrab.testing.fakedingtalk.payloads.text import TextPayloads

__all__ = [
    "DEFAULT_GROUP_ID",
    "DEFAULT_GROUP_TITLE",
    "DROP",
    "KINDS",
    "UNKNOWN_TEXT",
    "MediaPayloads",
    "PayloadBase",
    "PayloadBuilder",
    "TextPayloads",
    "UserRef",
    "filler",
    "tiny_png",
]


class PayloadBuilder(TextPayloads, MediaPayloads):
    """Mixed into :class:`FakeDingTalk`; every method returns a decoded ``data`` dict ready for ``push``."""

    # one entry point for the control API ------------------------------------------------------------------
    def message(self, kind: str, user: UserRef, text: str = "", **options: Any) -> dict[str, Any]:
        """Build any kind by name (see ``KINDS``); options are the named builder's keyword arguments.

        Options whose value is ``None`` are ignored. ``dm``/``text`` with a ``conversation_id`` builds a group
        message; the media kinds are DMs unless a ``conversation_id`` is given.
        """
        options = {k: v for k, v in options.items() if v is not None}
        if kind in ("dm", "text") and "conversation_id" in options:
            kind = "group"
        if kind in ("dm", "text"):
            for key in ("title", "at_bot", "at_users"):
                options.pop(key, None)
            return self.dm(user, text, **options)
        if kind == "group":
            return self.group(user, text, **options)
        if kind == "bare_at":
            for key in ("title", "at_bot", "at_users"):
                options.pop(key, None)
            return self.bare_at(user, **options)
        options.pop("at_users", None)
        if kind in ("rich_text", "richText"):
            return self.rich_text(user, options.pop("items", None) or [text], **options)
        if kind == "quoted":
            return self.quoted(user, text, **options)
        if kind == "audio":
            return self.audio(user, options.pop("recognition", text or "钉钉，让进步发生"), **options)
        if kind == "file":
            return self.file(user, options.pop("file_name", text or "foobar.zip"), **options)
        if kind == "picture":
            return self.picture(user, **options)
        if kind == "video":
            return self.video(user, **options)
        if kind in ("unknown", "unknownMsgType"):
            return self.unknown(user, **options)
        raise ValueError(f"unknown message kind {kind!r}; known: {', '.join(KINDS)}")
