"""Robots of one app on one Stream connection: each robot callback goes to the robot its ``robotCode`` names.

DingTalk pushes an app's callbacks to one of the app's connections, whichever robot of the app they are
for, so the gateway opens one connection per app (never one per robot: a second connection would take
half of the first robot's messages) and tells the robots apart by the callback's ``robotCode``. A callback
naming no robot of this gateway goes to the app's first robot, which answers with its own code and the
app's token (the only token that can answer it).

A card button's callback names no robot, only its card (``outTrackId``): it goes to the robot whose card it
is (:meth:`Fanout.on_card_callback`; the store says so for a card another replica streams), so the stop
button stops the right robot's run.
"""

from __future__ import annotations

import json
import logging

from edgecrab.dingtalk.cardreply import CardReplies
from edgecrab.dingtalk.convert import Frame
from edgecrab.dingtalk.intake import Intake
from edgecrab.dingtalk.streamconn import AckDecision

log = logging.getLogger("edgecrab.dingtalk.fanout")


class Fanout:
    """The intakes of one app's robots by robot code; the first one takes what names none of them."""

    def __init__(self, intakes: dict[str, Intake], cards: list[CardReplies] | None = None) -> None:
        """``cards``: the card replies of the robots of the app that answer with cards."""
        self.intakes = intakes
        self.first = next(iter(intakes.values()))
        self.cards = list(cards or ())

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

    async def on_card_callback(self, frame: Frame) -> AckDecision:
        """A card button pressed: handed to the robot that has the card open (none: acked and dropped,
        as a robot's own cards drop a button of a card they no longer have)."""
        if len(self.cards) == 1:
            return await self.cards[0].on_callback(frame)
        try:
            card = str(json.loads(frame.data_text).get("outTrackId", ""))
        except (ValueError, AttributeError):
            card = ""
        for cards in self.cards:
            if card in cards.live:
                return await cards.on_callback(frame)
        for cards in self.cards:  # another replica streams it: the store knows whose it is
            if await cards.has(card):
                return await cards.on_callback(frame)
        return AckDecision()

    async def on_callbacks(self, frames: list[Frame]) -> list[AckDecision]:
        """Callbacks that arrived together: each robot's claimed in one call; the acks in order."""
        if len(self.intakes) == 1:
            return await self.first.on_callbacks(frames)
        mine: dict[int, list[int]] = {}
        picked = [self.pick(frame) for frame in frames]
        for i, intake in enumerate(picked):
            mine.setdefault(id(intake), []).append(i)
        acks: list[AckDecision] = [AckDecision()] * len(frames)
        for indexes in mine.values():
            decisions = await picked[indexes[0]].on_callbacks([frames[i] for i in indexes])
            for i, decision in zip(indexes, decisions, strict=True):
                acks[i] = decision
        return acks

    def on_callbacks_now(self, frames: list[Frame]) -> list[AckDecision]:
        if len(self.intakes) == 1:
            return self.first.on_callbacks_now(frames)
        return [self.pick(frame).on_callbacks_now([frame])[0] for frame in frames]


__all__ = ["Fanout"]
