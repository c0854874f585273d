"""The command agent: any program is the agent, conversation in on stdin, reply out on stdout.

``agent.command`` is an argv list (no shell). The program gets one JSON object on stdin::

    {"messages": [{"role": "user", "content": "hi"}, ...], "system_prompt": "...",
     "session_key": "...", "message_id": "...", "metadata": {...},
     "attachments": [{"kind": "picture", "name": "...", "path": "/...", "mime": "image/png", "size": 1234,
                      "note": ""}, ...]}

``attachments`` are the new message's files, downloaded (:mod:`edgecrab.media`): read them at ``path``
(they are deleted after ``media.keep_hours``); ``note`` says why one has no file.

(plus ``"attachments_dir"``, a folder made for the run: files the program writes there are sent after its
answer as pictures or files, :mod:`edgecrab.agents.attachments`) and its stdout, stripped, is the reply.
When the answer is shown live (``reply_mode: card``), each line the
program writes is shown as soon as it ends: flush stdout after each line (``print(..., flush=True)``).
On timeout or cancellation (``/stop``) the process (and, on POSIX, its whole process group, so ``sh -c``
children go too) gets SIGTERM, then SIGKILL 0.5 s later.

The program gets only what it needs: its environment is :data:`INHERITED` taken from the gateway's (``PATH``
to find programs, ``HOME``, locale and time zone, ``TMPDIR``) plus ``agent.env`` and
``EDGECRAB_ATTACHMENTS_DIR``, and nothing else, so the
gateway's own secrets (``DINGTALK_APP_SECRET``, ``OPENAI_API_KEY``, ...) never reach it; pass one on purpose
through ``agent.env`` (``MY_KEY: ${MY_KEY}``). Its stderr goes to the gateway's log (capped at
:data:`STDERR_LOGGED` characters, control characters escaped by the log set-up), never to the chat: a failure
tells the user only "the agent command failed (exit N)".
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from edgecrab.agents.attachments import from_folder
from edgecrab.agents.base import Agent, AgentError, Deltas, ignore_deltas
from edgecrab.config import AgentConfig
from edgecrab.events import AgentRequest, AgentResult

log = logging.getLogger("edgecrab.agents.command")

_POSIX = os.name == "posix"
_STDOUT_LIMIT = 8 * 1024 * 1024
_STDERR_LIMIT = 64 * 1024
_KILL_GRACE_S = 0.5
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""The gateway's environment variables the command sees (when set); ``agent.env`` adds to them."""
STDERR_LOGGED = 2000
"""The last this many characters of the command's stderr go to the log."""


def command_env(extra: Mapping[str, str], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The command's whole environment: :data:`INHERITED` from ``environ`` plus ``extra`` (``agent.env``)."""
    env = {name: environ[name] for name in INHERITED if name in environ}
    env.update({str(k): str(v) for k, v in extra.items()})
    return env


class CommandAgent(Agent):
    name = "command"

    def __init__(self, config: AgentConfig) -> None:
        if not config.command:
            raise ValueError(
                "agent.command (an argv list, e.g. ['python', 'bot.py']) is required for type 'command'"
            )
        self.argv = [str(arg) for arg in config.command]
        self._env = command_env(config.env)
        self._timeout_s = config.timeout_s
        self._system_prompt = config.system_prompt

    def build_input(self, request: AgentRequest, attachments_dir: str = "") -> bytes:
        """The JSON document written to the command's stdin."""
        document = {
            "messages": request.messages,
            "system_prompt": request.system_prompt or self._system_prompt,
            "session_key": request.session_key,
            "message_id": request.message_id,
            "metadata": request.metadata,
            "attachments": request.attachments,
        }
        if attachments_dir:
            document["attachments_dir"] = attachments_dir
        return json.dumps(document, ensure_ascii=False, default=str).encode("utf-8") + b"\n"

    async def run(self, request: AgentRequest) -> AgentResult:
        return await self.stream(request, ignore_deltas)

    async def stream(self, request: AgentRequest, on_delta: Deltas) -> AgentResult:
        """Run the command; each stdout line goes to ``on_delta`` as soon as it ends. The files it leaves
        in its attachments folder are sent after its answer (:mod:`edgecrab.agents.attachments`)."""
        with tempfile.TemporaryDirectory(prefix="edgecrab-attachments-") as folder:
            result = await self._stream(request, on_delta, folder)
            attachments = await anyio.to_thread.run_sync(from_folder, Path(folder))
        return dataclasses.replace(result, attachments=attachments) if attachments else result

    async def _stream(self, request: AgentRequest, on_delta: Deltas, folder: str) -> AgentResult:
        started = time.monotonic()
        payload = self.build_input(request, folder)
        env = {**self._env, "EDGECRAB_ATTACHMENTS_DIR": folder}
        try:
            # Shielded: a cancel arriving while the child already runs but before it is ours to stop (the
            # finally below) would leave it running; the cancel is taken at the next await instead.
            with anyio.CancelScope(shield=True):
                process = await anyio.open_process(self.argv, env=env, start_new_session=_POSIX)
        except OSError as exc:
            raise AgentError(
                f"could not start the agent command {self.argv[0]!r} — check agent.command",
                cause=f"{type(exc).__name__}: {exc}",
            ) from None
        stdout, stderr = bytearray(), bytearray()
        finished = False
        try:
            with anyio.fail_after(self._timeout_s):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_feed, process, payload)
                    tg.start_soon(_drain, process.stdout, stdout, _STDOUT_LIMIT, _Lines(on_delta))
                    tg.start_soon(_drain, process.stderr, stderr, _STDERR_LIMIT)
                await process.wait()
            finished = True
        except TimeoutError:
            raise AgentError(
                f"the agent timed out after {self._timeout_s:g} s — /retry to try again",
                cause=f"{self.argv[0]} (pid {process.pid}) still running after {self._timeout_s:g} s; killed",
            ) from None
        finally:
            with anyio.CancelScope(shield=True):
                if not finished:
                    await _stop(process)
                await process.aclose()
        elapsed = time.monotonic() - started
        return self._result(process.returncode, bytes(stdout), bytes(stderr), elapsed, folder)

    def _result(
        self, code: int | None, stdout: bytes, stderr: bytes, duration: float, folder: str = ""
    ) -> AgentResult:
        # stderr holds diagnostics: the log gets it (the AgentError cause is logged), the chat never.
        err_text = stderr.decode("utf-8", "replace").strip()[-STDERR_LOGGED:]
        cause = f"{self.argv[0]} exited with {code}; stderr: {err_text or '(empty)'}"
        if code:
            if code < 0:
                what = f"the agent command was killed by signal {-code}"
            else:
                what = f"the agent command failed (exit {code})"
            raise AgentError(f"{what} — the gateway's log has its error output", cause=cause)
        reply = stdout.decode("utf-8", "replace").strip()
        if not reply and not (folder and os.listdir(folder)):  # files alone are an answer
            raise AgentError("the agent command printed no reply", cause=cause)
        if err_text:
            log.info("[agent] %s wrote to stderr: %s", self.argv[0], err_text)
        return AgentResult(text=reply, duration_s=duration)


async def _feed(process: anyio.abc.Process, payload: bytes) -> None:
    if process.stdin is None:
        return
    try:
        await process.stdin.send(payload)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass  # the command exited or does not read stdin: its output still counts
    finally:
        await process.stdin.aclose()


class _Lines:
    """Turns stdout bytes into whole lines for ``on_delta`` (the text of a line that has not ended yet is
    held back: the next piece may complete a UTF-8 sequence or the line)."""

    def __init__(self, on_delta: Deltas) -> None:
        self.on_delta = on_delta
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""

    def feed(self, data: bytes, *, final: bool = False) -> None:
        if self.on_delta is ignore_deltas:
            return
        text = self._pending + self._decoder.decode(data, final)
        cut = len(text) if final else text.rfind("\n") + 1
        self._pending = text[cut:]
        if text[:cut]:
            self.on_delta(text[:cut])


async def _drain(
    stream: anyio.abc.ByteReceiveStream | None, into: bytearray, limit: int, lines: _Lines | None = None
) -> None:
    """Read to EOF, keeping the first ``limit`` bytes (reading on: a full pipe blocks the command)."""
    if stream is None:
        return
    async for chunk in stream:
        if len(into) < limit:
            kept = chunk[: limit - len(into)]
            into.extend(kept)
            if lines is not None:
                lines.feed(kept)
    if lines is not None:
        lines.feed(b"", final=True)


def _signal(process: anyio.abc.Process, sig: int) -> None:
    try:
        if _POSIX:
            os.killpg(process.pid, sig)
        elif sig == signal.SIGTERM:
            process.terminate()
        else:
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass  # already gone


async def _stop(process: anyio.abc.Process) -> None:
    """SIGTERM the command (its process group on POSIX), SIGKILL it if it is still there after 0.5 s."""
    _signal(process, signal.SIGTERM)
    with anyio.move_on_after(_KILL_GRACE_S):
        await process.wait()
    if process.returncode is None:
        log.info("[agent] %s ignored SIGTERM; killing it", process.pid)
        _signal(process, getattr(signal, "SIGKILL", signal.SIGTERM))
        await process.wait()
