"""Scoring trials from hand-made trial records, and Perf100-style performance."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from protocols.contexts import Side
from protocols.outcome import (
    PerformanceTracker,
    ScoredTrial,
    fraction_correct,
    score_trial,
)
from protocols.settings import WiringSettings
from protocols.state_machine import input_event
from rig.settings import Settings

WIRING = Settings().wiring  # left lick Port1, right lick Port2


def record(*visits: tuple[str, float, float], events: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """A trial record as `TrialResult.to_dict()` writes it, from (state, start, end) visits in order."""
    states: dict[str, list[list[float]]] = {}
    for name, start, end in visits:
        states.setdefault(name, []).append([start, end])
    return {"state_sequence": [name for name, _, _ in visits], "States": states, "Events": events or {}}


def head(go: float = 2.61) -> list[tuple[str, float, float]]:
    """TrigTrialStart, sample 1.3 s, delay 1.3 s, go cue 0.1 s from `go - 2.6`."""
    t0 = go - 2.61
    return [("TrigTrialStart", t0, t0 + 0.01), ("SamplePeriod", t0 + 0.01, t0 + 1.31),
            ("DelayPeriod", t0 + 1.31, go), ("ResponseCue", go, go + 0.1)]


def tail(t: float) -> list[tuple[str, float, float]]:
    return [("StopLicking", t, t + 1.0), ("TrialEnd", t + 1.0, t + 1.01)]


def score(rec: dict[str, Any], side: Side = "right", context: str = "tactile") -> ScoredTrial:
    return score_trial(rec, side=side, context=context, wiring=WIRING, trial_number=7)


# -- each outcome path -----------------------------------------------------------------------------


def test_hit() -> None:
    rec = record(*head(), ("AnswerPeriod", 2.71, 2.93), ("Reward", 2.93, 2.96),
                 ("RewardConsumption", 2.96, 3.96), *tail(3.96),
                 events={"Port2In": [2.93, 3.1, 3.3], "Port2Out": [2.97], "Tup": [0.01, 1.31]})
    trial = score(rec)
    assert (trial.outcome, trial.licked_side, trial.rewarded, trial.answered, trial.correct) == (
        "hit", "right", True, True, True)
    assert trial.reaction_time_s == pytest.approx(0.32)
    assert not trial.early_lick and not trial.free_drop
    assert (trial.trial_number, trial.context, trial.side) == (7, "tactile", "right")


def test_error() -> None:
    rec = record(*head(), ("AnswerPeriod", 2.71, 3.01), ("TimeOut", 3.01, 7.01), *tail(7.01),
                 events={"Port1In": [3.01]})
    trial = score(rec, side="right")
    assert (trial.outcome, trial.licked_side, trial.rewarded) == ("error", "left", False)
    assert trial.reaction_time_s == pytest.approx(0.4)


def test_no_response() -> None:
    rec = record(*head(), ("AnswerPeriod", 2.71, 4.71), ("NoResponse", 4.71, 4.72), *tail(4.72),
                 events={"Port1In": [5.0]})  # a lick after the answer period is no answer
    trial = score(rec, side="left")
    assert (trial.outcome, trial.licked_side, trial.reaction_time_s, trial.answered) == (
        "no_response", None, None, False)


def test_early_licks_in_sample_and_delay_are_a_flag_with_their_epochs() -> None:
    visits = [("TrigTrialStart", 0.0, 0.01), ("SamplePeriod", 0.01, 0.4), ("EarlyLickSample", 0.4, 0.45),
              ("SamplePeriod", 0.45, 1.75), ("DelayPeriod", 1.75, 2.0), ("EarlyLickDelay", 2.0, 2.05),
              ("DelayPeriod", 2.05, 2.3), ("EarlyLickDelay", 2.3, 2.35), ("DelayPeriod", 2.35, 3.65),
              ("ResponseCue", 3.65, 3.75), ("AnswerPeriod", 3.75, 4.0), ("Reward", 4.0, 4.03),
              ("RewardConsumption", 4.03, 5.03), *tail(5.03)]
    trial = score(record(*visits, events={"Port1In": [0.4, 2.0, 2.3], "Port2In": [4.0]}))
    assert trial.outcome == "hit" and trial.early_lick
    assert trial.early_lick_epochs == ("sample", "delay")
    assert trial.early_licks == 3
    assert trial.reaction_time_s == pytest.approx(0.35)


def test_free_drop_is_recorded() -> None:
    rec = record(*head()[:3], ("GiveLeftDrop", 2.61, 2.64), ("ResponseCue", 2.64, 2.74),
                 ("AnswerPeriod", 2.74, 3.0), ("TimeOut", 3.0, 7.0), *tail(7.0), events={"Port2In": [3.0]})
    trial = score(rec, side="left")
    assert trial.free_drop and trial.outcome == "error" and trial.licked_side == "right"


def test_both_rewarded_other_side_is_a_rewarded_error() -> None:
    rec = record(*head(), ("AnswerPeriod", 2.71, 3.0), ("RewardOtherSide", 3.0, 3.03),
                 ("RewardConsumption", 3.03, 4.03), *tail(4.03), events={"Port1In": [3.0]})
    trial = score(rec, side="right")
    assert (trial.outcome, trial.licked_side, trial.rewarded) == ("error", "left", True)


def test_a_trial_stopped_before_the_answer_is_aborted() -> None:
    trial = score(record(("TrigTrialStart", 0.0, 0.01), ("SamplePeriod", 0.01, 0.7)))
    assert (trial.outcome, trial.answered, trial.reaction_time_s) == ("aborted", False, None)


# -- reaction time ---------------------------------------------------------------------------------


def test_reaction_time_is_from_go_cue_onset_to_the_answering_lick() -> None:
    # an early lick before the go cue does not count, nor a lick during the go cue itself (the task
    # ignores it): the reaction time belongs to the lick that answered, on the licked side
    rec = record(*head(go=3.0), ("AnswerPeriod", 3.1, 3.3), ("Reward", 3.3, 3.33), *tail(3.33),
                 events={"Port2In": [1.0, 3.3], "Port1In": [3.05]})
    scored = score(rec)
    assert scored.reaction_time_s == pytest.approx(0.3)
    assert scored.licked_side == "right"


def test_reaction_time_uses_the_wired_lick_lines() -> None:
    wiring = WiringSettings(left_lick="BNC1", right_lick="Port3")
    assert (wiring.lick("left"), wiring.lick("right")) == ("BNC1High", "Port3In")
    assert input_event("Wire2") == "Wire2High"
    rec = record(*head(), ("AnswerPeriod", 2.71, 2.9), ("Reward", 2.9, 2.93), *tail(2.93),
                 events={"Port2In": [2.75], "Port3In": [2.9]})
    trial = score_trial(rec, side="right", context="tactile", wiring=wiring)
    assert trial.reaction_time_s == pytest.approx(0.29)


def test_matlab_style_records_without_a_state_sequence() -> None:
    nan = math.nan
    rec = {"States": {"TrigTrialStart": [[0.0, 0.01]], "ResponseCue": [[2.61, 2.71]],
                      "AnswerPeriod": [[2.71, 3.0]], "Reward": [[nan, nan]], "TimeOut": [[3.0, 7.0]],
                      "NoResponse": [[nan, nan]], "EarlyLickDelay": [nan, nan], "GiveLeftDrop": [[nan, nan]]},
           "Events": {"Port1In": [3.0]}}
    trial = score(rec, side="right")
    assert (trial.outcome, trial.early_lick, trial.free_drop) == ("error", False, False)
    assert trial.reaction_time_s == pytest.approx(0.39)


def test_scored_trial_round_trips_through_json_and_checks_its_values() -> None:
    rec = record(*head(), ("EarlyLickDelay", 2.0, 2.05), ("AnswerPeriod", 2.71, 2.9), ("Reward", 2.9, 2.93),
                 *tail(2.93), events={"Port2In": [2.9]})
    trial = score(rec)
    assert ScoredTrial.from_dict(json.loads(json.dumps(trial.to_dict()))) == trial
    with pytest.raises(ValueError, match="outcome must be one of hit, error, no_response, aborted"):
        ScoredTrial(side="left", context="tactile", outcome="miss")  # type: ignore[arg-type]


# -- performance -----------------------------------------------------------------------------------


def trial(side: Side, outcome: str, context: str = "tactile") -> ScoredTrial:
    return ScoredTrial(side=side, context=context, outcome=outcome)  # type: ignore[arg-type]


def test_fraction_correct_leaves_out_unanswered_trials() -> None:
    assert fraction_correct(["hit", "hit", "error", "no_response", "aborted"]) == pytest.approx(2 / 3)
    assert fraction_correct(["no_response"]) is None
    assert fraction_correct([]) is None


def test_perf100_uses_the_last_100_trials() -> None:
    tracker = PerformanceTracker()
    assert tracker.perf100() is None and tracker.answered_last(100) == 0
    for _ in range(50):
        tracker.add(trial("left", "error"))
    for i in range(100):
        tracker.add(trial("left", "no_response" if i % 10 == 0 else "hit"))
    assert len(tracker) == 150
    assert tracker.perf100() == 1.0
    assert tracker.performance() == pytest.approx(90 / 140)
    assert tracker.answered_last(100) == 90
    assert tracker.answered_last(150) == 140
    assert tracker.performance(last=110) == pytest.approx(90 / 100)
    counts = tracker.counts()
    assert (counts["hit"], counts["error"], counts["no_response"]) == (90, 50, 10)


def test_perf100_per_side_and_per_context() -> None:
    tracker = PerformanceTracker()
    for i in range(200):  # tactile: right always correct, left 50 %
        side: Side = "right" if i % 2 else "left"
        tracker.add(trial(side, "hit" if side == "right" or i % 4 == 0 else "error"))
    for i in range(60):  # then tactile-reversed: 25 % correct
        tracker.add(trial("left" if i % 2 else "right", "hit" if i % 4 == 0 else "error", "tactile-reversed"))
    assert tracker.perf100(side="right", context="tactile") == 1.0
    assert tracker.perf100(side="left", context="tactile") == 0.5
    assert tracker.perf100(context="tactile") == pytest.approx(0.75)
    assert tracker.perf100(context="tactile-reversed") == pytest.approx(0.25)
    # without a filter, the last 100 trials mix the 60 reversed trials with the last 40 tactile ones
    assert tracker.perf100() == pytest.approx((15 + 30) / 100)
    assert tracker.answered_last(100, context="tactile-reversed") == 60
    # a side filter takes the last 100 trials *of that side*
    assert len(tracker.last(100, side="left")) == 100
    assert tracker.performance(side="left", context="tactile-reversed") == 0.0
    with pytest.raises(ValueError, match="at least 1 trial"):
        tracker.last(0)
