"""Lickport bias correction: every 50 trials, a left/right gap above 0.3 moves the lickport a step toward the
weaker side (the home-cage firmware's rule), within its travel."""

from __future__ import annotations

from protocols.contexts import Side
from protocols.lickport import LickportBiasCorrection, side_performance
from protocols.outcome import ScoredTrial
from protocols.settings import LickportBiasSettings
from rig.settings import Settings

RULES = Settings().task.lickport_bias


def trial(side: Side, outcome: str) -> ScoredTrial:
    return ScoredTrial(side=side, context="tactile", outcome=outcome)  # type: ignore[arg-type]


def biased(n: int, left: str = "error", right: str = "hit") -> list[ScoredTrial]:
    """Alternating sides, each side's trials with one outcome."""
    return [trial("left", left) if i % 2 == 0 else trial("right", right) for i in range(n)]


def run(rule: LickportBiasCorrection, history: list[ScoredTrial]) -> list[tuple[int, Side]]:
    """(trial number, side) of every step, the rule asked after each trial of `history`."""
    return [(n, side) for n in range(1, len(history) + 1) if (side := rule.after_trial(history[:n]))]


def test_the_defaults_are_the_firmware_numbers() -> None:
    assert (RULES.every_trials, RULES.window, RULES.max_gap) == (50, 50, 0.3)


def test_a_gap_moves_a_step_toward_the_weaker_side_every_50_trials() -> None:
    rule = LickportBiasCorrection(RULES)
    assert run(rule, biased(160)) == [(51, "left"), (102, "left"), (153, "left")]
    assert rule.steps == -3
    assert run(LickportBiasCorrection(RULES), biased(60, left="hit", right="no_response")) == [(51, "right")]


def test_no_step_within_the_gap_or_before_50_trials() -> None:
    even = [trial("left", "hit" if i % 10 else "error") if i % 2 else trial("right", "hit")
            for i in range(200)]
    assert side_performance(even, "right", 50) - side_performance(even, "left", 50) <= 0.3
    assert run(LickportBiasCorrection(RULES), even) == []
    assert run(LickportBiasCorrection(RULES), biased(50)) == []


def test_a_gap_that_appears_later_is_acted_on_at_once() -> None:
    history = [trial("left", "hit"), trial("right", "hit")] * 40 + biased(40)  # biased from trial 81
    (first,) = run(LickportBiasCorrection(RULES), history)
    assert first[1] == "left" and 81 < first[0] < 120


def test_the_lickport_stays_within_its_travel() -> None:
    rule = LickportBiasCorrection(LickportBiasSettings(max_steps=2))
    assert [side for _, side in run(rule, biased(400))] == ["left", "left"]
    assert rule.steps == -2
