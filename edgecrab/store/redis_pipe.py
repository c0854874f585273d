"""Redis commands from many tasks sent together: :class:`Pipeliner` gathers the commands the gateway's tasks
issue during one step of the event loop and sends them as one pipeline on one connection, in the order
they were issued, each caller getting its own answer (or its own error).

Why (BENCHMARKS.md, scenario 8): a command sent on its own costs the gateway about 0.1 ms of CPU in
redis-py (a connection taken from the pool and given back, a health check, a timeout around the read, the
task woken for its answer); the same command in a pipeline of many about 0.02 ms. A message answered on
Redis costs 15-odd commands besides its claim, issued by hundreds of runs and deliveries at once, so sent
one by one they were more than half of the gateway's CPU per message, and under load every step of the
event loop, the ack path's included, waited behind them.

How: a caller's command joins the queue and a sender task is started unless one is about to run; the
sender takes everything queued by then (up to :data:`MAX_BATCH`) and executes it as a non-transactional
pipeline (redis-py's public ``pipeline(transaction=False)``, ``execute(raise_on_error=False)``: an error
answer goes to its own caller only). At most ``in_flight`` pipelines are out at once; commands issued
meanwhile wait for the next one, which therefore carries more (group commit). Nothing is atomic across
commands: each script run is atomic on its own, as before. A command whose caller was cancelled before its
pipeline left is not sent. redis-py's retry policy of the client applies to the whole pipeline (a broken
connection sends it again; the scripts' idempotency tokens make that safe, :mod:`edgecrab.store.redis_lua`),
and when it gives up every caller of the pipeline gets the error.

Scripts go by their SHA1 (``EVALSHA``); a server that does not know one (restarted, flushed) answers
``NOSCRIPT`` without running anything, and the script is loaded and sent again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.exceptions

MAX_BATCH = 32
"""Most commands in one pipeline. Redis runs a client's pipelined commands back to back, so a long one
holds up the other connections' commands, the ack path's claim among them: 32 of the store's scripts take
Redis a millisecond or two. (Under load a pipeline carries 3-4 commands on average, so the cap only
splits bursts.)"""

_Queued = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


class Pipeliner:
    """Commands of one client's callers, sent a pipeline at a time (at most ``in_flight`` at once)."""

    def __init__(self, client: redis.asyncio.Redis, *, in_flight: int = 8) -> None:
        self.client = client
        self.in_flight = max(in_flight, 1)
        self._queue: list[_Queued] = []
        self._senders = 0
        """Sender tasks alive (started, not finished)."""
        self._starting = False
        """A sender was started and has not taken the queue yet: commands queued meanwhile go with it."""
        self._shas: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        """The senders, referenced while they run (the event loop keeps only a weak reference)."""
        self.pipelines = 0
        self.commands = 0

    async def call(self, *args: Any) -> Any:
        """One command (``"HGETALL", key``...) and its answer, as ``client.execute_command`` would give it
        (raises its error, or redis-py's connection error once the client's retries gave up)."""
        return await self._submit([args])[0]

    async def calls(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Several commands, sent in this order in the same pipeline (unless it is full); their answers."""
        if not commands:
            return []
        return list(await asyncio.gather(*self._submit([tuple(c) for c in commands])))

    async def script(self, source: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the Lua ``source`` by its SHA1 (loaded first if the server does not know it)."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await self.call("SCRIPT LOAD", source)
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)

    def _submit(self, commands: list[tuple[Any, ...]]) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._queue.extend(zip(commands, futures, strict=True))
        if not self._starting and self._senders < self.in_flight:
            self._starting = True
            self._senders += 1
            task = loop.create_task(self._send())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return futures

    async def _send(self) -> None:
        self._starting = False
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                batch = [(args, future) for args, future in batch if not future.done()]  # cancelled
                if batch:
                    await self._execute(batch)
        finally:
            self._senders -= 1

    async def _execute(self, batch: list[_Queued]) -> None:
        self.pipelines += 1
        self.commands += len(batch)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for args, _ in batch:
                    pipe.execute_command(*args)
                answers = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection, after the client's retries; or cancelled
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)


__all__ = ["MAX_BATCH", "Pipeliner"]
