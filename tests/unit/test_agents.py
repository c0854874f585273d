"""Agent backends without sockets: build_agent, echo, command (real subprocesses), python, and the OpenAI
agent's response parsing against ``httpx.MockTransport``."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from edgecrab.agents import build_agent
from edgecrab.agents.base import AgentError
from edgecrab.agents.command import CommandAgent
from edgecrab.agents.echo import EchoAgent
from edgecrab.agents.openai import OpenAIAgent
from edgecrab.agents.python import PythonAgent
from edgecrab.config import AgentConfig
from edgecrab.events import AgentRequest, AgentResult, Usage

pytestmark = pytest.mark.anyio

PY = sys.executable


def req(*texts: str, system_prompt: str = "") -> AgentRequest:
    """A conversation alternating user/assistant turns, ending with the last text as the user's."""
    roles = ["user", "assistant"]
    n = len(texts)
    messages = [{"role": roles[(n - 1 - i) % 2], "content": t} for i, t in enumerate(texts)]
    return AgentRequest(messages=messages, system_prompt=system_prompt, session_key="s1", message_id="m1")


# -- build_agent -----------------------------------------------------------------------------------


def test_build_agent_default_is_echo() -> None:
    assert isinstance(build_agent(AgentConfig()), EchoAgent)


async def test_build_agent_each_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ec_build_mod.py").write_text("def answer(request):\n    return 'hi'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(build_agent(AgentConfig(type="command", command=(PY, "-c", "pass"))), CommandAgent)
    assert isinstance(build_agent(AgentConfig(type="python", callable="ec_build_mod:answer")), PythonAgent)
    agent = build_agent(AgentConfig(type="OpenAI", base_url="http://127.0.0.1:9/v1", model="m"))
    assert isinstance(agent, OpenAIAgent)
    await agent.aclose()


def test_build_agent_unknown_type() -> None:
    with pytest.raises(ValueError, match=r"unknown agent.type 'gpt'.*echo, openai, command, python"):
        build_agent(AgentConfig(type="gpt"))


def test_build_agent_missing_settings() -> None:
    with pytest.raises(ValueError, match="agent.command"):
        build_agent(AgentConfig(type="command"))
    with pytest.raises(ValueError, match="agent.callable"):
        build_agent(AgentConfig(type="python"))
    with pytest.raises(ValueError, match="agent.base_url"):
        build_agent(AgentConfig(type="openai", base_url="api.openai.com"))


# -- echo ------------------------------------------------------------------------------------------


async def test_echo_marks_the_reply_and_reports_no_usage() -> None:
    result = await EchoAgent().run(req("first", "reply", "hello 🦀"))
    first_line, _, rest = result.text.partition("\n")
    assert first_line == "🦀 echo: hello 🦀"
    assert "echo agent" in rest and "agent.type" in rest
    assert result.usage == Usage(0, 0)
    assert not result.failed


async def test_echo_single_message_and_no_history() -> None:
    result = await EchoAgent().run(req("hi"))
    assert result.text.startswith("🦀 echo: hi\n")
    assert not EchoAgent.uses_history  # the runner reads no history for it


# -- command ---------------------------------------------------------------------------------------


def command_agent(script: str, **changes: Any) -> CommandAgent:
    return CommandAgent(AgentConfig(type="command", command=(PY, "-c", textwrap.dedent(script)), **changes))


def pid_gone(pid: int) -> bool:
    """True when no such process runs (a zombie waiting for a reaper that is not ours counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def read_pid(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


async def poll(predicate: Callable[[], Any], within_s: float = 10.0) -> None:
    with anyio.fail_after(within_s):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


async def test_command_reply_is_stripped_stdout() -> None:
    agent = command_agent("print('  the answer\\n')")
    result = await agent.run(req("q"))
    assert result.text == "the answer"
    assert result.usage == Usage()
    assert result.duration_s > 0


async def test_command_receives_conversation_as_json_on_stdin() -> None:
    agent = command_agent("import sys; sys.stdout.write(sys.stdin.read())", system_prompt="be brief")
    request = req("one", "two", "three")
    result = await agent.run(request)
    document = json.loads(result.text)
    assert document["messages"] == request.messages
    assert document["system_prompt"] == "be brief"
    assert document["session_key"] == "s1"
    assert document["message_id"] == "m1"


async def test_command_request_system_prompt_wins_and_unicode_survives() -> None:
    agent = command_agent(
        "import sys, json; d = json.load(sys.stdin); print(d['system_prompt'], d['messages'][-1]['content'])",
        system_prompt="config prompt",
    )
    result = await agent.run(req("你好 🦀", system_prompt="hook prompt"))
    assert result.text == "hook prompt 你好 🦀"


async def test_command_env_is_the_allow_list_plus_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EC_FROM_OS", "os-value")
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    agent = command_agent(
        "import os; print(os.environ.get('EC_FROM_OS'), os.environ['EC_FROM_CONFIG'], os.environ['TZ'])",
        env={"EC_FROM_CONFIG": "config-value"},
    )
    assert (await agent.run(req("q"))).text == "None config-value Asia/Shanghai"


async def test_command_nonzero_exit_keeps_stderr_for_the_log() -> None:
    agent = command_agent(
        "import sys; sys.stderr.write('\\nboom: model missing\\ntraceback...\\n'); sys.exit(3)"
    )
    with pytest.raises(AgentError) as info:
        await agent.run(req("q"))
    assert info.value.user_message == (
        "the agent command failed (exit 3) — the gateway's log has its error output"
    )
    assert "boom: model missing" in info.value.cause and "traceback..." in info.value.cause


async def test_command_empty_output_is_an_error() -> None:
    with pytest.raises(AgentError, match="printed no reply"):
        await command_agent("pass").run(req("q"))


async def test_command_not_found() -> None:
    agent = CommandAgent(AgentConfig(type="command", command=("/nonexistent/edgecrab-agent",)))
    with pytest.raises(AgentError, match="could not start the agent command '/nonexistent/edgecrab-agent'"):
        await agent.run(req("q"))


async def test_command_that_ignores_stdin_still_answers() -> None:
    agent = command_agent("print('ok')")
    big = req("x" * 2_000_000)  # larger than a pipe buffer: writing must not block or fail the run
    assert (await agent.run(big)).text == "ok"


async def test_command_timeout_kills_the_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    agent = command_agent(
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)",
        timeout_s=0.5,
    )
    with anyio.fail_after(5), pytest.raises(AgentError) as info:
        await agent.run(req("q"))
    assert info.value.user_message == "the agent timed out after 0.5 s — /retry to try again"
    pid = read_pid(pid_file)
    assert pid is not None and pid_gone(pid)


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["polite", "ignores-sigterm"])
async def test_command_cancel_kills_the_process_within_1s(tmp_path: Path, ignore_sigterm: bool) -> None:
    pid_file = tmp_path / "pid"
    prelude = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_sigterm else ""
    agent = command_agent(
        prelude + f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    results: list[AgentResult] = []

    async def run() -> None:
        results.append(await agent.run(req("q")))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await poll(lambda: read_pid(pid_file))
        pid = read_pid(pid_file)
        assert pid is not None
        cancelled_at = time.monotonic()
        tg.cancel_scope.cancel()
    assert time.monotonic() - cancelled_at < 1.0
    assert pid_gone(pid)
    assert results == []


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
async def test_command_cancel_kills_grandchildren(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    agent = CommandAgent(
        AgentConfig(type="command", command=("/bin/sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"))
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.run, req("q"))
        await poll(lambda: read_pid(pid_file))
        grandchild = read_pid(pid_file)
        assert grandchild is not None
        tg.cancel_scope.cancel()
    # Killed at once; on a loaded machine the kernel may take a moment to reap it.
    await poll(lambda: pid_gone(grandchild), within_s=5.0)


# -- python ----------------------------------------------------------------------------------------

PY_AGENT_MODULE = """
import anyio
from edgecrab.events import AgentResult, Usage

calls = []

def sync_answer(request):
    calls.append(request)
    return "sync: " + request.messages[-1]["content"]

async def async_answer(request):
    await anyio.sleep(0)
    return AgentResult(text="async: " + request.messages[-1]["content"], usage=Usage(3, 4))

def dict_answer(request):
    return {"text": "dict", "usage": {"prompt_tokens": 5, "completion_tokens": 6}}

def bad_answer(request):
    return 42

async def slow_answer(request):
    await anyio.sleep(60)
    return "never"

class Bot:
    async def __call__(self, request):
        return "callable object"

bot = Bot()
not_callable = 7
"""


@pytest.fixture
def py_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], PythonAgent]:
    (tmp_path / "ec_test_py_agent.py").write_text(PY_AGENT_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ec_test_py_agent", raising=False)

    def make(function: str) -> PythonAgent:
        return PythonAgent(AgentConfig(type="python", callable=f"ec_test_py_agent:{function}"))

    return make


async def test_python_sync_function_runs_in_a_thread(py_module: Callable[[str], PythonAgent]) -> None:
    agent = py_module("sync_answer")
    request = req("hello")
    result = await agent.run(request)
    assert result.text == "sync: hello"
    assert result.usage == Usage()
    assert sys.modules["ec_test_py_agent"].calls == [request]


async def test_python_async_function_and_agent_result(py_module: Callable[[str], PythonAgent]) -> None:
    result = await py_module("async_answer").run(req("hi"))
    assert result.text == "async: hi"
    assert result.usage == Usage(3, 4)
    assert result.duration_s > 0


async def test_python_dict_result_and_async_callable_object(py_module: Callable[[str], PythonAgent]) -> None:
    result = await py_module("dict_answer").run(req("hi"))
    assert (result.text, result.usage) == ("dict", Usage(5, 6))
    assert (await py_module("bot").run(req("hi"))).text == "callable object"


async def test_python_unreadable_return_value(py_module: Callable[[str], PythonAgent]) -> None:
    with pytest.raises(AgentError) as info:
        await py_module("bad_answer").run(req("hi"))
    assert "returned int" in info.value.cause


async def test_python_cancel_is_prompt(py_module: Callable[[str], PythonAgent]) -> None:
    agent = py_module("slow_answer")
    with anyio.move_on_after(0.1) as scope:
        await agent.run(req("hi"))
    assert scope.cancelled_caught


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "must look like 'package.module:function'"),
        ("ec_missing_module_xyz:f", "cannot import 'ec_missing_module_xyz'"),
        ("ec_test_py_agent:missing", "has no attribute 'missing'"),
        ("ec_test_py_agent:not_callable", "is a int, not a function"),
    ],
)
def test_python_bad_callable(py_module: Callable[[str], PythonAgent], spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_agent(AgentConfig(type="python", callable=spec))


# -- openai parsing (MockTransport) ----------------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def mock_agent(handler: Handler, **changes: Any) -> OpenAIAgent:
    config = AgentConfig(type="openai", base_url="http://agent.test/v1", model="m", api_key="sk-secret-123")
    config = dataclasses.replace(config, **changes)
    return OpenAIAgent(config, transport=httpx.MockTransport(handler), retry_base_s=0.001)


def sse(*payloads: Any, sep: str = "\n\n") -> httpx.Response:
    body = "".join(f"data: {p if isinstance(p, str) else json.dumps(p)}{sep}" for p in payloads)
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


async def run_mock(handler: Handler, **changes: Any) -> AgentResult:
    agent = mock_agent(handler, **changes)
    try:
        return await agent.run(req("hi"))
    finally:
        await agent.aclose()


async def test_openai_lenient_sse_framing() -> None:
    body = (
        ": keep-alive\r\n"
        "event: message\r\n"
        'data:{"choices":[{"delta":{"role":"assistant"}}]}\r\n'  # no space after the colon, no blank line
        f"data: {json.dumps(delta('Hel'))}\r\n"
        f"data: {json.dumps(delta('lo', 'stop'))}\r\n\r\n"
        'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\r\n\r\n'
        "data: [DONE]\r\n\r\n"
    )
    result = await run_mock(
        lambda r: httpx.Response(
            200, headers={"content-type": "text/event-stream; charset=utf-8"}, content=body
        )
    )
    assert result.text == "Hello"
    assert result.usage == Usage(9, 2)


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
async def test_openai_sse_under_a_wrong_content_type(content_type: str | None) -> None:
    body = f"data: {json.dumps(delta('ok', 'stop'))}\n\ndata: [DONE]\n\n".encode()
    headers = {"content-type": content_type} if content_type else {}
    result = await run_mock(lambda r: httpx.Response(200, headers=headers, content=body))
    assert result.text == "ok"


async def test_openai_multiline_data_event() -> None:
    chunk = json.dumps(delta("multi"), indent=1).replace("\n", "\ndata: ")
    result = await run_mock(lambda r: sse(chunk, "[DONE]"))
    assert result.text == "multi"


async def test_openai_no_usage_reported_gives_zero() -> None:
    result = await run_mock(lambda r: sse(delta("a", "stop"), "[DONE]"))
    assert (result.text, result.usage) == ("a", Usage())


async def test_openai_request_body_and_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return sse(delta("ok", "stop"), "[DONE]")

    await run_mock(handler, temperature=0.2, system_prompt="sys")
    body = json.loads(seen[0].content)
    assert str(seen[0].url) == "http://agent.test/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-secret-123"
    assert body == {
        "model": "m",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
    }


async def test_openai_retries_without_stream_options_when_rejected() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if "stream_options" in bodies[-1]:
            return httpx.Response(
                400, json={"error": {"message": "Unrecognized request argument: stream_options"}}
            )
        return sse(delta("fine", "stop"), "[DONE]")

    result = await run_mock(handler, max_retries=0)
    assert result.text == "fine"
    assert len(bodies) == 2 and "stream_options" not in bodies[1]


async def test_openai_400_shows_the_servers_reason_without_the_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        message = "This model's maximum context length is 8192 tokens (key sk-secret-123)"
        return httpx.Response(400, json={"error": {"message": message}})

    with pytest.raises(AgentError) as info:
        await run_mock(handler)
    assert info.value.user_message.startswith(
        "the agent rejected the request (HTTP 400): This model's maximum"
    )
    assert "sk-secret-123" not in info.value.user_message + info.value.cause


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>login</html>"),
        httpx.Response(200, headers={"content-type": "application/json"}, content=b"{not json"),
        httpx.Response(200, headers={"content-type": "application/json"}, content=b"[1, 2]"),
        sse("{broken"),
        httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b""),
    ],
    ids=["html", "bad-json", "json-list", "bad-sse", "empty-stream"],
)
async def test_openai_unreadable_responses(response: httpx.Response) -> None:
    with pytest.raises(AgentError) as info:
        await run_mock(lambda r: response)
    assert info.value.user_message == "the agent sent a response edgecrab could not read"


async def test_openai_error_inside_stream() -> None:
    with pytest.raises(AgentError, match="the agent reported an error: overloaded"):
        await run_mock(lambda r: sse(delta("par"), {"error": {"message": "overloaded"}}))


async def test_openai_empty_reply() -> None:
    with pytest.raises(AgentError, match="empty reply"):
        await run_mock(lambda r: sse(delta("", "stop"), "[DONE]"))


async def test_openai_cut_off_after_first_token_is_not_retried() -> None:
    calls = 0

    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            yield f"data: {json.dumps(delta('partial'))}\n\n".encode()
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Broken())

    with pytest.raises(AgentError, match="cut off"):
        await run_mock(handler, max_retries=3)
    assert calls == 1


async def test_openai_retry_after_longer_than_the_budget_fails_at_once() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": "3600"}, json={"error": {"message": "slow down"}})

    with anyio.fail_after(5), pytest.raises(AgentError, match=r"rate-limited \(HTTP 429\)"):
        await run_mock(handler, max_retries=5, timeout_s=10)


async def test_openai_redirect_is_explained() -> None:
    with pytest.raises(AgentError, match="redirect.*agent.base_url"):
        await run_mock(lambda r: httpx.Response(301, headers={"location": "https://elsewhere/"}))
