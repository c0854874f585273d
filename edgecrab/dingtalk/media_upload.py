"""Uploading a picture or a file to DingTalk for a ``mediaId`` (protocol reference 8.4).

``POST https://oapi.dingtalk.com/media/upload?access_token=<token>&type=image|file``, multipart with the
bytes in the ``media`` field, answers ``{"errcode": 0, "media_id": "@lA…"}``; the legacy host takes the
same access token as the new API. The ``mediaId`` then goes into a ``sampleImageMsg`` (``photoURL``), a
``sampleFile`` or a markdown image (:mod:`edgecrab.dingtalk.attachsend`). DingTalk documents 20 MB for
images (JPEG, PNG, GIF, BMP) and files; the gateway checks that before it gets here
(:mod:`edgecrab.replies.attachments`).

An upload is an OpenAPI call like a send: it waits for the robot's rate limiter, renews a rejected token
once and retries transient failures (:meth:`DingTalkSender._retrying
<edgecrab.dingtalk.rest.DingTalkSender._retrying>`), and counts toward the monthly quota.
"""

from __future__ import annotations

import json

import anyio
import httpx

from edgecrab.dingtalk.rest import DingTalkSender
from edgecrab.dingtalk.robotapi import SendResult
from edgecrab.dingtalk.tokens import DingTalkError, error_from_response, transport_error
from edgecrab.events import ReplyRoute

UPLOAD_PATH = "/media/upload"
UPLOAD_TIMEOUT_S = 60.0
"""One upload of up to 20 MB: longer than a send may take."""
NEW_API_HOST = "api.dingtalk.com"
LEGACY_API_HOST = "oapi.dingtalk.com"


def upload_url(api_base: str) -> str:
    """Where uploads go: DingTalk's legacy host beside ``api.dingtalk.com``; any other ``api_base`` (a proxy
    or the loopback fake) is asked for both APIs."""
    base = httpx.URL(api_base.rstrip("/"))
    if base.host == NEW_API_HOST:
        base = base.copy_with(host=LEGACY_API_HOST)
    return str(base).rstrip("/") + UPLOAD_PATH


def upload_result(response: httpx.Response) -> str:
    """The ``media_id`` of a successful upload, or :class:`DingTalkError`."""
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    if response.is_success and isinstance(data, dict) and str(data.get("errcode", "0")) == "0":
        media_id = data.get("media_id")
        if isinstance(media_id, str) and media_id:
            return media_id
        raise DingTalkError("media/upload: answer without a media_id", status=200, code="bad_response")
    raise error_from_response(response, "media/upload")


async def upload_media(
    sender: DingTalkSender, route: ReplyRoute, data: bytes, *, name: str, kind: str, mime: str
) -> tuple[SendResult, str]:
    """Upload ``data`` as ``kind`` (``image`` or ``file``) named ``name``: ``(result, media_id)``, the
    media id empty when ``result`` is a failure."""
    url = upload_url(sender._api_base)
    limiter = sender.limiter(UPLOAD_PATH)
    media_id = ""

    async def attempt() -> SendResult:
        nonlocal media_id
        token = await sender.tokens.get()
        await limiter.acquire()
        try:
            with anyio.fail_after(UPLOAD_TIMEOUT_S):
                response = await sender._client.post(
                    url,
                    params={"access_token": token, "type": kind},
                    files={"media": (name, data, mime)},
                    timeout=UPLOAD_TIMEOUT_S,
                    follow_redirects=False,
                )
        except (TimeoutError, httpx.RequestError) as exc:
            raise transport_error(exc, "media/upload") from None
        try:
            media_id = upload_result(response)
        except DingTalkError as err:
            if err.needs_new_token:
                sender.tokens.invalidate(token)
            raise
        return SendResult(True, "upload", False, "", "", response.headers.get("x-acs-request-id", ""))

    result = await sender._retrying("upload", route, attempt)
    return result, media_id if result.ok else ""
