"""The OpenAPI side: access tokens, proactive sends (batchSend, groupMessages/send), media download/upload
(the upload rules and the mediaId checks of sends: :mod:`uploads`).

Every ``/v1.0/`` call but the token and gateway ones needs ``x-acs-dingtalk-access-token``: a missing, expired
or other app's token answers ``400 InvalidAuthentication``. ``msgParam`` must be a JSON *string* whose keys
match ``msgKey``. Error codes not seen in the wild are marked "inferred" in :mod:`wire`'s spirit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

from aiohttp import web

from edgecrab.testing.fakedingtalk import uploads, wire
from edgecrab.testing.fakedingtalk.faults import FaultPlan
from edgecrab.testing.fakedingtalk.models import FakeApp, OutboundRecord
from edgecrab.testing.fakedingtalk.state import FakeState, MediaBlob

TOKEN_HEADER = "x-acs-dingtalk-access-token"
MAX_BATCH_USERS = 20  # one report; see the reference 8.3

# msgKey -> msgParam keys that must be present as strings
MSG_KEYS: dict[str, tuple[str, ...]] = {
    "sampleText": ("content",),
    "sampleMarkdown": ("title", "text"),
    "sampleImageMsg": ("photoURL",),
    "sampleLink": ("text", "title", "picUrl", "messageUrl"),
    "sampleActionCard": ("title", "text", "singleTitle", "singleURL"),
    **{f"sampleActionCard{i}": ("title", "text") for i in range(2, 7)},
    "sampleFile": ("mediaId", "fileName", "fileType"),
    "sampleAudio": ("mediaId", "duration"),
    "sampleVideo": (),
}


class Rejection(Exception):
    """A request the fake refuses; carries the response to send."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _invalid(message: str, code: str = "InvalidParameter") -> Rejection:
    return Rejection(wire.api_error(400, code, message))


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        raise Rejection(wire.api_error(400, "Missingbody", "body is mandatory for this action."))
    try:
        body = json.loads(raw)
    except ValueError:
        raise _invalid("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _invalid("body must be a JSON object")
    return body


def require(body: dict[str, Any], name: str, kind: type | tuple[type, ...] = str) -> Any:
    if name not in body or body[name] in (None, "", []):
        raise Rejection(wire.api_error(400, f"Missing{name}", f"{name} is mandatory for this action."))
    if not isinstance(body[name], kind):
        raise _invalid(f"{name} has the wrong type", f"InvalidParameter.{name}")
    return body[name]


def parse_msg_param(msg_key: str, msg_param: str) -> dict[str, Any]:
    """Decode ``msgParam`` and check its keys against ``msgKey``."""
    if msg_key not in MSG_KEYS:
        raise _invalid(f"msgKey {msg_key!r} is not supported", "InvalidParameter.msgKey")
    try:
        param = json.loads(msg_param)
    except ValueError:
        raise _invalid("msgParam is not a JSON string", "InvalidParameter.msgParam") from None
    if not isinstance(param, dict):
        raise _invalid("msgParam must encode a JSON object", "InvalidParameter.msgParam")
    for key in MSG_KEYS[msg_key]:
        if not isinstance(param.get(key), str) or not param[key]:
            raise _invalid(f"msgParam.{key} is required for {msg_key}", "InvalidParameter.msgParam")
    return param


def summarize(msg_key: str, param: dict[str, Any]) -> tuple[str | None, str]:
    """(title, text) of an OpenAPI message, for the outbound record."""
    text = (
        param.get("content")
        or param.get("text")
        or param.get("photoURL")
        or param.get("fileName")
        or param.get("mediaId")
        or ""
    )
    return param.get("title"), str(text)


def new_process_query_key() -> str:
    return base64.b64encode(secrets.token_bytes(24)).decode()


def guarded(handler: Any) -> Any:
    """An API handler whose :class:`Rejection` becomes its DingTalk-style error answer."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Rejection as rejection:
            return rejection.response

    return run

_URL_SECRET = secrets.token_bytes(16)


def _sign(key: str, expires: float) -> str:
    mac = hmac.new(_URL_SECRET, f"{key}\n{int(expires)}".encode(), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _oss_error(status: int, code: str, message: str) -> web.Response:
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


class RestApi:
    def __init__(self, state: FakeState, faults: FaultPlan) -> None:
        self.state, self.faults = state, faults

    def routes(self) -> list[web.RouteDef]:
        wrap = guarded
        return [
            web.post("/v1.0/oauth2/accessToken", wrap(self.access_token)),
            web.get("/gettoken", self.gettoken),
            web.post("/v1.0/robot/oToMessages/batchSend", wrap(self.batch_send)),
            web.post("/v1.0/robot/groupMessages/send", wrap(self.group_send)),
            web.post("/v1.0/robot/messageFiles/download", wrap(self.download)),
            web.get("/files/{key}", self.serve_file),
            web.post("/media/upload", self.media_upload),
            web.get("/_fake/media/{media_id}", uploads.serve_upload(self.state)),
        ]

    # tokens -----------------------------------------------------------------------------------------------
    async def access_token(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        key, secret = require(body, "appKey"), require(body, "appSecret")
        app = self.state.apps.get(key)
        if app is None or app.client_secret != secret:  # code and text inferred
            raise Rejection(wire.api_error(400, "invalidClientIdOrSecret", "无效的clientId或者clientSecret"))
        token, ttl = self.state.issue_token(app)
        return wire.json_response({"accessToken": token, "expireIn": ttl})

    async def gettoken(self, request: web.Request) -> web.Response:
        app = self.state.apps.get(request.query.get("appkey", ""))
        if app is None or app.client_secret != request.query.get("appsecret"):
            return wire.legacy_error(40089, "不合法的appkey或appsecret")  # inferred
        token, ttl = self.state.issue_token(app)
        return wire.json_response(
            {"errcode": 0, "access_token": token, "errmsg": "ok", "expires_in": ttl}, new_api=False
        )

    def caller(self, request: web.Request) -> FakeApp:
        app = self.state.token_app(request.headers.get(TOKEN_HEADER))
        if app is None:
            raise Rejection(wire.api_error(400, *wire.INVALID_TOKEN))
        return app

    def robot(self, caller: FakeApp, robot_code: str) -> FakeApp:
        robot = self.state.app_by_robot_code(robot_code)
        if robot is None:
            raise _invalid(f"robot {robot_code!r} does not exist", "resource.not.found")  # inferred
        if robot.client_id != caller.client_id:
            raise Rejection(wire.api_error(400, *wire.INVALID_TOKEN))
        return robot

    async def _check_size(self, request: web.Request) -> int:
        size = len(await request.read())
        limit = self.state.settings.body_limit
        if size > limit:
            code, message = wire.BODY_TOO_LARGE
            raise _invalid(message.format(limit=limit), code)
        return size

    def _media_checked(self, robot: FakeApp, msg_key: str, param: dict[str, Any]) -> dict[str, Any]:
        problem = uploads.send_media_problem(self.state, robot.client_id, msg_key, param)
        if problem:  # code inferred
            raise _invalid(problem, "InvalidParameter.mediaId")
        return param

    # sends ------------------------------------------------------------------------------------------------
    async def batch_send(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        body = await json_body(request)
        robot = self.robot(caller, require(body, "robotCode"))
        user_ids = require(body, "userIds", list)
        msg_key, msg_param = require(body, "msgKey"), require(body, "msgParam")
        if not all(isinstance(u, str) for u in user_ids):
            raise _invalid("userIds must be staff ids (strings)", "InvalidParameter.userIds")
        if len(user_ids) > MAX_BATCH_USERS:
            raise _invalid(f"at most {MAX_BATCH_USERS} userIds per call", "InvalidParameter.userIds")
        size = await self._check_size(request)
        param = self._media_checked(robot, msg_key, parse_msg_param(msg_key, msg_param))
        staff = self.state.staff(robot.corp_id)
        invalid = [u for u in user_ids if u not in staff]
        throttled = [u for u in user_ids if u in staff and u in self.faults.flow_control]
        key = new_process_query_key()
        title, text = summarize(msg_key, param)
        for uid in user_ids:
            if uid in invalid or uid in throttled:
                continue
            self.state.record_outbound(
                OutboundRecord(
                    app=robot.client_id,
                    via="batchSend",
                    conversation_id=self.state.dm_conversation_for_staff(robot, uid),
                    user_ids=[uid],
                    msgtype=msg_key,
                    title=title,
                    text=text,
                    at_user_ids=[],
                    body_bytes=size,
                    status=200,
                    errcode=0,
                    process_query_key=key,
                    body=body,
                )
            )
        return wire.json_response(
            {
                "processQueryKey": key,
                "invalidStaffIdList": invalid,
                "flowControlledStaffIdList": throttled,
                "filteredStaffIdList": [],
            }
        )

    async def group_send(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        body = await json_body(request)
        robot = self.robot(caller, require(body, "robotCode"))
        cid = require(body, "openConversationId")
        msg_key, msg_param = require(body, "msgKey"), require(body, "msgParam")
        size = await self._check_size(request)
        param = self._media_checked(robot, msg_key, parse_msg_param(msg_key, msg_param))
        if cid not in self.state.groups:  # code inferred: the robot is not in that group
            raise _invalid(
                f"openConversationId {cid!r} is not a group this robot is in",
                "InvalidParameter.openConversationId",
            )
        key = new_process_query_key()
        title, text = summarize(msg_key, param)
        self.state.record_outbound(
            OutboundRecord(
                app=robot.client_id,
                via="groupSend",
                conversation_id=cid,
                user_ids=[],
                msgtype=msg_key,
                title=title,
                text=text,
                at_user_ids=[],
                body_bytes=size,
                status=200,
                errcode=0,
                process_query_key=key,
                body=body,
            )
        )
        return wire.json_response({"processQueryKey": key})

    # media ------------------------------------------------------------------------------------------------
    async def download(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        body = await json_body(request)
        robot = self.robot(caller, require(body, "robotCode"))
        blob = self.state.media.get(require(body, "downloadCode"))
        if blob is None or blob.app != robot.client_id:  # codes belong to the robot that received them
            raise _invalid("downloadCode is invalid for this robot", "InvalidParameter.downloadCode")
        settings, key = self.state.settings, secrets.token_urlsafe(18)
        expires = self.state.now() + settings.download_ttl_s
        if settings.expire_downloads > 0:
            settings.expire_downloads -= 1
            expires = self.state.now() - 1
        self.state.files[key] = (blob, expires)
        self.state.counters["download_urls"] += 1
        signature = _sign(key, expires)
        base = settings.download_base or self.state.base_url
        query = f"Expires={int(expires)}&OSSAccessKeyId=fake&Signature={signature}"
        return wire.json_response({"downloadUrl": f"{base}/files/{key}?{query}"})

    async def serve_file(self, request: web.Request) -> web.Response:
        """An OSS pre-signed URL: the signature covers the headers, so a ``Content-Type`` breaks it."""
        key = request.match_info["key"]
        found = self.state.files.get(key)
        if found is None:
            return _oss_error(404, "NoSuchKey", "The specified key does not exist.")
        blob, expires = found
        if request.headers.get("Content-Type") or request.query.get("Signature") != _sign(key, expires):
            self.state.counters["files_refused"] += 1
            return _oss_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not "
                              "match the signature you provided.")
        if self.state.now() > expires:
            self.state.counters["files_refused"] += 1
            return _oss_error(403, "AccessDenied", "Request has expired.")
        self.state.counters["files_served"] += 1
        return web.Response(
            body=blob.content,
            content_type=blob.content_type,
            headers={"Content-Disposition": f'attachment; filename="{blob.file_name}"'},
        )

    async def media_upload(self, request: web.Request) -> web.Response:
        app = self.state.token_app(request.query.get("access_token"))
        if app is None:
            return wire.legacy_error(*wire.LEGACY_BAD_TOKEN)
        media_type = request.query.get("type", "file")
        try:
            form = await request.post()
        except ValueError:
            return wire.legacy_error(40035, "不合法的参数: multipart body expected")
        media = form.get("media")
        if not isinstance(media, web.FileField):
            return wire.legacy_error(40035, "不合法的参数: missing media")
        content = media.file.read()
        problem = uploads.upload_problem(self.state, media_type, content)
        if problem is not None:
            return wire.legacy_error(*problem)
        media_id = "@lA" + base64.urlsafe_b64encode(secrets.token_bytes(18)).decode()
        self.state.uploads[media_id] = MediaBlob(app.client_id, content, media.content_type, media.filename)
        self.state.counters["uploads"] += 1
        return wire.json_response(
            {
                "errcode": 0,
                "errmsg": "ok",
                "type": media_type,
                "media_id": media_id,
                "created_at": self.state.wall_ms(),
            },
            new_api=False,
        )
