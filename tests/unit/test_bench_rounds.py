"""Scenario 1a's rounds: each contender's figures are its median round's, the verdict the median of the
rounds' ratios (edgecrab's messages/s over the SDK bot's in the same round)."""

from __future__ import annotations

from bench.scenarios import _median_run, _round_ratios


def run(rate: float) -> dict[str, float]:
    return {"messages_per_s": rate}


def test_the_median_round_is_reported() -> None:
    assert _median_run([run(900), run(600), run(750)])["messages_per_s"] == 750
    assert _median_run([run(900), run(600)])["messages_per_s"] == 600  # the lower middle of an even number
    assert _median_run([run(5)])["messages_per_s"] == 5


def test_ratios_pair_each_round() -> None:
    runs = {"edgecrab": [run(900), run(600), run(800)], "sdk": [run(600), run(600), run(0)]}
    assert _round_ratios(runs) == [1.5, 1.0]  # a round the SDK bot answered nothing in is left out
    assert _round_ratios({"edgecrab": [run(900)]}) == []
