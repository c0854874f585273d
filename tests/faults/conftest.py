"""Fault-suite fixtures: every test here runs with logging at DEBUG and a watch for leaked secrets.

The watch sees each log record first (raw, before any redacting handler) and, at teardown, fails the test
if any of these appears in a log line, in a text the test handed over (CLI output, a subprocess log) or in
a message the bot sent: an app secret, an agent api key (or any value passed to ``secret_watch.secret``),
an access token issued by a watched fake, or a sessionWebhook ``session`` value (a credential in a URL).
Records of the fake DingTalk itself (``edgecrab.testing``) and of its aiohttp server are test tooling, not
the product, and are not scanned.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterator

import pytest

from edgecrab.testing.fakedingtalk import FakeDingTalk

_HEX32 = re.compile(r"(?<![0-9a-fA-F])[0-9a-f]{32}(?![0-9a-fA-F])")
_TOOLING = ("edgecrab.testing", "aiohttp")
_QUIETED = ("httpx", "httpcore", "websockets", "asyncio", "dingtalk_stream")


class SecretWatch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.fakes: list[FakeDingTalk] = []
        self.values: set[str] = set()
        self.texts: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_TOOLING):
            return
        try:
            text = record.getMessage()
        except Exception:  # a broken record is the logger's problem; keep what there is
            text = f"{record.msg!r} {record.args!r}"
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
        self.lines.append(f"{record.levelname} {record.name}: {text}")

    def watch(self, fake: FakeDingTalk) -> FakeDingTalk:
        """Scan for the fake's app secrets, issued tokens and webhook sessions, and its outbound texts."""
        self.fakes.append(fake)
        return fake

    def secret(self, *values: str) -> None:
        self.values.update(v for v in values if v)

    def text(self, label: str, text: str) -> None:
        self.texts.append((label, text))

    def leaks(self) -> list[str]:
        plain = set(self.values)
        hex_ids: dict[str, str] = {}
        for fake in self.fakes:
            plain.update(app.client_secret for app in fake.apps)
            hex_ids.update({t: "access token" for t in fake.state.tokens})
            hex_ids.update({s: "webhook session" for s in fake.state.sessions})
        sources = [("log", line) for line in self.lines] + self.texts
        sources += [("sent to a user", r.text) for fake in self.fakes for r in fake.outbound]
        found: list[str] = []
        for label, text in sources:
            for secret in plain:
                if secret in text:
                    found.append(f"{label}: secret {secret[:4]}… in: {text[:300]!r}")
            for candidate in _HEX32.findall(text):
                if candidate in hex_ids:
                    found.append(f"{label}: {hex_ids[candidate]} {candidate[:6]}… in: {text[:300]!r}")
        return found


@pytest.fixture(autouse=True)
def secret_watch() -> Iterator[SecretWatch]:
    root = logging.getLogger()
    watch = SecretWatch()
    saved_level = root.level
    saved = {name: logging.getLogger(name).level for name in _QUIETED}
    saved_handlers = list(root.handlers)
    root.handlers.insert(0, watch)  # first, so no redacting handler rewrote the record before we see it
    root.setLevel(logging.DEBUG)
    for name in _QUIETED:
        logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        yield watch
    finally:
        for handler in [h for h in root.handlers if h not in saved_handlers]:
            root.removeHandler(handler)  # ours, and any the CLI's setup_logging added
        root.setLevel(saved_level)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
    leaks = watch.leaks()
    assert not leaks, f"{len(leaks)} secret(s) leaked:\n" + "\n".join(leaks[:20])
