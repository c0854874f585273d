"""The hooks of one gateway: :class:`HookManager` calls them and lists them.

:meth:`HookManager.load` makes one pluggy ``PluginManager`` per gateway and loads every configured hook into
it (:mod:`edgecrab.hooks.load`: load order, hook names, errors at load). Calls go through
:mod:`edgecrab.hooks.call` (isolation, timeouts, tracing); :meth:`HookManager.listing_text` is both the
``/hooks`` answer and the ``edgecrab hooks list`` output.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from edgecrab.config import Config, HooksConfig
from edgecrab.core import router
from edgecrab.hooks.call import HookCommand, HookRunner
from edgecrab.hooks.load import HOOK_NAMES, HookRecord, load_hooks, new_plugin_manager

BUILTIN_COMMANDS: tuple[str, ...] = tuple(router.BUILTIN_COMMANDS)

__all__ = [
    "BUILTIN_COMMANDS",
    "HOOK_NAMES",
    "HookCommand",
    "HookInfo",
    "HookManager",
    "hooks_list_text",
    "new_plugin_manager",
]


@dataclass(frozen=True)
class HookInfo:
    """One line of the hooks listing."""

    name: str
    path: str
    hooks: tuple[str, ...]
    """Hook names it implements, sorted."""
    status: str
    """``loaded`` | ``failed`` | ``disabled`` (by ``hooks.enabled`` / ``hooks.disabled``)."""
    error: str = ""
    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    kind: str = "file"
    """``builtin`` | ``entry point`` | ``module`` | ``file``."""


class HookManager:
    """The loaded hooks of one gateway: call them (:mod:`edgecrab.hooks.call`) and list them."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        records: Sequence[HookRecord],
        *,
        timeout_s: float = 5.0,
        paths: Sequence[Path] = (),
        strict: bool = False,
    ) -> None:
        self.pm = pm
        self._records = list(records)
        self._paths = tuple(paths)
        sources = {r.name: r.source for r in self._records if r.status == "loaded"}
        self.runner = HookRunner(pm, sources, timeout_s=timeout_s, strict=strict)
        self._commands: dict[str, HookCommand] | None = None

    @classmethod
    def load(
        cls,
        config: HooksConfig,
        *,
        builtins: Sequence[tuple[str, object]] = (),
        strict: bool = False,
    ) -> HookManager:
        """Load every configured hook. Raises :class:`HookLoadError` unless ``config.on_error == "skip"``."""
        pm = new_plugin_manager()
        records = load_hooks(pm, config, builtins)
        return cls(pm, records, timeout_s=config.timeout_s, paths=config.paths, strict=strict)

    @classmethod
    def empty(cls) -> HookManager:
        return cls(new_plugin_manager(), ())

    # -- calling -------------------------------------------------------------------------------------

    async def notify(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation; errors and timeouts are logged and skipped."""
        await self.runner.notify(hook, **kwargs)

    async def allow(self, hook: str, **kwargs: Any) -> bool:
        """Veto: ``False`` as soon as one implementation returns ``False``."""
        return await self.runner.allow(hook, **kwargs)

    async def pipeline(self, hook: str, value_arg: str, value: Any, **kwargs: Any) -> Any:
        """Pass ``value`` (as argument ``value_arg``) through every implementation; return the result."""
        return await self.runner.pipeline(hook, value_arg, value, **kwargs)

    async def first(self, hook: str, **kwargs: Any) -> Any:
        """The first non-``None`` result, or ``None``."""
        return await self.runner.first(hook, **kwargs)

    async def register_commands(
        self, *, reserved: Iterable[str] = BUILTIN_COMMANDS
    ) -> dict[str, HookCommand]:
        """Collect hook commands; ``register_commands`` implementations run once, later calls reuse them."""
        if self._commands is None:
            self._commands = await self.runner.collect_commands(reserved)
        return dict(self._commands)

    def plugin(self, name: str) -> Any:
        """The loaded module (or object) of hook ``name``; ``None`` when not loaded."""
        return self.pm.get_plugin(name)

    # -- listing -------------------------------------------------------------------------------------

    def listing(self) -> list[HookInfo]:
        infos = []
        for r in self._records:
            stats = self.runner.stats.get(r.name)
            infos.append(
                HookInfo(
                    name=r.name,
                    path=r.path,
                    hooks=r.hooks,
                    status=r.status,
                    error=r.error,
                    calls=stats.calls if stats else 0,
                    errors=stats.errors if stats else 0,
                    timeouts=stats.timeouts if stats else 0,
                    kind=r.kind,
                )
            )
        return infos

    def listing_text(self, *, running: bool) -> str:
        """The ``/hooks`` answer (``running=True`` adds counts) and ``edgecrab hooks list`` output."""
        infos = self.listing()
        if not infos:
            searched = ", ".join(
                _display_path(str(p)) + ("" if p.exists() else " (does not exist)") for p in self._paths
            )
            where = f"hooks.paths; searched: {searched}" if searched else "hooks.paths"
            return (
                "No hooks loaded.\n\n"
                f"To add one, put a Python file in a hooks folder ({where}),\n"
                "for example hooks/10_hello.py:\n\n"
                "    from edgecrab import hookimpl\n\n"
                "    @hookimpl\n"
                "    def prepare_reply(reply):\n"
                '        return reply + "\\n\\n(sent by edgecrab)"\n\n'
                "Every hook is described in docs/hooks.md."
            )
        counts = {s: sum(1 for i in infos if i.status == s) for s in ("loaded", "failed", "disabled")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        lines = [f"Hooks: {summary}", ""]
        for info in infos:
            lines.append(f"- {info.name} ({info.status}): {_display_path(info.path)}")
            if info.hooks:
                lines.append(f"  hooks: {', '.join(info.hooks)}")
            if info.error:
                lines.append(f"  error: {info.error}")
            if running and info.status == "loaded":
                lines.append(f"  calls: {info.calls}, errors: {info.errors}, timeouts: {info.timeouts}")
        return "\n".join(lines)


def hooks_list_text(config: Config) -> str:
    """``edgecrab hooks list``: load without starting the gateway, listing failed hooks with their reason."""
    manager = HookManager.load(dataclasses.replace(config.hooks, on_error="skip"))
    return manager.listing_text(running=False)


def _display_path(path: str) -> str:
    """Paths under the working directory are shown relative to it (shorter, and the same on every machine)."""
    if not os.path.isabs(path):
        return path
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel
