"""Issue 18, outbound, end to end: ``edgecrab gateway start`` against the emulator (``edgecrab sandbox``),
with a ``python`` agent returning a picture and a file next to its text, and a ``command`` agent writing
them into its attachments folder. Both arrive after the text, in order, and the emulator serves them; a
markdown image with a public https URL in the text stays as it is."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_ops_port import wait_until
from tests.e2e.test_send import USER, fake_dingtalk, outbound, running_gateway

pytestmark = pytest.mark.timeout(90)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64

PY_AGENT = f"""
import pathlib

def answer(request):
    return {{
        "text": "Here you are.\\n\\n![logo](https://example.com/logo.png)",
        "attachments": [
            {{"data": {PNG!r}, "name": "chart.png"}},
            str(pathlib.Path(__file__).parent / "files" / "report.pdf"),
        ],
    }}
"""

CMD_AGENT = f"""
import json, os, sys
folder = json.load(sys.stdin)["attachments_dir"]
open(os.path.join(folder, "1-chart.png"), "wb").write({PNG!r})
open(os.path.join(folder, "2-data.csv"), "w").write("a,b\\n1,2\\n")
print("Made two files.")
"""


def delivered(fake: httpx.Client, count: int) -> list[dict[str, Any]]:
    fake.post("/_fake/push", json={"kind": "dm", "user": USER, "text": "files please"}).raise_for_status()
    wait_until(lambda: len(outbound(fake)) >= count)
    return outbound(fake)


def check(fake: httpx.Client, records: list[dict[str, Any]], text: str, image: str, file: str) -> None:
    first, picture, document = records
    assert first["text"] == text
    assert (picture["via"], picture["msgtype"]) == ("webhook", "markdown")
    media_id = picture["text"].removeprefix(f"![{image}](").removesuffix(")")
    assert media_id.startswith("@") and fake.get(f"/_fake/media/{media_id}").content == PNG
    assert (document["via"], document["msgtype"]) == ("batchSend", "sampleFile")
    param = json.loads(document["body"]["msgParam"])
    assert param["fileName"] == file
    served = fake.get(f"/_fake/media/{param['mediaId']}")
    assert served.headers["content-disposition"] == f'attachment; filename="{file}"'
    assert first["t"] < picture["t"] < document["t"]


def test_python_agent_picture_and_file_after_its_text(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "report.pdf").write_bytes(b"%PDF-1.4 a report")
    (tmp_path / "filebot.py").write_text(textwrap.dedent(PY_AGENT), encoding="utf-8")
    config = "agent:\n  type: python\n  callable: filebot:answer\n  attachment_dirs: [files]\n"
    with fake_dingtalk(tmp_path, config) as (fake, env), running_gateway(tmp_path, env):
        records = delivered(fake, 3)
        # A markdown image with a public https URL in the text stays a markdown image.
        text = "Here you are.\n\n![logo](https://example.com/logo.png)"
        check(fake, records, text, "chart.png", "report.pdf")
        assert fake.get(f"/_fake/media/{json.loads(records[2]['body']['msgParam'])['mediaId']}").content == (
            b"%PDF-1.4 a report"
        )
    assert "[attachments] file report.pdf sent to conversation" in (tmp_path / "gateway.log").read_text()


def test_command_agent_files_after_its_text(tmp_path: Path) -> None:
    (tmp_path / "cmdbot.py").write_text(textwrap.dedent(CMD_AGENT), encoding="utf-8")
    config = "agent:\n  type: command\n  command: [python3, cmdbot.py]\n"
    with fake_dingtalk(tmp_path, config) as (fake, env), running_gateway(tmp_path, env):
        records = delivered(fake, 3)
        check(fake, records, "Made two files.", "1-chart.png", "2-data.csv")
    spool = tmp_path / "home" / "attachments"
    assert spool.is_dir() and oct(spool.stat().st_mode & 0o777) == "0o700"
