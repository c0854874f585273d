"""Issue 18 in the browser: the web chat shows a picture and a file the bot sends (a ``python`` agent's
attachments, uploaded by the gateway and served by the emulator), after the answer's text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.test_webchat import (
    REPLY_S,
    _bot_bubbles,
    _page,
    _sandbox,
    _send,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CONFIG = """\
agent:
  type: python
  callable: picbot:answer
storage:
  url: sqlite:///{db}
"""

PICBOT = """
import struct, zlib

def _png(width, height, rgb):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    rows = b"".join(b"\\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(rows))
    return b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")

def answer(request):
    return {
        "text": "Here is the chart.",
        "attachments": [
            {"data": _png(40, 20, (220, 60, 40)), "name": "chart.png"},
            {"data": b"a,b\\n1,2\\n", "name": "numbers.csv"},
        ],
    }
"""


@pytest.fixture(scope="module")
def media_sandbox() -> Iterator[str]:
    yield from _sandbox(CONFIG, {"picbot": PICBOT})


@pytest.fixture
def media_page(browser: Any, media_sandbox: str) -> Iterator[Any]:
    yield from _page(browser, media_sandbox)


def test_the_web_chat_shows_a_picture_and_a_file_the_bot_sends(media_page: Any) -> None:
    from playwright.sync_api import expect

    page = media_page
    page.click("#people button:has-text('Bob Smith')")
    _send(page, "a chart, please")
    bubbles = _bot_bubbles(page)
    expect(bubbles).to_have_count(3, timeout=REPLY_S)
    expect(bubbles.nth(0)).to_have_text("Here is the chart.")
    picture = bubbles.nth(1).locator("img")
    expect(picture).to_have_attribute("alt", "chart.png")
    assert picture.get_attribute("src").startswith("/_fake/media/%40")  # the markdown image of a mediaId
    page.wait_for_function("img => img.complete && img.naturalWidth === 40", arg=picture.element_handle())
    file = bubbles.nth(2).locator("a.sent-file")
    expect(file).to_have_text("📎 numbers.csv")
    response = page.request.get(page.url.rstrip("/") + file.get_attribute("href"))
    assert response.ok and response.body() == b"a,b\n1,2\n"
