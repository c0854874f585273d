"""Logging set-up for the process, and two guarantees about every line it prints.

**Registered secrets never reach a log line.** Any module that learns a secret (the CLI for ``app_secret``
and ``agent.api_key``, the token cache for each access token) calls :func:`register_secret`.
:class:`SecretFilter`, installed on the handler by :func:`setup_logging`, replaces every registered value
with ``***`` in the final text of each record (the formatted message, exception and stack text), so a
secret inside an exception message or a URL is caught too. The same :func:`redact` is applied to every text
sent to DingTalk (:func:`edgecrab.replies.format.prepare_reply`).

**Log lines cannot be forged.** Values interpolated into a record (its ``args``: message ids, user text,
an agent's stderr) come from outside; a ``msgId`` of ``"x\n2026-01-01 ... ERROR ..."`` would print a second,
fake line. The filter escapes control characters in every argument (``\n`` -> ``\\n``, ESC -> ``\\x1b``,
also DEL, C1 controls and U+2028/U+2029) before the message is formatted; the format string, written by us,
and traceback text are left alone. Escaped text holds no control character, so a JSON formatter's output
stays one valid line too.

**Third-party libraries stay at INFO under ``--log-level debug``**: websockets' debug lines print the Stream
URL with its single-use ticket and every frame (users' text), httpx/httpcore and aiohttp print URLs and
headers. Set ``EDGECRAB_DEBUG_LIBS=1`` to let their debug lines through when debugging the libraries
themselves; those lines then show tickets and message text (registered secrets are still redacted).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import httpx

REDACTED = "***"
MIN_SECRET_LENGTH = 4
"""Shorter values are not registered: replacing every ``abc`` in the logs would hide more than it protects."""

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMAT = "%(asctime)s %(levelname)s %(message)s"
LIBRARIES = ("httpx", "httpcore", "websockets", "aiohttp", "asyncio")
"""Third-party loggers kept quieter than ours: WARNING normally, INFO at debug (see the module docstring)."""
DEBUG_LIBS_ENV = "EDGECRAB_DEBUG_LIBS"
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


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every registered secret (and each of ``extra``) replaced by ``***``, and the credentials
    of every URL in it: the password of its userinfo (the whole userinfo when it is one name: a token), and
    the value of each query parameter whose name looks secret (:func:`is_secret_param`).

    The one redaction: log lines, every text sent to DingTalk, errors the CLI prints and ``config show``.
    """
    for secret in (*_ordered, *sorted(extra, key=len, reverse=True)):
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    if "://" in text:
        text = _URL.sub(_redact_url_match, text)
    return text


_SECRET_PARAM = re.compile(
    r"token|secret|passw|pwd|credential|private|signature|api_?key|access_?key"
    r"|(^|[_-])(key|pass|sign|sig|ticket|session|auth|authorization)$",
    re.IGNORECASE,
)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s<>\"'`]+")
_TRAILING = ".,;:!?)]}"
"""Punctuation that ends a sentence rather than the URL (``see https://x/?key=1.``)."""


def is_secret_param(name: str) -> bool:
    """True for URL query parameter names that carry credentials: ``key``, ``access_token``, ``token``,
    ``secret``, ``password``, ``sign``, ``signature``, ``ticket`` (Stream), ``session`` (sessionWebhook)..."""
    return bool(_SECRET_PARAM.search(name))


def _redact_url_match(match: re.Match[str]) -> str:
    candidate = match.group(0)
    core = candidate.rstrip(_TRAILING)
    return redact_url_credentials(core) + candidate[len(core) :]


def redact_url_credentials(url: str) -> str:
    """``url`` as written, with its userinfo password and secret query values replaced by ``***``.

    The URL is parsed with :class:`httpx.URL` to find its userinfo and query; only those parts of the text
    are rewritten, so everything else reads as it was. A URL httpx cannot parse is shown as its scheme and
    ``<unparseable url>`` when it could hold a credential (``@`` or ``=``)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        if "@" in url or "=" in url:
            return url.split("://", 1)[0] + "://<unparseable url>"
        return url
    result = url
    userinfo = parsed.userinfo.decode("ascii", "replace")
    if userinfo:
        name, colon, _ = userinfo.partition(":")
        hidden = f"{name}:{REDACTED}" if colon and name else REDACTED
        result = result.replace(f"//{userinfo}@", f"//{hidden}@", 1)
    query = parsed.query.decode("ascii", "replace")
    if query:
        pairs = []
        for pair in query.split("&"):
            name, equals, value = pair.partition("=")
            secret = equals and value and is_secret_param(unquote(name))
            pairs.append(f"{name}={REDACTED}" if secret else pair)
        hidden_query = "&".join(pairs)
        if hidden_query != query:
            result = result.replace(f"?{query}", f"?{hidden_query}", 1)
    return result


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _ordered
    with _lock:
        _secrets.clear()
        _ordered = ()


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROLS.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape(text: str) -> str:
    """``text`` with control characters as escapes (``\\n``, ``\\x1b``): one line, no terminal codes."""
    return text.translate(_CONTROLS)


class _Escaped:
    """A log argument printed escaped by ``%s`` and ``%r`` alike."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape(str(self.value))

    def __repr__(self) -> str:
        return escape(repr(self.value))


def _escaped(arg: Any) -> Any:
    # Numbers stay numbers (``%d``, ``%.1f`` need them) and cannot hold a line break. A printable string
    # (ids, names: nearly every argument) is its own escape, its repr too: every character escape() rewrites
    # is one str.isprintable() refuses, so it needs no wrapper (two log lines a message, BENCHMARKS.md 1a).
    if isinstance(arg, int | float) or (type(arg) is str and arg.isprintable()):
        return arg
    return _Escaped(arg)


def escape_args(args: tuple[Any, ...] | Mapping[str, Any]) -> tuple[Any, ...] | Mapping[str, Any]:
    """A record's ``args`` with every non-numeric value escaped when formatted."""
    if isinstance(args, Mapping):
        return {key: _escaped(value) for key, value in args.items()}
    return tuple(_escaped(arg) for arg in args)


class SecretFilter(logging.Filter):
    """Rewrites each record: arguments escaped (no forged lines), and no registered secret in its message,
    exception or stack text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = escape_args(record.args)
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        if not _ordered and not record.exc_info and not record.stack_info:
            return True
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


class TextFormatter(logging.Formatter):
    """``logging.Formatter(FORMAT)`` with the time's text made once a second: ``time.localtime`` and
    ``strftime`` on each record were a third of a log line's formatting (two lines a message, BENCHMARKS.md
    1a). The text is the same as the standard formatter's, milliseconds included."""

    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(fmt)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        msec_format = self.default_msec_format
        if datefmt is not None or msec_format is None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime(self.default_time_format, self.converter(second)))
        return msec_format % (cached[1], record.msecs)


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
    object per line), secrets redacted.

    Records no longer carry the process id and name (``logging.logProcesses`` and ``logMultiprocessing``
    off, the logging module's own switches for this): neither format prints them, and each record asked
    the kernel for the pid (CPython 3.11), two records a message (BENCHMARKS.md, sixth session)."""
    logging.logProcesses = False
    logging.logMultiprocessing = False
    numeric = parse_level(level) if isinstance(level, str) else level
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EdgecrabHandler)]:
        root.removeHandler(old)
    # sys.stderr is looked up now, not at import, so a replaced stderr (pytest's capsys) is honoured.
    handler = _EdgecrabHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if parse_format(fmt) == "json" else TextFormatter())
    handler.addFilter(SecretFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    # httpx logs every request URL at INFO; legacy DingTalk endpoints carry the access token in the query.
    # At debug, the libraries stay at INFO unless EDGECRAB_DEBUG_LIBS=1 (see the module docstring).
    if numeric > logging.DEBUG:
        quiet = logging.WARNING
    elif os.environ.get(DEBUG_LIBS_ENV, "").strip().lower() in ("1", "true", "yes"):
        quiet = logging.DEBUG
    else:
        quiet = logging.INFO
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(quiet)
