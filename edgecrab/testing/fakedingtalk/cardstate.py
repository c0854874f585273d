"""What the fake keeps of each AI card: its template, its variables, every frame, update and delivery.

:class:`FakeCard` is what a test asserts on (``fake.cards.card(out_track_id)``): the flow status and the
text a recipient would read, besides the raw history. The endpoints that change it are in
:mod:`edgecrab.testing.fakedingtalk.cards`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PUBLIC_AI_TEMPLATE = "02fcf2f4-5e02-4a85-b672-46d1f715543e.schema"
"""DingTalk's public AI card template (key ``msgContent``), usable by every app."""
SDK_AI_TEMPLATE = "382e4302-551d-4880-bf29-a30acfab2e71.schema"
RICH_AI_TEMPLATE = "675cde2f-f526-40cb-b828-f5b2b57b8b77.schema"
INSTANCE_SCOPE = "Card.Instance.Write"
STREAMING_SCOPE = "Card.Streaming.Write"

FLOW_STATUS = {"1": "processing", "2": "inputting", "3": "finished", "4": "executing", "5": "failed"}


@dataclass
class CardTemplate:
    """A template the fake knows: its streaming variables, and whether it was published."""

    template_id: str
    streaming_keys: tuple[str, ...] = ("msgContent",)
    published: bool = True


def default_templates() -> dict[str, CardTemplate]:
    return {
        PUBLIC_AI_TEMPLATE: CardTemplate(PUBLIC_AI_TEMPLATE, ("msgContent",)),
        SDK_AI_TEMPLATE: CardTemplate(SDK_AI_TEMPLATE, ("msgContent",)),
        RICH_AI_TEMPLATE: CardTemplate(RICH_AI_TEMPLATE, ("content",)),
    }


@dataclass
class CardFrame:
    """One accepted streaming call."""

    guid: str
    key: str
    content: str
    is_full: bool
    is_finalize: bool
    is_error: bool
    t: float
    after_finalize: bool = False


@dataclass
class CardDelivery:
    """One space a deliver call named, and what came of it."""

    space_type: str  # IM_GROUP | IM_ROBOT
    space_id: str  # conversation id (group) or staff id (DM)
    conversation_id: str
    robot_code: str
    success: bool
    error_msg: str = ""
    dropped: bool = False  # accepted but never shown (no deliver model): DingTalk's silent failure


@dataclass
class FakeCard:
    """One card instance, as DingTalk holds it and as its recipients see it."""

    out_track_id: str
    app: str
    template_id: str
    params: dict[str, str]
    main_key: str
    spaces: tuple[str, ...]  # space models given at create: IM_GROUP, IM_ROBOT
    process_query_key: str
    created_t: float
    frames: list[CardFrame] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[CardDelivery] = field(default_factory=list)
    stream_finalized: bool = False
    stream_error: bool = False

    @property
    def flow_status(self) -> str:
        return self.params.get("flowStatus", "")

    @property
    def status(self) -> str:
        """``processing`` ``inputting`` ``finished`` ``executing`` ``failed``, or ``""`` when never set."""
        return FLOW_STATUS.get(self.flow_status, self.flow_status)

    @property
    def text(self) -> str:
        """What a recipient reads on the card: the template's streaming variable."""
        return self.params.get(self.main_key, "")

    @property
    def visible(self) -> bool:
        return any(d.success and not d.dropped for d in self.deliveries)

    @property
    def conversation_ids(self) -> list[str]:
        return [d.conversation_id for d in self.deliveries if d.success and not d.dropped]

    def public(self, *, frames: bool = False) -> dict[str, Any]:
        data = {
            "out_track_id": self.out_track_id,
            "app": self.app,
            "template_id": self.template_id,
            "status": self.status,
            "flow_status": self.flow_status,
            "text": self.text,
            "params": dict(self.params),
            "visible": self.visible,
            "conversation_ids": self.conversation_ids,
            "stream_finalized": self.stream_finalized,
            "stream_error": self.stream_error,
            "frame_count": len(self.frames),
            "update_count": len(self.updates),
            "deliveries": [asdict(d) for d in self.deliveries],
            "process_query_key": self.process_query_key,
        }
        if frames:
            data["frames"] = [asdict(f) for f in self.frames]
            data["updates"] = list(self.updates)
        return data
