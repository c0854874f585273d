"""The fake card APIs' error codes, paths and request helpers (:mod:`edgecrab.testing.fakedingtalk.cards`
holds the endpoints). Codes marked "inferred" were not seen in the wild."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from edgecrab.testing.fakedingtalk import wire
from edgecrab.testing.fakedingtalk.rest import Rejection

CREATE = "/v1.0/card/instances"
DELIVER = "/v1.0/card/instances/deliver"
CREATE_AND_DELIVER = "/v1.0/card/instances/createAndDeliver"
STREAMING = "/v1.0/card/streaming"

PERMISSION_DENIED = "Forbidden.AccessDenied.AccessTokenPermissionDenied"
UNPUBLISHED = ("param.templateUnpublished", "卡片模板未发布")
UNKNOWN_TEMPLATE = ("param.templateNotExist", "卡片模板不存在")  # inferred
DUPLICATE_TRACK_ID = ("param.outTrackIdExist", "outTrackId 已存在")  # inferred
NO_SUCH_CARD = ("param.cardNotExist", "卡片实例不存在")  # inferred
DUPLICATE_GUID = ("param.guidDuplicated", "guid 重复，每次流式更新需使用新的 guid")  # inferred
NOT_STRING = ("param.cardParamMapInvalid", "cardParamMap 的值必须是字符串")  # inferred
SPACE_DELIVER_MODEL_EMPTY = ("param.spaceDeliverModelEmpty", "spaceDeliverModel is empty")
BAD_SPACE_ID = ("param.openSpaceIdInvalid", "openSpaceId 不合法")  # inferred
UNKNOWN_ERROR = ("unknownError", "unknownError")

DELIVER_ERROR = "deliver failed: user not reachable"  # inferred wording
SPACE_PREFIX = "dtv1.card//"


def reply(body: Any, status: int = 200) -> web.Response:
    """A control API answer (plain JSON, no DingTalk headers)."""
    return web.Response(
        text=json.dumps(body, ensure_ascii=False, default=str), status=status, content_type="application/json"
    )


def error(code_message: tuple[str, str], status: int = 400, **extra: Any) -> Rejection:
    return Rejection(wire.api_error(status, *code_message, **extra))


def ok(result: Any) -> web.Response:
    return wire.json_response({"success": True, "result": result})


def param_map(body: dict[str, Any], *, required: bool) -> dict[str, str] | None:
    data = body.get("cardData")
    if data is None and not required:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("cardParamMap"), dict):
        raise Rejection(wire.api_error(400, "MissingcardData", "cardData.cardParamMap is mandatory."))
    params = data["cardParamMap"]
    bad = sorted(k for k, v in params.items() if not isinstance(v, str))
    if bad:
        code, message = NOT_STRING
        raise error((code, f"{message}: {', '.join(bad)}"))
    return dict(params)
