"""Audit log: one JSON line per inbound message and per reply sent.

Off until switched on: it writes what people say to a file, so it does nothing (and writes nothing) until
``path`` is set. Settings (``hooks.config.10_audit_log``)::

    path: edgecrab-audit.jsonl   # appended to; relative to the gateway's working directory

Each line has ``ts`` (epoch seconds), ``event`` (``message`` or ``reply``), the message id, the
conversation and sender, and the text.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgecrab import hookimpl
from edgecrab.events import Message

log = logging.getLogger(__name__)

_path: Path | None = None
"""None: off (no ``path`` configured)."""
_lock = threading.Lock()  # sync hooks run in worker threads; keep lines whole


@hookimpl
def hook_loaded(name: str, config: Mapping[str, Any]) -> None:
    global _path
    path = config.get("path")
    if not path:
        log.info("[hooks] %s is off: set hooks.config.%s.path to write the audit log", name, name)
        return
    _path = Path(str(path)).expanduser()


@hookimpl
def message_received(message: Message) -> None:
    _write(
        {
            "event": "message",
            "message_id": message.id,
            "conversation_id": message.conversation.id,
            "is_group": message.conversation.is_group,
            "sender_id": message.sender.id,
            "sender_name": message.sender.name,
            "text": message.text,
        }
    )


@hookimpl
def reply_sent(reply: str, message: Message | None) -> None:
    _write(
        {
            "event": "reply",
            "message_id": message.id if message else "",
            "conversation_id": message.conversation.id if message else "",
            "text": reply,
        }
    )


def _write(record: dict[str, Any]) -> None:
    if _path is None:
        return
    line = json.dumps({"ts": round(time.time(), 3), **record}, ensure_ascii=False)
    with _lock:
        _path.parent.mkdir(parents=True, exist_ok=True)
        with _path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
