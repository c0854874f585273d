"""Live replies: an answer shown while the agent writes it (``reply_mode: card``), as the core sees it.

The runner opens one :class:`LiveReply` when a run starts (:meth:`LiveReplies.open`; ``None`` means
"reply the ordinary way": markdown mode, or cards unavailable), feeds it the agent's pieces of text, and
settles it when the run ends: stopped, failed or finished, and says when the run's end is recorded. What a
live reply could not show goes out through the delivery ledger as ordinary markdown, so nothing is lost.
"""

from __future__ import annotations

from typing import Protocol

from edgecrab.events import Message


class LiveReply(Protocol):
    @property
    def calls(self) -> int:
        """Platform API calls this reply has cost so far."""
        ...

    def push(self, delta: str) -> None:
        """The next piece of the agent's answer (never blocks)."""

    async def stopped(self) -> None:
        """The run was stopped: show the text so far, marked stopped."""

    async def failed(self, text: str) -> bool:
        """The run failed: show ``text``. False when it could not be shown (send it the ordinary way)."""
        ...

    async def finished(self, text: str) -> str | None:
        """The run answered ``text`` (hooks applied): show it. Returns what must still follow as ordinary
        messages ("" for nothing), or None when the live reply failed and all of ``text`` must."""
        ...

    async def recorded(self) -> None:
        """The run's end is recorded (its message finished): the live reply need not be picked up again
        after a crash."""


class LiveReplies(Protocol):
    async def open(self, message: Message, session_key: str) -> LiveReply | None:
        """A live reply in the conversation of ``message`` for the run starting now, or None."""
        ...


async def settle(live: LiveReply, *, stopped: bool, failure: str | None, answer: str | None) -> str | None:
    """End ``live`` the way its run ended; returns what must still go out as ordinary messages."""
    if stopped:
        await live.stopped()
        return None
    if failure is not None:
        return None if await live.failed(failure) else failure
    assert answer is not None
    rest = await live.finished(answer)
    if rest is None:
        return answer
    return rest or None
