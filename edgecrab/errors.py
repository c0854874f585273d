"""The exceptions edgecrab raises on purpose, and how the CLI turns them into exit codes.

::

    EdgecrabError                 base of everything below; ``exit_code`` 1
     ├── ConfigError              the configuration cannot be used; a list of Problems; ``exit_code`` 2
     │    └── HookLoadError       a hook file or module cannot be loaded (import error, unknown hook name)
     ├── StartupError             the gateway cannot start (port in use or bad credentials: ``exit_code`` 2)
     ├── DingTalkError            DingTalk refused or failed a call (``errcode`` and HTTP status kept)
     └── StoreUnavailableError    the store (Redis) cannot be reached; in ``edgecrab.store.base``

Agent backends raise :class:`edgecrab.agents.base.AgentError`, which carries a message meant for the chat user
rather than for the operator, so it lives with the agents and is not part of this tree.

Every message is written for the operator reading a terminal: say what is wrong, where, and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class EdgecrabError(Exception):
    """Base class; the CLI prints ``str(exc)`` (no traceback) and exits with :attr:`exit_code`."""

    exit_code: int = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration."""

    path: str
    """Key path such as ``platforms.dingtalk.reply_format``; empty for the file as a whole."""
    message: str
    line: int | None = None
    """1-based line in the YAML file, when known."""
    hint: str = ""
    """How to fix it, e.g. ``did you mean `require_mention`?``."""
    column: int | None = None

    def render(self) -> str:
        place = ""
        if self.line is not None:
            place = f"line {self.line}" + (f", column {self.column}" if self.column is not None else "")
        where = f"{self.path} ({place})" if self.path and place else self.path or place
        text = f"  - {where}: {self.message}" if where else f"  - {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def sort_key(self) -> tuple[bool, int, str]:
        # Problems read top to bottom like the file; those without a line come last.
        return (self.line is None, self.line or 0, self.path)


class ConfigError(EdgecrabError):
    """The configuration (or something it names) cannot be used; holds every problem found, not just one."""

    exit_code = 2
    title = "invalid configuration"

    def __init__(
        self,
        problems: str | Problem | Iterable[Problem],
        *,
        source: Path | str | None = None,
        hint: str = "",
    ) -> None:
        if isinstance(problems, str):
            problems = [Problem(path="", message=problems, hint=hint)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = sorted(problems, key=Problem.sort_key)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        where = f" ({self.source})" if self.source is not None else ""
        lines = [f"{self.title}{where}: {count} {noun}"]
        lines += [p.render() for p in self.problems]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class HookLoadError(ConfigError):
    """A hook could not be loaded. ``path`` of each Problem names the hook file or module."""

    title = "hooks could not be loaded"


class StartupError(EdgecrabError):
    """The gateway could not start; the message says what to check.

    ``exit_code`` 2 when the fix is in how it is run (a port in use, wrong DingTalk credentials), like a
    configuration error; 1 (the default) for a failure of the machine (a store that cannot be opened)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DingTalkError(EdgecrabError):
    """A DingTalk API call failed after retries, or was refused (bad credentials, missing permission)."""

    def __init__(self, message: str, *, errcode: str | int | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.status = status
