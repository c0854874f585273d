"""``python -m bench.fakeproc``: the fake DingTalk and the load drivers, in a process of their own.

The fake is the benchmark's measuring instrument: it times every ack (ack arrival minus frame send) and
every answer (``OutboundRecord.t``). So it runs alone, in this process, with nothing else on its loop: the
orchestrator (:mod:`bench.__main__`, :mod:`bench.scenarios`) starts and stops contenders, reads
``/proc`` and builds reports elsewhere, and talks to this process over stdin/stdout only between
measurements. :class:`bench.fakes.BenchFake` is the client.

The instrument must not pause either. A garbage-collector run in this process stops the fake's loop for
as long as it takes, and every frame sent and ack read in the meantime is timed late: the fake's own
collections would show up as the contenders' latency. So once the fake is up, everything alive is
collected and frozen (``gc.collect(); gc.freeze()``: later collections never walk the fake's setup), and
during each load command the collector is off altogether (``gc.disable()``); it runs once after the
command, when nothing is being timed. What a command leaves for the collector is bounded by its size (in
practice nothing: the collection after 5,000 echoed messages finds no cycles), so this is no leak.

Protocol, one JSON object per line each way:

* stdin's first line is the spec: ``{"app_key", "app_secret", "users": [[staff_id, nick], ...],
  "rest_delay_s", "rest_paths", "seed", "redeliver_after_s", "max_redeliveries"}``; the answer is
  ``{"base_url": ...}`` once the fake listens on 127.0.0.1 (a random port), or ``{"error": ...}``.
* then commands, each answered by ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": text}``:
  ``{"cmd": "wait_connected", "count", "timeout"}``;
  ``{"cmd": "closed_loop", "lanes": [[[number, user index, text], ...], ...], "concurrency", "budget"}``
  and ``{"cmd": "open_loop", "items": [[user index, text], ...], "rate", "budget"}``, whose results are
  the fields of :class:`bench.drive.LoadResult` and :class:`bench.drive.AckResult`;
  ``{"cmd": "pictures_one_by_one", "path", "users": [user index, ...], "budget"}`` and
  ``{"cmd": "pictures_at_once", "path", "pictures": [user index, ...], "dms": [[user index, text], ...],
  "rate", "budget"}`` (:mod:`bench.mediadrive`), whose result is a :class:`bench.mediadrive.PictureResult`;
  ``{"cmd": "close"}`` (answered, then the process exits).

The process exits when stdin closes (its orchestrator is gone), on ``close``, SIGTERM or SIGINT. Nothing
but protocol lines reaches stdout: file descriptor 1 is pointed at stderr at start-up (a stray ``print``
or a C library's output goes to the log) and the protocol writes to a private duplicate of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Coroutine
from typing import IO, Any, TypeVar

from bench import mediadrive
from bench.drive import closed_loop, open_loop
from edgecrab.testing.fakedingtalk import FakeApp, FakeDingTalk, FakeUser

T = TypeVar("T")

LINE_LIMIT = 1 << 30
"""Commands carry whole load plans (10,000 lanes are about 300 KB of JSON); the reader takes any size."""


def build(spec: dict[str, Any]) -> FakeDingTalk:
    fake = FakeDingTalk(
        apps=[FakeApp(spec["app_key"], spec["app_secret"])],
        users=[FakeUser(staff_id, nick) for staff_id, nick in spec["users"]],
        host="127.0.0.1",
        port=0,
        redeliver_after_s=spec["redeliver_after_s"],
        max_redeliveries=spec["max_redeliveries"],
        seed=spec["seed"],
    )
    delay = float(spec.get("rest_delay_s", 0.0))
    for pattern in spec["rest_paths"] if delay > 0 else ():
        fake.faults.delay(pattern, delay)
    return fake


def send(out: IO[str], message: dict[str, Any]) -> None:
    """One protocol line. A blocking write: it only happens between measurements, and the orchestrator's
    reader thread drains the pipe continuously."""
    out.write(json.dumps(message, separators=(",", ":")) + "\n")
    out.flush()


class Server:
    """Runs the commands of one orchestrator against one started fake."""

    def __init__(self, fake: FakeDingTalk) -> None:
        self.fake = fake

    async def run(self, command: dict[str, Any]) -> Any:
        cmd = command.get("cmd")
        if cmd == "wait_connected":
            timeout = float(command.get("timeout", 30.0))
            await self.fake.wait_for_connections(int(command.get("count", 1)), timeout=timeout)
            return None
        if cmd == "closed_loop":
            return await measured(self._closed_loop(command))
        if cmd == "open_loop":
            return await measured(self._open_loop(command))
        if cmd == "pictures_one_by_one":
            return dataclasses.asdict(
                await measured(
                    mediadrive.one_by_one(
                        self.fake, command["path"], command["users"], float(command["budget"])
                    )
                )
            )
        if cmd == "pictures_at_once":
            dms = [(int(index), text) for index, text in command["dms"]]
            return dataclasses.asdict(
                await measured(
                    mediadrive.at_once(
                        self.fake,
                        command["path"],
                        command["pictures"],
                        dms,
                        float(command["rate"]),
                        float(command["budget"]),
                    )
                )
            )
        raise ValueError(f"unknown command {cmd!r}")

    async def _closed_loop(self, command: dict[str, Any]) -> dict[str, Any]:
        users = self.fake.users
        lanes = [
            [(int(number), self.fake.dm(users[index], text)) for number, index, text in lane]
            for lane in command["lanes"]
        ]
        result = await closed_loop(self.fake, lanes, int(command["concurrency"]), float(command["budget"]))
        return dataclasses.asdict(result)

    async def _open_loop(self, command: dict[str, Any]) -> dict[str, Any]:
        users = self.fake.users
        datas = [self.fake.dm(users[index], text) for index, text in command["items"]]
        result = await open_loop(self.fake, datas, float(command["rate"]), float(command["budget"]))
        return dataclasses.asdict(result)


async def measured(coro: Coroutine[Any, Any, T]) -> T:
    """Run a load command with the collector off, and collect once it is over (see the module doc)."""
    gc.disable()
    try:
        return await coro
    finally:
        gc.enable()
        gc.collect()


async def serve(out: IO[str]) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = await reader.readline()
    if not line:
        return 1
    try:
        fake = build(json.loads(line))
        await fake.start()
    except Exception:
        send(out, {"error": traceback.format_exc()})
        return 1
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lines: asyncio.Queue[bytes] = asyncio.Queue()
    tasks = [
        asyncio.create_task(_read(reader, lines, stop)),
        asyncio.create_task(_commands(Server(fake), lines, stop, out)),
    ]
    try:
        send(out, {"base_url": fake.base_url})
        gc.collect()
        gc.freeze()
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await fake.stop()
    return 0


async def _read(reader: asyncio.StreamReader, lines: asyncio.Queue[bytes], stop: asyncio.Event) -> None:
    """Hand stdin's lines on; stop everything when it closes, even in the middle of a command."""
    try:
        while line := await reader.readline():
            lines.put_nowait(line)
        logging.getLogger(__name__).info("stdin closed: exiting")
    finally:
        stop.set()


async def _commands(server: Server, lines: asyncio.Queue[bytes], stop: asyncio.Event, out: IO[str]) -> None:
    """Run commands one at a time, each answered by one line, until ``close``."""
    try:
        while True:
            line = await lines.get()
            if not line.strip():
                continue
            try:
                command = json.loads(line)
                if command.get("cmd") == "close":
                    send(out, {"ok": True, "result": None})
                    return
                result = await server.run(command)
            except Exception:
                send(out, {"ok": False, "error": traceback.format_exc()})
            else:
                send(out, {"ok": True, "result": result})
    finally:
        stop.set()


def main() -> int:
    # The protocol owns the original stdout; file descriptor 1 and sys.stdout now lead to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # A contender stopped in the middle of sending (scenario 2 stops edgecrab while 1,000 answers are still
    # on their way) makes aiohttp's server log "Connection lost" tracebacks; they are expected.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(serve(out))
    finally:
        out.close()


if __name__ == "__main__":
    sys.exit(main())
