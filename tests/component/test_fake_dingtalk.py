"""The fake DingTalk over real loopback sockets, driven by a minimal raw client (httpx + websockets).

These tests pin the fake to the protocol reference: if the fake drifts, every test built on it lies.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from urllib.parse import quote_plus

import httpx
import pytest
import websockets

from edgecrab.testing.fakedingtalk import CALLBACK_TOPIC, DEFAULT_APP_KEY, DEFAULT_APP_SECRET, FakeDingTalk
from tests.component.fakeclient import OPEN, SUBS, ack, connect, open_ticket, recv

pytestmark = pytest.mark.anyio

MESSAGE_ID = re.compile(r"^[0-9a-f]+_[0-9a-f]+_[0-9a-f]+_[0-9a-f]+$")


@pytest.fixture
async def fake() -> AsyncIterator[FakeDingTalk]:
    async with FakeDingTalk(
        redeliver_after_s=0.3, max_redeliveries=2, disconnect_close_after_s=0.3, seed=7
    ) as f:
        yield f


@pytest.fixture
async def http(fake: FakeDingTalk) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=5) as client:
        yield client


# open-connection and tickets --------------------------------------------------------------------------------
async def test_open_connection_checks_credentials_and_records_request(
    fake: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    subs = [*SUBS, {"type": "SYSTEM", "topic": "ping"}, {"type": "EVENT", "topic": "*"}]
    good = await http.post(
        OPEN,
        json={
            "clientId": DEFAULT_APP_KEY,
            "clientSecret": DEFAULT_APP_SECRET,
            "subscriptions": subs,
            "ua": "dingtalk-sdk-python/v0.24.3-union",
            "localIp": "192.0.2.2",
            "extras": {"k": "v"},
        },
    )
    assert good.status_code == 200
    assert good.headers["content-type"] == "application/json;charset=utf-8"
    assert set(good.json()) == {"endpoint", "ticket"}
    assert good.json()["endpoint"] == fake.ws_endpoint and fake.ws_endpoint.startswith("ws://127.0.0.1:")
    bad = await http.post(
        OPEN, json={"clientId": DEFAULT_APP_KEY, "clientSecret": "wrong", "subscriptions": SUBS}
    )
    assert bad.status_code == 401
    assert (
        bad.json()["code"] == "authFailed" and bad.json()["message"] == "鉴权失败" and bad.json()["requestid"]
    )
    missing = await http.post(OPEN, json={"clientId": DEFAULT_APP_KEY, "clientSecret": DEFAULT_APP_SECRET})
    assert missing.status_code == 400
    assert [r.status for r in fake.open_requests] == [200, 401, 400]
    assert fake.open_requests[0].body["subscriptions"] == subs
    assert fake.open_requests[0].body["localIp"] == "192.0.2.2"
    assert fake.tickets_issued == 1


async def test_tickets_are_single_use_and_expire(fake: FakeDingTalk) -> None:
    ticket = await open_ticket(fake)
    url = f"{ticket['endpoint']}?ticket={quote_plus(ticket['ticket'])}"
    async with websockets.connect(url):
        pass
    with pytest.raises(websockets.InvalidStatus) as reused:
        await websockets.connect(url)
    assert reused.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(fake.ws_endpoint + "?ticket=not-a-ticket")
    late = await open_ticket(fake)
    fake.advance_clock(91)
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(f"{late['endpoint']}?ticket={quote_plus(late['ticket'])}")
    assert fake.stats()["tickets_rejected"] == 3 and fake.connections_opened == 1
    assert [r.status for r in fake.requests if r.path == "/connect"] == [401, 401, 401]


# frames, acks, redelivery -----------------------------------------------------------------------------------
async def test_callback_envelope_and_identical_redelivery(fake: FakeDingTalk) -> None:
    ws = await connect(fake)
    data = fake.dm("manager807", "hello DingTalk!")
    mid = await fake.push(data)
    first_raw = await asyncio.wait_for(ws.recv(), 2)
    frame = json.loads(first_raw)
    assert frame["specVersion"] == "1.0" and frame["type"] == "CALLBACK"
    headers = frame["headers"]
    assert set(headers) >= {"appId", "connectionId", "contentType", "messageId", "time", "topic"}
    assert all(isinstance(v, str) for v in headers.values())
    assert headers["messageId"] == mid and MESSAGE_ID.match(mid)
    assert headers["topic"] == CALLBACK_TOPIC and headers["time"].isdigit()
    assert headers["connectionId"] == fake.connections[0].connection_id
    assert isinstance(frame["data"], str) and json.loads(frame["data"]) == data
    # not acked: the very same text comes back after redeliver_after_s, max_redeliveries times, then stops
    second_raw = await asyncio.wait_for(ws.recv(), 1)
    third_raw = await asyncio.wait_for(ws.recv(), 1)
    assert first_raw == second_raw == third_raw
    await fake.wait_for(lambda: fake.stats()["gave_up"] == 1)  # the timer fired and sent nothing
    assert fake.deliveries_of(mid) == 3 and fake.redeliveries == 2
    await fake.push_raw("after giving up")  # frames keep their order: nothing came before this one
    assert await asyncio.wait_for(ws.recv(), 2) == "after giving up"
    await ws.close()


async def test_no_redelivery_after_200_ack_but_after_500(fake: FakeDingTalk) -> None:
    ws = await connect(fake)
    ok_id = await fake.push(fake.dm("user1001", "one"))
    frame = await recv(ws)
    await ws.send(ack(frame))
    record = await fake.wait_for_ack(ok_id)
    assert record.code == 200 and record.data == {"response": None} and record.latency_s is not None
    assert record.connection_id == fake.connections[0].connection_id and record.attempt == 1
    # Redelivery is the clock: a frame pushed later is redelivered later, and frames keep their order, so
    # a redelivery of an acked frame would arrive before the next one's.
    failed_id = await fake.push(fake.dm("user1001", "two"))
    first = await recv(ws)
    assert first["headers"]["messageId"] == failed_id
    await ws.send(ack(first, code=500))
    again = await recv(ws, 1)
    assert again["headers"]["messageId"] == failed_id  # not "one" again
    await ws.send(ack(again))
    await fake.wait_for_ack(failed_id)
    last_id = await fake.push(fake.dm("user1001", "three"))
    assert (await recv(ws))["headers"]["messageId"] == last_id
    redelivered = await recv(ws, 1)
    assert redelivered["headers"]["messageId"] == last_id  # not "two" again
    await ws.send(ack(redelivered))
    await fake.wait_for_ack(last_id)
    assert [a.code for a in fake.acks] == [200, 500, 200, 200]
    assert fake.deliveries_of(ok_id) == 1 and fake.deliveries_of(failed_id) == 2
    await ws.close()


async def test_redelivery_goes_to_another_live_connection_after_abort(fake: FakeDingTalk) -> None:
    ws = await connect(fake)
    mid = await fake.push(fake.dm("manager807", "lost on a dead socket"))
    first = await recv(ws)
    await fake.abort()
    with pytest.raises(websockets.ConnectionClosedError) as closed:
        await ws.recv()
    assert closed.value.rcvd is None  # no close frame: the client sees 1006
    ws2 = await connect(fake)
    again = await recv(ws2, 1)
    assert again == first and again["headers"]["messageId"] == mid
    await ws2.send(ack(again))
    await fake.wait_for_ack(mid)
    await ws2.close()


async def test_ping_requires_the_same_opaque(fake: FakeDingTalk) -> None:
    ws = await connect(fake)
    opaque = await fake.ping()
    frame = await recv(ws)
    assert frame["type"] == "SYSTEM" and frame["headers"]["topic"] == "ping"
    assert json.loads(frame["data"]) == {"opaque": opaque}
    await ws.send(ack(frame, data=frame["data"]))
    await fake.wait_for(lambda: fake.pings[-1].ok is not None)
    assert fake.pings[-1].ok is True
    await fake.ping(opaque="expected")
    wrong = await recv(ws)
    await ws.send(ack(wrong, data=json.dumps({"opaque": "something else"})))
    await fake.wait_for(lambda: fake.pings[-1].ok is not None)
    assert fake.pings[-1].ok is False and fake.pings[-1].echoed == "something else"
    await ws.close()


async def test_disconnect_has_no_message_id_and_stops_delivery(fake: FakeDingTalk) -> None:
    ws = await connect(fake)
    await fake.disconnect()
    frame = await recv(ws)
    assert frame["type"] == "SYSTEM" and frame["headers"]["topic"] == "disconnect"
    assert "messageId" not in frame["headers"]
    assert json.loads(frame["data"]) == {"reason": "connection is expired"}
    mid = await fake.push(fake.dm("manager807", "after the disconnect"))
    with pytest.raises(
        websockets.ConnectionClosedOK
    ) as closed:  # nothing more, then closed 1000 by the server
        await asyncio.wait_for(ws.recv(), 2)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert fake.stats()["queued"] == 1
    ws2 = await connect(fake)
    assert (await recv(ws2))["headers"]["messageId"] == mid
    await ws2.close()


async def test_server_close_code(fake: FakeDingTalk) -> None:
    ws = await connect(fake)
    await fake.close(code=1001)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 2)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


async def test_zombie_keeps_pings_alive_but_pushes_nothing(fake: FakeDingTalk) -> None:
    ws = await connect(fake)
    fake.zombie = True
    mid = await fake.push(fake.dm("manager807", "held back"))
    pong = await ws.ping()
    await asyncio.wait_for(pong, 1)  # the websocket itself is healthy
    assert fake.stats()["queued"] == 1 and fake.deliveries_of(mid) == 0  # held back, not sent
    fake.zombie = False
    assert (await recv(ws))["headers"]["messageId"] == mid
    await ws.close()


async def test_duplicates_after_ack(fake: FakeDingTalk) -> None:
    ws = await connect(fake)
    mid = await fake.push(fake.dm("manager807", "dup me"))
    frame = await recv(ws)
    await ws.send(ack(frame))
    await fake.wait_for_ack(mid)
    assert await fake.inject_duplicate(mid)
    assert await recv(ws) == frame
    fake.duplicate_after_ack = 1.0
    mid2 = await fake.push(fake.dm("manager807", "spontaneous"))
    frame2 = await recv(ws)
    await ws.send(ack(frame2))
    assert await recv(ws) == frame2
    assert fake.stats()["duplicates_injected"] == 2 and fake.deliveries_of(mid2) == 1
    await ws.close()


async def test_only_subscribed_topics_and_events(fake: FakeDingTalk) -> None:
    events_ws = await connect(fake, [{"type": "EVENT", "topic": "*"}])
    mid = await fake.push_event("user_add_org", {"timeStamp": "1", "userId": ["u1"]})
    frame = await recv(events_ws)
    assert frame["type"] == "EVENT" and frame["headers"]["eventType"] == "user_add_org"
    assert {"eventId", "eventCorpId", "eventBornTime", "eventUnifiedAppId"} <= set(frame["headers"])
    await events_ws.send(ack(frame, data=json.dumps({"status": "LATER", "message": "busy"})))
    again = await recv(events_ws, 1)  # LATER means push again
    await events_ws.send(ack(again, data=json.dumps({"status": "SUCCESS", "message": "ok"})))
    await fake.wait_for(lambda: fake.stats()["acked_ok"] == 1)
    callback_id = await fake.push(fake.dm("manager807", "robots only"))
    assert fake.stats()["queued"] == 1  # not subscribed to the robot topic: queued
    robot_ws = await connect(fake)
    assert (await recv(robot_ws))["headers"]["messageId"] == callback_id
    assert mid != callback_id and fake.deliveries_of(callback_id) == 1
    later = await fake.push_event("user_leave_org", {"timeStamp": "2", "userId": ["u1"]})
    assert (await recv(events_ws))["headers"]["messageId"] == later  # and nothing came before it
    await events_ws.close()
    await robot_ws.close()


async def test_group_without_mention_is_not_pushed(fake: FakeDingTalk) -> None:
    ws = await connect(fake)
    dropped = await fake.push(fake.group("user1002", "chatting, not asking", at_bot=False))
    assert fake.stats()["dropped_unmentioned"] == 1 and fake.deliveries_of(dropped) == 0
    fake.deliver_unmentioned = True
    await fake.push(fake.group("user1002", "now delivered", at_bot=False))
    data = json.loads((await recv(ws))["data"])
    assert data["isInAtList"] is False and data["text"]["content"] == "now delivered"
    await ws.close()


async def test_raw_frames_and_bad_acks_are_tolerated(fake: FakeDingTalk) -> None:
    ws = await connect(fake)
    await fake.push_raw("this is not json")
    assert await asyncio.wait_for(ws.recv(), 1) == "this is not json"
    await ws.send("garbage from the client")
    await fake.wait_for(lambda: fake.stats()["bad_client_frames"] == 1)
    assert fake.connections  # still up
    await ws.close()


async def test_pushes_spread_over_connections_and_kick_older_mode(fake: FakeDingTalk) -> None:
    first, second = await connect(fake), await connect(fake)
    ids = [await fake.push(fake.dm("user1003", f"n{i}")) for i in range(16)]
    got: dict[str, int] = {}
    for ws in (first, second):
        while True:
            try:
                frame = await recv(ws, 0.2)
            except TimeoutError:
                break
            got[frame["headers"]["messageId"]] = got.get(frame["headers"]["messageId"], 0) + 1
            await ws.send(ack(frame))
    assert sorted(got) == sorted(ids) and set(got.values()) == {1}
    assert {a.connection_id for a in fake.acks} == {c.connection_id for c in fake.connections}
    fake.kick_older = True
    third = await connect(fake)
    for old in (first, second):
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(old.recv(), 2)
    await fake.wait_for(lambda: len(fake.connections) == 1)
    await third.close()


async def test_extra_routes_share_the_port_unrecorded() -> None:
    from aiohttp import web

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="chat")

    fk = FakeDingTalk()
    fk.add_routes([web.get("/", page)])
    async with fk, httpx.AsyncClient(base_url=fk.base_url) as client:
        fk.faults.fail("*", 500, rate=1.0)
        assert (await client.get("/")).text == "chat"
        assert fk.requests == []
        with pytest.raises(RuntimeError):
            fk.add_routes([web.get("/late", page)])
