"""The three contenders as subprocesses: ``edgecrab gateway start``, the quick-start SDK bot, the raw bot.

Each is started against one fresh fake (and, for agent scenarios, the fake LLM), waited for until its
websocket is up, and stopped with SIGTERM (SIGKILL after a grace period: the SDK bot may be stuck in a
blocking ``requests`` call and ``start_forever`` restarts itself after a signal it swallowed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.fakes import APP_KEY, APP_SECRET, BenchFake, clean_env

ROOT = Path(__file__).resolve().parent.parent
EDGECRAB = "edgecrab"
SDK = "sdk"
RAW = "raw"
ALL = (EDGECRAB, SDK, RAW)
LABELS = {EDGECRAB: "edgecrab", SDK: "SDK 0.24.3 quick-start bot", RAW: "raw limit"}

RAISED_QPS = 100_000
CHUNK_INTERVAL_MS = 0
"""Bench users answer within a millisecond of a reply, which no person does; with the default 300 ms the
per-conversation pacing would cap each conversation at ~3 messages/s and measure the setting, not the code."""
MAX_CONCURRENT_RUNS = 2048
"""For the 2 s agent scenarios: 1,000 simultaneous conversations need more than the default 256 runs."""


def edgecrab_config(
    path: Path, base_url: str, llm_url: str, dingtalk_extra: str = "", agent_extra: str = "", extra: str = ""
) -> Path:
    """A config for the run: rate limits raised, storage in ``path``'s folder, echo or openai agent
    (``agent_extra``: YAML lines added under ``agent``; ``extra``: top-level YAML added at the end)."""
    agent = (
        f"  type: openai\n  base_url: {llm_url}\n  model: fake-model\n  api_key: sk-bench\n  timeout_s: 60\n"
        if llm_url
        else "  type: echo\n"
    ) + agent_extra
    path.write_text(
        f"""# written by bench/contenders.py for one benchmark run
platforms:
  dingtalk:
    app_key: ${{DINGTALK_APP_KEY}}
    app_secret: ${{DINGTALK_APP_SECRET}}
    api_base: {base_url}
    openapi_qps: {RAISED_QPS}
    webhook_qps: {RAISED_QPS}
    chunk_interval_ms: {CHUNK_INTERVAL_MS}
{dingtalk_extra}agent:
{agent}sessions:
  max_concurrent_runs: {MAX_CONCURRENT_RUNS}
storage:
  url: sqlite:///{path.parent / "state.db"}
{extra}""",
        encoding="utf-8",
    )
    return path


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used so far (robust to a noisy machine)."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 5.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start(
    name: str,
    fake: BenchFake,
    workdir: Path,
    llm_url: str = "",
    dingtalk_extra: str = "",
    **config_extra: str,
) -> Running:
    """Start contender ``name`` against ``fake`` and return once its stream connection is up
    (``dingtalk_extra``: YAML lines added under ``platforms.dingtalk`` of edgecrab's config;
    ``config_extra``: ``agent_extra`` and ``extra`` of :func:`edgecrab_config`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = clean_env(DINGTALK_APP_KEY=APP_KEY, DINGTALK_APP_SECRET=APP_SECRET, EDGECRAB_HOME=str(workdir))
    if name == EDGECRAB:
        config = edgecrab_config(
            workdir / "edgecrab.yaml", fake.base_url, llm_url, dingtalk_extra, **config_extra
        )
        argv = [sys.executable, "-m", "edgecrab", "--config", str(config), "gateway", "start"]
        if os.environ.get("BENCH_PROFILE_DIR"):  # profile the gateway (written on exit)
            sampled = os.environ.get("BENCH_PROFILE_MODE") == "sample"
            suffix = "samples.txt" if sampled else "prof"
            out = Path(os.environ["BENCH_PROFILE_DIR"]) / f"edgecrab-{workdir.name}.{suffix}"
            argv[1:3] = ["-m", "bench.sampled" if sampled else "bench.profiled", str(out)]
    elif name in (SDK, RAW):
        module = "bench.sdk_bot" if name == SDK else "bench.raw_bot"
        argv = [
            sys.executable,
            "-m",
            module,
            "--openapi",
            fake.base_url,
            "--client-id",
            APP_KEY,
            "--client-secret",
            APP_SECRET,
        ]
        if llm_url:
            argv += ["--llm", llm_url]
    else:
        raise ValueError(f"unknown contender {name!r}; known: {ALL}")
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    running = Running(name, proc, log_path)
    try:
        fake.wait_connected(timeout=30)
    except Exception:
        running.stop(1)
        raise RuntimeError(f"{name} did not connect to the fake:\n{running.log_tail()}") from None
    return running
