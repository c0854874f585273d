"""When a schedule fires: cron expressions in a time zone, read with ``croniter`` (its public API only).

A *slot* is one instant a cron expression names, as epoch seconds: the store records fired slots by that
number, so a slot has the same identity before and after a restart, on every replica.

Expressions have five fields (minute hour day-of-month month day-of-week), six with seconds as the sixth
(croniter's form), or are one of croniter's ``@hourly``/``@daily``/``@weekly``/``@monthly``/``@yearly``.
Days follow cron: when both day-of-month and day-of-week are restricted, either matching is enough.

Daylight saving time, as Vixie cron does it: a wall time that does not exist (02:30 on the night the
clocks go forward) fires at the first instant after the gap (03:00); a wall time that happens twice (the
night the clocks go back) fires once, at its first occurrence, unless the hour field is a wildcard
(``*``, ``*/2``): an every-15-minutes schedule keeps firing every 15 real minutes through the repeated
hour.
"""

from __future__ import annotations

import os
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from dateutil import tz

_NICKNAMES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MAX_SKIPS = 4
"""Repeated wall times skipped in a row at most (one DST fall-back hour has at most 60 of a minute job,
but only fixed-hour jobs skip, and those name at most a few minutes of one hour)."""


def cron_problem(expr: str) -> str:
    """Why ``expr`` is not a cron expression we accept; empty when it is."""
    text = expr.strip()
    if text.lower() in _NICKNAMES:
        return ""
    fields = text.split()
    if len(fields) not in (5, 6):
        return (
            f"a cron expression has 5 fields (minute hour day month weekday), or 6 with seconds last; "
            f"{expr!r} has {len(fields)}"
        )
    if not croniter.is_valid(text):
        return f"{expr!r} is not a valid cron expression"
    return ""


def zone_problem(name: str) -> str:
    """Why ``name`` is not an IANA time zone name; empty when it is."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}"
    return ""


def resolve_zone(name: str = "") -> tuple[str, tzinfo]:
    """``name``'s zone, or the host's when empty: its IANA name when the host says it (``$TZ``,
    ``/etc/localtime``), else ``local`` (the C library's rules)."""
    if name:
        return name, ZoneInfo(name)
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = str(Path("/etc/localtime").resolve())
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        candidates.append(target.split("zoneinfo/", 1)[1])
    for candidate in candidates:
        if candidate and not zone_problem(candidate):
            return candidate, ZoneInfo(candidate)
    return "local", tz.tzlocal()


class CronTimes:
    """The slots of one cron expression in one time zone."""

    def __init__(self, expr: str, zone: tzinfo) -> None:
        problem = cron_problem(expr)
        if problem:
            raise ValueError(problem)
        self.expr = expr.strip()
        self.zone = zone
        fields = self.expr.split()
        self._fixed_hour = len(fields) >= 5 and not fields[1].startswith("*") or self.expr.startswith("@")
        if self.expr.lower() == "@hourly":
            self._fixed_hour = False

    def next_after(self, when: float) -> float:
        """The first slot strictly after ``when`` (epoch seconds)."""
        it = croniter(self.expr, datetime.fromtimestamp(when, self.zone))
        slot = it.get_next(datetime).timestamp()
        for _ in range(_MAX_SKIPS):
            if not self._repeat(slot):
                break
            slot = it.get_next(datetime).timestamp()
        return slot

    def latest_at_or_before(self, when: float) -> float:
        """The last slot at or before ``when``."""
        it = croniter(self.expr, datetime.fromtimestamp(when + 1e-3, self.zone))
        slot = it.get_prev(datetime).timestamp()
        for _ in range(_MAX_SKIPS):
            if not self._repeat(slot):
                break
            slot = it.get_prev(datetime).timestamp()
        return slot

    def _repeat(self, slot: float) -> bool:
        """A fixed-hour slot at the second occurrence of a wall time (the hour the clocks go back)."""
        if not self._fixed_hour:
            return False
        local = datetime.fromtimestamp(slot, self.zone)
        if local.fold != 1:
            return False
        first = local.replace(fold=0)
        return first.utcoffset() != local.utcoffset() and first.timestamp() < slot

    def local(self, slot: float) -> datetime:
        return datetime.fromtimestamp(slot, self.zone)


def when_text(slot: float | None, zone: tzinfo, now: float | None = None) -> str:
    """``2025-05-01 09:00 CST``, with ``(in 3 h 10 min)`` or ``(5 min ago)`` when ``now`` is given."""
    if slot is None:
        return "never"
    local = datetime.fromtimestamp(slot, zone)
    text = local.strftime("%Y-%m-%d %H:%M:%S" if local.second else "%Y-%m-%d %H:%M")
    text += f" {local.tzname() or ''}".rstrip()
    if now is not None:
        text += f" (in {span(slot - now)})" if slot >= now else f" ({span(now - slot)} ago)"
    return text


def span(seconds: float) -> str:
    """``42 s``, ``5 min``, ``3 h 10 min``, ``2 d 4 h``."""
    seconds = round(abs(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


__all__ = ["CronTimes", "cron_problem", "resolve_zone", "span", "when_text", "zone_problem"]
