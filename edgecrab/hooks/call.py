"""Calling hooks: async-aware, isolated, timed, counted.

pluggy collects implementations but does not await, so :class:`HookRunner` iterates
``pm.hook.<name>.get_hookimpls()`` itself. Order: ``tryfirst`` implementations, then plain ones, then
``trylast`` ones; within each group **load order** (built-ins, entry points, ``hooks.modules``, then hook
files in filename order, so ``10_audit.py`` runs before ``20_redact.py``). This is deliberately not pluggy's
own LIFO order, which would run files backwards.

Each implementation gets only the arguments it names. ``async def`` implementations are awaited on the
event loop; plain ``def`` ones run in a worker thread (one small limiter per gateway) so that a sync hook
that blocks can still be abandoned. Every call is bounded by ``hooks.timeout_s``. An exception is logged
with the hook file and line (``[hooks] 20_redact.py:14 prepare_reply raised ValueError: ...``) and skipped
for that event; a timeout is logged and the call abandoned. Calls, errors and timeouts are counted per hook.
Cancellation from outside (``/stop``, shutdown) is never swallowed.

The ``register_commands`` contribution and the resulting :class:`HookCommand` handlers are called here too,
with the same isolation.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import pluggy

from edgecrab.events import Command, Message

log = logging.getLogger("edgecrab.hooks")

FAILED: Any = object()
"""What :meth:`HookRunner.invoke` returns when the call raised or timed out."""

_MODES = (("allow_", "veto"), ("prepare_", "pipeline"), ("register_", "contribute"), ("handle_", "first"))
_COMMAND_NAME = re.compile(r"^/[^\s/@]+$")
_SYNC_THREADS = 8
"""Worker threads for sync hooks; an abandoned, still-running hook keeps its thread until it returns."""


def mode_of(hook: str) -> str:
    """The call mode a hook name implies (the naming grammar in STYLE.md)."""
    for prefix, mode in _MODES:
        if hook.startswith(prefix):
            return mode
    return "notify"


def def_line(fn: Callable[..., Any]) -> int:
    """The line of ``def`` (not of the first decorator) for a function; 0 when unknown."""
    while isinstance(fn, functools.partial) or hasattr(fn, "__wrapped__"):
        fn = fn.func if isinstance(fn, functools.partial) else fn.__wrapped__  # type: ignore[attr-defined]
    code = getattr(fn, "__code__", None)
    if code is None:
        return 0
    try:
        lines, start = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return int(code.co_firstlineno)
    for offset, text in enumerate(lines):
        if text.lstrip().startswith(("def ", "async def ")):
            return start + offset
    return int(code.co_firstlineno)


@dataclass
class HookStats:
    calls: int = 0
    errors: int = 0
    timeouts: int = 0


@dataclass(frozen=True)
class HookSource:
    """What the runner knows about one loaded hook (file, module, entry point or built-in)."""

    name: str
    """The hook's name: file stem, module name or entry-point name."""
    label: str
    """How log lines name it: the file name (``20_redact.py``) or the module name."""
    filename: str = ""
    """The module's source file, to find the line an exception was raised on."""
    order: int = 0


@dataclass(frozen=True)
class HookCommand:
    """A slash command contributed through ``register_commands``."""

    name: str
    help: str
    plugin: str
    """The file (or module) that registered it."""
    _invoke: Callable[[Command, Message], Any] = field(repr=False, compare=False)
    robots: tuple[str, ...] = ()
    """The robots (names) that have it; empty: every robot."""

    async def call(self, command: Command, message: Message) -> str:
        """Run the handler (isolated, with the hook timeout) and return the reply text.

        An empty string means: send nothing. A handler that raises or times out yields a short notice.
        """
        result: Any = await self._invoke(command, message)
        return result  # type: ignore[no-any-return]


class HookRunner:
    """Calls hook implementations registered in one gateway's ``PluginManager``."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        sources: Mapping[str, HookSource],
        *,
        timeout_s: float,
        strict: bool = False,
    ) -> None:
        self.pm = pm
        self.sources = sources
        self.timeout_s = timeout_s
        self.strict = strict
        """Re-raise hook exceptions and timeouts (the test harness); the gateway never sets it."""
        self.stats: dict[str, HookStats] = {name: HookStats() for name in sources}
        self._limiter: anyio.CapacityLimiter | None = None
        self._checked: set[tuple[str, str, frozenset[str]]] = set()

    # -- the four call modes -------------------------------------------------------------------------

    async def notify(self, hook: str, **kwargs: Any) -> None:
        self._check(hook, "notify", kwargs)
        for impl in self.impls(hook):
            await self.invoke_impl(impl, kwargs)

    async def allow(self, hook: str, **kwargs: Any) -> bool:
        self._check(hook, "veto", kwargs)
        for impl in self.impls(hook):
            if await self.invoke_impl(impl, kwargs) is False:
                log.info("[hooks] %s vetoed %s", self._source(impl).label, hook)
                return False
        return True

    async def pipeline(self, hook: str, value_arg: str, value: Any, **kwargs: Any) -> Any:
        self._check(hook, "pipeline", {value_arg: value, **kwargs})
        expected = type(value)
        for impl in self.impls(hook):
            result = await self.invoke_impl(impl, {value_arg: value, **kwargs})
            if result is FAILED or result is None:
                continue
            if value is not None and not isinstance(result, expected):
                self._count_error(impl)
                message = (
                    f"{hook} returned {type(result).__name__}, expected {expected.__name__} or None; ignored"
                )
                log.error("[hooks] %s:%d %s", self._source(impl).label, def_line(impl.function), message)
                if self.strict:
                    raise TypeError(message)
                continue
            value = result
        return value

    async def first(self, hook: str, **kwargs: Any) -> Any:
        self._check(hook, "first", kwargs)
        for impl in self.impls(hook):
            result = await self.invoke_impl(impl, kwargs)
            if result is not FAILED and result is not None:
                return result
        return None

    # -- register_commands ---------------------------------------------------------------------------

    async def collect_commands(self, reserved: Iterable[str]) -> dict[str, HookCommand]:
        """Call every ``register_commands`` implementation once, each with its own ``register``."""
        builtin = {normalise_command(name) for name in reserved}
        commands: dict[str, HookCommand] = {}
        open_ = True

        for impl in self.impls("register_commands"):
            source = self._source(impl)

            def register(
                name: str, handler: Callable[..., Any], help: str = "", *, robots: Any = (),
                _source: HookSource = source,
            ) -> None:
                problem = ""
                command = normalise_command(name) if isinstance(name, str) else ""
                robots = (robots,) if isinstance(robots, str) else robots
                if not open_:
                    problem = f"register({name!r}) called after start-up; ignored"
                elif not _COMMAND_NAME.match(command):
                    problem = (
                        f"invalid command name {name!r} (one word, like 'ping' or '/ping'); not registered"
                    )
                elif not callable(handler):
                    problem = f"handler for {command} is not callable; not registered"
                elif command in builtin:
                    problem = f"{command} is a built-in command; not registered"
                elif not isinstance(robots, list | tuple) or not all(isinstance(r, str) for r in robots):
                    problem = f"robots for {command} must be a robot name or a list of them; not registered"
                elif command in commands:
                    problem = f"{command} is already registered by {commands[command].plugin}; not registered"
                if problem:
                    self.stats[_source.name].errors += 1
                    log.error("[hooks] %s: %s", _source.label, problem)
                    if self.strict:
                        raise ValueError(problem)
                    return
                commands[command] = HookCommand(
                    name=command,
                    help=str(help or ""),
                    plugin=_source.label,
                    _invoke=functools.partial(self._call_handler, command, handler, _source),
                    robots=tuple(robots),
                )

            await self.invoke_impl(impl, {"register": register})
        open_ = False
        return commands

    async def _call_handler(
        self, name: str, handler: Callable[..., Any], source: HookSource, command: Command, message: Message
    ) -> str:
        result = await self.invoke(_bind_handler(handler, command, message), {}, source, name)
        if result is FAILED:
            return f"{name} failed; the error was logged."
        return "" if result is None else str(result)

    # -- one call ------------------------------------------------------------------------------------

    def impls(self, hook: str) -> list[pluggy.HookImpl]:
        caller = getattr(self.pm.hook, hook, None)
        if caller is None:
            return []
        found = caller.get_hookimpls()
        if not found:  # no implementation (no hooks configured): nothing to sort
            return found

        def key(impl: pluggy.HookImpl) -> tuple[int, int]:
            group = 0 if impl.tryfirst else 2 if impl.trylast else 1
            return group, self._source(impl).order

        plain = [i for i in found if not (i.wrapper or i.hookwrapper)]
        return sorted(plain, key=key)

    async def invoke_impl(self, impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> Any:
        """Call one implementation with the arguments it names; :data:`FAILED` on error or timeout."""
        named = {n: kwargs[n] for n in (*impl.argnames, *impl.kwargnames) if n in kwargs}
        hook = impl.opts.get("specname") or impl.function.__name__
        return await self.invoke(functools.partial(impl.function, **named), {}, self._source(impl), hook)

    async def invoke(
        self, fn: Callable[..., Any], kwargs: Mapping[str, Any], source: HookSource, what: str
    ) -> Any:
        stats = self.stats.setdefault(source.name, HookStats())
        stats.calls += 1
        try:
            with anyio.move_on_after(self.timeout_s) as scope:
                result = await self._call(fn, kwargs)
        except Exception as exc:
            stats.errors += 1
            where = f"{source.label}:{_raise_line(exc, source.filename) or def_line(fn)}"
            log.error("[hooks] %s %s raised %s: %s", where, what, type(exc).__name__, exc)
            log.debug("[hooks] traceback", exc_info=exc)
            if self.strict:
                raise
            return FAILED
        if scope.cancelled_caught:
            stats.timeouts += 1
            log.error(
                "[hooks] %s:%d %s timed out after %gs; abandoned",
                source.label,
                def_line(fn),
                what,
                self.timeout_s,
            )
            if self.strict:
                raise TimeoutError(f"{source.label} {what} timed out after {self.timeout_s:g}s")
            return FAILED
        return result

    async def _call(self, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn):
            result = fn(**kwargs)
        else:
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(_SYNC_THREADS)
            result = await anyio.to_thread.run_sync(
                functools.partial(fn, **kwargs), abandon_on_cancel=True, limiter=self._limiter
            )
        if inspect.isawaitable(result):
            result = await result
        return result

    # -- helpers -------------------------------------------------------------------------------------

    def _source(self, impl: pluggy.HookImpl) -> HookSource:
        source = self.sources.get(impl.plugin_name)
        if source is None:  # registered behind the manager's back (tests poking the pm)
            source = HookSource(name=impl.plugin_name, label=impl.plugin_name, order=1 << 30)
        return source

    def _count_error(self, impl: pluggy.HookImpl) -> None:
        self.stats.setdefault(self._source(impl).name, HookStats()).errors += 1

    def _check(self, hook: str, mode: str, kwargs: Mapping[str, Any]) -> None:
        """Catch the host's own mistakes (wrong hook name, mode or arguments) loudly; a call shape that
        passed once is not checked again (hookspecs do not change; this runs for every hook call)."""
        shape = (hook, mode, frozenset(kwargs))
        if shape in self._checked:
            return
        caller = getattr(self.pm.hook, hook, None)
        if caller is None or caller.spec is None:
            raise TypeError(f"unknown hook {hook!r}")
        if mode_of(hook) != mode:
            raise TypeError(f"{hook} is a {mode_of(hook)} hook, not {mode}")
        expected = tuple(caller.spec.argnames)
        if set(kwargs) != set(expected):
            raise TypeError(f"{hook} takes ({', '.join(expected)}), got ({', '.join(kwargs)})")
        self._checked.add(shape)


def normalise_command(name: str) -> str:
    """``Ping`` -> ``/ping``; ``/ping`` stays."""
    name = name.strip().lower()
    return name if name.startswith("/") else "/" + name


def _bind_handler(handler: Callable[..., Any], command: Command, message: Message) -> Callable[..., Any]:
    """Handlers name ``command`` and/or ``message``, or take them positionally in that order."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return functools.partial(handler, command, message)
    names = {p.name for p in params}
    if names <= {"command", "message"}:
        available = {"command": command, "message": message}
        return functools.partial(handler, **{n: available[n] for n in names})
    return functools.partial(handler, command, message)


def _raise_line(exc: BaseException, filename: str) -> int:
    """The deepest line in ``filename`` the exception passed through; 0 when none did."""
    if not filename:
        return 0
    line = 0
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            line = lineno
    return line
