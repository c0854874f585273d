"""``edgecrab gateway start --sandbox`` as a subprocess, attacked over real sockets (issue 16):

* a canary app secret set in the config never reaches the emulator, so nothing it records or serves (the
  control API, the web chat API, the ``/_fake/events`` websocket) contains it;
* foreign ``Host`` headers (DNS rebinding), foreign ``Origin`` headers (cross-site pages, websockets included)
  and ``text/plain`` bodies (the cross-site POST that needs no CORS preflight) are refused.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

pytestmark = pytest.mark.timeout(60)

CANARY_KEY = "real-app-key-canary-7f3a"
CANARY_SECRET = "REAL-app-secret-canary-9c1e55d0"
URL = re.compile(r"open (http://127\.0\.0\.1:\d+)/ to chat with the bot")


class Sandbox:
    """``edgecrab gateway start --sandbox --port 0`` with the canary credentials in its config."""

    def __init__(self, home: Path) -> None:
        config = home / "edgecrab.yaml"
        config.write_text(
            "platforms:\n  dingtalk:\n"
            "    app_key: ${DINGTALK_APP_KEY}\n    app_secret: ${DINGTALK_APP_SECRET}\n"
            "agent:\n  type: echo\n"
            f"storage:\n  url: sqlite:///{home / 'state.db'}\n",
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
        env.update(DINGTALK_APP_KEY=CANARY_KEY, DINGTALK_APP_SECRET=CANARY_SECRET, EDGECRAB_HOME=str(home))
        self.log_path = home / "stderr.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgecrab", "--config", str(config), "gateway", "start", "--sandbox",
                 "--port", "0"],
                stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=home,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line)

    def url(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                match = URL.search(self.lines.get(timeout=left))
            except queue.Empty:
                break
            if match:
                return match.group(1)
        pytest.fail(f"the sandbox printed no chat URL; stderr:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, str]]:
    running = Sandbox(tmp_path_factory.mktemp("sandbox"))
    try:
        yield running, running.url()
    finally:
        running.stop()


def _reply_to_dm(http: httpx.Client, text: str) -> dict[str, object]:
    pushed = http.post("/_fake/push", json={"kind": "dm", "user": "manager807", "text": text}).json()
    cid = pushed["data"]["conversationId"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        replies = http.get("/_fake/outbound", params={"conversation_id": cid}).json()["outbound"]
        if replies:
            return dict(replies[0])
        time.sleep(0.05)
    pytest.fail("the bot never answered")


def test_the_configured_secret_never_reaches_what_the_sandbox_serves(sandbox: tuple[Sandbox, str]) -> None:
    proc, url = sandbox
    served: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=5) as http:
        reply = _reply_to_dm(http, "hello canary")
        assert str(reply["text"]).startswith("🦀 echo: hello canary")
        for path in (
            "/_fake/open_requests", "/_fake/requests", "/_fake/users", "/_fake/connections", "/_fake/stats",
            "/_fake/outbound", "/_fake/acks", "/_fake/settings", "/sandbox/directory", "/sandbox/history",
            "/", "/static/webchat.js",
        ):
            response = http.get(path)
            assert response.status_code == 200, (path, response.text)
            served[path] = response.text
    # The event stream, replayed: everything from the gateway's registration to the bot's reply.
    events: list[str] = []
    with connect(url.replace("http://", "ws://") + "/_fake/events?replay=1", open_timeout=5) as ws:
        while True:
            event = ws.recv(timeout=10)
            events.append(str(event))
            if json.loads(event)["kind"] == "outbound":
                break
    served["/_fake/events"] = "\n".join(events)
    # The emulator did see a registration and a token request (so the scan below looked at something).
    opened = json.loads(served["/_fake/open_requests"])["open_requests"]
    assert opened and opened[0]["body"]["clientSecret"].startswith("***")
    leaks = [path for path, text in served.items() if CANARY_SECRET in text or CANARY_KEY in text]
    assert not leaks, f"the configured credentials are served by {leaks}"
    assert CANARY_SECRET not in "".join(proc.stdout) + proc.log_path.read_text()


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Host": "rebind.attacker.example:8765"}, 421),
        ({"Host": "rebind.attacker.example"}, 421),
        ({"Origin": "http://attacker.example"}, 403),
        ({"Origin": "null"}, 403),
    ],
)
def test_foreign_hosts_and_origins_are_refused(
    sandbox: tuple[Sandbox, str], headers: dict[str, str], status: int
) -> None:
    _, url = sandbox
    with httpx.Client(base_url=url, timeout=5) as http:
        for method, path in (("GET", "/_fake/open_requests"), ("GET", "/sandbox/directory"), ("GET", "/")):
            assert http.request(method, path, headers=headers).status_code == status, (method, path)
        sent = http.post("/sandbox/send", json={"user": "manager807", "text": "forged"}, headers=headers)
        assert sent.status_code == status
        # The page's own names are served.
        port = url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            assert http.get("/sandbox/directory", headers={"Host": host}).status_code == 200, host
        assert http.get("/sandbox/directory", headers={"Origin": url}).status_code == 200


def test_text_plain_posts_are_refused_before_they_reach_the_bot(sandbox: tuple[Sandbox, str]) -> None:
    _, url = sandbox
    body = json.dumps({"user": "manager807", "text": "sent cross-site"})
    with httpx.Client(base_url=url, timeout=5) as http:
        before = len(http.get("/_fake/outbound").json()["outbound"])
        for path in ("/sandbox/send", "/_fake/push"):
            refused = http.post(path, content=body, headers={"Content-Type": "text/plain"})
            assert refused.status_code == 415, (path, refused.text)
        history = http.get("/sandbox/history").json()["events"]
        assert not [e for e in history if e.get("text") == "sent cross-site"]
        assert len(http.get("/_fake/outbound").json()["outbound"]) == before


def test_the_events_websocket_refuses_foreign_origins(sandbox: tuple[Sandbox, str]) -> None:
    _, url = sandbox
    ws_url = url.replace("http://", "ws://") + "/_fake/events"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, origin=Origin("http://attacker.example"), open_timeout=5)
    assert refused.value.response.status_code == 403
    # A rebinding page's handshake (websockets cannot replace its own Host header, so by hand).
    upgrade = {
        "Host": "attacker.example", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
    }
    assert httpx.get(url + "/_fake/events", headers=upgrade, timeout=5).status_code == 421
    with connect(ws_url, origin=Origin(url), open_timeout=5):
        pass  # the page's own origin is accepted
