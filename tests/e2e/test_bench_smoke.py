"""``python -m bench --smoke`` still runs end to end: every scenario, every contender, a JSON file.

Benchmarks are not timed unit tests: this checks that the machinery works and that every line carries a
verdict, never what the verdict is (a shared CI machine proves nothing about speed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINE_IDS = {"1a", "1b", "2", "3", "4a", "4b", "5"}
SCENARIOS = {"echo_rest_instant", "echo_rest_50ms", "ack_latency", "burst", "memory", "chunking"}
CONTENDERS = {"edgecrab", "sdk", "raw"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_smoke_run_produces_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out), "--keep", str(tmp_path / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["meta"]["mode"] == "smoke"
    assert set(doc["scenarios"]) == SCENARIOS
    assert {line["id"] for line in doc["lines"]} == LINE_IDS
    assert all(line["verdict"] in ("pass", "miss") for line in doc["lines"])
    for name in ("echo_rest_instant", "echo_rest_50ms", "ack_latency", "burst"):
        assert set(doc["scenarios"][name]["contenders"]) == CONTENDERS, name
    # The markdown table is the user-facing output: one row per line, with the verdict.
    rows = [row for row in proc.stdout.splitlines() if row.startswith("| ") and row.endswith("** |")]
    assert len(rows) == len(LINE_IDS), proc.stdout
