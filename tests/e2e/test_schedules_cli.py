"""A schedule across restarts of the real ``edgecrab gateway start`` process against the emulator (issue
20): the first run arms the schedule and sends its next slot; a restart within that slot sends nothing
more; a slot that passes while the gateway is down is sent once at the next start (within
``schedules_catch_up_s``). Every slot is sent once, recorded in the SQLite store, and ``edgecrab schedules
list`` shows the last one fired. The cron fires every 10 s (six fields, seconds last), so nothing waits
for a real minute."""

from __future__ import annotations

import calendar
import contextlib
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_day_one import edgecrab, process, wait_for_text
from tests.e2e.test_ops_port import wait_until
from tests.e2e.test_send import USER, fake_dingtalk, outbound

pytestmark = pytest.mark.timeout(150)

PERIOD_S = 10
"""Long enough for a stop and a start on a busy machine to fit in one slot (one takes 1-2 s, 4 s on a loaded
2-core machine); each slot the test waits for is at most this long, so it sets the test's run time."""
CONFIG = f"""\
agent:
  type: echo
schedules:
  - name: tick
    cron: "* * * * * */{PERIOD_S}"
    timezone: UTC
    users: [{USER}]
    text: tick
schedules_catch_up_s: 300
"""
FIRING = re.compile(r"tick: firing the slot of (\S+ \S+) UTC")


@contextlib.contextmanager
def gateway(tmp_path: Path, env: dict[str, str], name: str) -> Iterator[Path]:
    """``edgecrab gateway start`` logging to ``tmp_path/name``; stopped with SIGTERM (exit 0) afterwards."""
    argv = ["--config", str(tmp_path / "edgecrab.yaml"), "gateway", "start"]
    with process(argv, tmp_path, env, name) as proc:
        wait_for_text(tmp_path / name, "[gateway] started", timeout=30)
        yield tmp_path / name
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def ticks(fake: httpx.Client) -> list[str]:
    return [m["text"] for m in outbound(fake) if m["via"] == "batchSend"]


def _epoch(slot: str) -> float:
    """A logged slot (``2026-12-03 10:25``, or with seconds when they are not 0) as a UNIX time."""
    fmt = "%Y-%m-%d %H:%M:%S" if slot.count(":") == 2 else "%Y-%m-%d %H:%M"
    return calendar.timegm(time.strptime(slot, fmt))


def fired(log: Path) -> list[str]:
    return FIRING.findall(log.read_text(encoding="utf-8"))


def test_a_schedule_fires_once_per_slot_across_restarts(tmp_path: Path) -> None:
    with fake_dingtalk(tmp_path, CONFIG) as (fake, env):
        with gateway(tmp_path, env, "first.log") as first:
            text = wait_for_text(first, "tick: firing the slot of", timeout=PERIOD_S + 15)
            assert "tick: new schedule" in text
            wait_until(lambda: ticks(fake) and len(ticks(fake)) == len(fired(first)), timeout=30)
        slot = fired(first)[0]

        # Restarted within the same slot: it is recorded as fired, so nothing is sent. (On a machine so
        # busy that the restart took longer than the slot, the next slot is caught up instead: still once.)
        with gateway(tmp_path, env, "second.log") as second:
            text = wait_until(
                lambda: (
                    (t := second.read_text(encoding="utf-8"))
                    and ("already fired" in t or "firing" in t)
                    and t
                ),
                timeout=30,
            )
            if not fired(second):
                assert f"tick: the slot of {slot} UTC already fired" in text
            wait_until(lambda: len(ticks(fake)) == len(fired(first) + fired(second)), timeout=30)
        assert slot not in fired(second)

        # Down while the next slot passes: the next start sends it, once.
        next_slot = (int(time.time()) // PERIOD_S + 1) * PERIOD_S
        time.sleep(max(0.0, next_slot - time.time()) + 0.5)
        with gateway(tmp_path, env, "third.log") as third:
            wait_for_text(third, "(missed while the gateway was down; catching up)", timeout=30)
            wait_until(lambda: fired(third), timeout=30)
            wait_until(
                lambda: len(ticks(fake)) == len(fired(first) + fired(second) + fired(third)), timeout=30
            )
        assert _epoch(fired(third)[0]) >= next_slot

        # Every slot once: as many messages as distinct slots fired, over the three processes.
        every = fired(first) + fired(second) + fired(third)
        assert len(set(every)) == len(every) == len(ticks(fake)), every

        listing = edgecrab(
            "--config", str(tmp_path / "edgecrab.yaml"), "schedules", "list", cwd=tmp_path, env=env
        )
        assert listing.returncode == 0, listing.stderr
        header, row = listing.stdout.splitlines()
        assert header.split() == ["NAME", "CRON", "ZONE", "TARGET", "NEXT", "RUN", "LAST", "FIRED"]
        cells = re.split(r"\s{2,}", row)
        assert cells[:4] == ["tick", f"* * * * * */{PERIOD_S}", "UTC", f"users {USER}"]
        assert cells[5].startswith(f"{max(every)} UTC (")
