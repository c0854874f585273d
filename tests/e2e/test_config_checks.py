"""What ``edgecrab config validate`` says about trust settings (issues 16, 18), through the CLI as a
subprocess: ``extra_allowed_hosts`` and ``media.allowed_hosts`` entries that are not plain hosts are errors
naming the key; plain ``http://`` to a host off this machine for ``api_base`` or ``agent.base_url`` is
warned about."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HEAD = "platforms:\n  dingtalk:\n    app_key: key-id-0001\n    app_secret: app-secret-0001\n"


def validate(tmp: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp / "edgecrab.yaml"
    config.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
    env["EDGECRAB_HOME"] = str(tmp)
    return subprocess.run(
        [sys.executable, "-m", "edgecrab", "--config", str(config), "config", "validate"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )


def test_extra_allowed_hosts_that_are_not_hosts_are_errors_with_the_key_and_a_hint(tmp_path: Path) -> None:
    done = validate(
        tmp_path,
        HEAD + "    extra_allowed_hosts:\n      - hooks.example.org\n      - 10.0.0.0/8\n      - '*'\n"
        "      - https://relay.example.org/robot\n",
    )
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr
    assert "platforms.dingtalk.extra_allowed_hosts[1] (line 7): `10.0.0.0/8`: a CIDR range" in err, err
    assert "platforms.dingtalk.extra_allowed_hosts[2] (line 8): `*`: wildcards are not supported" in err
    assert "extra_allowed_hosts[3] (line 9): `https://relay.example.org/robot`: a URL" in err
    assert "hint: list plain host names or IP addresses" in err
    assert "extra_allowed_hosts[0]" not in err


def test_media_allowed_hosts_that_are_not_hosts_are_errors_not_a_crash_at_start(tmp_path: Path) -> None:
    done = validate(
        tmp_path,
        HEAD + "media:\n  allowed_hosts:\n    - files.example.org:8443\n    - 'files:abc'\n"
        "    - '*.example.org'\n",
    )
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr
    assert "media.allowed_hosts[1] (line 8): `files:abc`: port `abc` is not a port number" in err, err
    assert "media.allowed_hosts[2] (line 9): `*.example.org`: wildcards are not supported" in err
    assert "allowed_hosts[0]" not in err


def test_plain_http_off_this_machine_is_warned_about_by_validate(tmp_path: Path) -> None:
    done = validate(
        tmp_path,
        HEAD + "    api_base: http://dingtalk-proxy.example.com:8080\n"
        "agent:\n  type: openai\n  model: m\n  base_url: http://10.0.0.7:8000/v1\n",
    )
    assert done.returncode == 0, done.stderr
    assert "warning: platforms.dingtalk.api_base uses plain http:// to dingtalk-proxy.example.com" in (
        done.stderr
    )
    assert "warning: agent.base_url uses plain http:// to 10.0.0.7" in done.stderr
    assert "clear text" in done.stderr
    quiet = validate(
        tmp_path,
        HEAD + "    api_base: http://127.0.0.1:8080\n"
        "agent:\n  type: openai\n  model: m\n  base_url: http://localhost:11434/v1\n",
    )
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr


def test_plain_http_off_this_machine_is_warned_about_at_start_up(tmp_path: Path) -> None:
    config = tmp_path / "edgecrab.yaml"
    # The sandbox (its own emulator on loopback) is enough: the warning comes before the gateway starts.
    config.write_text(
        HEAD + "agent:\n  type: openai\n  model: m\n  base_url: http://10.0.0.7:8000/v1\n"
        f"storage:\n  url: sqlite:///{tmp_path / 'state.db'}\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
    env["EDGECRAB_HOME"] = str(tmp_path)
    with subprocess.Popen(
        [sys.executable, "-m", "edgecrab", "--config", str(config), "gateway", "start", "--sandbox"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "agent.base_url uses plain http://" in line:
                    assert " WARNING [config] " in line
                    break
            else:
                raise AssertionError("no warning before the output ended")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
