"""What a new user meets on day one (issue 15), through the real ``edgecrab`` command as a subprocess:
broken hook files, environment variables beside a config file, the sandbox's own state, the shipped example
hooks, wrong credentials, a busy port, and who may talk to the bot."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
