"""The command agent gets only what it needs (issue 16), through ``edgecrab gateway start`` as a subprocess
against the fake DingTalk: the child's environment is the allow-list plus ``agent.env``; its stderr reaches
the log, never the chat; and a secret it prints anyway (handed over on purpose through ``agent.env``)
reaches the chat as ``***``, because every outbound text passes the logs' redaction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from edgecrab.testing.fakedingtalk import FakeApp, FakeDingTalk

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SECRET = "canary-app-secret-5d1f0e9b"
LLM_KEY = "sk-canary-llm-key-0b7c2a"
INHERITED = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"}  # edgecrab.agents.command.INHERITED

AGENT = r"""
import json, os, sys
text = json.load(sys.stdin)["messages"][-1]["content"]
with open(os.environ["ENV_DUMP"], "w") as dump:
    json.dump(dict(os.environ), dump)
sys.stderr.write("stderr-only diagnostic\n")
if text == "env":
    print("\n".join(f"{k}={v}" for k, v in sorted(os.environ.items())))
elif text == "fail":
    sys.exit(3)
"""


def write_config(tmp: Path, fake: FakeDingTalk) -> Path:
    (tmp / "agent.py").write_text(AGENT, encoding="utf-8")
    config = tmp / "edgecrab.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML; json.dumps quotes every path safely
            {
                "platforms": {
                    "dingtalk": {
                        "app_key": "${DINGTALK_APP_KEY}",
                        "app_secret": "${DINGTALK_APP_SECRET}",
                        "api_base": fake.base_url,
                        "chunk_interval_ms": 0,
                        "max_message_length": 100000,
                    }
                },
                "agent": {
                    "type": "command",
                    "command": [sys.executable, str(tmp / "agent.py")],
                    "env": {"ENV_DUMP": str(tmp / "env.json"), "ON_PURPOSE": "${DINGTALK_APP_SECRET}"},
                    "timeout_s": 20,
                },
                "storage": {"url": f"sqlite:///{tmp / 'state.db'}"},
            }
        ),
        encoding="utf-8",
    )
    return config


async def test_the_command_agent_sees_no_gateway_secret_and_the_chat_gets_none(tmp_path: Path) -> None:
    async with FakeDingTalk(apps=[FakeApp("canary-app-key", SECRET)]) as fake:
        config = write_config(tmp_path, fake)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "EDGECRAB_"))}
        env.update(
            DINGTALK_APP_KEY="canary-app-key",
            DINGTALK_APP_SECRET=SECRET,
            OPENAI_API_KEY=LLM_KEY,  # in the gateway's environment, as on a real host
            EDGECRAB_HOME=str(tmp_path),
        )
        log_path = tmp_path / "gateway.log"
        with open(log_path, "wb") as log:  # noqa: ASYNC230 - the child's log file, opened once
            proc = await anyio.open_process(
                [sys.executable, "-m", "edgecrab", "--config", str(config), "gateway", "start"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
            )
        try:
            await fake.wait_for(lambda: len(fake.connections) >= 1, 15)
            user = fake.users[0]
            cid = fake.dm(user, "x")["conversationId"]
            await fake.push(fake.dm(user, "env"))
            await fake.wait_for(lambda: len(fake.messages_for(cid)) >= 1, 15)
            seen = json.loads((tmp_path / "env.json").read_text())
            await fake.push(fake.dm(user, "fail"))
            await fake.wait_for(lambda: len(fake.messages_for(cid)) >= 2, 15)
        finally:
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                await proc.wait()
    log_text = log_path.read_text(errors="replace")
    env_reply, failure = (m.text for m in fake.messages_for(cid))
    # The child: the allow-list, agent.env and its attachments folder, nothing else; the secret only where
    # agent.env put it.
    allowed = {*INHERITED, "EDGECRAB_ATTACHMENTS_DIR", "ENV_DUMP", "ON_PURPOSE"}
    assert set(seen) <= allowed, sorted(set(seen) - set(INHERITED))
    assert "PATH" in seen and "DINGTALK_APP_SECRET" not in seen and "OPENAI_API_KEY" not in seen
    assert [k for k, v in seen.items() if SECRET in v or LLM_KEY in v] == ["ON_PURPOSE"]
    # The chat: the environment it printed, the secret as ***; the failure without its stderr.
    assert "ON_PURPOSE=***" in env_reply and "ENV_DUMP=" in env_reply, env_reply
    assert SECRET not in env_reply and LLM_KEY not in env_reply
    assert "failed (exit 3)" in failure, failure
    assert "stderr-only diagnostic" not in env_reply + failure
    # The log: the stderr is there, the secret is not.
    assert "stderr-only diagnostic" in log_text
    assert SECRET not in log_text
