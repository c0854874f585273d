"""Logging set-up for the process, and the guarantee that registered secrets never reach a log line.

Any module that learns a secret (the CLI for ``app_secret`` and ``agent.api_key``, the token cache for each
access token) calls :func:`register_secret`. :class:`SecretFilter`, installed on the handler by
:func:`setup_logging`, replaces every registered value with ``***`` in the final text of each record (the
formatted message, exception and stack text), so a secret inside an exception message or a URL is caught too.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime

REDACTED = "***"
MIN_SECRET_LENGTH = 4
"""Shorter values are not registered: replacing every ``abc`` in the logs would hide more than it protects."""

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMAT = "%(asctime)s %(levelname)s %(message)s"
FORMATS = ("text", "json")
"""``--log-format``: ``text`` (the line above) or ``json`` (:class:`JsonFormatter`)."""

# Process-wide on purpose: logging itself is process-wide, and a secret learned by one component (a token
# fetched by the REST client) must be hidden from every other component's log lines.
_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Hide ``value`` in every log line from now on. Values shorter than 4 characters are ignored."""
    global _ordered
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Longest first, so a secret that contains another is replaced whole.
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _ordered
    with _lock:
        _secrets.clear()
        _ordered = ()


class SecretFilter(logging.Filter):
    """Rewrites each record so its message, exception and stack text contain no registered secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _ordered:
            return True
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class _EdgecrabHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we installed, so calling :func:`setup_logging` again replaces it."""


def parse_level(name: str) -> int:
    """``debug``/``info``/``warning``/``error`` in any case -> the logging level; ValueError otherwise."""
    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}: use one of {', '.join(LEVELS)}") from None


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, every field the log call passed with ``extra=`` as a key of its own (the message and
    reply lines of :mod:`edgecrab.activity`), and ``exc`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
"""What every record has; the rest came with ``extra=``."""


def parse_format(name: str) -> str:
    """``text``/``json`` in any case; ValueError otherwise."""
    fmt = name.strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {name!r}: use one of {', '.join(FORMATS)}")
    return fmt


def setup_logging(level: str | int = "info", fmt: str = "text") -> None:
    """Send log records of ``level`` and above to stderr as ``time LEVEL message`` (``fmt="json"``: one JSON
    object per line), secrets redacted."""
    numeric = parse_level(level) if isinstance(level, str) else level
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EdgecrabHandler)]:
        root.removeHandler(old)
    # sys.stderr is looked up now, not at import, so a replaced stderr (pytest's capsys) is honoured.
    handler = _EdgecrabHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if parse_format(fmt) == "json" else logging.Formatter(FORMAT))
    handler.addFilter(SecretFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    # httpx logs every request URL at INFO; legacy DingTalk endpoints carry the access token in the query.
    quiet = logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
    for name in ("httpx", "httpcore", "websockets", "asyncio"):
        logging.getLogger(name).setLevel(quiet)
