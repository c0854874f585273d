"""The ack path runs in the Stream thread: a main loop that is blocked, or busy, does not delay acks.

The fake DingTalk runs in a thread of its own here (``FakeDingTalkThread``): it must keep pushing frames
and timing acks while the gateway's main loop, which is also the test's, is blocked on purpose.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import pytest

from edgecrab.agents.base import Agent
from edgecrab.events import AgentRequest, AgentResult
from edgecrab.testing.fakedingtalk import FakeDingTalkThread
from tests.component.gwkit import make_config, running_gateway

pytestmark = pytest.mark.anyio

BLOCK_S = 1.0


class BlockingAgent(Agent):
    """Blocks the event loop it runs on (a synchronous call where an await belonged), once."""

    name = "blocking"

    def __init__(self) -> None:
        self.blocking = threading.Event()

    async def run(self, request: AgentRequest) -> AgentResult:
        if not self.blocking.is_set():
            self.blocking.set()
            time.sleep(BLOCK_S)  # noqa: ASYNC251 - blocking the loop is the point
        return AgentResult(f"You said: {request.messages[-1]['content']}")


async def test_acks_leave_while_the_main_loop_is_blocked(tmp_path: Path) -> None:
    thread = FakeDingTalkThread()
    fake = thread.start()
    try:
        agent = BlockingAgent()
        async with running_gateway(make_config(fake, tmp_path), agent):
            first, second = fake.dm(fake.users[0], "blocks"), fake.dm(fake.users[1], "while blocked")

            def scenario() -> float:
                thread.call(fake.push(first))
                assert agent.blocking.wait(5)
                mid = thread.call(fake.push(second))
                thread.call(fake.wait_for(lambda: any(a.message_id == mid for a in fake.acks), 5))
                latency = next(a.latency_s for a in fake.acks if a.message_id == mid)
                assert latency is not None
                return latency

            latency = await anyio.to_thread.run_sync(scenario)
            # Recorded and acked in the Stream thread, though the main loop was blocked for a second.
            assert latency < BLOCK_S / 4
            # And answered once the main loop was free again.
            await thread.call_async(
                fake.wait_for(lambda: len(fake.messages_for(second["conversationId"])) == 1, 5)
            )
    finally:
        thread.stop()
