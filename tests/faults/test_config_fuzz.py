"""Mutated configurations through ``edgecrab config validate``, in-process.

Start from ``config/example.yaml`` (every key), apply one to three mutations (delete a key, change a value's
type, insert an unknown key, misspell a key, put a bad ``${ENV}`` reference somewhere), and run the CLI.
It must answer exit 0, or exit 2 with problems that each name a key path (and line) at or next to what was
mutated: never a traceback, never exit 1, never an error about a key nobody touched.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecrab import cli, logs

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"
ENV = {"DINGTALK_APP_KEY": "ding-fuzz-key", "DINGTALK_APP_SECRET": "fuzz-app-secret-7f3a91"}
EXAMPLES = int(os.environ.get("EDGECRAB_FUZZ_EXAMPLES", "60"))
pytestmark = pytest.mark.timeout(max(60, EXAMPLES // 4))

KeyPath = tuple[Any, ...]
_PART = r'(?:[A-Za-z_][A-Za-z0-9_]*|\[(?:"(?:[^"\\]|\\.)*"|\d+)\])'
PROBLEM = re.compile(
    rf"^  - (?:(?P<path>{_PART}(?:\.?{_PART})*)(?: \(line \d+(?:, column \d+)?\))?"
    rf"|line \d+(?:, column \d+)?): \S"
)
"""``  - platforms.dingtalk["odd key"][0] (line 7): message``, or ``  - line 3, column 1: message``."""

bad_refs = st.sampled_from(
    [
        "${EDGECRAB_FUZZ_UNSET}",
        "${EDGECRAB_FUZZ_UNSET",
        "${1BAD}",
        "${}",
        "${A B}",
        "$${literal}",
        "${EDGECRAB_FUZZ_UNSET:-}",
        "${EDGECRAB_FUZZ_UNSET:-42}",
        "${EDGECRAB_FUZZ_UNSET:-true}",
        "x${DINGTALK_APP_KEY}y",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    bad_refs,
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=5,
)


def paths(node: Any, prefix: KeyPath = ()) -> Iterator[KeyPath]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*prefix, i)
            yield from paths(value, (*prefix, i))


def parent_of(doc: Any, path: KeyPath) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def typo(key: str, seed: int) -> str:
    if len(key) < 3:
        return key + "x"
    i = seed % (len(key) - 1)
    return key[:i] + key[i + 1] + key[i] + key[i + 2 :] if key[i] != key[i + 1] else key + "s"


def mutate(doc: Any, draw: Any) -> list[KeyPath]:
    """Apply one mutation to ``doc`` in place; return the paths it touched."""
    candidates = list(paths(doc))
    kind = draw(st.sampled_from(["delete", "retype", "unknown", "typo", "env"]))
    if not candidates:
        return [()]
    path = draw(st.sampled_from(candidates))
    parent = parent_of(doc, path)
    last = path[-1]
    if kind == "delete":
        del parent[last]
    elif kind == "retype":
        parent[last] = draw(values)
    elif kind == "env":
        parent[last] = draw(bad_refs)
    elif kind == "unknown":
        target = parent if isinstance(parent, dict) else doc
        key = draw(st.one_of(st.text(min_size=1, max_size=12), st.integers(0, 9)))
        target[key] = draw(values)
        return [(*path[:-1], key) if target is parent else (key,)]
    elif kind == "typo" and isinstance(parent, dict) and isinstance(last, str):
        new = typo(last, draw(st.integers(0, 50)))
        parent[new] = parent.pop(last)
        return [path, (*path[:-1], new)]  # the key is gone from where it was, and unknown where it went
    return [path]


def components(path: str) -> list[str]:
    """``agent.env["A B"][0]`` -> ``["agent", "env", "A B", "0"]``: the product's format_path, inverted."""
    found = re.findall(r'\.?([A-Za-z_][A-Za-z0-9_]*)|\[("(?:[^"\\]|\\.)*"|\d+)\]', path)
    return [name or str(json.loads(other)) for name, other in found]


def related(problem: str, touched: list[KeyPath]) -> bool:
    """A problem path at, under, above or beside (same parent as) a touched path."""
    p = components(problem)
    for path in touched:
        t = [str(part) for part in path]
        if p[: len(t)] == t or t[: len(p)] == p or (len(p) == len(t) and p[:-1] == t[:-1]):
            return True
    return False


@pytest.fixture
def env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in [*ENV, "EDGECRAB_CONFIG", "EDGECRAB_FUZZ_UNSET", "OPENAI_API_KEY"]}
    os.environ.update(ENV)
    for k in ("EDGECRAB_CONFIG", "EDGECRAB_FUZZ_UNSET", "OPENAI_API_KEY"):
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_example_config_is_valid(tmp_path: Path, env: None, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "edgecrab.yaml"
    target.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    assert cli.main(["--config", str(target), "config", "validate"]) == 0, capsys.readouterr()


def test_mutated_configs_exit_0_or_2_with_path_pointing_errors(
    tmp_path: Path, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    base = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    outcomes = {0: 0, 2: 0}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        doc = yaml.safe_load(yaml.safe_dump(base))
        touched = [p for _ in range(data.draw(st.integers(1, 3))) for p in mutate(doc, data.draw)]
        target = tmp_path / "edgecrab.yaml"
        target.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
        capsys.readouterr()
        logs.clear_secrets()  # a secret registered by an earlier example ("true") would redact words here
        code = cli.main(["--config", str(target), "config", "validate"])
        out, err = capsys.readouterr()
        shown = f"exit {code}; touched {touched}\n{err or out}"
        assert code in (0, 2), shown
        assert "Traceback" not in out + err and "unexpected error" not in err, shown
        outcomes[code] += 1
        if code == 0:
            assert out.startswith("config OK"), shown
            assert cli.main(["--config", str(target), "config", "show"]) == 0
            listing, _ = capsys.readouterr()
            assert ENV["DINGTALK_APP_SECRET"] not in listing, "config show printed the app secret"
            return
        lines = err.split("\n")  # not splitlines(): a key may hold U+0085 or U+2028
        assert lines[0].startswith("invalid configuration"), shown
        problems = [line for line in lines[1:] if line.startswith("  - ")]
        assert problems, shown
        for line in problems:
            match = PROBLEM.match(line)
            assert match, f"problem names no key path or line: {line!r}\n{shown}"
            path = match.group("path")
            if path is not None:
                assert related(path, touched), f"error about a key nobody touched: {line!r}\n{shown}"

    one()
    print(
        f"[config-fuzz] examples={sum(outcomes.values())} valid={outcomes[0]} invalid(exit 2)={outcomes[2]}"
    )


@pytest.mark.parametrize("value", ["[openai]", "{kind: openai}"])
def test_agent_type_of_the_wrong_type_is_a_config_error(
    value: str, tmp_path: Path, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "edgecrab.yaml"
    target.write_text(
        f"platforms:\n  dingtalk:\n    app_key: k\n    app_secret: s\nagent:\n  type: {value}\n",
        encoding="utf-8",
    )
    code = cli.main(["--config", str(target), "config", "validate"])
    err = capsys.readouterr().err
    assert code == 2 and "agent.type (line 6)" in err, err
