"""Unit-test your own hook file in a few lines, without a gateway or DingTalk::

    import pytest
    from edgecrab.testing.hooks import HookHarness, make_message

    @pytest.mark.anyio
    async def test_veto() -> None:
        h = HookHarness.from_file("hooks/20_keyword_veto.py", config={"words": ["salary"]})
        assert await h.allow_message(make_message(text="what is my salary?")) is False
        assert await h.allow_message(make_message(text="hello")) is True

The file is loaded exactly as the gateway loads it (same checks, ``hook_loaded`` called with ``config``).
Each call method is named after its hook, takes the hook's arguments and returns what the gateway would
get: ``allow_message`` a bool, ``prepare_*`` the final value, ``handle_error`` the text or ``None``.
Unlike the gateway, the harness is **strict** by default: an exception in a hook propagates, and a timeout
raises :class:`TimeoutError`, so a broken hook fails your test instead of being logged and skipped.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgecrab.config import HooksConfig
from edgecrab.events import (
    AgentRequest,
    AgentResult,
    Command,
    Conversation,
    Message,
    ReplyRoute,
    Sender,
    SessionInfo,
)
from edgecrab.hooks.call import HookCommand
from edgecrab.hooks.manager import HookInfo, HookManager

__all__ = ["HookHarness", "make_message", "make_request"]

_ids = itertools.count(1)


def make_message(
    text: str = "hello",
    *,
    sender_id: str = "manager4711",
    sender_name: str = "Alice",
    conversation_id: str | None = None,
    is_group: bool = False,
    group_title: str = "Project Crab",
    robot: str = "dingcrabrobot",
    bot_mentioned: bool | None = None,
    created_at: float | None = None,
    **changes: Any,
) -> Message:
    """A realistic inbound :class:`Message`, as ``edgecrab.dingtalk.convert`` would produce it.

    Ids are unique per call; ``created_at`` defaults to now. Any other ``Message`` field can be given
    through ``changes`` (``msgtype=``, ``quote=``, ``attachments=`` ...).
    """
    n = next(_ids)
    cid = conversation_id or (f"cidGroup{n:04d}Xk9=" if is_group else f"cidPrivate{n:04d}Qm2=")
    sender = Sender(
        id=sender_id,
        name=sender_name,
        dingtalk_id=f"$:LWCP_v1:$test{sender_id}==",
        corp_id="dingcorp0123456789",
    )
    conversation = Conversation(id=cid, is_group=is_group, title=group_title if is_group else "")
    route = ReplyRoute(
        robot_code=robot,
        conversation_id=cid,
        is_group=is_group,
        sender_staff_id=sender_id,
        sender_name=sender_name,
        session_webhook=f"https://oapi.dingtalk.com/robot/sendBySession?session=test{n:04d}",
        session_webhook_expires_at=time.time() + 3600,
    )
    fields: dict[str, Any] = {
        "id": f"msgTest{n:06d}==",
        "robot": robot,
        "conversation": conversation,
        "sender": sender,
        "text": text,
        "bot_mentioned": is_group if bot_mentioned is None else bot_mentioned,
        "created_at": time.time() if created_at is None else created_at,
        "route": route,
        "bot_corp_id": "dingcorp0123456789",
        "stream_message_id": f"stream-{n:06d}",
    }
    fields.update(changes)
    return Message(**fields)


def make_request(message: Message, *, system_prompt: str = "You are a helpful assistant.") -> AgentRequest:
    """The :class:`AgentRequest` the gateway would build for ``message`` in a fresh session."""
    return AgentRequest(
        messages=[{"role": "user", "content": message.agent_text()}],
        system_prompt=system_prompt,
        session_key=f"{message.robot}:{message.conversation.id}",
        message_id=message.id,
    )


class HookHarness:
    """One hook file (or module) loaded on its own, with a method per hook to call it."""

    def __init__(self, manager: HookManager, name: str) -> None:
        self.manager = manager
        self.name = name

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        config: Mapping[str, Any] | None = None,
        timeout_s: float = 5.0,
        strict: bool = True,
    ) -> HookHarness:
        """Load one hook file; ``config`` is what ``hooks.config.<file stem>`` would hold."""
        path = Path(path).resolve()
        return cls._load(HooksConfig(paths=(path,)), path.stem, config, timeout_s, strict)

    @classmethod
    def from_module(
        cls,
        module: str,
        *,
        config: Mapping[str, Any] | None = None,
        timeout_s: float = 5.0,
        strict: bool = True,
    ) -> HookHarness:
        """Load one importable module (as ``hooks.modules`` would)."""
        return cls._load(HooksConfig(modules=(module,)), module, config, timeout_s, strict)

    @classmethod
    def _load(
        cls, base: HooksConfig, name: str, config: Mapping[str, Any] | None, timeout_s: float, strict: bool
    ) -> HookHarness:
        hooks_config = HooksConfig(
            paths=base.paths,
            modules=base.modules,
            config={name: dict(config or {})},
            on_error="fail",
            timeout_s=timeout_s,
            entry_points=False,
        )
        return cls(HookManager.load(hooks_config, strict=strict), name)

    @property
    def module(self) -> Any:
        """The loaded module: inspect its globals after calling hooks."""
        return self.manager.plugin(self.name)

    @property
    def info(self) -> HookInfo:
        """Its line of the hooks listing (implemented hooks, call/error/timeout counts)."""
        return next(i for i in self.manager.listing() if i.name == self.name)

    # -- lifecycle and connection --------------------------------------------------------------------

    async def gateway_started(self, gateway: Any = None) -> None:
        await self.manager.notify("gateway_started", gateway=gateway)

    async def gateway_stopping(self, gateway: Any = None) -> None:
        await self.manager.notify("gateway_stopping", gateway=gateway)

    async def connection_changed(
        self, robot: str = "dingcrabrobot", state: str = "connected", detail: str = ""
    ) -> None:
        await self.manager.notify("connection_changed", robot=robot, state=state, detail=detail)

    # -- inbound -------------------------------------------------------------------------------------

    async def message_received(self, message: Message) -> None:
        await self.manager.notify("message_received", message=message)

    async def allow_message(self, message: Message) -> bool:
        return await self.manager.allow("allow_message", message=message)

    async def prepare_message(self, message: Message) -> Message:
        result: Message = await self.manager.pipeline("prepare_message", "message", message)
        return result

    # -- commands and sessions -----------------------------------------------------------------------

    async def commands(self) -> dict[str, HookCommand]:
        """What ``register_commands`` registered, by command name."""
        return await self.manager.register_commands()

    async def command(self, text: str, message: Message | None = None) -> str:
        """Run a registered command the way a user types it: ``await h.command("/ping now")``."""
        name, _, args = text.strip().partition(" ")
        command = Command(name=name.lower(), args=args.strip(), raw=text)
        commands = await self.commands()
        if command.name not in commands:
            raise KeyError(f"{command.name} is not registered; registered: {', '.join(commands) or 'none'}")
        return await commands[command.name].call(command, message or make_message(text=text))

    async def command_received(self, command: Command, message: Message) -> None:
        await self.manager.notify("command_received", command=command, message=message)

    async def session_reset(self, session: SessionInfo) -> None:
        await self.manager.notify("session_reset", session=session)

    # -- the agent run -------------------------------------------------------------------------------

    async def prepare_agent_request(self, request: AgentRequest, message: Message) -> AgentRequest:
        result: AgentRequest = await self.manager.pipeline(
            "prepare_agent_request", "request", request, message=message
        )
        return result

    async def agent_finished(self, result: AgentResult, message: Message) -> None:
        await self.manager.notify("agent_finished", result=result, message=message)

    # -- the reply -----------------------------------------------------------------------------------

    async def prepare_reply(self, reply: str, message: Message | None = None) -> str:
        result: str = await self.manager.pipeline(
            "prepare_reply", "reply", reply, message=message or make_message()
        )
        return result

    async def reply_sent(self, reply: str, message: Message | None = None) -> None:
        await self.manager.notify("reply_sent", reply=reply, message=message or make_message())

    async def send_failed(
        self, error: BaseException | str, reply: str, message: Message | None = None
    ) -> None:
        await self.manager.notify("send_failed", error=error, reply=reply, message=message or make_message())

    async def handle_error(self, error: BaseException | str, message: Message | None = None) -> str | None:
        result: str | None = await self.manager.first("handle_error", error=error, message=message)
        return result
