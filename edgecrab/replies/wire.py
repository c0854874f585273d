"""Sends on the wire: each one shielded from the gateway's stop for a moment (:data:`STOP_GRACE_S`), and
cancellable at once by ``/stop`` for its conversation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

import anyio
import anyio.lowlevel

T = TypeVar("T")

STOP_GRACE_S = 0.5
"""How long a send already on the wire may go on when the gateway stops. DingTalk may well take it, and
only a finished send is known to be delivered: one cut off is sent again after the restart (a duplicate
whenever DingTalk had taken it). A send that needs longer is cut off, and is sent again."""


class Wire:
    def __init__(self) -> None:
        self._on_the_wire: set[anyio.CancelScope] = set()
        """The sends in progress, each shielded from the gateway's stop."""
        self._sending: dict[str, tuple[str, anyio.CancelScope]] = {}
        """By conversation: the reply whose message is being sent (retries included), and the scope that
        ``/stop`` cancels so that a send still retrying is not waited for."""
        self._stop_by: float | None = None
        """Once the gateway stops: the moment (anyio's clock) by which sends in progress are cut off."""

    def stopping(self) -> None:
        """The gateway stops: the sends on the wire get :data:`STOP_GRACE_S` to finish."""
        self._stop_by = anyio.current_time() + STOP_GRACE_S
        for scope in self._on_the_wire:
            scope.deadline = self._stop_by

    def stop(self, ckey: str, reply_ids: Collection[str] | None = None) -> None:
        """``/stop``: cut off the conversation's send in progress (only if it belongs to ``reply_ids``)."""
        sending = self._sending.get(ckey)
        if sending is not None and (reply_ids is None or sending[0] in reply_ids):
            sending[1].cancel()

    async def send(self, ckey: str, reply_id: str, send: Callable[[], Awaitable[T]]) -> T | None:
        """One send (the sender's retries included), which a stop of the gateway does not cut off at once
        and ``/stop`` does. None when it was cut off."""
        if self._stop_by is not None:
            await anyio.lowlevel.checkpoint()  # stopping: start nothing new (this raises the stop)
        # One scope for both: shielded from the gateway's stop (its deadline ends the grace period), and
        # cancelled by /stop (cancelling a shielded scope still cancels what runs inside it).
        with anyio.CancelScope(shield=True) as scope:
            if self._stop_by is not None:
                scope.deadline = self._stop_by
            self._on_the_wire.add(scope)
            self._sending[ckey] = (reply_id, scope)
            try:
                return await send()
            finally:
                self._sending.pop(ckey, None)
                self._on_the_wire.discard(scope)
        # Cut off: by /stop, or at the end of the grace period (the stop itself is then pending on this task).
        if self._stop_by is not None:
            await anyio.lowlevel.checkpoint()
        return None
