"""Outbound media in the fake: what ``/media/upload`` accepts, which sends may name a mediaId, and serving
uploaded media to the emulator's web chat.

The rules follow DingTalk's documentation of ``media/upload`` (protocol reference 8.4; sizes and formats as
the official page and connectors quote them): an image is a JPEG, PNG, GIF or BMP of at most 20 MB, a
voice at most 2 MB, a video or a file at most 20 MB (``Settings.upload_limit`` lowers the 20 MB for tests),
and none is empty. The error codes are DingTalk's global legacy codes for these cases (40004 media type,
40005 file type, 40006 file size, 40007 media id); that this API answers exactly them is inferred.

A mediaId is the uploading app's: a ``sampleImageMsg``, ``sampleFile`` or ``sampleAudio`` send, or a
markdown image ``![..](@mediaId)`` through a sessionWebhook, naming one that does not exist or belongs to
another app is refused (codes inferred).

``GET /_fake/media/<mediaId>`` serves an upload to the web chat: pictures as themselves, anything else as
an ``application/octet-stream`` download, with ``nosniff`` and a sandboxing CSP, so that an HTML "file" the
bot sends can never run as a page on the emulator's origin.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from edgecrab.testing.fakedingtalk.state import FakeState, MediaBlob

MEDIA_TYPES = ("image", "voice", "video", "file")
VOICE_LIMIT = 2 * 1024 * 1024
BAD_MEDIA_TYPE = (40004, "不合法的媒体文件类型")
BAD_FILE_TYPE = (40005, "不合法的文件类型")
BAD_FILE_SIZE = (40006, "不合法的文件大小")
BAD_MEDIA_ID = (40007, "不合法的媒体文件id")
_MARKDOWN_MEDIA = re.compile(r"!\[[^\]]*\]\((@[^)\s]+)\)")
_IMAGE_MAGIC = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
    b"BM": "image/bmp",
}


def image_type(content: bytes) -> str:
    """The MIME type of a JPEG, PNG, GIF or BMP picture, or ``""``."""
    return next((mime for magic, mime in _IMAGE_MAGIC.items() if content.startswith(magic)), "")


def upload_problem(state: FakeState, media_type: str, content: bytes) -> tuple[int, str] | None:
    """Why DingTalk would refuse this upload, as ``(errcode, errmsg)``; None when it takes it."""
    if media_type not in MEDIA_TYPES:
        code, text = BAD_MEDIA_TYPE
        return code, f"{text}: type must be one of {', '.join(MEDIA_TYPES)}"
    limit = VOICE_LIMIT if media_type == "voice" else state.settings.upload_limit
    if not content or len(content) > limit:
        code, text = BAD_FILE_SIZE
        return code, f"{text}: {len(content)} bytes; {media_type} takes 1 to {limit} bytes"
    if media_type == "image" and not image_type(content):
        code, text = BAD_FILE_TYPE
        return code, f"{text}: an image must be a jpg, png, gif or bmp"
    return None


def _owned(state: FakeState, app: str, media_id: str) -> bool:
    blob = state.uploads.get(media_id)
    return blob is not None and blob.app == app


def send_media_problem(state: FakeState, app: str, msg_key: str, param: dict[str, Any]) -> str | None:
    """Why an OpenAPI send naming a mediaId is refused; None when it names none or one of ``app``'s."""
    if msg_key == "sampleImageMsg":
        media_id = str(param.get("photoURL", ""))
        if not media_id.startswith("@"):
            return None  # a public picture URL
    elif msg_key in ("sampleFile", "sampleAudio"):
        media_id = str(param.get("mediaId", ""))
    else:
        return None
    if _owned(state, app, media_id):
        return None
    return f"mediaId {media_id!r} does not exist or was uploaded by another app"


def markdown_media_problem(state: FakeState, app: str, text: str) -> str | None:
    """Why a markdown message's ``@mediaId`` pictures are refused; None when all are ``app``'s."""
    for media_id in _MARKDOWN_MEDIA.findall(text):
        if not _owned(state, app, media_id):
            return f"{BAD_MEDIA_ID[1]}: {media_id!r} does not exist or was uploaded by another app"
    return None


def serve_upload(state: FakeState) -> Any:
    """The handler of ``GET /_fake/media/{media_id}``."""

    async def handler(request: web.Request) -> web.Response:
        blob: MediaBlob | None = state.uploads.get(request.match_info["media_id"])
        if blob is None:
            return web.Response(status=404, text="no such mediaId")
        mime = image_type(blob.content)
        disposition = "inline" if mime else f'attachment; filename="{_ascii(blob.file_name)}"'
        headers = {
            "Content-Disposition": disposition,
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Cache-Control": "no-store",
        }
        content_type = mime or "application/octet-stream"
        return web.Response(body=blob.content, content_type=content_type, headers=headers)

    return handler


def _ascii(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name) or "file"
