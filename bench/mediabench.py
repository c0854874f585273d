"""Scenario 7 (issue 18): pictures through ``edgecrab gateway start``, a vision agent, the fake DingTalk
serving every picture through its signed, expiring download URLs.

The picture is a JPEG the size of a phone photo (4032 × 3024, 12 MP, about ``plan.picture_bytes``): above
``media.max_image_pixels``, so the gateway downloads it, scales it down with Pillow and sends it as a
base64 data URL, the whole path a real photo takes. The agent is :mod:`bench.llm` (the fake OpenAI server)
with ``--stamps``: it notes when each chat request had arrived and was parsed, and how many pictures it
carried. Its clock and the fake DingTalk's are both ``time.monotonic()``, one clock for the machine, so
"callback → the agent's request" is the stamp minus the push time, across processes.

* **7a**: one picture at a time, each after the previous answer: callback → agent request, p50 and max,
  with the default settings (the 800 ms merge window included: a lone picture waits that long for more
  pictures from its sender, by design) and with ``merge_window_ms: 0`` (what the gateway's own work costs).
* **7b**: ``plan.picture_burst`` pictures at once from as many senders, and text DMs from other users at
  ``plan.picture_dm_rate`` until every picture is answered: ack latency of everything pushed meanwhile
  (pictures and DMs), and every picture answered with its picture seen.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from PIL import Image

from bench.contenders import EDGECRAB
from bench.drive import text_for
from bench.fakes import LlmServer
from bench.plan import ACK_P99_GOAL_S, MEDIA_DM_USERS, PICTURE_TO_AGENT_GOAL_S
from bench.report import Line, finite, ms, percentile, verdict
from bench.scenarios import Context, run_contender

PHOTO_SIZE = (4032, 3024)
PHOTO_BYTES = 5 * 2**20
"""At quality 93, the noise below makes a 12 MP JPEG of about 5 MB (a photo's entropy)."""
QUALITY = 93
VISION = "  vision: true\n"
DEFAULT_WINDOW_MS = 800


def make_picture(path: Path, target_bytes: int) -> tuple[int, str]:
    """Write a photo-like JPEG of about ``target_bytes`` to ``path``; return its real size and a label
    (``"5.1 MB, 4032×3024 JPEG"``)."""
    scale = math.sqrt(target_bytes / PHOTO_BYTES)
    w, h = (max(64, int(side * scale)) for side in PHOTO_SIZE)
    coarse = Image.effect_noise((w // 4, h // 4), 64).resize((w, h), Image.Resampling.BILINEAR)
    fine = Image.effect_noise((w // 2, h // 2), 40).resize((w, h))
    Image.merge("RGB", (coarse, Image.linear_gradient("L").resize((w, h)), fine)).save(
        path, "JPEG", quality=QUALITY
    )
    size = path.stat().st_size
    return size, f"{size / 2**20:.1f} MB, {w}×{h} JPEG"


def _stamps(path: Path) -> list[dict[str, Any]]:
    """The agent's requests that carried a picture, in arrival order."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if row["images"] > 0]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def one_by_one(ctx: Context, picture: Path, window_ms: int | None) -> dict[str, Any]:
    """7a for one merge window (``None``: the default, not written in the config)."""
    plan = ctx.plan
    label = f"media-window-{'default' if window_ms is None else window_ms}"
    workdir = ctx.workdir / f"{label}-{EDGECRAB}"
    workdir.mkdir(parents=True, exist_ok=True)
    stamps = workdir / "llm-stamps.jsonl"
    extra = "" if window_ms is None else f"media:\n  merge_window_ms: {window_ms}\n"
    llm = LlmServer(0.0, workdir / "llm.log", stamps=stamps)
    try:
        with run_contender(ctx, label, EDGECRAB, llm_url=llm.base_url, agent_extra=VISION, extra=extra) as (
            fake,
            _running,
        ):
            users = [fake.index(u) for u in ctx.users[: plan.picture_samples]]
            res = fake.pictures_one_by_one(picture, users, plan.picture_budget_s)
    finally:
        llm.close()
    seen = _stamps(stamps)
    to_agent = [s["t"] - t0 for s, t0 in zip(seen, res.pushed_t, strict=False)]
    to_answer = [a - t0 for a, t0 in zip(res.answered_t, res.pushed_t, strict=True) if a is not None]
    return {
        "merge_window_ms": DEFAULT_WINDOW_MS if window_ms is None else window_ms,
        "picture_bytes": res.picture_bytes,
        "samples": plan.picture_samples,
        "pushed": len(res.pushed_t),
        "seen_by_agent": len(seen),
        "image_bytes_seen": [s["image_bytes"] for s in seen],
        "answered": len(to_answer),
        "to_agent_s": to_agent,
        "to_agent_p50_s": _median(to_agent),
        "to_agent_max_s": max(to_agent, default=None),
        "to_answer_p50_s": _median(to_answer),
        "ack_max_s": max(res.picture_ack_s, default=None),
    }


def burst(ctx: Context, picture: Path) -> dict[str, Any]:
    """7b: the burst of pictures, with DMs timed while they download."""
    plan = ctx.plan
    workdir = ctx.workdir / f"media-burst-{EDGECRAB}"
    workdir.mkdir(parents=True, exist_ok=True)
    stamps = workdir / "llm-stamps.jsonl"
    senders = ctx.users[: plan.picture_burst]
    others = ctx.users[plan.picture_burst : plan.picture_burst + MEDIA_DM_USERS]
    llm = LlmServer(0.0, workdir / "llm.log", stamps=stamps)
    try:
        with run_contender(ctx, "media-burst", EDGECRAB, llm_url=llm.base_url, agent_extra=VISION) as (
            fake,
            running,
        ):
            dms = [(fake.index(u), text_for(i + 1)) for i, u in enumerate(others)]
            cpu = running.cpu_s()
            res = fake.pictures_at_once(
                picture, [fake.index(u) for u in senders], dms, plan.picture_dm_rate, plan.picture_budget_s
            )
            cpu = running.cpu_s() - cpu
    finally:
        llm.close()
    sent = res.planned + res.dm_sent
    acks = res.picture_ack_s + res.dm_ack_s
    first = min(res.pushed_t)
    answered = [t - first for t in res.answered_t if t is not None]
    seen = [s["t"] - first for s in _stamps(stamps)]
    return {
        "pictures": res.planned,
        "picture_bytes": res.picture_bytes,
        "dm_rate": plan.picture_dm_rate,
        "dms_sent": res.dm_sent,
        "sent": sent,
        "acked": len(acks),
        "ack_p50_s": finite(percentile(acks, 50, sent)),
        "ack_p99_s": finite(percentile(acks, 99, sent)),
        "ack_max_s": max(acks, default=None),
        "picture_ack_p99_s": finite(percentile(res.picture_ack_s, 99, res.planned)),
        "dm_ack_p99_s": finite(percentile(res.dm_ack_s, 99, res.dm_sent)),
        "answered": len(answered),
        "seen_by_agent": len(seen),
        "last_seen_s": max(seen, default=None),
        "last_answer_s": max(answered, default=None),
        "cpu_s": cpu,
    }


def media(ctx: Context) -> tuple[dict[str, Any], list[Line]]:
    plan = ctx.plan
    picture = ctx.workdir / "picture.jpg"
    size, what = make_picture(picture, plan.picture_bytes)
    ctx.progress(f"[bench] 7a {plan.picture_samples} pictures ({what}), one at a time, default settings")
    default = one_by_one(ctx, picture, None)
    ctx.progress("[bench] 7a the same with merge_window_ms: 0")
    no_window = one_by_one(ctx, picture, 0)
    ctx.progress(
        f"[bench] 7b {plan.picture_burst} pictures ({what}) at once, DMs at {plan.picture_dm_rate:g}/s"
    )
    many = burst(ctx, picture)
    data = {"picture_bytes": size, "one_by_one": default, "one_by_one_no_window": no_window, "burst": many}
    return data, [_line_7a(plan.picture_samples, what, default, no_window), _line_7b(what, many)]


def _line_7a(samples: int, what: str, default: dict[str, Any], no_window: dict[str, Any]) -> Line:
    nan = float("nan")
    worst = default["to_agent_max_s"]
    ok = worst is not None and worst <= PICTURE_TO_AGENT_GOAL_S and default["seen_by_agent"] == samples
    return Line(
        "7a",
        f"one picture ({what}) at a time, {samples} times, vision agent, default media settings",
        "callback → the agent's request, p50 · max",
        {EDGECRAB: f"{ms(default['to_agent_p50_s'] or nan)} · {ms(worst or nan)}"},
        f"edgecrab max ≤ {PICTURE_TO_AGENT_GOAL_S * 1000:g} ms",
        verdict(ok),
        f"max {ms(worst or nan)}, {default['seen_by_agent']}/{samples} seen; the default 800 ms merge window "
        f"is a wait by design: with merge_window_ms 0, p50 {ms(no_window['to_agent_p50_s'] or nan)}, "
        f"max {ms(no_window['to_agent_max_s'] or nan)}",
        {"default": default, "no_window": no_window},
    )


def _line_7b(what: str, r: dict[str, Any]) -> Line:
    nan = float("nan")
    p99 = r["ack_p99_s"]
    ok = p99 is not None and p99 < ACK_P99_GOAL_S and r["answered"] == r["seen_by_agent"] == r["pictures"]
    return Line(
        "7b",
        f"{r['pictures']} pictures ({what}) at once from {r['pictures']} senders, "
        f"DMs at {r['dm_rate']:g} msg/s meanwhile",
        "ack latency p50 · p99 (pictures and DMs)",
        {EDGECRAB: f"{ms(r['ack_p50_s'] or nan)} · {ms(p99 or nan)}"},
        f"edgecrab p99 < {ACK_P99_GOAL_S * 1000:g} ms, every picture answered",
        verdict(ok),
        f"p99 {ms(p99 or nan)} over {r['sent']} callbacks ({r['acked']} acked); "
        f"{r['answered']}/{r['pictures']} answered, last picture at the agent "
        f"{ms(r['last_seen_s'] or nan)} and last answer {ms(r['last_answer_s'] or nan)} after the burst; "
        f"p99 of the pictures' own acks {ms(r['picture_ack_p99_s'] or nan)}, of the DMs' "
        f"{ms(r['dm_ack_p99_s'] or nan)}; gateway CPU {r['cpu_s']:.1f} s",
        r,
    )
