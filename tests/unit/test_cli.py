"""The edgecrab command line: exit codes, error output, redaction, hand-over to gateway, hooks, sandbox."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgecrab import __version__, logs
from edgecrab.cli import main
from edgecrab.config import SANDBOX_APP_KEY, Config, load_schema
from edgecrab.errors import HookLoadError, Problem, StartupError

ROOT = Path(__file__).resolve().parents[2]
INVALID = ROOT / "tests" / "data" / "configs" / "invalid"
SECRET = "s3cret-value-0001"
GOOD = f"""
platforms:
  dingtalk:
    app_key: dingkey0001
    app_secret: {SECRET}
agent:
  type: openai
  model: deepseek-chat
  api_key: sk-live-0123456789
  env:
    SERVICE_PASSWORD: hunter2-hunter2
"""
BAD = """
platforms:
  dingtalk:
    app_key: dingkey0001
    app_secret: x
    reply_format: html
agent:
  type: echoo
sessions:
  history_limt: 5
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("DINGTALK_", "EDGECRAB_", "DEEPSEEK_")):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    # main() installs a stderr handler bound to this test's captured stream; do not leak it.
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    logs.clear_secrets()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgecrab.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> None:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


# --- basics ---------------------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"edgecrab {__version__}\n", "")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["config"],
        ["config", "explode"],
        ["sandbox", "--port", "99999"],
        ["--log-level", "loud", "config", "schema"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert "usage: edgecrab" in err and out == ""


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "gateway" in out and "DINGTALK_APP_KEY" in out


# --- config validate / show / schema --------------------------------------------------------------------


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    assert run(capsys, "--config", str(path), "config", "validate") == (0, f"config OK: {path}\n", "")


def test_config_option_also_accepted_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD)
    code, out, _ = run(capsys, "config", "validate", "--config", str(path))
    assert code == 0 and out == f"config OK: {path}\n"


def test_validate_prints_every_problem_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BAD)
    code, out, err = run(capsys, "--config", str(path), "config", "validate")
    assert code == 2 and out == ""
    assert err.startswith(f"invalid configuration ({path}): 3 problems\n")
    for expected in (
        "platforms.dingtalk.reply_format (line 6)",
        "agent.type (line 8)",
        "sessions.history_limt (line 10)",
        "did you mean `history_limit`?",
    ):
        assert expected in err
    assert "Traceback" not in err


def test_debug_log_level_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BAD)
    code, _, err = run(capsys, "--log-level", "DEBUG", "--config", str(path), "config", "validate")
    assert code == 2
    assert "Traceback (most recent call last)" in err and "3 problems" in err


def test_log_level_from_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    path = write(tmp_path, BAD)
    monkeypatch.setenv("EDGECRAB_LOG_LEVEL", "Debug")
    assert "Traceback" in run(capsys, "--config", str(path), "config", "validate")[2]
    monkeypatch.setenv("EDGECRAB_LOG_LEVEL", "chatty")
    code, _, err = run(capsys, "config", "schema")
    assert code == 2 and "EDGECRAB_LOG_LEVEL" in err and "chatty" in err


def test_without_config_or_credentials_says_what_to_set(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "config", "validate")
    assert code == 2 and out == ""
    assert "DINGTALK_APP_KEY" in err and "DINGTALK_APP_SECRET" in err and "Credentials and basic info" in err


def test_without_config_credentials_come_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DINGTALK_APP_KEY", "dingkey0001")
    monkeypatch.setenv("DINGTALK_APP_SECRET", SECRET)
    code, out, _ = run(capsys, "config", "validate")
    assert code == 0 and out.startswith("config OK: built-in defaults")


def test_edgecrab_config_variable_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECRAB_CONFIG", str(write(tmp_path, BAD)))
    assert run(capsys, "config", "validate")[0] == 2


def test_show_redacts_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "--log-level", "debug", "--config", str(write(tmp_path, GOOD)), "config", "show"
    )
    assert code == 0
    for secret in (SECRET, "sk-live-0123456789", "hunter2-hunter2"):
        assert secret not in out and secret not in err
    shown = yaml.safe_load(out)
    assert shown["platforms"]["dingtalk"]["app_secret"] == "***"
    assert shown["agent"]["api_key"] == "***"
    assert shown["agent"]["env"]["SERVICE_PASSWORD"] == "***"
    assert shown["platforms"]["dingtalk"]["app_key"] == "dingkey0001"
    assert shown["sessions"]["history_limit"] == 40


def test_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config", "schema")
    assert code == 0 and json.loads(out) == load_schema()


def test_loaded_secrets_are_redacted_from_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--config", str(write(tmp_path, GOOD)), "config", "validate")[0] == 0
    logging.getLogger("edgecrab.test").warning("[test] token %s and %s", SECRET, "sk-live-0123456789")
    err = capsys.readouterr().err
    assert "[test] token *** and ***" in err and SECRET not in err


# --- delegation -----------------------------------------------------------------------------------------


def test_gateway_start_hands_the_config_to_the_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Config, bool, int | None]] = []

    def run_gateway(config: Config, *, sandbox: bool = False, port: int | None = None) -> int:
        calls.append((config, sandbox, port))
        return 0

    fake_module(monkeypatch, "edgecrab.serve", run_gateway=run_gateway)
    assert run(capsys, "--config", str(write(tmp_path, GOOD)), "gateway", "start")[0] == 0
    [(config, sandbox, port)] = calls
    assert (config.dingtalk.app_secret, sandbox, port) == (SECRET, False, None)


def test_gateway_start_sandbox_needs_no_credentials(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    fake_module(
        monkeypatch,
        "edgecrab.serve",
        run_gateway=lambda config, sandbox, port: seen.append((config.dingtalk.app_key, sandbox, port)),
    )
    assert run(capsys, "gateway", "start", "--sandbox", "--port", "8123")[0] == 0
    assert seen == [(SANDBOX_APP_KEY, True, 8123)]


def test_gateway_start_without_credentials_is_a_config_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_module(monkeypatch, "edgecrab.serve", run_gateway=lambda *a, **k: pytest.fail("must not start"))
    code, _, err = run(capsys, "gateway", "start")
    assert code == 2 and "DINGTALK_APP_KEY" in err


@pytest.mark.parametrize(
    ("raised", "code", "text"),
    [
        (StartupError("port 8080 is already in use"), 1, "edgecrab: port 8080 is already in use"),
        (RuntimeError(f"boom with {SECRET}"), 1, "edgecrab: unexpected error: RuntimeError: boom with ***"),
        (KeyboardInterrupt(), 130, "edgecrab: interrupted"),
    ],
)
def test_runtime_failures_are_one_paragraph(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    raised: BaseException,
    code: int,
    text: str,
) -> None:
    def run_gateway(*args: Any, **kwargs: Any) -> int:
        raise raised

    fake_module(monkeypatch, "edgecrab.serve", run_gateway=run_gateway)
    got, _, err = run(capsys, "--config", str(write(tmp_path, GOOD)), "gateway", "start")
    assert got == code
    assert text in err and "Traceback" not in err and SECRET not in err


def test_gateway_exit_code_is_passed_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_module(monkeypatch, "edgecrab.serve", run_gateway=lambda *a, **k: 3)
    assert run(capsys, "--config", str(write(tmp_path, GOOD)), "gateway", "start")[0] == 3


def test_hooks_list_prints_the_listing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no hooks/ folder here, and no config: the built-in default
    fake_module(
        monkeypatch,
        "edgecrab.hooks.manager",
        hooks_list_text=lambda config: f"Hooks: {len(config.hooks.paths)}",
    )
    assert run(capsys, "hooks", "list") == (0, "Hooks: 0\n", "")


def test_hooks_that_cannot_load_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def hooks_list_text(config: Config) -> str:
        raise HookLoadError(Problem("hooks/10_bad.py", "SyntaxError: invalid syntax", line=4))

    fake_module(monkeypatch, "edgecrab.hooks.manager", hooks_list_text=hooks_list_text)
    code, _, err = run(capsys, "hooks", "list")
    assert code == 2
    assert "hooks could not be loaded: 1 problem\n  - hooks/10_bad.py (line 4): SyntaxError" in err


def test_sandbox_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []
    fake_module(
        monkeypatch, "edgecrab.sandbox", run_sandbox=lambda host, port: seen.append((host, port)) or 0
    )
    assert run(capsys, "sandbox")[0] == 0
    assert run(capsys, "sandbox", "--host", "127.0.0.2", "--port", "9000")[0] == 0
    assert seen == [("127.0.0.1", 8765), ("127.0.0.2", 9000)]


# --- as a real process ----------------------------------------------------------------------------------


def _process(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_python_dash_m_exit_codes(tmp_path: Path) -> None:
    good, bad = write(tmp_path, GOOD), INVALID / "bad_enum.yaml"
    version = _process(sys.executable, "-m", "edgecrab", "--version", cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"edgecrab {__version__}\n")
    ok = _process(sys.executable, "-m", "edgecrab", "--config", str(good), "config", "validate", cwd=tmp_path)
    assert (ok.returncode, ok.stdout) == (0, f"config OK: {good}\n")
    failed = _process(
        sys.executable, "-m", "edgecrab", "--config", str(bad), "config", "validate", cwd=tmp_path
    )
    assert failed.returncode == 2
    assert "platforms.dingtalk.reply_format (line 6)" in failed.stderr and "Traceback" not in failed.stderr
    missing = _process(sys.executable, "-m", "edgecrab", "gateway", "start", cwd=tmp_path)
    assert missing.returncode == 2 and "DINGTALK_APP_KEY" in missing.stderr


def test_console_script_exit_codes(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("edgecrab")
    assert script.exists(), "the package is not installed: pip install -e '.[test]'"
    assert _process(str(script), "--version", cwd=tmp_path).returncode == 0
    assert _process(str(script), "config", "validate", cwd=tmp_path).returncode == 2
    assert _process(str(script), "no-such-command", cwd=tmp_path).returncode == 2
