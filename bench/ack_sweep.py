"""Scenario 8a (or 2) alone, repeated and at several rates: ``python -m bench.ack_sweep``.

``python -m bench.ack_sweep --store redis,sqlite --rates 100,300,500 --repeat 3`` runs, for each repeat,
each rate and each store in turn (interleaved, so that a machine whose load changes meanwhile weighs on
every variant alike), what ``python -m bench --only 8`` (Redis) and ``--only 2`` (SQLite) measure for the
ack: ``edgecrab gateway start`` against a fresh fake DingTalk and the fake OpenAI server (the agent takes
2 s), warmed up with one message, then ``rate × --seconds`` DMs from as many users pushed at ``rate`` per
second, each callback's ack timed by the fake. One line of JSON per run on stdout: ack p50, p99 and max,
the gateway's CPU seconds during the push and until it is idle again, and the load average; a summary
(median and range of the p99s per store and rate) on stderr at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import contenders, replicas
from bench.contenders import Running
from bench.drive import text_for
from bench.fakes import BenchFake, LlmServer, make_users
from bench.plan import FULL
from bench.report import percentile
from bench.scenarios import WARM_NUMBER


def _idle_cpu(running: Running, settle_s: float = 20.0) -> float:
    """The gateway's CPU seconds once it stops using any (every answer sent), within ``settle_s``."""
    last, deadline = running.cpu_s(), time.monotonic() + settle_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = running.cpu_s()
        if now - last < 0.03:
            return now
        last = now
    return last


def one_run(store: str, rate: float, seconds: float, workdir: Path, llm_url: str, url: str) -> dict[str, Any]:
    users = make_users(int(rate * seconds))
    warm = make_users(1, "w")[0]
    workdir.mkdir(parents=True, exist_ok=True)
    with BenchFake([warm, *users], log_path=workdir / "fakedingtalk.log") as fake:
        if store == "redis":
            running = replicas._start(fake, workdir, url, llm_url)
            fake.wait_connected(timeout=30, count=1)
        else:
            running = contenders.start(contenders.EDGECRAB, fake, workdir, llm_url)
        try:
            warm_up = [[(WARM_NUMBER, fake.index(warm), text_for(WARM_NUMBER))]]
            if not fake.closed_loop(warm_up, 1, 30.0).complete:
                raise RuntimeError(f"the gateway did not answer the warm-up:\n{running.log_tail()}")
            items = [(fake.index(u), text_for(i + 1)) for i, u in enumerate(users)]
            cpu = running.cpu_s()
            ack = fake.open_loop(items, rate, seconds + 11.0)
            pushed = running.cpu_s() - cpu
            until_idle = _idle_cpu(running) - cpu
        finally:
            running.stop()
    lat = ack.latencies_s
    return {
        "store": store,
        "rate": rate,
        "sent": ack.sent,
        "acked": len(lat),
        "p50_ms": round(percentile(lat, 50, ack.sent) * 1000, 2),
        "p99_ms": round(percentile(lat, 99, ack.sent) * 1000, 2),
        "max_ms": round(max(lat, default=float("nan")) * 1000, 2),
        "cpu_push_s": round(pushed, 2),
        "cpu_until_idle_s": round(until_idle, 2),
        "load": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ack_sweep", description=__doc__)
    parser.add_argument("--store", default="redis", help="comma-separated: redis, sqlite")
    parser.add_argument("--rates", default="500", help="comma-separated messages per second")
    parser.add_argument("--seconds", type=float, default=4.0, help="how long each run pushes (default 4)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    stores = [s.strip() for s in args.store.split(",") if s.strip()]
    rates = [float(r) for r in args.rates.split(",")]
    rows: list[dict[str, Any]] = []
    llm = None
    with tempfile.TemporaryDirectory(prefix="edgecrab-ack-sweep-") as tmp, replicas.redis_server() as port:
        try:
            llm = LlmServer(FULL.agent_delay_s, Path(tmp) / "llm.log")
            n = 0
            for _ in range(args.repeat):
                for rate in rates:
                    for store in stores:
                        url = f"redis://127.0.0.1:{port}/{n % 16}"  # a database per run
                        row = one_run(store, rate, args.seconds, Path(tmp) / f"run-{n}", llm.base_url, url)
                        n += 1
                        print(json.dumps(row), flush=True)
                        rows.append(row)
        finally:
            if llm is not None:
                llm.close()
    for store in stores:
        for rate in rates:
            p99 = sorted(r["p99_ms"] for r in rows if r["store"] == store and r["rate"] == rate)
            print(
                f"{store} {rate:g} msg/s: ack p99 median {statistics.median(p99):.1f} ms "
                f"(range {p99[0]:.1f}-{p99[-1]:.1f}, {len(p99)} runs)",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
