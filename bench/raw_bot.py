"""The raw limit: the least code that speaks the Stream protocol and answers. No logic, no safety.

``python -m bench.raw_bot --openapi http://127.0.0.1:PORT --client-id K --client-secret S [--llm URL]``

Opens the connection (POST for a ticket, then the websocket), acks every frame the moment it is read,
and answers each robot message in its own task by POSTing to the message's ``sessionWebhook`` with aiohttp
(after asking the LLM, with ``--llm``). Nothing is stored, retried, ordered, paced or limited: whatever
edgecrab does on top of this costs something, and this bot shows how much.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import websockets

BOT_TOPIC = "/v1.0/im/bot/messages/get"


def ack(message_id: str, data: str = '{"response": null}') -> str:
    headers = {"contentType": "application/json", "messageId": message_id}
    return json.dumps({"code": 200, "headers": headers, "message": "OK", "data": data})


async def answer(http: aiohttp.ClientSession, llm_url: str, data: dict[str, Any]) -> None:
    text = data["text"]["content"].strip()
    if llm_url:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": text}]}
        async with http.post(llm_url, json=body, headers={"Authorization": "Bearer sk-bench"}) as r:
            reply = (await r.json())["choices"][0]["message"]["content"]
    else:
        reply = f"echo: {text}"
    body = {"msgtype": "text", "text": {"content": reply}}
    async with http.post(data["sessionWebhook"], json=body) as r:
        await r.read()


async def run(openapi: str, client_id: str, client_secret: str, llm: str) -> None:
    llm_url = llm.rstrip("/") + "/chat/completions" if llm else ""
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector) as http:
        body = {
            "clientId": client_id,
            "clientSecret": client_secret,
            "subscriptions": [{"type": "CALLBACK", "topic": BOT_TOPIC}],
            "ua": "bench-raw/1",
        }
        async with http.post(openapi.rstrip("/") + "/v1.0/gateway/connections/open", json=body) as r:
            info = await r.json()
        url = f"{info['endpoint']}?ticket={quote_plus(info['ticket'])}"
        async with websockets.connect(url, max_size=2**20) as ws:
            async for raw in ws:
                frame = json.loads(raw)
                mid = frame["headers"].get("messageId", "")
                if frame.get("type") == "SYSTEM":
                    await ws.send(ack(mid, frame.get("data", "{}")))
                    continue
                await ws.send(ack(mid))
                if frame["headers"].get("topic") == BOT_TOPIC:
                    task = asyncio.create_task(answer(http, llm_url, json.loads(frame["data"])))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_bot")
    parser.add_argument("--openapi", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--llm", default="")
    args = parser.parse_args()
    asyncio.run(run(args.openapi, args.client_id, args.client_secret, args.llm))


if __name__ == "__main__":
    main()
