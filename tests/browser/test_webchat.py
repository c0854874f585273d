"""The sandbox web chat in headless Chromium, against ``edgecrab gateway start --sandbox`` as a subprocess.

Debian's ``/usr/bin/chromium`` (override with ``$EDGECRAB_CHROMIUM``) driven by Playwright's Python package;
``.ci/run`` installs both. When either is missing these tests fail, they never skip: a skipped browser test
would let a broken web chat through CI unnoticed. The last page is saved as ``artifacts/webchat.png``.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("EDGECRAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
URL = re.compile(r"open (http://127\.0\.0\.1:\d+)/ to chat with the bot")
REPLY_S = 10_000  # ms: generous for a slow CI machine; a reply normally takes a few ms
CONFIG = """\
platforms:
  dingtalk:
    max_message_length: 400
    chunk_interval_ms: 50
    chunk_markers: true
agent:
  type: echo
storage:
  url: sqlite:///{db}
"""


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the browser tests need Playwright: pip install '.[browser]' (.ci/run does it)", pytrace=False
        )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does it), "
            "or set EDGECRAB_CHROMIUM",
            pytrace=False,
        )
    return sync_playwright


CARD_CONFIG = """\
platforms:
  dingtalk:
    reply_mode: card
    card:
      update_interval_ms: 200
agent:
  type: echo
storage:
  url: sqlite:///{db}
"""


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    """``edgecrab gateway start --sandbox --port 0`` with the echo agent; yields the chat URL it printed."""
    yield from _sandbox(CONFIG)


@pytest.fixture(scope="module")
def card_sandbox() -> Iterator[str]:
    """The sandbox with ``reply_mode: card`` (the echo agent streams its words into an AI card)."""
    yield from _sandbox(CARD_CONFIG)


def _sandbox(config_text: str, modules: dict[str, str] | None = None) -> Iterator[str]:
    work = Path(tempfile.mkdtemp(prefix="edgecrab-webchat-"))
    config = work / "edgecrab.yaml"
    config.write_text(config_text.format(db=work / "state.db"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
    env["EDGECRAB_HOME"] = str(work)
    for name, source in (modules or {}).items():  # python agents, importable by the gateway
        (work / f"{name}.py").write_text(source, encoding="utf-8")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work), env.get("PYTHONPATH", "")]))
    log_path = work / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgecrab",
                "--config",
                str(config),
                "gateway",
                "start",
                "--sandbox",
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
    urls: queue.Queue[str] = queue.Queue()

    def pump() -> None:  # keeps draining stdout so the child never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            match = URL.search(line)
            if match:
                urls.put(match.group(1))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        try:
            url = urls.get(timeout=30)
        except queue.Empty:
            pytest.fail(f"the sandbox printed no chat URL within 30 s; its log:\n{log_path.read_text()}")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture
def page(browser: Any, sandbox: str) -> Iterator[Any]:
    yield from _page(browser, sandbox)


@pytest.fixture
def card_page(browser: Any, card_sandbox: str) -> Iterator[Any]:
    yield from _page(browser, card_sandbox)


def _page(browser: Any, sandbox: str) -> Iterator[Any]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(sandbox + "/")
    page.locator("#people button").first.wait_for()
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _send(page: Any, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def _bot_bubbles(page: Any) -> Any:
    return page.locator("#messages .msg.bot .bubble")


def test_dm_group_mention_and_unmentioned(page: Any) -> None:
    from playwright.sync_api import expect

    outsiders = page.locator("#people button:has(.tag.external)")
    expect(outsiders).to_have_count(1)
    expect(outsiders).to_contain_text("王五")

    page.click("#people button:has-text('Alice Chen')")
    expect(page.locator("#chat-title")).to_have_text("EdgeCrab")
    _send(page, "hello from the browser")
    expect(_bot_bubbles(page).last).to_contain_text("echo: hello from the browser", timeout=REPLY_S)
    expect(page.locator("#messages .msg.mine .note").last).to_have_attribute("data-status", "acked")

    # Markdown is rendered like DingTalk does it, and HTML in a message stays text.
    _send(page, "**bold** and <img src=x onerror=alert(1)>\n\n| env | state |\n|---|---|\n| staging | ok |")
    reply = _bot_bubbles(page).nth(1)
    expect(reply.locator("strong")).to_have_text("bold", timeout=REPLY_S)
    expect(reply.locator("table td").first).to_have_text("staging")
    expect(reply).to_contain_text("<img src=x onerror=alert(1)>")
    expect(page.locator("#messages img")).to_have_count(0)

    # A reply longer than max_message_length (400) arrives as separate chunks, in order.
    words = " ".join(f"word{i:03d}" for i in range(90))
    _send(page, words)
    expect(_bot_bubbles(page)).to_have_count(5, timeout=REPLY_S)  # 2 replies above + 3 chunks
    chunks = _bot_bubbles(page).all_inner_texts()[2:]
    assert [c[:5] for c in chunks] == ["(1/3)", "(2/3)", "(3/3)"], chunks
    joined = " ".join(chunks)
    assert (
        joined.index("word000")
        < joined.index("word045")
        < joined.index("word089")
        < joined.index("echo agent")
    )
    expect(page.locator("#messages .msg.bot .md-title")).to_have_count(5)

    # In a group, @robot gets a reply that @mentions the sender back.
    page.click("#chats button:has-text('测试群')")
    expect(page.locator("#at-toggle")).to_have_attribute("aria-pressed", "true")
    _send(page, "release checklist:\n- **build** passed\n- `pytest` green")
    group_reply = _bot_bubbles(page).last
    expect(group_reply).to_contain_text("echo: release checklist", timeout=REPLY_S)
    expect(group_reply.locator(".mention")).to_have_text("@Alice Chen")
    expect(group_reply.locator("li")).to_have_count(2)
    expect(group_reply.locator("code")).to_have_text("pytest")

    # Without @, DingTalk does not push the message at all: no reply comes.
    page.click("#at-toggle")
    expect(page.locator("#at-toggle")).to_have_attribute("aria-pressed", "false")
    _send(page, "lunch at noon, anyone?")
    note = page.locator("#messages .msg.mine .note").last
    expect(note).to_have_attribute("data-status", "dropped")

    # Relay mode pushes it anyway: the gateway acks it and its own mention rule keeps it from the agent.
    page.check("#deliver-unmentioned")
    _send(page, "relayed without a mention")
    expect(page.locator("#messages .msg.mine .note").last).to_have_attribute("data-status", "acked")
    page.uncheck("#deliver-unmentioned")
    page.click("#at-toggle")

    # Neither was answered. The gateway takes a conversation's messages in order, so a reply to either would
    # come before the reply to a mention sent after them: that reply, the group's second, ends the wait.
    _send(page, "anything else?")
    expect(_bot_bubbles(page)).to_have_count(2, timeout=REPLY_S)
    expect(_bot_bubbles(page).last).to_contain_text("echo: anything else?")
    expect(page.locator("#messages")).not_to_contain_text("echo: lunch")
    expect(page.locator("#messages")).not_to_contain_text("echo: relayed")

    # The wire panel shows the stream side live: pushed frames, acks, the dropped push, REST calls.
    wire = page.locator("#wire")
    expect(wire.locator("li.k-ack").first).to_contain_text("ack 200")
    expect(wire.locator("li.k-frame", has_text="not pushed")).to_have_count(1)
    expect(wire.locator("li.k-rest", has_text="/robot/sendBySession").first).to_be_visible()
    wire.locator("li.k-ack .ev-line").first.click()
    expect(wire.locator(".ev-detail")).to_contain_text('"code": 200')
    wire.locator("li.k-ack .ev-line").first.click()

    # Someone from another organisation is told so by the gateway's access rules.
    page.click("#people button:has-text('王五')")
    page.click("#chats button:has-text('EdgeCrab')")  # switching person keeps the open group; go to the DM
    expect(page.locator("#chat-title")).to_have_text("EdgeCrab")
    _send(page, "hi, I'm a customer")
    expect(_bot_bubbles(page).last).to_contain_text("another organisation", timeout=REPLY_S)

    # Another member in the same group: Alice's messages move to the left, the reply @mentions Bob.
    page.click("#people button:has-text('Bob Smith')")
    page.click("#chats button:has-text('测试群')")
    expect(page.locator("#messages .msg.user:not(.mine)")).to_have_count(4)
    _send(page, "thanks! what is left before Friday?")
    expect(_bot_bubbles(page)).to_have_count(3, timeout=REPLY_S)
    expect(_bot_bubbles(page).last.locator(".mention")).to_have_text("@Bob Smith")
    (ROOT / "artifacts").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "artifacts" / "webchat.png"))


def test_history_survives_a_reload(page: Any) -> None:
    from playwright.sync_api import expect

    page.click("#people button:has-text('Bob Smith')")
    _send(page, "remember me after a reload")
    expect(_bot_bubbles(page).last).to_contain_text("echo: remember me", timeout=REPLY_S)
    page.reload()
    expect(page.locator("#people button[aria-current='true']")).to_contain_text("Bob Smith")
    expect(page.locator("#messages .msg.mine")).to_have_count(1)
    expect(_bot_bubbles(page)).to_have_count(1)
    expect(page.locator("#messages .msg.mine .note")).to_have_attribute("data-status", "acked")


RENDER = """(text) => {
  const box = document.createElement("div");
  box.append(DingMarkdown.render(text, {mentions: {manager807: "张三"}}));
  return box.innerHTML;
}"""


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("# Title\n### Sub", "<h1>Title</h1><h3>Sub</h3>"),
        ("**b** *i* _u_ `c`", "<p><strong>b</strong> <em>i</em> <em>u</em> <code>c</code></p>"),
        ("one\ntwo\n\nthree", "<p>one two</p><p>three</p>"),
        ("- a\n- b\n  - c\n1. x", "<ul><li>a</li><li>b<ul><li>c</li></ul></li></ul><ol><li>x</li></ol>"),
        ("> quoted **text**", "<blockquote><p>quoted <strong>text</strong></p></blockquote>"),
        (
            "```py\n\\# not a heading\n<b>&amp;\n```",
            '<pre data-lang="py"><code># not a heading\n&lt;b&gt;&amp;</code></pre>',
        ),
        (
            "| a | b |\n|:-|-:|\n| 1 | 2 |",
            '<div class="md-table"><table><thead><tr><th style="text-align: left;">a</th>'
            '<th style="text-align: right;">b</th></tr></thead>'
            '<tbody><tr><td style="text-align: left;">1</td>'
            '<td style="text-align: right;">2</td></tr></tbody></table></div>',
        ),
        (
            "[site](https://example.com) [x](javascript:evil)",
            '<p><a href="https://example.com" target="_blank" rel="noopener noreferrer">site</a> '
            '<span class="md-badlink">x</span></p>',
        ),
        (
            "<script>alert(1)</script> &lt;b&gt; &#x1F980;",
            "<p>&lt;script&gt;alert(1)&lt;/script&gt; &lt;b&gt; 🦀</p>",
        ),
        ("done\n\n@manager807", '<p>done</p><p><span class="mention" title="manager807">@张三</span></p>'),
        ("---", "<hr>"),
        (
            "see https://example.com/a.",
            '<p>see <a href="https://example.com/a" target="_blank" rel="noopener noreferrer">'
            "https://example.com/a</a>.</p>",
        ),
    ],
    ids=[
        "headings",
        "emphasis",
        "paragraphs",
        "lists",
        "quote",
        "fence",
        "table",
        "links",
        "html-is-text",
        "mention",
        "rule",
        "autolink",
    ],
)
def test_markdown_renderer(page: Any, markdown: str, html: str) -> None:
    assert page.evaluate(RENDER, markdown) == html


def test_text_messages_keep_their_lines_and_show_no_markdown(page: Any) -> None:
    html = page.evaluate(
        """(text) => {
          const box = document.createElement("div");
          box.append(DingMarkdown.renderText(text, {mentions: {user1001: "李四"}}));
          return box.innerHTML;
        }""",
        "**not bold** <i>x</i>\n(https://example.com) @user1001",
    )
    assert html == (
        "**not bold** &lt;i&gt;x&lt;/i&gt;<br>"
        '(<a href="https://example.com" target="_blank" rel="noopener noreferrer">https://example.com</a>) '
        '<span class="mention" title="user1001">@李四</span>'
    )


def test_a_card_grows_and_stops(card_page: Any) -> None:
    """reply_mode: card: the echo agent's words appear in the card as they are written; its stop button
    stops the run, and the card says so."""
    from playwright.sync_api import expect

    page = card_page
    page.click("#people button:has-text('Alice Chen')")
    words = " ".join(f"w{i:03d}" for i in range(120))  # ~10 s of echo at 80 ms a word
    _send(page, words)
    card = page.locator("#messages .bubble.card").last
    expect(card).to_have_attribute("data-card-state", "inputting", timeout=REPLY_S)
    expect(card).to_contain_text("w003", timeout=REPLY_S)
    shown = card.locator(".card-content").inner_text()
    expect(card).not_to_contain_text("w119")
    expect(card.locator(".card-content")).not_to_have_text(shown, timeout=REPLY_S)  # it grows
    page.locator("#messages .bubble.card .card-stop").last.click()
    expect(card).to_have_attribute("data-card-state", "stopped", timeout=REPLY_S)
    expect(card.locator(".card-state")).to_have_text("stopped")
    expect(card).to_contain_text("已停止")
    expect(card).not_to_contain_text("w119")
    expect(card.locator(".card-stop")).to_be_hidden()
    wire = page.locator("#wire")
    expect(wire.locator("li.k-rest", has_text="/v1.0/card/streaming").first).to_be_attached()
    expect(wire.locator("li.k-card_callback")).to_have_count(1)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "artifacts" / "webchat-card.png"))


def test_a_picture_attached_in_the_web_chat_reaches_the_agent(page: Any) -> None:
    """📎 a picture: the emulator pushes a picture message, the gateway downloads it through the signed
    URL, and the (echo) agent's answer names what it was given: the picture, as a PNG."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 30), "orange").save(out, "PNG")
    from playwright.sync_api import expect

    page.click("#people button:has-text('Alice Chen')")
    shot = {"name": "shot.png", "mimeType": "image/png", "buffer": out.getvalue()}
    with page.expect_file_chooser() as chooser:
        page.click("#attach")
    chooser.value.set_files(files=[shot])
    expect(page.locator("#messages .msg.mine .bubble").last).to_contain_text("🖼 shot.png", timeout=REPLY_S)
    expect(_bot_bubbles(page).last).to_contain_text("[picture: picture (image/png", timeout=REPLY_S)


def test_a_voice_note_and_a_dropped_file_reach_the_agent(page: Any) -> None:
    """🎤 sends an audio file with the text box as DingTalk's transcript (the agent reads the transcript);
    a file dropped on the chat is sent like 📎 (a markdown file: the agent reads it inline)."""
    from playwright.sync_api import expect

    page.click("#people button:has-text('Alice Chen')")
    page.fill("#input", "明天开会吗")
    with page.expect_file_chooser() as chooser:
        page.click("#voice")
    voice = {"name": "note.amr", "mimeType": "audio/amr", "buffer": b"#!AMR\n" + bytes(64)}
    chooser.value.set_files(files=[voice])
    mine = page.locator("#messages .msg.mine .bubble")
    expect(mine.last).to_contain_text("🎤 明天开会吗", timeout=REPLY_S)
    expect(page.locator("#input")).to_have_value("")
    expect(_bot_bubbles(page).last).to_contain_text("voice message", timeout=REPLY_S)
    expect(_bot_bubbles(page).last).to_contain_text("明天开会吗")

    dropped = page.evaluate_handle(
        """() => {
            const data = new DataTransfer();
            const text = "# Plan\\n- ship the media work\\n";
            data.items.add(new File([text], "plan.md", {type: "text/markdown"}));
            return data;
        }"""
    )
    page.dispatch_event(".chat", "drop", {"dataTransfer": dropped})
    expect(mine.last).to_contain_text("📎 plan.md", timeout=REPLY_S)
    expect(_bot_bubbles(page).last).to_contain_text("[file: plan.md (text/markdown", timeout=REPLY_S)
    expect(_bot_bubbles(page).last).to_contain_text("ship the media work")
