"""Inbound media for hooks and a ``python`` agent, end to end (issue 18): ``edgecrab gateway start`` as a
subprocess against the fake DingTalk and the fake OpenAI server.

- Hooks see a message's attachments: in ``message_received`` as they arrived (kind, name, no file yet), in
  ``prepare_agent_request`` downloaded (local path, MIME type, size), and that hook may change the content
  parts the model is sent.
- A ``python`` agent gets the files as local paths with kind, MIME type, name and size in the request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgecrab.testing.fake_openai import FakeOpenAI
from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.e2e.test_gateway_cli import start_gateway, stop_gateway
from tests.e2e.test_media_cli import answered, config, png

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
async def stack(tmp_path: Path) -> Any:
    async with FakeDingTalk() as fake, FakeOpenAI(api_key="sk-test-llm-key-123") as llm:
        yield fake, llm, tmp_path

HOOK = """
import json
from edgecrab import hookimpl

LOG = ""

@hookimpl
def hook_loaded(config):
    global LOG
    LOG = config["log"]

def _write(where, attachments):
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"where": where, "attachments": attachments}) + "\\n")

@hookimpl
def message_received(message):
    _write("received", [[a.kind, a.file_name, a.path] for a in message.attachments])

@hookimpl
def prepare_agent_request(request, message):
    _write("request", [[a.kind, a.file_name, a.size, a.path, a.mime] for a in message.attachments])
    _write("request.attachments", request.attachments)
    content = request.messages[-1]["content"]
    if isinstance(content, list):  # the pictures first, then a line of the hook's own
        pictures = [p for p in content if p["type"] == "image_url"]
        others = [p for p in content if p["type"] != "image_url"]
        request.messages[-1]["content"] = pictures + others + [{"type": "text", "text": "Be brief."}]
"""


def with_hook(path: Path, hooks: Path, log: Path) -> Path:
    hooks.mkdir()
    (hooks / "50_media.py").write_text(HOOK, encoding="utf-8")
    data = yaml.safe_load(path.read_text("utf-8"))
    data["hooks"] = {"paths": [str(hooks)], "config": {"50_media": {"log": str(log)}}}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


async def test_hooks_see_the_files_and_may_change_the_content_parts(stack: Any) -> None:
    fake, llm, tmp = stack
    log = tmp / "hook.jsonl"
    gw = await start_gateway(fake, with_hook(config(tmp, fake, llm, vision=True), tmp / "hooks", log))
    try:
        user = fake.users[0]
        picture = png(color="yellow")
        seen = await answered(fake, llm, fake.rich_text(user, ["what is", picture, "this?"]))
        assert seen == [
            {"type": "image", "mime": "image/png", "bytes": len(picture)},
            {"type": "text", "text": "what is"},
            {"type": "text", "text": "this?"},
            {"type": "text", "text": "Be brief."},
        ]
    finally:
        code, _ = await stop_gateway(gw)
    assert code == 0, gw.log
    lines = [json.loads(line) for line in log.read_text("utf-8").splitlines()]
    assert [line["where"] for line in lines] == ["received", "request", "request.attachments"]
    assert lines[0]["attachments"] == [["picture", "", ""]]  # not downloaded yet
    ((kind, name, size, path, mime),) = lines[1]["attachments"]
    assert (kind, name, size, mime) == ("picture", "picture", len(picture), "image/png")
    assert Path(path).parent == tmp / "media"
    assert Path(path).read_bytes() == picture  # noqa: ASYNC240 - the gateway has stopped
    (described,) = lines[2]["attachments"]
    assert described == {"kind": "picture", "name": "picture", "path": path, "mime": "image/png",
                         "size": len(picture), "note": ""}


AGENT = """
import os

def answer(request):
    lines = [
        f"{a['kind']} {a['name']} {a['mime']} {a['size']} {os.path.getsize(a['path'])}"
        for a in request.attachments
    ]
    return "\\n".join(lines + [request.messages[-1]["content"]])
"""


async def test_a_python_agent_gets_the_files_as_local_paths(
    stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, llm, tmp = stack
    (tmp / "mediabot.py").write_text(AGENT, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp), os.environ.get("PYTHONPATH")])))
    path = config(tmp, fake, llm, vision=True)
    data = yaml.safe_load(path.read_text("utf-8"))
    data["agent"] = {"type": "python", "callable": "mediabot:answer", "timeout_s": 20}
    path.write_text(json.dumps(data), encoding="utf-8")
    gw = await start_gateway(fake, path)
    try:
        user = fake.users[0]
        picture = fake.picture(user, content=png())
        cid = picture["conversationId"]
        await fake.push(picture)
        await fake.wait_for(lambda: len(fake.messages_for(cid)) == 1, 15)
        size = len(png())
        reply = fake.messages_for(cid)[0].text
        assert f"picture picture image/png {size} {size}" in reply
        assert f"[picture: picture (image/png, {size} bytes)]" in reply  # python agents get text, no parts
        await fake.push(fake.file(user, "notes.csv", content=b"a,b\n1,2\n"))
        await fake.wait_for(lambda: len(fake.messages_for(cid)) == 2, 15)
        reply = fake.messages_for(cid)[1].text
        assert "file notes.csv text/csv 8 8" in reply and "[file: notes.csv (text/csv, 8 bytes)]" in reply
    finally:
        code, _ = await stop_gateway(gw)
    assert code == 0, gw.log
