"""The media stage: a picture's render work (scale-down, base64) is done while it waits in the merge
window, so its turn only collects the result."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
import httpx
import pytest
from PIL import Image

import edgecrab.media.render as render
from edgecrab.config import AgentConfig, Config, DingTalkConfig, MediaConfig
from edgecrab.dingtalk.tokens import TokenCache
from edgecrab.events import Attachment, Conversation, Message, Sender
from edgecrab.media import MediaStage

API = "http://127.0.0.1:9000"
SECRET = "media-stage-test-app-secret-4f1c"
"""Registered for redaction by TokenCache for the whole test run: a word like ``secret`` would be starred
in other tests' text."""


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, "PNG")
    return out.getvalue()


def _dingtalk(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1.0/oauth2/accessToken":
        return httpx.Response(200, json={"accessToken": "t", "expireIn": 7200})
    if request.url.path == "/v1.0/robot/messageFiles/download":
        return httpx.Response(200, json={"downloadUrl": f"{API}/files/p"})
    if request.url.path == "/files/p":
        return httpx.Response(200, content=_png())
    return httpx.Response(404)


@pytest.mark.anyio
async def test_a_pictures_render_work_is_done_by_the_time_its_merge_window_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    real = render.vision_picture

    def counted(path: str, mime: str, max_pixels: int) -> tuple[str, str, str]:
        made = real(path, mime, max_pixels)
        order.append("prepared")
        return made

    monkeypatch.setattr(render, "vision_picture", counted)
    config = Config(
        DingTalkConfig("key", SECRET, robot_code="key", api_base=API),
        agent=AgentConfig(type="openai", vision=True),
        media=MediaConfig(merge_window_ms=500, directory=str(tmp_path)),
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(_dingtalk))
    released: list[Message] = []
    window_closed = anyio.Event()

    async def submit(message: Message, quiet: bool) -> None:
        order.append("released")
        released.append(message)
        window_closed.set()

    async def merged(message: Message, into: str) -> None:
        raise AssertionError("one picture merges with nothing")

    stage = MediaStage(
        config,
        TokenCache(client, API, "key", SECRET),
        submit=submit,
        key=lambda m: m.conversation.id,
        merged=merged,
        client=client,
    )
    picture = Message(
        id="m1",
        robot="default",
        conversation=Conversation("c", False),
        sender=Sender("u"),
        text="",
        msgtype="picture",
        attachments=(Attachment("picture", "code1"),),
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stage.run)
            await stage.submit(picture)
            await window_closed.wait()
            assert order == ["prepared", "released"]  # done during the window, not after it
            turn = await stage.user(released[0])
            tg.cancel_scope.cancel()
    assert order == ["prepared", "released"]  # the turn did not scale the picture again
    assert isinstance(turn.content, list)
    assert turn.content[-1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert '"url"' not in turn.stored  # the data URL is not kept in the history, the file's path is
