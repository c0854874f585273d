"""Soak: ``edgecrab gateway start`` under mixed traffic and periodic faults for a long time (not run in CI).

``python bench/soak.py [--minutes 30] [--rate 10] [--json PATH]`` starts the fake DingTalk and a fake
OpenAI-compatible server in this process, the gateway as a subprocess (the CLI, as a user runs it), then
for ``--minutes`` sends a mix of messages while injecting one fault every ``--fault-every`` seconds, in turn:

    stream socket aborted | server disconnect frame | 20 % of REST sends failing (5xx, 429, 403 QpsLimit)
    for a while | access tokens and sessionWebhooks expired | duplicate deliveries | the agent hanging,
    sending garbage or answering 500 for a few conversations

Traffic: DMs from many users, group @-messages, long replies (several chunks), commands, a picture and an
unknown message type, people outside the organisation. Every DM and group text carries a unique word, so at
the end each one is counted: answered once, lost, or answered twice.

Every ``--sample-every`` seconds it samples the gateway process: resident memory (``VmRSS``), open file
descriptors (``/proc/<pid>/fd``) and threads. It prints a table as it goes and a summary at the end (first
and last samples after warm-up, the RSS slope in MB/hour, the fd range), and writes everything as JSON.
Both should be flat: a slope near zero and an fd range of a few.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecrab.testing import fake_openai  # noqa: E402
from edgecrab.testing.fake_openai import FakeOpenAI  # noqa: E402
from edgecrab.testing.fakedingtalk import FakeDingTalk, FakeUser  # noqa: E402
from edgecrab.testing.gatewayconfig import write_gateway_config  # noqa: E402

WORD = re.compile(r"s\d{7}k")
BREAK = "BREAKME"
LLM_KEY = "sk-soak-llm-key-5c1d9e"
FAULTS = ("abort", "disconnect", "rest_failures", "expire_credentials", "duplicates", "agent_failures")


class SoakOpenAI(FakeOpenAI):
    """Answers normally, except for questions containing ``BREAKME``: then hang, garbage or 500."""

    bad_modes = ("hang", "garbage", "error500")

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        messages = body.get("messages") or [{}]
        last = str(messages[-1].get("content", ""))
        if BREAK not in last:
            return await super()._answer(request, body)
        mode = self.bad_modes[len(last) % len(self.bad_modes)]
        if mode == "hang":
            await self._sleep(request, float("inf"))
        if mode == "garbage":
            return web.Response(body=b"data: <html>502{{{\n\n", content_type="text/event-stream")
        return fake_openai.error_response(500, "soak: injected failure", "server_error")


def reply_for(messages: list[dict[str, Any]]) -> str:
    """Echo the question; ``long`` questions get a reply of several chunks."""
    question = str(messages[-1].get("content", "")) if messages else ""
    if "long" in question:
        return f"You said: {question}\n\n" + "\n\n".join(
            f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 12 for i in range(8)
        )
    return f"You said: {question}"


def write_config(folder: Path, fake: FakeDingTalk, llm: FakeOpenAI) -> Path:
    return write_gateway_config(
        folder / "edgecrab.yaml", api_base=fake.base_url, llm_base_url=llm.base_url,
        llm_key_var="SOAK_LLM_KEY", model="soak-model",
        dingtalk={"max_message_length": 1000, "chunk_interval_ms": 100, "reconnect_initial_s": 0.2,
                  "reconnect_max_s": 2, "healthy_after_s": 5, "webhook_expiry_margin_s": 0},
        agent={"timeout_s": 3, "max_retries": 1},
        sessions={"queue_limit": 50, "history_limit": 10},
    )


def sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
    }


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if var == 0 else sum((t - mx) * (v - my) for t, v in points) / var * 3600


class Soak:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        self.rng = random.Random(args.seed)
        self.expected: dict[str, str] = {}  # word -> kind
        self.sent: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.samples: list[dict[str, Any]] = []
        self.n = 0
        self.proc: subprocess.Popen[bytes] | None = None

    # -- traffic --------------------------------------------------------------------------------------
    def next_word(self) -> str:
        self.n += 1
        return f"s{self.n:07d}k"

    async def send_one(self, fake: FakeDingTalk, users: list[FakeUser], outsider: FakeUser) -> None:
        roll = self.rng.random()
        user = self.rng.choice(users)
        if roll < 0.65:
            w = self.next_word()
            data = fake.dm(user, f"question {w}")
            self.expected[w] = "dm"
        elif roll < 0.80:
            w = self.next_word()
            data = fake.group(
                user, f"group question {w}", conversation_id=f"cidSoak{self.rng.randrange(3)}=="
            )
            self.expected[w] = "group"
        elif roll < 0.87:
            w = self.next_word()
            data = fake.dm(user, f"long question {w}")
            self.expected[w] = "long"
        elif roll < 0.92:
            data = fake.dm(user, self.rng.choice(["/status", "/usage", "/help", "/new"]))
        elif roll < 0.96:
            data = fake.picture(user) if roll < 0.94 else fake.unknown(user)
        else:
            data = fake.dm(outsider, "let me in")
        kind = (
            "counted"
            if roll < 0.87
            else "command"
            if roll < 0.92
            else "media/unknown"
            if roll < 0.96
            else "outsider"
        )
        self.sent[kind] += 1
        await fake.push(data)

    async def traffic(
        self, fake: FakeDingTalk, users: list[FakeUser], outsider: FakeUser, until: float
    ) -> None:
        interval = 1.0 / self.args.rate
        while time.monotonic() < until:
            await self.send_one(fake, users, outsider)
            await asyncio.sleep(interval * self.rng.uniform(0.5, 1.5))

    # -- faults ---------------------------------------------------------------------------------------
    async def fault(self, fake: FakeDingTalk, name: str, users: list[FakeUser]) -> None:
        self.faults[name] += 1
        if name == "abort":
            await fake.abort()
        elif name == "disconnect":
            await fake.disconnect()
        elif name == "rest_failures":
            rule = fake.faults.fail(
                "*/robot/*", rate=0.2, kinds=["500", "502", "503", "429", "qps", "qps_api"]
            )
            await asyncio.sleep(min(10.0, self.args.fault_every * 0.7))
            fake.faults.rules.remove(rule)
        elif name == "expire_credentials":
            fake.expire_tokens_now()
            fake.expire_webhooks_now()
        elif name == "duplicates":
            for mid in list(fake.hub.deliveries)[-5:]:
                try:
                    await fake.inject_duplicate(mid)
                except KeyError:
                    pass
        elif name == "agent_failures":
            for i in range(3):  # answered with an error message, never counted as answers
                await fake.push(fake.dm(self.rng.choice(users), f"{BREAK} {'x' * i}"))

    async def faults_loop(self, fake: FakeDingTalk, users: list[FakeUser], until: float) -> None:
        i = 0
        while True:
            await asyncio.sleep(self.args.fault_every)
            if time.monotonic() >= until:
                return
            await self.fault(fake, FAULTS[i % len(FAULTS)], users)
            i += 1

    # -- observation ----------------------------------------------------------------------------------
    def seen(self, fake: FakeDingTalk) -> Counter[str]:
        """How many messages carried each word (a long reply's later chunks do not repeat it)."""
        return Counter(w for r in fake.outbound for w in set(WORD.findall(r.text)))

    def counts(self, fake: FakeDingTalk) -> tuple[int, int, int]:
        seen = self.seen(fake)
        answered = sum(1 for w in self.expected if seen[w] >= 1)
        duplicated = sum(1 for w in self.expected if seen[w] > 1)
        return answered, len(self.expected) - answered, duplicated

    async def sampler(self, fake: FakeDingTalk, started: float) -> None:
        print(
            f"{'min':>6} {'rss MB':>8} {'fds':>5} {'thr':>4} {'sent':>7} {'answered':>9} {'pending':>8} "
            f"{'dup':>4} {'conns':>6}",
            flush=True,
        )
        while True:
            assert self.proc is not None
            if self.proc.poll() is None:
                s = sample(self.proc.pid)
                answered, pending, duplicated = self.counts(fake)
                row = {
                    "t_s": round(time.monotonic() - started, 1),
                    **s,
                    "sent": len(self.expected),
                    "answered": answered,
                    "pending": pending,
                    "duplicated": duplicated,
                    "connections_opened": fake.connections_opened,
                    "pid": self.proc.pid,
                }
                self.samples.append(row)
                print(
                    f"{row['t_s'] / 60:6.1f} {s['rss_mb']:8.1f} {s['fds']:5d} {s['threads']:4d} "
                    f"{len(self.expected):7d} {answered:9d} {pending:8d} {duplicated:4d} "
                    f"{fake.connections_opened:6d}",
                    flush=True,
                )
            await asyncio.sleep(self.args.sample_every)

    # -- the run --------------------------------------------------------------------------------------
    def start_gateway(self, fake: FakeDingTalk, config: Path, log: Path) -> None:
        app = fake.apps[0]
        env = dict(
            os.environ,
            DINGTALK_APP_KEY=app.client_id,
            DINGTALK_APP_SECRET=app.client_secret,
            SOAK_LLM_KEY=LLM_KEY,
            EDGECRAB_HOME=str(self.folder),
        )
        env.pop("EDGECRAB_CONFIG", None)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgecrab",
                    "--config",
                    str(config),
                    "--log-level",
                    self.args.log_level,
                    "gateway",
                    "start",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    async def run(self) -> dict[str, Any]:
        args = self.args
        log_path = self.folder / "gateway.log"
        async with (
            FakeDingTalk(redeliver_after_s=2.0, max_redeliveries=20, seed=args.seed) as fake,
            SoakOpenAI(reply=reply_for, delay_s=0.05, token_delay_s=0.0, api_key=LLM_KEY) as llm,
        ):
            users = [fake.add_user(FakeUser(f"soak{i:04d}", f"Soak {i}")) for i in range(args.users)]
            outsider = next(u for u in fake.users if not u.staff_id)
            config = write_config(self.folder, fake, llm)
            self.start_gateway(fake, config, log_path)
            await fake.wait_for(lambda: len(fake.connections) >= 1, 20)
            started = time.monotonic()
            until = started + args.minutes * 60
            sampler = asyncio.ensure_future(self.sampler(fake, started))
            faults = asyncio.ensure_future(self.faults_loop(fake, users, until))
            try:
                await self.traffic(fake, users, outsider, until)
                await faults
                drain_until = time.monotonic() + 90
                while self.counts(fake)[1] and time.monotonic() < drain_until:  # noqa: ASYNC110 - polls a count
                    await asyncio.sleep(1)
                await asyncio.sleep(3)  # late duplicates
            finally:
                faults.cancel()
                sampler.cancel()
                assert self.proc is not None
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGTERM)
                    try:
                        self.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
            answered, lost, duplicated = self.counts(fake)
            log_text = log_path.read_text(encoding="utf-8", errors="replace")
            secrets = [fake.apps[0].client_secret, LLM_KEY, *fake.state.tokens]
            seen = self.seen(fake)
            lost_words = [w for w in self.expected if not seen[w]][:20]
            duplicated_words = [w for w in self.expected if seen[w] > 1][:20]
            stats = fake.stats()
        warm = [s for s in self.samples if s["t_s"] >= min(60.0, args.minutes * 60 / 4)] or self.samples
        summary = {
            "minutes": args.minutes,
            "rate_per_s": args.rate,
            "counted_messages": len(self.expected),
            "answered": answered,
            "lost": lost,
            "duplicated": duplicated,
            "lost_sample": lost_words,
            "duplicated_sample": duplicated_words,
            "other_messages": {k: v for k, v in self.sent.items() if k != "counted"},
            "faults": dict(self.faults),
            "exit_code": self.proc.returncode if self.proc else None,
            "rss_mb_first": warm[0]["rss_mb"] if warm else None,
            "rss_mb_last": warm[-1]["rss_mb"] if warm else None,
            "rss_mb_max": max((s["rss_mb"] for s in self.samples), default=None),
            "rss_mb_per_hour": round(slope_per_hour([(s["t_s"], s["rss_mb"]) for s in warm]), 2),
            "fds_min": min((s["fds"] for s in warm), default=None),
            "fds_max": max((s["fds"] for s in warm), default=None),
            "fds_per_hour": round(slope_per_hour([(s["t_s"], s["fds"]) for s in warm]), 2),
            "threads_max": max((s["threads"] for s in self.samples), default=None),
            "connections_opened": stats["connections_opened"],
            "redeliveries": stats["redeliveries"],
            "fake_gave_up": stats["gave_up"],
            "outbound": stats["outbound"],
            "rest_errors_injected_or_real": stats["rest_errors"],
            "tokens_issued": stats["tokens_issued"],
            "agent_requests": len(llm.requests),
            "dedup_log_lines": log_text.count("duplicate delivery"),
            "log_tracebacks": log_text.count("Traceback"),
            "log_errors": sum(1 for line in log_text.splitlines() if " ERROR " in line),
            "secrets_in_log": sum(log_text.count(s) for s in secrets if s),
            "log": str(log_path),
        }
        return {"summary": summary, "samples": self.samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second (default 10)")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--fault-every", type=float, default=15.0, help="seconds between faults")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    parser.add_argument("--keep", type=Path, default=None, help="folder for config, state and log (kept)")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="edgecrab-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(Soak(args, folder).run())
    summary = result["summary"]
    print("\nsummary")
    for key, value in summary.items():
        print(f"  {key:<20} {value}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"\nwrote {args.json}")
    ok = summary["lost"] == 0 and summary["duplicated"] == 0 and summary["secrets_in_log"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
