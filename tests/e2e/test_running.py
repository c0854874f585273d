"""Running the gateway (issue 15, "Running"), through the real ``edgecrab`` command as a subprocess: stopping
it, what it logs, and what users are told."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_day_one import EDGECRAB, clean_env, sandbox_process, wait_for_text

pytestmark = pytest.mark.timeout(60)

# --- 1. shutdown always finishes -----------------------------------------------------------------------

BLOCKED_FOREVER = '''
import sys
import threading

from edgecrab import hookimpl


@hookimpl
def {hook}():
    print("hook: blocked forever", file=sys.stderr, flush=True)
    threading.Event().wait()
'''


def blocking_gateway(tmp_path: Path, hook: str) -> tuple[list[str], dict[str, str]]:
    """``gateway start --sandbox`` with a synchronous ``hook`` that never returns."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "blocker.py").write_text(BLOCKED_FOREVER.format(hook=hook), encoding="utf-8")
    config = tmp_path / "edgecrab.yaml"
    config.write_text(f"hooks:\n  paths: [{hooks}]\n  timeout_s: 0.3\n", encoding="utf-8")
    argv = [*EDGECRAB, "--config", str(config), "gateway", "start", "--sandbox", "--port", "0"]
    return argv, clean_env(tmp_path)


def test_a_signal_stops_the_gateway_although_a_sync_hook_is_blocked_forever(tmp_path: Path) -> None:
    argv, env = blocking_gateway(tmp_path, "gateway_started")
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_text(log_path, "gateway_started timed out after 0.3s; abandoned")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text(encoding="utf-8")
    assert code == 0 and elapsed < 5, (code, elapsed, text)
    assert "[gateway] stopped" in text
    assert "thread(s) still busy" in text and "Traceback" not in text, text


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_second_signal_exits_at_once_without_a_traceback(
    tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    argv, env = blocking_gateway(tmp_path, "gateway_stopping")
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_text(log_path, "[gateway] started")
        proc.send_signal(signum)
        wait_for_text(log_path, "hook: blocked forever")  # the stop is under way, and stuck for now
        started = time.monotonic()
        proc.send_signal(signum)
        exit_code = proc.wait(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text(encoding="utf-8")
    assert exit_code == code and elapsed < 0.5, (exit_code, elapsed, text)
    assert f"second {signum.name}: exiting at once" in text
    for wrong in ("Traceback", "KeyboardInterrupt", "unexpected error"):
        assert wrong not in text, text


# --- 2. one INFO line per message and per reply; --log-format json ---------------------------------------


def push(base: str, body: dict[str, Any], replies: int = 1) -> list[str]:
    """Push a message through the emulator's control API; the conversation's replies once there are
    ``replies`` of them."""
    with httpx.Client(base_url=base, timeout=5) as client:
        data = client.post("/_fake/push", json=body).json()["data"]
        cid = data["conversationId"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            out = client.get("/_fake/outbound", params={"conversation_id": cid}).json()["outbound"]
            if len(out) >= replies:
                return [str(o["text"]) for o in out]
            time.sleep(0.05)
    raise AssertionError(f"fewer than {replies} replies to {body}")


def wait_for_lines(path: Path, count: int, what: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        found = [e for e in entries if what(e)]
        if len(found) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def test_json_logs_have_one_line_per_message_and_per_reply(tmp_path: Path) -> None:
    config = tmp_path / "edgecrab.yaml"
    config.write_text("platforms:\n  dingtalk:\n    allowed_users: [user1001, user1002]\n", encoding="utf-8")
    env = clean_env(tmp_path, EDGECRAB_LOG_FORMAT="json")
    with sandbox_process(tmp_path, config, env) as (base, _):
        push(base, {"kind": "dm", "user": "user1001", "text": "my secret words"})
        push(base, {"kind": "dm", "user": "user1001", "text": "/status"}, replies=2)
        push(base, {"kind": "group", "user": "user1002", "text": "group words", "at_bot": True})
        push(base, {"kind": "dm", "user": "manager807", "text": "let me in"})
        sent = httpx.post(f"{base}/_fake/push", json={"kind": "dm", "user": "user1002", "text": "twice"})
        first = sent.json()["message_id"]
        httpx.post(f"{base}/_fake/duplicate", json={"message_id": first}).raise_for_status()
        log_path = tmp_path / "sandbox.log"
        entries = wait_for_lines(log_path, 1, lambda e: e.get("outcome") == "duplicate")
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    messages = [e for e in entries if e["logger"] == "edgecrab.activity" and "sender" in e]
    seen = [(e["chat"], e["sender"], e["outcome"], e["detail"]) for e in messages]
    assert ("dm", "user1001", "run", "") in seen, seen
    assert ("dm", "user1001", "command", "/status") in seen, seen
    assert ("group", "user1002", "run", "") in seen, seen
    assert ("dm", "user1002", "duplicate") in [s[:3] for s in seen], seen
    denied = [e for e in messages if e["outcome"] == "denied"]
    assert [e["sender"] for e in denied] == ["manager807"], seen
    assert all(e["level"] == "INFO" and e["msg_id"] and e["conversation"] for e in messages)
    replies = [e for e in entries if e["logger"] == "edgecrab.activity" and "chunks" in e]
    assert len(replies) >= 5, replies  # the answers, /status, the notice for the one not allowed
    for reply in replies:
        assert reply["outcome"] == "sent" and reply["via"] == "webhook" and reply["chunks"] == 1, reply
        assert reply["msg_id"] and 0 <= reply["latency_s"] < 10, reply
    text = log_path.read_text(encoding="utf-8")
    assert "my secret words" not in text and "group words" not in text  # what people wrote: DEBUG only


def test_log_level_debug_shows_edgecrabs_debug_lines_and_the_text(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    with sandbox_process(tmp_path, None, env, extra=("--log-level", "debug")) as (base, _):
        push(base, {"kind": "dm", "user": "user1001", "text": "my words"})
        log_path = tmp_path / "sandbox.log"
        text = wait_for_text(log_path, "[reply] to ")
    assert re.search(r" INFO \[message\] \S+ dm from user1001: run\n", text), text
    assert re.search(r" DEBUG \[message\] \S+ text: my words\n", text), text
    reply = r" INFO \[reply\] to \S+ in dm \S+: sent via webhook, 1 chunk\(s\), [\d.]+ s after the message"
    assert re.search(reply, text), text


# --- 3. users see user words; admins and the log get the detail --------------------------------------------


@contextlib.contextmanager
def refusing_llm() -> Iterator[str]:
    """An OpenAI-compatible endpoint that answers every request with 401; yields its base URL."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_a_failed_run_gives_users_user_words_and_admins_the_detail(tmp_path: Path, snapshot: Any) -> None:
    with refusing_llm() as llm:
        config = tmp_path / "edgecrab.yaml"
        config.write_text(
            f"agent:\n  type: openai\n  base_url: {llm}\n  model: m\n  api_key: sk-wrong-key-000\n",
            encoding="utf-8",
        )
        with sandbox_process(tmp_path, config, clean_env(tmp_path)) as (base, _):
            user = push(base, {"kind": "dm", "user": "user1001", "text": "hello"})[0]
            admin = push(base, {"kind": "dm", "user": "manager807", "text": "hello"})[0]
    assert {"user": user, "admin": admin} == snapshot
    assert "/retry" in user and "agent.api_key" not in user and "401" not in user
    assert "The agent returned 401: check agent.api_key" in admin
    log = (tmp_path / "sandbox.log").read_text(encoding="utf-8")
    detail = r"agent failed for message \S+: the agent returned 401: check agent\.api_key \(POST "
    assert re.search(detail, log), log


# --- 4. /status names the session the way a person would ----------------------------------------------------


def test_status_names_the_session_by_person_and_group_title(tmp_path: Path, snapshot: Any) -> None:
    with sandbox_process(tmp_path, None, clean_env(tmp_path)) as (base, _):
        dm = push(base, {"kind": "dm", "user": "user1002", "text": "/status"})[0]
        group = push(base, {"kind": "group", "user": "user1002", "text": "/status", "at_bot": True})[0]
    texts = {"dm": dm, "group": group}
    for text in texts.values():
        assert ":dm:" not in text and ":group:" not in text and "cid" not in text  # no session keys
    normalised = {k: re.sub(r"\d+ s, \d+ connection", "N s, N connection", v) for k, v in texts.items()}
    assert normalised == snapshot
    assert "direct message with Alice Chen" in dm and 'group "测试群", shared by everyone' in group
