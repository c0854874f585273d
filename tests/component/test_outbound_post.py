"""``edgecrab.outbound.post``: a reply chunk's POST, straight through the client's transport when nothing
the client would add applies, else ``client.post``; the server sees the same request either way.

Against a real aiohttp server on loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from edgecrab.outbound import http_client, post


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({**request.headers, "body": (await request.read()).decode(), "path": request.path_qs})
        if request.path == "/moved":
            raise web.HTTPFound("/elsewhere")
        response = web.json_response({"errcode": 0})
        response.set_cookie("sid", "secret", path="/")
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


def _comparable(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower() not in ("host",)}


@pytest.mark.anyio
async def test_post_sends_what_client_post_sends(server: tuple[str, list[dict[str, str]]]) -> None:
    base, seen = server
    headers = {"Content-Type": "application/json", "x-acs-dingtalk-access-token": "tok"}
    async with http_client(timeout=5, headers={"User-Agent": "edgecrab-test"}) as client:
        via_client = await client.post(f"{base}/send?session=s1", content=b'{"a":1}', headers=headers)
        direct = await post(client, httpx.URL(f"{base}/send?session=s1"), content=b'{"a":1}', headers=headers,
                            step_timeout_s=5)
        again = await post(client, f"{base}/send?session=s1", content=b'{"a":1}', headers=headers,
                           step_timeout_s=5)
        assert list(client.cookies.jar) == []
    assert _comparable(seen[0]) == _comparable(seen[1]) == _comparable(seen[2])
    assert seen[1]["User-Agent"] == "edgecrab-test"
    assert "Cookie" not in seen[2]
    for response in (direct, again):
        assert response.status_code == via_client.status_code == 200
        assert response.json() == {"errcode": 0}
        assert response.request.url == httpx.URL(f"{base}/send?session=s1")
        assert response.is_closed


@pytest.mark.anyio
async def test_post_never_follows_a_redirect(server: tuple[str, list[dict[str, str]]]) -> None:
    base, seen = server
    async with http_client(timeout=5) as client:
        response = await post(client, f"{base}/moved", content=b"{}", headers={}, step_timeout_s=5)
    assert response.status_code == 302
    assert [s["path"] for s in seen] == ["/moved"]


@pytest.mark.anyio
async def test_post_goes_through_a_proxy_named_in_the_environment(
    server: tuple[str, list[dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client reads the proxy variables (``trust_env``); the loopback server plays the proxy."""
    base, seen = server
    monkeypatch.setenv("HTTP_PROXY", base)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with http_client(timeout=5) as client:
        response = await post(client, "http://dingtalk.invalid/send", content=b"{}", headers={},
                              step_timeout_s=5)
    assert response.status_code == 200
    assert seen[0]["Host"] == "dingtalk.invalid"


@pytest.mark.anyio
async def test_post_runs_the_clients_event_hooks(server: tuple[str, list[dict[str, str]]]) -> None:
    base, _seen = server
    seen_by_hooks: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        seen_by_hooks.append(f"request {request.url.path}")

    async def on_response(response: httpx.Response) -> None:
        seen_by_hooks.append(f"response {response.status_code} {response.request.url.path}")

    hooks = {"request": [on_request], "response": [on_response]}
    async with http_client(timeout=5, event_hooks=hooks) as client:
        await client.post(f"{base}/a", content=b"{}")
        response = await post(client, f"{base}/b", content=b"{}", headers={}, step_timeout_s=5)
    assert response.status_code == 200
    assert seen_by_hooks == ["request /a", "response 200 /a", "request /b", "response 200 /b"]


@pytest.mark.anyio
async def test_post_on_a_closed_client_fails_as_the_client_does() -> None:
    client = http_client(timeout=5)
    await client.aclose()
    with pytest.raises(RuntimeError, match="client has been closed"):
        await post(client, "http://127.0.0.1:9/send", content=b"{}", headers={}, step_timeout_s=5)


@pytest.mark.anyio
async def test_post_failure_names_its_request() -> None:
    async with http_client(timeout=5) as client:
        with pytest.raises(httpx.TransportError) as caught:
            await post(client, "http://127.0.0.1:9/send", content=b"{}", headers={}, step_timeout_s=5)
    assert caught.value.request.url == httpx.URL("http://127.0.0.1:9/send")
