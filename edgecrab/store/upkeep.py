"""The store's periodic chores, run as tasks in the gateway's task group: :func:`store_upkeep` every
second (:meth:`Store.maintain <edgecrab.store.base.Store.maintain>`; SQLite: WAL checkpoints in a worker
thread, not in a commit) and :func:`housekeeping` every minute (finished inbox entries and sent chunks
older than a day are pruned, idle sessions expired).
"""

from __future__ import annotations

import logging
import time

import anyio

from edgecrab.store.base import Store

log = logging.getLogger("edgecrab.store.upkeep")

STORE_UPKEEP_EVERY_S = 1.0


async def store_upkeep(store: Store) -> None:
    """The store's periodic upkeep (SQLite: WAL checkpoints in a worker thread, not in a commit)."""
    failing = False
    while True:
        await anyio.sleep(STORE_UPKEEP_EVERY_S)
        try:
            await store.maintain()
        except Exception as exc:
            if not failing:  # once per failure streak, not every second
                log.error("[gateway] store upkeep failed: %s: %s", type(exc).__name__, exc)
            failing = True
        else:
            if failing:
                log.info("[gateway] store upkeep works again")
            failing = False


async def housekeeping(store: Store, idle_expiry_s: float) -> None:
    """Every minute: prune what is finished and older than a day; expire sessions idle for longer than
    ``idle_expiry_s`` (0: never)."""
    while True:
        await anyio.sleep(60)
        now = time.time()
        try:
            await store.inbox_prune(now - 86400)
            await store.outbox_prune(now - 86400)
            if idle_expiry_s > 0:
                await store.sessions_expire(now - idle_expiry_s)
        except Exception:
            log.exception("[gateway] housekeeping failed")
