"""A run's answer as ledger rows: its text (formatted and split by the delivery) followed by its attachments
(checked and spooled by :class:`~edgecrab.replies.attachments.AttachmentSpool`), all in one reply, recorded
with the run's end in one store write (the runner's ``prepare``, :data:`edgecrab.core.runs.Prepare`).

:func:`spool_folder` says where attachment copies wait for delivery: beside the SQLite database
(``<its folder>/attachments``), or in ``$EDGECRAB_HOME`` (``~/.edgecrab``) with another store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from edgecrab.config import Config
from edgecrab.config.load import state_dir
from edgecrab.events import Message, ReplyAttachment
from edgecrab.replies.attachments import AttachmentSpool
from edgecrab.replies.delivery import Delivery
from edgecrab.store.base import OutboxChunk, Store

log = logging.getLogger("edgecrab.replies.answers")


def spool_folder(config: Config, env: Mapping[str, str] = os.environ) -> Path | None:
    """Where attachment copies are kept; None (a temporary folder) for an in-memory SQLite database."""
    db = config.storage.sqlite_path
    if db is not None:
        return None if str(db) == ":memory:" else db.parent / "attachments"
    return Path(state_dir(env)).expanduser() / "attachments"


class Answers:
    """The runner's ``prepare``, and the spool's cleaning task (:meth:`run`)."""

    def __init__(self, delivery: Delivery, store: Store, spool: AttachmentSpool) -> None:
        self.delivery = delivery
        self.store = store
        self.spool = spool

    @classmethod
    def build(
        cls, config: Config, delivery: Delivery, store: Store, attachment_dirs: Sequence[Path] | None = None
    ) -> Answers:
        """``attachment_dirs``: where the robot's agent may take files from (default: ``agent``'s)."""
        dirs = config.agent.attachment_dirs if attachment_dirs is None else attachment_dirs
        return cls(delivery, store, AttachmentSpool(spool_folder(config), dirs))

    async def prepare(
        self, message: Message, text: str | None, session_key: str, files: Sequence[ReplyAttachment]
    ) -> tuple[list[OutboxChunk], Callable[[], None]]:
        """``text`` (None or empty: nothing) and ``files`` as one reply's ledger rows, not yet recorded."""
        route = message.route
        if route is None:
            log.error("[gateway] no reply route for message %s; reply dropped", message.id)
            return [], _nothing
        delivery = self.delivery
        prepared = delivery.prepare(route, text, session_key=session_key, message=message) if text else None
        if files:
            prepared = await self.spool.add_rows(
                prepared, delivery.format, route, files, session_key=session_key, message=message
            )
        if prepared is None:
            return [], _nothing
        ready = prepared
        return prepared.chunks, lambda: delivery.recorded(ready)

    async def run(self) -> None:
        await self.spool.run(self.store)


def _nothing() -> None:
    return None
