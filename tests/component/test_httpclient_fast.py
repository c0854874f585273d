"""edgecrab.httpclient.post_bytes over real loopback sockets: the short way past httpx, same answers, errors.

The servers are the raw asyncio ones of test_httpclient, so each test controls exactly what the client sees.
Every test that expects the short way also makes ``client.post`` fail, so a silent fall back to httpx
cannot pass for it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from typing import Any

import anyio
import httpx
import pytest

from edgecrab.config import DingTalkConfig
from edgecrab.dingtalk.rest import DingTalkSender
from edgecrab.dingtalk.tokens import error_from_response
from edgecrab.events import ReplyRoute
from edgecrab.httpclient import async_client, post_bytes
from edgecrab.httpresponses import FastResponse
from tests.component.test_httpclient import echo_forever, read_request, response, serve

pytestmark = pytest.mark.anyio

SECRET = "5f3c0ffee0ddba11"
JSON = {"Content-Type": "application/json"}


def fast_only(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> httpx.AsyncClient:
    """``client`` with ``post`` broken: only the short way can answer."""

    async def no_post(*args: Any, **kwargs: Any) -> httpx.Response:
        raise AssertionError("post_bytes fell back to client.post")

    monkeypatch.setattr(client, "post", no_post)
    return client


def assert_no_secret(exc: BaseException, base: str) -> None:
    text = f"{exc} {exc!r} {exc.args!r}"
    assert SECRET not in text and "session=" not in text and "/robot/" not in text, text


# -- answers ---------------------------------------------------------------------------------------


async def test_a_post_sends_exactly_the_body_and_headers_and_reads_the_whole_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serve(echo_forever) as (base, peers), async_client(timeout=5) as client:
        fast_only(client, monkeypatch)
        body = json.dumps({"text": "你好"}, ensure_ascii=False).encode()
        url = f"{base}/robot/sendBySession?session={SECRET}"
        first = await post_bytes(client, url, body, {**JSON, "x-acs-dingtalk-access-token": "tok"}, 5)
        second = await post_bytes(client, f"{base}/again", b"{}", JSON, 5)

    assert isinstance(first, FastResponse)
    assert first.status_code == 200 and first.is_success
    sent = first.json()
    assert sent["line"] == f"POST /robot/sendBySession?session={SECRET} HTTP/1.1"
    assert sent["body"] == '{"text": "你好"}'
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["headers"]["content-length"] == str(len(body))
    assert sent["headers"]["x-acs-dingtalk-access-token"] == "tok"
    assert "user-agent" not in sent["headers"]  # no client-level headers on the short way
    assert first.headers.get("content-type") == "application/json"
    assert first.headers.get("CONTENT-TYPE") == "application/json"  # case-insensitive, as httpx's
    assert json.loads(first.content) == sent
    assert second.json()["line"] == "POST /again HTTP/1.1"
    assert len(peers) == 1  # keep-alive: both requests on one connection


async def test_a_non_2xx_answer_is_returned_with_its_json_error_body(monkeypatch: pytest.MonkeyPatch) -> None:
    error = json.dumps({"code": "InvalidAuthentication", "message": "bad token", "requestid": "r-1"})

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            response(error.encode(), "400 Bad Request", "Retry-After: 2\r\nX-Acs-Request-Id: h-1\r\n")
        )
        await writer.drain()

    async with serve(refuse) as (base, _), async_client() as client:
        answer = await post_bytes(fast_only(client, monkeypatch), f"{base}/v1.0/x", b"{}", JSON, 5)

    assert (answer.status_code, answer.is_success) == (400, False)
    assert answer.json() == json.loads(error)
    assert answer.headers.get("x-acs-request-id") == "h-1"
    err = error_from_response(answer, "batchSend")
    assert (err.status, err.code, err.message, err.request_id) == (
        400,
        "InvalidAuthentication",
        "bad token",
        "r-1",
    )
    assert err.retry_after == 2.0 and err.needs_new_token


async def test_an_html_error_page_is_excerpted_from_its_text(monkeypatch: pytest.MonkeyPatch) -> None:
    page = "<html>服务繁忙</html>".encode("gbk")

    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(page, "503 Service Unavailable", "Content-Type: text/html; charset=GBK\r\n"))
        await writer.drain()

    async with serve(busy) as (base, _), async_client() as client:
        answer = await post_bytes(fast_only(client, monkeypatch), base + "/", b"{}", JSON, 5)

    assert answer.text == "<html>服务繁忙</html>"
    err = error_from_response(answer, "groupSend")
    assert err.status == 503 and err.retryable and "服务繁忙" in err.message


async def test_a_redirect_is_returned_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, _, _ = await read_request(reader)
            lines.append(line)
            writer.write(response(b"", "302 Found", "Location: /elsewhere\r\n"))
            await writer.drain()

    async with serve(redirect) as (base, _), async_client() as client:
        answer = await post_bytes(fast_only(client, monkeypatch), f"{base}/start", b"{}", JSON, 5)

    assert answer.status_code == 302 and not answer.is_success
    assert answer.headers.get("location") == "/elsewhere"
    assert lines == ["POST /start HTTP/1.1"]


async def test_a_compressed_answer_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(gzip.compress(b'{"errcode": 0}'), extra="Content-Encoding: gzip\r\n"))
        await writer.drain()

    async with serve(gzipped) as (base, _), async_client() as client:
        answer = await post_bytes(fast_only(client, monkeypatch), base + "/", b"{}", JSON, 5)
    assert answer.json() == {"errcode": 0}


@pytest.mark.parametrize(
    "path",
    [
        "/robot/sendBySession?session=abc",
        "/a b/ü?q=x y&r=%2f",  # needs percent-encoding: httpx's reading decides
        "/x/./y/../z?",  # dot segments: httpx normalises them
        "//double//slash",
    ],
)
async def test_the_request_target_is_the_one_httpx_sends(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    async with serve(echo_forever) as (base, _), async_client() as client:
        via_httpx = (await client.post(base + path, content=b"{}")).json()["line"]
        via_fast = (await post_bytes(fast_only(client, monkeypatch), base + path, b"{}", JSON, 5)).json()[
            "line"
        ]
    assert via_fast == via_httpx


# -- failures: the httpx exceptions of the transport path, never the URL --------------------------


async def test_connection_refused_is_a_connect_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve(echo_forever) as (base, _):
        pass  # closed again: the port now refuses
    async with async_client() as client:
        with pytest.raises(httpx.ConnectError) as info:
            await post_bytes(
                fast_only(client, monkeypatch), f"{base}/robot/x?session={SECRET}", b"{}", JSON, 5
            )
    assert_no_secret(info.value, base)
    assert str(info.value.request.url).endswith(SECRET)  # the request is attached, as httpx does


async def test_a_hang_up_after_the_request_is_a_remote_protocol_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with serve(hang_up) as (base, _), async_client() as client:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await post_bytes(
                fast_only(client, monkeypatch), f"{base}/robot/x?session={SECRET}", b"{}", JSON, 5
            )
    assert not isinstance(info.value, httpx.ConnectError)
    assert_no_secret(info.value, base)


async def test_a_truncated_body_is_a_remote_protocol_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async with serve(truncated) as (base, _), async_client() as client:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await post_bytes(
                fast_only(client, monkeypatch), f"{base}/robot/x?session={SECRET}", b"{}", JSON, 5
            )
    assert_no_secret(info.value, base)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await reader.read()


async def _stalls_in_the_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"errcode":')
    await writer.drain()
    await reader.read()


@pytest.mark.parametrize(
    "handler", [_silent, _stalls_in_the_body], ids=["before the answer", "in the middle of the body"]
)
async def test_silence_is_a_read_timeout(handler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve(handler) as (base, _), async_client() as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout) as info:
            await post_bytes(
                fast_only(client, monkeypatch), f"{base}/robot/x?session={SECRET}", b"{}", JSON, 0.3
            )
    assert 0.25 < time.monotonic() - started < 3
    assert_no_secret(info.value, base)


async def test_an_unsupported_scheme_is_refused_before_any_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with async_client() as client:
        with pytest.raises(httpx.UnsupportedProtocol) as info:
            await post_bytes(
                fast_only(client, monkeypatch), f"ftp://127.0.0.1/x?session={SECRET}", b"", JSON, 5
            )
    assert_no_secret(info.value, "")
    assert info.value.request.url.scheme == "ftp"


async def test_cancelling_a_post_in_flight_closes_its_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    hung_up = anyio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if await reader.read() == b"":
            hung_up.set()

    async with serve(silent) as (base, _), async_client() as client:
        with anyio.move_on_after(0.2):
            await post_bytes(fast_only(client, monkeypatch), base + "/", b"{}", JSON, 10)
        with anyio.fail_after(1):
            await hung_up.wait()


# -- the long way: any client that is not a plain async_client() ------------------------------------


async def test_a_mock_transport_client_gets_the_same_answer_through_client_post() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(418, json={"errcode": 7}, headers={"x-acs-request-id": "m-1"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        answer = await post_bytes(
            client, f"https://oapi.dingtalk.com/robot?session={SECRET}", b'{"a":1}', JSON, 5
        )

    assert isinstance(answer, FastResponse)
    assert (answer.status_code, answer.is_success, answer.json()) == (418, False, {"errcode": 7})
    assert answer.headers.get("X-ACS-Request-Id") == "m-1"
    assert [(r.method, str(r.url), r.content, r.headers["content-type"]) for r in seen] == [
        ("POST", f"https://oapi.dingtalk.com/robot?session={SECRET}", b'{"a":1}', "application/json")
    ]


async def test_the_long_way_maps_errors_as_client_post_does() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(httpx.ConnectError):
            await post_bytes(client, "https://oapi.dingtalk.com/robot", b"{}", JSON, 5)


async def test_client_level_headers_or_hooks_take_the_long_way() -> None:
    async with serve(echo_forever) as (base, _):
        async with async_client(headers={"X-Client": "1"}) as client:
            sent = (await post_bytes(client, base + "/", b"{}", JSON, 5)).json()["headers"]
        assert sent["x-client"] == "1" and sent["user-agent"].startswith("python-httpx/")

        requested: list[str] = []

        async def hook(request: httpx.Request) -> None:
            requested.append(request.url.path)

        async with async_client() as client:
            client.event_hooks = {"request": [hook]}
            await post_bytes(client, base + "/hooked", b"{}", JSON, 5)
        assert requested == ["/hooked"]


async def test_a_closed_client_refuses_as_httpx_does() -> None:
    client = async_client()
    await client.aclose()
    with pytest.raises(RuntimeError, match="client has been closed"):
        await post_bytes(client, "http://127.0.0.1:9/", b"{}", JSON, 5)


async def test_with_a_proxy_in_the_environment_client_post_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    calls: list[tuple[str, dict[str, Any]]] = []

    async def post(url: str, **kwargs: Any) -> httpx.Response:
        calls.append((url, kwargs))
        return httpx.Response(200, content=b'{"errcode":0}')

    async with async_client() as client:
        monkeypatch.setattr(client, "post", post)
        answer = await post_bytes(client, "https://oapi.dingtalk.com/robot", b"{}", JSON, 5)
    assert answer.json() == {"errcode": 0}
    assert calls == [
        (
            "https://oapi.dingtalk.com/robot",
            {"content": b"{}", "headers": JSON, "timeout": 5, "follow_redirects": False},
        )
    ]


# -- the sender on the short way -------------------------------------------------------------------


async def test_the_sender_posts_webhook_and_openapi_sends_the_short_way() -> None:
    requests: list[tuple[str, dict[str, str], bytes]] = []

    async def dingtalk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, headers, body = await read_request(reader)
            requests.append((line, headers, body))
            if "accessToken" in line:
                answer = {"accessToken": "tok-1", "expireIn": 7200}
            elif "sendBySession" in line:
                answer = {"errcode": 300001, "errmsg": "session gone"}
            else:
                answer = {"processQueryKey": "pqk-1"}
            writer.write(response(json.dumps(answer).encode(), extra="x-acs-request-id: rid-1\r\n"))
            await writer.drain()

    async with serve(dingtalk) as (base, _):
        config = DingTalkConfig(app_key="k", app_secret="s", robot_code="r", api_base=base, send_timeout_s=5)
        async with DingTalkSender(config) as sender:
            route = ReplyRoute(
                robot_code="r",
                conversation_id="cid",
                is_group=False,
                sender_staff_id="staff1",
                sender_name="Li Lei",
                session_webhook=f"{base}/robot/sendBySession?session={SECRET}",
                session_webhook_expires_at=time.time() + 3600,
            )
            result = await sender.send(route, text="你好", title="t", mention=False)

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
    webhook, _, send = requests
    assert webhook[1]["content-type"] == "application/json"
    assert webhook[1]["user-agent"].startswith("python-httpx/")  # the client's own, as before
    assert "accept-encoding" not in webhook[1] and "accept-encoding" not in send[1]  # the short way
    assert "accept-encoding" in requests[1][1]  # the token request still goes through httpx
    assert json.loads(webhook[2]) == {"msgtype": "markdown", "markdown": {"title": "t", "text": "你好"}}
    assert send[1]["x-acs-dingtalk-access-token"] == "tok-1"
    assert json.loads(send[2])["msgParam"] == '{"title":"t","text":"你好"}'


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
    from edgecrab.dingtalk.robotapi import _webhook_ok

    assert _webhook_ok(body) is ok
    if ok:
        assert error_from_response(FastResponse(200, body, {}), "sessionWebhook").code == "0"
