"""What the Stream client's state changes mean for the rest of the gateway.

The Stream client reports every change (connecting, connected, reconnecting, failed, stopped) to
:meth:`ConnectionWatch.on_state`, which only queues it: the client must never wait for hooks while it
reconnects. :meth:`ConnectionWatch.notify` then runs the ``connection_changed`` hooks on the main loop, one
change after the other, and :meth:`ConnectionWatch.refuse_to_start` ends start-up when DingTalk refuses the
credentials before any connection worked (wrong AppKey/AppSecret is a configuration error: retrying forever
would only hide it; once a connection has worked, a 401 is DingTalk's passing trouble and the client
retries it). :meth:`ConnectionWatch.describe` is the connection line of ``/status``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from edgecrab.config import DingTalkConfig
from edgecrab.dingtalk.stream import CONNECTED, FAILED, StreamClient
from edgecrab.errors import StartupError

Notify = Callable[..., Awaitable[Any]]


class ConnectionWatch:
    """One robot's Stream client, watched. ``notifier()`` gives the hooks' ``notify`` (or None: no hooks)."""

    def __init__(self, robot: str, config: DingTalkConfig, notifier: Callable[[], Notify | None]) -> None:
        self.robot = robot
        self.config = config
        self.stream: StreamClient | None = None
        self._notifier = notifier
        self._states: deque[tuple[str, str]] = deque()
        self._added = anyio.Event()
        self._refused = anyio.Event()

    async def on_state(self, state: str, detail: str) -> None:
        if state == FAILED and self.stream is not None and not self.stream.connections_opened:
            self._refused.set()  # credentials refused before any connection: see refuse_to_start
        self._states.append((state, detail))
        self._added.set()

    async def refuse_to_start(self) -> None:
        """Raise the start-up error once DingTalk refused the credentials before any connection worked."""
        await self._refused.wait()
        raise StartupError(
            "DingTalk refused the app credentials (HTTP 401) before any connection worked, so the gateway "
            "is not starting: check DINGTALK_APP_KEY / DINGTALK_APP_SECRET (or platforms.dingtalk.app_key / "
            "app_secret) against the app's 'Credentials and basic info' page at open.dingtalk.com (app key "
            f"{self.config.app_key}, api_base {self.config.api_base})",
            exit_code=2,
        )

    async def notify(self) -> None:
        """``connection_changed`` hooks, for as long as this task runs."""
        while True:
            await self._added.wait()
            self._added = anyio.Event()
            await self.drain()

    async def drain(self) -> None:
        while self._states:
            state, detail = self._states.popleft()
            notify = self._notifier()
            if notify is not None:
                await notify("connection_changed", robot=self.robot, state=state, detail=detail)

    def describe(self) -> str:
        s = self.stream
        if s is None:
            return "not started"
        since = time.monotonic() - s.state_since
        detail = f" ({s.state_detail})" if s.state_detail and s.state != CONNECTED else ""
        return f"{s.state}{detail} for {int(since)} s, {s.connections_opened} connection(s) opened"
