"""Inbound media units: the download allow-list, MIME sniffing, file names, the cleanup, the rendering."""

from __future__ import annotations

import io
import os
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from edgecrab.config import MediaConfig
from edgecrab.events import Attachment, Conversation, Message, Part, Sender
from edgecrab.media.files import MediaFiles, sniff
from edgecrab.media.guard import DownloadGuard
from edgecrab.media.images import prepare_image
from edgecrab.media.render import STORED_PREFIX, Renderer

GUARD = DownloadGuard("http://127.0.0.1:9000", ["files.example.com", "10.0.0.5:8443"])


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://down.dingtalk.com/x?sig=1", True),
        ("https://bucket.oss-cn-hangzhou.aliyuncs.com/a.png", True),
        ("http://127.0.0.1:9000/files/k", True),  # api_base
        ("https://files.example.com/a", True),
        ("https://10.0.0.5:8443/a", True),
        ("http://127.0.0.1:9001/files/k", False),  # another port on loopback: the canary
        ("http://down.dingtalk.com/x", False),  # plain http off loopback
        ("https://dingtalk.com.evil.net/x", False),
        ("https://evildingtalk.com/x", False),
        ("https://down.dingtalk.com:8443/x", False),
        ("https://169.254.169.254/latest", False),
        ("file:///etc/passwd", False),
        ("not a url at all", False),
    ],
)
def test_download_guard(url: str, allowed: bool) -> None:
    assert (GUARD.refusal(url) == "") is allowed


def test_sniff_reads_bytes_not_names() -> None:
    assert sniff(b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "notes.txt") == "image/png"
    assert sniff(b"# title\n", "notes.md") == "text/markdown"
    assert sniff(b'{"a": 1}', "x.json") == "application/json"
    assert sniff(b"print(1)\n", "x.py").startswith("text/")
    assert sniff(b"\x00\x01\x02binary", "x.txt") == "application/octet-stream"


def test_files_are_private_and_names_cannot_escape(tmp_path: Path) -> None:
    files = MediaFiles(str(tmp_path / "media"), keep_hours=1)
    path, fd = files.create("../../etc/passwd")
    os.close(fd)
    assert path.parent == tmp_path / "media" and "/" not in path.name[13:]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    old = time.time() - 7200
    os.utime(path, (old, old))
    fresh, fd = files.create("new.txt")
    os.close(fd)
    assert files.cleanup() == 1
    assert not path.exists() and fresh.exists()


def test_large_pictures_are_scaled_down(tmp_path: Path) -> None:
    big = tmp_path / "big.bmp"
    Image.new("RGB", (3000, 2000), "blue").save(big, "BMP")
    path, mime = prepare_image(str(big), "image/bmp", 1_000_000)
    assert mime == "image/jpeg" and path.endswith(".vision.jpg")
    with Image.open(path) as image:
        assert image.size[0] * image.size[1] <= 1_000_000
    photo = tmp_path / "photo.jpg"  # decoded at a smaller scale: between a quarter of the limit and all of it
    Image.new("RGB", (4032, 3024), "green").save(photo, "JPEG")
    path, mime = prepare_image(str(photo), "image/jpeg", 4_000_000)
    with Image.open(path) as image:
        assert mime == "image/jpeg" and 1_000_000 <= image.size[0] * image.size[1] <= 4_000_000
    small = tmp_path / "small.png"
    Image.new("RGB", (10, 10)).save(small, "PNG")
    assert prepare_image(str(small), "image/png", 1_000_000) == (str(small), "image/png")


def _message(tmp_path: Path) -> Message:
    picture = tmp_path / "p.png"
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, "PNG")
    picture.write_bytes(out.getvalue())
    att = Attachment(
        "picture", "code1", "p.png", path=str(picture), mime="image/png", size=len(out.getvalue())
    )
    return Message(
        id="m1",
        robot="r",
        conversation=Conversation("c", False),
        sender=Sender("u"),
        text="before\nafter",
        msgtype="richText",
        attachments=(att,),
        parts=(Part("text", "before"), Part("picture", download_code="code1"), Part("text", "after")),
    )


@pytest.mark.anyio
async def test_rich_text_keeps_its_order_and_the_history_needs_no_download(tmp_path: Path) -> None:
    renderer = Renderer(MediaConfig(), vision=True, parts=True)
    rendered = await renderer.render(_message(tmp_path))
    assert isinstance(rendered.content, list)
    assert [p["type"] for p in rendered.content] == ["text", "image_url", "text"]
    assert rendered.content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert rendered.stored.startswith(STORED_PREFIX)
    assert await renderer.stored_content(rendered.stored) == rendered.content
    (tmp_path / "p.png").unlink()  # deleted after keep_hours: a note takes its place
    later = await renderer.stored_content(rendered.stored)
    assert isinstance(later, list) and "no longer kept" in later[1]["text"]


@pytest.mark.anyio
async def test_without_vision_the_content_stays_a_string(tmp_path: Path) -> None:
    rendered = await Renderer(MediaConfig(), vision=False, parts=True).render(_message(tmp_path))
    assert (
        rendered.content
        == "before\n\n[picture: the user sent a picture; this agent cannot see pictures]\n\nafter"
    )
    assert rendered.stored == rendered.content
    text = await Renderer(MediaConfig(), vision=True, parts=False).render(_message(tmp_path))
    assert isinstance(text.content, str) and "[picture: p.png (image/png" in text.content
    assert text.attachments[0]["path"].endswith("p.png")


def _file(tmp_path: Path, name: str, data: bytes, kind: str = "file") -> Attachment:
    path = tmp_path / name
    path.write_bytes(data)
    return Attachment(kind, f"code-{name}", name, path=str(path), mime=sniff(data, name), size=len(data))


def _with(*attachments: Attachment, text: str = "") -> Message:
    return Message(
        id="m2",
        robot="r",
        conversation=Conversation("c", False),
        sender=Sender("u"),
        text=text,
        msgtype="file",
        attachments=attachments,
    )


@pytest.mark.anyio
async def test_files_are_inlined_up_to_inline_text_bytes_with_their_name(tmp_path: Path) -> None:
    from tests.mediafiles import pdf

    report = _file(tmp_path, "report.pdf", pdf("Quarterly revenue 42 million", "Costs went down"))
    long = _file(tmp_path, "long.csv", b"a,b\n" + b"1,2\n" * 100)
    clip = _file(tmp_path, "clip.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 50, kind="video")
    blob = _file(tmp_path, "data.bin", b"\x00\x01\x02" * 10)
    gone = Attachment("file", "code-x", "big.iso", note="the file is larger than media.max_bytes (20.0 MB)")
    renderer = Renderer(MediaConfig(inline_text_bytes=100), vision=True, parts=True)
    content = (await renderer.render(_with(report, long, clip, blob, gone, text="see these"))).content
    assert isinstance(content, str)  # no picture: one string, for servers without vision too
    first_100 = ("a,b\n" + "1,2\n" * 100)[:100]
    assert content == "\n\n".join(
        [
            f"[file: report.pdf (application/pdf, {report.size} bytes)]\n```\n"
            "Quarterly revenue 42 million\n\nCosts went down\n```",
            f"[file: long.csv (text/csv, 404 bytes)]\n```\n{first_100}\n```\n"
            "(only the first 100 bytes are shown)",
            "[video: clip.mp4 (video/mp4, 62 bytes)]",
            "[file: data.bin (application/octet-stream, 30 bytes)]",
            "[file big.iso could not be downloaded: the file is larger than media.max_bytes (20.0 MB)]",
            "see these",
        ]
    )
    off = Renderer(MediaConfig(inline_text_bytes=0), vision=True, parts=True)
    assert (await off.render(_with(long))).content == "[file: long.csv (text/csv, 404 bytes)]"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("duration", "said"), [("4", ", 4 s"), ("4000", ", 4 s"), ("59500", ", 60 s"), ("", "")]
)
async def test_a_voice_note_is_its_transcript_with_its_length_in_seconds(
    tmp_path: Path, duration: str, said: str
) -> None:
    voice = _file(tmp_path, "voice.amr", b"#!AMR\n" + bytes(20), kind="audio")
    voice = replace(voice, extra=(("duration", duration),) if duration else ())
    message = replace(_with(voice, text="明天开会吗"), msgtype="audio")
    rendered = await Renderer(MediaConfig(), vision=True, parts=True).render(message)
    assert rendered.content == f"[voice message{said}; DingTalk's transcript is the text]\n\n明天开会吗"
    assert rendered.attachments[0]["path"] == voice.path and rendered.attachments[0]["mime"] == "audio/amr"


@pytest.mark.anyio
async def test_a_picture_pillow_cannot_read_is_a_note(tmp_path: Path) -> None:
    broken = _file(tmp_path, "broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, kind="picture")
    rendered = await Renderer(MediaConfig(), vision=True, parts=True).render(_with(broken))
    assert rendered.content == "[picture: could not be read as an image (image/png)]"
