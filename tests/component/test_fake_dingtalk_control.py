"""The fake DingTalk's control API, event stream and run modes (own loop, thread, subprocess), and the real
``dingtalk-stream`` 0.24.3 SDK client against it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from edgecrab.testing.fakedingtalk import (
    DEFAULT_APP_KEY,
    DEFAULT_APP_SECRET,
    DEFAULT_GROUP_ID,
    FakeDingTalk,
    FakeDingTalkThread,
)
from tests.component.fakeclient import OPEN, SUBS, ack, connect, recv

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fake() -> AsyncIterator[FakeDingTalk]:
    async with FakeDingTalk(redeliver_after_s=0.3, max_redeliveries=2, seed=7) as f:
        yield f


@pytest.fixture
async def http(fake: FakeDingTalk) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=5) as client:
        yield client


async def test_control_api(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    ws = await connect(fake)
    users = (await http.get("/_fake/users")).json()
    assert (
        any(u["staff_id"] == "manager807" for u in users["users"]) and "client_secret" not in users["apps"][0]
    )
    pushed = (
        await http.post("/_fake/push", json={"kind": "group", "user": "user1001", "text": "hello"})
    ).json()
    frame = await recv(ws)
    assert frame["headers"]["messageId"] == pushed["message_id"]
    assert json.loads(frame["data"])["msgId"] == pushed["msg_id"] == pushed["data"]["msgId"]
    await ws.send(ack(frame))
    await fake.wait_for_ack(pushed["message_id"])
    acks = (await http.get("/_fake/acks")).json()["acks"]
    assert acks[0]["message_id"] == pushed["message_id"] and acks[0]["code"] == 200
    await http.post(pushed["data"]["sessionWebhook"], json={"msgtype": "text", "text": {"content": "pong"}})
    out = (await http.get("/_fake/outbound", params={"conversation_id": DEFAULT_GROUP_ID})).json()["outbound"]
    assert [o["text"] for o in out] == ["pong"]
    faults = (await http.post("/_fake/faults", json={"fail": [{"path": "/v1.0/*", "status": 500}]})).json()
    assert faults["rules"][0]["pattern"] == "/v1.0/*"
    assert (await http.post("/_fake/settings", json={"zombie": True})).json()["zombie"] is True
    assert (await http.post("/_fake/settings", json={"nope": 1})).status_code == 400
    await http.post("/_fake/settings", json={"zombie": False})
    assert (await http.post("/_fake/disconnect", json={})).json()["connections"]
    assert (await recv(ws))["headers"]["topic"] == "disconnect"
    stats = (await http.get("/_fake/stats")).json()
    assert stats["tickets_issued"] == 1 and stats["acks"] == 1 and stats["outbound"] == 1
    assert (await http.post("/_fake/push", json={"kind": "nope"})).status_code == 400
    await ws.close()


async def test_event_streams(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    sub = fake.subscribe()
    await http.post(
        "/v1.0/oauth2/accessToken", json={"appKey": DEFAULT_APP_KEY, "appSecret": DEFAULT_APP_SECRET}
    )
    event = await asyncio.wait_for(sub.receive(), 1)
    assert event["kind"] == "rest" and event["path"] == "/v1.0/oauth2/accessToken" and event["status"] == 200
    sub.close()
    async with websockets.connect(fake.ws_endpoint.replace("/connect", "/_fake/events?replay=1")) as events:
        first = json.loads(await asyncio.wait_for(events.recv(), 1))
        assert first["kind"] == "rest"
    async with http.stream("GET", "/_fake/events", params={"replay": "1"}) as stream:
        lines = stream.aiter_lines()
        assert (await asyncio.wait_for(anext(lines), 1)).startswith("event: rest")


async def test_wait_for_times_out_with_a_useful_message(fake: FakeDingTalk) -> None:
    with pytest.raises(TimeoutError, match="outbound"):
        await fake.wait_for_outbound(1, timeout=0.05)


def test_thread_mode_serves_a_blocking_client() -> None:
    with FakeDingTalkThread(redeliver_after_s=0.3) as fk:
        response = httpx.post(
            fk.base_url + OPEN,
            json={"clientId": DEFAULT_APP_KEY, "clientSecret": "no", "subscriptions": SUBS},
        )
        assert response.status_code == 401
        thread = FakeDingTalkThread(fk)  # a second handle is not started: call() must refuse
        with pytest.raises(RuntimeError):
            thread.call(fk.wait_for(lambda: True))


async def test_subprocess_mode() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgecrab.testing.fakedingtalk",
        "--port",
        "0",
        "--app-key",
        "K",
        "--app-secret",
        "S",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
        assert line["base_url"].startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=line["base_url"]) as client:
            assert (await client.get("/_fake/stats")).json()["connections"] == 0
            opened = await client.post(
                OPEN, json={"clientId": "K", "clientSecret": "S", "subscriptions": SUBS}
            )
            assert opened.status_code == 200
            pushed = await client.post(
                "/_fake/push", json={"kind": "dm", "user": "manager807", "text": "queued"}
            )
            assert pushed.status_code == 200
            assert (await client.get("/_fake/stats")).json()["queued"] == 1
    finally:
        proc.terminate()
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0


async def test_real_sdk_client_connects_and_acks(monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio
    import dingtalk_stream
    from dingtalk_stream import AckMessage, ChatbotHandler, ChatbotMessage, Credential, DingTalkStreamClient

    seen: list[dict[str, Any]] = []

    class Handler(ChatbotHandler):
        async def process(self, callback: Any) -> tuple[int, str]:
            seen.append(callback.data)
            return AckMessage.STATUS_OK, "OK"

    runner = FakeDingTalkThread(redeliver_after_s=0.5)
    fk = runner.start()
    try:
        monkeypatch.setattr(
            dingtalk_stream.stream.DingTalkStreamClient, "OPEN_CONNECTION_API", fk.base_url + OPEN
        )
        client = DingTalkStreamClient(Credential(DEFAULT_APP_KEY, DEFAULT_APP_SECRET))
        client.register_callback_handler(ChatbotMessage.TOPIC, Handler())
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.start)
                await runner.call_async(fk.wait_for_connections(1))
                mid = await runner.call_async(fk.push(fk.dm("manager807", "hello from the fake")))
                record = await runner.call_async(fk.wait_for_ack(mid))
                await runner.call_async(fk.ping())
                await runner.call_async(fk.wait_for(lambda: bool(fk.pings) and fk.pings[-1].ok is not None))
                tg.cancel_scope.cancel()
        for task in asyncio.all_tasks():  # 0.24.3 leaves keepalive and handler tasks behind
            if task.get_coro().__qualname__.startswith("DingTalkStreamClient."):  # type: ignore[union-attr]
                task.cancel()
    finally:
        runner.stop()
    assert record.code == 200 and seen[0]["text"]["content"] == "hello from the fake"
    assert fk.pings[-1].ok is True
    assert fk.open_requests[0].body["subscriptions"] == SUBS
    assert fk.open_requests[0].body["ua"].startswith("dingtalk-sdk-python/")
