"""``/ping``: answers ``pong`` and how long the message took to arrive; shows ``register_commands``.

``/ping hello`` echoes the argument too. No settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edgecrab import hookimpl
from edgecrab.events import Command, Message


@hookimpl
def register_commands(register: Callable[..., Any]) -> None:
    register("/ping", ping, help="Check that the gateway is alive")


async def ping(command: Command, message: Message) -> str:
    text = "pong"
    if message.created_at > 0:
        text += f" ({max(0.0, time.time() - message.created_at):.1f}s after you sent it)"
    if command.args:
        text += f": {command.args}"
    return text
