"""Good fixture: implements every notify hook (sync and async mixed) and records what it saw."""

from __future__ import annotations

from typing import Any

from edgecrab import hookimpl

EVENTS: list[tuple[str, Any]] = []
SETTINGS: dict[str, Any] = {}


@hookimpl
def hook_loaded(name: str, config: Any) -> None:
    SETTINGS.update(config, loaded_as=name)


@hookimpl
def gateway_started(gateway: Any) -> None:
    EVENTS.append(("gateway_started", gateway))


@hookimpl
async def gateway_stopping(gateway: Any) -> None:
    EVENTS.append(("gateway_stopping", gateway))


@hookimpl
def connection_changed(state: str, robot: str) -> None:  # any order, any subset of the arguments
    EVENTS.append(("connection_changed", (robot, state)))


@hookimpl
async def message_received(message: Any) -> None:
    EVENTS.append(("message_received", message.text))


@hookimpl
def command_received(command: Any) -> None:
    EVENTS.append(("command_received", command.name))


@hookimpl
def session_reset(session: Any) -> None:
    EVENTS.append(("session_reset", session.key))


@hookimpl
async def agent_finished(result: Any, message: Any) -> None:
    EVENTS.append(("agent_finished", (result.text, message.id)))


@hookimpl
def reply_sent(reply: str) -> None:
    EVENTS.append(("reply_sent", reply))


@hookimpl
def send_failed(error: Any, reply: str, message: Any) -> None:
    EVENTS.append(("send_failed", (str(error), reply)))


@hookimpl
async def prepare_reply(reply: str) -> str:
    return reply + " [10]"


@hookimpl
def allow_message(message: Any) -> None:
    EVENTS.append(("allow_message", message.text))  # None: no opinion, allowed
