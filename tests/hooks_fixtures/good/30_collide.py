"""Good fixture: registers a command another hook already has; tryfirst/trylast ordering."""

from __future__ import annotations

from typing import Any

from edgecrab import hookimpl


@hookimpl
def register_commands(register: Any) -> None:
    register("/echo", lambda command: "second echo")


@hookimpl(tryfirst=True)
def handle_error(error: Any) -> str | None:
    return None if isinstance(error, ValueError | KeyError) else "first: handled by 30_collide"


@hookimpl(trylast=True)
def prepare_reply(reply: str) -> str:
    return reply + " [30 last]"
