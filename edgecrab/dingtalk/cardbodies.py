"""The request bodies of the card API calls (``wave2.md`` 1.2, copy-exact shapes) and the reading of a
delivery's answer; :mod:`edgecrab.dingtalk.cards` makes the calls."""

from __future__ import annotations

import json
import uuid
from typing import Any

from edgecrab.config.model import CardConfig
from edgecrab.dingtalk.carderrors import PUBLIC_AI_TEMPLATE
from edgecrab.events import ReplyRoute

FLOW_INPUTTING = "2"
FLOW_FINISHED = "3"
FLOW_FAILED = "5"


def space_id(route: ReplyRoute) -> str:
    """The card ``openSpaceId`` of a conversation: the group, or the DM keyed by the sender's staff id."""
    if route.is_group:
        return f"dtv1.card//IM_GROUP.{route.conversation_id}"
    return f"dtv1.card//IM_ROBOT.{route.sender_staff_id}"


def open_body(card: CardConfig, route: ReplyRoute, out_track_id: str, robot_code: str) -> dict[str, Any]:
    """The createAndDeliver body (wave2.md 1.2): created "inputting", delivered with the robot's code."""
    params = {"config": '{"autoLayout":true}', card.content_key: "", "flowStatus": FLOW_INPUTTING}
    if card.template_id == PUBLIC_AI_TEMPLATE:
        params["sys_full_json_obj"] = json.dumps({"order": [card.content_key]})
    if card.stop_button:
        params.update(hasAction="true", stop_action="true")
    body: dict[str, Any] = {
        "cardTemplateId": card.template_id,
        "outTrackId": out_track_id,
        "cardData": {"cardParamMap": params},
        "callbackType": "STREAM",
        "imGroupOpenSpaceModel": {"supportForward": True},
        "imRobotOpenSpaceModel": {"supportForward": True},
        "openSpaceId": space_id(route),
        "userIdType": 1,
    }
    extension = {"dynamicSummary": "true"}
    if route.is_group:
        body["imGroupOpenDeliverModel"] = {"robotCode": robot_code, "extension": extension}
    else:  # the Deliver model, not the Space one, and with robotCode (peers that omit it fail in DMs)
        body["imRobotOpenDeliverModel"] = {
            "spaceType": "IM_ROBOT",
            "robotCode": robot_code,
            "extension": extension,
        }
    return body


def streaming_body(out_track_id: str, key: str, text: str, *, final: bool) -> dict[str, Any]:
    """One streaming frame of card ``out_track_id`` carrying the full text in ``key``, with a fresh guid."""
    return {
        "outTrackId": out_track_id,
        "guid": uuid.uuid4().hex,
        "key": key,
        "content": text if final else text.rstrip("\n"),
        "isFull": True,
        "isFinalize": final,
        "isError": False,
    }


def failed_deliveries(data: Any) -> list[str]:
    """``errorMsg`` of each ``success: false`` deliver result in a 200 answer (createAndDeliver, deliver)."""
    result = data.get("result") if isinstance(data, dict) else None
    results = result.get("deliverResults") if isinstance(result, dict) else result
    if not isinstance(results, list):
        return []
    return [
        str(r.get("errorMsg") or "delivery failed")
        for r in results
        if isinstance(r, dict) and r.get("success") is False
    ]
