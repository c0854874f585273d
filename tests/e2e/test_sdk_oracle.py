"""The official ``dingtalk-stream`` SDK as a conformance oracle: a test-only dependency, never imported by
edgecrab.

* The SDK's quick-start bot (``sdk_quickstart_bot.py``, a subprocess) connects to ``edgecrab sandbox`` (a
  subprocess: the emulator alone, no gateway competing for the app's callbacks) with the credentials the
  sandbox prints. A DM and a group @message pushed through the control API must reach it, be acked 200 by
  it, and its ``reply_text`` and ``reply_markdown`` answers must show in the emulator and its web chat,
  without the SDK calling any route the emulator does not serve.
* The Stream protocol values in :mod:`edgecrab.dingtalk.frames` equal the SDK's.

Every wait is on the emulator's event feed (``/_fake/events``) or the sandbox's output, with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from edgecrab.dingtalk import frames
from edgecrab.testing.fakedingtalk import CALLBACK_TOPIC, DEFAULT_GROUP_ID

pytestmark = pytest.mark.timeout(120)

BOT = Path(__file__).with_name("sdk_quickstart_bot.py")
DEADLINE_S = 30.0
"""Per step: generous, the machine may be busy; a healthy run takes about a second per step."""
URL_LINE = re.compile(r"open (http://127\.0\.0\.1:\d+)/ to chat with the bot")
HINT_LINE = re.compile(r"^\s+(DINGTALK_\S+=.*) edgecrab gateway start$")
Event = dict[str, Any]


class Feed:
    """The emulator's event feed (server-sent events), collected as it arrives."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._arrived = anyio.Event()

    async def pump(self, http: httpx.AsyncClient, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with http.stream("GET", "/_fake/events", timeout=None) as response:
            response.raise_for_status()
            task_status.started()  # the emulator subscribed us before it sent the headers
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    self.events.append(json.loads(line.removeprefix("data: ")))
                    self._arrived.set()
                    self._arrived = anyio.Event()

    async def until(self, what: str, done: Callable[[list[Event]], bool], logs: Callable[[], str]) -> None:
        try:
            with anyio.fail_after(DEADLINE_S):
                while not done(self.events):
                    await self._arrived.wait()
        except TimeoutError:
            kinds = [
                f"{e['kind']}:{e.get('event') or e.get('path') or e.get('message_id') or ''}"
                for e in self.events
            ]
            raise AssertionError(f"{what}: not within {DEADLINE_S} s; events: {kinds}\n{logs()}") from None


async def read_until(
    stdout: BufferedByteReceiveStream, pattern: re.Pattern[str], seen: list[str]
) -> re.Match[str]:
    with anyio.fail_after(DEADLINE_S):
        while True:
            line = (await stdout.receive_until(b"\n", 65536)).decode()
            seen.append(line)
            if match := pattern.search(line):
                return match


async def stop(proc: anyio.abc.Process) -> int:
    """SIGTERM, then SIGKILL after 10 s; the exit code."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    with anyio.move_on_after(10):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
    await proc.aclose()  # waits, and closes the pipes
    assert proc.returncode is not None
    return proc.returncode


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, str], Path]]:
    """``edgecrab sandbox --port 0``: its URL, the environment it tells a gateway to use, its stderr log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
    log = tmp_path / "sandbox.log"
    with open(log, "wb") as stderr:  # noqa: ASYNC230 - the child's log file, opened once
        proc = await anyio.open_process(
            [sys.executable, "-m", "edgecrab", "sandbox", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**env, "EDGECRAB_HOME": str(tmp_path)},
            cwd=tmp_path,
        )
    try:
        assert proc.stdout is not None
        stdout, seen = BufferedByteReceiveStream(proc.stdout), []
        try:
            url = (await read_until(stdout, URL_LINE, seen)).group(1)
            hint = (await read_until(stdout, HINT_LINE, seen)).group(1)
        except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead):
            raise AssertionError(
                f"the sandbox did not print its URL; stdout: {seen}\nstderr: {log.read_text()}"
            ) from None
        yield url, dict(item.split("=", 1) for item in hint.split()), log
    finally:
        code = await stop(proc)
    assert code == 0, log.read_text()


@dataclass
class Oracle:
    """The SDK bot, connected to the sandbox: a client for the sandbox, its event feed, and both logs."""

    http: httpx.AsyncClient
    feed: Feed
    bot: anyio.abc.Process
    logs: Callable[[], str]

    async def until(self, what: str, done: Callable[[list[Event]], bool]) -> None:
        await self.feed.until(what, done, self.logs)
        assert self.bot.returncode is None, f"the SDK bot exited\n{self.logs()}"

    async def push(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post("/_fake/push", json=body)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


@pytest.fixture
async def oracle(sandbox: tuple[str, dict[str, str], Path], tmp_path: Path) -> AsyncIterator[Oracle]:
    """The quick-start bot started with the credentials the sandbox printed, once its websocket is open."""
    url, hint, sandbox_log = sandbox
    assert hint["DINGTALK_API_BASE"] == url
    bot_log = tmp_path / "sdk_bot.log"

    def logs() -> str:
        return f"SDK bot log:\n{bot_log.read_text()}\nsandbox log:\n{sandbox_log.read_text()}"

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DINGTALK_")},
        # The SDK's own switch, read when it is imported; every other address comes from the emulator.
        "DINGTALK_OPENAPI_ENDPOINT": url,
        "NO_PROXY": "127.0.0.1,localhost",  # requests and websockets honour proxy variables
        "no_proxy": "127.0.0.1,localhost",
    }
    args = ["--client_id", hint["DINGTALK_APP_KEY"], "--client_secret", hint["DINGTALK_APP_SECRET"]]
    feed = Feed()
    async with httpx.AsyncClient(base_url=url, timeout=10) as http, anyio.create_task_group() as tg:
        await tg.start(feed.pump, http)
        with open(bot_log, "wb") as out:  # noqa: ASYNC230 - the child's log file, opened once
            bot = await anyio.open_process(
                [sys.executable, str(BOT), *args], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            session = Oracle(http, feed, bot, logs)
            await session.until("the SDK bot connects", lambda ev: len(opened(ev)) == 1)
            yield session
        finally:
            await stop(bot)
            tg.cancel_scope.cancel()


@pytest.mark.anyio
@pytest.mark.slow
async def test_the_sdk_quickstart_bot_answers_a_dm_and_a_group_mention(oracle: Oracle) -> None:
    dm = await oracle.push({"kind": "dm", "user": "user1002", "text": "hello from a DM"})
    group = await oracle.push(
        {"kind": "group", "user": "user1001", "text": "hello group", "conversation_id": DEFAULT_GROUP_ID}
    )
    assert group["data"]["isInAtList"] is True  # an @message: DingTalk pushes no other group message
    await oracle.until(
        "the SDK acks both messages and answers each twice",
        lambda ev: all(acked(ev, p["message_id"]) and len(replies(ev, p)) == 2 for p in (dm, group)),
    )
    events = oracle.feed.events
    for pushed, sender, text in [(dm, "user1002", "hello from a DM"), (group, "user1001", "hello group")]:
        assert [(r["via"], r["msgtype"], r["title"], r["text"]) for r in replies(events, pushed)] == [
            ("webhook", "text", None, f"echo: {text}"),
            ("webhook", "markdown", "echo", f"**echo**: {text}"),
        ], oracle.logs()
        assert all(r["at_user_ids"] == [sender] for r in replies(events, pushed))  # the SDK @s the sender
    assert not [e for e in events if e["kind"] == "redelivery"]

    # The emulator's records and its web chat agree with the feed.
    http = oracle.http
    acks = (await http.get("/_fake/acks")).json()["acks"]
    assert [(a["message_id"], a["code"], a["topic"]) for a in acks] == [
        (dm["message_id"], 200, CALLBACK_TOPIC),
        (group["message_id"], 200, CALLBACK_TOPIC),
    ]
    assert all(a["data"] == {"response": "OK"} for a in acks)  # what process() returned, as the SDK acks it
    history = (await http.get("/sandbox/history")).json()["events"]
    shown = [(e["conversation_id"], e["text"]) for e in history if e["kind"] == "outbound"]
    assert len(shown) == 4
    assert shown == [(e["conversation_id"], e["text"]) for e in events if e["kind"] == "outbound"]
    (open_request,) = (await http.get("/_fake/open_requests")).json()["open_requests"]
    assert open_request["body"]["subscriptions"] == [{"type": "CALLBACK", "topic": CALLBACK_TOPIC}]
    assert open_request["body"]["ua"].startswith("dingtalk-sdk-python/") and open_request["status"] == 200
    await assert_no_unknown_or_refused_calls(http)


@pytest.mark.anyio
@pytest.mark.slow
async def test_the_sdk_answers_pings_and_reconnects_after_a_disconnect(oracle: Oracle) -> None:
    opaque = (await oracle.http.post("/_fake/ping", json={})).json()["opaque"]
    await oracle.until(
        "the SDK acks the ping", lambda ev: any(e["kind"] == "ack" and e["topic"] == "ping" for e in ev)
    )
    (ping,) = (await oracle.http.get("/_fake/pings")).json()["pings"]
    assert ping["opaque"] == opaque and ping["ok"] is True  # acked 200 with the same opaque

    await oracle.http.post("/_fake/disconnect", json={})
    await oracle.until("the SDK opens a new connection", lambda ev: len(opened(ev)) == 2)
    first, second = opened(oracle.feed.events)
    assert first["connection_id"] != second["connection_id"]
    dm = await oracle.push({"kind": "dm", "user": "manager807", "text": "still there?"})
    await oracle.until(
        "the new connection answers", lambda ev: acked(ev, dm["message_id"]) and len(replies(ev, dm)) == 2
    )
    assert [r["text"] for r in replies(oracle.feed.events, dm)] == [
        "echo: still there?",
        "**echo**: still there?",
    ]
    await assert_no_unknown_or_refused_calls(oracle.http)


async def assert_no_unknown_or_refused_calls(http: httpx.AsyncClient) -> None:
    assert (await http.get("/_fake/unknown_routes")).json()["unknown_routes"] == []
    calls = (await http.get("/_fake/requests")).json()["requests"]
    assert calls and all(c["status"] == 200 and c["response"].get("errcode", 0) == 0 for c in calls), calls


def opened(events: list[Event]) -> list[Event]:
    return [e for e in events if e["kind"] == "connection" and e.get("event") == "opened"]


def acked(events: list[Event], message_id: str) -> bool:
    return any(e["kind"] == "ack" and e["message_id"] == message_id and e["code"] == 200 for e in events)


def replies(events: list[Event], pushed: dict[str, Any]) -> list[Event]:
    cid = pushed["data"]["conversationId"]
    return [e for e in events if e["kind"] == "outbound" and e["conversation_id"] == cid]


def test_frames_constants_are_the_sdks() -> None:
    # In a subprocess: importing dingtalk_stream captures DINGTALK_OPENAPI_ENDPOINT for the whole process.
    names = [
        "ChatbotMessage.TOPIC",
        "ChatbotMessage.DELEGATE_TOPIC",
        "AckMessage.STATUS_OK",
        "AckMessage.STATUS_BAD_REQUEST",
        "AckMessage.STATUS_NOT_IMPLEMENT",
        "AckMessage.STATUS_SYSTEM_EXCEPTION",
        "SystemMessage.TYPE",
        "EventMessage.TYPE",
        "CallbackMessage.TYPE",
        "SystemMessage.TOPIC_DISCONNECT",
        "frames.Headers.CONTENT_TYPE_APPLICATION_JSON",
    ]
    code = f"import json, dingtalk_stream as d; print(json.dumps([{', '.join('d.' + n for n in names)}]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [
        frames.TOPIC_ROBOT_MESSAGE,
        frames.TOPIC_ROBOT_DELEGATE,
        frames.STATUS_OK,
        frames.STATUS_BAD_REQUEST,
        frames.STATUS_NOT_IMPLEMENT,
        frames.STATUS_SYSTEM_EXCEPTION,
        frames.TYPE_SYSTEM,
        frames.TYPE_EVENT,
        frames.TYPE_CALLBACK,
        frames.TOPIC_DISCONNECT,
        frames.CONTENT_TYPE_JSON,
    ]


def test_edgecrab_never_imports_the_sdk() -> None:
    # In a subprocess where importing the SDK fails, every module of the package must still import: the SDK
    # is a test-only dependency (pyproject's `test` extra), not something a user's install provides.
    code = """if True:
        import importlib, pkgutil, sys
        sys.modules["dingtalk_stream"] = None  # any `import dingtalk_stream` now raises ImportError
        import edgecrab
        names = [m.name for m in pkgutil.walk_packages(edgecrab.__path__, "edgecrab.")]
        for name in names:
            if not name.endswith(".__main__"):
                importlib.import_module(name)
        print(len(names))
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 50  # the walk found the package's modules
