"""Hook specifications: every hook the gateway calls, with its call mode. Docstrings only.

The names follow one grammar (see STYLE.md), and the call mode follows from the name:

- ``<noun>_<past participle>`` **notify**: every implementation runs; results are ignored.
- ``allow_<noun>`` **veto**: an implementation returning ``False`` drops the thing; the rest are not called.
- ``prepare_<noun>`` **pipeline**: each implementation gets the current value and may return a replacement
  (``None`` keeps it).
- ``register_<nouns>`` **contribute**: called once at start with a ``register(...)`` callback.
- ``handle_<noun>`` **first**: the first non-``None`` result wins; the rest are not called.

Implementations (``@edgecrab.hookimpl``) may be ``def`` or ``async def`` and take only the arguments they
name. :mod:`edgecrab.hooks.call` calls them (pluggy does not await) with a per-call timeout and error
isolation. ``docs/hooks.md`` documents each hook with an example; a meta-test keeps the two in step.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("edgecrab")
hookimpl = pluggy.HookimplMarker("edgecrab")


@hookspec
def hook_loaded(name: str, config: Any) -> None:
    """Notify (this hook only): the hook was just loaded; ``config`` is its ``hooks.config.<name>`` mapping.

    Called synchronously, once, for the implementation in the loading hook only, before any other hook
    runs. ``name`` is the hook's name (file stem, module name or entry-point name); ``config`` is a
    read-only mapping, empty when not configured. Raising here fails loading exactly like an import error
    (``hooks.on_error`` decides), so it is the place to validate settings. Must be a plain ``def``.
    """


@hookspec
def gateway_started(gateway: Any) -> None:
    """Notify: the gateway has started (services are up, before the first message)."""


@hookspec
def gateway_stopping(gateway: Any) -> None:
    """Notify: the gateway is about to stop (still able to send)."""


@hookspec
def connection_changed(robot: str, state: str, detail: str) -> None:
    """Notify: a DingTalk stream connection for ``robot`` changed ``state``.

    ``state`` is ``connected``, ``reconnecting`` or ``failed``; ``detail`` is a short human reason.
    """


@hookspec
def message_received(message: Any) -> None:
    """Notify: an inbound :class:`~edgecrab.events.Message` passed the access rules."""


@hookspec
def allow_message(message: Any) -> bool | None:
    """Veto: return ``False`` to drop the message silently before routing; ``None``/``True`` allow it.

    A hook that raises or times out counts as allowing (the error is logged).
    """


@hookspec
def prepare_message(message: Any) -> Any:
    """Pipeline: return a replacement :class:`~edgecrab.events.Message` (``message.replace(...)``) or None."""


@hookspec
def register_commands(register: Any) -> None:
    """Contribute: called once at start; ``register(name, handler, help="")`` adds a slash command.

    ``handler(command, message)`` (sync or async, naming only the arguments it uses) returns the reply text.
    Names are normalised (``ping`` -> ``/ping``, lowercase); collisions with built-in commands or with
    another hook's command are refused with a logged error.
    """


@hookspec
def command_received(command: Any, message: Any) -> None:
    """Notify: a slash :class:`~edgecrab.events.Command` arrived (built-in, hook-registered or unknown)."""


@hookspec
def session_reset(session: Any) -> None:
    """Notify: ``/new`` or ``/reset`` cleared a session (:class:`~edgecrab.events.SessionInfo`)."""


@hookspec
def prepare_agent_request(request: Any, message: Any) -> Any:
    """Pipeline: edit the :class:`~edgecrab.events.AgentRequest` in place or return a replacement."""


@hookspec
def agent_finished(result: Any, message: Any) -> None:
    """Notify: the agent run ended with an :class:`~edgecrab.events.AgentResult` (also stopped/failed)."""


@hookspec
def prepare_reply(reply: str, message: Any) -> str | None:
    """Pipeline: return replacement reply text or ``None``; runs before chunking and sending."""


@hookspec
def reply_sent(reply: str, message: Any) -> None:
    """Notify: the reply text was delivered to DingTalk (all chunks); ``message`` may be ``None``."""


@hookspec
def send_failed(error: Any, reply: str, message: Any) -> None:
    """Notify: delivering ``reply`` failed for good; ``error`` is the exception or a short reason.

    ``message`` is the message the reply answers, or ``None`` for a notice not tied to one.
    """


@hookspec(firstresult=True)
def handle_error(error: Any, message: Any) -> str | None:
    """First: return text to send to the user for this failure; the first non-``None`` wins.

    ``error`` is the exception or a short reason; ``message`` is ``None`` when no message is involved.
    """
