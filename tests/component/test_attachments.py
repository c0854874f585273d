"""Issue 18, outbound: pictures and files an agent returns reach DingTalk after its text, through the ledger.

A whole gateway against the fake DingTalk over loopback sockets: upload then send (picture through the
sessionWebhook as a markdown image of its mediaId, OpenAPI ``sampleImageMsg`` when the webhook is gone or
refuses it; file
as ``sampleFile``), order after the text, notes for what cannot be sent, and a restart between the text and
the attachment that neither loses nor repeats anything.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgecrab.agents.base import Agent
from edgecrab.config import AgentConfig
from edgecrab.config.model import CardConfig
from edgecrab.events import AgentRequest, AgentResult, ReplyAttachment
from edgecrab.replies import attachments as spool_module
from edgecrab.testing.fakedingtalk import FakeDingTalk, OutboundRecord
from tests.component.gwkit import make_config, quiescent, running_gateway

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.4 report " + b"x" * 64


class FilesAgent(Agent):
    """Answers ``text`` with ``files`` attached."""

    name = "files"

    def __init__(self, text: str, *files: ReplyAttachment) -> None:
        self.text = text
        self.files = files

    async def run(self, request: AgentRequest) -> AgentResult:
        return AgentResult(self.text, attachments=self.files)


def config_for(fake: FakeDingTalk, tmp_path: Path, **dingtalk: object):  # type: ignore[no-untyped-def]
    config = make_config(fake, tmp_path, **dingtalk)  # the state directory: tmp_path
    return replace(config, agent=AgentConfig(attachment_dirs=(files_dir(tmp_path),)))


def files_dir(tmp_path: Path) -> Path:
    """Where the agent's files are (outside the state directory, which is always refused)."""
    folder = tmp_path / "agent-files"
    folder.mkdir(exist_ok=True)
    return folder


def param(record: OutboundRecord) -> dict[str, str]:
    return json.loads(record.body["msgParam"])


async def answered(fake: FakeDingTalk, cid: str, count: int) -> list[OutboundRecord]:
    await fake.wait_for(lambda: len(fake.messages_for(cid)) >= count, timeout=10)
    return fake.messages_for(cid)


async def test_picture_and_file_follow_the_text_in_order(tmp_path: Path) -> None:
    report = files_dir(tmp_path) / "report.pdf"
    report.write_bytes(PDF)
    agent = FilesAgent(
        "Here is the chart and the report.",
        ReplyAttachment(name="chart.png", data=PNG),
        ReplyAttachment(path=str(report)),
    )
    async with FakeDingTalk() as fake, running_gateway(config_for(fake, tmp_path), agent) as gateway:
        data = fake.dm(fake.users[1], "chart please")
        await fake.push(data)
        text, image, file = await answered(fake, data["conversationId"], 3)
        await quiescent(fake, gateway)
        assert len(fake.messages_for(data["conversationId"])) == 3
        spool = gateway.answers.spool
        assert await spool.sweep(gateway.store, now=1e12) == 2  # delivered: their copies can go
    assert (text.msgtype, text.text) == ("markdown", "Here is the chart and the report.")
    # The picture: through the webhook, as a markdown image of the uploaded mediaId.
    assert image.via == "webhook" and image.msgtype == "markdown"
    media_id = image.text.removeprefix("![chart.png](").removesuffix(")")
    assert fake.state.uploads[media_id].content == PNG
    # The file: the webhook carries none, so the OpenAPI's sampleFile.
    assert (file.via, file.msgtype) == ("batchSend", "sampleFile")
    assert param(file)["fileName"] == "report.pdf" and param(file)["fileType"] == "pdf"
    assert fake.state.uploads[param(file)["mediaId"]].content == PDF
    assert text.t < image.t < file.t
    uploads = [r for r in fake.requests if r.path == "/media/upload"]
    assert [r.query["type"] for r in uploads] == ["image", "file"]
    assert all(r.query["access_token"].startswith("***") for r in uploads)  # scrubbed by the fake


async def test_group_picture_without_webhook_goes_as_sample_image(tmp_path: Path) -> None:
    agent = FilesAgent("", ReplyAttachment(name="a.png", data=PNG))
    async with FakeDingTalk() as fake, running_gateway(config_for(fake, tmp_path), agent) as gateway:
        data = fake.group(fake.users[1], "picture only")
        fake.expire_webhooks_now()
        await fake.push(data)
        (image,) = await answered(fake, data["conversationId"], 1)
        await quiescent(fake, gateway)
    # Only the picture: an answer of files alone has no "empty answer" text.
    assert len(fake.messages_for(data["conversationId"])) == 1
    assert (image.via, image.msgtype) == ("groupSend", "sampleImageMsg")
    assert param(image)["photoURL"] in fake.state.uploads


async def test_a_picture_the_webhook_refuses_goes_through_the_openapi(tmp_path: Path) -> None:
    agent = FilesAgent("", ReplyAttachment(name="a.png", data=PNG))
    async with FakeDingTalk() as fake, running_gateway(config_for(fake, tmp_path), agent) as gateway:
        fake.faults.fail("/robot/sendBySession", kinds=["session_gone"], times=1)
        data = fake.dm(fake.users[1], "a picture")
        await fake.push(data)
        (image,) = await answered(fake, data["conversationId"], 1)
        await quiescent(fake, gateway)
    assert len(fake.messages_for(data["conversationId"])) == 1
    assert (image.via, image.msgtype) == ("batchSend", "sampleImageMsg")
    assert param(image)["photoURL"] in fake.state.uploads
    tried = [r for r in fake.requests if r.path == "/robot/sendBySession"]
    assert [r.fault for r in tried] == ["session_gone"]  # the webhook was tried first and refused it


async def test_a_throttled_upload_waits_and_is_sent(tmp_path: Path) -> None:
    """DingTalk's QPS limit on the upload is met like on a text send: wait, try again, deliver."""
    agent = FilesAgent("Here.", ReplyAttachment(name="a.png", data=PNG))
    async with FakeDingTalk() as fake, running_gateway(config_for(fake, tmp_path), agent) as gateway:
        fake.faults.fail("/media/upload", kinds=["qps"], times=1)
        data = fake.dm(fake.users[1], "a picture")
        await fake.push(data)
        text, image = await answered(fake, data["conversationId"], 2)
        await quiescent(fake, gateway)
    assert text.text == "Here." and image.text.startswith("![a.png](@")
    uploads = [r for r in fake.requests if r.path == "/media/upload"]
    assert [r.fault for r in uploads] == ["qps", None]


async def test_what_cannot_be_sent_becomes_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "MAX_BYTES", 100)
    outside = Path(spool_module.__file__)  # readable, but not in agent.attachment_dirs
    agent = FilesAgent(
        "answer",
        ReplyAttachment(path=str(files_dir(tmp_path) / "missing.pdf")),
        ReplyAttachment(path=str(outside)),
        ReplyAttachment(name="big.bin", data=b"x" * 101),
        ReplyAttachment(name="ok.png", data=PNG),
    )
    async with FakeDingTalk() as fake, running_gateway(config_for(fake, tmp_path), agent) as gateway:
        data = fake.dm(fake.users[1], "files")
        await fake.push(data)
        records = await answered(fake, data["conversationId"], 5)
        await quiescent(fake, gateway)
    texts = [r.text for r in records]
    assert texts[0] == "answer"
    assert texts[1] == "⚠️ missing.pdf was not sent: the file does not exist."
    assert texts[2] == "⚠️ attachments.py was not sent: its path is outside agent.attachment_dirs."
    assert texts[3] == "⚠️ big.bin was not sent: it is 101 bytes; DingTalk takes at most 100."
    assert texts[4].startswith("![ok.png](@")


async def test_a_refused_upload_is_a_note(tmp_path: Path) -> None:
    agent = FilesAgent("answer", ReplyAttachment(name="report.pdf", data=PDF))
    async with FakeDingTalk() as fake, running_gateway(config_for(fake, tmp_path), agent) as gateway:
        fake.state.settings.upload_limit = 10  # DingTalk answers 40006: bad file size
        data = fake.dm(fake.users[1], "report")
        await fake.push(data)
        _, note = await answered(fake, data["conversationId"], 2)
        await quiescent(fake, gateway)
    assert note.text == "⚠️ report.pdf was not sent: DingTalk refused the upload (40006)."
    assert not fake.state.uploads


async def test_a_file_for_someone_outside_the_organisation_is_a_note(tmp_path: Path) -> None:
    agent = FilesAgent("answer", ReplyAttachment(name="report.pdf", data=PDF))
    async with FakeDingTalk() as fake:
        config = config_for(fake, tmp_path, allowed_users=("*",))  # people outside the organisation too
        async with running_gateway(config, agent) as gateway:
            outsider = next(u for u in fake.users if not u.staff_id)
            data = fake.dm(outsider, "report")
            await fake.push(data)
            _, note = await answered(fake, data["conversationId"], 2)
            await quiescent(fake, gateway)
    assert note.via == "webhook"
    assert note.text == (
        "⚠️ report.pdf was not sent: files go only through DingTalk's OpenAPI, which needs the "
        "recipient's staff id."
    )


async def test_restart_between_text_and_attachment(tmp_path: Path) -> None:
    agent = FilesAgent("text first", ReplyAttachment(name="chart.png", data=PNG))
    async with FakeDingTalk() as fake:
        config = config_for(fake, tmp_path)
        fake.faults.delay("/media/upload", 30)  # the first gateway never gets its upload answered
        data = fake.dm(fake.users[1], "chart")
        cid = data["conversationId"]
        async with running_gateway(config, agent):
            await fake.push(data)
            await answered(fake, cid, 1)  # the text is out; the picture's upload hangs: stop now
        assert [r.text for r in fake.messages_for(cid)] == ["text first"]
        fake.faults.clear()
        async with running_gateway(config, FilesAgent("never asked")) as gateway:
            text, image = await answered(fake, cid, 2)
            await quiescent(fake, gateway)
        assert len(fake.messages_for(cid)) == 2  # neither the text nor the picture twice
    assert text.text == "text first" and image.text.startswith("![chart.png](@")


async def test_card_mode_sends_attachments_once_the_card_is_finished(tmp_path: Path) -> None:
    agent = FilesAgent("the answer", ReplyAttachment(name="chart.png", data=PNG))
    async with FakeDingTalk() as fake:
        config = config_for(fake, tmp_path, reply_mode="card", card=CardConfig(update_interval_ms=100))
        async with running_gateway(config, agent) as gateway:
            data = fake.dm(fake.users[1], "chart")
            await fake.push(data)
            (image,) = await answered(fake, data["conversationId"], 1)
            await quiescent(fake, gateway)
        (card,) = fake.cards.cards.values()
    assert card.status == "finished" and card.text == "the answer"
    assert image.text.startswith("![chart.png](@")  # the card showed the text: no markdown copy of it
    calls = [(r.method, r.path) for r in fake.requests]
    last_card_call = max(i for i, call in enumerate(calls) if call[1].startswith("/v1.0/card/"))
    assert calls.index(("POST", "/media/upload")) > last_card_call
