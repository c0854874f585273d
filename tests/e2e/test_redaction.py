"""Redaction covers what users really write (issue 16): URL userinfo, secret query values and the values of
secret-named ``${VAR}`` references are hidden by ``edgecrab config show``, in the log (the OpenAI agent's
``base_url`` with a password, in its WARNING lines) and in the chat (an upstream error that echoes them).
Through the CLI as a subprocess, against the fake DingTalk and a small loopback model server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from edgecrab.testing.fakedingtalk import FakeDingTalk

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

URL_PASSWORD = "url-pass-canary-7f3a"
QUERY_KEY = "query-key-canary-91bd"
DB_PASS = "db-pass-canary-5e20"
LLM_TOKEN = "llm-token-canary-c4d8"
HOOK_TOKEN = "hook-token-canary-03aa"
CANARIES = (URL_PASSWORD, QUERY_KEY, DB_PASS, LLM_TOKEN, HOOK_TOKEN)


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
    env.update(DB_PASS=DB_PASS, LLM_TOKEN=LLM_TOKEN, EDGECRAB_HOME=str(tmp), **extra)
    return env


def test_config_show_hides_url_credentials_query_secrets_and_secret_named_references(tmp_path: Path) -> None:
    config = tmp_path / "edgecrab.yaml"
    config.write_text(
        "platforms:\n  dingtalk:\n    app_key: key-id-0001\n    app_secret: app-secret-0001\n"
        f"    api_base: https://gw:{URL_PASSWORD}@dingtalk.example.com/?key={QUERY_KEY}\n"
        "agent:\n  type: openai\n  model: m\n"
        f"  base_url: https://llm.example.com/v1?access_token={QUERY_KEY}&region=cn\n"
        "  env:\n    DATABASE: postgres://app:${DB_PASS}@db.example.com/chat\n    PLAIN: ${LLM_TOKEN}\n"
        "hooks:\n  config:\n    audit:\n"
        f"      endpoint: https://{HOOK_TOKEN}@audit.example.com/in?sign={HOOK_TOKEN}&token={HOOK_TOKEN}\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "edgecrab", "--config", str(config), "config", "show"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for canary in CANARIES:
        assert canary not in out, (canary, out)
    # What is not secret still reads as written.
    assert "https://gw:***@dingtalk.example.com/?key=***" in out
    assert "https://llm.example.com/v1?access_token=***&region=cn" in out
    assert "postgres://app:***@db.example.com/chat" in out
    assert "PLAIN: '***'" in out or "PLAIN: ***" in out
    assert "https://***@audit.example.com/in?sign=***&token=***" in out


async def _upstream(tmp: Path) -> tuple[web.AppRunner, str, list[int]]:
    """A model server that fails once (500) and then refuses the request (400) with an error message
    echoing the URL it was called on (with the password) and the bearer token."""
    calls: list[int] = []

    async def chat(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) == 1:
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        echoed = (
            f"bad request to https://bot:{URL_PASSWORD}@127.0.0.1/v1?key={QUERY_KEY} "
            f"with {request.headers.get('Authorization')}"
        )
        return web.json_response({"error": {"message": echoed}}, status=400)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://bot:{URL_PASSWORD}@127.0.0.1:{port}/v1", calls


async def test_base_url_userinfo_stays_out_of_warnings_and_an_echoed_credential_out_of_the_chat(
    tmp_path: Path,
) -> None:
    runner, base_url, calls = await _upstream(tmp_path)
    try:
        async with FakeDingTalk() as fake:
            app = fake.apps[0]
            config = tmp_path / "edgecrab.yaml"
            config.write_text(
                json.dumps({
                    "platforms": {"dingtalk": {
                        "app_key": "${DINGTALK_APP_KEY}", "app_secret": "${DINGTALK_APP_SECRET}",
                        "api_base": fake.base_url, "chunk_interval_ms": 0,
                    }},
                    # The first answer (500) is retried: a WARNING naming the URL it called.
                    "agent": {"type": "openai", "base_url": base_url, "api_key": "${LLM_TOKEN}", "model": "m",
                              "max_retries": 1, "timeout_s": 20},
                    "storage": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
                }),
                encoding="utf-8",
            )
            env = _env(tmp_path, DINGTALK_APP_KEY=app.client_id, DINGTALK_APP_SECRET=app.client_secret)
            log_path = tmp_path / "gateway.log"
            with open(log_path, "wb") as log:  # noqa: ASYNC230 - the child's log file, opened once
                proc = await anyio.open_process(
                    [sys.executable, "-m", "edgecrab", "--config", str(config), "gateway", "start"],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                )
            try:
                await fake.wait_for(lambda: len(fake.connections) >= 1, 15)
                data = fake.dm(fake.users[0], "hello")
                await fake.push(data)
                await fake.wait_for(lambda: len(fake.messages_for(data["conversationId"])) >= 1, 15)
            finally:
                proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(10):
                    await proc.wait()
    finally:
        await runner.cleanup()
    log_text = log_path.read_text(errors="replace")
    chat = "\n".join(m.text for m in fake.messages_for(data["conversationId"]))
    assert len(calls) == 2
    # The agent calls the URL without its userinfo (credentials go in a header), so no line can hold it.
    assert "WARNING [agent] POST http://127.0.0.1:" in log_text, log_text[-3000:]
    assert "rejected the request (HTTP 400)" in chat and "bot:***@127.0.0.1" in chat, chat
    assert "key=***" in chat and "Bearer ***" in chat, chat
    for canary in (URL_PASSWORD, QUERY_KEY, LLM_TOKEN):
        assert canary not in log_text, (canary, log_text[-3000:])
        assert canary not in chat, (canary, chat)
