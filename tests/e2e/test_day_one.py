"""What a new user meets on day one (issue 15), through the real ``edgecrab`` command as a subprocess:
broken hook files, environment variables beside a config file, the sandbox's own state, the shipped example
hooks, wrong credentials, a busy port, and who may talk to the bot."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BAD_HOOKS = ROOT / "tests" / "hooks_fixtures" / "bad"
EDGECRAB = [sys.executable, "-m", "edgecrab"]

pytestmark = pytest.mark.timeout(60)


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
    env["EDGECRAB_HOME"] = str(tmp_path / "home")
    env.update(extra)
    return env


def edgecrab(
    *argv: str, cwd: Path, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGECRAB, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- 1. a broken hook file is a start-up error, in both modes -------------------------------------------

BROKEN = {
    "syntax_error.py": (5, "SyntaxError"),
    "import_error.py": (3, "No module named 'edgecrab_no_such_module'"),
    "misspelled_hook.py": (7, "unknown hook 'prepare_replay'"),
    "wrong_argument.py": (7, "prepare_reply cannot take 'text'"),
}


@pytest.mark.parametrize("sandbox", [False, True], ids=["gateway", "sandbox"])
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_hook_file_stops_start_up_with_its_file_and_line(
    tmp_path: Path, name: str, sandbox: bool
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / name).write_bytes((BAD_HOOKS / name).read_bytes())
    config = tmp_path / "edgecrab.yaml"
    config.write_text(
        "platforms:\n  dingtalk:\n    app_key: key\n    app_secret: secret\n"
        f"    api_base: http://127.0.0.1:{closed_port()}\n",
        encoding="utf-8",
    )
    env = clean_env(tmp_path)
    argv = ["--config", str(config), "gateway", "start"] + (["--sandbox", "--port", "0"] if sandbox else [])
    started = time.monotonic()
    done = edgecrab(*argv, cwd=tmp_path, env=env, timeout=15)
    elapsed = time.monotonic() - started
    line, what = BROKEN[name]
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert f"{hooks / name} (line {line})" in done.stderr and what in done.stderr, output
    for wrong in ("ExceptionGroup", "TaskGroup", "Traceback", "unexpected error", "skipped"):
        assert wrong not in output, output


# --- 2. the product page's variables are the defaults of their keys, with a config file too ---------------

PRODUCT_ENV = {
    "DINGTALK_APP_KEY": "dingenvkey",
    "DINGTALK_APP_SECRET": "env-secret-0123456789",
    "DINGTALK_ROBOT_CODE": "dingenvrobot",
    "DINGTALK_ALLOWED_USERS": "staff1,staff2",
    "DINGTALK_WEBHOOK_PORT": "9100",
}


def test_environment_variables_fill_the_keys_a_config_file_leaves_out(tmp_path: Path) -> None:
    config = tmp_path / "edgecrab.yaml"
    config.write_text("agent:\n  type: echo\n", encoding="utf-8")
    env = clean_env(tmp_path, **PRODUCT_ENV)
    done = edgecrab("--config", str(config), "config", "validate", cwd=tmp_path, env=env)
    assert (done.returncode, done.stdout) == (0, f"config OK: {config}\n"), done.stderr
    shown = yaml.safe_load(edgecrab("--config", str(config), "config", "show", cwd=tmp_path, env=env).stdout)
    dingtalk = shown["platforms"]["dingtalk"]
    assert (dingtalk["app_key"], dingtalk["app_secret"]) == ("dingenvkey", "***")
    assert dingtalk["robot_code"] == "dingenvrobot" and dingtalk["allowed_users"] == ["staff1", "staff2"]
    assert shown["http"]["port"] == 9100


def test_a_value_in_the_file_wins_over_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "edgecrab.yaml"
    config.write_text(
        "platforms:\n  dingtalk:\n    app_key: dingfilekey\n    allowed_users: [fileuser]\n"
        "http:\n  port: 8081\n",
        encoding="utf-8",
    )
    env = clean_env(tmp_path, **PRODUCT_ENV)
    shown = yaml.safe_load(edgecrab("--config", str(config), "config", "show", cwd=tmp_path, env=env).stdout)
    dingtalk = shown["platforms"]["dingtalk"]
    assert dingtalk["app_key"] == "dingfilekey" and dingtalk["allowed_users"] == ["fileuser"]
    assert shown["http"]["port"] == 8081
    assert dingtalk["robot_code"] == "dingenvrobot"  # left out of the file: the variable


def test_without_the_variables_a_missing_key_still_says_which_variable_to_set(tmp_path: Path) -> None:
    config = tmp_path / "edgecrab.yaml"
    config.write_text("agent:\n  type: echo\n", encoding="utf-8")
    done = edgecrab("--config", str(config), "config", "validate", cwd=tmp_path, env=clean_env(tmp_path))
    assert done.returncode == 2
    assert "set DINGTALK_APP_KEY" in done.stderr and "set DINGTALK_APP_SECRET" in done.stderr


def test_config_show_says_where_each_value_came_from(tmp_path: Path, snapshot: Any) -> None:
    config = tmp_path / "edgecrab.yaml"
    config.write_text(
        "platforms:\n"
        "  dingtalk:\n"
        "    app_secret: ${MY_APP_SECRET}\n"
        "    reply_format: text\n"
        "agent:\n"
        "  type: openai\n"
        "  model: deepseek-chat\n"
        "  api_key: sk-file-secret-0123\n"
        "commands:\n"
        '  aliases: {"/clear": "/new"}\n',
        encoding="utf-8",
    )
    env = clean_env(
        tmp_path, MY_APP_SECRET="my-secret-value-42", DINGTALK_APP_KEY="dingenvkey",
        DINGTALK_WEBHOOK_PORT="9100",
    )
    done = edgecrab("--config", str(config), "config", "show", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    for secret in ("my-secret-value-42", "sk-file-secret-0123"):
        assert secret not in done.stdout
    assert done.stdout.replace(str(tmp_path), "<tmp>") == snapshot


# --- 3. config validate --sandbox; 4. the sandbox never touches the gateway's own state -----------------

URL = re.compile(r"open (http://127\.0\.0\.1:\d+)/ to chat")


@contextlib.contextmanager
def sandbox_process(
    tmp_path: Path, config: Path | None, env: dict[str, str], extra: tuple[str, ...] = ()
) -> Iterator[tuple[str, list[str]]]:
    """``edgecrab gateway start --sandbox --port 0``; yields the emulator's base URL and its stdout lines
    so far, and stops it with SIGTERM (asserting a clean exit) afterwards."""
    argv = [*EDGECRAB, *(["--config", str(config)] if config else []), "gateway", "start", "--sandbox"]
    argv += ["--port", "0", *extra]
    with open(tmp_path / "sandbox.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    lines: list[str] = []
    urls: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if match := URL.search(line):
                urls.put(match.group(1))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        try:
            url = urls.get(timeout=20)
        except queue.Empty:
            raise AssertionError((tmp_path / "sandbox.log").read_text()) from None
        yield url, lines
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0, (tmp_path / "sandbox.log").read_text()


def chat(base: str, text: str, user: str | None = None, overrides: dict[str, str] | None = None) -> str:
    """Send ``text`` to the bot in a DM, as ``user`` (staff id, nick or DingTalk id; default the emulator's
    first user) with ``overrides`` of payload fields; the bot's first reply."""
    body: dict[str, Any] = {"kind": "dm", "text": text, "overrides": overrides or {}}
    if user is not None:
        body["user"] = user
    with httpx.Client(base_url=base, timeout=5) as client:
        data = client.post("/_fake/push", json=body).json()["data"]
        cid = data["conversationId"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            out = client.get("/_fake/outbound", params={"conversation_id": cid}).json()["outbound"]
            if out:
                return str(out[0]["text"])
            time.sleep(0.05)
    raise AssertionError(f"no reply to {text!r}")


def test_config_validate_sandbox_checks_the_way_the_sandbox_runs(tmp_path: Path) -> None:
    config = tmp_path / "edgecrab.yaml"
    config.write_text("agent:\n  type: echo\n", encoding="utf-8")  # no credentials anywhere
    env = clean_env(tmp_path)
    assert edgecrab("--config", str(config), "config", "validate", cwd=tmp_path, env=env).returncode == 2
    done = edgecrab("--config", str(config), "config", "validate", "--sandbox", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"config OK (as the sandbox runs it): {config}\n"
    shown = edgecrab("--config", str(config), "config", "show", "--sandbox", cwd=tmp_path, env=env).stdout
    assert re.search(r"url: sqlite:///.*/home/sandbox\.db +# sandbox", shown), shown
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  type: echoo\n", encoding="utf-8")
    done = edgecrab("--config", str(bad), "config", "validate", "--sandbox", cwd=tmp_path, env=env)
    assert done.returncode == 2 and "did you mean `echo`?" in done.stderr


def test_the_sandbox_keeps_its_state_apart_from_the_gateways(tmp_path: Path) -> None:
    production = tmp_path / "prod" / "state.db"
    production.parent.mkdir()
    config = tmp_path / "edgecrab.yaml"
    config.write_text(f"agent:\n  type: echo\nstorage:\n  url: sqlite:///{production}\n", encoding="utf-8")
    env = clean_env(tmp_path)
    with sandbox_process(tmp_path, config, env) as (base, lines):
        assert "hello sandbox" in chat(base, "hello sandbox")
        assert any(str(tmp_path / "home" / "sandbox.db") in line for line in lines), lines
    assert not production.exists() and list(production.parent.iterdir()) == []
    assert (tmp_path / "home" / "sandbox.db").exists()


# --- 5. the shipped example hooks are inert until switched on ---------------------------------------------


def test_the_example_hooks_do_nothing_until_switched_on(tmp_path: Path) -> None:
    # The quick start from the repository root: no config, ./hooks is the repository's examples.
    shutil.copytree(ROOT / "hooks", tmp_path / "hooks", ignore=shutil.ignore_patterns("__pycache__"))
    before = sorted(p.name for p in tmp_path.iterdir())
    with sandbox_process(tmp_path, None, clean_env(tmp_path)) as (base, _):
        reply = chat(base, "my private words")
    assert "my private words" in reply and "sent by edgecrab" not in reply, reply  # the old default footer
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "home", "sandbox.log"])  # no audit
    log = (tmp_path / "sandbox.log").read_text()
    for name in ("10_audit_log", "20_keyword_veto", "30_ping_command", "40_reply_footer"):
        assert len(re.findall(rf"\[hooks\] loaded {name} from .*{name}\.py: ", log)) == 1, log
    assert "10_audit_log is off: set hooks.config.10_audit_log.path" in log
    assert "40_reply_footer is off: set hooks.config.40_reply_footer.footer" in log


def test_the_example_hooks_work_once_their_settings_turn_them_on(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "hooks", tmp_path / "hooks", ignore=shutil.ignore_patterns("__pycache__"))
    config = tmp_path / "edgecrab.yaml"
    config.write_text(
        "hooks:\n  config:\n"
        "    10_audit_log: {path: audit.jsonl}\n    40_reply_footer: {footer: '-- a bot'}\n",
        encoding="utf-8",
    )
    with sandbox_process(tmp_path, config, clean_env(tmp_path)) as (base, _):
        reply = chat(base, "hello hooks")
        audit = tmp_path / "audit.jsonl"
        deadline = time.monotonic() + 5  # the reply_sent line follows the send
        while audit.read_text(encoding="utf-8").count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert reply.endswith("\n\n-- a bot"), reply
    assert [json.loads(line)["event"] for line in audit.read_text(encoding="utf-8").splitlines()] == [
        "message", "reply"
    ]


# --- 7. --port: the real default in the help; a busy port says which and how to pick another -----------


def test_port_help_says_the_real_default(tmp_path: Path) -> None:
    from edgecrab import cli
    from edgecrab.sandbox import DEFAULT_PORT

    done = edgecrab("gateway", "start", "--help", cwd=tmp_path, env=clean_env(tmp_path))
    assert done.returncode == 0
    help_text = " ".join(done.stdout.split())
    assert f"(default: {DEFAULT_PORT}; 0 picks a free one)" in help_text, help_text
    assert "automatic" not in help_text
    assert cli.SANDBOX_PORT == DEFAULT_PORT


def test_a_busy_port_says_which_and_how_to_pick_another(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = edgecrab(
            "gateway", "start", "--sandbox", "--port", str(port), cwd=tmp_path, env=clean_env(tmp_path)
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "--port N" in done.stderr and "--port 0" in done.stderr
    for wrong in ("ExceptionGroup", "Traceback", "unexpected error"):
        assert wrong not in done.stderr


# --- 6. started once up, connected or not; wrong credentials at start-up exit 2 ----------------------------


@contextlib.contextmanager
def process(
    argv: list[str], tmp_path: Path, env: dict[str, str], name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``edgecrab argv`` with stdout and stderr in ``tmp_path/name``; killed afterwards if still running."""
    with open(tmp_path / name, "wb") as log:
        proc = subprocess.Popen(
            [*EDGECRAB, *argv], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def wait_for_text(path: Path, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(encoding="utf-8", errors="replace")
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in:\n{path.read_text(encoding='utf-8', errors='replace')}")


@contextlib.contextmanager
def emulator(tmp_path: Path) -> Iterator[str]:
    """``edgecrab sandbox --port 0``, the DingTalk emulator alone; yields its api_base."""
    with process(["sandbox", "--port", "0"], tmp_path, clean_env(tmp_path), "emulator.log") as proc:
        text = wait_for_text(tmp_path / "emulator.log", "DINGTALK_API_BASE=")
        yield re.findall(r"DINGTALK_API_BASE=(\S+)", text)[0]
        proc.send_signal(signal.SIGINT)


def test_started_is_logged_while_dingtalk_cannot_be_reached(tmp_path: Path) -> None:
    env = clean_env(
        tmp_path, DINGTALK_APP_KEY="k", DINGTALK_APP_SECRET="s",
        DINGTALK_API_BASE=f"http://127.0.0.1:{closed_port()}",
    )
    with process(["gateway", "start"], tmp_path, env, "gateway.log") as proc:
        log = wait_for_text(tmp_path / "gateway.log", "[gateway] started")
        assert "[dingtalk] connected" not in log
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_wrong_credentials_at_start_up_exit_2_with_the_hint(tmp_path: Path) -> None:
    from edgecrab.config import SANDBOX_APP_KEY

    with emulator(tmp_path) as api_base:
        env = clean_env(
            tmp_path, DINGTALK_APP_KEY=SANDBOX_APP_KEY, DINGTALK_APP_SECRET="not-the-secret",
            DINGTALK_API_BASE=api_base,
        )
        started = time.monotonic()
        done = edgecrab("gateway", "start", cwd=tmp_path, env=env, timeout=20)
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 5
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("edgecrab: DingTalk refused the app credentials"), done.stderr
    assert "DINGTALK_APP_KEY / DINGTALK_APP_SECRET" in last and "not-the-secret" not in done.stderr
    assert "[gateway] started" in done.stderr
    for wrong in ("ExceptionGroup", "Traceback", "unexpected error"):
        assert wrong not in done.stderr


def test_a_401_after_a_connection_worked_keeps_retrying(tmp_path: Path) -> None:
    from edgecrab.config import SANDBOX_APP_KEY, SANDBOX_APP_SECRET

    config = tmp_path / "edgecrab.yaml"
    config.write_text(
        "platforms:\n  dingtalk:\n    reconnect_initial_s: 0.1\n    reconnect_max_s: 0.5\n", encoding="utf-8"
    )
    with emulator(tmp_path) as api_base, httpx.Client(base_url=api_base, timeout=5) as fake:
        env = clean_env(
            tmp_path, DINGTALK_APP_KEY=SANDBOX_APP_KEY, DINGTALK_APP_SECRET=SANDBOX_APP_SECRET,
            DINGTALK_API_BASE=api_base,
        )
        argv = ["--config", str(config), "gateway", "start"]
        with process(argv, tmp_path, env, "gateway.log") as proc:
            wait_for_text(tmp_path / "gateway.log", "[dingtalk] connected")
            fake.post("/_fake/faults", json={"reject_credentials": True}).raise_for_status()
            fake.post("/_fake/abort", json={}).raise_for_status()
            log = wait_for_text(tmp_path / "gateway.log", "authentication failed")
            deadline = time.monotonic() + 10  # a second refusal: it retried instead of stopping
            while log.count("authentication failed") < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
                log = (tmp_path / "gateway.log").read_text()
            assert log.count("authentication failed") >= 2 and proc.poll() is None, log
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


# --- 8. access: the organisation and a few guests -------------------------------------------------------

GUEST = "王五 (external)"  # the emulator's one user from another organisation (no staff id)


def test_allow_own_org_lets_the_organisation_in_beside_a_listed_guest(tmp_path: Path) -> None:
    with sandbox_process(tmp_path, None, clean_env(tmp_path)) as (base, _):
        users = httpx.get(f"{base}/_fake/users", timeout=5).json()["users"]
    guest_id = next(u["dingtalk_id"] for u in users if u["nick"] == GUEST)
    config = tmp_path / "edgecrab.yaml"
    config.write_text(
        f"platforms:\n  dingtalk:\n    allowed_users: ['{guest_id}']\n    allow_own_org: true\n",
        encoding="utf-8",
    )
    with sandbox_process(tmp_path, config, clean_env(tmp_path)) as (base, _):
        assert "echo: from a member" in chat(base, "from a member", user="manager807")
        assert "echo: from the guest" in chat(base, "from the guest", user=GUEST)
    listed_only = tmp_path / "listed.yaml"
    listed_only.write_text(f"platforms:\n  dingtalk:\n    allowed_users: ['{guest_id}']\n", encoding="utf-8")
    with sandbox_process(tmp_path, listed_only, clean_env(tmp_path)) as (base, _):
        assert "not on this bot's allowed list" in chat(base, "from a member", user="user1001")


def test_a_sender_whose_organisation_is_unknown_is_told_so(tmp_path: Path) -> None:
    with sandbox_process(tmp_path, None, clean_env(tmp_path)) as (base, _):
        notice = chat(base, "hello", user="user1002", overrides={"senderCorpId": ""})
    assert "didn't say which organisation" in notice and "`user1002`" in notice
    assert "another organisation" not in notice
