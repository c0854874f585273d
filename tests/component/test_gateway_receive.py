"""Issue 3 over real loopback sockets: connection, durable ack, dedup, reconnects, access rules."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from edgecrab.cli import root_cause
from edgecrab.errors import StartupError
from edgecrab.gateway import GAVE_UP_TEXT, MAX_RUN_ATTEMPTS, Gateway
from edgecrab.store import SQLiteStore
from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.component.gwkit import ScriptedAgent, make_config, quiescent, running_gateway

pytestmark = pytest.mark.anyio


async def _replies(fake: FakeDingTalk, conversation_id: str, n: int, timeout: float = 5.0) -> list[str]:
    await fake.wait_for(lambda: len(fake.messages_for(conversation_id)) >= n, timeout)
    return [m.text for m in fake.messages_for(conversation_id)]


async def test_dm_is_acked_fast_and_answered(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        agent = ScriptedAgent(delay=0.3)
        async with running_gateway(make_config(fake, tmp_path), agent):
            data = fake.dm(fake.users[0], "hello there")
            mid = await fake.push(data)
            await fake.wait_for(lambda: any(a.message_id == mid for a in fake.acks), 2)
            ack = next(a for a in fake.acks if a.message_id == mid)
            assert ack.code == 200
            # The agent takes 0.3 s; the ack must not wait for it.
            assert ack.latency_s < 0.25
            texts = await _replies(fake, data["conversationId"], 1)
            assert texts[0].startswith("You said: hello there")
            assert fake.open_requests[0].body["subscriptions"] == [
                {"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}
            ]


async def test_redelivery_and_duplicates_answered_once(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        agent = ScriptedAgent()
        async with running_gateway(make_config(fake, tmp_path), agent) as gw:
            data = fake.dm(fake.users[0], "only once")
            await fake.push(data)
            await fake.push(data)  # same msgId, new frame id: a redelivery
            await fake.push(data, message_id="aa11_bb2_cc33_dd4")
            await _replies(fake, data["conversationId"], 1)
            await quiescent(fake, gw)  # all three acked and done, every reply sent
            assert len(fake.messages_for(data["conversationId"])) == 1
            assert len(agent.requests) == 1
            assert all(a.code == 200 for a in fake.acks)


async def test_duplicate_after_restart_is_not_processed(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        config = make_config(fake, tmp_path)
        data = fake.dm(fake.users[0], "before restart")
        agent = ScriptedAgent()
        async with running_gateway(config, agent) as gw:
            await fake.push(data)
            await _replies(fake, data["conversationId"], 1)
            # Stop once the gateway knows its answer went out (a stop while the POST is still in flight
            # cannot know whether DingTalk took it, and sends it again after the restart: at least once).
            await fake.wait_for(lambda: gw.delivery.sent_chunks >= 1, 3)
        agent2 = ScriptedAgent()
        async with running_gateway(config, agent2) as gw:
            await fake.push(data)
            await fake.wait_for(lambda: len(fake.acks) >= 2, 3)
            await quiescent(fake, gw)
        assert agent2.requests == []
        assert len(fake.messages_for(data["conversationId"])) == 1


async def test_unfinished_messages_are_picked_up_on_start(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        config = make_config(fake, tmp_path)
        data = fake.dm(fake.users[0], "interrupted")
        slow = ScriptedAgent(delay=30)
        async with running_gateway(config, slow):
            await fake.push(data)
            await fake.wait_for(lambda: len(slow.requests) == 1, 3)
        # The process "died" mid-run: the message was acked and recorded but never answered.
        assert fake.messages_for(data["conversationId"]) == []
        agent = ScriptedAgent()
        async with running_gateway(config, agent):
            texts = await _replies(fake, data["conversationId"], 1)
        assert texts[0].startswith("You said: interrupted")


async def test_a_message_interrupted_three_times_is_given_up_and_its_sender_told(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        config = make_config(fake, tmp_path)
        poison = fake.dm(fake.users[0], "poison")
        other = fake.dm(fake.users[1], "innocent")
        for attempt in range(MAX_RUN_ATTEMPTS):
            slow = ScriptedAgent(delay=30)
            async with running_gateway(config, slow):
                if attempt == 0:
                    await fake.push(poison)
                if attempt == MAX_RUN_ATTEMPTS - 1:
                    await fake.push(other)  # interrupted once only
                # Each start runs them again, and the process "dies" in the middle of the runs.
                expected = 2 if attempt == MAX_RUN_ATTEMPTS - 1 else 1
                await fake.wait_for(lambda a=slow, n=expected: len(a.requests) == n, 3)  # type: ignore[misc]
        assert fake.messages_for(poison["conversationId"]) == []

        agent = ScriptedAgent()
        async with running_gateway(config, agent) as gw:
            texts = await _replies(fake, poison["conversationId"], 1)
            assert texts == [GAVE_UP_TEXT.format(attempts=MAX_RUN_ATTEMPTS)]
            answer = await _replies(fake, other["conversationId"], 1)
            assert answer[0].startswith("You said: innocent")
            assert [r.message_id for r in agent.requests] == [other["msgId"]]  # the poison never ran again
            assert await gw.store.inbox_unfinished(gw.robot) == []


async def test_messages_picked_up_after_a_restart_get_no_second_queued_notice(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        config = make_config(fake, tmp_path)
        user = fake.users[0]
        slow = ScriptedAgent(delay=30)
        async with running_gateway(config, slow):
            await fake.push(fake.dm(user, "first"))
            await fake.wait_for(lambda: len(slow.requests) == 1, 3)
            await fake.push(fake.dm(user, "second"))
            notices = await _replies(fake, fake.dm(user, "x")["conversationId"], 1)
            assert notices[0].startswith("⏳ Queued")
        agent = ScriptedAgent()
        async with running_gateway(config, agent) as gw:
            conversation = fake.dm(user, "x")["conversationId"]
            texts = await _replies(fake, conversation, 3)  # the notice from before, then two answers
            await quiescent(fake, gw)  # both picked-up messages done, every reply sent
        assert texts[1].startswith("You said: first") and texts[2].startswith("You said: second")
        assert len(fake.messages_for(conversation)) == 3  # no second "Queued" notice


async def test_disconnect_opens_new_connection_before_closing_old(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        agent = ScriptedAgent()
        async with running_gateway(make_config(fake, tmp_path), agent):
            await fake.wait_for(lambda: len(fake.connections) == 1, 3)
            await fake.disconnect()
            # Both connections are alive for a moment: the new one is opened first.
            await fake.wait_for(lambda: fake.connections_opened == 2, 3)
            data = fake.dm(fake.users[0], "after disconnect")
            await fake.push(data)
            texts = await _replies(fake, data["conversationId"], 1)
            assert texts[0].startswith("You said: after disconnect")
            await fake.wait_for(lambda: len(fake.connections) == 1, 3)


async def test_abort_reconnects_with_backoff_and_nothing_lost(tmp_path: Path) -> None:
    async with FakeDingTalk(redeliver_after_s=0.3) as fake:
        agent = ScriptedAgent()
        async with running_gateway(make_config(fake, tmp_path), agent):
            await fake.wait_for(lambda: len(fake.connections) == 1, 3)
            await fake.abort()
            data = fake.dm(fake.users[0], "while down")
            await fake.push(data)
            texts = await _replies(fake, data["conversationId"], 1)
            assert texts[0].startswith("You said: while down")
            assert fake.connections_opened >= 2


async def test_idle_watchdog_reconnects_a_zombie(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        agent = ScriptedAgent()
        async with running_gateway(make_config(fake, tmp_path, idle_timeout_s=0.5), agent):
            await fake.wait_for(lambda: fake.connections_opened == 1, 3)
            fake.zombie = True
            data = fake.dm(fake.users[0], "zombie")
            await fake.push(data)
            await fake.wait_for(lambda: fake.connections_opened >= 2, 3)
            fake.zombie = False
            texts = await _replies(fake, data["conversationId"], 1)
            assert texts[0].startswith("You said: zombie")


async def test_auth_failure_before_any_connection_stops_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 15: wrong credentials at start-up are a configuration error (the CLI exits 2), not something to
    # retry forever. After a connection has worked, 401s are retried (tests/e2e/test_day_one.py).
    caplog.set_level(logging.INFO)
    async with FakeDingTalk() as fake:
        config = make_config(fake, tmp_path, app_secret="wrong-secret", reconnect_max_s=0.1)
        with anyio.fail_after(5), pytest.raises(BaseExceptionGroup) as raised:
            await Gateway(config, agent=ScriptedAgent()).run()
    error = root_cause(raised.value)
    assert isinstance(error, StartupError) and error.exit_code == 2
    assert "check DINGTALK_APP_KEY / DINGTALK_APP_SECRET" in str(error) and len(fake.open_requests) == 1
    assert "wrong-secret" not in caplog.text + str(error)


async def test_invalid_frames_never_drop_the_connection(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        agent = ScriptedAgent()
        async with running_gateway(make_config(fake, tmp_path), agent):
            await fake.wait_for(lambda: len(fake.connections) == 1, 3)
            for raw in [
                "not json",
                "[]",
                '{"type":"CALLBACK"}',
                '{"type":"CALLBACK","headers":{"topic":"/v1.0/im/bot/messages/get","messageId":"m1"},'
                '"data":"{not json"}',
            ]:
                await fake.push_raw(raw)
            data = fake.dm(fake.users[0], "still alive")
            await fake.push(data)
            await _replies(fake, data["conversationId"], 1)
            assert fake.connections_opened == 1


async def test_group_needs_mention_and_outsiders_are_refused(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        agent = ScriptedAgent()
        async with running_gateway(make_config(fake, tmp_path), agent) as gw:
            member = fake.users[0]
            silent = fake.group(member, "no mention", at_bot=False, conversation_id="cidGroupA==")
            await fake.push(silent)
            outsider = next(u for u in fake.users if not u.staff_id)
            denied = fake.dm(outsider, "let me in")
            await fake.push(denied)
            await fake.push(fake.dm(outsider, "again"))
            mentioned = fake.group(member, "with mention", conversation_id="cidGroupA==")
            await fake.push(mentioned)
            texts = await _replies(fake, "cidGroupA==", 1)
            assert len(texts) == 1 and "with mention" in texts[0]
            await fake.wait_for(lambda: len(fake.messages_for(denied["conversationId"])) >= 1, 3)
            await quiescent(fake, gw)  # "again" was decided on too, and anything it sent is out
            notices = fake.messages_for(denied["conversationId"])
            assert len(notices) == 1  # one notice per hour, not one per message
            assert all("let me in" not in r.messages[-1]["content"] for r in agent.requests)
            assert len(agent.requests) == 1


def _is_fake_task(task: asyncio.Task) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    filename = code.co_filename if code else ""
    return "aiohttp" in filename or "fakedingtalk" in filename


async def test_cancel_stops_everything_quickly_with_no_task_left(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        before = set(asyncio.all_tasks())
        threads_before = set(threading.enumerate())
        agent = ScriptedAgent(delay=30)
        async with running_gateway(make_config(fake, tmp_path), agent) as gw:
            await fake.push(fake.dm(fake.users[0], "long one"))
            await fake.wait_for(lambda: len(agent.requests) == 1, 3)
            assert gw.stream is not None
            # Everything runs on the one event loop: the gateway starts no thread of its own.
            assert set(threading.enumerate()) - threads_before == set()
            started = time.monotonic()
        elapsed = time.monotonic() - started
        await anyio.lowlevel.checkpoint()
        # The fake's own server tasks (aiohttp) are not the gateway's: leave them out.
        leaked = [t for t in set(asyncio.all_tasks()) - before if not t.done() and not _is_fake_task(t)]
        assert elapsed < 1.0
        assert leaked == [], leaked
        # Nor is a thread left behind.
        assert set(threading.enumerate()) - threads_before == set()


async def test_ping_is_echoed_and_events_and_unknown_topics_are_acked_404(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        async with running_gateway(make_config(fake, tmp_path), ScriptedAgent()):
            await fake.wait_for(lambda: len(fake.connections) == 1, 3)
            opaque = await fake.ping()
            await fake.wait_for(lambda: any(p.opaque == opaque and p.ok for p in fake.pings), 3)
            # DingTalk only pushes subscribed topics (we subscribe to robot messages), so send these raw.
            for ftype, topic, mid in [
                ("EVENT", "dingTalk", "ab12_cd3_ef45_0001"),
                ("CALLBACK", "/v1.0/card/instances/callback", "ab12_cd3_ef45_0002"),
            ]:
                frame = {
                    "specVersion": "1.0",
                    "type": ftype,
                    "headers": {
                        "topic": topic,
                        "messageId": mid,
                        "contentType": "application/json",
                        "time": "1769851697756",
                    },
                    "data": json.dumps({"outTrackId": "t1"}),
                }
                await fake.push_raw(json.dumps(frame))
            for mid in ("ab12_cd3_ef45_0001", "ab12_cd3_ef45_0002"):
                await fake.wait_for(
                    lambda m=mid: any(a.message_id == m and a.code == 404 for a in fake.acks), 3
                )
            assert fake.connections_opened == 1


async def test_unsupported_types_get_a_reply_and_quotes_reach_the_agent(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        agent = ScriptedAgent()
        async with running_gateway(make_config(fake, tmp_path), agent):
            user = fake.users[1]
            unknown = fake.unknown(user)
            await fake.push(unknown)
            texts = await _replies(fake, unknown["conversationId"], 1)
            assert "can't read this kind of message" in texts[0]
            quoted = fake.quoted(
                user,
                "what does this mean?",
                quoted_text="deploy failed with 502",
                quoted_sender=fake.users[2],
            )
            await fake.push(quoted)
            await _replies(fake, quoted["conversationId"], 1)
            sent = agent.requests[-1].messages[-1]["content"]
            assert "> deploy failed with 502" in sent and sent.endswith("what does this mean?")
            voice = fake.audio(user, recognition="turn on the lights")
            await fake.push(voice)
            await fake.wait_for(lambda: len(agent.requests) == 2, 3)
            assert "turn on the lights" in agent.requests[-1].messages[-1]["content"]
            assert len(agent.requests) == 2  # the unknownMsgType never reached the agent


async def test_group_mention_rule_applies_even_if_dingtalk_delivers(tmp_path: Path) -> None:
    async with FakeDingTalk(deliver_unmentioned=True) as fake:
        agent = ScriptedAgent()
        async with running_gateway(make_config(fake, tmp_path), agent) as gw:
            mid = await fake.push(fake.group(fake.users[0], "chatting among ourselves", at_bot=False))
            await fake.wait_for_ack(mid)
            await quiescent(fake, gw)
            assert agent.requests == []
            assert fake.outbound == []


async def test_the_gateway_checkpoints_the_store_every_second(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        async with running_gateway(make_config(fake, tmp_path), ScriptedAgent()) as gw:
            await fake.push(fake.dm(fake.users[0], "hello"))
            await fake.wait_for(lambda: len(fake.outbound) == 1, 5)
            store = gw.store
            assert isinstance(store, SQLiteStore)
            first = store.checkpoints
            await fake.wait_for(lambda: store.checkpoints >= first + 2, 5)


async def test_a_send_on_the_wire_when_the_gateway_stops_is_finished_not_repeated(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        config = make_config(fake, tmp_path)
        slow = fake.faults.delay("/robot/*", 0.3, times=1)  # DingTalk takes 0.3 s to answer the send
        data = fake.dm(fake.users[0], "stop while my answer is on its way")
        async with running_gateway(config, ScriptedAgent()):
            await fake.push(data)
            await fake.wait_for(lambda: slow.hits >= 1, 3)  # the POST is on the wire
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 1.0  # the stop waited for the send, not for much more
        assert len(fake.messages_for(data["conversationId"])) == 1
        async with running_gateway(config, ScriptedAgent()) as gw:  # nothing left to send after the restart
            await quiescent(fake, gw)
        assert len(fake.messages_for(data["conversationId"])) == 1


async def test_a_send_hung_at_the_stop_is_cut_off_and_sent_again_after_the_restart(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        config = make_config(fake, tmp_path)
        hung = fake.faults.delay("/robot/*", 30.0, times=1)
        data = fake.dm(fake.users[0], "stop while DingTalk hangs")
        async with running_gateway(config, ScriptedAgent()):
            await fake.push(data)
            await fake.wait_for(lambda: hung.hits >= 1, 3)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 1.0  # STOP_GRACE_S, not the 30 s DingTalk would take
        async with running_gateway(config, ScriptedAgent()):
            texts = await _replies(fake, data["conversationId"], 1)
        assert texts[0].startswith("You said: stop while DingTalk hangs")
