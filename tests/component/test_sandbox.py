"""The built-in emulator (``edgecrab.sandbox``) over loopback: in-process with the gateway, its web chat API,
and the two commands that start it (``edgecrab sandbox`` and ``edgecrab gateway start --sandbox``) as
subprocesses that must stop cleanly on SIGTERM."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from edgecrab.config import SANDBOX_APP_KEY, SANDBOX_APP_SECRET, load_config
from edgecrab.sandbox import GROUPS, open_emulator, serve_with_sandbox
from edgecrab.testing.fakedingtalk import DEFAULT_GROUP_ID, FakeApp, FakeDingTalk

pytestmark = pytest.mark.timeout(60)

URL = re.compile(r"open (http://127\.0\.0\.1:\d+)/ to chat with the bot")


# --- in-process ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_serve_with_sandbox_answers_a_dm_pushed_through_the_control_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # without a config file, ./hooks would be loaded from the working directory
    config = load_config(None, env={"EDGECRAB_HOME": str(tmp_path)}, sandbox=True)
    assert config.agent.type == "echo" and config.dingtalk.app_key == SANDBOX_APP_KEY
    started: list[FakeDingTalk] = []
    ready = anyio.Event()

    def on_ready(fake: FakeDingTalk, gateway: Any) -> None:
        started.append(fake)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve_with_sandbox(config, 0, ready=on_ready))
        with anyio.fail_after(10):
            await ready.wait()
        fake = started[0]
        assert f"edgecrab sandbox: open {fake.base_url}/ to chat with the bot\n" in capsys.readouterr().out
        assert [a.client_id for a in fake.apps] == [SANDBOX_APP_KEY]
        assert fake.apps[0].client_secret == SANDBOX_APP_SECRET
        await fake.wait_for_connections(1)
        async with httpx.AsyncClient(base_url=fake.base_url, timeout=5) as http:
            pushed = (
                await http.post(
                    "/_fake/push", json={"kind": "dm", "user": "user1002", "text": "ping via control"}
                )
            ).json()
            cid = pushed["data"]["conversationId"]
            await fake.wait_for_outbound(1, conversation_id=cid, timeout=10)
            replies = (await http.get("/_fake/outbound", params={"conversation_id": cid})).json()["outbound"]
            assert len(replies) == 1 and replies[0]["text"].startswith("🦀 echo: ping via control")
            acks = (await http.get("/_fake/acks")).json()["acks"]
            assert [a["code"] for a in acks if a["message_id"] == pushed["message_id"]] == [200]
            page = await http.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert '<script src="/static/webchat.js"' in page.text
        tg.cancel_scope.cancel()
    assert not fake.connections  # the gateway's stream connection is gone with it


# --- the web chat API, without a gateway -------------------------------------------------------------------


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[FakeDingTalk, httpx.AsyncClient]]:
    async with (
        open_emulator(FakeApp(SANDBOX_APP_KEY, SANDBOX_APP_SECRET), port=0) as fake,
        httpx.AsyncClient(base_url=fake.base_url, timeout=5) as http,
    ):
        yield fake, http


@pytest.mark.anyio
async def test_static_files_are_served_and_nothing_else(
    emulator: tuple[FakeDingTalk, httpx.AsyncClient],
) -> None:
    _, http = emulator
    for name, kind in [
        ("webchat.js", "text/javascript"),
        ("markdown.js", "text/javascript"),
        ("wire.js", "text/javascript"),
        ("webchat.css", "text/css"),
    ]:
        response = await http.get(f"/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), name
        assert response.headers["x-content-type-options"] == "nosniff"
    for bad in ("/static/nope.js", "/static/..%2F__init__.py", "/static/webchat.py", "/static/.hidden.js"):
        assert (await http.get(bad)).status_code == 404, bad
    for script in ("markdown.js", "webchat.js", "wire.js"):  # text reaches the page through DOM calls only
        source = (await http.get(f"/static/{script}")).text
        assert not re.search(r"\.(?:inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", source), script


@pytest.mark.anyio
async def test_directory_lists_people_groups_and_the_outsider(
    emulator: tuple[FakeDingTalk, httpx.AsyncClient],
) -> None:
    fake, http = emulator
    directory = (await http.get("/sandbox/directory")).json()
    assert directory["bot"]["client_id"] == SANDBOX_APP_KEY and "client_secret" not in directory["bot"]
    outsiders = [u["nick"] for u in directory["users"] if u["outsider"]]
    assert outsiders == ["王五 (external)"]
    assert len(directory["users"]) == 5
    alice = next(u for u in directory["users"] if u["staff_id"] == "user1002")
    assert alice["dm_conversation_id"] == fake.dm_conversation_id("user1002")
    assert [(g["conversation_id"], g["title"]) for g in directory["groups"]] == list(GROUPS)
    assert directory["connections"] == 0 and directory["base_url"] == fake.base_url


@pytest.mark.anyio
async def test_send_pushes_like_dingtalk_and_history_keeps_the_chat(
    emulator: tuple[FakeDingTalk, httpx.AsyncClient],
) -> None:
    fake, http = emulator
    alice = fake.user("user1002").dingtalk_id
    dm = (await http.post("/sandbox/send", json={"user": alice, "text": "hi bot"})).json()
    assert dm["conversation_id"] == fake.dm_conversation_id("user1002")
    mentioned = (
        await http.post(
            "/sandbox/send", json={"user": alice, "text": "hi all", "conversation_id": DEFAULT_GROUP_ID}
        )
    ).json()
    unmentioned = (
        await http.post(
            "/sandbox/send",
            json={"user": alice, "text": "no bot", "conversation_id": DEFAULT_GROUP_ID, "at_bot": False},
        )
    ).json()
    assert fake.stats()["dropped_unmentioned"] == 1  # DingTalk never pushes a group message without @robot

    with anyio.fail_after(5):  # the recorder sees the frame events on its own task
        while True:
            events = (await http.get("/sandbox/history")).json()["events"]
            chats = [e for e in events if e["kind"] == "chat"]
            if len(chats) >= 3 and sum(e["kind"] == "frame" for e in events) >= 3:
                break
            await anyio.sleep(0.02)
    assert [(c["text"], c["at_bot"], c["conversation_type"]) for c in chats] == [
        ("hi bot", None, "1"),
        ("hi all", True, "2"),
        ("no bot", False, "2"),
    ]
    assert [c["message_id"] for c in chats] == [
        dm["message_id"],
        mentioned["message_id"],
        unmentioned["message_id"],
    ]
    frames = {(e["message_id"], e["direction"]) for e in events if e["kind"] == "frame"}
    # No gateway is connected: the two deliverable messages wait in DingTalk's queue; the third never goes.
    assert frames == {
        (dm["message_id"], "queued"),
        (mentioned["message_id"], "queued"),
        (unmentioned["message_id"], "dropped"),
    }
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"user": "user1002", "text": "  "}, "text must be a non-empty string"),
        ({"user": "nobody", "text": "hi"}, "unknown user"),
        ({"user": "user1002", "text": "hi", "conversation_id": "cidNope"}, "unknown group"),
        ({"user": "user1002", "text": "x" * 20001}, "longer than 20000"),
        (["not", "an", "object"], "JSON object"),
    ],
)
async def test_send_rejects_bad_input(
    emulator: tuple[FakeDingTalk, httpx.AsyncClient], body: Any, error: str
) -> None:
    fake, http = emulator
    response = await http.post("/sandbox/send", json=body)
    assert response.status_code == 400 and error in response.json()["error"]
    assert fake.stats()["pushes"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "body", "error"),
    [
        ({"kind": "sticker", "user": "user1002"}, b"x", "kind must be picture, file or audio"),
        ({"kind": "file", "name": "a.txt", "user": "user1002"}, b"", "the file is empty"),
        ({"kind": "file", "name": "a.txt", "user": "nobody"}, b"x", "unknown user"),
        ({"kind": "picture", "user": "user1002", "conversation_id": "cidNope"}, b"x", "unknown group"),
        ({"kind": "audio", "user": "user1002", "robot": "nope"}, b"x", "unknown robot"),
    ],
)
async def test_upload_rejects_bad_input(
    emulator: tuple[FakeDingTalk, httpx.AsyncClient], query: dict[str, str], body: bytes, error: str
) -> None:
    fake, http = emulator
    response = await http.post("/sandbox/upload", params=query, content=body)
    assert response.status_code == 400 and error in response.json()["error"]
    assert fake.stats()["pushes"] == 0


@pytest.mark.anyio
async def test_a_busy_port_is_a_startup_error_with_a_hint() -> None:
    from edgecrab.errors import StartupError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StartupError, match=rf"cannot listen on 127\.0\.0\.1:{port}.*--port 0"):
            async with open_emulator(FakeApp(SANDBOX_APP_KEY, SANDBOX_APP_SECRET), port=port):
                pass


# --- the commands, as subprocesses ------------------------------------------------------------------------


class Running:
    """A started ``edgecrab`` subprocess whose stdout is read line by line in a thread."""

    def __init__(self, args: list[str], home: Path, **extra_env: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
        env.update(extra_env, EDGECRAB_HOME=str(home))
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home / "stderr.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgecrab", *args],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=home,  # not the repository: its example hooks/ would be loaded and write files there
            )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line)

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                match = pattern.search(self.lines.get(timeout=left))
            except queue.Empty:
                break
            if match:
                return match
        pytest.fail(
            f"no line matching {pattern.pattern!r} within {timeout} s; stderr:\n{self.log_path.read_text()}"
        )

    def url(self) -> str:
        return self.wait_for_line(URL).group(1)

    def stop(self) -> tuple[int, float]:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.reader.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code, time.monotonic() - started


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for proc in started:
        proc.stop()


def _reply_to_dm(http: httpx.Client, text: str, user: str = "manager807") -> str:
    """Push a DM through the control API and return the bot's first reply ("" after 10 s without one)."""
    pushed = http.post("/_fake/push", json={"kind": "dm", "user": user, "text": text}).json()
    cid = pushed["data"]["conversationId"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        replies = http.get("/_fake/outbound", params={"conversation_id": cid}).json()["outbound"]
        if replies:
            return str(replies[0]["text"])
        time.sleep(0.05)
    return ""


def test_edgecrab_sandbox_serves_a_gateway_started_as_it_says(tmp_path: Path, running: list[Running]) -> None:
    sandbox = Running(["sandbox", "--port", "0"], tmp_path / "sandbox")
    running.append(sandbox)
    url = sandbox.url()
    hint = sandbox.wait_for_line(re.compile(r"^\s+(DINGTALK_\S+=.*) edgecrab gateway start$")).group(1)
    env = dict(item.split("=", 1) for item in hint.split())
    assert env == {
        "DINGTALK_API_BASE": url,
        "DINGTALK_APP_KEY": SANDBOX_APP_KEY,
        "DINGTALK_APP_SECRET": SANDBOX_APP_SECRET,
    }
    with httpx.Client(base_url=url, timeout=5) as http:
        assert "edgecrab sandbox" in http.get("/").text
        assert [a["client_id"] for a in http.get("/_fake/users").json()["apps"]] == [SANDBOX_APP_KEY]
        # What it printed is enough to point a separate gateway at it.
        gateway = Running(["gateway", "start"], tmp_path / "gateway", **env)
        running.append(gateway)
        reply = _reply_to_dm(http, "hello separate gateway")
        assert reply.startswith("🦀 echo: hello separate gateway"), gateway.log_path.read_text()
    assert gateway.stop()[0] == 0
    code, elapsed = sandbox.stop()
    assert code == 0 and elapsed < 5, sandbox.log_path.read_text()
    assert "SIGTERM received; stopping" in sandbox.log_path.read_text()


def test_gateway_start_sandbox_answers_and_stops_on_sigterm(tmp_path: Path, running: list[Running]) -> None:
    gateway = Running(["gateway", "start", "--sandbox", "--port", "0"], tmp_path)
    running.append(gateway)
    url = gateway.url()
    with httpx.Client(base_url=url, timeout=5) as http:
        assert _reply_to_dm(http, "hello").startswith("🦀 echo: hello"), gateway.log_path.read_text()
    code, elapsed = gateway.stop()
    log = gateway.log_path.read_text()
    assert code == 0 and elapsed < 5, log
    assert "SIGTERM received; stopping" in log and "[gateway] stopped" in log
    assert SANDBOX_APP_SECRET not in log


def test_a_busy_port_fails_the_command_with_a_hint(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
        result = subprocess.run(
            [sys.executable, "-m", "edgecrab", "sandbox", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            cwd=tmp_path,
        )
    assert result.returncode == 2, result.stderr  # a usage error: pick another port
    assert f"the sandbox cannot listen on 127.0.0.1:{port}" in result.stderr and "--port 0" in result.stderr
    assert "Traceback" not in result.stderr
