"""A real ``redis-server`` for tests (Debian's package; ``.ci/run`` installs it when missing): its own
process on a free 127.0.0.1 port with a temporary directory, AOF on, no RDB snapshots.

Never a fake: the store's atomicity lives in Lua scripts that only a real server runs. Without
``/usr/bin/redis-server`` (or ``$EDGECRAB_REDIS_SERVER``) the tests that need it fail, they do not skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

READY_WITHIN_S = 10.0


def server_binary() -> str:
    found = os.environ.get("EDGECRAB_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).is_file():
        pytest.fail(
            f"redis-server not found ({found}): install Debian's redis-server (apt-get install"
            " redis-server; .ci/run does). The Redis store is tested against a real server, never skipped",
            pytrace=False,
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``start()``/``stop()`` may be called again: the same port and directory, so the data survives (AOF)."""

    def __init__(self, directory: Path, port: int | None = None, extra: list[str] | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra or []
        """More redis-server arguments; later ones win over the defaults."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
        ]
        command += ["--save", "", "--appendonly", "yes", "--maxmemory-policy", "noeviction", *self.extra]
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + READY_WITHIN_S
        while not answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"redis-server on port {self.port} did not start:\n{tail}", pytrace=False)
            time.sleep(0.02)  # polling for readiness, not a wait-then-assert

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
