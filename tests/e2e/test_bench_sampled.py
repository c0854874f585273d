"""``python -m bench.sampled``: the CPU-time profiler of the gateway writes stacks that add up to its CPU.

It runs the edgecrab CLI (here ``edgecrab --help``: its imports, a few tenths of a second of CPU, are
sampled too) and must leave, when the command ends, one ``frame;frame;... microseconds`` line per distinct
stack, outermost frame first, with the CLI's own frames in them and the weights summing to about the
process's CPU time.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sampled_profile_weighs_stacks_by_cpu_time(tmp_path: Path) -> None:
    out = tmp_path / "samples.txt"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.sampled", str(out), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()  # the CLI itself ran
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines, "no sample was written"
    total_us = 0
    for line in lines:
        stack, _, weight = line.rpartition(" ")
        assert stack and int(weight) >= 0, line
        total_us += int(weight)
    assert any("edgecrab/cli.py" in line for line in lines)
    assert all(line.split(";")[0].startswith("_run_module_as_main") for line in lines)  # outermost first
    child_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # The main thread's CPU up to the last sample: most of the process's, never more.
    assert 0.3 * child_cpu_s <= total_us / 1e6 <= child_cpu_s * 1.05, (total_us, child_cpu_s)
