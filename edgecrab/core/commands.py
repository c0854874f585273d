"""The gateway's slash commands: what each of the eight does, plus those registered by hooks.

Commands bypass the session queue: they are answered at once, and ``/stop`` cancels the run in flight.

Replies are markdown that reads well both ways: rendered by DingTalk (``reply_format: markdown``, where a
single newline does not break a line, so multi-line answers are a heading line plus a ``-`` list, whose
items always start a new line) and flattened to text (``reply_format: text``). Every reply starts with
an emoji saying what kind of answer it is: ⏹ stopped, ✨ fresh start, 🟢 idle, 🟡 running, 📊 stats,
🪝 hooks, ❓ unknown, 📖 help.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edgecrab.config import CommandsConfig
from edgecrab.core.router import BUILTIN_COMMANDS, HelpEntry, help_text, resolve_alias, unknown_command_text
from edgecrab.core.runs import Runner
from edgecrab.events import Command, Message, SessionInfo
from edgecrab.store.base import SessionStats

Reply = Callable[[Message, str, str], Awaitable[None]]

HOOK_EXAMPLE = """```python
from edgecrab import hookimpl

@hookimpl
def prepare_reply(reply):
    return reply + "\\n\\n(sent by edgecrab)"
```"""


@dataclass
class ConnectionInfo:
    """What /status says about the DingTalk side; filled by the gateway."""

    state: Callable[[], str]
    ops: Callable[[], str] = lambda: ""
    """The ops port's URL (``http://127.0.0.1:PORT``), shown to DingTalk admins; empty: not shown."""
    schedules: Callable[[], list[str]] = lambda: []
    """One line per configured schedule with its next run, shown to DingTalk admins."""
    robot: str = ""
    """The robot's name when the gateway has several: /status, /help and /hooks name it."""


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _api_calls(stats: SessionStats) -> list[str]:
    """The DingTalk API calls the replies cost: one per markdown message, and the AI cards' calls."""
    cards, replies = int(stats.extra.get("card_calls", 0)), int(stats.extra.get("card_replies", 0))
    total = stats.chunks_sent + cards
    if not cards:
        return []
    per_reply = f", {total / stats.messages_out:.1f} per reply" if stats.messages_out else ""
    return [f"- DingTalk API calls: {total}{per_reply} ({cards} for {_plural(replies, 'AI card')})"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _preview(text: str, limit: int = 40) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _display_path(path: str) -> str:
    """A hook file relative to the working directory when it lies under it (shorter, machine-independent)."""
    if not os.path.isabs(path):
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


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
        return help_text(
            dict(self.config.aliases), extra, forward_unknown=self.config.forward_unknown,
            robot=self.connection.robot,
        )

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
            text = "📖 " + self.help()
        elif name == "/new":
            text = await self._new(message, key)
        elif name == "/stop":
            text = await self._stop(message, key)
        elif name == "/retry":
            await self.runner.submit(message, retry=True)
            return True
        elif name == "/status":
            text = self._status(message, key)
        elif name == "/usage":
            text = await self._usage(key)
        elif name == "/hooks":
            text = self._hooks()
        elif name in self.hook_commands:
            text = await self.hook_commands[name].call(resolved, message)
            if not text:
                return True  # the hook asked for no answer
        elif self.config.forward_unknown:
            return False
        else:
            text = unknown_command_text(resolved)
        await self._reply(message, text, key)
        return True

    async def _new(self, message: Message, key: str) -> str:
        running, dropped = await self.runner.reset(key)
        await self._cancel_outbox(message)
        await self.store.session_reset(key, time.time())
        if self.hooks is not None:
            await self.hooks.notify("session_reset", session=SessionInfo(key=key, message=message))
        text = "✨ New conversation started — history cleared."
        if running:
            text += " I stopped the answer in progress."
        if dropped:
            text += f" Dropped {_plural(len(dropped), 'queued message')}."
        return text

    async def stop(self, message: Message) -> None:
        """``/stop`` without its answer: the card's stop button (the card shows that it stopped)."""
        await self._stop(message, self.runner.key(message))

    async def _stop(self, message: Message, key: str) -> str:
        running, dropped = await self.runner.stop(key)
        unsent = await self._cancel_outbox(message)
        if not running and not dropped and not unsent:
            return "🟢 Nothing is running — there's nothing to stop."
        if running:
            text = "⏹ Stopped the answer in progress."
        elif unsent:
            text = "⏹ Stopped — the rest of the answer won't be sent."
        else:
            text = "⏹ Stopped."
        if dropped:
            text += f" Cleared {_plural(len(dropped), 'queued message')}."
        return text

    def _scope(self, message: Message) -> str:
        """The session as a person names it: ``direct message with 张三``, ``group "测试群", shared by
        everyone`` (the session key stays in the logs)."""
        if not message.conversation.is_group:
            return f"direct message with {message.sender.name or message.sender.key}"
        title = message.conversation.title
        group = f'group "{title}"' if title else "this group"
        if self.runner.config.group_scope == "per_user":
            return f"{group}, your own conversation (one per member)"
        return f"{group}, shared by everyone"

    def _status(self, message: Message, key: str) -> str:
        st = self.runner.status(key)
        if st.running:
            head = f"🟡 **Running** for {duration(st.elapsed_s)}"
            if st.preview.strip():
                head += f" — “{_preview(st.preview)}”"
        else:
            head = "🟢 **Idle** — ready for your next message"
        lines = [
            head,
            "",
            *([f"- Robot: {self.connection.robot}"] if self.connection.robot else []),
            f"- Queue: {_plural(st.queued, 'message')} waiting",
            f"- DingTalk: {self.connection.state()}",
            f"- Session: {self._scope(message)}",
        ]
        ops = self.connection.ops() if message.sender.is_admin else ""
        if ops:
            lines.append(f"- Ops port (admins only): {ops} (/healthz /readyz /metrics /status)")
        if message.sender.is_admin:
            lines.extend(self.connection.schedules())
        return "\n".join(lines)

    async def _usage(self, key: str) -> str:
        stats = await self.store.session_stats(key)
        if stats is None:
            return "📊 No stats yet — this conversation hasn't talked to the agent."
        age = time.time() - stats.created_at
        return "\n".join(
            [
                "📊 **Session stats**",
                "",
                f"- Turns: {stats.turns}",
                f"- Messages: {stats.messages_in} in, {stats.messages_out} out",
                f"- Tokens: {stats.prompt_tokens} prompt, {stats.completion_tokens} completion",
                f"- Agent time: {stats.agent_seconds:.1f} s",
                f"- Session age: {duration(age)}",
                f"- Chunks sent: {stats.chunks_sent}",
                *_api_calls(stats),
            ]
        )

    def _hooks(self) -> str:
        infos = self.hooks.listing() if self.hooks is not None else []
        if not infos:
            return "\n".join(
                [
                    "🪝 **No hooks loaded.**",
                    "",
                    "To add one, put a Python file in a hooks folder (`hooks.paths` in the config), "
                    "for example `hooks/10_hello.py`:",
                    "",
                    HOOK_EXAMPLE,
                    "",
                    "Every hook is described in docs/hooks.md.",
                ]
            )
        counts = {s: sum(1 for i in infos if i.status == s) for s in ("loaded", "failed", "disabled")}
        lines = ["🪝 **Hooks:** " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), ""]
        for info in infos:
            line = f"- **{info.name}** ({info.status}) `{_display_path(info.path)}`"
            events = [h for h in info.hooks if h != "hook_loaded"]  # a loading detail, not an event
            if events:
                line += ": " + ", ".join(events)
            if info.error:
                line += f" — {info.error}"
            if info.status == "loaded":
                line += f" · {_plural(info.calls, 'call')}, {_plural(info.errors, 'error')}"
                if info.timeouts:
                    line += f", {_plural(info.timeouts, 'timeout')}"
            lines.append(line)
        if self.hook_commands:
            robot = f" (robot {self.connection.robot})" if self.connection.robot else ""
            lines += ["", f"Commands added by hooks{robot}: " + ", ".join(sorted(self.hook_commands)) + "."]
        return "\n".join(lines)
