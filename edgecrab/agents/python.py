"""The python agent: a function named ``package.module:function`` is the agent.

The function is imported when the gateway starts (a typo is a start-up error, not a failed first
message) and called with the :class:`~edgecrab.events.AgentRequest`. An ``async def`` is awaited; a plain
function runs in a worker thread so it cannot block the gateway (on ``/stop`` the gateway stops waiting for
it; a thread cannot be killed, so it finishes in the background). It returns the reply as ``str``, an
:class:`~edgecrab.events.AgentResult`, or a ``dict`` with ``text`` and optionally ``usage``
(``{"prompt_tokens": ..., "completion_tokens": ...}``) and ``attachments`` (pictures and files sent after the
text: :mod:`edgecrab.agents.attachments`).

A function that streams is an ``async def`` generator (or returns an async iterator): each string it
yields is a piece of the answer (shown live with ``reply_mode: card``), and the answer is their
concatenation. It may also yield an :class:`~edgecrab.events.AgentResult` or a ``dict`` last, to report
usage (its ``text``, when not empty, is then the answer).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio.to_thread

from edgecrab.agents.attachments import from_python
from edgecrab.agents.base import Agent, AgentError, Deltas, ignore_deltas
from edgecrab.config import AgentConfig
from edgecrab.events import AgentRequest, AgentResult, Usage


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (the attribute may be dotted: ``module:Class.method``)."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name.strip() or not attr_path.strip():
        raise ValueError(f"agent.callable must look like 'package.module:function', got {spec!r}")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"agent.callable {spec!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(
                f"agent.callable {spec!r}: {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(target):
        raise ValueError(f"agent.callable {spec!r} is a {type(target).__name__}, not a function")
    return target


def _is_async(func: Callable[..., Any]) -> bool:
    """``async def`` functions, partials of them, and objects with an ``async def __call__``."""
    if inspect.iscoroutinefunction(func):
        return True
    if inspect.isroutine(func) or inspect.isclass(func) or isinstance(func, functools.partial):
        return False
    instance: Any = func
    return inspect.iscoroutinefunction(instance.__call__)


class PythonAgent(Agent):
    name = "python"

    def __init__(self, config: AgentConfig) -> None:
        if not config.callable:
            raise ValueError("agent.callable is required for agent.type 'python' (e.g. 'mypkg.bot:answer')")
        self.spec = config.callable
        self.func = load_callable(config.callable)
        self._is_async = _is_async(self.func)

    async def run(self, request: AgentRequest) -> AgentResult:
        return await self.stream(request, ignore_deltas)

    async def stream(self, request: AgentRequest, on_delta: Deltas) -> AgentResult:
        started = time.monotonic()
        if inspect.isasyncgenfunction(self.func):
            value: Any = self.func(request)
        elif self._is_async:
            value = await self.func(request)
        else:
            value = await anyio.to_thread.run_sync(self.func, request, abandon_on_cancel=True)
            if inspect.isawaitable(value):
                value = await value
        streamed = isinstance(value, AsyncIterator)
        if streamed:
            value = await self._collect(value, on_delta)
        result = self._to_result(value)
        if not streamed and result.text:
            on_delta(result.text)
        if not result.duration_s:
            result = dataclasses.replace(result, duration_s=time.monotonic() - started)
        return result

    async def _collect(self, pieces: AsyncIterator[Any], on_delta: Deltas) -> Any:
        """Read a streaming function's pieces: the answer, or its last non-string item with the text."""
        parts: list[str] = []
        last: Any = None
        try:
            async for piece in pieces:
                if isinstance(piece, str):
                    if piece:
                        parts.append(piece)
                        on_delta(piece)
                else:
                    last = piece
        finally:
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:  # /stop: close the generator now, not when it is collected
                with anyio.CancelScope(shield=True):
                    await aclose()
        text = "".join(parts)
        if last is None:
            return text
        result = self._to_result(last)
        return dataclasses.replace(result, text=result.text or text)

    def _to_result(self, value: Any) -> AgentResult:
        if isinstance(value, AgentResult):
            return value
        if isinstance(value, str):
            return AgentResult(text=value)
        if isinstance(value, Mapping):
            text = value.get("text", "" if "attachments" in value else None)  # attachments alone will do
            if isinstance(text, str):
                attachments = from_python(value.get("attachments"))
                return AgentResult(text=text, usage=_usage(value.get("usage")), attachments=attachments)
        raise AgentError(
            "the agent function returned something edgecrab could not read",
            cause=f"{self.spec} returned {type(value).__name__}; expected str, AgentResult or a dict",
        )


def _usage(value: Any) -> Usage:
    if isinstance(value, Usage):
        return value
    if isinstance(value, Mapping):
        return Usage(
            prompt_tokens=int(value.get("prompt_tokens") or 0),
            completion_tokens=int(value.get("completion_tokens") or 0),
        )
    return Usage()
