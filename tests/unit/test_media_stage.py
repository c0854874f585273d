"""The media stage: a picture's render work (scale-down, base64) is done while it waits in the merge
window, so its turn only collects the result."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
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

    stage = _stage(config, client, submit, merged)
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


def _stage(
    config: Config,
    client: httpx.AsyncClient,
    submit: Callable[[Message, bool], Awaitable[None]],
    merged: Callable[[Message, str], Awaitable[None]],
) -> MediaStage:
    """The stage of ``config``'s robot, downloading through ``client``, keyed by conversation."""
    tokens = TokenCache(client, API, "key", SECRET)
    return MediaStage(
        config, tokens, submit=submit, key=lambda m: m.conversation.id, merged=merged, client=client
    )


def _picture(msg_id: str, sender: str, code: str) -> Message:
    return Message(
        id=msg_id,
        robot="default",
        conversation=Conversation("c", False),
        sender=Sender(sender),
        text="",
        msgtype="picture",
        attachments=(Attachment("picture", code),),
    )


@pytest.mark.anyio
async def test_the_merge_window_is_per_sender_and_another_kind_of_message_ends_it(tmp_path: Path) -> None:
    """One sender's pictures are one turn, another sender's are not part of it, and a text from the first
    sender ends the wait so the pictures are answered before it, in the order they were sent."""
    config = Config(
        DingTalkConfig("key", SECRET, robot_code="key", api_base=API),
        agent=AgentConfig(type="openai", vision=True),
        media=MediaConfig(merge_window_ms=600_000, directory=str(tmp_path)),  # only a message ends it
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(_dingtalk))
    released: list[tuple[str, tuple[str, ...]]] = []
    merged: list[tuple[str, str]] = []
    two = anyio.Event()

    async def submit(message: Message, quiet: bool) -> None:
        released.append((message.id, tuple(a.download_code for a in message.attachments)))
        if len(released) == 2:
            two.set()

    async def on_merged(message: Message, into: str) -> None:
        merged.append((message.id, into))

    stage = _stage(config, client, submit, on_merged)
    text = Message(id="t1", robot="default", conversation=Conversation("c", False), sender=Sender("u"),
                   text="what are these?")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stage.run)
            await stage.submit(_picture("p1", "u", "c1"))
            await stage.submit(_picture("q1", "someone-else", "c9"))
            await stage.submit(_picture("p2", "u", "c2"))
            assert released == [] and stage.waiting == 3
            await stage.submit(text)
            await two.wait()
            assert released == [("p1", ("c1", "c2")), ("t1", ())]
            assert merged == [("p2", "p1")] and stage.waiting == 1  # someone else's picture still waits
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_merge_window_of_0_hands_each_picture_on_at_once(tmp_path: Path) -> None:
    config = Config(
        DingTalkConfig("key", SECRET, robot_code="key", api_base=API),
        media=MediaConfig(merge_window_ms=0, directory=str(tmp_path)),
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(_dingtalk))
    released: list[str] = []

    async def submit(message: Message, quiet: bool) -> None:
        released.append(message.id)

    async def on_merged(message: Message, into: str) -> None:
        raise AssertionError("nothing is merged with the window off")

    stage = _stage(config, client, submit, on_merged)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(stage.run)
            await stage.submit(_picture("p1", "u", "c1"))
            await stage.submit(_picture("p2", "u", "c2"))
            assert released == ["p1", "p2"] and stage.waiting == 0
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_turn_downloads_at_most_max_files_and_notes_the_rest(tmp_path: Path) -> None:
    downloads: list[str] = []

    def dingtalk(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1.0/robot/messageFiles/download":
            downloads.append(request.content.decode())
        return _dingtalk(request)

    config = Config(
        DingTalkConfig("key", SECRET, robot_code="key", api_base=API),
        agent=AgentConfig(type="openai", vision=True),
        media=MediaConfig(merge_window_ms=0, max_files=2, directory=str(tmp_path)),
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(dingtalk))

    async def submit(message: Message, quiet: bool) -> None:
        pass

    async def merged(message: Message, into: str) -> None:
        pass

    stage = _stage(config, client, submit, merged)
    rich = Message(
        id="m1", robot="default", conversation=Conversation("c", False), sender=Sender("u"), text="look",
        msgtype="richText", attachments=tuple(Attachment("picture", f"code{i}") for i in range(3)),
    )
    with anyio.fail_after(10):
        turn = await stage.user(rich)
    assert len(downloads) == 2 and not any("code2" in d for d in downloads)
    assert isinstance(turn.content, list)
    assert sum(part["type"] == "image_url" for part in turn.content) == 2
    text = " ".join(part.get("text", "") for part in turn.content)
    assert "not downloaded: a turn takes at most 2 files" in text
