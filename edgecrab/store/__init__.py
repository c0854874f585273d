"""Storage: the :class:`Store` interface (``base``), its SQLite implementation, and :func:`open_store`;
``upkeep`` holds the periodic chores the gateway runs on a store.

``storage.url`` picks the backend: ``sqlite:///path`` (``sqlite:///:memory:`` for tests), the embedded
default, or ``redis://`` / ``rediss://`` (:mod:`edgecrab.store.redis_store`), which several replicas share.
The Redis modules import redis-py only when a Redis URL is configured.
"""

from __future__ import annotations

from edgecrab.config import StorageConfig
from edgecrab.store.base import (
    ARMED,
    CANCELLED,
    DONE,
    FAILED,
    FIRED,
    PENDING,
    PROCESSING,
    RECEIVED,
    SENDING,
    SENT,
    SKIPPED,
    UNDELIVERABLE,
    InboxEntry,
    OutboxChunk,
    ScheduleRecord,
    SessionStats,
    Store,
    StoreUnavailableError,
    Turn,
    UsageDelta,
)
from edgecrab.store.cardrecords import CARD_DONE, CARD_STREAMING, CardAdoption, CardRecord
from edgecrab.store.sqlite import SQLiteStore

__all__ = [
    "ARMED",
    "CANCELLED",
    "CARD_DONE",
    "CARD_STREAMING",
    "DONE",
    "FAILED",
    "FIRED",
    "PENDING",
    "PROCESSING",
    "RECEIVED",
    "SENDING",
    "SENT",
    "SKIPPED",
    "UNDELIVERABLE",
    "CardAdoption",
    "CardRecord",
    "InboxEntry",
    "OutboxChunk",
    "SQLiteStore",
    "ScheduleRecord",
    "SessionStats",
    "Store",
    "StoreUnavailableError",
    "Turn",
    "UsageDelta",
    "open_store",
]


SUPPORTED = "sqlite:///path, redis://[user:password@]host:port/db, rediss://..."


def open_store(config: StorageConfig) -> Store:
    """The store ``config.url`` names, not yet opened: the caller awaits ``store.open()``."""
    # Only the scheme goes into a message: the rest of a URL may carry a password.
    scheme = config.url.split(":", 1)[0] if ":" in config.url else config.url
    if scheme in ("redis", "rediss"):
        from edgecrab.store.redis_store import RedisStore  # redis-py is imported only when used

        return RedisStore(config.url, config.prefix, lease_s=config.lease_s)
    path = config.sqlite_path
    if path is None:
        raise ValueError(f"unsupported storage.url scheme {scheme!r} (supported: {SUPPORTED})")
    if str(path) in ("", "."):
        raise ValueError(f"storage.url sqlite:/// needs a file path (supported: {SUPPORTED})")
    return SQLiteStore(path)
