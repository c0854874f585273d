"""What the ops port looks at: the parts of one running gateway, handed over by the gateway once built.

The ops package reads these parts and never imports the gateway (which imports the ops server), so
there is no import cycle; the gateway fills :class:`GatewayParts` in ``Gateway.run``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edgecrab.core.runs import Runner
from edgecrab.core.schedules import Scheduler
from edgecrab.dingtalk.cardreply import CardReplies
from edgecrab.dingtalk.intake import Intake
from edgecrab.dingtalk.rest import DingTalkSender
from edgecrab.dingtalk.stream import StreamClient
from edgecrab.replies.delivery import Delivery
from edgecrab.store.base import Store


@dataclass
class GatewayParts:
    """One robot's running gateway, as the ops port sees it."""

    robot: str
    stream: StreamClient
    intake: Intake
    sender: DingTalkSender
    delivery: Delivery
    runner: Runner
    store: Store
    agent: str
    """The agent's name (``echo``, ``openai``, ...)."""
    name: str = "default"
    """The robot's name in the config (``robot`` is its code, the metrics label)."""
    cards: CardReplies | None = None
    """The AI-card side with ``reply_mode: card``; None otherwise."""
    schedules: Scheduler | None = None
    """The ``schedules:`` of the config, for ``/status``."""
    mode: str = "stream"
    """``stream`` or ``http`` (``platforms.dingtalk.mode``): in http mode there is no Stream connection."""
    started_at: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def idle_timeout_s(self) -> float:
        return self.stream.config.idle_timeout_s

    def last_frame_age_s(self) -> float:
        """Seconds since the last frame on any connection; before the first one, since the start (the
        idle watchdog's grace)."""
        last = self.stream.stats.last_frame_at or self.started_at
        return time.monotonic() - last

    def queue_depth(self) -> int:
        """Messages waiting behind a run, over all sessions."""
        return self.runner.queued_total
