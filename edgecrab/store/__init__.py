"""Storage: the :class:`Store` interface (``base``), its SQLite implementation, and :func:`open_store`;
``upkeep`` holds the periodic chores the gateway runs on a store.

``storage.url`` picks the backend. Today that is ``sqlite:///path`` (``sqlite:///:memory:`` for tests);
a Redis backend for several replicas would add its scheme here and nothing else would change.
"""

from __future__ import annotations

from edgecrab.config import StorageConfig
from edgecrab.store.base import (
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    PROCESSING,
    RECEIVED,
    SENDING,
    SENT,
    UNDELIVERABLE,
    InboxEntry,
    OutboxChunk,
    SessionStats,
    Store,
    Turn,
    UsageDelta,
)
from edgecrab.store.sqlite import SQLiteStore

__all__ = [
    "CANCELLED",
    "DONE",
    "FAILED",
    "PENDING",
    "PROCESSING",
    "RECEIVED",
    "SENDING",
    "SENT",
    "UNDELIVERABLE",
    "InboxEntry",
    "OutboxChunk",
    "SQLiteStore",
    "SessionStats",
    "Store",
    "Turn",
    "UsageDelta",
    "open_store",
]


def open_store(config: StorageConfig) -> Store:
    """The store ``config.url`` names, not yet opened: the caller awaits ``store.open()``."""
    path = config.sqlite_path
    if path is None:
        # Only the scheme goes into the message: the rest of a URL may carry a password.
        scheme = config.url.split(":", 1)[0] if ":" in config.url else config.url
        raise ValueError(f"unsupported storage.url scheme {scheme!r} (supported: sqlite:///path)")
    if str(path) in ("", "."):
        raise ValueError("storage.url sqlite:/// needs a file path (supported: sqlite:///path)")
    return SQLiteStore(path)
