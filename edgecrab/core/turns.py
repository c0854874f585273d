"""The user turn of a run: what the agent is given for a message, and what the history keeps of it.

The runner asks a :class:`TurnContent` for both. :class:`PlainTurns` is the text of
:meth:`~edgecrab.events.Message.agent_text`, stored as it is; the gateway uses
:class:`edgecrab.media.MediaStage`, which downloads the message's files first and may give OpenAI content
parts (pictures) and the files' paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from edgecrab.events import Message


@dataclass(slots=True)
class UserTurn:
    stored: str
    """What the history keeps (and ``/retry`` runs again)."""
    content: str | list[dict[str, Any]]
    """The user turn's ``content`` in the request."""
    message: Message
    """The message as the agent call sees it (its attachments downloaded: ``path``, ``mime``, ``size``)."""
    attachments: list[dict[str, Any]] = field(default_factory=list)


class TurnContent(Protocol):
    async def user(self, message: Message) -> UserTurn: ...

    async def stored_content(self, stored: str) -> str | list[dict[str, Any]]:
        """A stored user turn as the request's ``content`` (history, ``/retry``)."""
        ...


class PlainTurns:
    async def user(self, message: Message) -> UserTurn:
        text = message.agent_text()
        return UserTurn(text, text, message)

    async def stored_content(self, stored: str) -> str | list[dict[str, Any]]:
        return stored
