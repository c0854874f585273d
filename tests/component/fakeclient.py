"""A minimal raw Stream client (httpx + websockets) for testing the fake DingTalk itself."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote_plus

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from edgecrab.testing.fakedingtalk import CALLBACK_TOPIC, DEFAULT_APP_KEY, DEFAULT_APP_SECRET, FakeDingTalk

OPEN = "/v1.0/gateway/connections/open"
SUBS = [{"type": "CALLBACK", "topic": CALLBACK_TOPIC}]
TOKEN = "x-acs-dingtalk-access-token"


async def open_ticket(fake: FakeDingTalk, subs: list[dict[str, str]] = SUBS, **extra: Any) -> dict[str, str]:
    body = {"clientId": DEFAULT_APP_KEY, "clientSecret": DEFAULT_APP_SECRET, "subscriptions": subs, **extra}
    async with httpx.AsyncClient() as client:
        response = await client.post(fake.base_url + OPEN, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def connect(fake: FakeDingTalk, subs: list[dict[str, str]] = SUBS) -> ClientConnection:
    opened = fake.connections_opened
    ticket = await open_ticket(fake, subs)
    ws = await websockets.connect(f"{ticket['endpoint']}?ticket={quote_plus(ticket['ticket'])}")
    await fake.wait_for(lambda: fake.connections_opened > opened)
    return ws


async def recv(ws: ClientConnection, within: float = 2.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), within))


def ack(frame: dict[str, Any], code: int = 200, data: str = '{"response": null}') -> str:
    return json.dumps(
        {
            "code": code,
            "headers": {"contentType": "application/json", "messageId": frame["headers"]["messageId"]},
            "message": "OK",
            "data": data,
        }
    )


async def token(http: httpx.AsyncClient, key: str = DEFAULT_APP_KEY, secret: str = DEFAULT_APP_SECRET) -> str:
    response = await http.post("/v1.0/oauth2/accessToken", json={"appKey": key, "appSecret": secret})
    assert response.status_code == 200, response.text
    return response.json()["accessToken"]
