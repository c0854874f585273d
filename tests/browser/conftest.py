"""One headless Chromium for all the browser tests: each module has its own sandbox (its own origin, so its
own storage) and each test its own page, but launching Chromium took 1-2 s per module."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from tests.browser.test_webchat import CHROMIUM, CHROMIUM_ARGS, _playwright

    sync_playwright = _playwright()
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="edgecrab-chromium-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()
