"""What the gateway process sets up for itself before it starts (``edgecrab.serve``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, os, resource
    from edgecrab.serve import _prepare_fds

    def fdsize():
        for line in open("/proc/self/status"):
            if line.startswith("FDSize:"):
                return int(line.split()[1])

    keep = os.open(os.devnull, os.O_RDONLY)
    held = os.dup2(keep, {held})  # a descriptor of the caller's, in the way
    before = sorted(os.listdir("/proc/self/fd"))
    size_before = fdsize()
    size = _prepare_fds({reserve})
    print(json.dumps({{
        "returned": size,
        "fdsize_before": size_before,
        "fdsize_after": fdsize(),
        "fds_unchanged": sorted(os.listdir("/proc/self/fd")) == before,
        "held_still_open": os.fstat(held) is not None,
        "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }}))
    """
)


def _run(reserve: int, held: int) -> dict[str, object]:
    import json

    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(reserve=reserve, held=held)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_descriptor_table_is_grown_once_at_start_and_nothing_is_left_open() -> None:
    result = _run(reserve=4096, held=20)
    assert result["fdsize_before"] < 4096  # a fresh interpreter's table is small (64 or 256)
    assert result["returned"] == min(4096, result["soft"])
    assert result["fdsize_after"] >= result["returned"]
    assert result["fds_unchanged"] is True
    assert result["held_still_open"] is True
    # The soft open-files limit is raised to the hard one (when that is finite).
    assert result["soft"] == result["hard"] or result["hard"] == -1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_descriptor_already_open_at_the_top_is_left_alone() -> None:
    result = _run(reserve=30, held=29)  # the very descriptor _prepare_fds would use
    assert result["held_still_open"] is True
    assert result["fds_unchanged"] is True
