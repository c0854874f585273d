"""Stream-side faults over real loopback sockets: sockets aborted mid-traffic, and server disconnects.

The fake redelivers every callback that was not acked 200 within ``redeliver_after_s``, as DingTalk does, so a
frame whose ack died with the socket comes back; the gateway must answer it once (durable inbox + dedup).
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.component.gwkit import ScriptedAgent, quiescent
from tests.faults.conftest import SecretWatch
from tests.faults.kit import add_users, every, fault_config, gateway_running, tally, word

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_socket_aborted_every_2s_during_1000_messages(
    tmp_path: Path, secret_watch: SecretWatch
) -> None:
    total, users_n = 1000, 200
    async with FakeDingTalk(redeliver_after_s=0.5, max_redeliveries=30, seed=9) as fake:
        secret_watch.watch(fake)
        users = add_users(fake, users_n)
        agent = ScriptedAgent()
        expected: dict[str, list[str]] = {}
        aborts = 0
        async with gateway_running(fault_config(fake, tmp_path), agent) as gw:
            await fake.wait_for(lambda: len(fake.connections) == 1, 5)
            started = last_abort = time.monotonic()
            for i in range(total):
                # Round robin: one user's messages are ~200 pushes apart, so each session sees a history.
                data = fake.dm(users[i % users_n], f"hello {word(i)}")
                expected[word(i)] = [word(i)]
                await fake.push(data)
                if time.monotonic() - last_abort >= 2.0 and fake.connections:
                    # Right after a push, before the loop lets the gateway ack it: that ack dies with
                    # the socket, so every abort leaves at least one frame for DingTalk to redeliver.
                    await fake.abort()
                    aborts, last_abort = aborts + 1, time.monotonic()
                if i % 8 == 7:
                    await anyio.sleep(0.1)  # ~80 messages/s: the run spans five or six aborts
            pushed_in = time.monotonic() - started
            with anyio.move_on_after(30):
                await fake.wait_for(lambda: tally("abort", fake, expected).answered >= total, 30)
            await quiescent(fake, gw)  # every frame acked, every message done and sent: no late duplicate
            stats = fake.stats()
            result = tally(
                "abort-every-2s",
                fake,
                expected,
                aborts=aborts,
                pushed_in=f"{pushed_in:.1f}s",
                connections=fake.connections_opened,
                redeliveries=fake.redeliveries,
                dedup_acks=gw.intake.duplicates,
                fake_gave_up=stats["gave_up"],
            )
    print(result)
    assert aborts >= 4, f"the run should span several aborts: {result}"
    assert fake.redeliveries >= aborts, f"aborts did not force redeliveries; the test proves little: {result}"
    assert stats["gave_up"] == 0, f"the fake gave up redelivering (a loss the gateway never saw): {result}"
    assert result.ok, result
    others = [r.text for r in fake.outbound if not r.text.startswith("You said: hello q")]
    assert all(t.startswith("⏳ Queued") for t in others), f"unexpected replies {others[:3]}; {result}"


async def test_disconnect_frames_during_traffic_make_before_break(
    tmp_path: Path, secret_watch: SecretWatch
) -> None:
    total = 300
    async with FakeDingTalk(redeliver_after_s=0.5, disconnect_close_after_s=5) as fake:
        secret_watch.watch(fake)
        users = add_users(fake, 30)
        agent = ScriptedAgent()
        expected: dict[str, list[str]] = {}
        disconnects: list[tuple[float, str]] = []

        async def disconnect() -> None:
            for cid in await fake.disconnect():
                disconnects.append((time.monotonic(), cid))

        async with gateway_running(fault_config(fake, tmp_path), agent) as gw:
            await fake.wait_for(lambda: len(fake.connections) == 1, 5)
            async with anyio.create_task_group() as tg:
                tg.start_soon(every, 0.6, disconnect)
                for i in range(total):
                    expected[word(i)] = [word(i)]
                    await fake.push(fake.dm(users[i % len(users)], f"hello {word(i)}"))
                    if i % 5 == 4:
                        await anyio.sleep(0.05)
                await fake.wait_for(lambda: tally("d", fake, expected).answered >= total, 20)
                tg.cancel_scope.cancel()
            await fake.wait_for(lambda: all(c.closed for c in fake.all_connections if c.draining), 5)
            await quiescent(fake, gw)
            conns = {c.connection_id: c for c in fake.all_connections}
            result = tally(
                "disconnect",
                fake,
                expected,
                disconnects=len(disconnects),
                connections=fake.connections_opened,
                redeliveries=fake.redeliveries,
            )
    print(result)
    assert len(disconnects) >= 4, result
    assert result.ok, result
    # Exactly one new connection per disconnect: no reconnect storm, no failed attempt in between.
    assert fake.connections_opened == len(disconnects) + 1, result
    for sent_at, cid in disconnects:
        old = conns[cid]
        assert old.closed_t is not None
        successors = [c for c in conns.values() if c.opened_t > sent_at]
        assert successors, f"no connection opened after the disconnect of {cid}"
        first = min(successors, key=lambda c: c.opened_t)
        assert first.opened_t < old.closed_t, (
            f"{cid} closed before its replacement opened (break before make)"
        )
        # The gateway closed the old socket itself, long before the fake's 5 s deadline.
        assert old.closed_t - sent_at < 2.0, f"{cid} lingered {old.closed_t - sent_at:.1f}s after disconnect"
