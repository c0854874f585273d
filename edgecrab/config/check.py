"""Checking a configuration against the JSON Schema and the rules the schema cannot say.

This module owns finding and loading ``config.schema.json``, turning strings that came from the environment
into the numbers and booleans the schema asks for, and translating every JSON Schema error into a
:class:`~edgecrab.errors.Problem` a person can act on (key path, line, hint such as "did you mean").
Reading the YAML and expanding ``${VAR}`` is :mod:`edgecrab.config.source`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.resources
import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from edgecrab.config.source import ENV_HINTS, KeyPath, format_path, line_of, type_word_of
from edgecrab.core import router
from edgecrab.errors import Problem

_SECRET_NAME = re.compile(
    r"secret|token|passw|pwd|credential|private|api_?key|access_?key|(^|_)(key|pass)$", re.IGNORECASE
)


def is_secret_name(name: str) -> bool:
    """True for key or variable names whose values must never be shown (``app_key`` is an id,
    ``card.content_key`` a template variable's name)."""
    return name.lower() not in ("app_key", "dingtalk_app_key", "content_key") and bool(
        _SECRET_NAME.search(name)
    )


PATH_HINTS: dict[KeyPath, str] = {
    ("platforms", "dingtalk", "app_key"): ENV_HINTS["DINGTALK_APP_KEY"],
    ("platforms", "dingtalk", "app_secret"): ENV_HINTS["DINGTALK_APP_SECRET"],
}
_ALIASES: KeyPath = ("commands", "aliases")

# --- schema ---------------------------------------------------------------------------------------------


@functools.cache
def _schema() -> dict[str, Any]:
    # In a wheel the schema sits inside the package (pyproject force-include); in an editable install or a
    # source checkout it is only in the repository's schemas/ folder.
    packaged = importlib.resources.files("edgecrab") / "schemas" / "config.schema.json"
    if packaged.is_file():
        text = packaged.read_text(encoding="utf-8")
    else:
        text = (Path(__file__).resolve().parents[2] / "schemas" / "config.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def load_schema() -> dict[str, Any]:
    """The configuration JSON Schema (a fresh copy: callers may change it)."""
    return copy.deepcopy(_schema())


def subschema(path: KeyPath, schema: Mapping[str, Any] | None = None) -> Mapping[str, Any] | None:
    """The schema that applies at ``path``, or None where the schema says nothing (unknown keys)."""
    node: Any = _schema() if schema is None else schema
    for part in path:
        if isinstance(part, int):
            node = node.get("items")
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        else:
            node = node.get("additionalProperties")
        if not isinstance(node, Mapping):
            return None
    return node


@functools.cache
def _key_homes() -> dict[str, str]:
    """Each key name -> the shallowest section that defines it (``agent`` is a top-level section before it
    is a robot's key), for "belongs under" hints."""
    homes: dict[str, str] = {}

    def visit(node: Mapping[str, Any], path: KeyPath) -> None:
        properties = node.get("properties", {})
        for name in properties:
            homes.setdefault(name, format_path(path))
        for name, sub in properties.items():
            visit(sub, (*path, name))

    visit(_schema(), ())
    return homes

_BOOLS = {"true": True, "yes": True, "on": True, "1": True}
_BOOLS.update({"false": False, "no": False, "off": False, "0": False})
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def coerce_env_strings(data: Any, origins: Mapping[KeyPath, str]) -> None:
    """Turn strings that came from ``${...}`` into the integer/number/boolean the schema wants, in place.

    Only substituted values are coerced: environment variables are always strings, while a literal
    YAML value already has the type the author wrote (``port: "8080"`` is reported, not guessed at).
    """
    for path in origins:
        sub = subschema(path)
        if sub is None or not path:
            continue
        types = sub.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        if "string" in types:
            continue
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        value = parent[path[-1]]
        if isinstance(value, str):
            parent[path[-1]] = _coerce(value, types)


def _coerce(text: str, types: list[str]) -> Any:
    stripped = text.strip()
    if "boolean" in types and stripped.lower() in _BOOLS:
        return _BOOLS[stripped.lower()]
    if "integer" in types and _INT.match(stripped):
        return int(stripped)
    if "number" in types and _FLOAT.match(stripped):
        return float(stripped)
    if "null" in types and stripped == "":
        return None
    return text

# --- rules beyond the schema ----------------------------------------------------------------------------

BUILTIN_COMMANDS: tuple[str, ...] = tuple(router.BUILTIN_COMMANDS)


# --- schema errors -> problems --------------------------------------------------------------------------

_TYPE_WORDS = {
    "integer": "a whole number", "number": "a number", "boolean": "true or false", "string": "a string",
    "array": "a list", "object": "a mapping (key: value lines)", "null": "nothing",
}

def schema_problems(
    data: Any, lines: Mapping[KeyPath, int], origins: Mapping[KeyPath, str], skip: set[KeyPath]
) -> list[Problem]:
    """Every schema violation in ``data`` as a Problem, except under ``skip`` (already reported)."""
    problems: dict[tuple[str, str], Problem] = {}
    for error in Draft202012Validator(_schema()).iter_errors(data):
        for path, problem in _translate(error, lines, origins):
            if any(path[: len(s)] == s for s in skip):
                continue
            problems.setdefault((problem.path, problem.message), problem)
    return list(problems.values())


_Translation = Iterator[tuple[KeyPath, Problem]]


def _translate(
    error: ValidationError, lines: Mapping[KeyPath, int], origins: Mapping[KeyPath, str]
) -> _Translation:
    """One schema error as Problems (with the key path each is about), by the validator that failed."""
    e = _Error(error, lines, origins)
    if "propertyNames" in error.schema_path:
        yield from _bad_key(e)
    else:
        yield from _TRANSLATORS.get(str(e.kind), _as_is)(e)


class _Error:
    """A schema error and what translating it needs: where it is, whether its value may be shown."""

    def __init__(
        self, error: ValidationError, lines: Mapping[KeyPath, int], origins: Mapping[KeyPath, str]
    ) -> None:
        self.path: KeyPath = tuple(error.absolute_path)
        self.schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
        self.kind, self.value, self.instance = error.validator, error.validator_value, error.instance
        self.message = error.message
        self.name = self.path[-1] if self.path else ""
        self.lines, self.origins = lines, origins
        # Never echo a value that may be a secret: by its key name, or by the variable it came from.
        path = self.path
        self.hidden = is_secret_name(str(path[-1]) if path else "") or (
            path in origins and is_secret_name(origins[path].strip("${}").split(":-")[0])
        )

    @functools.cached_property
    def own(self) -> Mapping[str, Any]:
        """The schema of the value's key (empty for unknown keys)."""
        return subschema(self.path) or {}

    def shown(self, text: str) -> str:
        return "a value that is not shown (it may be a secret)" if self.hidden else text

    def problem(self, at: KeyPath, message: str, hint: str = "") -> tuple[KeyPath, Problem]:
        if at in self.origins:
            message += f" (from `{self.origins[at]}`)"
        return at, Problem(format_path(at), message, line=line_of(at, self.lines), hint=hint)


def _as_is(e: _Error) -> _Translation:
    yield e.problem(e.path, e.message)


def _bad_key(e: _Error) -> _Translation:
    # jsonschema reports a bad key at the mapping's path, with the key itself as the instance.
    key_path = (*e.path, str(e.instance))
    if e.path == _ALIASES:
        yield e.problem(key_path, f"alias `{e.instance}` must start with / and contain no spaces",
                        f"write `{_as_command(e.instance)}`")
    else:
        yield e.problem(key_path, f"key `{e.instance}` is not in the expected form",
                        (subschema(e.path) or {}).get("description", ""))


def _unknown_keys(e: _Error) -> _Translation:
    if not isinstance(e.instance, dict):
        yield from _as_is(e)
        return
    allowed = list(e.schema.get("properties", {}))
    for key in e.instance:
        if key not in allowed:
            yield e.problem((*e.path, key), f"unknown key `{key}`", _unknown_key_hint(key, allowed))


def _missing_keys(e: _Error) -> _Translation:
    if not isinstance(e.instance, dict):
        yield from _as_is(e)
        return
    for key in e.value:
        if key not in e.instance:
            at = (*e.path, key)
            yield e.problem(at, f"missing required key `{key}`", PATH_HINTS.get(at, ""))


def _wrong_type(e: _Error) -> _Translation:
    expected = [e.value] if isinstance(e.value, str) else list(e.value)
    words = " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
    name, default, hint = e.name, e.own.get("default"), ""
    if expected == ["object"]:
        hint = f"write the keys of `{name}` on the lines below it, indented" if name else ""
    elif default not in (None, "", [], {}) and isinstance(name, str):
        hint = f"for example `{name}: {json.dumps(_number(default), ensure_ascii=False)}`"
    quoted = isinstance(e.instance, str) and e.path not in e.origins
    if quoted and _coerce(e.instance, expected) is not e.instance:
        hint = (hint + "; " if hint else "") + "remove the quotes"
    got = type_word_of(e.instance)
    if e.hidden:
        got = got.split(" ")[0] + " (value not shown: it may be a secret)"
    yield e.problem(e.path, f"expected {words}, got {got}", hint)


def _not_a_choice(e: _Error) -> _Translation:
    choices = ", ".join(f"`{c}`" for c in e.value)
    close = difflib.get_close_matches(str(e.instance), [str(c) for c in e.value], n=1, cutoff=0.5)
    hint = f"did you mean `{close[0]}`?" if close else f"use one of {choices}"
    yield e.problem(e.path, f"{e.shown(f'`{e.instance}`')} is not one of {choices}", hint)


_BOUND_WORDS = {"minimum": "at least", "exclusiveMinimum": "greater than",
                "maximum": "at most", "exclusiveMaximum": "less than"}


def _out_of_bounds(e: _Error) -> _Translation:
    own, default = e.own, e.own.get("default")
    if "minimum" in own and "maximum" in own:
        hint = f"use a value from {own['minimum']} to {own['maximum']}"
    else:
        hint = f"the default is {_number(default)}" if default is not None else ""
    words = _BOUND_WORDS[str(e.kind)]
    yield e.problem(e.path, f"must be {words} {e.value}, got {e.shown(str(e.instance))}", hint)


def _too_short(e: _Error) -> _Translation:
    if e.value != 1:
        yield from _as_is(e)
        return
    yield e.problem(e.path, "must not be empty", PATH_HINTS.get(e.path, e.own.get("description", "")))


def _no_match(e: _Error) -> _Translation:
    if e.path[:-1] == _ALIASES:
        yield e.problem(e.path, f"alias target `{e.instance}` must start with / and contain no spaces",
                        f"write `{_as_command(e.instance)}`")
        return
    form = _FORMS.get(str(e.name), "in the form the description asks for")
    text = e.shown(json.dumps(e.instance, ensure_ascii=False))
    yield e.problem(e.path, f"{text} is not {form}", e.own.get("description", ""))


_TRANSLATORS: dict[str, Callable[[_Error], _Translation]] = {
    "additionalProperties": _unknown_keys,
    "required": _missing_keys,
    "type": _wrong_type,
    "enum": _not_a_choice,
    **dict.fromkeys(_BOUND_WORDS, _out_of_bounds),
    "minLength": _too_short,
    "pattern": _no_match,
}
"""A translator per JSON Schema validator; any other validator's own message is shown as it is."""


_FORMS = {
    "callable": "of the form package.module:function",
    "api_base": "an http:// or https:// URL",
    "base_url": "an http:// or https:// URL",
    "url": "a URL such as sqlite:///path/to/state.db",
}
"""How to describe a pattern, by key name, when a value does not match it."""


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _as_command(text: Any) -> str:
    words = str(text).strip().lstrip("/").split()
    return "/" + (words[0] if words else "help")


def _unknown_key_hint(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    home = _key_homes().get(key)
    if home is not None:
        return f"`{key}` belongs under `{home}`" if home else f"`{key}` is a top-level section: unindent it"
    return "allowed keys here: " + ", ".join(allowed) if allowed else ""
