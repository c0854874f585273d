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
from edgecrab.store.base import Turn


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


async def conversation(
    turns: TurnContent, history: list[Turn], content: str | list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The request's messages: the history (user turns as :meth:`TurnContent.stored_content` gives them),
    then the new user turn's ``content``."""
    messages = [
        {"role": t.role, "content": await turns.stored_content(t.content) if t.role == "user" else t.content}
        for t in history
    ]
    return [*messages, {"role": "user", "content": content}]
