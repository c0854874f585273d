"""Scenario 7 (issue 21): edgecrab on the Redis store, against a ``redis-server`` this module starts on a free
loopback port (AOF on, as docs/redis.md asks), in a temporary directory.

* 8a: ack latency with the Redis store, the load of scenario 2 (the house goal: p99 under 20 ms).
* 8b: echo throughput of 1 and of 3 replicas (``edgecrab gateway start`` processes on one Redis) against
  the fake, which pushes each message to one random connection. Reported, not judged: the machine's cores
  are shared by the fake, Redis and every replica, so 3 replicas on 2 cores measure the coordination's cost
  more than any gain (the gain is on several hosts).
* 8c: Redis round trips per answered message (one replica, from ``MONITOR``: commands sent by clients; a
  pipeline counts each of its commands; the commands scripts run inside Redis are counted apart).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import contenders
from bench.contenders import EDGECRAB, Running
from bench.drive import text_for
from bench.fakes import APP_KEY, APP_SECRET, BenchFake, clean_env
from bench.plan import ACK_P99_GOAL_S
from bench.report import Line, finite, ms, num, percentile, verdict
from bench.scenarios import WARM_NUMBER, Context, lanes_for, load_summary

REPLICAS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[int]:
    """A redis-server on a free loopback port for the scenario; its port."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="edgecrab-bench-redis-") as tmp:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", ""]
        proc = subprocess.Popen(
            [*argv, "--appendonly", "yes", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while _command(port, b"PING") != b"+PONG":
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server ({binary}) did not start on port {port}")
                time.sleep(0.02)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


def _command(port: int, command: bytes) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(command + b"\r\n")
            return sock.recv(64).strip()
    except OSError:
        return b""


class Monitor:
    """``MONITOR`` in a thread: commands from clients (round trips) and from scripts, while it runs."""

    def __init__(self, port: int) -> None:
        self.client = self.scripted = 0
        self._stop = threading.Event()
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        self._sock.sendall(b"MONITOR\r\n")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pending = b""
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            lines = (pending + data).split(b"\r\n")
            pending = lines.pop()
            for line in lines:
                if line.startswith(b"+") and b"[" in line:
                    if b" lua]" in line:
                        self.scripted += 1
                    else:
                        self.client += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def _start(fake: BenchFake, workdir: Path, url: str, llm_url: str) -> Running:
    """One ``edgecrab gateway start`` on the Redis store (the bench's own config otherwise)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = contenders.edgecrab_config(workdir / "edgecrab.yaml", fake.base_url, llm_url)
    text = config.read_text("utf-8").split("storage:")[0]
    config.write_text(text + f"storage:\n  url: {url}\n  prefix: 'bench:'\n", encoding="utf-8")
    env = clean_env(DINGTALK_APP_KEY=APP_KEY, DINGTALK_APP_SECRET=APP_SECRET, EDGECRAB_HOME=str(workdir))
    log_path = workdir / "edgecrab.log"
    with open(log_path, "wb") as log:
        argv = [sys.executable, "-m", "edgecrab", "--config", str(config), "gateway", "start"]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=contenders.ROOT)
    return Running(EDGECRAB, proc, log_path)


@contextmanager
def gateways(ctx: Context, label: str, count: int, url: str, llm_url: str = "") -> Iterator[BenchFake]:
    """``count`` replicas on one fresh Redis database prefix, connected to a fresh fake, warmed up."""
    workdir = ctx.workdir / f"replicas-{label}"
    workdir.mkdir(parents=True, exist_ok=True)
    with BenchFake([ctx.warm_user, *ctx.users], log_path=workdir / "fakedingtalk.log") as fake:
        running: list[Running] = []
        try:
            for n in range(count):
                running.append(_start(fake, workdir / f"replica-{n}", url, llm_url))
                fake.wait_connected(timeout=30, count=n + 1)
            warm = [
                [(WARM_NUMBER + n, fake.index(ctx.warm_user), text_for(WARM_NUMBER + n))] for n in range(3)
            ]
            if not fake.closed_loop(warm, 1, 30.0).complete:
                raise RuntimeError(f"the replicas did not answer the warm-up:\n{running[0].log_tail()}")
            yield fake
        finally:
            for r in running:
                r.stop()


def replicas(ctx: Context, llm_url: str) -> tuple[dict[str, Any], list[Line]]:
    plan = ctx.plan
    users = ctx.users[: plan.echo_conversations]
    results: dict[str, Any] = {}
    with redis_server() as port:
        for count in (1, REPLICAS):
            ctx.progress(f"[bench] 8b echo on Redis, {count} replica(s)")
            url = f"redis://127.0.0.1:{port}/{count}"  # a database per run: nothing left from the last
            with gateways(ctx, f"echo-{count}", count, url) as fake:
                lanes = lanes_for(fake, users, plan.echo_per_conversation)
                monitor = Monitor(port) if count == 1 else None
                res = fake.closed_loop(lanes, len(lanes), plan.echo_budget_s)
                if monitor is not None:
                    monitor.stop()
                    results["round_trips_per_message"] = monitor.client / max(res.replied, 1)
                    results["script_commands_per_message"] = monitor.scripted / max(res.replied, 1)
            results[f"echo_{count}"] = load_summary(res)
        ctx.progress(f"[bench] 8a ack latency on Redis at {plan.ack_rate:g} msg/s")
        with gateways(ctx, "ack", 1, f"redis://127.0.0.1:{port}/5", llm_url) as fake:
            items = [(fake.index(u), text_for(i + 1)) for i, u in enumerate(ctx.users[: plan.ack_messages])]
            ack = fake.open_loop(items, plan.ack_rate, plan.ack_budget_s)
        p50, p99 = percentile(ack.latencies_s, 50, ack.sent), percentile(ack.latencies_s, 99, ack.sent)
        results["ack"] = {
            "sent": ack.sent,
            "acked": len(ack.latencies_s),
            "p50_s": finite(p50),
            "p99_s": finite(p99),
        }
    return results, _lines(plan, results, p50, p99)


def _lines(plan: Any, r: dict[str, Any], p50: float, p99: float) -> list[Line]:
    one, three = r["echo_1"], r[f"echo_{REPLICAS}"]
    ack_ok = r["ack"]["p99_s"] is not None and r["ack"]["p99_s"] < ACK_P99_GOAL_S
    ack = Line(
        "8a",
        f"ack latency on the Redis store, {plan.ack_messages:,} DMs at {plan.ack_rate:g} msg/s",
        "ack latency p50 · p99",
        {EDGECRAB: f"{ms(p50)} · {ms(p99)}"},
        f"edgecrab p99 < {ACK_P99_GOAL_S * 1000:g} ms",
        verdict(ack_ok),
        f"p99 {ms(p99)}",
        r["ack"],
    )
    both = one["complete"] and three["complete"]
    echo = Line(
        "8b",
        f"echo on Redis, {plan.echo_messages:,} DMs: 1 vs {REPLICAS} replicas (one machine)",
        "messages/s, 1 · 3 replicas",
        {EDGECRAB: f"{num(one['messages_per_s'])} · {num(three['messages_per_s'])} msg/s"},
        "every message answered (rates reported, not judged)",
        verdict(both),
        f"{three['messages_per_s'] / max(one['messages_per_s'], 1e-9):.2f}× with {REPLICAS} replicas",
        {"1": one, str(REPLICAS): three},
    )
    trips = r["round_trips_per_message"]
    rtt = Line(
        "8c",
        "Redis round trips per answered DM (one replica)",
        "commands sent · run inside scripts",
        {EDGECRAB: f"{trips:.1f} · {r['script_commands_per_message']:.1f}"},
        "measured (reported, not judged)",
        verdict(trips > 0),
        f"{trips:.1f} round trips/msg",
        {k: r[k] for k in ("round_trips_per_message", "script_commands_per_message")},
    )
    return [ack, echo, rtt]


__all__ = ["replicas", "redis_server", "Monitor"]
