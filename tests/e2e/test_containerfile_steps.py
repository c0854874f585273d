"""The Containerfile's own steps, run here without a container engine (issue 19): its COPY sources into a
build folder, its ``RUN python -m venv ... && pip install .`` (offline: the project's dependencies come from
the test environment, so nothing leaves this machine), then the image's ENTRYPOINT and CMD with its ENV, and
its HEALTHCHECK command, which must report the running gateway healthy (and unhealthy once it stopped)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.unit.test_deploy_files import ROOT, instructions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_image_steps_build_start_and_report_healthy(tmp_path: Path) -> None:
    steps = instructions()
    src = tmp_path / "src"
    src.mkdir()
    for word, arg in steps:  # COPY, relative to WORKDIR /src: "a b ./" into the folder, "a ./b" as b
        if word == "COPY":
            *sources, target = arg.split()
            for source in sources:
                dest = src / target / Path(source).name if target.endswith("/") else src / target
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, dest, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / source, dest)
    run = next(arg for word, arg in steps if word == "RUN" and "venv" in arg)
    assert "python -m venv /opt/edgecrab" in run and "/opt/edgecrab/bin/pip install ." in run
    venv = tmp_path / "opt-edgecrab"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # Offline: the dependencies (and the build backend) are the test environment's, seen through a .pth file.
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    (Path(purelib) / "outer-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "."], cwd=src, check=True)
    env_words = " ".join(arg for word, arg in steps if word == "ENV")
    image_env = dict(re.findall(r"(\w+)=(\S+)", env_words.replace("\\", " ")))
    port = free_port()
    home = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
    env |= {k: v for k, v in image_env.items() if k.startswith(("EDGECRAB_", "DINGTALK_", "PYTHON"))}
    env |= {"EDGECRAB_HOME": str(home), "DINGTALK_WEBHOOK_PORT": str(port), "EDGECRAB_CONFIG": ""}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    entry = json.loads(next(arg for word, arg in steps if word == "ENTRYPOINT"))
    cmd = json.loads(next(arg for word, arg in steps if word == "CMD"))
    health = json.loads(next(arg for word, arg in steps if word == "HEALTHCHECK").split("CMD", 1)[1])
    health = [part.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for part in health]

    def healthy() -> bool:
        return subprocess.run(health, env=env, capture_output=True, timeout=10).returncode == 0

    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:  # the sandbox: the image's command, against the built-in emulator
        proc = subprocess.Popen([*entry, *cmd, "--sandbox", "--port", "0"], env=env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not healthy():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        assert (venv / "bin" / "edgecrab").exists()
        found = subprocess.run(["which", "edgecrab"], env=env, capture_output=True, text=True).stdout
        assert found.startswith(str(venv))
        first = log.read_text(errors="replace").splitlines()[0]
        assert json.loads(first)["level"]  # EDGECRAB_LOG_FORMAT=json from the image's ENV
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    assert code == 0, log.read_text(errors="replace")
    assert not healthy()
