"""The hook engine: loading (edgecrab.hooks.load), calling (edgecrab.hooks.call), listing
(edgecrab.hooks.manager),
the test harness, the shipped examples in hooks/, and meta-tests keeping hookspecs, docs/hooks.md and tests
in step."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.metadata
import inspect
import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from syrupy.assertion import SnapshotAssertion

from edgecrab import hookimpl
from edgecrab.config import Config, DingTalkConfig, HooksConfig
from edgecrab.errors import ConfigError, HookLoadError
from edgecrab.events import AgentResult, Command, SessionInfo
from edgecrab.hooks import specs as hookspecs
from edgecrab.hooks.call import mode_of
from edgecrab.hooks.load import HOOK_NAMES
from edgecrab.hooks.manager import HookManager, hooks_list_text
from edgecrab.testing.hooks import HookHarness, make_message, make_request

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "hooks_fixtures"
GOOD = FIXTURES / "good"
BAD = FIXTURES / "bad"
EXAMPLES = REPO / "hooks"

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    # Listings show paths relative to the working directory; snapshots need them stable.
    monkeypatch.chdir(REPO)


@pytest.fixture
def hooks_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="edgecrab.hooks")
    return caplog


def load(*paths: Path, **changes: Any) -> HookManager:
    return HookManager.load(HooksConfig(paths=paths, entry_points=False, **changes))


def write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(inspect.cleandoc(source) + "\n", encoding="utf-8")
    return path


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


# -- loading ---------------------------------------------------------------------------------------------


def test_files_load_in_filename_order_skipping_underscore_and_non_python_files() -> None:
    manager = load(GOOD)
    assert [i.name for i in manager.listing()] == ["10_record", "20_transform", "30_collide"]
    assert all(i.status == "loaded" and i.kind == "file" for i in manager.listing())
    record = manager.listing()[0]
    assert record.path == str(GOOD / "10_record.py")
    assert record.hooks == tuple(sorted(record.hooks)) and "message_received" in record.hooks


@pytest.mark.parametrize(
    ("file", "line", "message", "hint"),
    [
        ("import_error.py", 3, "ModuleNotFoundError: No module named 'edgecrab_no_such_module'", ""),
        ("syntax_error.py", 5, "SyntaxError: 'return' outside function", ""),
        ("misspelled_hook.py", 7, "unknown hook 'prepare_replay'", "did you mean 'prepare_reply'?"),
        ("wrong_argument.py", 7, "prepare_reply cannot take 'text'", "its arguments are: reply, message"),
        ("undecorated_hook.py", 4, "allow_message looks like a hook but is not decorated", "add @hookimpl"),
        ("bad_config.py", 11, "hook_loaded raised ValueError: hooks.config.bad_config.token is required", ""),
    ],
)
def test_a_broken_file_stops_loading_naming_file_and_line(
    file: str, line: int, message: str, hint: str
) -> None:
    with pytest.raises(HookLoadError) as caught:
        load(BAD / file)
    assert isinstance(caught.value, ConfigError)
    [problem] = caught.value.problems
    assert (problem.path, problem.line, problem.message) == (str(BAD / file), line, message)
    assert hint in problem.hint
    assert f"{BAD / file} (line {line})" in str(caught.value)


def test_a_hook_misspelt_through_specname_or_on_a_builtin_object_is_refused(tmp_path: Path) -> None:
    write(
        tmp_path,
        "typo.py",
        """
        from edgecrab import hookimpl

        @hookimpl(specname="reply_sendt")
        def audit(reply):
            pass
    """,
    )
    with pytest.raises(HookLoadError, match="unknown hook 'reply_sendt'") as caught:
        load(tmp_path)
    assert caught.value.problems[0].line == 4
    assert caught.value.problems[0].hint == "did you mean 'reply_sent'?"

    class Builtin:
        @hookimpl
        def allow_mesage(self, message: Any) -> bool:
            return True

    with pytest.raises(HookLoadError, match="unknown hook 'allow_mesage'"):
        HookManager.load(HooksConfig(entry_points=False), builtins=[("builtin", Builtin())])


def test_wrappers_async_hook_loaded_and_duplicate_names_are_refused(tmp_path: Path) -> None:
    write(
        tmp_path / "a",
        "wrap.py",
        """
        from edgecrab import hookimpl

        @hookimpl(wrapper=True)
        def prepare_reply(reply):
            return (yield)
    """,
    )
    with pytest.raises(HookLoadError, match="wrapper hooks are not supported"):
        load(tmp_path / "a")
    write(
        tmp_path / "b",
        "aload.py",
        """
        from edgecrab import hookimpl

        @hookimpl
        async def hook_loaded(config):
            pass
    """,
    )
    with pytest.raises(HookLoadError, match="hook_loaded must be a plain def"):
        load(tmp_path / "b")
    write(tmp_path / "c", "10_same.py", "x = 1")
    write(tmp_path / "d", "10_same.py", "y = 2")
    with pytest.raises(HookLoadError, match="another hook is already named '10_same'"):
        load(tmp_path / "c", tmp_path / "d")


def test_on_error_skip_lists_every_failure_and_loads_the_rest(hooks_log: pytest.LogCaptureFixture) -> None:
    manager = load(BAD, on_error="skip")
    status = {i.name: i.status for i in manager.listing()}
    assert status == {
        "bad_config": "failed",
        "hangs_async": "loaded",
        "hangs_sync": "loaded",
        "import_error": "failed",
        "misspelled_hook": "failed",
        "raises": "loaded",
        "syntax_error": "failed",
        "undecorated_hook": "failed",
        "wrong_argument": "failed",
    }
    misspelt = next(i for i in manager.listing() if i.name == "misspelled_hook")
    assert misspelt.error == "line 7: unknown hook 'prepare_replay' (did you mean 'prepare_reply'?)"
    assert misspelt.hooks == ()
    assert (
        f"[hooks] {BAD / 'misspelled_hook.py'}:7: unknown hook 'prepare_replay' "
        "(did you mean 'prepare_reply'?); skipped (hooks.on_error: skip)"
    ) in log_lines(hooks_log)
    assert manager.plugin("misspelled_hook") is None


def test_enabled_and_disabled_select_by_name_and_unknown_names_are_warned(
    hooks_log: pytest.LogCaptureFixture,
) -> None:
    manager = load(GOOD, disabled=("20_transform",), config={"10_recrod": {}})
    assert [(i.name, i.status) for i in manager.listing()] == [
        ("10_record", "loaded"),
        ("20_transform", "disabled"),
        ("30_collide", "loaded"),
    ]
    assert manager.plugin("20_transform") is None
    assert "[hooks] hooks.config names '10_recrod' but no hook has that name (did you mean '10_record'?)" in (
        log_lines(hooks_log)
    )
    only = load(GOOD, enabled=("30_collide",))
    assert [i.status for i in only.listing()] == ["disabled", "disabled", "loaded"]


def test_hook_loaded_receives_its_own_read_only_config_and_each_gateway_gets_its_own_module() -> None:
    first = load(GOOD, config={"10_record": {"colour": "red"}, "20_transform": {"ignored": True}})
    second = load(GOOD)
    assert first.plugin("10_record").SETTINGS == {"colour": "red", "loaded_as": "10_record"}
    assert second.plugin("10_record").SETTINGS == {"loaded_as": "10_record"}
    assert first.plugin("10_record") is not second.plugin("10_record")


def test_missing_folder_is_a_warning_not_an_error(hooks_log: pytest.LogCaptureFixture) -> None:
    manager = load(FIXTURES / "no_such_folder")
    assert manager.listing() == []
    assert any("does not exist" in line for line in log_lines(hooks_log))


async def test_builtins_then_entry_points_then_modules_then_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = (
        'from edgecrab import hookimpl\n\n@hookimpl\ndef prepare_reply(reply):\n    return reply + " {}"\n'
    )
    write(tmp_path / "pkgs", "crab_ep_hooks.py", chain.format("ep"))
    write(tmp_path / "pkgs", "crab_mod_hooks.py", chain.format("module"))
    write(tmp_path / "files", "10_file.py", chain.format("file"))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    ep = importlib.metadata.EntryPoint(name="crab_ep", value="crab_ep_hooks", group="edgecrab")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep] if group == "edgecrab" else [])

    class Builtin:
        @hookimpl
        def prepare_reply(self, reply: str) -> str:
            return reply + " builtin"

    config = HooksConfig(paths=(tmp_path / "files",), modules=("crab_mod_hooks",))
    manager = HookManager.load(config, builtins=[("core", Builtin())])
    assert [(i.name, i.kind) for i in manager.listing()] == [
        ("core", "builtin"),
        ("crab_ep", "entry point"),
        ("crab_mod_hooks", "module"),
        ("10_file", "file"),
    ]
    assert manager.listing()[2].path == str(tmp_path / "pkgs" / "crab_mod_hooks.py")
    reply = await manager.pipeline("prepare_reply", "reply", "hi", message=None)
    assert reply == "hi builtin ep module file"
    no_eps = HookManager.load(dataclasses.replace(config, entry_points=False))
    assert "crab_ep" not in [i.name for i in no_eps.listing()]


def test_a_module_that_fails_to_import_names_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "crab_broken_hooks.py", "x = 1\nraise RuntimeError('no config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HookLoadError) as caught:
        HookManager.load(HooksConfig(modules=("crab_broken_hooks",), entry_points=False))
    [problem] = caught.value.problems
    assert (problem.path, problem.line) == (str(tmp_path / "crab_broken_hooks.py"), 2)
    assert problem.message == "RuntimeError: no config"


# -- calling ---------------------------------------------------------------------------------------------


async def test_notify_hooks_get_only_the_arguments_they_name_sync_or_async() -> None:
    manager = load(GOOD)
    events = manager.plugin("10_record").EVENTS
    message = make_message(text="hi")
    result = AgentResult(text="answer")
    await manager.notify("gateway_started", gateway="gw")
    await manager.notify("connection_changed", robot="dingbot", state="reconnecting", detail="idle timeout")
    await manager.notify("message_received", message=message)
    await manager.notify("command_received", command=Command(name="/new"), message=message)
    await manager.notify("session_reset", session=SessionInfo(key="dingbot:cid", message=message))
    await manager.notify("agent_finished", result=result, message=message)
    await manager.notify("reply_sent", reply="answer", message=message)
    await manager.notify("send_failed", error=TimeoutError("slow"), reply="answer", message=message)
    await manager.notify("gateway_stopping", gateway="gw")
    assert events == [
        ("gateway_started", "gw"),
        ("connection_changed", ("dingbot", "reconnecting")),
        ("message_received", "hi"),
        ("command_received", "/new"),
        ("session_reset", "dingbot:cid"),
        ("agent_finished", ("answer", message.id)),
        ("reply_sent", "answer"),
        ("send_failed", ("slow", "answer")),
        ("gateway_stopping", "gw"),
    ]
    record = manager.listing()[0]
    assert (record.calls, record.errors, record.timeouts) == (9, 0, 0)


async def test_allow_message_veto_stops_at_the_first_false(tmp_path: Path) -> None:
    manager = load(GOOD)
    assert await manager.allow("allow_message", message=make_message(text="hello")) is True
    assert await manager.allow("allow_message", message=make_message(text="forbidden fruit")) is False
    write(
        tmp_path,
        "10_veto.py",
        "from edgecrab import hookimpl\n\n@hookimpl\ndef allow_message():\n    return False",
    )
    write(
        tmp_path,
        "20_spy.py",
        """
        from edgecrab import hookimpl

        SEEN = []

        @hookimpl
        def allow_message(message):
            SEEN.append(message)
    """,
    )
    vetoing = load(tmp_path)
    assert await vetoing.allow("allow_message", message=make_message()) is False
    assert vetoing.plugin("20_spy").SEEN == []


async def test_pipelines_run_in_load_order_with_tryfirst_and_trylast() -> None:
    manager = load(GOOD)
    reply = await manager.pipeline("prepare_reply", "reply", "hi", message=make_message())
    assert reply == "hi [10] [20] [30 last]"
    shouted = await manager.pipeline("prepare_message", "message", make_message(text="shout hello"))
    assert shouted.text == "HELLO"
    same = make_message(text="quiet")
    assert await manager.pipeline("prepare_message", "message", same) is same
    request = make_request(same, system_prompt="Be kind.")
    edited = await manager.pipeline("prepare_agent_request", "request", request, message=same)
    assert edited is request and request.system_prompt == "Be kind. Answer briefly."


async def test_pipeline_ignores_a_result_of_the_wrong_type(
    tmp_path: Path, hooks_log: pytest.LogCaptureFixture
) -> None:
    write(
        tmp_path,
        "10_bad_type.py",
        "from edgecrab import hookimpl\n\n@hookimpl\ndef prepare_reply(reply):\n    return 42",
    )
    manager = load(tmp_path)
    assert await manager.pipeline("prepare_reply", "reply", "hi", message=None) == "hi"
    assert manager.listing()[0].errors == 1
    assert "[hooks] 10_bad_type.py:4 prepare_reply returned int, expected str or None; ignored" in log_lines(
        hooks_log
    )


async def test_handle_error_first_non_none_wins() -> None:
    manager = load(GOOD)
    message = make_message()
    assert await manager.first("handle_error", error=RuntimeError("x"), message=message) == (
        "first: handled by 30_collide"
    )
    assert await manager.first("handle_error", error=ValueError("bad"), message=None) == "sorry: bad"
    assert await manager.first("handle_error", error=KeyError("k"), message=message) is None


async def test_a_hook_that_raises_is_logged_with_file_and_line_and_skipped(
    hooks_log: pytest.LogCaptureFixture,
) -> None:
    manager = load(BAD / "raises.py", GOOD)
    reply = await manager.pipeline("prepare_reply", "reply", "hi", message=make_message())
    assert reply == "hi [10] [20] [30 last]"
    await manager.notify("message_received", message=make_message(text="still delivered"))
    assert ("message_received", "still delivered") in manager.plugin("10_record").EVENTS
    assert await manager.allow("allow_message", message=make_message()) is True  # a raising veto allows
    lines = log_lines(hooks_log)
    assert "[hooks] raises.py:10 prepare_reply raised ValueError: cannot redact 'hi'" in lines
    assert "[hooks] raises.py:15 message_received raised RuntimeError: audit store is down" in lines
    info = manager.listing()[0]
    assert (info.name, info.calls, info.errors, info.timeouts) == ("raises", 3, 3, 0)


async def test_a_sync_hook_that_hangs_is_abandoned(hooks_log: pytest.LogCaptureFixture) -> None:
    manager = load(BAD / "hangs_sync.py", GOOD, timeout_s=0.2)
    module = manager.plugin("hangs_sync")
    try:
        reply = await manager.pipeline("prepare_reply", "reply", "hi", message=make_message())
        assert not module.FINISHED.is_set()  # returned while the hook was still blocked: abandoned
    finally:
        module.RELEASE.set()
        await anyio.to_thread.run_sync(module.FINISHED.wait, 10)
    assert reply == "hi [10] [20] [30 last]"
    assert (manager.listing()[0].timeouts, manager.listing()[0].errors) == (1, 0)
    assert "[hooks] hangs_sync.py:12 prepare_reply timed out after 0.2s; abandoned" in log_lines(hooks_log)


async def test_an_async_hook_that_hangs_is_abandoned(hooks_log: pytest.LogCaptureFixture) -> None:
    manager = load(BAD / "hangs_async.py", timeout_s=0.2)
    assert await manager.pipeline("prepare_reply", "reply", "hi", message=None) == "hi"
    assert manager.listing()[0].timeouts == 1
    assert "[hooks] hangs_async.py:9 prepare_reply timed out after 0.2s; abandoned" in log_lines(hooks_log)


async def test_outside_cancellation_is_not_swallowed_or_counted() -> None:
    manager = load(BAD / "hangs_async.py", timeout_s=30)
    finished = False
    with anyio.move_on_after(0.1) as scope:  # like /stop cancelling the run
        await manager.pipeline("prepare_reply", "reply", "hi", message=None)
        finished = True
    assert scope.cancelled_caught and not finished
    info = manager.listing()[0]
    assert (info.calls, info.errors, info.timeouts) == (1, 0, 0)


async def test_the_hosts_own_mistakes_are_loud() -> None:
    manager = HookManager.empty()
    with pytest.raises(TypeError, match="unknown hook 'message_recieved'"):
        await manager.notify("message_recieved", message=None)
    with pytest.raises(TypeError, match="allow_message is a veto hook, not notify"):
        await manager.notify("allow_message", message=None)
    with pytest.raises(TypeError, match=r"reply_sent takes \(reply, message\), got \(reply\)"):
        await manager.notify("reply_sent", reply="x")


async def test_an_empty_manager_is_neutral() -> None:
    manager = HookManager.empty()
    message = make_message()
    await manager.notify("message_received", message=message)
    assert await manager.allow("allow_message", message=message) is True
    assert await manager.pipeline("prepare_reply", "reply", "hi", message=message) == "hi"
    assert await manager.first("handle_error", error="x", message=message) is None
    assert await manager.register_commands() == {}
    assert manager.listing() == []


# -- register_commands -----------------------------------------------------------------------------------


async def test_register_commands_normalises_names_and_refuses_collisions(
    hooks_log: pytest.LogCaptureFixture,
) -> None:
    manager = load(GOOD)
    commands = await manager.register_commands()
    assert sorted(commands) == ["/echo", "/whoami"]
    assert (commands["/echo"].help, commands["/echo"].plugin) == ("Repeat the arguments", "20_transform.py")
    lines = log_lines(hooks_log)
    assert "[hooks] 20_transform.py: /status is a built-in command; not registered" in lines
    assert "[hooks] 30_collide.py: /echo is already registered by 20_transform.py; not registered" in lines
    assert any("invalid command name 'two words'" in line for line in lines)
    message = make_message(sender_name="Bob")
    assert await commands["/echo"].call(Command(name="/echo", args="a b"), message) == "a b"
    assert await commands["/whoami"].call(Command(name="/whoami"), message) == "Bob (/whoami)"
    calls = manager.listing()[1].calls
    assert await manager.register_commands() == commands  # collected once
    assert manager.listing()[1].calls == calls


async def test_a_failing_or_hanging_command_handler_answers_politely(
    tmp_path: Path, hooks_log: pytest.LogCaptureFixture
) -> None:
    write(
        tmp_path,
        "10_slow.py",
        """
        import anyio
        from edgecrab import hookimpl

        LATE = []

        @hookimpl
        def register_commands(register):
            LATE.append(register)
            register("slow", slow)

        async def slow():
            await anyio.sleep_forever()
    """,
    )
    manager = load(BAD / "raises.py", tmp_path, timeout_s=0.2)
    commands = await manager.register_commands()
    message = make_message()
    assert (
        await commands["/boom"].call(Command(name="/boom"), message) == "/boom failed; the error was logged."
    )
    assert (
        await commands["/slow"].call(Command(name="/slow"), message) == "/slow failed; the error was logged."
    )
    manager.plugin("10_slow").LATE[0]("later", lambda: "x")
    lines = log_lines(hooks_log)
    assert "[hooks] raises.py:29 /boom raised ZeroDivisionError: boom" in lines
    assert "[hooks] 10_slow.py:11 /slow timed out after 0.2s; abandoned" in lines
    assert "[hooks] 10_slow.py: register('later') called after start-up; ignored" in lines
    assert "/later" not in await manager.register_commands()


# -- listing ---------------------------------------------------------------------------------------------


async def test_hooks_listing_while_running(snapshot: SnapshotAssertion) -> None:
    manager = load(GOOD, EXAMPLES, BAD / "raises.py", config={"10_audit_log": {"path": "/dev/null"}})
    message = make_message(text="hi")
    await manager.notify("message_received", message=message)
    await manager.pipeline("prepare_reply", "reply", "hi", message=message)
    assert manager.listing_text(running=True) == snapshot


def test_hooks_listing_with_no_hooks_says_how_to_add_one(snapshot: SnapshotAssertion) -> None:
    assert HookManager.empty().listing_text(running=True) == snapshot
    assert load(FIXTURES / "no_such_folder").listing_text(running=False) == snapshot


def test_hooks_list_text_lists_failures_even_when_on_error_is_fail(snapshot: SnapshotAssertion) -> None:
    hooks = HooksConfig(paths=(BAD, EXAMPLES), disabled=("hangs_sync",), on_error="fail", entry_points=False)
    config = Config(dingtalk=DingTalkConfig(app_key="k", app_secret="s"), hooks=hooks)
    text = hooks_list_text(config)
    assert "calls:" not in text
    assert text == snapshot


# -- the test harness ------------------------------------------------------------------------------------


async def test_harness_tests_a_hook_file_in_a_few_lines() -> None:
    h = HookHarness.from_file("hooks/20_keyword_veto.py", config={"words": ["Salary"]})
    assert await h.allow_message(make_message(text="what is my SALARY?")) is False
    assert await h.allow_message(make_message(text="hello")) is True
    assert h.info.calls == 2 and h.module._words == ("salary",)


async def test_harness_is_strict_so_broken_hooks_fail_the_users_test() -> None:
    h = HookHarness.from_file(BAD / "raises.py")
    with pytest.raises(ValueError, match="cannot redact"):
        await h.prepare_reply("hi")
    with pytest.raises(ZeroDivisionError):
        await h.command("/boom")
    slow = HookHarness.from_file(BAD / "hangs_async.py", timeout_s=0.2)
    with pytest.raises(TimeoutError, match="hangs_async.py prepare_reply timed out after 0.2s"):
        await slow.prepare_reply("hi")
    with pytest.raises(HookLoadError):
        HookHarness.from_file(BAD / "misspelled_hook.py")
    with pytest.raises(KeyError, match="/nope is not registered; registered: /boom"):
        await h.command("/nope")


async def test_harness_calls_every_hook_by_name() -> None:
    record = HookHarness.from_file(GOOD / "10_record.py", config={"k": "v"})
    message = make_message(text="hi")
    await record.gateway_started("gw")
    await record.connection_changed(state="failed")
    await record.message_received(message)
    await record.command_received(Command(name="/help"), message)
    await record.session_reset(SessionInfo(key="s1"))
    await record.agent_finished(AgentResult(text="done"), message)
    await record.reply_sent("done", message)
    await record.send_failed("http 500", "done")
    await record.gateway_stopping("gw")
    assert [name for name, _ in record.module.EVENTS] == [
        "gateway_started",
        "connection_changed",
        "message_received",
        "command_received",
        "session_reset",
        "agent_finished",
        "reply_sent",
        "send_failed",
        "gateway_stopping",
    ]
    assert record.module.SETTINGS == {"k": "v", "loaded_as": "10_record"}
    transform = HookHarness.from_file(GOOD / "20_transform.py")
    assert (await transform.prepare_message(make_message(text="shout hi"))).text == "HI"
    request = await transform.prepare_agent_request(make_request(message, system_prompt="Hi."), message)
    assert request.system_prompt == "Hi. Answer briefly."
    assert await transform.handle_error(RuntimeError("boom")) == "sorry: boom"
    with pytest.raises(ValueError, match="/status is a built-in command; not registered"):
        await transform.commands()  # strict: a refused registration fails the hook author's test


def test_make_message_is_realistic_and_unique() -> None:
    a, b = make_message(text="hi"), make_message(text="hi", is_group=True, sender_name="Bob")
    assert a.id != b.id and a.id.startswith("msg")
    assert a.conversation.id.startswith("cid") and not a.conversation.is_group
    assert b.conversation.is_group and b.bot_mentioned and b.sender.name == "Bob"
    assert a.route is not None and a.route.conversation_id == a.conversation.id
    assert a.sender.id == "manager4711" and a.sender.key == "manager4711"
    assert make_message(msgtype="picture").msgtype == "picture"
    assert make_request(a).messages == [{"role": "user", "content": "hi"}]


# -- the shipped examples --------------------------------------------------------------------------------


async def test_example_audit_log_writes_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    h = HookHarness.from_file(EXAMPLES / "10_audit_log.py", config={"path": str(path)})
    message = make_message(text="你好 crab", sender_name="张三")
    await h.message_received(message)
    await h.reply_sent("hello!", message)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["event"] for r in records] == ["message", "reply"]
    assert records[0]["text"] == "你好 crab" and records[0]["sender_name"] == "张三"
    assert records[1] == records[1] | {"message_id": message.id, "text": "hello!"}
    assert all(isinstance(r["ts"], float) for r in records)



async def test_example_audit_log_is_off_until_a_path_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    h = HookHarness.from_file(EXAMPLES / "10_audit_log.py")
    assert h.module._path is None
    message = make_message(text="private words")
    await h.message_received(message)
    await h.reply_sent("hello!", message)
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 - a test's own temp folder


async def test_example_keyword_veto() -> None:
    h = HookHarness.from_file(EXAMPLES / "20_keyword_veto.py", config={"words": ["internal only", " "]})
    assert await h.allow_message(make_message(text="This is INTERNAL ONLY")) is False
    assert await h.allow_message(make_message(text="internal")) is True
    unconfigured = HookHarness.from_file(EXAMPLES / "20_keyword_veto.py")
    assert await unconfigured.allow_message(make_message(text="anything")) is True
    with pytest.raises(HookLoadError, match="words must be a list of strings"):
        HookHarness.from_file(EXAMPLES / "20_keyword_veto.py", config={"words": "salary"})


async def test_example_ping_command() -> None:
    h = HookHarness.from_file(EXAMPLES / "30_ping_command.py")
    assert (await h.commands())["/ping"].help == "Check that the gateway is alive"
    assert await h.command("/ping", make_message(created_at=0)) == "pong"
    assert await h.command("/PING are you there", make_message(created_at=0)) == "pong: are you there"
    assert re.fullmatch(r"pong \(\d+\.\ds after you sent it\)", await h.command("/ping"))


async def test_example_reply_footer() -> None:
    unconfigured = HookHarness.from_file(EXAMPLES / "40_reply_footer.py")
    assert await unconfigured.prepare_reply("Answer") == "Answer"  # off until a footer is set
    h = HookHarness.from_file(EXAMPLES / "40_reply_footer.py", config={"footer": "_AI, may be wrong_"})
    assert await h.prepare_reply("Answer") == "Answer\n\n_AI, may be wrong_"
    assert await h.prepare_reply("Answer\n\n_AI, may be wrong_") == "Answer\n\n_AI, may be wrong_"
    assert await h.prepare_reply("") == ""
    off = HookHarness.from_file(EXAMPLES / "40_reply_footer.py", config={"footer": ""})
    assert await off.prepare_reply("Answer") == "Answer"


# -- meta-tests: hookspecs <-> docs <-> tests ------------------------------------------------------------
# These must not name hooks literally, or they would count as tests mentioning them.


def _signature(name: str) -> str:
    return f"{name}({', '.join(inspect.signature(getattr(hookspecs, name)).parameters)})"


def _doc_sections() -> dict[str, str]:
    text = (REPO / "docs" / "hooks.md").read_text(encoding="utf-8")
    parts = re.split(r"^### `([^`]+)`\s*$", text, flags=re.M)
    return {title: body.split("\n## ")[0] for title, body in zip(parts[1::2], parts[2::2], strict=True)}


@functools.cache
def _test_function_sources() -> tuple[str, ...]:
    return tuple(_iter_test_function_sources())


def _iter_test_function_sources() -> Iterator[str]:
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines(keepends=True)  # not ast.get_source_segment: it splits the file every call
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                if not node.name.startswith(("test_meta_", "test_contract_")):
                    yield "".join(lines[node.lineno - 1 : node.end_lineno])


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_meta_every_hookspec_is_documented_with_its_exact_signature_and_mode(name: str) -> None:
    sections = _doc_sections()
    assert _signature(name) in sections, f"docs/hooks.md has no '### `{_signature(name)}`' section"
    section = sections[_signature(name)]
    assert f"**Mode:** {mode_of(name)}" in section
    assert "```python" in section and "@hookimpl" in section, "each hook needs an example"


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_meta_every_hookspec_has_a_test_mentioning_it(name: str) -> None:
    assert any(re.search(rf"\b{name}\b", source) for source in _test_function_sources()), (
        f"no test function mentions {name}"
    )


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_meta_every_hookspec_follows_the_naming_grammar(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    first_word = {"notify": "Notify", "veto": "Veto", "pipeline": "Pipeline", "contribute": "Contribute"}
    assert doc.startswith(first_word.get(mode_of(name), "First")), doc
    assert not name.startswith("on_")
    if mode_of(name) == "notify":
        assert re.fullmatch(
            r"[a-z]+_(started|stopping|changed|received|reset|finished|sent|failed|loaded)", name
        )


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_meta_every_documented_example_loads_as_a_hook_file(name: str, tmp_path: Path) -> None:
    section = _doc_sections()[_signature(name)]
    [example] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    write(tmp_path, "example.py", "from edgecrab import hookimpl\n\n" + example)
    assert name in load(tmp_path, config={"example": {"token": "t"}}).listing()[0].hooks


def test_meta_docs_document_no_hook_that_does_not_exist() -> None:
    assert set(_doc_sections()) == {_signature(name) for name in HOOK_NAMES}


def test_contract_hook_names_and_arguments() -> None:
    # The public contract of issue 6: hook files outside this repo are written against these signatures.
    assert {name: _signature(name) for name in HOOK_NAMES} == {
        "hook_loaded": "hook_loaded(name, config)",
        "gateway_started": "gateway_started(gateway)",
        "gateway_stopping": "gateway_stopping(gateway)",
        "connection_changed": "connection_changed(robot, state, detail)",
        "message_received": "message_received(message)",
        "allow_message": "allow_message(message)",
        "prepare_message": "prepare_message(message)",
        "register_commands": "register_commands(register)",
        "command_received": "command_received(command, message)",
        "session_reset": "session_reset(session)",
        "prepare_agent_request": "prepare_agent_request(request, message)",
        "agent_finished": "agent_finished(result, message)",
        "prepare_reply": "prepare_reply(reply, message)",
        "reply_sent": "reply_sent(reply, message)",
        "send_failed": "send_failed(error, reply, message)",
        "handle_error": "handle_error(error, message)",
    }


def test_contract_sync_hooks_run_off_the_event_loop_thread(tmp_path: Path) -> None:
    # Why a blocking sync hook can be abandoned: it never runs on the loop's thread.
    write(
        tmp_path,
        "10_thread.py",
        """
        import threading
        from edgecrab import hookimpl

        SEEN = []

        @hookimpl
        def reply_sent(reply):
            SEEN.append(threading.get_ident())
    """,
    )
    manager = load(tmp_path)

    async def main() -> int:
        await manager.notify("reply_sent", reply="x", message=None)
        return threading.get_ident()

    loop_thread = anyio.run(main)
    assert manager.plugin("10_thread").SEEN and manager.plugin("10_thread").SEEN[0] != loop_thread


@pytest.mark.anyio
async def test_a_command_can_be_registered_for_some_robots_and_a_bad_robots_value_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Commands:
        @hookimpl
        def register_commands(self, register: Any) -> None:
            register("/ticket", lambda: "ok", robots="help")
            register("/both", lambda: "ok", robots=["sales", "help"])
            register("/bad", lambda: "ok", robots=5)

    manager = HookManager.load(HooksConfig(entry_points=False), builtins=[("commands", Commands())])
    with caplog.at_level(logging.ERROR, logger="edgecrab.hooks"):
        commands = await manager.register_commands()
    assert {name: c.robots for name, c in commands.items()} == {
        "/ticket": ("help",), "/both": ("sales", "help")
    }
    assert "robots for /bad must be a robot name or a list of them; not registered" in caplog.text
