"""Limits (issue 16): a 900 KB message used to make the echo agent send 106 messages. Through ``edgecrab
gateway start`` as a subprocess against the fake DingTalk: inbound text is cut at ``max_inbound_chars``
with a note the agent sees, and a reply is at most ``max_chunks_per_reply`` messages, the last one saying
the answer was truncated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from edgecrab.testing.fakedingtalk import FakeDingTalk

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

HUGE = ("The quick brown fox jumps over the lazy dog. " * 20 + "\n\n") * 1000  # ~900 KB


async def _run(
    tmp: Path, fake: FakeDingTalk, dingtalk: dict[str, Any], text: str, *,
    before: dict[str, Any] | None = None,
) -> tuple[list[str], str]:
    app = fake.apps[0]
    config = tmp / "edgecrab.yaml"
    config.write_text(
        json.dumps({
            "platforms": {"dingtalk": {
                "app_key": "${DINGTALK_APP_KEY}", "app_secret": "${DINGTALK_APP_SECRET}",
                "api_base": fake.base_url, "chunk_interval_ms": 0, **dingtalk,
            }},
            "agent": {"type": "echo"},
            "storage": {"url": f"sqlite:///{tmp / 'state.db'}"},
        }),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
    env.update(DINGTALK_APP_KEY=app.client_id, DINGTALK_APP_SECRET=app.client_secret, EDGECRAB_HOME=str(tmp))
    log_path = tmp / "gateway.log"
    with open(log_path, "wb") as log:  # noqa: ASYNC230 - the child's log file, opened once
        proc = await anyio.open_process(
            [sys.executable, "-m", "edgecrab", "--config", str(config), "gateway", "start"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
        )
    try:
        await fake.wait_for(lambda: len(fake.connections) >= 1, 15)
        if before is not None:
            before["stream_message_id"] = await fake.push(before)
        data = fake.dm(fake.users[0], text)
        cid = data["conversationId"]
        await fake.push(data)
        # The last chunk of a reply carries the note; wait for it, then for nothing more to come.
        await fake.wait_for(lambda: any(note in m.text for m in fake.messages_for(cid)
                                        for note in ("truncated", "cut to", "echo: small")), 30)
        marker = fake.dm(fake.users[0], "done?")
        await fake.push(marker)
        await fake.wait_for(lambda: any("echo: done?" in m.text for m in fake.messages_for(cid)), 15)
    finally:
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            await proc.wait()
    texts = [m.text for m in fake.messages_for(cid)]
    return texts[:-1], log_path.read_text(errors="replace")


async def test_a_900_kb_message_is_cut_before_the_agent_sees_it(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        texts, log = await _run(tmp_path, fake, {}, HUGE)
    assert len(HUGE) > 890_000
    # 20,000 characters echoed back: 4 messages of at most 6000, not 150.
    assert 1 < len(texts) <= 5, len(texts)
    assert "[edgecrab: the message was cut to its first 20,000 of" in texts[-1], texts[-1][-300:]
    assert "cut to 20000 (max_inbound_chars)" in log


async def test_a_reply_is_at_most_max_chunks_per_reply_messages(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake:
        texts, log = await _run(
            tmp_path, fake, {"max_inbound_chars": 0, "max_chunks_per_reply": 7}, HUGE
        )
    assert len(texts) == 7, len(texts)
    assert "…(answer truncated: " in texts[-1] and "more characters not sent)" in texts[-1], texts[-1][-300:]
    assert all(len(t) <= 6000 for t in texts)
    assert "truncated to 7 (max_chunks_per_reply)" in log


async def test_a_frame_over_the_size_limit_is_acked_dropped_and_logged_without_reconnecting(
    tmp_path: Path,
) -> None:
    """Before: websockets closed the connection with 1009, the gateway reconnected, and DingTalk delivered
    the same unread (so unacked) frame again: a reconnect loop. Now the frame is read (up to a much larger
    ceiling), acked so it is not delivered again, dropped, and an ERROR says why."""
    async with FakeDingTalk(redeliver_after_s=0.3) as fake:
        big = fake.dm(fake.users[0], "x" * 1_200_000)  # a 1.2 MB frame: over the 1 MiB limit
        texts, log = await _run(tmp_path, fake, {}, "small", before=big)
        assert fake.connections_opened == 1, log[-3000:]
        assert fake.acks_for(big["stream_message_id"])[0].code == 200
        assert fake.deliveries_of(big["stream_message_id"]) == 1
    assert "over the 1 MiB limit" in log and " ERROR " in log, log[-3000:]
    assert any("echo: small" in t for t in texts)


async def test_a_frame_over_the_read_ceiling_ends_the_connection_with_an_error_naming_the_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Above READ_LIMIT_BYTES nothing can be read, so nothing can be acked: the connection ends with 1009
    and an ERROR says so (not a bare "closed (1006)")."""
    import websockets

    from edgecrab.dingtalk.streamconn import READ_LIMIT_BYTES, AckDecision, StreamConnection, open_websocket

    async def send_huge(ws: websockets.ServerConnection) -> None:
        await ws.send("x" * (READ_LIMIT_BYTES + 1))
        await ws.wait_closed()

    async def record(frame: object) -> AckDecision:
        return AckDecision()

    async with websockets.serve(send_huge, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        conn = StreamConnection(await open_websocket(f"ws://127.0.0.1:{port}/"), "c1",
                                on_callback=record, idle_timeout_s=30)
        with caplog.at_level("ERROR", logger="edgecrab.dingtalk.stream"), anyio.fail_after(20):
            await conn.serve()
    assert conn.end_reason == "frame too large (1009)"
    assert "cannot be read, so it cannot be acked" in caplog.text
