"""``python -m bench.icount [USERS] [PER_USER]``: the gateway's instructions per message in a 1a-like loop.

CPU time per message moves by tens of percent with the machine's load; the number of instructions the
gateway executes for the same work does not. This runs ``edgecrab gateway start`` (the echo agent, the
bench's config) under ``valgrind --tool=callgrind`` with instrumentation off, warms it up (one message, then
one from each user with instrumentation on), zeroes the counters, lets ``USERS`` users (default 100) send
``PER_USER`` messages each (default 5) in a closed loop as in scenario 1a, dumps the counters and prints
instructions / messages answered. Two runs of one commit agree within about 1 %.

Instructions leave out the kernel (system calls) and weigh interpreter code more than its share of the time,
so a change saves less CPU than instructions; compare commits with it, then confirm with ``python -m bench``.
Needs ``valgrind`` (with ``callgrind_control``) on the PATH; about a minute a run.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import contenders
from bench.drive import text_for
from bench.fakes import APP_KEY, APP_SECRET, BenchFake, clean_env, make_users
from bench.scenarios import lanes_for
from edgecrab.testing.fakedingtalk import FakeUser

WARM_NUMBER = 900_000


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, timeout=600, check=False)


def _one(fake: BenchFake, user: FakeUser, n: int) -> list[tuple[int, int, str]]:
    """A lane of one warm-up message."""
    return [(WARM_NUMBER + n, fake.index(user), text_for(WARM_NUMBER + n))]


def count(users_n: int, per_user: int) -> tuple[int, int, float]:
    """(instructions, messages answered, seconds) for one measured loop."""
    work = Path(tempfile.mkdtemp(prefix="bench-icount-"))
    users = make_users(users_n + 1)
    warm, rest = users[0], users[1:]
    with BenchFake(users, log_path=work / "fake.log") as fake:
        config = contenders.edgecrab_config(work / "edgecrab.yaml", fake.base_url, "")
        env = clean_env(DINGTALK_APP_KEY=APP_KEY, DINGTALK_APP_SECRET=APP_SECRET, EDGECRAB_HOME=str(work))
        out = work / "callgrind.out"
        argv = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            sys.executable, "-m", "edgecrab", "--config", str(config), "gateway", "start",
        ]
        with open(work / "gateway.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=contenders.ROOT)
        try:
            fake.wait_connected(timeout=900)
            if not fake.closed_loop([_one(fake, warm, 0)], 1, 900).complete:
                raise RuntimeError(f"the warm-up message was not answered; see {work}")
            _control("-i", "on", str(proc.pid))
            fake.closed_loop([_one(fake, user, 1 + i) for i, user in enumerate(rest)], len(rest), 1800)
            _control("-z", str(proc.pid))
            started = time.monotonic()
            result = fake.closed_loop(lanes_for(fake, rest, per_user), len(rest), 3600)
            _control("-d", str(proc.pid))
            took = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    dumps = sorted(glob.glob(f"{out}.*"), key=os.path.getmtime)
    found = re.search(r"^(?:summary|totals): (\d+)", Path(dumps[-1]).read_text(), re.M) if dumps else None
    return (int(found.group(1)) if found else 0), result.replied, took


def main() -> None:
    users_n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    per_user = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    instructions, answered, took = count(users_n, per_user)
    per_message = instructions / max(answered, 1) / 1e6
    print(f"{answered} messages answered in {took:.0f} s: {per_message:.3f} M instructions a message")


if __name__ == "__main__":
    main()
