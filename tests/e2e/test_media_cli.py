"""Inbound media end to end (issue 18): ``edgecrab gateway start`` as a subprocess, the fake DingTalk
serving the files through expiring, signed download URLs, the fake OpenAI server recording what the model
saw (:func:`edgecrab.testing.fake_openai.content_parts`)."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from edgecrab.testing.fake_openai import FakeOpenAI
from edgecrab.testing.fakedingtalk import FakeDingTalk
from edgecrab.testing.gatewayconfig import write_gateway_config
from tests.e2e.test_gateway_cli import start_gateway, stop_gateway
from tests.mediafiles import pdf

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def png(width: int = 64, height: int = 48, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def config(tmp: Path, fake: FakeDingTalk, llm: FakeOpenAI, *, vision: bool, **media: Any) -> Path:
    return write_gateway_config(
        tmp / "edgecrab.yaml",
        api_base=fake.base_url,
        llm_base_url=llm.base_url,
        dingtalk={"chunk_interval_ms": 20, "allowed_users": "*"},
        agent={"timeout_s": 20, "vision": vision},
        media={"merge_window_ms": 0, **media},
    )


async def answered(fake: FakeDingTalk, llm: FakeOpenAI, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Push ``data``; once the bot answered it, what the model saw of that message."""
    cid, before = data["conversationId"], len(llm.user_parts)
    replies = len(fake.messages_for(cid))
    await fake.push(data)
    await fake.wait_for(lambda: len(fake.messages_for(cid)) > replies, 15)
    assert len(llm.user_parts) == before + 1
    return llm.user_parts[-1]


@pytest.fixture
async def stack(tmp_path: Path) -> Any:
    async with FakeDingTalk() as fake, FakeOpenAI(api_key="sk-test-llm-key-123") as llm:
        yield fake, llm, tmp_path


async def test_every_inbound_type_reaches_a_vision_model(stack: Any) -> None:
    fake, llm, tmp = stack
    gw = await start_gateway(fake, config(tmp, fake, llm, vision=True))
    try:
        user = fake.users[0]
        seen = await answered(fake, llm, fake.picture(user, content=png()))
        assert seen == [{"type": "image", "mime": "image/png", "bytes": len(png())}]
        assert "I see 1 picture" in fake.messages_for(fake.picture(user)["conversationId"])[-1].text

        seen = await answered(
            fake, llm, fake.rich_text(user, ["look at this", png(color="blue"), "and this"])
        )
        assert [p["type"] for p in seen] == ["text", "image", "text"]
        assert seen[0]["text"] == "look at this" and seen[2]["text"] == "and this"

        seen = await answered(fake, llm, fake.audio(user, "明天开会吗", duration=4000))
        assert (
            seen[0]["type"] == "text"
            and "[voice message, 4 s; DingTalk's transcript is the text]" in seen[0]["text"]
            and "明天开会吗" in seen[0]["text"]
        )

        seen = await answered(fake, llm, fake.video(user))
        assert "[video: video.mp4 (video/mp4, 2 KB)]" in seen[0]["text"]

        notes = b"# Plan\n\n- ship media\n"
        seen = await answered(fake, llm, fake.file(user, "plan.md", content=notes))
        assert (
            f"[file: plan.md (text/markdown, {len(notes)} bytes)]" in seen[0]["text"]
            and "- ship media" in seen[0]["text"]
        )

        report = pdf("Quarterly revenue 42 million")
        seen = await answered(fake, llm, fake.file(user, "report.pdf", content=report))
        assert seen[0]["text"] == (
            f"[file: report.pdf (application/pdf, {len(report)} bytes)]\n"
            "```\nQuarterly revenue 42 million\n```"
        )

        zip_seen = await answered(fake, llm, fake.file(user, "archive.zip"))
        assert "[file: archive.zip (application/zip, 2 KB)]" in zip_seen[0]["text"]

        quoted = fake.quoted(user, "what is this?", conversation_id=None, quoted_msgtype="picture")
        code = fake.register_media(None, png(color="green"), content_type="image/png")
        quoted["text"]["repliedMsg"]["content"] = {"downloadCode": code}
        seen = await answered(fake, llm, quoted)
        assert [p["type"] for p in seen] == ["text", "image", "text"] and seen[-1]["text"] == "what is this?"

        # An expired download URL is exchanged once more; nothing else changes for the user.
        urls = fake.state.counters["download_urls"]
        fake.settings.expire_downloads = 1
        seen = await answered(fake, llm, fake.picture(user, content=png(color="white")))
        assert seen[0]["type"] == "image"
        assert fake.state.counters["download_urls"] == urls + 2 and fake.state.counters["files_refused"] >= 1

        # The history keeps what the model saw, without downloading again.
        urls = fake.state.counters["download_urls"]
        await answered(fake, llm, fake.dm(user, "and now?"))
        history = llm.requests[-1]["messages"]
        assert sum(isinstance(m["content"], list) for m in history if m["role"] == "user") == 4
        assert fake.state.counters["download_urls"] == urls

        media = tmp / "media"
        assert stat.S_IMODE(media.stat().st_mode) == 0o700
        files = list(media.iterdir())
        assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    finally:
        code, _ = await stop_gateway(gw)
    assert code == 0, gw.log


async def canary() -> tuple[web.AppRunner, list[str], str]:
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=png())

    runner, url = await on_loopback("*", record)
    return runner, hits, url


async def on_loopback(method: str, handler: Any) -> tuple[web.AppRunner, str]:
    """An aiohttp server on 127.0.0.1 and a free port answering every path with ``handler``: its runner
    (to clean up) and base URL."""
    app = web.Application()
    app.router.add_route(method, "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_without_vision_a_note_and_the_limits_hold(stack: Any) -> None:
    fake, llm, tmp = stack
    gw = await start_gateway(fake, config(tmp, fake, llm, vision=False, max_bytes=4096))
    runner, hits, canary_url = await canary()
    try:
        user = fake.users[0]
        seen = await answered(fake, llm, fake.picture(user, content=png()))
        assert seen == [
            {"type": "text", "text": "[picture: the user sent a picture; this agent cannot see pictures]"}
        ]
        assert isinstance(llm.requests[-1]["messages"][-1]["content"], str)

        seen = await answered(fake, llm, fake.file(user, "big.bin", content=b"\x01" * 10_000))
        assert "could not be downloaded" in seen[0]["text"] and "media.max_bytes (4 KB)" in seen[0]["text"]

        # A download URL on a host outside the allow-list is never contacted.
        fake.settings.download_base = canary_url
        seen = await answered(fake, llm, fake.file(user, "notes.txt", content=b"hello"))
        assert "not a DingTalk download host" in seen[0]["text"]
        assert hits == []
    finally:
        await runner.cleanup()
        code, _ = await stop_gateway(gw)
    assert code == 0, gw.log


async def relay(fake: FakeDingTalk, canary_url: str) -> tuple[web.AppRunner, dict[str, Any], str]:
    """A download host on loopback (allowed by ``media.allowed_hosts``) that redirects: ``hold`` waits for
    ``release`` and then sends the GET on to the fake's own URL (api_base: allowed), ``off`` to the canary."""
    state: dict[str, Any] = {"mode": "hold", "hits": [], "release": asyncio.Event()}

    async def handle(request: web.Request) -> web.Response:
        state["hits"].append(request.path)
        if state["mode"] == "hold":
            await state["release"].wait()
            raise web.HTTPFound(fake.base_url + request.path_qs)
        raise web.HTTPFound(canary_url + request.path_qs)

    runner, url = await on_loopback("GET", handle)
    return runner, state, url


async def test_downloads_run_after_the_ack_and_redirects_stay_on_allowed_hosts(stack: Any) -> None:
    fake, llm, tmp = stack
    canary_runner, hits, canary_url = await canary()
    relay_runner, state, relay_url = await relay(fake, canary_url)
    allowed = [relay_url.removeprefix("http://")]
    gw = await start_gateway(fake, config(tmp, fake, llm, vision=True, allowed_hosts=allowed))
    try:
        fake.settings.download_base = relay_url
        user = fake.users[0]
        picture = fake.picture(user, content=png(color="purple"))
        cid = picture["conversationId"]
        message_id = await fake.push(picture)
        # Acked while its download is held at the relay: the download is not on the ack path.
        await fake.wait_for_ack(message_id, timeout=15)
        await fake.wait_for(lambda: state["hits"], 15)
        assert fake.messages_for(cid) == [] and llm.user_parts == []
        state["release"].set()
        await fake.wait_for(lambda: len(fake.messages_for(cid)) == 1, 15)
        purple = len(png(color="purple"))
        assert llm.user_parts[-1] == [{"type": "image", "mime": "image/png", "bytes": purple}]

        state["mode"] = "off"  # the allowed relay now redirects to a host that is not allowed
        seen = await answered(fake, llm, fake.file(user, "notes.txt", content=b"hello"))
        assert "not a DingTalk download host" in seen[0]["text"]
        assert len(state["hits"]) == 2 and hits == []
    finally:
        await relay_runner.cleanup()
        await canary_runner.cleanup()
        code, _ = await stop_gateway(gw)
    assert code == 0, gw.log
    log = gw.log
    assert "[media] picture" in log
    assert "[media] file not downloaded: the download link was not followed" in log
    for secret in ("Signature=", fake.apps[0].client_secret, *fake.state.tokens):  # signed URLs, secrets
        assert secret not in log, secret


async def test_pictures_sent_one_after_the_other_are_one_turn(stack: Any) -> None:
    fake, llm, tmp = stack
    gw = await start_gateway(fake, config(tmp, fake, llm, vision=True, merge_window_ms=1500))
    try:
        user = fake.users[0]
        first = fake.picture(user, content=png(color="red"))
        cid = first["conversationId"]
        for data in (first, fake.picture(user, content=png(color="blue")), fake.picture(user, content=png())):
            await fake.push(data)
        await fake.wait_for(lambda: len(fake.messages_for(cid)) >= 1, 15)
        assert len(llm.user_parts) == 1
        assert [p["type"] for p in llm.user_parts[0]] == ["image", "image", "image"]
        assert "I see 3 pictures" in fake.messages_for(cid)[0].text
    finally:
        code, _ = await stop_gateway(gw)
    assert code == 0, gw.log
    assert len(fake.messages_for(cid)) == 1, gw.log


AGENT = """
import json, os, sys
request = json.load(sys.stdin)
for a in request["attachments"]:
    print(a["kind"], a["name"], a["mime"], a["size"], os.path.getsize(a["path"]))
print(request["messages"][-1]["content"])
"""


async def test_a_command_agent_gets_the_files(stack: Any) -> None:
    fake, llm, tmp = stack
    (tmp / "agent.py").write_text(AGENT, encoding="utf-8")
    path = config(tmp, fake, llm, vision=True)
    data = __import__("yaml").safe_load(path.read_text("utf-8"))
    data["agent"] = {"type": "command", "command": [sys.executable, str(tmp / "agent.py")], "timeout_s": 20}
    path.write_text(json.dumps(data), encoding="utf-8")
    gw = await start_gateway(fake, path)
    try:
        user = fake.users[0]
        picture = fake.picture(user, content=png())
        await fake.push(picture)
        cid = picture["conversationId"]
        await fake.wait_for(lambda: len(fake.messages_for(cid)) >= 1, 15)
        reply = fake.messages_for(cid)[0].text
        size = len(png())
        assert f"picture picture image/png {size} {size}" in reply
        assert "[picture: picture (image/png" in reply
        await fake.push(fake.audio(user, "你好", content=b"#!AMR\n" + b"\x00" * 100))
        await fake.wait_for(lambda: len(fake.messages_for(cid)) >= 2, 15)
        assert "audio voice.amr audio/amr 106 106" in fake.messages_for(cid)[1].text
    finally:
        code, _ = await stop_gateway(gw)
    assert code == 0, gw.log
