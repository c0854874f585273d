"""``python -m bench.profiled OUT.prof ARGS...``: run ``edgecrab ARGS...`` under cProfile with a CPU clock.

Used by ``BENCH_PROFILE_DIR`` (bench/contenders.py): wall-clock profiles of a process sharing two cores with
its load generator mostly measure waiting to be scheduled; CPU time shows where the gateway's work goes.
The profile is written when the gateway exits (SIGTERM, as the bench stops it)."""

from __future__ import annotations

import cProfile
import sys
import time


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    from edgecrab.cli import main as edgecrab_main

    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        edgecrab_main(args)
    except SystemExit:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
