"""``Agent.stream``: every backend hands its answer out piece by piece while it is produced (the live
card of ``reply_mode: card``), and the result is still the whole answer."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from edgecrab.agents.base import Agent
from edgecrab.agents.command import CommandAgent
from edgecrab.agents.echo import EchoAgent
from edgecrab.agents.openai import OpenAIAgent
from edgecrab.agents.python import PythonAgent
from edgecrab.config import AgentConfig
from edgecrab.events import AgentRequest, AgentResult
from edgecrab.testing.fake_openai import FakeOpenAI

pytestmark = pytest.mark.anyio


def ask(text: str) -> AgentRequest:
    return AgentRequest(messages=[{"role": "user", "content": text}], session_key="s", message_id="m")


class Collector:
    """Records the deltas and lets a test wait for the first ``n`` of them."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self._arrived = anyio.Event()

    def __call__(self, piece: str) -> None:
        self.pieces.append(piece)
        self._arrived.set()

    async def wait_for(self, n: int) -> None:
        with anyio.fail_after(10):
            while len(self.pieces) < n:
                await self._arrived.wait()
                self._arrived = anyio.Event()


async def test_openai_streams_token_by_token() -> None:
    async with FakeOpenAI(token_delay_s=0.01) as fake:
        agent = OpenAIAgent(AgentConfig(type="openai", base_url=fake.base_url, model="m"))
        deltas = Collector()
        try:
            result = await agent.stream(ask("one two three four"), deltas)
        finally:
            await agent.aclose()
    assert result.text == "You said: one two three four"
    assert "".join(deltas.pieces) == result.text
    assert len(deltas.pieces) == fake.tokens_sent > 3


async def test_openai_first_token_arrives_before_the_answer_ends() -> None:
    async with FakeOpenAI(token_delay_s=0.3) as fake:
        agent = OpenAIAgent(AgentConfig(type="openai", base_url=fake.base_url, model="m"))
        deltas = Collector()
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.stream, ask("a b c d e f g h"), deltas)
            await deltas.wait_for(1)
            assert fake.tokens_sent < 5  # the rest is still coming
            tg.cancel_scope.cancel()  # /stop closes the HTTP stream
        await agent.aclose()


async def test_command_streams_stdout_lines_as_they_come(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = textwrap.dedent(
        f"""
        import pathlib, time
        print("first line", flush=True)
        while not pathlib.Path({str(gate)!r}).exists():
            time.sleep(0.01)
        print("second line")
        """
    )
    agent = CommandAgent(AgentConfig(type="command", command=(sys.executable, "-c", script)))
    deltas = Collector()
    results: list[AgentResult] = []

    async def run() -> None:
        results.append(await agent.stream(ask("hi"), deltas))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await deltas.wait_for(1)
        assert deltas.pieces == ["first line\n"]  # shown while the command is still running
        gate.write_text("go")
    assert deltas.pieces == ["first line\n", "second line\n"]
    assert results[0].text == "first line\nsecond line"


async def test_command_run_gets_the_whole_answer(tmp_path: Path) -> None:
    agent = CommandAgent(AgentConfig(type="command", command=(sys.executable, "-c", "print('a\\nb')")))
    assert (await agent.run(ask("hi"))).text == "a\nb"


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


async def test_python_async_generator_streams_and_closes_on_stop(module: Path) -> None:
    (module / "ec_stream_gen.py").write_text(
        textwrap.dedent(
            """
            import anyio
            closed = []
            gate = anyio.Event()

            async def answer(request):
                try:
                    yield "Hello"
                    yield ", world"
                    await gate.wait()
                    yield "!"
                finally:
                    closed.append(True)
            """
        )
    )
    agent = PythonAgent(AgentConfig(type="python", callable="ec_stream_gen:answer"))
    import ec_stream_gen  # type: ignore[import-not-found]

    deltas = Collector()
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.stream, ask("hi"), deltas)
        await deltas.wait_for(2)
        tg.cancel_scope.cancel()
    assert deltas.pieces == ["Hello", ", world"]
    assert ec_stream_gen.closed == [True]
    ec_stream_gen.gate.set()
    assert (await agent.run(ask("hi"))).text == "Hello, world!"


async def test_python_async_iterator_with_usage_last(module: Path) -> None:
    (module / "ec_stream_iter.py").write_text(
        textwrap.dedent(
            """
            async def _pieces():
                yield "x"
                yield "y"
                yield {"text": "", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}

            def answer(request):
                return _pieces()
            """
        )
    )
    agent = PythonAgent(AgentConfig(type="python", callable="ec_stream_iter:answer"))
    deltas = Collector()
    result = await agent.stream(ask("hi"), deltas)
    assert (result.text, result.usage.prompt_tokens, result.usage.completion_tokens) == ("xy", 3, 2)
    assert deltas.pieces == ["x", "y"]


async def test_python_plain_function_is_one_delta(module: Path) -> None:
    (module / "ec_stream_plain.py").write_text("def answer(request):\n    return 'whole'\n")
    agent = PythonAgent(AgentConfig(type="python", callable="ec_stream_plain:answer"))
    deltas = Collector()
    assert (await agent.stream(ask("hi"), deltas)).text == "whole"
    assert deltas.pieces == ["whole"]


async def test_echo_streams_word_by_word_but_runs_at_once() -> None:
    agent: Agent = EchoAgent(word_delay_s=0.001)
    deltas = Collector()
    result = await agent.stream(ask("hello there"), deltas)
    assert "".join(deltas.pieces) == result.text
    assert deltas.pieces[:3] == ["🦀 ", "echo: ", "hello "]
    with anyio.fail_after(0.05):  # markdown replies do not wait for the words
        assert (await EchoAgent(word_delay_s=10).run(ask("hello there"))).text == result.text
