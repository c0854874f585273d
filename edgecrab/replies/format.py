"""A reply as the delivery ledger records it, before anything is sent: the text rendered for the platform
(:class:`Format`), split into chunks that fit DingTalk's limits (:mod:`edgecrab.replies.chunking`), each
titled and made an :class:`~edgecrab.store.base.OutboxChunk` row (:func:`prepare_reply`), registered secrets
replaced by ``***`` first. No store, no network.

:mod:`edgecrab.replies.delivery` records the rows and sends them.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from edgecrab.events import Message, ReplyRoute
from edgecrab.logs import redact
from edgecrab.replies.chunking import Chunk, json_bytes, split_text
from edgecrab.store.base import PENDING, OutboxChunk

log = logging.getLogger("edgecrab.replies.format")


@dataclass(frozen=True, slots=True)
class Format:
    """How replies look on the platform: a body formatter, a title function and the limits."""

    fmt: str
    render: Callable[[str], str]
    title: Callable[[str], str]
    max_chars: int
    max_bytes: int
    markers: bool
    overhead_bytes: int = 400
    """Room for the rest of the request body (msgtype, title, at block)."""
    max_chunks: int = 0
    """At most this many messages per reply (``max_chunks_per_reply``); the rest is replaced by a short
    "answer truncated" note at the end of the last one. 0: no limit."""


ROUTE_FORMAT = "format"
"""The key of a ledger chunk's route (:attr:`~edgecrab.store.base.OutboxChunk.route`) naming the message
type it is sent as (``markdown``/``text``) when not the robot's ``reply_format``: a proactive message's
(``edgecrab send --text``, a schedule's ``format``); :meth:`ReplyRoute.from_dict` ignores it."""


def conversation_key(route: ReplyRoute) -> str:
    return f"{route.robot_code}:{route.conversation_id}"


@dataclass(frozen=True, slots=True)
class PreparedReply:
    """A reply's ledger chunks before they are recorded (:meth:`~edgecrab.replies.delivery.Delivery.prepare`).
    """

    reply_id: str
    conversation_key: str
    chunks: list[OutboxChunk]
    text: str
    message: Message | None


_REPLY_ID_PREFIX = uuid.uuid4().hex[:16]
_reply_numbers = itertools.count(1)


def new_reply_id() -> str:
    """Unique per reply: a random prefix per process and a counter (``uuid4`` reads ``/dev/urandom`` each
    time, a system call per reply)."""
    return f"{_REPLY_ID_PREFIX}{next(_reply_numbers):016x}"


def prepare_reply(
    fmt: Format,
    route: ReplyRoute,
    text: str,
    *,
    session_key: str = "",
    message: Message | None = None,
    mention: bool | None = None,
    sent_as: str = "",
) -> PreparedReply:
    """``text`` formatted with ``fmt`` and split into ledger chunks for ``route``, not yet recorded.
    ``mention`` (default: in groups) @-mentions the sender in the last chunk. ``sent_as``: the message type
    (``markdown``/``text``) recorded in each chunk's route (:data:`ROUTE_FORMAT`) when it is not the robot's
    ``reply_format`` the ledger sends by default (a proactive message's own format).

    Every reply, notice and error text bound for DingTalk passes here, so this is where the secrets the logs
    hide (:func:`edgecrab.logs.redact`: the app secret, API keys, access tokens) are hidden from the chat too:
    an agent that echoes its environment or an upstream error that echoes a key posts ``***``."""
    text = redact(text)
    rendered = fmt.render(text)
    title = fmt.title(text)
    chunks = _split(fmt, rendered, title)
    if fmt.max_chunks and len(chunks) > fmt.max_chunks:
        chunks = _truncated(fmt, rendered, title, chunks)
    if mention is None:
        mention = route.is_group
    reply_id = new_reply_id()
    ckey = conversation_key(route)
    now = time.time()
    total = len(chunks)
    route_row = route.to_dict() | ({ROUTE_FORMAT: sent_as} if sent_as else {})
    rows = [
        OutboxChunk(
            reply_id=reply_id,
            index=i,
            total=total,
            conversation_key=ckey,
            route=dict(route_row),
            text=c.text,
            mention=bool(mention and i == total - 1),
            title=title if total == 1 else f"{title} ({i + 1}/{total})",
            state=PENDING,
            created_at=now,
            session_key=session_key,
        )
        for i, c in enumerate(chunks)
    ]
    if not rows:
        log.warning("[delivery] empty reply to %s not sent", ckey)
    return PreparedReply(reply_id, ckey, rows, text, message)


def _split(fmt: Format, rendered: str, title: str) -> list[Chunk]:
    return split_text(
        rendered,
        max_chars=fmt.max_chars,
        max_bytes=fmt.max_bytes,
        markers=fmt.markers,
        # The title travels in the same body, JSON-escaped, with " (i/n)" appended when split.
        overhead_bytes=fmt.overhead_bytes + json_bytes(title) + len(" (9999/9999)"),
    )


def _truncated(fmt: Format, rendered: str, title: str, chunks: list[Chunk]) -> list[Chunk]:
    """The first ``fmt.max_chunks`` chunks' worth of ``rendered``, its end making room for a note saying
    how much was left out (a 900 KB answer is 20 messages, not 150)."""
    fits = sum(len(chunk.body) for chunk in chunks[: fmt.max_chunks])
    reserve = 0
    while True:
        cut = max(fits - reserve, 0)
        note = f"\n\n…(answer truncated: {len(rendered) - cut:,} more characters not sent)"
        kept = _split(fmt, rendered[:cut] + note, title)
        if len(kept) <= fmt.max_chunks or cut == 0:
            break
        reserve = max(2 * reserve, len(note) + 16)
    log.warning(
        "[delivery] reply of %d chunks truncated to %d (max_chunks_per_reply)", len(chunks), len(kept)
    )
    return kept
