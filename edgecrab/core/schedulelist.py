"""``edgecrab schedules list``: each configured schedule with its cron, zone, target, next run and the
last slot it fired, read from the store the gateway uses (when there is one: listing never creates it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import anyio

from edgecrab.config.model import Config
from edgecrab.core.cron import when_text
from edgecrab.core.schedules import Schedule, target_text
from edgecrab.store import open_store
from edgecrab.store.base import ScheduleRecord, StoreUnavailableError

COLUMNS = ("NAME", "CRON", "ZONE", "TARGET", "NEXT RUN", "LAST FIRED")
NO_SCHEDULES = "no schedules configured (add `schedules:` to the config: see config/example.yaml)"


def schedules_table(config: Config, records: Mapping[str, ScheduleRecord] | None, now: float) -> str:
    """The listing; ``records`` None: the store could not be read (last fired shows ``?``)."""
    if not config.schedules:
        return NO_SCHEDULES
    rows = [COLUMNS]
    for entry in config.schedules:
        s = Schedule.of(entry)
        record = records.get(s.name) if records is not None else None
        if records is None:
            fired = "?"
        else:
            fired = when_text(record.fired_slot if record else None, s.zone, now)
        rows.append(
            (
                s.name,
                entry.cron,
                s.zone_name,
                target_text(entry) + (" (prompt)" if entry.prompt else ""),
                when_text(s.times.next_after(max(now, record.slot if record else now)), s.zone, now),
                fired,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


async def read_records(config: Config) -> tuple[dict[str, ScheduleRecord] | None, str]:
    """The store's schedule records, and a note when there are none to read: the SQLite file does not
    exist yet (``{}``), or the store cannot be opened (None)."""
    path = config.storage.sqlite_path
    if path is not None and (str(path) == ":memory:" or not path.expanduser().exists()):
        return {}, "no state yet: the gateway has not run with this storage.url"
    store = open_store(config.storage)
    try:
        await store.open()
        return await store.schedule_records(), ""
    except (OSError, StoreUnavailableError, ValueError) as exc:
        return None, f"cannot read the store: {exc}"
    finally:
        await store.close()


def run_schedules_list(config: Config) -> str:
    """What ``edgecrab schedules list`` prints."""
    if not config.schedules:
        return NO_SCHEDULES
    records, note = anyio.run(read_records, config)
    text = schedules_table(config, records, time.time())
    return f"{text}\n({note})" if note else text


__all__ = ["read_records", "run_schedules_list", "schedules_table"]
