"""Agent backends, chosen by ``agent.type``: ``echo`` (default), ``openai``, ``command``, ``python``.

:func:`build_agent` is the only constructor the gateway uses; every backend implements
:class:`~edgecrab.agents.base.Agent` and raises :class:`~edgecrab.agents.base.AgentError` for failures the
user should read about.
"""

from __future__ import annotations

from collections.abc import Callable

from edgecrab.agents.base import Agent, AgentError
from edgecrab.config import AgentConfig


def _echo(config: AgentConfig) -> Agent:
    from edgecrab.agents.echo import EchoAgent

    return EchoAgent()


def _openai(config: AgentConfig) -> Agent:
    from edgecrab.agents.openai import OpenAIAgent

    return OpenAIAgent(config)


def _command(config: AgentConfig) -> Agent:
    from edgecrab.agents.command import CommandAgent

    return CommandAgent(config)


def _python(config: AgentConfig) -> Agent:
    from edgecrab.agents.python import PythonAgent

    return PythonAgent(config)


AGENT_TYPES: dict[str, Callable[[AgentConfig], Agent]] = {
    "echo": _echo,
    "openai": _openai,
    "command": _command,
    "python": _python,
}


def build_agent(config: AgentConfig) -> Agent:
    """The backend ``config.type`` names; ``ValueError`` (with the fix) for a bad type or setting."""
    kind = (config.type or "echo").strip().lower()
    factory = AGENT_TYPES.get(kind)
    if factory is None:
        raise ValueError(f"unknown agent.type {config.type!r}: choose one of {', '.join(AGENT_TYPES)}")
    return factory(config)


__all__ = ["AGENT_TYPES", "Agent", "AgentError", "build_agent"]
