"""``python -m bench --smoke`` still runs end to end: every scenario, every contender, numbers, a JSON file.

Benchmarks are not timed unit tests: a shared CI machine proves nothing about speed, so this never asks
for a pass. It asks that every scenario ran every contender and measured something (answers, rates, CPU,
latencies, memory), that each goal is the one in ``bench.plan``, and that each verdict follows from the
numbers next to it (a verdict computed wrongly, or a line without numbers, fails here).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.plan import (
    ACK_P99_GOAL_S,
    CARD_FIRST_TEXT_GOAL_S,
    CHUNKING_GOAL_S,
    ECHO_SLOW_VS_SDK_GOAL,
    ECHO_VS_SDK_GOAL,
    IDLE_RSS_GOAL_MB,
    PICTURE_TO_AGENT_GOAL_S,
    SESSION_GOAL_KB,
    SMOKE,
)

ROOT = Path(__file__).resolve().parents[2]
LINE_IDS = {"1a", "1b", "2", "3", "4a", "4b", "5", "6a", "6b", "6c", "7a", "7b", "8a", "8b", "8c"}
SCENARIOS = {
    "echo_rest_instant",
    "echo_rest_50ms",
    "ack_latency",
    "burst",
    "memory",
    "chunking",
    "cards",
    "media",
    "replicas",
}
CONTENDERS = {"edgecrab", "sdk", "raw"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def measured(value: Any) -> bool:
    """A CPU time read from /proc in clock ticks (10 ms): a contender that answered two messages of a smoke
    run may well have used less than one tick, so zero is a measurement too; a missing or negative one not."""
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out), "--keep", str(tmp / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8")), proc.stdout


def test_every_scenario_ran_every_contender(smoke: tuple[dict[str, Any], str]) -> None:
    doc, stdout = smoke
    assert doc["meta"]["mode"] == "smoke"
    assert set(doc["scenarios"]) == SCENARIOS
    assert {line["id"] for line in doc["lines"]} == LINE_IDS
    for name in ("echo_rest_instant", "echo_rest_50ms", "ack_latency", "burst", "memory"):
        assert set(doc["scenarios"][name]["contenders"]) == CONTENDERS, name
    # The markdown table is the user-facing output: one row per line, with a verdict and a measured value.
    rows = [row for row in stdout.splitlines() if row.startswith("| ") and row.endswith("** |")]
    assert len(rows) == len(LINE_IDS), stdout
    assert all(row.endswith(("| **pass** |", "| **miss** |")) for row in rows), rows
    assert doc["summary"]["pass"] + doc["summary"]["miss"] == len(LINE_IDS)


def test_every_contender_produced_numbers(smoke: tuple[dict[str, Any], str]) -> None:
    s = smoke[0]["scenarios"]
    for name in ("echo_rest_instant", "echo_rest_50ms", "burst"):
        for contender, r in s[name]["contenders"].items():
            where = f"{name}/{contender}: {r}"
            assert r["answered"] > 0 and positive(r["messages_per_s"]), where
            assert positive(r["p50_s"]) and measured(r["cpu_s"]), where
    for contender, r in s["echo_rest_instant"]["contenders"].items():  # CPU per message, every contender
        assert positive(r["cpu_ms_per_message"]), f"{contender}: {r}"
    for contender, r in s["ack_latency"]["contenders"].items():  # the SDK bot may ack only a few in time
        assert r["sent"] == SMOKE.ack_messages, f"{contender}: {r}"
        assert r["acked"] > 0 and positive(r["max_s"]), f"{contender}: {r}"
    edgecrab = s["ack_latency"]["contenders"]["edgecrab"]
    assert edgecrab["acked"] == edgecrab["sent"] and positive(edgecrab["p99_s"]), edgecrab
    edgecrab = s["burst"]["contenders"]["edgecrab"]
    assert edgecrab["complete"] and positive(edgecrab["wall_s"]), edgecrab
    for contender, r in s["memory"]["contenders"].items():
        assert positive(r["idle_rss_kb"]) and 0 <= r["idle_cpu_percent"] <= 200, f"{contender}: {r}"
    edgecrab = s["memory"]["contenders"]["edgecrab"]
    assert edgecrab["complete"] and edgecrab["sessions"] == SMOKE.sessions, edgecrab
    assert isinstance(edgecrab["per_session_bytes"], int | float), edgecrab
    assert positive(s["chunking"]["best_s"])
    cards = s["cards"]
    for kind in ("typical", "instant"):  # every reply showed text, and the figure is a time
        first = cards["first_text"][kind]
        assert len(first["values_s"]) == SMOKE.card_first_samples and positive(first["p50_s"]), first
    for who in ("edgecrab", "peer"):
        r = cards["many_cards"][who]
        assert r["cards"] == SMOKE.card_streams and r["finished"] == r["exact"] == SMOKE.card_streams, r
        assert positive(r["calls_per_reply_mean"]) and r["qps_limit_errors"] >= 0, r
    ack = cards["ack_while_streaming"]
    assert ack["acked"] == ack["sent"] == SMOKE.card_ack_messages and positive(ack["p99_s"]), ack
    assert ack["cards_seen"] >= SMOKE.card_streams, ack
    media = s["media"]
    for kind in ("one_by_one", "one_by_one_no_window"):  # every picture reached the agent as a picture
        r = media[kind]
        assert r["seen_by_agent"] == r["answered"] == SMOKE.picture_samples, r
        assert all(size > 0 for size in r["image_bytes_seen"]) and positive(r["to_agent_max_s"]), r
        assert all(t > 0 for t in r["to_agent_s"]), r  # after its callback: the clocks are one
    burst = media["burst"]
    assert burst["answered"] == burst["seen_by_agent"] == SMOKE.picture_burst, burst
    assert burst["dms_sent"] > 0 and burst["acked"] == burst["sent"] and positive(burst["ack_p99_s"]), burst


def test_goals_are_the_plans_and_verdicts_follow_from_the_numbers(smoke: tuple[dict[str, Any], str]) -> None:
    doc = smoke[0]
    lines = {line["id"]: line for line in doc["lines"]}
    s = doc["scenarios"]

    def contender(name: str, who: str = "edgecrab") -> dict[str, Any]:
        return dict(s[name]["contenders"][who])

    echo = {who: contender("echo_rest_instant", who)["messages_per_s"] for who in CONTENDERS}
    slow = {who: contender("echo_rest_50ms", who)["messages_per_s"] for who in CONTENDERS}
    ack_p99 = contender("ack_latency")["p99_s"]
    burst = contender("burst")
    memory = contender("memory")
    many = s["cards"]["many_cards"]["edgecrab"]
    card_ack = s["cards"]["ack_while_streaming"]
    pictures, picture_burst = s["media"]["one_by_one"], s["media"]["burst"]
    replicas = s["replicas"]
    expected = {
        "1a": (f"≥ {ECHO_VS_SDK_GOAL:g}× SDK", echo["edgecrab"] >= ECHO_VS_SDK_GOAL * echo["sdk"]),
        "1b": (f"≥ {ECHO_SLOW_VS_SDK_GOAL:g}× SDK", slow["edgecrab"] >= ECHO_SLOW_VS_SDK_GOAL * slow["sdk"]),
        "2": (f"p99 < {ACK_P99_GOAL_S * 1000:g} ms", ack_p99 is not None and ack_p99 < ACK_P99_GOAL_S),
        "3": (
            f"≤ {SMOKE.burst_goal_s:g} s",
            burst["complete"] and burst["wall_s"] <= SMOKE.burst_goal_s,
        ),
        "4a": (f"≤ {IDLE_RSS_GOAL_MB:g} MB", memory["idle_rss_kb"] / 1024 <= IDLE_RSS_GOAL_MB),
        "4b": (
            f"≤ {SESSION_GOAL_KB:g} KB",
            memory["complete"] and memory["per_session_bytes"] / 1024 <= SESSION_GOAL_KB,
        ),
        "5": (f"< {CHUNKING_GOAL_S * 1000:g} ms", s["chunking"]["best_s"] < CHUNKING_GOAL_S),
        "6a": (
            f"p50 ≤ {CARD_FIRST_TEXT_GOAL_S * 1000:g} ms",
            s["cards"]["first_text"]["typical"]["p50_s"] <= CARD_FIRST_TEXT_GOAL_S,
        ),
        "6b": (
            "0 QpsLimit",
            many["qps_limit_errors"] == 0
            and many["exact"] == SMOKE.card_streams
            and many["calls_per_reply_max"] <= many["calls_goal"],
        ),
        "6c": (
            f"p99 < {ACK_P99_GOAL_S * 1000:g} ms",
            card_ack["p99_s"] < ACK_P99_GOAL_S and card_ack["acked"] == card_ack["sent"],
        ),
        "7a": (
            f"max ≤ {PICTURE_TO_AGENT_GOAL_S * 1000:g} ms",
            pictures["to_agent_max_s"] <= PICTURE_TO_AGENT_GOAL_S,
        ),
        "7b": (
            f"p99 < {ACK_P99_GOAL_S * 1000:g} ms",
            picture_burst["ack_p99_s"] < ACK_P99_GOAL_S and picture_burst["answered"] == SMOKE.picture_burst,
        ),
        "8a": (f"p99 < {ACK_P99_GOAL_S * 1000:g} ms", replicas["ack"]["p99_s"] < ACK_P99_GOAL_S),
        "8b": ("every message answered", replicas["echo_1"]["complete"] and replicas["echo_3"]["complete"]),
        "8c": ("measured", replicas["round_trips_per_message"] > 0),
    }
    for line_id, (goal, ok) in expected.items():
        line = lines[line_id]
        assert goal in line["goal"], (line_id, line["goal"])
        assert line["verdict"] == ("pass" if ok else "miss"), (line_id, line["verdict"], line["detail"])
        assert line["detail"], line_id  # the measured value shows next to the goal
    assert "raw" not in lines["1a"]["goal"] and "% of raw" in lines["1a"]["detail"]  # reported, not judged
    assert all(f"{who} " in lines["1a"]["detail"] for who in CONTENDERS), lines["1a"]["detail"]
    assert "peer model" in lines["6b"]["detail"] and "instant first token" in lines["6a"]["detail"]
    assert "merge_window_ms 0" in lines["7a"]["detail"] and "answered" in lines["7b"]["detail"]


def test_the_redis_scenario_measured_one_and_three_replicas(smoke: tuple[dict[str, Any], str]) -> None:
    r = smoke[0]["scenarios"]["replicas"]
    assert r["ack"]["acked"] == r["ack"]["sent"] == SMOKE.ack_messages and positive(r["ack"]["p99_s"]), r
    for count in (1, 3):
        echo = r[f"echo_{count}"]
        assert echo["answered"] == SMOKE.echo_messages and positive(echo["messages_per_s"]), echo
    assert positive(r["round_trips_per_message"]) and positive(r["script_commands_per_message"]), r
