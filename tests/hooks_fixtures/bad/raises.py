"""Loads fine, fails at run time: every hook here raises."""

from typing import Any

from edgecrab import hookimpl


@hookimpl
def prepare_reply(reply: str) -> str:
    raise ValueError(f"cannot redact {reply!r}")  # line 10


@hookimpl
async def message_received(message: Any) -> None:
    raise RuntimeError("audit store is down")  # line 15


@hookimpl
def allow_message(message: Any) -> bool:
    raise KeyError("allow")


@hookimpl
def register_commands(register: Any) -> None:
    register("/boom", boom, help="Always fails")


def boom(command: Any) -> str:
    raise ZeroDivisionError("boom")  # line 29
