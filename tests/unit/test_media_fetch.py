"""One download (``edgecrab.media.fetch``) against a scripted DingTalk (``httpx.MockTransport``): what the GET
carries, the size cap on a body with no declared length, an URL that stays expired, a refused download code,
redirects, and a media directory that cannot take the file. Every failure is a note for the agent, never an
exception, and never carries the token or the signed URL."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from edgecrab.config import Config, DingTalkConfig, MediaConfig
from edgecrab.dingtalk.tokens import TokenCache
from edgecrab.errors import StartupError
from edgecrab.events import Attachment
from edgecrab.media import MediaStage
from edgecrab.media.fetch import MediaFetcher
from edgecrab.media.files import MediaFiles

pytestmark = pytest.mark.anyio

API = "http://127.0.0.1:9000"
SECRET = "media-fetch-test-app-secret-8d2e"
"""Registered for redaction by TokenCache for the whole test run: no other test's text contains it."""
TOKEN = "media-fetch-token-5b7c"
SIGNED = f"{API}/files/k?Expires=1&Signature=sig-3f9a"
Handler = Callable[[httpx.Request], httpx.Response]


class Script:
    """DingTalk's token and ``messageFiles/download``, then ``files`` answering the GETs; keeps every
    request."""

    def __init__(self, files: Handler, *, exchange: httpx.Response | None = None) -> None:
        self.files, self.exchange = files, exchange
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v1.0/oauth2/accessToken":
            return httpx.Response(200, json={"accessToken": TOKEN, "expireIn": 7200})
        if request.url.path == "/v1.0/robot/messageFiles/download":
            return self.exchange or httpx.Response(200, json={"downloadUrl": SIGNED})
        return self.files(request)

    def gets(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET"]


def fetcher(tmp_path: Path, script: Script, **media: object) -> MediaFetcher:
    client = httpx.AsyncClient(transport=httpx.MockTransport(script))
    files = MediaFiles(str(tmp_path / "media"), keep_hours=1)
    config = MediaConfig(**media)  # type: ignore[arg-type]
    return MediaFetcher(config, API, TokenCache(client, API, "key", SECRET), client, files)


async def fetch(f: MediaFetcher, name: str = "a.txt") -> Attachment:
    with anyio.fail_after(10):
        return await f.fetch(Attachment("file", "code-1", name), "robot-1")


def no_secrets(att: Attachment) -> None:
    for secret in (TOKEN, SECRET, "sig-3f9a"):
        assert secret not in att.note


async def test_the_get_carries_no_content_type_and_no_token(tmp_path: Path) -> None:
    script = Script(lambda r: httpx.Response(200, content=b"hello\n"))
    att = await fetch(fetcher(tmp_path, script))
    assert (att.note, att.size, att.mime) == ("", 6, "text/plain")
    (get,) = script.gets()
    assert "content-type" not in get.headers and TOKEN not in str(get.headers)
    exchange = next(r for r in script.requests if r.url.path.endswith("/download"))
    assert exchange.headers["x-acs-dingtalk-access-token"] == TOKEN
    assert b'"robotCode":"robot-1"' in exchange.content.replace(b" ", b"")


def _endless(request: httpx.Request) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 1000

    return httpx.Response(200, content=body())  # chunked: no Content-Length to check first


async def test_a_body_without_a_length_is_stopped_at_max_bytes(tmp_path: Path) -> None:
    att = await fetch(fetcher(tmp_path, Script(_endless), max_bytes=5000))
    assert att.path == "" and att.note == "the file is larger than media.max_bytes (4 KB)"
    assert list((tmp_path / "media").iterdir()) == []  # the part written is deleted


async def test_an_url_expired_twice_is_a_note_after_one_new_exchange(tmp_path: Path) -> None:
    expired = Script(lambda r: httpx.Response(403, text="<Code>AccessDenied</Code>"))
    f = fetcher(tmp_path, expired)
    att = await fetch(f)
    assert att.note == "the download link DingTalk gave was refused twice (expired)"
    assert len(expired.gets()) == 2 and f.stats.reexchanged == 1
    no_secrets(att)


async def test_a_refused_download_code_names_the_permission(tmp_path: Path) -> None:
    refused = httpx.Response(
        403, json={"code": "Forbidden.AccessDenied", "message": "no permission", "requestid": "r-1"}
    )
    script = Script(lambda r: httpx.Response(200), exchange=refused)
    att = await fetch(fetcher(tmp_path, script))
    assert att.note == (
        "DingTalk refused the download code (Forbidden.AccessDenied: no permission); "
        "grant the app the qyapi_robot_sendmsg permission"
    )
    assert script.gets() == []
    no_secrets(att)


async def test_a_redirect_off_the_allowed_hosts_is_never_followed(tmp_path: Path) -> None:
    def redirect(request: httpx.Request) -> httpx.Response:
        if request.url.host == "127.0.0.1" and request.url.path == "/files/k":
            return httpx.Response(302, headers={"Location": "/files/moved"})  # same host: followed
        if request.url.path == "/files/moved":
            return httpx.Response(302, headers={"Location": "http://127.0.0.1:9001/canary"})
        return httpx.Response(200, content=b"must not be fetched")

    script = Script(redirect)
    att = await fetch(fetcher(tmp_path, script))
    assert att.note.startswith("the download link was not followed: host 127.0.0.1:9001 is not a DingTalk")
    assert [r.url.path for r in script.gets()] == ["/files/k", "/files/moved"]


async def test_a_redirect_loop_ends_in_a_note(tmp_path: Path) -> None:
    script = Script(lambda r: httpx.Response(302, headers={"Location": "/files/again"}))
    att = await fetch(fetcher(tmp_path, script))
    assert att.note == "the download was redirected more than 3 times" and len(script.gets()) == 4


@pytest.mark.parametrize("where", ["create", "write"])
async def test_a_full_disk_is_a_note_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "create":
        monkeypatch.setattr(MediaFiles, "create", full)
    else:
        monkeypatch.setattr(os, "write", full)
    att = await fetch(fetcher(tmp_path, Script(lambda r: httpx.Response(200, content=b"hello"))))
    assert att.path == ""
    assert att.note == "the file could not be saved on the gateway (No space left on device)"


async def test_a_media_directory_that_cannot_be_made_stops_the_start_with_its_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = Config(
        DingTalkConfig("key", SECRET, robot_code="key", api_base=API),
        media=MediaConfig(directory=str(blocker / "media")),
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(Script(lambda r: httpx.Response(404))))

    async def never(*args: object) -> None:
        raise AssertionError("nothing is submitted")

    stage = MediaStage(
        config, TokenCache(client, API, "key", SECRET), submit=never, key=lambda m: "", merged=never,
        client=client,
    )
    with pytest.raises(StartupError) as caught, anyio.fail_after(10):
        await stage.run()
    assert caught.value.exit_code == 2
    expected = f"media.directory {blocker / 'media'} cannot be used (Not a directory)"
    assert str(caught.value).startswith(expected)


async def test_a_download_that_hangs_ends_at_timeout_s(tmp_path: Path) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            await anyio.sleep_forever()
        return Script(lambda r: httpx.Response(404))(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(hang))
    files = MediaFiles(str(tmp_path / "media"), keep_hours=1)
    f = MediaFetcher(MediaConfig(timeout_s=0.2), API, TokenCache(client, API, "key", SECRET), client, files)
    att = await fetch(f)
    assert att.note == "the download took longer than 0.2 s" and f.stats.failed == 1
