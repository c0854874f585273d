"""The gateway's slash commands: what each of the eight does, plus those registered by hooks.

Commands bypass the session queue: they are answered at once, and ``/stop`` cancels the run in flight.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edgecrab.config import CommandsConfig
from edgecrab.events import Command, Message
from edgecrab.router import BUILTIN_COMMANDS, HelpEntry, help_text, resolve_alias, unknown_command_text
from edgecrab.runs import Runner

Reply = Callable[[Message, str, str], Awaitable[None]]


@dataclass
class ConnectionInfo:
    """What /status says about the DingTalk side; filled by the gateway."""

    state: Callable[[], str]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


class Commands:
    def __init__(
        self,
        config: CommandsConfig,
        runner: Runner,
        reply: Reply,
        *,
        hooks: Any,
        connection: ConnectionInfo,
        cancel_outbox: Callable[[Message], Awaitable[int]],
    ) -> None:
        self.config = config
        self.runner = runner
        self.store = runner.store
        self._reply = reply
        self.hooks = hooks
        self.connection = connection
        self._cancel_outbox = cancel_outbox
        self.hook_commands: dict[str, Any] = {}

    def help(self) -> str:
        extra = [HelpEntry(c.name, c.help) for c in self.hook_commands.values()]
        return help_text(dict(self.config.aliases), extra, forward_unknown=self.config.forward_unknown)

    def is_known(self, command: Command) -> bool:
        resolved = resolve_alias(command, self.config.aliases)
        return resolved.name in BUILTIN_COMMANDS or resolved.name in self.hook_commands

    async def handle(self, command: Command, message: Message) -> bool:
        """Answer a command. False when it is unknown and ``forward_unknown`` sends it to the agent."""
        resolved = resolve_alias(command, self.config.aliases)
        key = self.runner.key(message)
        if self.hooks is not None:
            await self.hooks.notify("command_received", command=resolved, message=message)
        name = resolved.name
        if name == "/help":
            text = self.help()
        elif name == "/new":
            text = await self._new(message, key)
        elif name == "/stop":
            text = await self._stop(message, key)
        elif name == "/retry":
            await self.runner.submit(message, retry=True)
            return True
        elif name == "/status":
            text = self._status(key)
        elif name == "/usage":
            text = await self._usage(key)
        elif name == "/hooks":
            text = self.hooks.listing_text(running=True) if self.hooks is not None else "No hooks loaded."
        elif name in self.hook_commands:
            text = await self.hook_commands[name].call(resolved, message)
        elif self.config.forward_unknown:
            return False
        else:
            text = unknown_command_text(resolved)
        await self._reply(message, text, key)
        return True

    async def _new(self, message: Message, key: str) -> str:
        running, dropped = self.runner.stop(key)
        if running:
            await self._cancel_outbox(message)
        await self.store.session_reset(key, time.time())
        if self.hooks is not None:
            from edgecrab.events import SessionInfo

            await self.hooks.notify("session_reset", session=SessionInfo(key=key, message=message))
        extra = " The running reply was cancelled." if running else ""
        return f"✨ New conversation started — history cleared.{extra}"

    async def _stop(self, message: Message, key: str) -> str:
        running, dropped = self.runner.stop(key)
        cancelled_chunks = await self._cancel_outbox(message)
        if not running and not dropped and not cancelled_chunks:
            return "Nothing is running — there was nothing to stop."
        parts = ["⏹ Stopped."]
        if dropped:
            parts.append(f"Cleared {len(dropped)} queued message{'s' if len(dropped) != 1 else ''}.")
        return " ".join(parts)

    def _status(self, key: str) -> str:
        running, elapsed, queued, preview = self.runner.status(key)
        if running:
            lines = [f"🟡 Running for {_duration(elapsed)}" + (f" — “{preview}”" if preview else "")]
        else:
            lines = ["🟢 Idle"]
        lines.append(f"Queue: {queued} message{'s' if queued != 1 else ''} waiting")
        lines.append(f"DingTalk: {self.connection.state()}")
        lines.append(f"Session: `{key}`")
        return "  \n".join(lines)

    async def _usage(self, key: str) -> str:
        stats = await self.store.session_stats(key)
        if stats is None:
            return "No stats yet — this session has not talked to the agent."
        age = time.time() - stats.created_at
        return "  \n".join([
            "**Session stats**",
            f"Turns: {stats.turns}",
            f"Messages: {stats.messages_in} in, {stats.messages_out} out",
            f"Tokens: {stats.prompt_tokens} prompt, {stats.completion_tokens} completion",
            f"Agent time: {stats.agent_seconds:.1f} s",
            f"Session age: {_duration(age)}",
            f"Chunks sent: {stats.chunks_sent}",
        ])
