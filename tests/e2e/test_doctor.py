"""``edgecrab doctor`` (issue 19) through the real command, against ``edgecrab sandbox``: good credentials
pass, wrong ones fail with the fix, a dead agent fails, a busy port fails, an invalid config exits 2."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edgecrab.config import SANDBOX_APP_KEY, SANDBOX_APP_SECRET
from tests.e2e.test_day_one import clean_env, closed_port, edgecrab, emulator

pytestmark = pytest.mark.timeout(60)

CHECKS = ("config", "hooks", "state directory", "token", "clock", "stream ticket", "agent", "ops port")


def doctor(
    tmp_path: Path, api_base: str, config_text: str, secret: str = SANDBOX_APP_SECRET
) -> tuple[int, str]:
    config = tmp_path / "edgecrab.yaml"
    config.write_text(config_text, encoding="utf-8")
    env = clean_env(
        tmp_path, DINGTALK_APP_KEY=SANDBOX_APP_KEY, DINGTALK_APP_SECRET=secret, DINGTALK_API_BASE=api_base
    )
    done = edgecrab("--config", str(config), "doctor", cwd=tmp_path, env=env)
    return done.returncode, done.stdout + done.stderr


def line(output: str, name: str) -> str:
    return next(text for text in output.splitlines() if f"  {name}: " in text)


def test_good_credentials_pass_every_check(tmp_path: Path) -> None:
    with emulator(tmp_path) as api_base:
        code, output = doctor(tmp_path, api_base, "agent:\n  type: echo\n")
    assert code == 0, output
    for name in CHECKS:
        assert line(output, name).startswith("ok "), output
    assert "8 of 8 checks passed" in output and SANDBOX_APP_SECRET not in output


def test_wrong_credentials_fail_with_the_fix(tmp_path: Path) -> None:
    with emulator(tmp_path) as api_base:
        code, output = doctor(tmp_path, api_base, "agent:\n  type: echo\n", secret="not-the-secret")
    assert code == 1, output
    assert line(output, "token").startswith("FAILED") and line(output, "stream ticket").startswith("FAILED")
    assert "fix: check DINGTALK_APP_KEY / DINGTALK_APP_SECRET" in output
    assert line(output, "agent").startswith("ok ") and "not-the-secret" not in output
    assert "failed: token, stream ticket" in output, output


def test_a_dead_agent_and_a_busy_port_fail(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = (
            f"agent:\n  type: openai\n  base_url: http://127.0.0.1:{closed_port()}/v1\n  model: m\n"
            f"http:\n  port: {port}\n"
        )
        with emulator(tmp_path) as api_base:
            code, output = doctor(tmp_path, api_base, config)
    assert code == 1, output
    assert line(output, "agent").startswith("FAILED") and "cannot be reached: refused" in output
    assert line(output, "ops port").startswith("FAILED") and f"127.0.0.1:{port} cannot be opened" in output
    assert line(output, "token").startswith("ok ")


def test_sandbox_mode_needs_no_emulator_and_an_invalid_config_exits_2(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    done = edgecrab("doctor", "--sandbox", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert line(done.stdout, "stream ticket").startswith("ok ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  type: nonsense\n", encoding="utf-8")
    done = edgecrab("--config", str(bad), "doctor", "--sandbox", cwd=tmp_path, env=env)
    assert done.returncode == 2 and "agent.type" in done.stderr, done.stderr


CARD_CONFIG = "agent:\n  type: echo\nplatforms:\n  dingtalk:\n    reply_mode: card\n"


def test_card_mode_checks_the_card_permissions(tmp_path: Path) -> None:
    import httpx

    with emulator(tmp_path) as api_base:
        code, output = doctor(tmp_path, api_base, CARD_CONFIG)
        assert code == 0, output
        assert line(output, "card permissions").startswith("ok "), output
        httpx.post(f"{api_base}/_fake/cards/settings", json={"revoke": ["Card.Streaming.Write"]}, timeout=5)
        code, output = doctor(tmp_path, api_base, CARD_CONFIG)
    assert code == 1, output
    assert line(output, "card permissions").startswith("FAILED"), output
    assert "Card.Streaming.Write" in output and "Card.Instance.Write and Card.Streaming.Write" in output
    assert "failed: card permissions" in output, output


def test_markdown_mode_does_not_probe_cards(tmp_path: Path) -> None:
    with emulator(tmp_path) as api_base:
        code, output = doctor(tmp_path, api_base, "agent:\n  type: echo\n")
    assert code == 0 and "card permissions" not in output, output
