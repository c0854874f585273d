"""Issue 18, outbound: what agents may return as attachments, the checks and the spool, the ledger rows, and
the shapes of the DingTalk calls that carry them."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from edgecrab.agents.attachments import from_python
from edgecrab.agents.command import CommandAgent
from edgecrab.agents.python import PythonAgent
from edgecrab.config import AgentConfig
from edgecrab.dingtalk.attachsend import image_markdown, media_body
from edgecrab.dingtalk.markdown import to_dingtalk_markdown
from edgecrab.dingtalk.media_upload import upload_result, upload_url
from edgecrab.dingtalk.tokens import DingTalkError
from edgecrab.events import AgentRequest, ReplyAttachment, ReplyRoute
from edgecrab.replies import attachments as spool_module
from edgecrab.replies.attachments import (
    MARKER,
    AttachmentSpool,
    SpooledAttachment,
    read_row,
    row_text,
    sniff_image,
)
from edgecrab.replies.format import Format, prepare_reply
from edgecrab.store.base import OutboxChunk

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 16
ROUTE = ReplyRoute(robot_code="bot", conversation_id="cid1", is_group=False, sender_staff_id="u1")
FMT = Format("markdown", lambda t: t, lambda t: t[:10], 6000, 20000, False)


def ask() -> AgentRequest:
    return AgentRequest(messages=[{"role": "user", "content": "hi"}], session_key="s", message_id="m")


# -- what agents return ----------------------------------------------------------------------------


def test_python_attachment_shapes(tmp_path: Path) -> None:
    items = from_python(
        [
            "/tmp/a.png",
            tmp_path / "b.pdf",
            {"data": b"bytes", "name": "c.txt", "kind": "file"},
            ReplyAttachment(name="d"),
            {"data": "not bytes"},
            42,
        ]
    )
    assert items[0] == ReplyAttachment(path="/tmp/a.png")
    assert items[1] == ReplyAttachment(path=str(tmp_path / "b.pdf"))
    assert items[2] == ReplyAttachment(name="c.txt", kind="file", data=b"bytes")
    assert items[3] == ReplyAttachment(name="d")
    assert items[4].error == "data must be bytes"
    assert items[5].error == "an attachment must be a path or a dict, not int"
    assert from_python(None) == () and from_python("/x") == (ReplyAttachment(path="/x"),)


async def test_python_agent_returns_attachments_with_or_without_text(tmp_path: Path) -> None:
    (tmp_path / "ec_files_agent.py").write_text(
        textwrap.dedent(
            """
            def both(request):
                return {"text": "see", "attachments": [{"data": b"x", "name": "x.txt"}]}

            def alone(request):
                return {"attachments": ["/tmp/chart.png"]}
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        both = await PythonAgent(AgentConfig(type="python", callable="ec_files_agent:both")).run(ask())
        alone = await PythonAgent(AgentConfig(type="python", callable="ec_files_agent:alone")).run(ask())
    finally:
        sys.path.remove(str(tmp_path))
    assert both.text == "see" and both.attachments == (ReplyAttachment(name="x.txt", data=b"x"),)
    assert alone.text == "" and alone.attachments == (ReplyAttachment(path="/tmp/chart.png"),)


def command(script: str) -> CommandAgent:
    return CommandAgent(AgentConfig(type="command", command=(sys.executable, "-c", textwrap.dedent(script))))


async def test_command_agent_files_in_its_folder_are_attachments(tmp_path: Path) -> None:
    agent = command(
        f"""
        import json, os, sys
        folder = json.load(sys.stdin)["attachments_dir"]
        assert folder == os.environ["EDGECRAB_ATTACHMENTS_DIR"]
        open(os.path.join(folder, "b.txt"), "w").write("second")
        open(os.path.join(folder, "a.png"), "wb").write({PNG!r})
        os.mkdir(os.path.join(folder, "sub"))
        os.symlink("/etc/hostname", os.path.join(folder, "c-link"))
        print(folder)
        """
    )
    result = await agent.run(ask())
    assert [(a.name, a.data) for a in result.attachments] == [("a.png", PNG), ("b.txt", b"second")]
    assert not await anyio.Path(result.text).exists()  # the run's folder is gone


async def test_command_agent_files_alone_are_an_answer_and_old_programs_are_unchanged() -> None:
    files_only = await command(
        """
        import os
        open(os.path.join(os.environ["EDGECRAB_ATTACHMENTS_DIR"], "r.csv"), "w").write("a,b")
        """
    ).run(ask())
    assert files_only.text == "" and files_only.attachments == (ReplyAttachment(name="r.csv", data=b"a,b"),)
    plain = await command("print('just text')").run(ask())
    assert plain.text == "just text" and plain.attachments == ()


async def test_command_agent_too_big_file_is_named_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgecrab.agents.attachments.MAX_BYTES", 3)
    result = await command(
        """
        import os
        open(os.path.join(os.environ["EDGECRAB_ATTACHMENTS_DIR"], "big.bin"), "w").write("four")
        print("done")
        """
    ).run(ask())
    (big,) = result.attachments
    assert big.data is None and big.error == "it is 4 bytes; DingTalk takes at most 3"


# -- the spool -------------------------------------------------------------------------------------


def spool_in(tmp_path: Path, *allowed: Path) -> AttachmentSpool:
    return AttachmentSpool(tmp_path / "state" / "attachments", allowed or (tmp_path / "files",))


async def test_admitted_attachments_are_private_copies(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    source = tmp_path / "files" / "photo.png"
    source.write_bytes(PNG)
    spool = spool_in(tmp_path)
    image = await spool.admit(ReplyAttachment(path=str(source)))
    webp = await spool.admit(ReplyAttachment(name="w.webp", kind="image", data=WEBP))
    assert isinstance(image, SpooledAttachment) and isinstance(webp, SpooledAttachment)
    assert (image.name, image.kind, image.mime, image.size) == ("photo.png", "image", "image/png", len(PNG))
    assert (webp.kind, webp.mime) == ("file", "image/webp")  # DingTalk shows only JPEG, PNG, GIF, BMP
    source.unlink()  # the agent's own file may go: the copy stays
    copy = spool.path(image)
    assert copy.read_bytes() == PNG
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(spool.folder.stat().st_mode) == 0o700


async def test_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "MAX_BYTES", 10)
    files = tmp_path / "files"
    files.mkdir()
    (tmp_path / "secret.txt").write_text("outside")
    (files / "escape").symlink_to(tmp_path / "secret.txt")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.db").write_text("db")
    spool = spool_in(tmp_path, tmp_path)  # even with the whole tree allowed, the gateway's files are not
    narrow = spool_in(tmp_path)
    cases = {
        ReplyAttachment(path=str(files / "escape")): (narrow, "its path is outside agent.attachment_dirs"),
        ReplyAttachment(path=str(tmp_path / "state" / "state.db")): (
            spool,
            "its path is in the gateway's own state directory",
        ),
        ReplyAttachment(path=str(files)): (narrow, "it is not a regular file"),
        ReplyAttachment(name="e", data=b""): (narrow, "it is empty"),
        ReplyAttachment(name="big", data=b"x" * 11): (narrow, "it is 11 bytes; DingTalk takes at most 10"),
        ReplyAttachment(name="v", kind="voice", data=b"x"): (narrow, "kind 'voice' is not image or file"),
        ReplyAttachment(name="n"): (narrow, "it has neither a path nor data"),
        ReplyAttachment(name="r", error="unreadable"): (narrow, "unreadable"),
    }
    for attachment, (which, reason) in cases.items():
        label = attachment.name or Path(attachment.path).name
        assert await which.admit(attachment) == f"⚠️ {label} was not sent: {reason}."


def test_rows_name_a_spool_file_and_nothing_else() -> None:
    spooled = SpooledAttachment("0" * 32, "a.png", "image", 3, "image/png")
    assert read_row(row_text(spooled)) == spooled
    assert read_row("ordinary text") is None
    fields = {"file": "../../state.db", "name": "x", "kind": "file", "size": 1, "mime": ""}
    forged = MARKER + json.dumps(fields)
    assert read_row(forged) == "the attachment's ledger row is unreadable"
    assert read_row(MARKER + "{not json") == "the attachment's ledger row is unreadable"
    assert sniff_image(b"GIF89a...") == "image/gif" and sniff_image(b"%PDF") == ""


async def test_rows_follow_the_text_in_one_reply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "MAX_PER_REPLY", 2)
    spool = spool_in(tmp_path)
    text = prepare_reply(FMT, ROUTE, "the answer", session_key="s")
    files = [ReplyAttachment(name=f"{n}.png", data=PNG) for n in "abc"] + [ReplyAttachment(name="d.png")]
    prepared = await spool.add_rows(text, FMT, ROUTE, files, session_key="s")
    assert prepared is not None
    rows: list[OutboxChunk] = prepared.chunks
    assert [r.index for r in rows] == [0, 1, 2, 3] and {r.total for r in rows} == {4}
    assert {r.reply_id for r in rows} == {text.reply_id} and not any(r.mention for r in rows[1:])
    assert rows[0].text == "the answer"
    assert [getattr(read_row(r.text), "name", None) for r in rows[1:3]] == ["a.png", "b.png"]
    assert rows[3].text == "⚠️ Only 2 attachments go with one answer; not sent: c.png, d.png."
    alone = await spool.add_rows(None, FMT, ROUTE, files[:1], session_key="s")
    assert alone is not None and [r.index for r in alone.chunks] == [0] and alone.chunks[0].total == 1


async def test_sweep_keeps_what_pending_rows_name_and_young_files(tmp_path: Path) -> None:
    spool = spool_in(tmp_path)
    kept, sent, young = [await spool.admit(ReplyAttachment(name=f"{n}.png", data=PNG)) for n in "abc"]
    assert isinstance(kept, SpooledAttachment) and isinstance(sent, SpooledAttachment)
    assert isinstance(young, SpooledAttachment)
    for old in (kept, sent):
        os.utime(spool.path(old), (1, 1))

    class Store:
        async def outbox_pending(self) -> list[Any]:
            return [type("Row", (), {"text": row_text(kept)})()]

    assert await spool.sweep(Store()) == 1  # type: ignore[arg-type]
    assert spool.path(kept).exists() and not spool.path(sent).exists() and spool.path(young).exists()


# -- DingTalk's calls ----------------------------------------------------------------------------------


def test_uploads_go_to_the_legacy_host_beside_the_new_api() -> None:
    assert upload_url("https://api.dingtalk.com") == "https://oapi.dingtalk.com/media/upload"
    assert upload_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000/media/upload"


def test_upload_answers() -> None:
    ok = httpx.Response(200, json={"errcode": 0, "errmsg": "ok", "type": "image", "media_id": "@lAx"})
    assert upload_result(ok) == "@lAx"
    with pytest.raises(DingTalkError) as bad_token:
        upload_result(httpx.Response(200, json={"errcode": 40014, "errmsg": "不合法的access_token"}))
    assert bad_token.value.needs_new_token
    with pytest.raises(DingTalkError) as too_big:
        upload_result(httpx.Response(200, json={"errcode": 40006, "errmsg": "不合法的文件大小"}))
    assert too_big.value.permanent and too_big.value.code == "40006"


def test_media_message_bodies() -> None:
    image = SpooledAttachment("0" * 32, "a [1].png", "image", 3, "image/png")
    report = SpooledAttachment("1" * 32, "Report.PDF", "file", 3, "application/pdf")
    group = ReplyRoute(robot_code="bot", conversation_id="cidG", is_group=True)
    assert media_body(ROUTE, "bot", image, "@m1") == {
        "robotCode": "bot",
        "userIds": ["u1"],
        "msgKey": "sampleImageMsg",
        "msgParam": '{"photoURL":"@m1"}',
    }
    body = media_body(group, "bot", report, "@m2")
    assert body["openConversationId"] == "cidG" and body["msgKey"] == "sampleFile"
    assert json.loads(body["msgParam"]) == {"mediaId": "@m2", "fileName": "Report.PDF", "fileType": "pdf"}
    assert image_markdown(image, "@m1")["markdown"]["text"] == "![a (1).png](@m1)"


def test_a_markdown_image_with_a_public_url_stays_an_image() -> None:
    text = "Look:\n\n![chart](https://example.com/chart.png)\n\nDone."
    assert "![chart](https://example.com/chart.png)" in to_dingtalk_markdown(text)
