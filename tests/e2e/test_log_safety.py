"""Log lines cannot be forged, and ``--log-level debug`` prints no Stream ticket or user text from the
libraries (issue 16): ``edgecrab --log-level debug gateway start`` as a subprocess against the fake DingTalk,
and the logging set-up with the websockets library's own records over a loopback socket."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import websockets

from edgecrab import logs
from edgecrab.testing.fakedingtalk import FakeDingTalk

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

FORGED = "2026-01-01 00:00:00,000 ERROR [gateway] forged line"
LIBRARIES = ("httpx", "httpcore", "websockets", "aiohttp", "asyncio")  # edgecrab.logs.LIBRARIES
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


async def test_a_msgid_with_a_newline_cannot_forge_a_log_line_and_debug_hides_tickets(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        app = fake.apps[0]
        config = tmp_path / "edgecrab.yaml"
        config.write_text(
            "platforms:\n  dingtalk:\n"
            "    app_key: ${DINGTALK_APP_KEY}\n    app_secret: ${DINGTALK_APP_SECRET}\n"
            f"    api_base: {fake.base_url}\n    chunk_interval_ms: 0\n"
            f"agent:\n  type: echo\nstorage:\n  url: sqlite:///{tmp_path / 'state.db'}\n",
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
        env.update(
            DINGTALK_APP_KEY=app.client_id, DINGTALK_APP_SECRET=app.client_secret, EDGECRAB_HOME=str(tmp_path)
        )
        log_path = tmp_path / "gateway.log"
        with open(log_path, "wb") as log:  # noqa: ASYNC230 - the child's log file, opened once
            proc = await anyio.open_process(
                [sys.executable, "-m", "edgecrab", "--config", str(config), "--log-level", "debug",
                 "gateway", "start"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
            )
        try:
            await fake.wait_for(lambda: len(fake.connections) >= 1, 15)
            ticket = fake.connections[0].ticket
            data = fake.dm(fake.users[0], "user-text-canary-3141", msgId=f"evil\n{FORGED}\x1b[31m")
            await fake.push(data)
            await fake.wait_for(lambda: len(fake.messages_for(data["conversationId"])) >= 1, 15)
            again = await fake.push(data)  # the same msgId again: logged as a duplicate delivery
            await fake.wait_for_ack(again)
        finally:
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                await proc.wait()
    text = log_path.read_text(errors="replace")
    lines = text.splitlines()
    # The redelivery's one line (issue 15's "[message] <id> ...: duplicate") carries the id, escaped.
    duplicate_lines = [line for line in lines if line.endswith("acked, not processed again)")]
    assert any("[message] evil\\n2026-01-01" in line for line in duplicate_lines), text[-3000:]
    assert not [line for line in lines if line.startswith(FORGED)]
    assert "\x1b" not in text
    # Every line is a whole record (our prefix) or part of a traceback (there is none in this run).
    assert [line for line in lines if not LINE.match(line)] == []
    # websockets' debug lines (the handshake URL with the ticket, "< TEXT '...'" frames) are not printed.
    assert ticket not in text
    assert not [line for line in lines if re.search(r" DEBUG [<>=] ", line)]


# --- the logging set-up with the websockets library's own records ----------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    saved = {name: logging.getLogger(name).level for name in LIBRARIES}
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    for name, value in saved.items():
        logging.getLogger(name).setLevel(value)
    logs.clear_secrets()


async def _talk_over_websockets() -> None:
    async def echo(ws: websockets.ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}/connect?ticket=ticket-canary-2718") as ws:
            await ws.send("user-text-canary-1618")
            assert await ws.recv() == "user-text-canary-1618"


@pytest.mark.parametrize("libs", [False, True], ids=["default", "EDGECRAB_DEBUG_LIBS=1"])
async def test_debug_keeps_the_libraries_at_info_unless_asked(
    libs: bool, restore_logging: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if libs:
        monkeypatch.setenv("EDGECRAB_DEBUG_LIBS", "1")
    else:
        monkeypatch.delenv("EDGECRAB_DEBUG_LIBS", raising=False)
    logs.setup_logging("debug")
    logs.register_secret("registered-secret-value")
    logging.getLogger("edgecrab.test").debug("[test] ours at debug")
    await _talk_over_websockets()
    logging.getLogger("websockets.client").info("library line with registered-secret-value")
    err = capsys.readouterr().err
    assert "[test] ours at debug" in err
    assert "registered-secret-value" not in err and "library line with ***" in err
    # The switch shows them (so this test can tell); without it, neither the ticket nor the text.
    assert ("ticket-canary-2718" in err) is libs
    assert ("user-text-canary-1618" in err) is libs


def test_arguments_are_escaped_whatever_their_type(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup_logging("info")
    log = logging.getLogger("edgecrab.test")
    log.info("[t] %s|%r|%d|%.1f|%s", "a\nb", "c\rd", 7, 2.5, ValueError("e\n\x1bf"))
    log.info("[t] %(id)s %(n)d", {"id": "g\u2028h", "n": 3})
    log.info("[t] no args\n stay as written")  # our own format string: not escaped
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("[t] a\\nb|'c\\rd'|7|2.5|e\\n\\x1bf")
    assert err[1].endswith("[t] g\\u2028h 3")
    assert err[2].endswith("[t] no args") and err[3] == " stay as written"
