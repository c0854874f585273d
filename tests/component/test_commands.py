"""Issue 5 through a whole in-process gateway against the fake DingTalk: every command's reply as the user
sees it (a syrupy snapshot of the rendered markdown, times normalised), and the busy policies, ``/stop``,
``/new``, ``/retry`` and hook commands as behaviour."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from edgecrab import hookimpl
from edgecrab.agents.base import AgentError
from edgecrab.config import CommandsConfig, HooksConfig, SessionsConfig
from edgecrab.core.agentcall import USER_FAILURE_TEXT
from edgecrab.events import AgentRequest, AgentResult
from edgecrab.gateway import Gateway
from edgecrab.hooks.manager import HookManager
from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.component.gwkit import ScriptedAgent, make_config, quiescent, routed, running_gateway

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
ALIASES = {"/clear": "/new", "/重置": "/reset"}


def norm(text: str) -> str:
    """Stable snapshots: durations become ``# s`` (``# min``, ...), hook call counts ``# calls``; the repo
    path goes."""
    text = re.sub(r"\b\d+(?:\.\d+)? (s|min|h|d)\b", r"# \1", text)
    text = re.sub(r"\b\d+ calls?\b", "# calls", text)  # hook call counts depend on timing
    return text.replace(str(REPO) + "/", "")


class FlakyAgent(ScriptedAgent):
    """Fails its first ``failures`` runs the way a backend reports an outage."""

    def __init__(self, failures: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.failures = failures

    async def run(self, request: AgentRequest) -> AgentResult:
        if self.failures:
            self.failures -= 1
            self.requests.append(request)
            raise AgentError("the agent service failed (HTTP 502) — /retry to try again")
        return await super().run(request)


class Chat:
    """One user's side of a conversation: send text, read the gateway's answers (rendered markdown)."""

    def __init__(self, fake: FakeDingTalk, gateway: Gateway, user: int = 1, *, group: bool = False) -> None:
        self.fake, self.gateway, self.user, self.group = fake, gateway, fake.users[user], group
        self.cid = self._data("x")["conversationId"]

    def _data(self, text: str) -> dict[str, Any]:
        return self.fake.group(self.user, text) if self.group else self.fake.dm(self.user, text)

    @property
    def texts(self) -> list[str]:
        return [m.text for m in self.fake.messages_for(self.cid)]

    async def send(self, text: str) -> None:
        await self.fake.push(self._data(text))

    async def ask(self, text: str, answers: int = 1) -> list[str]:
        """Send ``text`` and return the ``answers`` new messages it produced."""
        before = len(self.texts)
        await self.send(text)
        await self.wait(before + answers)
        await self.settled()  # nothing more may come
        got = self.texts[before:]
        assert len(got) == answers, got
        return got

    async def wait(self, count: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self.fake.wait_for(lambda: len(self.texts) >= count, timeout)

    async def settled(self) -> None:
        """Every message sent so far was routed and every reply its routing made was sent. (A run still
        going on may answer later: that answer is not part of what a message produced at once.)"""
        await routed(self.fake)
        with anyio.fail_after(5):
            while await self.gateway.store.outbox_pending():  # noqa: ASYNC110 - polling the ledger
                await anyio.sleep(0.01)


@contextlib.asynccontextmanager
async def gateway(
    tmp_path: Path,
    agent: ScriptedAgent | None = None,
    *,
    hooks: HookManager | None = None,
    commands: CommandsConfig | None = None,
    **sessions: Any,
) -> AsyncIterator[tuple[FakeDingTalk, Gateway, ScriptedAgent]]:
    agent = agent or ScriptedAgent()
    async with FakeDingTalk() as fake:
        config = make_config(fake, tmp_path)
        config = replace(
            config,
            sessions=SessionsConfig(**sessions),
            commands=commands or CommandsConfig(aliases=ALIASES),
        )
        async with running_gateway(config, agent, hooks=hooks or HookManager.empty()) as gw:
            yield fake, gw, agent


def example_hooks(tmp_path: Path) -> HookManager:
    """The repository's hooks/ examples (audit log pointed into tmp_path)."""
    config = HooksConfig(
        paths=(REPO / "hooks",),
        entry_points=False,
        config={"10_audit_log": {"path": str(tmp_path / "audit.jsonl")}},
    )
    return HookManager.load(config)


# -- every command's reply ---------------------------------------------------------------------------


async def test_idle_command_replies(tmp_path: Path, snapshot: Any) -> None:
    async with gateway(tmp_path) as (fake, gw, agent):
        chat = Chat(fake, gw)
        replies = {}
        for text in (
            "/usage",
            "/help",
            "/status",
            "/stop",
            "/retry",
            "/new",
            "/reset",
            "/clear",
            "/重置",
            "/hooks",
            "/frobnicate",
        ):
            (replies[text],) = await chat.ask(text)
        assert agent.requests == []
        assert {k: norm(v) for k, v in replies.items()} == snapshot


async def test_commands_are_case_insensitive_and_accept_botname(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (fake, gw, _):
        chat = Chat(fake, gw)
        (plain,) = await chat.ask("/help")
        assert await chat.ask("/HELP") == [plain]
        assert await chat.ask("/Help@EdgeCrab") == [plain]
        (status,) = await chat.ask("/STATUS@EdgeCrab please")
        assert "Idle" in status


async def test_busy_replies_and_usage_after_a_turn(tmp_path: Path, snapshot: Any) -> None:
    async with gateway(tmp_path, ScriptedAgent(delay=0.6)) as (fake, gw, agent):
        chat = Chat(fake, gw)
        replies: dict[str, str] = {}
        await chat.send("a long task")
        await fake.wait_for(lambda: len(agent.requests) == 1, 5)
        (replies["/status running"],) = await chat.ask("/status")
        (replies["queued message"],) = await chat.ask("and then this")
        (replies["/status running, 1 queued"],) = await chat.ask("/status")
        await chat.wait(5, timeout=5)  # both answers
        # DingTalk has the 5th message before our ledger records it as sent: wait for the ledger too.
        with anyio.fail_after(5):
            while await gw.store.outbox_pending():  # noqa: ASYNC110 - polling the ledger
                await anyio.sleep(0.02)
        assert chat.texts[3:] == ["You said: a long task", "You said: and then this"]
        (replies["/usage"],) = await chat.ask("/usage")
        assert "- Tokens: 14 prompt, 6 completion" in replies["/usage"]
        assert {k: norm(v) for k, v in replies.items()} == snapshot


async def test_group_status_shows_the_scope(tmp_path: Path, snapshot: Any) -> None:
    for scope in ("shared", "per_user"):
        async with gateway(tmp_path / scope, group_scope=scope) as (fake, gw, _):
            (text,) = await Chat(fake, gw, group=True).ask("/status")
            assert norm(text) == snapshot(name=scope)


async def test_help_and_hooks_with_the_example_hooks(tmp_path: Path, snapshot: Any) -> None:
    async with gateway(tmp_path, hooks=example_hooks(tmp_path)) as (fake, gw, _):
        chat = Chat(fake, gw)
        (help_text,) = await chat.ask("/help")
        for name in ("/help", "/new", "/reset", "/stop", "/retry", "/status", "/usage", "/hooks", "/ping"):
            assert f"`{name}`" in help_text
        assert "`/clear` → `/new`" in help_text and "`/重置` → `/reset`" in help_text
        (hooks_text,) = await chat.ask("/hooks")
        for name in ("10_audit_log", "20_keyword_veto", "30_ping_command", "40_reply_footer"):
            assert name in hooks_text
        (pong,) = await chat.ask("/PING@EdgeCrab hello")
        assert pong.startswith("pong") and pong.endswith(": hello")
        assert {"/help": norm(help_text), "/hooks": norm(hooks_text)} == snapshot


async def test_hook_command_with_an_empty_answer_sends_nothing(tmp_path: Path) -> None:
    class Quiet:
        @hookimpl
        def register_commands(self, register: Callable[..., Any]) -> None:
            register("/quiet", lambda: "", help="Do something silently")

    hooks = HookManager.load(HooksConfig(entry_points=False), builtins=[("quiet", Quiet())])
    async with gateway(tmp_path, hooks=hooks) as (fake, gw, _):
        chat = Chat(fake, gw)
        await chat.send("/quiet")
        (after,) = await chat.ask("/status")
        assert chat.texts == [after]
        (help_text,) = await chat.ask("/help")
        assert "`/quiet` — Do something silently" in help_text


async def test_unknown_commands_can_be_forwarded_to_the_agent(tmp_path: Path) -> None:
    async with gateway(tmp_path, commands=CommandsConfig(forward_unknown=True)) as (fake, gw, agent):
        chat = Chat(fake, gw)
        assert await chat.ask("/frobnicate now") == ["You said: /frobnicate now"]
        (status,) = await chat.ask("/status")  # known commands are still answered by the gateway
        assert "Idle" in status and len(agent.requests) == 1


# -- /stop, /new, /retry -----------------------------------------------------------------------------


async def test_stop_cancels_the_run_and_clears_the_queue(tmp_path: Path) -> None:
    async with gateway(tmp_path, ScriptedAgent(delay=5)) as (fake, gw, agent):
        chat = Chat(fake, gw)
        await chat.send("one")
        await fake.wait_for(lambda: len(agent.requests) == 1, 5)
        await chat.ask("two")  # ⏳ position 1
        await chat.ask("three")  # ⏳ position 2
        with anyio.fail_after(1):  # /stop is not queued behind the run
            (stopped,) = await chat.ask("/stop")
        assert stopped == "⏹ Stopped the answer in progress. Cleared 2 queued messages."
        assert agent.cancelled == 1
        await quiescent(fake, gw)  # nothing left unfinished: had the queued ones run, they have by now
        assert len(agent.requests) == 1  # the queued ones never ran
        assert [t[:22] for t in chat.texts[:2]] == ["⏳ Queued — position 1.", "⏳ Queued — position 2."]
        assert await gw.store.inbox_unfinished(gw.robot) == []  # a restart revives none of them
        (status,) = await chat.ask("/status")
        assert "Idle" in status and "- Queue: 0 messages waiting" in status


async def test_stop_during_a_long_reply_stops_the_remaining_chunks(tmp_path: Path) -> None:
    long = "\n\n".join(f"paragraph {i:02d} " + "z" * 40 for i in range(8))
    async with FakeDingTalk() as fake:
        config = make_config(fake, tmp_path, max_message_length=60, chunk_interval_ms=300)
        async with running_gateway(config, ScriptedAgent(reply=long), hooks=HookManager.empty()) as gw:
            chat = Chat(fake, gw)
            await chat.send("go")
            await chat.wait(1)
            await chat.send("/stop")
            await fake.wait_for(lambda: any(t.startswith("⏹") for t in chat.texts), 5)
            await quiescent(fake, gw)  # the rest of the answer, had it not been dropped, is out by now
            texts = chat.texts
            assert texts[-1] == "⏹ Stopped — the rest of the answer won't be sent."
            assert 1 <= len(texts) - 1 <= 2 and all(t.startswith("paragraph") for t in texts[:-1])


async def test_new_during_a_run_cancels_it_and_forgets_it(tmp_path: Path) -> None:
    agent = ScriptedAgent(delay=0.5)
    async with gateway(tmp_path, agent) as (fake, gw, _):
        chat = Chat(fake, gw)
        assert await chat.ask("remember 42") == ["You said: remember 42"]
        agent.delay = 5
        await chat.send("slow question")
        await fake.wait_for(lambda: len(agent.requests) == 2, 5)
        (new,) = await chat.ask("/new")
        assert new == "✨ New conversation started — history cleared. I stopped the answer in progress."
        assert agent.cancelled == 1
        agent.delay = 0
        assert await chat.ask("fresh start") == ["You said: fresh start"]
        assert agent.requests[-1].messages == [{"role": "user", "content": "fresh start"}]
        (usage,) = await chat.ask("/usage")
        assert "- Turns: 1" in usage and "- Messages: 1 in, 1 out" in usage  # nothing of the old run
        (retry,) = await chat.ask("/retry")
        assert retry == "You said: fresh start"


async def test_retry_after_a_failure_runs_the_failed_message(tmp_path: Path) -> None:
    agent = FlakyAgent(failures=0)
    async with gateway(tmp_path, agent) as (fake, gw, _):
        chat = Chat(fake, gw)
        assert await chat.ask("first") == ["You said: first"]
        agent.failures = 1
        (failed,) = await chat.ask("second")
        assert failed == USER_FAILURE_TEXT  # the detail (HTTP 502) is for admins and the log
        assert await chat.ask("/retry") == ["You said: second"]
        # The answered first exchange stays; the failed message now has its answer after it.
        assert agent.requests[-1].messages == [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "You said: first"},
            {"role": "user", "content": "second"},
        ]
        # Retrying an answered message drops that answer and asks again.
        assert await chat.ask("/retry") == ["You said: second"]
        assert agent.requests[-1].messages == agent.requests[-2].messages


# -- busy policies and session rules -----------------------------------------------------------------


async def test_queue_policy_is_bounded(tmp_path: Path) -> None:
    async with gateway(tmp_path, ScriptedAgent(delay=0.5), queue_limit=1) as (fake, gw, agent):
        chat = Chat(fake, gw)
        await chat.send("one")
        await fake.wait_for(lambda: len(agent.requests) == 1, 5)
        assert (await chat.ask("two"))[0].startswith("⏳ Queued — position 1.")
        (full,) = await chat.ask("three")
        assert full.startswith("⏳ The queue is full (1 message waiting).")
        await chat.wait(4)
        assert chat.texts[2:] == ["You said: one", "You said: two"]


async def test_interrupt_policy_replaces_the_running_answer(tmp_path: Path) -> None:
    agent = ScriptedAgent(delay=5)
    async with gateway(tmp_path, agent, busy_policy="interrupt") as (fake, gw, _):
        chat = Chat(fake, gw)
        await chat.send("one")
        await fake.wait_for(lambda: len(agent.requests) == 1, 5)
        agent.delay = 0.1
        await chat.send("two")
        await chat.wait(2)
        await quiescent(fake, gw)  # the interrupted run's answer, had it been sent, is out by now
        assert chat.texts == ["⏹ Stopped the previous answer — working on your new message.", "You said: two"]
        assert agent.cancelled == 1
        assert agent.requests[-1].messages == [{"role": "user", "content": "two"}]


async def test_reject_policy_says_busy(tmp_path: Path) -> None:
    async with gateway(tmp_path, ScriptedAgent(delay=0.5), busy_policy="reject") as (fake, gw, agent):
        chat = Chat(fake, gw)
        await chat.send("one")
        await fake.wait_for(lambda: len(agent.requests) == 1, 5)
        (busy,) = await chat.ask("two")
        assert busy.startswith("⏳ I'm still working on your previous message.") and "/stop" in busy
        await chat.wait(2)
        assert chat.texts[1] == "You said: one" and len(agent.requests) == 1


async def test_per_user_group_scope_keeps_members_apart(tmp_path: Path) -> None:
    agent = ScriptedAgent(delay=0.4)
    async with gateway(tmp_path, agent, group_scope="per_user") as (fake, gw, _):
        alice, bob = Chat(fake, gw, 1, group=True), Chat(fake, gw, 2, group=True)
        await alice.send("alice asks")
        await bob.send("bob asks")  # not queued behind Alice: his own session
        await fake.wait_for(lambda: len(agent.requests) == 2, 5)
        (stopped,) = await bob.ask("/stop")  # his /stop stops his run, not hers
        assert stopped == f"⏹ Stopped the answer in progress.\n\n@{fake.users[2].staff_id}"
        await fake.wait_for(lambda: any("alice asks" in t for t in alice.texts), 5)
        assert agent.cancelled == 1
        assert {r.session_key for r in agent.requests} == {
            f"{gw.robot}:group:{alice.cid}:{fake.users[1].staff_id}",
            f"{gw.robot}:group:{alice.cid}:{fake.users[2].staff_id}",
        }


async def test_max_concurrent_runs_bounds_parallel_sessions(tmp_path: Path) -> None:
    agent = ScriptedAgent(delay=0.4)
    async with gateway(tmp_path, agent, max_concurrent_runs=1) as (fake, gw, _):
        first, second = Chat(fake, gw, 1), Chat(fake, gw, 2)
        await first.send("first")
        await fake.wait_for(lambda: len(agent.requests) == 1, 5)
        await second.send("second")
        (status,) = await second.ask("/status")
        assert "Running" in status  # its turn has been taken, it waits for a slot
        await second.wait(2)
        assert second.texts[-1] == "You said: second"
        # The second run reached the agent only once the first had finished: it waited for the slot.
        assert agent.most_in_flight == 1


async def test_history_limit_and_idle_expiry(tmp_path: Path) -> None:
    async with gateway(tmp_path, history_limit=2, idle_expiry_s=0.6) as (fake, gw, agent):
        chat = Chat(fake, gw)
        for text in ("a", "b", "c"):
            await chat.ask(text)
        assert [m["content"] for m in agent.requests[-1].messages] == ["b", "You said: b", "c"]
        await anyio.sleep(0.8)  # idle for longer than idle_expiry_s: a fresh conversation
        await chat.ask("d")
        assert agent.requests[-1].messages == [{"role": "user", "content": "d"}]
