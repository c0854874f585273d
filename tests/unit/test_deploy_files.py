"""The deployment files (issue 19): the systemd unit passes ``systemd-analyze verify`` and keeps its
sandboxing; the Containerfile builds from a slim base as a non-root user with a state volume and a health
check on ``/healthz``."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "edgecrab.service"
CONTAINERFILE = ROOT / "Containerfile"


def unit_sections() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)  # systemd repeats keys (SystemCallFilter)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_the_unit_keeps_its_sandboxing_and_restart_policy() -> None:
    service = unit_sections()["Service"]
    expected = {
        "EnvironmentFile": "/etc/edgecrab/edgecrab.env",
        "StateDirectory": "edgecrab",
        "KillSignal": "SIGTERM",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "DynamicUser": "yes",
    }
    for key, value in expected.items():
        assert service.get(key) == value, key
    assert "gateway start" in service["ExecStart"]
    assert unit_sections()["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The unit names /opt/edgecrab/venv; verify checks that ExecStart exists, so point it at this Python's.
    edgecrab = Path(sys.executable).parent / "edgecrab"
    if not edgecrab.exists():
        pytest.skip(f"no edgecrab script beside {sys.executable}")
    unit = tmp_path / "edgecrab.service"
    text = UNIT.read_text(encoding="utf-8")
    unit.write_text(text.replace("/opt/edgecrab/venv/bin/edgecrab", str(edgecrab)), encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    # Warnings (an unknown key, a key in the wrong section) are not errors to systemd: none allowed here.
    assert str(unit) not in done.stderr, done.stderr


def instructions() -> list[tuple[str, str]]:
    """The Containerfile's instructions, continuation lines joined, comments dropped."""
    joined = CONTAINERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    for raw in joined.splitlines():
        text = raw.strip()
        if text and not text.startswith("#"):
            word, _, rest = text.partition(" ")
            found.append((word.upper(), " ".join(rest.split())))
    return found


def test_the_containerfile_runs_as_a_user_with_a_state_volume_and_a_health_check() -> None:
    steps = instructions()
    first = steps[0]
    assert first[0] == "FROM" and first[1].startswith("python:3.") and first[1].endswith("-slim")
    users = [arg for word, arg in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("VOLUME", "/var/lib/edgecrab") in steps
    env = " ".join(arg for word, arg in steps if word == "ENV")
    assert "EDGECRAB_HOME=/var/lib/edgecrab" in env and "DINGTALK_WEBHOOK_PORT=8080" in env
    health = next(arg for word, arg in steps if word == "HEALTHCHECK")
    assert "/healthz" in health and "127.0.0.1:8080" in health
    assert json.loads(next(arg for word, arg in steps if word == "ENTRYPOINT")) == ["edgecrab"]
    assert json.loads(next(arg for word, arg in steps if word == "CMD")) == ["gateway", "start"]
    # Everything it copies exists, so the build's COPY steps cannot fail on a renamed path.
    for word, arg in steps:
        if word == "COPY":
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_the_health_check_command_is_valid_python() -> None:
    health = next(arg for word, arg in instructions() if word == "HEALTHCHECK")
    argv = json.loads(health.split("CMD", 1)[1])
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "HEALTHCHECK", "exec")
