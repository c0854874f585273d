"""Response helpers in DingTalk's two error dialects (protocol reference section 9).

New API (``api.dingtalk.com``): ``{"code","message","requestid"}`` with ``x-acs-request-id`` headers and
``Content-Type: application/json;charset=utf-8``. Legacy API and sessionWebhook: ``{"errcode","errmsg"}``,
usually with HTTP 200.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from aiohttp import web

from edgecrab.testing.fakedingtalk.models import new_request_id

JSON_UTF8 = "application/json;charset=utf-8"

# Bodies of well-known errors; codes and messages as reported (see the reference), others marked inferred.
AUTH_FAILED = ("authFailed", "鉴权失败")
INVALID_TOKEN = ("InvalidAuthentication", "不合法的access_token")
QPS_APP = ("Forbidden.AccessDenied.QpsLimitForAppkeyAndApi", "请求被拒绝，API的调用频率超过了应用级限制")
QPS_API = ("Forbidden.AccessDenied.QpsLimitForApi", "请求被拒绝，API的调用频率超过了限制")
COUNT_LIMIT = ("Forbidden.AccessDenied.ApiCountLimitForOrg", "请求被拒绝，企业API调用次数超过了月度上限")
BODY_TOO_LARGE = (
    "InvalidParameter.BodyTooLarge",
    "body 大小不合法，请保持大小在 {limit}bytes 以内",
)  # inferred code
SESSION_GONE = (300001, "session 不存在")
TOO_LONG = (460101, "message too long, exceed {limit} bytes")
WEBHOOK_TOO_FAST = (130101, "send too fast, exceed 20 times per minute")
LEGACY_BAD_TOKEN = (40014, "不合法的access_token")
LEGACY_BAD_PARAM = (40035, "不合法的参数")  # inferred for malformed webhook bodies
# No such API (a path or method the server does not implement). New API: HTTP 404 (field reports:
# zhayujie/CowAgent #2490); legacy API: HTTP 200 with errcode 404 (DingTalk's global error code list).
NOT_FOUND = ("InvalidAction.NotFound", "Specified api is not found, please check your url and method.")
LEGACY_NOT_FOUND = (404, "请求的URI地址不存在")


def json_response(body: Any, status: int = 200, *, new_api: bool = True) -> web.Response:
    headers = {"Content-Type": JSON_UTF8, "Server": "DingTalk/1.0.0"}
    if new_api:
        headers["x-acs-request-id"] = (
            body.get("requestid", new_request_id()) if isinstance(body, dict) else new_request_id()
        )
        headers["x-acs-trace-id"] = secrets.token_hex(16)
    return web.Response(body=json.dumps(body, ensure_ascii=False).encode(), status=status, headers=headers)


def api_error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return json_response({"code": code, "message": message, "requestid": new_request_id(), **extra}, status)


def legacy_error(errcode: int, errmsg: str, status: int = 200) -> web.Response:
    return json_response({"errcode": errcode, "errmsg": errmsg}, status, new_api=False)


def is_new_api(path: str) -> bool:
    return path.startswith("/v1.0/")


def unknown_route(path: str) -> web.Response:
    """DingTalk's answer to a method and path it does not serve, in the dialect of ``path``."""
    if is_new_api(path):
        return api_error(404, *NOT_FOUND)
    return legacy_error(*LEGACY_NOT_FOUND)


def generic_error(path: str, status: int, *, code: str, message: str, errcode: int) -> web.Response:
    """An error in the dialect of ``path``: the new API's or the legacy one's."""
    if is_new_api(path):
        return api_error(status, code, message)
    return legacy_error(errcode, message, status)
