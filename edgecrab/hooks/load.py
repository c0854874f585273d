"""Loading hooks: where they come from, in what order, and what happens when one cannot be loaded.

:func:`load_hooks` fills one gateway's pluggy ``PluginManager`` (made by :func:`new_plugin_manager`) and
returns a :class:`HookRecord` per hook for
:class:`~edgecrab.hooks.manager.HookManager`, which calls and lists them.

Load order (also the call order, see :mod:`edgecrab.hooks.call`):

1. ``add_hookspecs(edgecrab.hooks.specs)``, before anything is registered;
2. built-ins (objects the gateway passes in, registered exactly like user hooks);
3. the ``edgecrab`` entry-point group (pip-installed hook packages), by entry-point name, unless
   ``hooks.entry_points`` is false;
4. ``hooks.modules``, in the order listed;
5. each folder of ``hooks.paths`` in the order listed: every ``*.py`` not starting with ``_``, in filename
   order (a path naming a single ``.py`` file loads just that file);
6. ``check_pending()``.

A hook's **name** is its file stem, module name or entry-point name; ``hooks.enabled`` / ``hooks.disabled``
select by it and ``hooks.config.<name>`` holds its settings, handed to its ``hook_loaded(name, config)``
implementation right after it is registered.

A hook that cannot be loaded (syntax error, exception at import, an ``@hookimpl`` whose name is not a hook,
an argument the hook does not offer, a hook name defined without ``@hookimpl``, ``hook_loaded`` raising)
raises :class:`~edgecrab.errors.HookLoadError` naming the file and line, or with ``hooks.on_error: skip``
is logged and listed as failed. Misspelt hooks are never silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import itertools
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import pluggy

from edgecrab.config import HooksConfig
from edgecrab.errors import HookLoadError, Problem
from edgecrab.hooks import specs as hookspecs
from edgecrab.hooks.call import HookSource, def_line

log = logging.getLogger("edgecrab.hooks")

ENTRY_POINT_GROUP = "edgecrab"
HOOK_NAMES: tuple[str, ...] = tuple(
    name for name, obj in vars(hookspecs).items() if getattr(obj, "edgecrab_spec", None) is not None
)
"""Every hook name, in the order ``hookspecs.py`` defines them."""

_module_counter = itertools.count(1)

__all__ = ["ENTRY_POINT_GROUP", "HOOK_NAMES", "HookRecord", "load_hooks", "new_plugin_manager"]


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("edgecrab")
    pm.add_hookspecs(hookspecs)
    return pm


def load_hooks(
    pm: pluggy.PluginManager, config: HooksConfig, builtins: Sequence[tuple[str, object]] = ()
) -> list[HookRecord]:
    """Register ``builtins`` and every configured hook in ``pm``, in load order; one record per hook.

    Raises :class:`HookLoadError` for the first hook that cannot be loaded, unless ``config.on_error`` is
    ``"skip"``.
    """
    return _Loader(pm, config).run(builtins)


@dataclass
class HookRecord:
    """One hook as loading left it: loaded, failed or disabled."""

    name: str
    path: str
    kind: str
    status: str
    source: HookSource
    hooks: tuple[str, ...] = ()
    error: str = ""


@dataclass
class _Candidate:
    name: str
    kind: str
    path: str
    label: str
    importer: Callable[[], Any]


class _Failure(Exception):
    def __init__(self, message: str, *, line: int | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.hint = hint


class _Loader:
    def __init__(self, pm: pluggy.PluginManager, config: HooksConfig) -> None:
        self.pm = pm
        self.config = config
        self.records: list[HookRecord] = []

    def run(self, builtins: Sequence[tuple[str, object]]) -> list[HookRecord]:
        candidates = [
            _Candidate(name, "builtin", _object_path(obj), name, functools.partial(_same, obj))
            for name, obj in builtins
        ]
        if self.config.entry_points:
            candidates += _entry_point_candidates()
        candidates += [
            _Candidate(m, "module", _module_file(m) or m, m, functools.partial(importlib.import_module, m))
            for m in self.config.modules
        ]
        for folder in self.config.paths:
            candidates += _file_candidates(Path(folder))
        for candidate in candidates:
            self._load(candidate)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:  # unreachable unless our own scan missed something
            raise HookLoadError(Problem(path=str(exc.plugin), message=str(exc))) from exc
        self._warn_unused_names()
        return self.records

    def _load(self, c: _Candidate) -> None:
        source = HookSource(name=c.name, label=c.label, filename="", order=len(self.records))
        record = HookRecord(name=c.name, path=c.path, kind=c.kind, status="loaded", source=source)
        enabled, disabled = self.config.enabled, self.config.disabled
        if (enabled and c.name not in enabled) or c.name in disabled:
            record.status = "disabled"
            self.records.append(record)
            log.info("[hooks] %s is disabled by configuration", c.label)
            return
        try:
            if any(r.name == c.name for r in self.records):
                other = next(r for r in self.records if r.name == c.name)
                raise _Failure(f"another hook is already named {c.name!r} ({other.path})")
            plugin = self._import(c)
            filename = _plugin_file(plugin)
            record.source = dataclasses.replace(source, filename=filename)
            if filename and c.kind != "file":
                record.path = filename
            hooks = _scan(self.pm, plugin)
            self.pm.register(plugin, name=c.name)
            record.hooks = tuple(sorted(hooks))
            try:
                self._call_hook_loaded(c, hooks.get("hook_loaded"), filename)
            except BaseException:
                self.pm.unregister(name=c.name)
                raise
        except _Failure as failure:
            self._fail(record, failure)
            return
        except pluggy.PluginValidationError as exc:
            self._fail(record, _Failure(str(exc).replace("\n", "; ")))
            return
        if not record.hooks:
            log.warning("[hooks] %s implements no hooks (forgot @hookimpl?)", c.label)
        else:
            log.info("[hooks] loaded %s from %s: %s", c.name, record.path, ", ".join(record.hooks))
        self.records.append(record)

    def _import(self, c: _Candidate) -> Any:
        try:
            return c.importer()
        except (Exception, SystemExit) as exc:
            raise _Failure(_describe(exc), line=_import_line(exc, c.path)) from exc

    def _call_hook_loaded(self, c: _Candidate, fn: Callable[..., Any] | None, filename: str) -> None:
        if fn is None:
            return
        settings = self.config.config.get(c.name, {})
        available = {"name": c.name, "config": MappingProxyType(dict(settings or {}))}
        named = {n: v for n, v in available.items() if n in inspect.signature(fn).parameters}
        if inspect.iscoroutinefunction(fn):
            raise _Failure("hook_loaded must be a plain def, not async def", line=def_line(fn))
        try:
            fn(**named)
        except Exception as exc:
            line = _import_line(exc, filename) or def_line(fn)
            raise _Failure(f"hook_loaded raised {_describe(exc)}", line=line) from exc

    def _fail(self, record: HookRecord, failure: _Failure) -> None:
        where = record.path + (f":{failure.line}" if failure.line else "")
        record.status = "failed"
        record.hooks = ()
        record.error = (f"line {failure.line}: " if failure.line else "") + failure.message
        record.error += f" ({failure.hint})" if failure.hint else ""
        problem = Problem(path=record.path, message=failure.message, line=failure.line, hint=failure.hint)
        if self.config.on_error != "skip":
            raise HookLoadError(problem)
        reason = failure.message + (f" ({failure.hint})" if failure.hint else "")
        log.error("[hooks] %s: %s; skipped (hooks.on_error: skip)", where, reason)
        self.records.append(record)

    def _warn_unused_names(self) -> None:
        known = {r.name for r in self.records}
        for key, names in (
            ("hooks.enabled", self.config.enabled),
            ("hooks.disabled", self.config.disabled),
            ("hooks.config", tuple(self.config.config)),
        ):
            for name in names:
                if name not in known:
                    close = _closest(name, known)
                    hint = f" (did you mean {close!r}?)" if close else ""
                    log.warning("[hooks] %s names %r but no hook has that name%s", key, name, hint)


def _scan(pm: pluggy.PluginManager, plugin: Any) -> dict[str, Callable[..., Any]]:
    """The hook implementations of ``plugin`` by hook name, after checking each one against its spec."""
    found: dict[str, Callable[..., Any]] = {}
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        fn = getattr(plugin, attr, None)
        if opts is None:
            if attr in HOOK_NAMES and inspect.isfunction(fn) and _defined_in(fn, plugin):
                raise _Failure(
                    f"{attr} looks like a hook but is not decorated", line=def_line(fn), hint="add @hookimpl"
                )
            continue
        assert fn is not None
        name = opts.get("specname") or attr
        if name not in HOOK_NAMES:
            close = _closest(name, HOOK_NAMES)
            raise _Failure(
                f"unknown hook {name!r}", line=def_line(fn), hint=f"did you mean {close!r}?" if close else ""
            )
        if opts.get("wrapper") or opts.get("hookwrapper"):
            raise _Failure(f"{name}: wrapper hooks are not supported", line=def_line(fn))
        spec_args = tuple(inspect.signature(getattr(hookspecs, name)).parameters)
        params = inspect.signature(fn).parameters.values()
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        extra = [p.name for p in params if p.name not in spec_args and p.kind not in variadic]
        if extra:
            raise _Failure(
                f"{name} cannot take {', '.join(repr(e) for e in extra)}",
                line=def_line(fn),
                hint=f"its arguments are: {', '.join(spec_args)}; name any of them",
            )
        found[name] = fn
    return found


def _defined_in(fn: Callable[..., Any], plugin: Any) -> bool:
    return isinstance(plugin, ModuleType) and getattr(fn, "__module__", None) == plugin.__name__


def _closest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return close[0] if close else ""


def _entry_point_candidates() -> list[_Candidate]:
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    out = []
    for ep in eps:
        dist = f" from {ep.dist.name}" if ep.dist is not None else ""
        out.append(_Candidate(ep.name, "entry point", f"{ep.value}{dist}", ep.name, ep.load))
    return out


def _file_candidates(path: Path) -> list[_Candidate]:
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_") and p.is_file())
    else:
        log.warning("[hooks] hooks path %s does not exist; no hooks loaded from it", path)
        return []
    return [_Candidate(f.stem, "file", str(f), f.name, functools.partial(_import_file, f)) for f in files]


def _import_file(path: Path) -> ModuleType:
    """Import a hook file as a fresh module, so each gateway gets its own copy (and its own settings)."""
    safe_stem = re.sub(r"\W", "_", path.stem)
    module_name = f"edgecrab_hook_{next(_module_counter)}_{safe_stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _same(obj: object) -> object:
    return obj


def _module_file(name: str) -> str:
    """Where an importable module lives, without importing it (its parents may get imported)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return ""
    return spec.origin if spec is not None and spec.origin and os.path.isabs(spec.origin) else ""


def _plugin_file(plugin: Any) -> str:
    module = plugin if isinstance(plugin, ModuleType) else inspect.getmodule(type(plugin))
    return str(getattr(module, "__file__", "") or "")


def _object_path(obj: object) -> str:
    return _plugin_file(obj) or f"<{type(obj).__name__}>"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg}"
    return f"{type(exc).__name__}: {exc}"


def _import_line(exc: BaseException, path: str) -> int | None:
    """The line of ``path`` where ``exc`` was raised (or passed through last)."""
    if isinstance(exc, SyntaxError) and exc.filename == path:
        return exc.lineno
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == path:
            line = lineno
    return line
