"""The gateway's own port (issue 19), through the real ``edgecrab gateway start`` against the emulator
(``edgecrab sandbox``): health, readiness through a zombie socket and back, Prometheus metrics parsed with
prometheus-client's parser and checked against the traffic sent, /status, the bearer token, a busy port,
and the port closing with the gateway."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgecrab.config import SANDBOX_APP_KEY, SANDBOX_APP_SECRET
from tests.e2e.test_day_one import clean_env, edgecrab, emulator, process, wait_for_text

pytestmark = pytest.mark.timeout(60)

TOKEN = "ops-bearer-token-0123456789"
SECRET_TEXT = "zebra words nobody may scrape"
USER = "manager807"


def wait_until(what: Callable[[], Any], timeout: float = 15, step: float = 0.05) -> Any:
    """The first truthy value of ``what()``, polled (the subprocess gives no event to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout} s")
        time.sleep(step)


@contextlib.contextmanager
def gateway(tmp_path: Path, config_text: str = "") -> Iterator[tuple[httpx.Client, httpx.Client, Any]]:
    """``edgecrab gateway start`` against ``edgecrab sandbox``; yields a client for the emulator's control
    API, one for the gateway's ops port (found in the log), and the process."""
    config = tmp_path / "edgecrab.yaml"
    config.write_text(config_text or "agent:\n  type: echo\n", encoding="utf-8")
    with emulator(tmp_path) as api_base, httpx.Client(base_url=api_base, timeout=5) as fake:
        env = clean_env(
            tmp_path, DINGTALK_APP_KEY=SANDBOX_APP_KEY, DINGTALK_APP_SECRET=SANDBOX_APP_SECRET,
            DINGTALK_API_BASE=api_base,
        )
        with process(["--config", str(config), "gateway", "start"], tmp_path, env, "gateway.log") as proc:
            log = wait_for_text(tmp_path / "gateway.log", "[dingtalk] connected")
            url = re.findall(r"\[ops\] listening on (http://\S+)", log)[0]
            with httpx.Client(base_url=url, timeout=10) as ops:
                yield fake, ops, proc
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=10) == 0


def push_and_wait(fake: httpx.Client, text: str) -> str:
    data = fake.post("/_fake/push", json={"kind": "dm", "user": USER, "text": text}).json()["data"]
    cid = data["conversationId"]

    def replies() -> list[Any]:
        return list(fake.get("/_fake/outbound", params={"conversation_id": cid}).json()["outbound"])

    return str(wait_until(replies)[0]["text"])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics answer, parsed by prometheus-client's own parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted({"robot": SANDBOX_APP_KEY, **labels}.items()))), 0.0)


def test_health_metrics_and_status_follow_the_traffic(tmp_path: Path) -> None:
    with gateway(tmp_path) as (fake, ops, proc):
        assert ops.get("/healthz").json() == {"status": "ok"}
        assert push_and_wait(fake, SECRET_TEXT).startswith("🦀 echo: " + SECRET_TEXT)
        # A redelivery of the same message: acked, counted, not answered again.
        twice = {"kind": "dm", "user": USER, "text": "twice", "overrides": {"msgId": "dup1"}}
        fake.post("/_fake/push", json=twice).raise_for_status()
        fake.post("/_fake/push", json=twice).raise_for_status()

        def scraped() -> dict[Any, float] | None:
            answer = ops.get("/metrics")
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
            assert SECRET_TEXT not in answer.text and USER not in answer.text
            found = samples(answer.text)
            settled = value(found, "edgecrab_reply_chunks_sent_total") == 2  # both messages answered
            return found if settled and value(found, "edgecrab_duplicates_total") == 1 else None

        found = wait_until(scraped)
        topic = "/v1.0/im/bot/messages/get"
        assert value(found, "edgecrab_messages_received_total") == 2  # the first message, then dup1 once
        assert value(found, "edgecrab_stream_frames_total", topic=topic) == 3
        assert value(found, "edgecrab_ack_seconds_count") == 3
        assert value(found, "edgecrab_sends_total", route="webhook", result="ok", code="") >= 1
        assert value(found, "edgecrab_send_seconds_count", route="webhook") >= 1
        assert value(found, "edgecrab_dingtalk_api_calls_total", api="connections/open") == 1
        assert value(found, "edgecrab_agent_seconds_count", outcome="ok") >= 1
        assert value(found, "edgecrab_stream_connected") == 1
        assert value(found, "edgecrab_runs_active") == 0

        status = ops.get("/status").json()
        assert status["robot"] == SANDBOX_APP_KEY and status["connection"]["state"] == "connected"
        assert status["ops"]["port"] == int(str(ops.base_url).rsplit(":", 1)[1].rstrip("/"))
        assert status["messages_received"] == 2 and status["queue_depth"] == 0
        assert status["replica"] and value(found, "edgecrab_replica_info", replica=status["replica"]) == 1
        shown = ops.get("/status").text
        assert SECRET_TEXT not in shown and SANDBOX_APP_SECRET not in shown and USER not in shown

        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        with pytest.raises(httpx.ConnectError):  # the port closed with the gateway
            ops.get("/healthz")


def test_readiness_goes_503_on_a_zombie_socket_and_back_to_200(tmp_path: Path) -> None:
    config = (
        "agent:\n  type: echo\nplatforms:\n  dingtalk:\n"
        "    idle_timeout_s: 2\n    reconnect_initial_s: 0.2\n    reconnect_max_s: 0.5\n"
    )
    with gateway(tmp_path, config) as (fake, ops, _):
        fake.post("/_fake/ping", json={}).raise_for_status()  # a frame: the connection is fresh
        ready = wait_until(lambda: ops.get("/readyz"))
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"stream": "ok", "token": "ok", "store": "ok", "sends": "ok"}

        fake.post("/_fake/settings", json={"zombie": True}).raise_for_status()
        zombie = wait_until(lambda: (r := ops.get("/readyz")).status_code == 503 and r)
        body = zombie.json()
        assert body["ready"] is False and body["failing"] == ["stream"], body
        assert body["checks"]["stream"].startswith(("no frame for", "not connected")), body
        assert ops.get("/healthz").status_code == 200  # alive, though deaf

        fake.post("/_fake/settings", json={"zombie": False}).raise_for_status()
        assert push_and_wait(fake, "back again").startswith("🦀 echo: back again")
        assert wait_until(lambda: ops.get("/readyz").status_code == 200)


def test_the_token_guards_metrics_and_status_but_not_the_probes(tmp_path: Path) -> None:
    config = f"agent:\n  type: echo\nhttp:\n  token: {TOKEN}\n"
    with gateway(tmp_path, config) as (_, ops, _):
        for path in ("/metrics", "/status"):
            assert ops.get(path).status_code == 401
            assert ops.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert ops.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert ops.get("/healthz").status_code == 200
        assert ops.get("/readyz").status_code in (200, 503)
        assert TOKEN not in (tmp_path / "gateway.log").read_text()


def test_a_busy_port_is_a_start_up_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "edgecrab.yaml"
        config.write_text("agent:\n  type: echo\n", encoding="utf-8")
        env = clean_env(tmp_path, DINGTALK_WEBHOOK_PORT=str(port))
        done = edgecrab("--config", str(config), "gateway", "start", "--sandbox", "--port", "0",
                        cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    assert f"the ops port 127.0.0.1:{port} cannot be opened" in done.stderr
    assert "Traceback" not in done.stderr


def test_card_mode_exports_card_counts(tmp_path: Path) -> None:
    config = "agent:\n  type: echo\nplatforms:\n  dingtalk:\n    reply_mode: card\n"
    with gateway(tmp_path, config) as (fake, ops, proc):
        body = {"kind": "dm", "user": USER, "text": "a card, please"}
        fake.post("/_fake/push", json=body).raise_for_status()

        def finished() -> list[Any]:
            cards = fake.get("/_fake/cards").json()["cards"]
            return [c for c in cards if c["flow_status"] == "3"]  # DingTalk's "finished"

        wait_until(finished)

        def scraped() -> dict[Any, float] | None:
            found = samples(ops.get("/metrics").text)
            return found if value(found, "edgecrab_cards_opened_total") == 1 else None

        found = wait_until(scraped)
        assert value(found, "edgecrab_card_api_calls_total") >= 3  # open, at least one frame, the finish
        assert value(found, "edgecrab_cards_markdown_fallback") == 0
        assert value(found, "edgecrab_cards_recovered_total") == 0
