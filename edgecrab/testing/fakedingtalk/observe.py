"""Read-side helpers of :class:`FakeDingTalk`: records, stats, waiting for conditions, the event stream."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from edgecrab.testing.fakedingtalk.bus import Subscription
from edgecrab.testing.fakedingtalk.connection import FakeConnection
from edgecrab.testing.fakedingtalk.models import (
    AckRecord,
    OpenRequest,
    OutboundRecord,
    PingRecord,
    RestRecord,
)
from edgecrab.testing.fakedingtalk.state import FakeState
from edgecrab.testing.fakedingtalk.stream import StreamHub


def _describe(predicate: Callable[[], Any]) -> str:
    try:
        source = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
    return source if len(source) < 300 else source[:300] + "…"


class Observation:
    """Mixed into :class:`FakeDingTalk`. Lists are live and append-only (in arrival order).

    The ``wait_for*`` helpers take a ``timeout`` argument on purpose: it is the public API tests read best.
    """

    state: FakeState
    hub: StreamHub

    @property
    def acks(self) -> list[AckRecord]:
        return self.state.acks

    @property
    def outbound(self) -> list[OutboundRecord]:
        return self.state.outbound

    @property
    def requests(self) -> list[RestRecord]:
        return self.state.requests

    @property
    def unknown_routes(self) -> list[RestRecord]:
        """REST calls to a method and path the fake does not serve (answered "no such API")."""
        return self.state.unknown_routes

    @property
    def open_requests(self) -> list[OpenRequest]:
        return self.state.open_requests

    @property
    def pings(self) -> list[PingRecord]:
        return self.state.pings

    @property
    def connections(self) -> list[FakeConnection]:
        """Live websockets (draining ones included, see ``FakeConnection.draining``)."""
        return self.hub.live()

    @property
    def all_connections(self) -> list[FakeConnection]:
        return list(self.hub.all_connections)

    @property
    def connections_opened(self) -> int:
        return self.state.counters["connections_opened"]

    @property
    def tickets_issued(self) -> int:
        return self.state.counters["tickets_issued"]

    @property
    def redeliveries(self) -> int:
        return self.state.counters["redeliveries"]

    def messages_for(self, conversation_id: str) -> list[OutboundRecord]:
        """Accepted bot messages in one conversation, in arrival order (batchSend DM fallbacks included)."""
        return [r for r in self.state.outbound if r.conversation_id == conversation_id]

    def acks_for(self, message_id: str) -> list[AckRecord]:
        return [a for a in self.state.acks if a.message_id == message_id]

    def deliveries_of(self, message_id: str) -> int:
        """How many times a tracked frame went out (1 + redeliveries)."""
        d = self.hub.deliveries.get(message_id)
        return d.attempts if d else 0

    def stats(self) -> dict[str, Any]:
        c = self.state.counters
        rest_errors = sum(
            1
            for r in self.state.requests
            if r.status >= 400
            or (isinstance(r.response, dict) and r.response.get("errcode") not in (None, 0))
        )
        return {
            "connections": len(self.hub.live()),
            "connections_opened": c["connections_opened"],
            "tickets_issued": c["tickets_issued"],
            "tickets_rejected": c["tickets_rejected"],
            "auth_failures": c["auth_failures"],
            "pushes": c["pushes"],
            "frames_sent": c["frames_sent"],
            "redeliveries": c["redeliveries"],
            "gave_up": c["gave_up"],
            "duplicates_injected": c["duplicates_injected"],
            "dropped_unmentioned": c["dropped_unmentioned"],
            "acks": c["acks"],
            "acked_ok": c["acked_ok"],
            "http_callbacks": c["http_callbacks"],
            "pending": len(self.hub.pending()),
            "queued": sum(len(q) for q in self.hub.queues.values()),
            "outbound": len(self.state.outbound),
            "requests": len(self.state.requests),
            "rest_errors": rest_errors,
            "unknown_routes": len(self.state.unknown_routes),
            "tokens_issued": c["tokens_issued"],
            "disconnects_sent": c["disconnects_sent"],
            "aborts": c["aborts"],
            "bad_client_frames": c["bad_client_frames"],
            "counters": dict(c),
        }

    def subscribe(self, *, replay: bool = False, buffer: int = 10_000) -> Subscription:
        """A bounded stream of event dicts (``kind``: connection, frame, ack, redelivery, rest, outbound)."""
        return self.state.bus.subscribe(buffer=buffer, replay=replay)

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 5.0,  # noqa: ASYNC109
        *,
        message: str = "",
    ) -> None:
        """Poll ``predicate`` until it is true; ``TimeoutError`` names the predicate and the fake's state."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                recent = [
                    f"{e['kind']}:{e.get('event') or e.get('message_id') or e.get('path') or ''}"
                    for e in list(self.state.bus.recent)[-8:]
                ]
                stats = {k: v for k, v in self.stats().items() if k != "counters" and v}
                raise TimeoutError(
                    f"{message or 'condition'} not met within {timeout}s: {_describe(predicate)}\n"
                    f"  fake state: {stats}\n  recent events: {recent}"
                )
            await asyncio.sleep(0.005)

    async def wait_for_ack(
        self,
        message_id: str,
        code: int | None = 200,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> AckRecord:
        await self.wait_for(
            lambda: any(code in (None, a.code) for a in self.acks_for(message_id)),
            timeout,
            message=f"ack {code} for {message_id}",
        )
        return next(a for a in self.acks_for(message_id) if code in (None, a.code))

    async def wait_for_outbound(
        self,
        count: int = 1,
        conversation_id: str | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[OutboundRecord]:
        def current() -> list[OutboundRecord]:
            return self.messages_for(conversation_id) if conversation_id else list(self.state.outbound)

        await self.wait_for(lambda: len(current()) >= count, timeout, message=f"{count} outbound message(s)")
        return current()

    async def wait_for_connections(
        self,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
        *,
        app: str | None = None,
    ) -> None:
        await self.wait_for(
            lambda: len([c for c in self.hub.live(app) if not c.draining]) >= count,
            timeout,
            message=f"{count} live connection(s)",
        )
