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

import pytest

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
