"""Robots of one app on one Stream connection: each robot callback goes to the robot its ``robotCode`` names.

DingTalk pushes an app's callbacks to one of the app's connections, whichever robot of the app they are
for, so the gateway opens one connection per app (never one per robot: a second connection would take
half of the first robot's messages) and tells the robots apart by the callback's ``robotCode``. A callback
naming no robot of this gateway goes to the app's first robot, which answers with its own code and the
app's token (the only token that can answer it).
"""

from __future__ import annotations

import json
import logging

from edgecrab.dingtalk.convert import Frame
from edgecrab.dingtalk.intake import Intake
from edgecrab.dingtalk.streamconn import AckDecision

log = logging.getLogger("edgecrab.dingtalk.fanout")


class Fanout:
    """The intakes of one app's robots by robot code; the first one takes what names none of them."""

    def __init__(self, intakes: dict[str, Intake]) -> None:
        self.intakes = intakes
        self.first = next(iter(intakes.values()))

    def pick(self, frame: Frame) -> Intake:
        if len(self.intakes) == 1:
            return self.first  # one robot on the connection: no second decode on the ack path
        try:
            code = json.loads(frame.data_text).get("robotCode")
        except (ValueError, AttributeError):
            return self.first  # the intake refuses it with the reason
        intake = self.intakes.get(code) if isinstance(code, str) else None
        if intake is None:
            log.warning("[dingtalk] callback for robot code %r, which no robot here has: the app's first "
                        "robot takes it", code)
            return self.first
        return intake

    async def on_callback(self, frame: Frame) -> AckDecision:
        return await self.pick(frame).on_callback(frame)

    def on_callbacks_now(self, frames: list[Frame]) -> list[AckDecision]:
        if len(self.intakes) == 1:
            return self.first.on_callbacks_now(frames)
        return [self.pick(frame).on_callbacks_now([frame])[0] for frame in frames]


__all__ = ["Fanout"]
