"""Routing: is this text a gateway command, which one, and what does ``/help`` say.

Pure functions over text and config; the session runner (``runs``) acts on what they decide.
Commands are recognised at intake, before any session queue, so ``/stop`` never waits behind the run
it has to stop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from edgecrab.events import Command, Message

log = logging.getLogger(__name__)

#: The product page's command table: the contract. Order is the order /help shows.
BUILTIN_COMMANDS: dict[str, str] = {
    "/help": "List all available gateway commands",
    "/new": "Start a fresh conversation (clears history)",
    "/reset": "Alias for /new",
    "/stop": "Cancel the currently running agent response",
    "/retry": "Re-send your last message",
    "/status": "Show whether the agent is running or idle",
    "/usage": "Show session stats",
    "/hooks": "List loaded event hooks",
}

_COMMAND_RE = re.compile(r"^(/[^\s@/]+)(?:@\S*)?(?:\s+(.*))?$", re.DOTALL)


def parse_command(text: str) -> Command | None:
    """``/Retry@EdgeCrab  now`` -> Command('/retry', 'now'). None when the text is not a command.

    The leading ``@bot`` mention has already been stripped by the DingTalk converter.
    """
    stripped = text.strip()
    if not stripped.startswith("/") or stripped == "/":
        return None
    m = _COMMAND_RE.match(stripped)
    if m is None:
        return None
    return Command(name=m.group(1).lower(), args=(m.group(2) or "").strip(), raw=stripped)


def resolve_alias(command: Command, aliases: Mapping[str, str]) -> Command:
    """Map an alias to its command (``/clear`` -> ``/new``); ``/reset`` is itself an alias of ``/new``."""
    lowered = {k.lower(): v.lower() for k, v in aliases.items()}
    name = lowered.get(command.name, command.name)
    if name == "/reset":
        name = "/new"
    return Command(name=name, args=command.args, raw=command.raw)


@dataclass(frozen=True, slots=True)
class HelpEntry:
    name: str
    description: str


def help_text(
    aliases: Mapping[str, str],
    extra: list[HelpEntry] | None = None,
    *,
    forward_unknown: bool = False,
    robot: str = "",
) -> str:
    """The /help reply, generated from the same table the dispatcher uses; ``robot``: the name of the
    robot answering, when the gateway has several."""
    lines = ["**Gateway commands**" + (f" (robot {robot})" if robot else ""), ""]
    for name, desc in BUILTIN_COMMANDS.items():
        lines.append(f"- `{name}` — {desc}")
    if extra:
        lines += ["", "**Commands added by hooks**", ""]
        for entry in sorted(extra, key=lambda e: e.name):
            lines.append(f"- `{entry.name}` — {entry.description or 'no description'}")
    if aliases:
        lines += ["", "**Aliases**", ""]
        for alias, target in sorted(aliases.items()):
            lines.append(f"- `{alias}` → `{target}`")
    lines.append("")
    if forward_unknown:
        lines.append("Other /words and any other message go to the agent.")
    else:
        lines.append("Any other message goes to the agent.")
    lines.append("In a group, @mention me; in a direct message, just type.")
    return "\n".join(lines)


def unknown_command_text(command: Command) -> str:
    return f"❓ Unknown command `{command.name}` — try /help"


def cap_text(message: Message, limit: int) -> Message:
    """``message`` with its text cut to ``limit`` characters (0: no limit) and a note saying so, which the
    agent sees: a 900 KB paste would otherwise be sent to the model whole, and echoed back as 150 replies."""
    if not limit or len(message.text) <= limit:
        return message
    log.info(
        "[gateway] message %s: text of %d characters cut to %d (max_inbound_chars)",
        message.id,
        len(message.text),
        limit,
    )
    note = f"\n\n[edgecrab: the message was cut to its first {limit:,} of {len(message.text):,} characters]"
    return message.replace(text=message.text[:limit] + note, parts=())
