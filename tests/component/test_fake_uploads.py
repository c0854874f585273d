"""The fake DingTalk's outbound media rules over loopback (``/media/upload``, sends naming a mediaId) and
``/_fake/media/<id>``, which serves uploads to the emulator's web chat."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from edgecrab.testing.fakedingtalk import FakeApp, FakeDingTalk
from tests.component.fakeclient import TOKEN, token

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture
async def fake() -> AsyncIterator[FakeDingTalk]:
    async with FakeDingTalk(apps=[FakeApp("key_a", "sec_a"), FakeApp("key_b", "sec_b")]) as f:
        yield f


@pytest.fixture
async def http(fake: FakeDingTalk) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=5) as client:
        yield client


async def upload(http: httpx.AsyncClient, tok: str, kind: str, name: str, data: bytes) -> dict[str, object]:
    response = await http.post(
        "/media/upload", params={"access_token": tok, "type": kind}, files={"media": (name, data, "x/y")}
    )
    assert response.status_code == 200  # the legacy API answers errors with HTTP 200
    return dict(response.json())


async def test_upload_rules(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    tok = await token(http, "key_a", "sec_a")
    assert (await upload(http, "wrong", "file", "a.pdf", b"data"))["errcode"] == 40014
    assert (await upload(http, tok, "sticker", "a.png", PNG))["errcode"] == 40004
    assert (await upload(http, tok, "image", "a.txt", b"not a picture"))["errcode"] == 40005
    assert (await upload(http, tok, "file", "empty.txt", b""))["errcode"] == 40006
    assert (await upload(http, tok, "voice", "v.amr", b"x" * (2 * 1024 * 1024 + 1)))["errcode"] == 40006
    fake.state.settings.upload_limit = 8
    assert (await upload(http, tok, "file", "big.pdf", b"123456789"))["errcode"] == 40006
    assert not fake.state.uploads
    fake.state.settings.upload_limit = 1 << 20
    ok = await upload(http, tok, "file", "ok.pdf", b"12345678")
    assert ok["errcode"] == 0 and fake.state.uploads[str(ok["media_id"])].app == "key_a"


async def test_a_media_id_is_the_uploading_apps(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    tok_a, tok_b = await token(http, "key_a", "sec_a"), await token(http, "key_b", "sec_b")
    media_id = str((await upload(http, tok_a, "image", "a.png", PNG))["media_id"])

    async def send(tok: str, robot: str, key: str, param: dict[str, str]) -> httpx.Response:
        body = {"robotCode": robot, "userIds": ["user1001"], "msgKey": key, "msgParam": json.dumps(param)}
        return await http.post("/v1.0/robot/oToMessages/batchSend", json=body, headers={TOKEN: tok})

    assert (await send(tok_a, "key_a", "sampleImageMsg", {"photoURL": media_id})).status_code == 200
    other = await send(tok_b, "key_b", "sampleImageMsg", {"photoURL": media_id})
    assert other.status_code == 400 and other.json()["code"] == "InvalidParameter.mediaId"
    missing = {"mediaId": "@nothing", "fileName": "a.pdf", "fileType": "pdf"}
    assert (await send(tok_a, "key_a", "sampleFile", missing)).status_code == 400
    public = await send(tok_b, "key_b", "sampleImageMsg", {"photoURL": "https://example.com/a.png"})
    assert public.status_code == 200  # a public picture URL needs no upload
    # A markdown image of a mediaId through a sessionWebhook: the session's app must own it.
    for app, errcode in (("key_a", 0), ("key_b", 40035)):
        webhook = fake.dm("user1001", "hi", app=app)["sessionWebhook"]
        markdown = {"msgtype": "markdown", "markdown": {"title": "p", "text": f"![p]({media_id})"}}
        answer = await http.post(webhook, json=markdown)
        assert answer.json()["errcode"] == errcode


async def test_uploads_are_served_to_the_web_chat_safely(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    tok = await token(http, "key_a", "sec_a")
    picture = str((await upload(http, tok, "image", "a.png", PNG))["media_id"])
    page = str((await upload(http, tok, "file", "evil.html", b"<script>alert(1)</script>"))["media_id"])
    shown = await http.get(f"/_fake/media/{picture}")
    assert shown.content == PNG and shown.headers["content-type"] == "image/png"
    assert shown.headers["content-disposition"] == "inline"
    download = await http.get(f"/_fake/media/{page}")
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"] == 'attachment; filename="evil.html"'
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-security-policy"].startswith("sandbox")
    assert (await http.get("/_fake/media/@nothing")).status_code == 404
