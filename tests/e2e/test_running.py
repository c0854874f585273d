"""Running the gateway (issue 15, "Running"), through the real ``edgecrab`` command as a subprocess: stopping
it, what it logs, and what users are told."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_day_one import EDGECRAB, clean_env, wait_for_text

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
