"""The platform-neutral dataclasses' own helpers."""

from __future__ import annotations

import dataclasses

from edgecrab.events import ReplyRoute


def test_reply_route_to_dict_has_every_field_and_round_trips() -> None:
    route = ReplyRoute(
        robot_code="ding1",
        conversation_id="cid1",
        is_group=True,
        sender_staff_id="staff1",
        sender_name="Ada",
        session_webhook="https://oapi.dingtalk.com/robot/sendBySession?session=s1",
        session_webhook_expires_at=1700000000.5,
    )
    # Written out by hand for speed: it must never miss a field added later.
    assert route.to_dict() == dataclasses.asdict(route)
    assert ReplyRoute.from_dict(route.to_dict()) == route


def test_reply_route_from_dict_ignores_unknown_keys_and_defaults_missing_ones() -> None:
    route = ReplyRoute.from_dict({"robot_code": "r", "conversation_id": "c", "is_group": False, "extra": 1})
    assert route == ReplyRoute("r", "c", False)
