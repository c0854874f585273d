"""The fakes a run talks to, each a subprocess: DingTalk with the load drivers, and the LLM.

The fake DingTalk is the measuring instrument (it times acks and answers), so it runs in a process of its
own, :mod:`bench.fakeproc`, together with the load drivers of :mod:`bench.drive`: pushing frames and
observing acks and answers happen on the fake's loop, without control-API round trips, and the
orchestrator's work (starting contenders, reading ``/proc``, reports) and its garbage collections never
pause the instrument. :class:`BenchFake` is the orchestrator's handle on that process: it ships load plans
there as JSON and gets the results back. Every (scenario, contender) pair gets a fresh fake process, so no
pending frame, redelivery timer or record leaks from one run into the next.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from bench.drive import AckResult, ItemSpec, LaneSpec, LoadResult
from bench.mediadrive import PictureResult
from edgecrab.testing.fakedingtalk import FakeUser

ROOT = Path(__file__).resolve().parent.parent
APP_KEY = "ding_bench_key"
APP_SECRET = "bench_secret_value_0123456789"
REST_PATHS = ("/robot/*", "/v1.0/*", "/gettoken")
"""Every REST path a contender calls (the websocket ``/connect`` is not REST)."""
START_TIMEOUT_S = 30.0
REPLY_MARGIN_S = 60.0
"""How much longer than a load command's budget its answer may take before the fake counts as hung."""


def make_users(count: int, prefix: str = "u") -> list[FakeUser]:
    """``count`` members of the robot's organisation: one DM conversation each."""
    return [FakeUser(f"{prefix}{i:05d}", f"Bench {prefix}{i}") for i in range(count)]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: no proxy may catch loopback traffic."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.pop("EDGECRAB_CONFIG", None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class FakeProcessError(RuntimeError):
    """The fake's process failed a command, died or stopped answering."""


class BenchFake:
    """A started fake DingTalk in :mod:`bench.fakeproc`, with the bench's app and ``users``.

    Use it as a context manager (or call :meth:`close`): the process is stopped whatever happens, and
    it exits by itself if this process goes away (its stdin closes). ``users[i]`` is user index ``i`` in
    the load plans (:meth:`index`). Its stderr goes to ``log_path`` (an anonymous temporary file if
    ``None``); errors quote the end of it.
    """

    def __init__(
        self, users: list[FakeUser], *, rest_delay_s: float = 0.0, log_path: Path | None = None
    ) -> None:
        self.users = list(users)
        self._index = {user.staff_id: i for i, user in enumerate(self.users)}
        if len(self._index) != len(self.users) or any(u != FakeUser(u.staff_id, u.nick) for u in users):
            raise ValueError("bench users need distinct staff ids and nothing but a staff id and a nick")
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb") if log_path else tempfile.TemporaryFile()  # noqa: SIM115
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.fakeproc"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env=clean_env(),
                cwd=ROOT,
            )
            threading.Thread(
                target=self._pump, args=(self.proc.stdout,), name="bench-fake-reader", daemon=True
            ).start()
            self._send(
                {
                    "app_key": APP_KEY,
                    "app_secret": APP_SECRET,
                    "users": [[u.staff_id, u.nick] for u in self.users],
                    "rest_delay_s": rest_delay_s,
                    "rest_paths": list(REST_PATHS),
                    "seed": 8,
                    # No redelivery during a run: a bot that is slow to ack (the SDK bot) must not be handed
                    # the same frames again, which would measure the fake's retries instead of the bot.
                    "redeliver_after_s": 1e6,
                    "max_redeliveries": 0,
                }
            )
            hello = self._receive("start", START_TIMEOUT_S)
            if "base_url" not in hello:
                raise FakeProcessError(f"the fake DingTalk did not start:\n{hello.get('error', hello)}")
            self.base_url: str = hello["base_url"]
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> BenchFake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def index(self, user: FakeUser) -> int:
        """``user``'s index in the load plans."""
        return self._index[user.staff_id]

    # commands ---------------------------------------------------------------------------------------------
    def wait_connected(self, timeout: float = 30.0, count: int = 1) -> None:
        self._command({"cmd": "wait_connected", "count": count, "timeout": timeout}, timeout)

    def closed_loop(self, lanes: list[LaneSpec], concurrency: int, budget_s: float) -> LoadResult:
        """:func:`bench.drive.closed_loop` on the fake's loop; lanes as (number, user index, text)."""
        command = {"cmd": "closed_loop", "lanes": lanes, "concurrency": concurrency, "budget": budget_s}
        return LoadResult(**self._command(command, budget_s))

    def open_loop(self, items: list[ItemSpec], rate: float, budget_s: float) -> AckResult:
        """:func:`bench.drive.open_loop` on the fake's loop; items as (user index, text)."""
        command = {"cmd": "open_loop", "items": items, "rate": rate, "budget": budget_s}
        return AckResult(**self._command(command, budget_s))

    def pictures_one_by_one(self, path: Path, users: list[int], budget_s: float) -> PictureResult:
        """:func:`bench.mediadrive.one_by_one`: the picture in ``path`` from each of ``users``, in turn."""
        command = {"cmd": "pictures_one_by_one", "path": str(path), "users": users, "budget": budget_s}
        return PictureResult(**self._command(command, budget_s))

    def pictures_at_once(
        self, path: Path, pictures: list[int], dms: list[ItemSpec], rate: float, budget_s: float
    ) -> PictureResult:
        """:func:`bench.mediadrive.at_once`: ``pictures`` at once, ``dms`` at ``rate`` meanwhile."""
        command = {
            "cmd": "pictures_at_once",
            "path": str(path),
            "pictures": pictures,
            "dms": dms,
            "rate": rate,
            "budget": budget_s,
        }
        return PictureResult(**self._command(command, budget_s))

    def close(self, timeout: float = 5.0) -> None:
        """Ask the process to stop, then terminate it, then kill it; safe to call twice."""
        proc = self.proc
        if proc is not None:
            try:
                if proc.poll() is None:
                    try:
                        self._send({"cmd": "close"})
                        assert proc.stdin is not None
                        proc.stdin.close()
                    except (OSError, ValueError, FakeProcessError):
                        pass
                    _wait(proc, timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                for stream in (proc.stdin, proc.stdout):
                    if stream is not None:
                        try:
                            stream.close()
                        except OSError:
                            pass
        self._log.close()

    # plumbing ---------------------------------------------------------------------------------------------
    def _command(self, command: dict[str, Any], budget_s: float) -> Any:
        self._send(command)
        answer = self._receive(command["cmd"], budget_s + REPLY_MARGIN_S)
        if not answer.get("ok"):
            raise FakeProcessError(
                f"the fake DingTalk failed {command['cmd']}:\n{answer.get('error', answer)}"
            )
        return answer["result"]

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise FakeProcessError(f"the fake DingTalk is gone{self._tail()}") from None

    def _receive(self, what: str, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            tail = self._tail()
            self.close()
            raise FakeProcessError(
                f"the fake DingTalk did not answer {what} within {timeout:g} s{tail}"
            ) from None
        if line is None:
            assert self.proc is not None
            code = _wait(self.proc, 5.0)
            raise FakeProcessError(f"the fake DingTalk exited (code {code}) during {what}{self._tail()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _pump(self, stdout: IO[bytes]) -> None:
        """A thread: every line the process answers, then ``None`` at its end."""
        try:
            for line in stdout:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(None)

    def _tail(self, size: int = 3000) -> str:
        """The end of the process's stderr, for error messages."""
        try:
            end = os.fstat(self._log.fileno()).st_size
            text = os.pread(self._log.fileno(), size, max(0, end - size)).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        where = f" (log {self.log_path})" if self.log_path else ""
        return f"; its stderr{where} ends:\n{text}" if text.strip() else where


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait for ``proc`` to exit; SIGTERM it after ``timeout``, SIGKILL it after another ``timeout``."""
    for step in (None, proc.terminate, proc.kill):
        if step is not None and proc.poll() is None:
            step()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


class LlmServer:
    """:mod:`bench.llm` as a subprocess: an OpenAI-compatible server that answers after ``delay_s``."""

    def __init__(
        self,
        delay_s: float,
        log_path: Path,
        token_delay_s: float = 0.0,
        reply_words: int = 0,
        stamps: Path | None = None,
    ) -> None:
        """``stamps``: a file where the server notes every chat request (``bench.llm --stamps``)."""
        self._log = open(log_path, "wb")  # closed in close()
        argv = [sys.executable, "-m", "bench.llm", "--delay", str(delay_s)]
        if stamps is not None:
            argv += ["--stamps", str(stamps)]
        if reply_words:
            argv += ["--token-delay", str(token_delay_s), "--reply-words", str(reply_words)]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=clean_env(),
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError(f"the fake LLM did not start; see {log_path}")
        self.base_url: str = json.loads(line)["base_url"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
