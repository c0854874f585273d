"""Security: who reaches the agent, where replies may go, and where secrets never show.

* People outside ``allowed_users``, senders from another organisation (the default rule), messages whose
  organisation is unknown (fail closed) and groups outside ``allowed_groups`` never reach the agent: the agent
  records every request it gets, and none of theirs is there.
* A sessionWebhook that points outside the allow-list (a canary TCP server on another loopback port, reached
  by a handful of URL spellings) is never contacted; the reply still arrives through the OpenAPI fallback.
* Secrets never show in ``config show``, in the logs of a failing agent or a refused stream, or in
  configuration errors.

The leak watch in ``conftest.py`` also scans every log record and every message the bot sent in this suite.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from edgecrab import cli, logs
from edgecrab.config import AgentConfig
from edgecrab.testing.fake_openai import FakeOpenAI
from edgecrab.testing.fakedingtalk import DROP, FakeDingTalk
from tests.component.gwkit import ScriptedAgent, quiescent
from tests.faults.conftest import SecretWatch
from tests.faults.kit import fault_config, gateway_running

pytestmark = pytest.mark.timeout(30)


# -- access -------------------------------------------------------------------------------------------------


def _asked(agent: ScriptedAgent) -> list[str]:
    return [str(r.messages[-1]["content"]) for r in agent.requests]


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["allowed_users", "own organisation", "allowed_groups"])
async def test_denied_senders_never_reach_the_agent(
    policy: str, tmp_path: Path, secret_watch: SecretWatch
) -> None:
    async with FakeDingTalk() as fake:
        secret_watch.watch(fake)
        member, listed, other = fake.users[0], fake.users[1], fake.users[2]
        outsider = next(u for u in fake.users if not u.staff_id)
        options: dict[str, Any] = {}
        if policy == "allowed_users":
            options["allowed_users"] = (listed.staff_id,)
            denied = [
                fake.dm(member, "DENIED member not on the list"),
                fake.dm(outsider, "DENIED outsider"),
                fake.group(other, "DENIED member in a group", conversation_id="cidSec1=="),
            ]
            allowed = [fake.dm(listed, "ALLOWED listed user")]
        elif policy == "own organisation":
            denied = [
                fake.dm(outsider, "DENIED outsider"),
                fake.dm(outsider, "DENIED outsider again"),
                # No organisation on either side: unknown means no (fail closed).
                fake.dm(member, "DENIED no corp ids", senderCorpId=DROP, chatbotCorpId=DROP),
                fake.dm(member, "DENIED forged corp", senderCorpId="ding-other-corp"),
            ]
            allowed = [fake.dm(member, "ALLOWED member"), fake.group(other, "ALLOWED member in group")]
        else:
            options["allowed_groups"] = ("cidAllowed==",)
            denied = [
                fake.group(member, "DENIED other group", conversation_id="cidElsewhere=="),
                fake.group(member, "DENIED not mentioned", conversation_id="cidAllowed==", at_bot=False),
            ]
            allowed = [
                fake.group(member, "ALLOWED listed group", conversation_id="cidAllowed=="),
                fake.dm(member, "ALLOWED dm"),
            ]
        fake.deliver_unmentioned = True  # let the unmentioned group message through to the gateway
        agent = ScriptedAgent()
        async with gateway_running(fault_config(fake, tmp_path, **options), agent) as gw:
            for data in denied + allowed:
                await fake.push(data)
            await fake.wait_for(lambda: len([t for t in _asked(agent) if "ALLOWED" in t]) == len(allowed), 5)
            # Every message acked and done, every reply sent: a denied one that slipped through has run.
            await quiescent(fake, gw)
        asked = _asked(agent)
        notices = [r.text for r in fake.outbound if not r.text.startswith("You said")]
    summary = (
        f"[access-{policy}] sent={len(denied) + len(allowed)} denied={len(denied)} "
        f"agent_requests={len(asked)} from_denied={sum('DENIED' in t for t in asked)} notices={len(notices)}"
    )
    print(summary)
    assert not [t for t in asked if "DENIED" in t], summary
    assert sorted(t for t in asked) == sorted(t for t in asked if "ALLOWED" in t) and len(asked) == len(
        allowed
    )
    if policy != "allowed_groups":
        assert notices, f"a denied person was not told why: {summary}"


# -- the SSRF guard -----------------------------------------------------------------------------------------


class Canary:
    """A TCP server that only counts: any connection at all means the gateway contacted it."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""
        self.port = 0

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            self.received += await asyncio.wait_for(reader.read(4096), 1.0)
        except (TimeoutError, ConnectionError):
            pass
        writer.close()


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    c = Canary()
    server = await asyncio.start_server(c._on_connect, "127.0.0.1", 0)
    c.port = server.sockets[0].getsockname()[1]
    try:
        yield c
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.anyio
async def test_session_webhook_outside_the_allow_list_is_never_contacted(
    tmp_path: Path, canary: Canary, secret_watch: SecretWatch
) -> None:
    async with FakeDingTalk() as fake:
        secret_watch.watch(fake)
        fake_host = fake.base_url.split("//", 1)[1]
        port = canary.port
        spellings = [
            f"http://127.0.0.1:{port}/robot/sendBySession?session=steal",
            f"http://localhost:{port}/robot/sendBySession?session=steal",
            f"http://127.0.0.1.:{port}/robot/sendBySession",
            f"http://{fake_host}@127.0.0.1:{port}/robot/sendBySession",
            f"http://[::ffff:127.0.0.1]:{port}/robot/sendBySession",
            f"http://2130706433:{port}/robot/sendBySession",
            f"https://127.0.0.1:{port}/robot/sendBySession",
            f"ftp://127.0.0.1:{port}/robot/sendBySession",
            f"//127.0.0.1:{port}/robot/sendBySession",
        ]
        users = fake.users[:4]
        sent = []
        async with gateway_running(fault_config(fake, tmp_path), ScriptedAgent()) as gw:
            for i, url in enumerate(spellings):
                data = fake.dm(users[i % len(users)], f"canary {i}", sessionWebhook=url)
                sent.append(data)
                await fake.push(data)
            await fake.wait_for(
                lambda: sum(r.text.startswith("You said: canary") for r in fake.outbound) >= len(spellings),
                10,
            )
            # A webhook send is tried before the OpenAPI fallback; once every reply is sent, any
            # connection to the canary has been made (it counts on accept, in this event loop).
            await quiescent(fake, gw)
        via = {r.via for r in fake.outbound if r.text.startswith("You said: canary")}
    summary = (
        f"[ssrf] sent={len(spellings)} "
        f"answered={sum(r.text.startswith('You said: canary') for r in fake.outbound)}"
        f" via={via} canary_connections={canary.connections}"
    )
    print(summary)
    assert canary.connections == 0, f"the canary was contacted: {canary.received[:200]!r}; {summary}"
    assert via == {"batchSend"}, summary


# -- secrets ------------------------------------------------------------------------------------------------

SECRETS = {
    "DINGTALK_APP_SECRET": "sec-app-secret-4d2f9a",
    "OPENAI_API_KEY": "sk-sec-openai-8e1c7b",
}


@pytest.fixture
def secret_env() -> Iterator[dict[str, str]]:
    names = ["DINGTALK_APP_KEY", *SECRETS, "EDGECRAB_CONFIG"]
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(SECRETS, DINGTALK_APP_KEY="ding-sec-key")
    os.environ.pop("EDGECRAB_CONFIG", None)
    try:
        yield dict(SECRETS)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        logs.clear_secrets()


CONFIG_WITH_SECRETS = """
platforms:
  dingtalk:
    app_key: ${DINGTALK_APP_KEY}
    app_secret: ${DINGTALK_APP_SECRET}
agent:
  type: openai
  model: m
  api_key: ${OPENAI_API_KEY}
  env:
    MY_SERVICE_TOKEN: tok-sec-env-6a7b8c
    DB_PASSWORD: pw-sec-env-1f2e3d
hooks:
  paths: []
  config:
    audit:
      api_key: sk-sec-hook-5b6c7d
      webhook_secret: wh-sec-hook-9a8b7c
"""
INLINE = ["tok-sec-env-6a7b8c", "pw-sec-env-1f2e3d", "sk-sec-hook-5b6c7d", "wh-sec-hook-9a8b7c"]


def test_config_show_and_validate_never_print_secrets(
    tmp_path: Path, secret_env: dict[str, str], capsys: pytest.CaptureFixture[str], secret_watch: SecretWatch
) -> None:
    secret_watch.secret(*secret_env.values(), *INLINE)
    path = tmp_path / "edgecrab.yaml"
    path.write_text(CONFIG_WITH_SECRETS, encoding="utf-8")
    for command in (["config", "show"], ["config", "validate"], ["--log-level", "debug", "config", "show"]):
        code = cli.main(["--config", str(path), *command])
        out, err = capsys.readouterr()
        secret_watch.text(f"edgecrab {' '.join(command)}", out + err)
        assert code == 0, err
    print("[config-show] secrets hidden in config show/validate (scanned by the leak watch)")


BAD_SECRET_CONFIGS = {
    "numeric app_secret": (
        "platforms:\n  dingtalk:\n    app_key: k\n    app_secret: 739184562\n",
        "739184562",
    ),
    "numeric token in agent.env": (
        "platforms:\n  dingtalk:\n    app_key: k\n    app_secret: s\n"
        "agent:\n  env:\n    MY_SERVICE_TOKEN: 55501234\n",
        "55501234",
    ),
    "secret env var in a wrong place": (
        "platforms:\n  dingtalk:\n    app_key: k\n    app_secret: s\n    api_base: ${DINGTALK_APP_SECRET}\n",
        SECRETS["DINGTALK_APP_SECRET"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_SECRET_CONFIGS))
def test_config_errors_never_print_secrets(
    case: str, tmp_path: Path, secret_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    text, secret = BAD_SECRET_CONFIGS[case]
    path = tmp_path / "edgecrab.yaml"
    path.write_text(text, encoding="utf-8")
    code = cli.main(["--config", str(path), "config", "validate"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert secret not in err, err


@pytest.mark.anyio
async def test_failing_agent_and_refused_stream_leak_no_secret(
    tmp_path: Path, secret_watch: SecretWatch
) -> None:
    wrong_key, wrong_secret = "sk-sec-wrong-key-2c4e6a", "wrong-app-secret-8d0f2b"
    secret_watch.secret(wrong_key, wrong_secret)
    async with FakeDingTalk() as fake, FakeOpenAI(api_key="sk-the-right-key-000") as llm:
        secret_watch.watch(fake)
        agent = AgentConfig(type="openai", base_url=llm.base_url, model="m", api_key=wrong_key, timeout_s=3)
        config = replace(fault_config(fake, tmp_path), agent=agent)
        from edgecrab.agents import build_agent

        async with gateway_running(config, build_agent(agent)):
            data = fake.dm(fake.users[0], "hello with a wrong key")  # an admin: told the detail
            await fake.push(data)
            await fake.wait_for(lambda: len(fake.messages_for(data["conversationId"])) >= 1, 5)
            reply = fake.messages_for(data["conversationId"])[0].text
        refused = replace(config.dingtalk, app_secret=wrong_secret, reconnect_max_s=0.1)
        # A secret refused before any connection worked stops start-up (issue 15): its message is checked too.
        from edgecrab.gateway import Gateway

        with anyio.fail_after(5), pytest.raises(BaseExceptionGroup) as raised:
            await Gateway(replace(config, dingtalk=refused), agent=ScriptedAgent()).run()
        error = cli.root_cause(raised.value)
        secret_watch.text("start-up refused", str(error))
        state = type(error).__name__
    print(f"[secrets] agent 401 reply={reply!r}; stream with a wrong secret: {state}")
    assert "api_key" in reply and wrong_key not in reply, reply
    assert state == "StartupError"
