"""What ``edgecrab config show`` prints: the effective configuration as YAML, secrets as ``***``, and after
every key a comment saying where its value came from (:attr:`~edgecrab.config.model.Config.sources`).

The output stays a valid YAML document (a comment may follow any line), so it can be saved and edited as a
config file; the comments are the part a person reads when a value is not what they expected.
"""

from __future__ import annotations

from typing import Any

import yaml

from edgecrab.config.load import BUILTIN_SOURCE
from edgecrab.config.model import Config
from edgecrab.config.redact import redacted_dict
from edgecrab.config.source import KeyPath, format_path

COMMENT_COLUMN = 44
"""Comments start in this column when the line is shorter, so they read as one column."""


def effective_yaml(config: Config) -> str:
    """The ``config show`` text (ends with a newline)."""
    rows = [
        f"# effective configuration ({config.source or BUILTIN_SOURCE}); secrets shown as ***",
        "# after each key, where its value came from: the file (its line, and any ${VAR} it reads), an",
        "# environment variable (env NAME: the file leaves the key out), the sandbox, or the default",
    ]
    _emit(redacted_dict(config), (), 0, config.sources, rows)
    return "\n".join(rows) + "\n"


def _emit(data: dict[str, Any], path: KeyPath, indent: int, sources: Any, rows: list[str]) -> None:
    pad = " " * indent
    for key, value in data.items():
        at = (*path, key)
        source = sources.get(format_path(at))
        if source is None and isinstance(value, dict):  # a section: its keys carry the sources
            rows.append(f"{pad}{key}:")
            _emit(value, at, indent + 2, sources, rows)
            continue
        if value and isinstance(value, list) and all(isinstance(item, dict) for item in value):
            rows.append(f"{pad}{key}:")  # platforms.dingtalk.robots: one block per entry, sources per key
            for index, item in enumerate(value):
                start = len(rows)
                _emit(item, (*at, index), indent + 4, sources, rows)
                rows[start] = f"{pad}  - {rows[start][indent + 4 :]}"
            continue
        # Lists and mappings of plain values in flow style (`[a, b]`); the key itself always in block style.
        flow = None if isinstance(value, list | dict) else False
        text = yaml.safe_dump(
            {key: value}, default_flow_style=flow, sort_keys=False, allow_unicode=True, width=1_000_000
        )
        lines = [pad + line for line in text.rstrip("\n").split("\n")]
        # A block mapping (hooks.config) gets its comment on its first line; anything else on its last,
        # which for a quoted string spanning lines is after the closing quote.
        target = 0 if lines[0].endswith(":") else len(lines) - 1
        lines[target] = f"{lines[target]:<{COMMENT_COLUMN}}  # {source or 'default'}"
        rows.extend(lines)


__all__ = ["effective_yaml"]
