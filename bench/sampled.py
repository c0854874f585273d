"""``python -m bench.sampled OUT.txt ARGS...``: run ``edgecrab ARGS...`` with a CPU-time sampling profiler.

Used by ``BENCH_PROFILE_DIR`` with ``BENCH_PROFILE_MODE=sample`` (bench/contenders.py). cProfile
(:mod:`bench.profiled`) counts calls exactly but inflates code made of many small calls about sevenfold;
py-spy, attached from outside, over-counts the lines that make system calls. This samples the main
thread's stack about every millisecond of the process's CPU time (``ITIMER_PROF``) and weighs each
sample by the main thread's CPU time since the one before (``time.thread_time``): Python runs a signal
handler only between two bytecodes, so the time of a long system call or C function lands on the Python
line that made it, as it costs. Lines of ``OUT.txt`` are ``frame;frame;... microseconds`` (py-spy's raw
format, outermost first), written when the gateway exits.
"""

from __future__ import annotations

import collections
import signal
import sys
import time
from types import FrameType

INTERVAL_S = 0.001


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    stacks: collections.Counter[tuple[tuple[str, int, str], ...]] = collections.Counter()
    last = time.thread_time_ns()

    def sample(signum: int, frame: FrameType | None) -> None:
        nonlocal last
        now = time.thread_time_ns()
        spent, last = now - last, now
        keys = []
        while frame is not None:
            code = frame.f_code
            keys.append((code.co_filename, frame.f_lineno, code.co_qualname))
            frame = frame.f_back
        stacks[tuple(keys)] += spent // 1000

    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, INTERVAL_S, INTERVAL_S)
    try:
        from edgecrab.cli import main as edgecrab_main  # sampled too: start-up is part of the picture

        edgecrab_main(args)
    except SystemExit:
        pass
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with open(out, "w", encoding="utf-8") as f:
            for keys, micros in stacks.items():
                line = ";".join(f"{name} ({path}:{lineno})" for path, lineno, name in reversed(keys))
                f.write(f"{line} {micros}\n")


if __name__ == "__main__":
    main()
