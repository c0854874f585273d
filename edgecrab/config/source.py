"""Reading a configuration source: YAML with the line of every key, and ``${VAR}`` references.

This module owns parsing (one pass that keeps the node tree, so any key path maps back to its line, and
duplicate keys are caught), key-path formatting (``platforms.dingtalk.app_key``) and the expansion of
``${VAR}`` / ``${VAR:-default}`` in string values. It knows nothing about the schema: that is
:mod:`edgecrab.config.check`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from edgecrab.errors import Problem

KeyPath = tuple[str | int, ...]

_CONSOLE = "the 'Credentials and basic info' page of your app at open.dingtalk.com (Application Development)"
ENV_HINTS = {
    "DINGTALK_APP_KEY": f"set DINGTALK_APP_KEY to the app's AppKey (Client ID), shown on {_CONSOLE}",
    "DINGTALK_APP_SECRET": (
        f"set DINGTALK_APP_SECRET to the app's AppSecret (Client Secret), shown on {_CONSOLE}"
    ),
}
"""Hints for environment variables whose meaning we know, by variable name."""


# --- paths and lines ------------------------------------------------------------------------------------

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def format_path(path: KeyPath) -> str:
    """``("platforms", "dingtalk", "app_key")`` -> ``platforms.dingtalk.app_key``; odd keys in brackets."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENT.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


def line_of(path: KeyPath, lines: Mapping[KeyPath, int]) -> int | None:
    """The line of ``path``, or of its nearest ancestor that is in the file."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


@dataclass
class ParsedYaml:
    data: Any = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    """Key path -> 1-based line of the key (of the item, for list items)."""
    problems: list[Problem] = field(default_factory=list)
    fatal: bool = False
    """True when the text is not YAML at all; ``data`` is then meaningless."""


_SYNTAX_HINT = (
    "check indentation (spaces, not tabs) and quoting near this line; quote values that contain ': ', "
    "end with ':' or start with one of { [ * & ! % @ `"
)


_FLOW_REF_HINT = 'inside { } or [ ], put ${...} references in quotes, e.g. {port: "${PORT:-0}"}'


class _Loader(yaml.SafeLoader):
    """Reads every mapping key as the text written: ``on:`` is the key "on", not the boolean true."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        self.flatten_mapping(node)
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, "found a key that is not plain text",
                    key_node.start_mark,
                )
            mapping[key_node.value] = self.construct_object(value_node, deep=deep)
        return mapping


MAX_VALUES = 100_000
"""Values (mappings, lists and scalars) a configuration may expand to once aliases are followed. A real one
has a few hundred; a "billion laughs" document (nine lines, each alias list repeating the one above) has
10**9, and reading it took 51 s and 2.2 GB before this limit."""

_ALIAS_HINT = (
    "an alias (*name) repeats the whole value its anchor (&name) marks; write the values out, or repeat "
    "fewer of them (a 'billion laughs' document is refused on purpose)"
)


def _alias_problem(root: yaml.Node) -> Problem | None:
    """A problem if following the aliases of the composed node tree ``root`` gives more than
    :data:`MAX_VALUES` values or loops; ``None`` otherwise.

    Counted on the node graph, in which an alias is the anchored node itself (shared, not copied): each
    node's expanded size is computed once (memoised), so the check is linear in the file's size whatever
    the aliases multiply to. The problem names the first key, in document order, whose value is too big.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    found: list[Problem] = []

    def size(node: yaml.Node, path: KeyPath) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Loop(path, node)
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                value = size(value_node, (*path, name))
                if value > MAX_VALUES and not found:
                    what = f"expands to more than {MAX_VALUES:,} values through aliases"
                    line = key_node.start_mark.line + 1
                    found.append(Problem(format_path((*path, name)), what, line=line, hint=_ALIAS_HINT))
                total += size(key_node, path) + value
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                total += size(item, (*path, index))
        active.discard(key)
        sizes[key] = total = min(total, MAX_VALUES + 1)  # capped: the exact number of a bomb is huge
        return total

    try:
        if size(root, ()) > MAX_VALUES:
            what = f"the file expands to more than {MAX_VALUES:,} values through aliases"
            return found[0] if found else Problem("", what, line=1, hint=_ALIAS_HINT)
    except _Loop as loop:
        return Problem(format_path(loop.path), "contains itself through an alias",
                       line=loop.node.start_mark.line + 1,
                       hint="an alias (*name) cannot be used inside the value its anchor (&name) marks")
    return None


class _Loop(Exception):
    def __init__(self, path: KeyPath, node: yaml.Node) -> None:
        self.path, self.node = path, node


def parse_yaml(text: str) -> ParsedYaml:
    """Parse once, keeping the node tree so every key path can be mapped back to its line."""
    result = ParsedYaml()
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        problem = None if node is None else _alias_problem(node)
        if problem is not None:
            # Refused before anything walks or constructs the expanded tree.
            result.problems.append(problem)
            result.fatal = True
            return result
        if node is not None:
            # Before constructing: that resolves `<<` merge keys in place, which would look like duplicates.
            _map_lines(node, (), result)
        result.data = {} if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = exc.context or ""
        if context and exc.context_mark is not None and exc.context_mark is not mark:
            context += f" (line {exc.context_mark.line + 1})"
        message = "YAML syntax error: " + ": ".join(str(p) for p in (context, exc.problem) if p)
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        near = text.splitlines()[max(0, (line or 1) - 2) : line or 1]
        hint = _FLOW_REF_HINT if any("${" in row for row in near) else _SYNTAX_HINT
        result.problems.append(Problem("", message, line=line, column=column, hint=hint))
        result.fatal = True
        return result
    except yaml.YAMLError as exc:
        result.problems.append(Problem("", f"YAML error: {exc}", hint=_SYNTAX_HINT))
        result.fatal = True
        return result
    finally:
        loader.dispose()
    if not isinstance(result.data, dict):
        kind = type_word_of(result.data)
        result.problems.append(
            Problem("", f"the file must be a mapping of sections, got {kind}", line=1,
                    hint="start with `platforms:` and `agent:` at the left margin; see config/example.yaml")
        )
        result.fatal = True
    return result


def _map_lines(node: yaml.Node, path: KeyPath, result: ParsedYaml) -> None:
    if isinstance(node, yaml.MappingNode):
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in first_seen:
                message = f"duplicate key `{key}` (first on line {first_seen[key]})"
                hint = "YAML silently keeps only the last one; remove one of them"
                result.problems.append(Problem(format_path((*path, key)), message, line=line, hint=hint))
            first_seen.setdefault(key, line)
            result.lines[(*path, key)] = line
            _map_lines(value_node, (*path, key), result)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            result.lines[(*path, index)] = item.start_mark.line + 1
            _map_lines(item, (*path, index), result)


# --- ${VAR} references ----------------------------------------------------------------------------------

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)(\}?)")
_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


@dataclass
class Expanded:
    data: Any
    origins: dict[KeyPath, str] = field(default_factory=dict)
    """Paths whose value came from a ``${...}`` reference -> the text as written, for messages."""
    missing: dict[KeyPath, Problem] = field(default_factory=dict)
    """Paths with an unset variable or a malformed reference (value left empty)."""


def expand_env(data: Any, env: Mapping[str, str], lines: Mapping[KeyPath, int]) -> Expanded:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value; ``$${`` writes a literal ``${``.

    As in a POSIX shell, ``:-`` uses the default when the variable is unset *or empty*.
    """
    result = Expanded(data=None)

    def expand(text: str, path: KeyPath) -> str:
        missing: list[str] = []
        malformed: list[str] = []
        used = False

        def replace(match: re.Match[str]) -> str:
            nonlocal used
            if match.group(0) == "$${":
                return "${"
            ref = _REF.match(match.group(1))
            if not match.group(2) or ref is None:
                malformed.append(match.group(0))
                return ""
            used = True
            name, default = ref.group(1), ref.group(2)
            value = env.get(name)
            if default is not None:
                return value if value else default
            if value is None:
                missing.append(name)
                return ""
            return value

        out = _TOKEN.sub(replace, text)
        where = format_path(path)
        if malformed:
            result.missing[path] = Problem(
                where, f"malformed reference `{malformed[0]}`", line=line_of(path, lines),
                hint="write ${NAME} or ${NAME:-default} (letters, digits and _); write $${ for a literal ${",
            )
        elif missing:
            name = missing[0]
            hint = ENV_HINTS.get(
                name, f"set {name} in the environment, or write ${{{name}:-default}} to make it optional"
            )
            message = f"environment variable {name} is not set"
            result.missing[path] = Problem(where, message, line=line_of(path, lines), hint=hint)
        elif used:
            result.origins[path] = text
        return out

    def walk(value: Any, path: KeyPath) -> Any:
        if isinstance(value, str):
            return expand(value, path)
        if isinstance(value, dict):
            return {str(k): walk(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        return value

    result.data = walk(data, ())
    return result


def type_word_of(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"number `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, list):
        return "a list"
    return "a mapping"
