"""Outbound clients keep no cookies: a ``Set-Cookie`` from one answer never rides along on a later call.

Against a real aiohttp server on loopback; before :class:`edgecrab.outbound.NoCookies` the second and third
requests carried ``sid=secret``.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from edgecrab.outbound import http_client


@pytest.mark.anyio
async def test_cookies_set_by_a_server_are_never_sent_back() -> None:
    cookies_seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        cookies_seen.append(request.headers.get("Cookie"))
        response = web.json_response({"errcode": 0})
        response.set_cookie("sid", "secret", path="/")
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with http_client(timeout=5) as client:
            for path in ("/a", "/a", "/b"):
                response = await client.post(f"http://127.0.0.1:{port}{path}", content=b"{}")
                assert response.headers["Set-Cookie"].startswith("sid=secret")
            assert list(client.cookies.jar) == []
    finally:
        await runner.cleanup()
    assert cookies_seen == [None, None, None]
