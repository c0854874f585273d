"""The DingTalk sender on the wire, against raw loopback servers (``tests.component.rawhttp``): exactly what
it sends, and how it reads what the fake DingTalk cannot serve on purpose (an error page in GBK, a redirect,
gzip, a hang-up, a truncated body, silence). The webhook's session value never shows in a result or a log.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from edgecrab.config import DingTalkConfig
from edgecrab.dingtalk.rest import DingTalkSender, SendResult
from edgecrab.dingtalk.robotapi import _webhook_ok
from edgecrab.dingtalk.tokens import error_from_response
from edgecrab.events import ReplyRoute
from tests.component.rawhttp import Handler, json_answer, read_request, response, serve

pytestmark = pytest.mark.anyio

SECRET = "5f3c0ffee0ddba11"


async def no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def sender_on(handler: Handler, **config: Any) -> AsyncIterator[tuple[DingTalkSender, str]]:
    """A sender whose api_base and webhook host is a raw server running ``handler``."""
    async with serve(handler) as (base, _):
        values: dict[str, Any] = {
            "app_key": "k",
            "app_secret": "s",
            "robot_code": "r",
            "api_base": base,
            "send_timeout_s": 5.0,
        }
        values.update(config)
        async with DingTalkSender(DingTalkConfig(**values), sleep=no_sleep) as sender:
            yield sender, base


def route(base: str, *, staff_id: str = "staff1") -> ReplyRoute:
    return ReplyRoute(
        robot_code="r",
        conversation_id="cid",
        is_group=False,
        sender_staff_id=staff_id,
        sender_name="Li Lei",
        session_webhook=f"{base}/robot/sendBySession?session={SECRET}",
        session_webhook_expires_at=time.time() + 3600,
    )


async def send(sender: DingTalkSender, base: str, **kw: Any) -> SendResult:
    return await sender.send(route(base, **kw), text="你好", title="t", mention=False)


def assert_no_secret(result: SendResult, caplog: pytest.LogCaptureFixture) -> None:
    for text in (f"{result}", caplog.text):
        assert SECRET not in text, text


# -- what is sent ----------------------------------------------------------------------------------


async def test_webhook_token_and_batch_send_requests_on_the_wire() -> None:
    requests: list[tuple[str, dict[str, str], bytes]] = []

    async def dingtalk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, headers, body = await read_request(reader)
            requests.append((line, headers, body))
            if "accessToken" in line:
                answer: dict[str, Any] = {"accessToken": "tok-1", "expireIn": 7200}
            elif "sendBySession" in line:
                answer = {"errcode": 300001, "errmsg": "session gone"}
            else:
                answer = {"processQueryKey": "pqk-1"}
            writer.write(json_answer(answer, extra="x-acs-request-id: rid-1\r\n"))
            await writer.drain()

    async with sender_on(dingtalk) as (sender, base):
        result = await send(sender, base)

    assert (result.ok, result.via, result.request_id, result.process_query_key) == (
        True,
        "batchSend",
        "rid-1",
        "pqk-1",
    )
    assert [line for line, _, _ in requests] == [
        f"POST /robot/sendBySession?session={SECRET} HTTP/1.1",
        "POST /v1.0/oauth2/accessToken HTTP/1.1",
        "POST /v1.0/robot/oToMessages/batchSend HTTP/1.1",
    ]
    webhook, token, batch = requests
    for _, headers, _ in requests:
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"].startswith("python-httpx/")
    assert json.loads(webhook[2]) == {"msgtype": "markdown", "markdown": {"title": "t", "text": "你好"}}
    assert json.loads(token[2]) == {"appKey": "k", "appSecret": "s"}
    assert batch[1]["x-acs-dingtalk-access-token"] == "tok-1"
    assert (
        batch[2]
        == (
            '{"robotCode":"r","userIds":["staff1"],"msgKey":"sampleMarkdown",'
            '"msgParam":"{\\"title\\":\\"t\\",\\"text\\":\\"你好\\"}"}'
        ).encode()
    )


# -- what comes back -------------------------------------------------------------------------------


async def test_an_html_error_page_in_gbk_is_excerpted_in_the_failure() -> None:
    page = "<html>服务繁忙</html>".encode("gbk")

    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                response(page, "503 Service Unavailable", "Content-Type: text/html; charset=GBK\r\n")
            )
            await writer.drain()

    async with sender_on(busy, send_retries=0) as (sender, base):
        result = await send(sender, base, staff_id="")  # no OpenAPI fallback: the webhook's failure
    assert (result.ok, result.via, result.permanent, result.code) == (False, "webhook", False, "503")
    assert "服务繁忙" in result.message


async def test_a_redirect_is_a_failure_and_not_followed() -> None:
    lines: list[str] = []

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, _, _ = await read_request(reader)
            lines.append(line)
            writer.write(response(b"", "302 Found", "Location: /elsewhere\r\n"))
            await writer.drain()

    async with sender_on(redirect) as (sender, base):
        result = await send(sender, base, staff_id="")
    assert not result.ok
    assert lines == [f"POST /robot/sendBySession?session={SECRET} HTTP/1.1"]


async def test_a_gzip_encoded_answer_is_decoded() -> None:
    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(gzip.compress(b'{"errcode": 0}'), extra="Content-Encoding: gzip\r\n"))
        await writer.drain()

    async with sender_on(gzipped) as (sender, base):
        result = await send(sender, base)
    assert (result.ok, result.via) == (True, "webhook")


# -- no answer -------------------------------------------------------------------------------------


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)


async def _truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"errcode":')
    await writer.drain()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await reader.read()


async def _stalls_in_the_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"errcode":')
    await writer.drain()
    await reader.read()


# httpx-aiohttp maps a hang-up before the answer (aiohttp's ServerDisconnectedError) and a refused connection
# onto httpx.ConnectTimeout; edgecrab.outbound.failure_kind reads the cause, so neither is called a timeout.
@pytest.mark.parametrize(
    ("handler", "code", "message"),
    [
        (_hang_up, "network", "sessionWebhook: the server closed the connection"),
        (_truncated, "network", "sessionWebhook: the server closed the connection"),
        (_silent, "timeout", "sessionWebhook: timed out"),
        (_stalls_in_the_body, "timeout", "sessionWebhook: timed out"),
    ],
    ids=["hang-up", "truncated body", "silence", "stall in the body"],
)
async def test_no_answer_is_a_transient_failure_without_the_session(
    handler: Handler, code: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with sender_on(handler, send_retries=0, send_timeout_s=0.3) as (sender, base):
        started = time.monotonic()
        result = await send(sender, base, staff_id="")
    assert time.monotonic() - started < 3
    assert (result.ok, result.permanent, result.code, result.message) == (False, False, code, message)
    assert_no_secret(result, caplog)


async def test_a_refused_connection_is_a_transient_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve(_hang_up) as (base, _):
        pass  # closed again: the port now refuses
    config = DingTalkConfig(app_key="k", app_secret="s", api_base=base, send_retries=0)
    async with DingTalkSender(config, sleep=no_sleep) as sender:
        result = await send(sender, base, staff_id="")
    assert (result.ok, result.permanent, result.code, result.message) == (
        False,
        False,
        "network",
        "sessionWebhook: connection refused or host unreachable",
    )
    assert_no_secret(result, caplog)


async def test_cancelling_a_send_in_flight_closes_its_connection() -> None:
    hung_up = anyio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if await reader.read() == b"":
            hung_up.set()

    async with sender_on(silent) as (sender, base):
        with anyio.move_on_after(0.2):
            await send(sender, base)
        with anyio.fail_after(1):
            await hung_up.wait()


# -- the webhook's success short cut ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        (b'{"errcode":0,"errmsg":"ok"}', True),
        (b'{"errcode":"0"}', True),
        (b'{"errcode":300001,"errmsg":"session gone"}', False),
        (b'{"errcode":0,"code":"InvalidAuthentication"}', False),  # the new API's fields win
        (b'{"code":"0","message":""}', False),  # success too, but the long way decides it
        (b'{"errmsg":"ok"}', False),
        (b'{"errcode":null}', False),
        (b"[0]", False),
        (b"<html>ok?</html>", False),
        (b"\xff\xfe", False),
        (b"", False),
    ],
)
def test_the_webhook_success_short_cut_agrees_with_error_from_response(body: bytes, ok: bool) -> None:
    assert _webhook_ok(body) is ok
    if ok:
        assert error_from_response(httpx.Response(200, content=body), "sessionWebhook").code == "0"
