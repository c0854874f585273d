"""The lines an operator follows the gateway by: one INFO line per message (what happened to it) and one per
reply (how it went out). Their fields are also passed with ``extra=``, so ``--log-format json`` writes them
as keys of their own (:class:`edgecrab.logs.JsonFormatter`). What people wrote is logged at DEBUG only.

A message line: ``[message] msgX dm from user1001: queued (position 2)``, with the keys ``msg_id``,
``chat`` (``dm`` or ``group``), ``sender`` (staff id, else DingTalk's id), ``conversation``, ``outcome``
(one of :data:`OUTCOMES`) and ``detail``.

A reply line: ``[reply] to msgX in dm cidY: sent via webhook, 2 chunk(s), 1.8 s after the message``, with
the keys ``reply_id``, ``msg_id``, ``chat``, ``conversation``, ``outcome`` (``sent`` or ``undeliverable``),
``via`` (``webhook``, ``batchSend``, ``groupSend``), ``chunks`` and ``latency_s`` (from the message's
``createAt`` to the last chunk accepted; absent when the message is not known, after a restart).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from edgecrab.events import Message

log = logging.getLogger("edgecrab.activity")

COMMAND, RUN, QUEUED, REJECTED = "command", "run", "queued", "rejected"
DENIED, VETOED, DUPLICATE, UNSUPPORTED, EMPTY = "denied", "vetoed", "duplicate", "unsupported", "empty"
OUTCOMES = (COMMAND, RUN, QUEUED, REJECTED, DENIED, VETOED, DUPLICATE, UNSUPPORTED, EMPTY)
"""``command``: a gateway command answered it; ``run``: the agent is answering it now; ``queued``: it waits
behind the session's run; ``rejected``: busy (``busy_policy: reject``) or the queue is full; ``denied``: the
access rules; ``vetoed``: an ``allow_message`` hook; ``duplicate``: a redelivery, acked and not processed
again; ``unsupported``: a kind of message the gateway cannot read; ``empty``: nothing to answer."""


def message_line(
    msg_id: str, *, group: bool, sender: str, conversation: str, outcome: str, detail: str = ""
) -> None:
    """The message's INFO line; ``detail`` is said in brackets (or after a colon for denied/rejected)."""
    chat = "group" if group else "dm"
    said = f"{outcome}: {detail}" if detail and outcome in (DENIED, REJECTED) else outcome
    if detail and said == outcome:
        said += f" ({detail})"
    fields = {
        "msg_id": msg_id,
        "chat": chat,
        "sender": sender,
        "conversation": conversation,
        "outcome": outcome,
        "detail": detail,
    }
    _info(message_line, "[message] %s %s from %s: %s", (msg_id, chat, sender, said), fields)


def _info(where: Callable[..., None], msg: str, args: tuple[Any, ...], extra: dict[str, Any]) -> None:
    """``log.info(msg, *args, extra=extra)`` from ``where``, without the logger's look for its caller
    (``findCaller`` walks the stack with a path test per frame: a tenth of a line's cost, two lines a
    message). The record is the one ``log.info`` makes, its line the function's first."""
    if log.isEnabledFor(logging.INFO):
        code = where.__code__
        log.handle(
            log.makeRecord(log.name, logging.INFO, code.co_filename, code.co_firstlineno, msg, args, None,
                           code.co_name, extra)
        )


def message_event(message: Message, outcome: str, detail: str = "") -> None:
    """:func:`message_line` for a read message, and its text at DEBUG."""
    message_line(
        message.id,
        group=message.conversation.is_group,
        sender=message.sender.key,
        conversation=message.conversation.id,
        outcome=outcome,
        detail=detail,
    )
    if log.isEnabledFor(logging.DEBUG):
        log.debug("[message] %s text: %s", message.id, message.text, extra={"msg_id": message.id})


def reply_line(
    reply_id: str,
    message: Message | None,
    *,
    conversation: str,
    group: bool,
    chunks: int,
    via: str,
    error: str | None,
    text: str = "",
) -> None:
    """The reply's INFO line, once its last chunk was accepted (``error`` None) or it was given up."""
    chat = "group" if group else "dm"
    fields: dict[str, Any] = {
        "reply_id": reply_id,
        "msg_id": message.id if message is not None else "",
        "chat": chat,
        "conversation": conversation,
        "outcome": "sent" if error is None else "undeliverable",
        "via": via,
        "chunks": chunks,
    }
    said = f"sent via {via or '?'}, {chunks} chunk(s)" if error is None else f"undeliverable ({error})"
    if message is not None and message.created_at > 0:
        fields["latency_s"] = round(max(0.0, time.time() - message.created_at), 3)
        said += f", {fields['latency_s']:.1f} s after the message"
    args = (fields["msg_id"] or reply_id, chat, conversation, said)
    _info(reply_line, "[reply] to %s in %s %s: %s", args, fields)
    if text and log.isEnabledFor(logging.DEBUG):
        log.debug("[reply] %s text: %s", reply_id, text, extra={"reply_id": reply_id})


__all__ = ["OUTCOMES", "message_event", "message_line", "reply_line"]
