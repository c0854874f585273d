"""The media stage between the ingest task and the runner: merge window, background downloads, turns.

:meth:`MediaStage.submit` takes each message the gateway would hand to the runner. A message with files
starts their downloads at once, in this stage's task group (at most :data:`PARALLEL_DOWNLOADS` at a time,
over all messages), so they run while the message waits in its session's queue; the run's
:meth:`MediaStage.user` waits for them and renders the turn (:mod:`edgecrab.media.render`). Downloads are
found by download code, so a run that starts before its prefetch (a message picked up after a restart, a
merged one) neither downloads twice nor misses one. A downloaded picture is then prepared for the agent
(:meth:`~edgecrab.media.render.Renderer.prepare`: scaled down, base64) in the same background task, so the
merge window hides that work too: a lone 5 MB photo reached the agent 1,035 ms after its callback when the
scale-down started as the 800 ms window closed, 822 ms now (BENCHMARKS.md, media).

**Merge window.** A message that is only a picture waits ``media.merge_window_ms`` for more pictures from
the same sender in the same session; each new one extends the wait. Then they go to the runner as one
message (the first one's id, every picture in order); the others are finished in the inbox as merged. A
message of another kind from that sender ends the wait first, so the order in which they were sent is kept.
Nothing of this is on the ack path: the messages are in the durable inbox already, and one that waits here
when the process stops is picked up (alone) on the next start.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from edgecrab.config import AgentConfig, Config, DingTalkConfig
from edgecrab.core.turns import UserTurn
from edgecrab.dingtalk.tokens import TokenCache
from edgecrab.errors import StartupError
from edgecrab.events import Attachment, Message
from edgecrab.media.fetch import MediaFetcher
from edgecrab.media.files import MediaFiles
from edgecrab.media.render import Prepared, Renderer
from edgecrab.outbound import http_client

log = logging.getLogger("edgecrab.media")

PARALLEL_DOWNLOADS = 4
"""Downloads at once, over all messages. On loopback (bench 7b, 50 photos at once) the limit is CPU, and each
download in flight is one more task with bytes to read in every step of the event loop: with 32 the acks of
the first seconds waited 20-35 ms (p50), with 8 the p99 was 19-41 ms, with 4 12-14 ms, and the last photo
was answered sooner (3.9 s instead of 5.0 s). From DingTalk's storage a download is bound by the network:
four at once still take a burst of photos at several a second."""
CLEANUP_EVERY_S = 600.0
Submit = Callable[[Message, bool], Awaitable[None]]
"""submit(message, quiet): hand a message to the runner."""
Merged = Callable[[Message, str], Awaitable[None]]
"""merged(message, into_id): a message answered as part of another (finish it in the inbox)."""


@dataclass(slots=True)
class _Download:
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Attachment | None = None
    prepared: Prepared | None = None
    at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Waiting:
    messages: list[Message]
    quiet: bool
    deadline: float


class MediaStage:
    def __init__(
        self,
        config: Config,
        tokens: TokenCache,
        *,
        submit: Submit,
        key: Callable[[Message], str],
        merged: Merged,
        client: Any = None,
        robot: DingTalkConfig | None = None,
        agent: AgentConfig | None = None,
    ) -> None:
        """``robot``, ``agent``: the robot whose messages these are (its code and api_base download them)
        and its agent (vision, content parts); default: the config's first robot and ``agent``."""
        media = config.media
        robot, agent = robot or config.dingtalk, agent or config.agent
        self.robot_code = robot.robot_code
        self.files = MediaFiles(media.directory or default_directory(config), media.keep_hours)
        self._client = client or http_client(timeout=media.timeout_s, max_connections=PARALLEL_DOWNLOADS)
        self.fetcher = MediaFetcher(media, robot.api_base, tokens, self._client, self.files)
        self.renderer = Renderer(media, vision=agent.vision, parts=agent.type == "openai")
        self.window_s = media.merge_window_ms / 1000
        self._submit, self._key, self._merged = submit, key, merged
        self._downloads: dict[str, _Download] = {}
        self._waiting: dict[tuple[str, str], _Waiting] = {}
        self._limit = anyio.CapacityLimiter(PARALLEL_DOWNLOADS)
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            # On the loop, not in a worker thread: a mkdir and a scan of one directory whose files live a day
            # take well under a millisecond, and a gateway that received no media starts no thread at all.
            self._ensure_directory()
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                while True:
                    self.files.cleanup()
                    self._forget_old()
                    await anyio.sleep(min(CLEANUP_EVERY_S, self.files.keep_s / 4))
        finally:
            self._tg = None
            with anyio.move_on_after(0.5, shield=True):
                await self._client.aclose()

    def _ensure_directory(self) -> None:
        try:
            self.files.ensure()
        except OSError as exc:
            raise StartupError(
                f"media.directory {self.files.directory} cannot be used ({exc.strerror or exc}): set it "
                "to a folder this user may create and write, or leave it empty for media/ in the state "
                "directory",
                exit_code=2,
            ) from None

    # -- intake --------------------------------------------------------------------------------------
    async def submit(self, message: Message, *, quiet: bool = False) -> None:
        """Hand ``message`` to the runner, after its downloads started (and the merge window)."""
        key = (self._key(message), message.sender.key)
        if self.window_s > 0 and self._tg is not None and _only_a_picture(message):
            self._prefetch(message)
            waiting = self._waiting.get(key)
            if waiting is None:
                waiting = self._waiting[key] = _Waiting([], quiet, 0.0)
                self._tg.start_soon(self._release_later, key, waiting)
            waiting.messages.append(message)
            waiting.deadline = time.monotonic() + self.window_s
            return
        await self._release(key)
        self._prefetch(message)
        await self._submit(message, quiet)

    async def _release_later(self, key: tuple[str, str], waiting: _Waiting) -> None:
        # Each picture that joins moves the deadline: sleep until the latest one has passed.
        left = self.window_s
        while left > 0:
            await anyio.sleep(left)
            left = waiting.deadline - time.monotonic()
        if self._waiting.get(key) is waiting:
            try:
                await self._release(key)
            except Exception:  # never take the stage (and the gateway) down for one message
                log.exception("[media] handing merged pictures to the runner failed")

    async def _release(self, key: tuple[str, str]) -> None:
        waiting = self._waiting.pop(key, None)
        if waiting is None:
            return
        first, *rest = waiting.messages
        if rest:
            pictures = tuple(a for m in waiting.messages for a in m.attachments)
            log.info(
                "[media] %d pictures from one sender answered as one turn (message %s)",
                len(waiting.messages),
                first.id,
            )
            for other in rest:
                await self._merged(other, first.id)
            first = first.replace(attachments=pictures)
        await self._submit(first, waiting.quiet)

    @property
    def waiting(self) -> int:
        """Messages held in a merge window, not yet handed to the runner."""
        return sum(len(w.messages) for w in self._waiting.values())

    # -- downloads -----------------------------------------------------------------------------------
    def _prefetch(self, message: Message) -> None:
        if self._tg is None:
            return
        for att in _media_of(message):
            if att.download_code and att.download_code not in self._downloads:
                slot = self._downloads[att.download_code] = _Download()
                self._tg.start_soon(self._download, att, self.robot_code, slot)

    async def _download(self, att: Attachment, robot: str, slot: _Download) -> None:
        # In the stage's task group: an exception here would stop the stage, and the gateway with it.
        try:
            async with self._limit:
                slot.result = result = await self.fetcher.fetch(att, robot)
            slot.prepared = await self.renderer.prepare(result)
        except Exception as exc:
            log.exception("[media] %s download failed unexpectedly", att.kind)
            slot.result = slot.result or replace(att, note=f"the download failed ({type(exc).__name__})")
        finally:
            slot.done.set()

    async def _resolved(self, att: Attachment, robot: str) -> tuple[Attachment, Prepared | None]:
        slot = self._downloads.pop(att.download_code, None)
        if slot is None:
            return await self.fetcher.fetch(att, robot), None
        await slot.done.wait()
        return slot.result or replace(att, note="the download was interrupted"), slot.prepared

    def _forget_old(self) -> None:
        """Downloads never asked for (their message was dropped by /stop): forget them after an hour."""
        limit = time.monotonic() - 3600
        for code in [c for c, d in self._downloads.items() if d.done.is_set() and d.at < limit]:
            del self._downloads[code]

    # -- the runner's TurnContent -----------------------------------------------------------------------
    async def user(self, message: Message) -> UserTurn:
        if not _media_of(message):
            text = message.agent_text()
            return UserTurn(text, text, message)
        self._prefetch(message)
        results: dict[int, Attachment] = {}
        ready: dict[str, Prepared] = {}
        every = _media_of(message)

        async def one(i: int, att: Attachment) -> None:
            results[i], prepared = await self._resolved(att, self.robot_code)
            if prepared is not None:
                ready[results[i].path] = prepared

        async with anyio.create_task_group() as tg:
            for i, att in enumerate(every):
                tg.start_soon(one, i, att)
        resolved = [results[i] for i in range(len(every))]
        quoted = len(message.quote.attachments) if message.quote is not None else 0
        if message.quote is not None:
            message = message.replace(quote=replace(message.quote, attachments=tuple(resolved[:quoted])))
        message = message.replace(attachments=tuple(resolved[quoted:]))
        rendered = await self.renderer.render(message, ready)
        return UserTurn(rendered.stored, rendered.content, message, rendered.attachments)

    async def stored_content(self, stored: str) -> str | list[dict[str, Any]]:
        return await self.renderer.stored_content(stored)


def default_directory(config: Config) -> str:
    """Where files go when the config (built in code, not loaded) names no directory: beside the SQLite
    state, else a private folder in the temporary directory."""
    db = config.storage.sqlite_path
    if db is not None and str(db) != ":memory:":
        return str(db.parent / "media")
    return os.path.join(tempfile.gettempdir(), f"edgecrab-media-{os.getuid()}")


def _media_of(message: Message) -> tuple[Attachment, ...]:
    quoted = message.quote.attachments if message.quote is not None else ()
    return (*quoted, *message.attachments)


def _only_a_picture(message: Message) -> bool:
    return message.msgtype == "picture" and len(message.attachments) == 1 and message.quote is None
