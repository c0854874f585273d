"""Re-splitting a chunk DingTalk refuses as too long, and remembering the pieces still to send.

A refused chunk is never dropped: :func:`smaller` splits it again with half the character budget (fences
closed and reopened), and :mod:`edgecrab.replies.delivery` sends the pieces in its place, halving again if
a piece is still refused. :class:`Resplits` keeps the pieces still to send in the store (``kv``) while that
happens, so a restart half-way through a re-split chunk repeats nothing.
"""

from __future__ import annotations

import json
import logging

from edgecrab.replies.chunking import split_text
from edgecrab.replies.format import Format
from edgecrab.store.base import OutboxChunk, Store

log = logging.getLogger("edgecrab.replies.resplit")

TOO_LONG_CODES = frozenset({"460101", "InvalidParameter.BodyTooLarge"})
""""Message too long": ``460101`` from the sessionWebhook; the OpenAPI's body-size code (inferred)."""


def smaller(text: str, fmt: Format) -> list[str] | None:
    """``text`` split with half its character budget (fences closed and reopened); None if it can't be."""
    if len(text) < 2:
        return None
    try:
        parts = split_text(
            text,
            max_chars=(len(text) + 1) // 2,
            max_bytes=fmt.max_bytes,
            overhead_bytes=fmt.overhead_bytes,
        )
    except ValueError:
        return None
    return [p.text for p in parts] if len(parts) > 1 else None


def _split_key(chunk: OutboxChunk) -> str:
    return f"delivery:split:{chunk.reply_id}:{chunk.index}"


class Resplits:
    """The pieces of re-split chunks still to send, kept in the store's ``kv`` under one key per chunk."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_reply: dict[str, set[int]] = {}
        """Chunk indexes re-split by this process, by reply: the other chunks of a reply recorded by this
        process have no pieces in ``kv``, which :meth:`load` then need not read."""
        self.count = 0
        """Chunks (or pieces) split again."""

    async def split(self, chunk: OutboxChunk, pieces: list[str], error: str, fmt: Format) -> bool:
        """Replace ``pieces[0]``, refused as too long (``error``), by smaller pieces and save the pieces left
        to send; False if it can't be split."""
        parts = smaller(pieces[0], fmt)
        if parts is None:
            return False
        self.count += 1
        log.warning(
            "[delivery] chunk %d/%d of %s too long for DingTalk (%s); sending it as %d smaller pieces",
            chunk.index + 1,
            chunk.total,
            chunk.reply_id,
            error,
            len(parts),
        )
        pieces[:1] = parts
        await self.save(chunk, pieces)
        return True

    async def load(self, chunk: OutboxChunk, *, recorded_here: bool) -> list[str] | None:
        """The pieces of a re-split chunk still to send (after a restart), or None if never re-split.
        ``recorded_here``: the chunk's reply was recorded by this process (so only its own re-splits count).
        """
        if recorded_here and chunk.index not in self._by_reply.get(chunk.reply_id, ()):
            return None  # recorded by this process, which never re-split it
        raw = await self._store.kv_get(_split_key(chunk))
        if not raw:
            return None
        try:
            pieces = json.loads(raw)
        except ValueError:
            return None
        return [str(p) for p in pieces] if isinstance(pieces, list) else None

    async def save(self, chunk: OutboxChunk, pieces: list[str]) -> None:
        self._by_reply.setdefault(chunk.reply_id, set()).add(chunk.index)
        await self._store.kv_set(_split_key(chunk), json.dumps(pieces, ensure_ascii=False))

    def sent(self, chunk: OutboxChunk) -> None:
        """The whole of a re-split chunk went out."""
        self._by_reply.get(chunk.reply_id, set()).discard(chunk.index)

    def forget(self, reply_id: str) -> None:
        """The reply is finished or cancelled."""
        self._by_reply.pop(reply_id, None)


__all__ = ["TOO_LONG_CODES", "Resplits", "smaller"]
