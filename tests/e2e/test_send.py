"""Proactive messages (issue 20) through the real ``edgecrab send`` against the emulator (``edgecrab
sandbox``): sent directly (a DM, a group, a message read from stdin, split into ordered chunks), through a
running gateway's ledger and its ``POST /v1/send`` / ``GET /v1/deliveries/{id}`` API, the bearer token
(wrong, none configured), and a staff id DingTalk reports as invalid (exit 1, DingTalk's reason)."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecrab.config import SANDBOX_APP_KEY, SANDBOX_APP_SECRET
from tests.e2e.test_day_one import EDGECRAB, clean_env, closed_port, emulator, process, wait_for_text
from tests.e2e.test_ops_port import wait_until

pytestmark = pytest.mark.timeout(90)

TOKEN = "send-bearer-token-0123456789"
USER = "manager807"


def send(
    tmp_path: Path, env: dict[str, str], *argv: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGECRAB, "--config", str(tmp_path / "edgecrab.yaml"), "send", *argv],
        cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )


@contextlib.contextmanager
def fake_dingtalk(tmp_path: Path, config_text: str) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """The emulator, a config file and the environment pointing ``edgecrab`` at the emulator."""
    (tmp_path / "edgecrab.yaml").write_text(config_text, encoding="utf-8")
    with emulator(tmp_path) as api_base, httpx.Client(base_url=api_base, timeout=5) as fake:
        env = clean_env(
            tmp_path, DINGTALK_APP_KEY=SANDBOX_APP_KEY, DINGTALK_APP_SECRET=SANDBOX_APP_SECRET,
            DINGTALK_API_BASE=api_base,
        )
        yield fake, env


@contextlib.contextmanager
def running_gateway(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    """``edgecrab gateway start`` with the same config; yields its ops URL."""
    with process(["--config", str(tmp_path / "edgecrab.yaml"), "gateway", "start"], tmp_path, env,
                 "gateway.log") as proc:
        log = wait_for_text(tmp_path / "gateway.log", "[gateway] started")
        yield re.findall(r"\[ops\] listening on (http://\S+)", log)[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def outbound(fake: httpx.Client) -> list[dict[str, Any]]:
    return list(fake.get("/_fake/outbound").json()["outbound"])


def test_send_directly_a_dm_a_group_and_stdin(tmp_path: Path) -> None:
    config = "agent:\n  type: echo\nplatforms:\n  dingtalk:\n    max_message_length: 300\n"
    with fake_dingtalk(tmp_path, config) as (fake, env):
        done = send(tmp_path, env, "--user", USER, "Hello **there**")
        assert done.returncode == 0, done.stderr
        assert "sent: 1 message(s)" in done.stdout
        [dm] = outbound(fake)
        assert (dm["via"], dm["user_ids"], dm["msgtype"]) == ("batchSend", [USER], "sampleMarkdown")
        assert "Hello **there**" in dm["text"]

        group = fake.get("/_fake/users").json()["default_group"]
        done = send(tmp_path, env, "--group", group, "--at", USER, "--text", "--title", "Alert", "disk full")
        assert done.returncode == 0, done.stderr
        [_, grp] = outbound(fake)
        assert (grp["via"], grp["conversation_id"], grp["msgtype"]) == ("groupSend", group, "sampleText")
        assert grp["text"] == f"disk full\n@{USER}"

        # A long message from stdin: split as replies are, the chunks arriving in order.
        lines = [f"line {i:03d} of a long report" for i in range(40)]
        done = send(tmp_path, env, "--user", USER, "-", stdin="\n\n".join(lines))
        assert done.returncode == 0, done.stderr
        chunks = outbound(fake)[2:]
        assert len(chunks) > 2
        sent = "".join(c["text"] for c in chunks)
        assert [int(n) for n in re.findall(r"line (\d{3})", sent)] == list(range(40))


def test_an_invalid_staff_id_fails_with_dingtalks_reason(tmp_path: Path) -> None:
    with fake_dingtalk(tmp_path, "agent:\n  type: echo\n") as (fake, env):
        done = send(tmp_path, env, "--user", USER, "--user", "nobody-here-42", "hello")
        assert done.returncode == 1
        assert "staff id nobody-here-42 is invalid" in done.stderr, done.stderr
        assert [r["user_ids"] for r in outbound(fake)] == [[USER]]  # the good one was sent

        usage = send(tmp_path, env, "--user", USER, "--robot", "second", "hello")
        assert usage.returncode == 2
        assert "unknown robot 'second'" in usage.stderr
        # Usage errors say what is wrong with the argument, before anything is sent.
        usage = send(tmp_path, env, "--user", USER, "--timeout", "-1", "hello")
        assert usage.returncode == 2
        assert "--timeout: must be a number of seconds above 0, not '-1'" in usage.stderr
        usage = send(tmp_path, env, "--group", " ", "hello")
        assert usage.returncode == 2
        assert "--group is empty: give the group's openConversationId" in usage.stderr
        assert len(outbound(fake)) == 1


def test_send_through_a_running_gateway_and_its_api(tmp_path: Path) -> None:
    port = closed_port()
    config = f"agent:\n  type: echo\nhttp:\n  port: {port}\n  token: {TOKEN}\n"
    with fake_dingtalk(tmp_path, config) as (fake, env), running_gateway(tmp_path, env) as url:
        done = send(tmp_path, env, "--user", USER, "from the ledger")
        assert done.returncode == 0, done.stderr
        assert f"through the gateway at http://127.0.0.1:{port}" in done.stdout
        assert [r["text"] for r in outbound(fake)] == ["from the ledger"]
        # Plain text through a gateway whose reply_format is markdown: the ledger records the type.
        done = send(tmp_path, env, "--user", USER, "--text", "**not bold**")
        assert done.returncode == 0, done.stderr
        assert f"through the gateway at http://127.0.0.1:{port}" in done.stdout
        assert [(r["msgtype"], r["text"]) for r in outbound(fake)[1:]] == [("sampleText", "not bold")]

        bad = send(tmp_path, env, "--user", "nobody-here-42", "hello")
        assert bad.returncode == 1
        assert "staff id nobody-here-42 is invalid" in bad.stderr

        with httpx.Client(base_url=url, timeout=10) as ops:
            body = {"user": USER, "text": "over the API"}
            assert ops.post("/v1/send", json=body).status_code == 401
            wrong = {"Authorization": "Bearer not-the-token"}
            assert ops.post("/v1/send", json=body, headers=wrong).status_code == 401
            assert ops.get("/v1/deliveries/x", headers=wrong).status_code == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            refused = ops.post("/v1/send", json={"text": "to nobody"}, headers=auth)
            assert refused.status_code == 400
            assert "either user" in refused.json()["error"]
            for bad, error in (
                ({**body, "robot": "nope"}, "unknown robot 'nope': the robots here are 'default'"),
                ({"group": "", "text": "x"}, "group is empty: give the group's openConversationId"),
                ({**body, "format": "html"}, "format must be markdown or text, not 'html'"),
            ):
                refused = ops.post("/v1/send", json=bad, headers=auth)
                assert (refused.status_code, refused.json()["error"]) == (400, error), bad
            answer = ops.post("/v1/send", json=body, headers=auth)
            assert answer.status_code == 202
            delivery = answer.json()["id"]
            assert ops.get("/v1/deliveries/unknown", headers=auth).status_code == 404
            # The delivery ends "sent" (polled: the gateway is another process).
            def finished() -> dict[str, Any] | None:
                state: dict[str, Any] = ops.get(f"/v1/deliveries/{delivery}", headers=auth).json()
                return state if state["state"] != "pending" else None

            state = wait_until(finished)
            assert state["state"] == "sent"
            assert state["replies"][0]["chunks"] == [{"index": 0, "state": "sent", "error": ""}]
        assert outbound(fake)[-1]["text"] == "over the API"
        assert len(outbound(fake)) == 3  # nothing of the refused requests


def test_the_api_is_refused_without_a_configured_token(tmp_path: Path) -> None:
    port = closed_port()
    config = f"agent:\n  type: echo\nhttp:\n  port: {port}\n"
    with fake_dingtalk(tmp_path, config) as (fake, env), running_gateway(tmp_path, env) as url:
        answer = httpx.post(f"{url}/v1/send", json={"user": USER, "text": "hi"}, timeout=10)
        assert answer.status_code == 403
        done = send(tmp_path, env, "--user", USER, "hi")
        assert done.returncode == 1
        assert "set http.token" in done.stderr
        assert outbound(fake) == []
        direct = send(tmp_path, env, "--direct", "--user", USER, "hi")
        assert direct.returncode == 0, direct.stderr
        assert [r["text"] for r in outbound(fake)] == ["hi"]


def test_send_robot_picks_the_robot_and_its_credentials(tmp_path: Path) -> None:
    """Two robots: only the second is an app the emulator knows, so only ``--robot second`` can send."""
    config = (
        "agent:\n  type: echo\nplatforms:\n  dingtalk:\n    robots:\n"
        "      - {name: first, app_key: unknown-app-key, app_secret: unknown-app-secret}\n"
        f"      - {{name: second, app_key: {SANDBOX_APP_KEY}, app_secret: {SANDBOX_APP_SECRET}}}\n"
    )
    with fake_dingtalk(tmp_path, config) as (fake, env):
        done = send(tmp_path, env, "--robot", "second", "--user", USER, "from the second robot")
        assert done.returncode == 0, done.stderr
        assert [r["text"] for r in outbound(fake)] == ["from the second robot"]

        first = send(tmp_path, env, "--user", USER, "from the first robot")  # no --robot: the first
        assert first.returncode == 1 and outbound(fake)[1:] == [], first.stderr

        usage = send(tmp_path, env, "--robot", "third", "--user", USER, "hello")
        assert usage.returncode == 2
        assert "unknown robot 'third': the robots here are 'first', 'second'" in usage.stderr
