"""YAML aliases that expand exponentially ("billion laughs") are refused quickly, with a pointed config
error (issue 16); an ordinary alias still works."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecrab.config import load_config
from edgecrab.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

CREDENTIALS = "platforms:\n  dingtalk: {app_key: k, app_secret: s3cret-value}\n"
LAUGHS = CREDENTIALS + 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
for _above, _name in zip("abcdefgh", "bcdefghi", strict=True):
    LAUGHS += f"{_name}: &{_name} [{','.join([f'*{_above}'] * 9)}]\n"
"""Nine lines: ``i`` is 9**9 (387 million) "lol"s once the aliases are followed."""


def test_a_billion_laughs_is_refused_within_a_second(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(LAUGHS, encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    text = str(info.value)
    # The file, the first key that explodes and its line, what happened and the fix.
    assert "bomb.yaml" in text and "f (line 8)" in text and "more than 100,000 values through aliases" in text
    assert "write the values out" in text


def test_the_cli_refuses_it_as_an_invalid_configuration(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(LAUGHS, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "edgecrab", "--config", str(path), "config", "validate"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2 and "invalid configuration" in result.stderr, result.stderr


def test_an_alias_that_contains_itself_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("platforms:\n  dingtalk: &x {app_key: k, app_secret: s3cret-value, more: *x}\n")
    with pytest.raises(ConfigError, match=r"platforms\.dingtalk\.more \(line 2\): contains itself"):
        load_config(path, env={})


def test_ordinary_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "platforms:\n  dingtalk:\n    app_key: k\n    app_secret: s3cret-value\n"
        "    allowed_users: &people [staff1, staff2]\n    allowed_groups: *people\n",
        encoding="utf-8",
    )
    config = load_config(path, env={})
    assert list(config.dingtalk.allowed_users) == list(config.dingtalk.allowed_groups) == ["staff1", "staff2"]
