"""Log set-up and secret redaction."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from edgecrab import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    logs.clear_secrets()


def test_registered_secret_never_reaches_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging("info")
    logs.register_secret("tok-1234567890")
    log = logging.getLogger("edgecrab.dingtalk.rest")
    log.info("[dingtalk] GET /gettoken?access_token=%s", "tok-1234567890")
    try:
        raise ValueError("server said tok-1234567890 is expired")
    except ValueError:
        log.exception("[dingtalk] send failed")
    err = capsys.readouterr().err
    assert "tok-1234567890" not in err
    assert "[dingtalk] GET /gettoken?access_token=***" in err
    assert "ValueError: server said *** is expired" in err


def test_format_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging("WARNING")
    logging.getLogger("edgecrab.x").info("[x] hidden")
    logging.getLogger("edgecrab.x").warning("[x] shown")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" WARNING [x] shown") and lines[0][:4].isdigit()


def test_setup_twice_keeps_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging("info")
    logs.setup_logging("info")
    logging.getLogger("edgecrab.x").info("[x] once")
    assert capsys.readouterr().err.count("[x] once") == 1


def test_short_values_are_not_registered() -> None:
    logs.register_secret("abc")
    logs.register_secret("")
    logs.register_secret(None)
    assert logs.redact("abc abcd") == "abc abcd"
    logs.register_secret("abcd")
    assert logs.redact("abc abcd") == "abc ***"


def test_longest_secret_is_replaced_first() -> None:
    logs.register_secret("secret")
    logs.register_secret("secret-and-more")
    assert logs.redact("x secret-and-more y") == "x *** y"


@pytest.mark.parametrize(("name", "level"), [("debug", 10), ("INFO", 20), (" Warning ", 30), ("error", 40)])
def test_parse_level(name: str, level: int) -> None:
    assert logs.parse_level(name) == level


def test_parse_level_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="use one of debug, info, warning, error"):
        logs.parse_level("verbose")


def test_json_format_writes_one_object_per_line_with_the_extra_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    logs.setup_logging("info", "json")
    logs.register_secret("tok-1234567890")
    log = logging.getLogger("edgecrab.activity")
    log.info("[message] %s: run", "msg1", extra={"msg_id": "msg1", "chunks": 2, "detail": "tok-1234567890"})
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("failed")
    first, second = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert first["message"] == "[message] msg1: run" and first["level"] == "INFO"
    assert (first["logger"], first["msg_id"], first["chunks"], first["detail"]) == (
        "edgecrab.activity", "msg1", 2, "***"
    )
    assert first["time"].endswith("+00:00") and "args" not in first
    assert second["level"] == "ERROR" and "ValueError: bad\nthing" in second["exc"]


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="use one of text, json"):
        logs.parse_format("xml")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("GET https://user:p%40ss@h.example:8443/v1?key=abc&q=1#f.", "GET https://user:***@h.example:8443/v1?key=***&q=1#f."),
        ("'https://ghp_token123@h.example/x'", "'https://***@h.example/x'"),
        ("wss://wss.example/connect?ticket=t-1", "wss://wss.example/connect?ticket=***"),
        ("(see https://h.example/?access_token=a&sign=b&timestamp=1)", "(see https://h.example/?access_token=***&sign=***&timestamp=1)"),
        ("https://h.example/?api_key=a&client_secret=b&password=c&token=d", "https://h.example/?api_key=***&client_secret=***&password=***&token=***"),
        ("https://api.openai.com/v1/chat/completions?stream=true", "https://api.openai.com/v1/chat/completions?stream=true"),
        ("no url at all: key=value", "no url at all: key=value"),
    ],
)
def test_redact_hides_url_credentials_and_keeps_the_rest_as_written(text: str, shown: str) -> None:
    assert logs.redact(text) == shown


def test_url_credentials_never_reach_stderr_even_with_no_registered_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup_logging("info")
    log = logging.getLogger("edgecrab.x")
    log.warning("[x] calling %s", "https://bot:hunter2-canary@llm.example/v1")
    try:
        raise OSError("refused: https://h.example/?token=tok-canary-1")
    except OSError:
        log.exception("[x] failed")
    err = capsys.readouterr().err
    assert "hunter2-canary" not in err and "tok-canary-1" not in err
    assert "https://bot:***@llm.example/v1" in err and "?token=***" in err


@pytest.mark.parametrize(
    "arg", ["msg-1", "", "naïve 中文 🦀", "a\nb", "tab\there", "\x1b[31m", "l\u2028s", "del\x7f", "c1\x85"]
)
def test_escaping_an_argument_gives_what_the_wrapper_gives(arg: str) -> None:
    # Printable strings are passed through unwrapped (the fast path); the text must be the same either way.
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "%s|%r", (arg, arg), None)
    logs.SecretFilter().filter(record)
    assert record.getMessage() == f"{logs.escape(arg)}|{logs.escape(repr(arg))}"
    assert "\n" not in record.getMessage() and "\x1b" not in record.getMessage()


def test_text_formatter_writes_what_the_standard_formatter_writes() -> None:
    """The time's text is made once a second: the line stays the standard one, to the millisecond."""
    from edgecrab.logs import FORMAT, TextFormatter

    ours, standard = TextFormatter(), logging.Formatter(FORMAT)
    for created in (0.0, 1.9995, 1_780_000_000.0, 1_780_000_000.25, 1_780_000_000.999, 1_780_000_001.5,
                    1_780_000_000.75, 1_900_000_000.001):
        record = logging.LogRecord("edgecrab.x", logging.INFO, __file__, 1, "[x] %s", ("a",), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert ours.format(record) == standard.format(record)
