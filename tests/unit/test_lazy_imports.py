"""Heavy libraries a gateway may never need are imported when first used, not at start (bench 4a: idle
memory). Checked in a fresh interpreter, since this test process imports everything."""

from __future__ import annotations

import subprocess
import sys


def test_pillow_is_not_imported_by_starting_a_gateway() -> None:
    code = (
        "import sys, edgecrab.cli, edgecrab.serve, edgecrab.gateway, edgecrab.robot, edgecrab.media; "
        "print(sorted(m for m in sys.modules if m == 'PIL' or m.startswith('PIL.')))"
    )
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout
