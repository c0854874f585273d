"""``python -m bench [--smoke] [--only 1a,2] [--json PATH] [--keep DIR]``: run, print the table, write JSON.

Progress goes to stderr, the markdown table to stdout. The exit code is 0 when every scenario ran, whatever
the verdicts (a miss is a finding, not a crash), and 1 when a scenario could not run at all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import mediabench, replicas, scenarios
from bench.contenders import ALL, ROOT
from bench.fakes import LlmServer, make_users
from bench.plan import FULL, SMOKE
from bench.report import MISS, Line, table, write_json

DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"
KEYS = ("1a", "1b", "2", "3", "4", "5", "6", "7", "8")


def machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for row in f:
            if row.startswith("model name"):
                cpu = row.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as f:
        mem_kb = int(next(r for r in f if r.startswith("MemTotal")).split()[1])
    versions = {}
    for dist in ("edgecrab", "dingtalk-stream", "websockets", "aiohttp", "httpx", "requests", "anyio"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "commit": _git("rev-parse", "--short", "HEAD").strip(),
        "modified": [row[3:] for row in _git("status", "--porcelain", "--untracked-files=no").splitlines()],
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.rstrip()
    except (OSError, subprocess.SubprocessError):
        return ""


def load() -> list[float]:
    """The 1-, 5- and 15-minute load averages: other work on the machine shows up here."""
    return [round(x, 2) for x in os.getloadavg()]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; proves the machinery only")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios out of {','.join(KEYS)}")
    parser.add_argument("--contenders", default=",".join(ALL), help=f"comma-separated out of {','.join(ALL)}")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep configs, stores and logs in this folder"
    )
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    only = [k.strip() for k in args.only.split(",") if k.strip()] or list(KEYS)
    unknown = set(only) - set(KEYS) or set(args.contenders.split(",")) - set(ALL)
    if unknown:
        parser.error(f"unknown scenario or contender: {', '.join(sorted(unknown))}")

    started = time.monotonic()
    meta: dict[str, Any] = {
        "command": " ".join(
            ["python -m bench", *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))]
        ),
        "mode": "smoke" if plan.smoke else "full",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "plan": scenarios.plan_dict(plan),
        "load_at_start": load(),
    }
    if meta["load_at_start"][0] > 0.5 * (os.cpu_count() or 1):
        progress(
            f"[bench] warning: load average {meta['load_at_start']} on {os.cpu_count()} cores: other work "
            "competes with the contenders; compare the ratios, not the absolute numbers"
        )
    with tempfile.TemporaryDirectory(prefix="edgecrab-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = scenarios.Context(
            plan=plan,
            users=make_users(plan.users_needed),
            warm_user=make_users(1, "w")[0],
            workdir=workdir,
            contenders=tuple(args.contenders.split(",")),
            progress=progress,
        )
        results, lines, failed = run_all(ctx, only)
    meta["duration_s"] = round(time.monotonic() - started, 1)
    meta["load_at_end"] = load()
    write_json(args.json, meta, results, lines)
    print(f"\n## edgecrab benchmarks ({meta['mode']})\n")
    print(table(lines))
    misses = [line.id for line in lines if line.verdict == MISS]
    listed = f" ({', '.join(misses)})" if misses else ""
    print(
        f"\n{len(lines) - len(misses)} pass, {len(misses)} miss{listed}; "
        f"{meta['duration_s']:g} s; JSON in {args.json}"
    )
    for key, error in failed.items():
        print(f"\nscenario {key} could not run:\n{error}", file=sys.stderr)
    return 1 if failed else 0


def run_all(ctx: scenarios.Context, only: list[str]) -> tuple[dict[str, Any], list[Line], dict[str, str]]:
    results: dict[str, Any] = {}
    lines: list[Line] = []
    failed: dict[str, str] = {}
    llm: LlmServer | None = None

    def agent_url() -> str:
        nonlocal llm
        if llm is None:
            llm = LlmServer(ctx.plan.agent_delay_s, ctx.workdir / "llm.log")
        return llm.base_url

    steps: list[tuple[str, str, Callable[[], tuple[dict[str, Any], list[Line]]]]] = [
        ("5", "chunking", lambda: scenarios.chunking(ctx)),
        ("1a", "echo_rest_instant", lambda: scenarios.echo_throughput(ctx, slow=False)),
        ("1b", "echo_rest_50ms", lambda: scenarios.echo_throughput(ctx, slow=True)),
        ("2", "ack_latency", lambda: scenarios.ack_latency(ctx, agent_url())),
        ("3", "burst", lambda: scenarios.burst(ctx, agent_url())),
        ("4", "memory", lambda: scenarios.memory(ctx)),
        ("6", "cards", lambda: scenarios.cards(ctx)),
        ("7", "media", lambda: mediabench.media(ctx)),
        ("8", "replicas", lambda: replicas.replicas(ctx, agent_url())),
    ]
    try:
        for key, name, step in steps:
            if key not in only:
                continue
            try:
                data, new_lines = step()
            except Exception:
                failed[key] = traceback.format_exc()
                progress(f"[bench] scenario {key} failed:\n{failed[key]}")
                continue
            results[name] = data
            lines.extend(new_lines)
    finally:
        if llm is not None:
            llm.close()
    lines.sort(key=lambda line: line.id)
    return results, lines, failed


if __name__ == "__main__":
    sys.exit(main())
