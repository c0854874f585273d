"""Declared dependency bounds exclude the releases with published vulnerabilities we know of (issue 16).
Add a row when an advisory names a dependency: the last vulnerable release and the advisory."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]

LAST_VULNERABLE = {
    "aiohttp": ("3.12.13", "CVE-2025-53643: request smuggling in the pure-Python HTTP parser"),
    "h11": ("0.15.0", "CVE-2025-43859: chunked-body request smuggling (under httpx via httpcore)"),
    "pyyaml": ("5.3.1", "CVE-2020-14343: arbitrary code execution in full_load"),
    "websockets": ("9.0.2", "CVE-2021-33880: timing attack on HTTP Basic Auth"),
    "httpx": ("0.22.0", "CVE-2021-41945: URL parsing confusion"),
}


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    requirements = (Requirement(line) for line in project["dependencies"])
    return {r.name.lower(): r for r in requirements}


@pytest.mark.parametrize("name", sorted(LAST_VULNERABLE))
def test_the_last_vulnerable_release_is_excluded(name: str) -> None:
    last, advisory = LAST_VULNERABLE[name]
    requirement = declared()[name]
    allowed = requirement.specifier.contains(last, prereleases=True)
    assert not allowed, f"{requirement} allows {last}: {advisory}"
    assert requirement.specifier.contains(version(name), prereleases=True)  # and what we test with is allowed
