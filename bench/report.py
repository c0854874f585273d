"""Numbers to words: percentiles, goal verdicts, the markdown table and the JSON file.

Each scenario yields :class:`Line` objects: one measured quantity for every contender that ran it, the goal
it is judged against, and the verdict. A line never hides a miss; an unmeasurable goal is a miss too.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.contenders import ALL, LABELS

PASS, MISS = "pass", "miss"


def percentile(values: list[float], q: float, total: int | None = None) -> float:
    """Nearest-rank percentile; with ``total`` > len(values) the missing ones count as infinitely late."""
    n = max(total or 0, len(values))
    if n == 0:
        return math.nan
    ordered = sorted(values) + [math.inf] * (n - len(values))
    return ordered[min(n - 1, max(0, math.ceil(q / 100 * n) - 1))]


def ms(seconds: float, budget_s: float | None = None) -> str:
    if math.isinf(seconds):
        return f"> {budget_s:g} s" if budget_s else "never"
    if math.isnan(seconds):
        return "n/a"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def num(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def finite(value: float) -> float | None:
    """JSON has no infinity or NaN: both become ``null``."""
    return value if math.isfinite(value) else None


@dataclass
class Line:
    id: str
    title: str
    metric: str
    cells: dict[str, str]
    goal: str
    verdict: str
    detail: str
    values: dict[str, Any] = field(default_factory=dict)
    """Raw numbers per contender (or ``value``), for the JSON file."""

    def row(self) -> str:
        cells = [self.cells.get(name, "—") for name in ALL]
        goal = f"{self.goal}: {self.detail}" if self.detail else self.goal
        return (
            f"| {self.id} | {self.title} | {self.metric} | "
            + " | ".join(cells)
            + f" | {goal} | **{self.verdict}** |"
        )


def verdict(ok: bool) -> str:
    return PASS if ok else MISS


def table(lines: list[Line]) -> str:
    head = ["#", "scenario", "metric", *(LABELS[name] for name in ALL), "goal (measured)", "verdict"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += [line.row() for line in lines]
    return "\n".join(out)


def write_json(path: Path, meta: dict[str, Any], scenarios: dict[str, Any], lines: list[Line]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": meta,
        "lines": [asdict(line) for line in lines],
        "scenarios": scenarios,
        "summary": {
            "pass": sum(1 for x in lines if x.verdict == PASS),
            "miss": sum(1 for x in lines if x.verdict == MISS),
        },
    }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
