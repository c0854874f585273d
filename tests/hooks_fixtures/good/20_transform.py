"""Good fixture: pipelines, veto, first, and commands."""

from __future__ import annotations

from typing import Any

from edgecrab import hookimpl

CALLS: list[str] = []


@hookimpl
def allow_message(message: Any) -> bool:
    return "forbidden" not in message.text


@hookimpl
async def prepare_message(message: Any) -> Any:
    if message.text.startswith("shout "):
        return message.replace(text=message.text.removeprefix("shout ").upper())
    return None


@hookimpl
def prepare_agent_request(request: Any) -> None:
    request.system_prompt += " Answer briefly."  # edited in place, returns None


@hookimpl
def prepare_reply(reply: str, message: Any) -> str:
    return reply + " [20]"


@hookimpl
def handle_error(error: Any) -> str | None:
    if isinstance(error, KeyError):
        return None
    return f"sorry: {error}"


@hookimpl
def register_commands(register: Any) -> None:
    register("Echo", echo, help="Repeat the arguments")
    register("/status", echo)  # built in: refused with a logged error
    register("two words", echo)  # invalid: refused
    register("whoami", whoami, help="Who is asking")


async def echo(command: Any) -> str:
    return command.args or "(nothing)"


def whoami(cmd: Any, msg: Any) -> str:  # positional names: called as handler(command, message)
    return f"{msg.sender.name} ({cmd.name})"
