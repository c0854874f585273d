"""Router table tests: command parsing, aliases, /help generation."""

import pytest

from edgecrab.core.router import BUILTIN_COMMANDS, HelpEntry, help_text, parse_command, resolve_alias
from edgecrab.events import Command


@pytest.mark.parametrize(
    ("text", "name", "args"),
    [
        ("/help", "/help", ""),
        ("  /HELP  ", "/help", ""),
        ("/Retry@EdgeCrab", "/retry", ""),
        ("/retry@EdgeCrab now please", "/retry", "now please"),
        ("/stop\n", "/stop", ""),
        ("/usage extra  words ", "/usage", "extra  words"),
        ("/重置", "/重置", ""),
        ("/new\nsecond line", "/new", "second line"),
    ],
)
def test_parse_command(text: str, name: str, args: str) -> None:
    cmd = parse_command(text)
    assert cmd is not None
    assert (cmd.name, cmd.args) == (name, args)


@pytest.mark.parametrize("text", ["hello", "", "/", " / help", "path /usr/bin", "//comment", "@bot /help"])
def test_not_a_command(text: str) -> None:
    assert parse_command(text) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [("/clear", "/new"), ("/重置", "/new"), ("/reset", "/new"), ("/CLEAR", "/new"), ("/status", "/status")],
)
def test_aliases(name: str, expected: str) -> None:
    aliases = {"/clear": "/new", "/重置": "/reset"}
    assert resolve_alias(Command(name.lower()), aliases).name == expected


def test_builtin_table_is_the_product_page() -> None:
    assert list(BUILTIN_COMMANDS) == [
        "/help",
        "/new",
        "/reset",
        "/stop",
        "/retry",
        "/status",
        "/usage",
        "/hooks",
    ]


def test_help_lists_everything() -> None:
    text = help_text({"/clear": "/new"}, [HelpEntry("/ping", "Answer pong")])
    for name in BUILTIN_COMMANDS:
        assert f"`{name}`" in text
    assert "`/clear` → `/new`" in text
    assert "`/ping` — Answer pong" in text


def test_help_snapshot(snapshot) -> None:
    assert help_text({"/clear": "/new", "/重置": "/reset"}, [HelpEntry("/ping", "Answer pong")]) == snapshot
