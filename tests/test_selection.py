"""Trial selection: antibias statistics, MaxSame, min_correct, autolearn, auto-reward, reproducibility."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from protocols.contexts import Side, contexts_from_settings
from protocols.outcome import ScoredTrial
from protocols.selection import (
    RandomSource,
    TrialSpec,
    antibias_p_left,
    choose_side,
    free_drop_due,
    same_side_run,
    select_trial,
    sides_short_of_hits,
)
from protocols.settings import AutoRewardSettings, SelectionMode, SelectionSettings
from rig.settings import Settings

SETTINGS = Settings()
RULES = SETTINGS.task.selection
AUTO = SETTINGS.task.auto_reward  # the firmware's rule: the last trials, all of one side
SIDE_TRIALS = AUTO.model_copy(update={"rule": "side_trials"})  # each side's own last trials
NO_MIN_CORRECT = SelectionSettings(history=30, max_same=3, min_correct=0, max_incorrect=3, autolearn_streak=3,
                                fixed_side="left")
CONTEXT = contexts_from_settings(SETTINGS.contexts)["tactile"]
STAGES = {stage.name: stage for stage in SETTINGS.task.stages}


def scored(side: Side, outcome: str = "hit", free_drop: bool = False) -> ScoredTrial:
    return ScoredTrial(side=side, context="tactile", outcome=outcome, free_drop=free_drop)  # type: ignore[arg-type]


def history(code: str) -> list[ScoredTrial]:
    """'LH RE Rn' -> left hit, right error, right no response (d suffix: free drop given)."""
    outcomes = {"H": "hit", "E": "error", "n": "no_response"}
    out = []
    for item in code.split():
        side: Side = "left" if item[0] == "L" else "right"
        out.append(scored(side, outcomes[item[1]], free_drop=item.endswith("d")))
    return out


Responder = Callable[[Side, np.random.Generator], str]


def simulate(n: int, responder: Responder, mode: SelectionMode = "antibias", rules: SelectionSettings = RULES,
             seed: int = 1) -> list[ScoredTrial]:
    """A session of `n` trials: the selector's rng and the mouse's rng are independent and seeded."""
    rng, mouse = np.random.default_rng(seed), np.random.default_rng(seed + 1000)
    trials: list[ScoredTrial] = []
    for _ in range(n):
        side = choose_side(trials, mode, rules, rng)
        trials.append(scored(side, responder(side, mouse)))
    return trials


def biased(p_right: float) -> Responder:
    """Licks right with probability p_right whatever the cue."""
    def respond(side: Side, mouse: np.random.Generator) -> str:
        licked = "right" if mouse.random() < p_right else "left"
        return "hit" if licked == side else "error"
    return respond


def runs(trials: Sequence[ScoredTrial]) -> list[int]:
    lengths, run = [], 0
    for i, trial in enumerate(trials):
        run = run + 1 if i and trial.side == trials[i - 1].side else 1
        lengths.append(run)
    return lengths


# -- antibias --------------------------------------------------------------------------------------


def test_antibias_probability_follows_the_formula() -> None:
    # hits: 3 right, 1 left -> 3/4 right; errors: 2 left, 2 right -> 1/2 left
    trials = history("RH RH RH LH LE LE RE RE")
    assert antibias_p_left(trials, 30) == pytest.approx(0.5 * (3 / 4 + 2 / 4))
    # only the last `history` trials count: the last 2 are one right hit and one left error
    assert antibias_p_left(history("LH LH LH RE RH LE"), 2) == pytest.approx(1.0)
    # no-response trials are neither hits nor errors
    assert antibias_p_left(history("RH LE Rn Rn Ln"), 30) == pytest.approx(1.0)


def test_antibias_is_even_without_both_hits_and_errors() -> None:
    assert antibias_p_left([], 30) == 0.5
    assert antibias_p_left(history("RH RH RH"), 30) == 0.5
    assert antibias_p_left(history("LE LE RE"), 30) == 0.5


@pytest.mark.parametrize("rules", [RULES, NO_MIN_CORRECT], ids=["settings", "min_correct=0"])
@pytest.mark.parametrize(("p_right", "least_left"), [(0.75, 0.58), (0.9, 0.62)])
def test_a_right_biased_mouse_gets_more_left_trials(rules: SelectionSettings, p_right: float,
                                                      least_left: float) -> None:
    trials = simulate(4000, biased(p_right), rules=rules)
    left = sum(t.side == "left" for t in trials) / len(trials)
    assert left > least_left
    mirrored = simulate(4000, biased(1 - p_right), rules=rules)
    assert sum(t.side == "right" for t in mirrored) / len(mirrored) > least_left


def test_an_unbiased_mouse_gets_both_sides_equally() -> None:
    trials = simulate(6000, biased(0.5))
    assert abs(sum(t.side == "left" for t in trials) / len(trials) - 0.5) < 0.03


def test_max_same_is_never_exceeded_when_every_side_has_its_hits() -> None:
    for p_right in (0.5, 0.8, 1.0):
        trials = simulate(5000, biased(p_right), rules=NO_MIN_CORRECT)
        assert max(runs(trials)) == NO_MIN_CORRECT.max_same


def test_only_the_min_correct_rule_makes_runs_longer_than_max_same() -> None:
    trials = simulate(5000, biased(0.8))
    long_runs = [i for i, run in enumerate(runs(trials)) if run > RULES.max_same]
    assert long_runs, "a biased mouse should trigger the min_correct rule at least once"
    for i in long_runs:
        assert trials[i].side in sides_short_of_hits(trials[:i], RULES)


def test_min_correct_keeps_presenting_a_side_until_it_has_a_hit() -> None:
    # left: no hit among its last 5 trials; right: fine. Left again, even after 3 left in a row.
    trials = history("LE RH LE RH LE LE LE")
    assert RULES.min_correct_window == 5
    assert sides_short_of_hits(trials, RULES) == ["left"]
    assert same_side_run(trials) == 3 == RULES.max_same
    for seed in range(50):
        assert choose_side(trials, "antibias", RULES, random.Random(seed)) == "left"
    # one left hit among the last five left trials releases the side (and MaxSame applies again)
    released = [*trials, scored("left", "hit")]
    assert sides_short_of_hits(released, RULES) == []
    assert {choose_side(released, "antibias", RULES, random.Random(s)) for s in range(50)} == {"right"}


def test_min_correct_window_is_max_of_incorrect_plus_correct_and_five() -> None:
    rules = SelectionSettings(history=30, max_same=3, min_correct=2, max_incorrect=6, autolearn_streak=3,
                           fixed_side="left")
    assert rules.min_correct_window == 8
    # 2 left hits, but the older one is the 9th left trial back: only 1 within the window of 8
    trials = history("LH " + "LE " * 7 + "LH RH RH")
    assert sides_short_of_hits(trials, rules) == ["left"]
    trials = history("LH " + "LE " * 6 + "LH RH RH")
    assert sides_short_of_hits(trials, rules) == []


def test_when_both_sides_lack_hits_the_last_side_is_kept() -> None:
    trials = history("LE RE RE")
    assert sides_short_of_hits(trials, RULES) == ["left", "right"]
    assert {choose_side(trials, "antibias", RULES, random.Random(s)) for s in range(30)} == {"right"}
    # a new subject: both sides short, no last side -> the antibias draw decides
    assert {choose_side([], "antibias", RULES, random.Random(s)) for s in range(30)} == {"left", "right"}


# -- other modes -----------------------------------------------------------------------------------


def test_autolearn_stays_until_enough_hits_on_the_side() -> None:
    rng = random.Random(0)
    assert choose_side(history("LH LH"), "autolearn", RULES, rng) == "left"
    assert choose_side(history("LH LH LH"), "autolearn", RULES, rng) == "right"
    # hits count since the side was switched to; errors in between do not reset them (lab firmware)
    assert choose_side(history("RH RH RH LH LE LH"), "autolearn", RULES, rng) == "left"
    assert choose_side(history("RH RH RH LH LE LH LE LH"), "autolearn", RULES, rng) == "right"
    assert choose_side(history("LE LE LE LE LE"), "autolearn", RULES, rng) == "left"


def test_autolearn_with_a_perfect_mouse_alternates_in_blocks() -> None:
    trials = simulate(60, lambda side, mouse: "hit", mode="autolearn")
    assert set(runs(trials)) == {1, 2, 3}
    assert all(run == 3 for i, run in enumerate(runs(trials)[:-1]) if trials[i + 1].side != trials[i].side)


def test_random_fixed_and_both_rewarded() -> None:
    trials = simulate(4000, biased(1.0), mode="random")
    assert abs(sum(t.side == "left" for t in trials) / len(trials) - 0.5) < 0.03
    assert max(runs(trials)) > RULES.max_same  # random has no MaxSame
    assert {choose_side(history("LE LE"), "fixed", RULES, random.Random(s)) for s in range(10)} == {"left"}
    rng = np.random.default_rng(3)
    spec = select_trial(history("LE LE LE"), trial_number=4, context=CONTEXT, stage=STAGES["sample"],
                        rules=RULES, auto_reward=AUTO, rng=rng, mode="both_rewarded")
    assert spec.both_rewarded and not spec.free_drop  # both ports pay anyway
    with pytest.raises(ValueError, match="unknown selection mode 'blocks'"):
        choose_side([], "blocks", RULES, rng)  # type: ignore[arg-type]


# -- auto-reward -----------------------------------------------------------------------------------


def test_free_drop_when_the_last_trials_are_one_side_and_unrewarded() -> None:
    # the firmware's autoReward: the last 3 trials, whatever their side, must all be of that side
    assert free_drop_due(history("RH RH LE LE LE"), "left", AUTO)
    assert not free_drop_due(history("RH RH LE LE LE"), "right", AUTO)
    assert not free_drop_due(history("LE RH LE RH RH LE"), "left", AUTO)  # a right trial in between breaks it
    assert not free_drop_due(history("RH RH LE LH LE"), "left", AUTO)  # so does a hit
    assert free_drop_due(history("RH RH LE Ln LE"), "left", AUTO)  # no answer is unrewarded too
    disabled = AUTO.model_copy(update={"enabled": False})
    assert not free_drop_due(history("RH RH LE LE LE"), "left", disabled)


def test_free_drops_are_spaced_from_when_the_rule_fired() -> None:
    # the firmware's counter: more than N trials since it fired, whether or not the drop was given; with
    # N = 5 it fired after trial 8 (for left), trial 9 was a right trial without a drop
    spaced = AUTO.model_copy(update={"min_trials_since_last": 5})
    assert not free_drop_due(history("RH RH RH RH RH LE LE LE RH LE LE LE"), "left", spaced)
    assert not free_drop_due(history("RH RH RH RH RH LE LE LE RH LE LE LE LE"), "left", spaced)
    assert free_drop_due(history("RH RH RH RH RH LE LE LE RH LE LE LE LE LE"), "left", spaced)
    # a new subject's counter starts at zero: not before the 4th trial
    assert not free_drop_due(history("LE LE LE"), "left", AUTO)
    assert free_drop_due(history("LE LE LE"), "left", AUTO.model_copy(update={"min_trials_since_last": 0}))


def test_no_free_drops_once_the_task_is_learned_unless_asked_for() -> None:
    trials = history("RH RH LE LE LE")  # left lacks its hit: min_correct keeps presenting it

    def pick(auto: AutoRewardSettings, learned: bool) -> TrialSpec:
        return select_trial(trials, trial_number=6, context=CONTEXT, stage=STAGES["full"], rules=RULES,
                            auto_reward=auto, rng=random.Random(0), task_learned=learned)

    assert (pick(AUTO, learned=False).side, pick(AUTO, learned=False).free_drop) == ("left", True)
    assert not pick(AUTO, learned=True).free_drop  # the context-switching stage, as in the firmware
    assert pick(AUTO.model_copy(update={"after_task_learned": True}), learned=True).free_drop


def test_side_trials_rule_counts_errors_on_that_side_only() -> None:
    assert not free_drop_due(history("LE LE"), "left", SIDE_TRIALS)
    assert free_drop_due(history("LE LE LE"), "left", SIDE_TRIALS)
    assert not free_drop_due(history("LE LE LE"), "right", SIDE_TRIALS)
    # consecutive among that side's trials: right trials in between do not break the run
    assert free_drop_due(history("LE RH LE RH RH LE"), "left", SIDE_TRIALS)
    # a hit on that side does
    assert not free_drop_due(history("LE LE LH LE LE"), "left", SIDE_TRIALS)
    # no answer is not a hit either (lab firmware counts every unrewarded trial)
    assert free_drop_due(history("LE Ln LE"), "left", SIDE_TRIALS)
    disabled = SIDE_TRIALS.model_copy(update={"enabled": False})
    assert not free_drop_due(history("LE LE LE"), "left", disabled)


def test_side_trials_rule_spaces_drops_from_the_last_drop() -> None:
    # more than 3 trials since the drop, the drop trial counted: trials 1-3 after a drop get none, the 4th
    # can have one again
    assert not free_drop_due(history("LE LE LEd"), "left", SIDE_TRIALS)
    assert not free_drop_due(history("LE LE LEd LE LE"), "left", SIDE_TRIALS)
    assert free_drop_due(history("LE LE LEd LE LE LE"), "left", SIDE_TRIALS)
    unspaced = SIDE_TRIALS.model_copy(update={"min_trials_since_last": 0})
    assert free_drop_due(history("LE LE LEd"), "left", unspaced)


def test_side_trials_free_drop_waits_for_the_next_trial_of_that_side() -> None:
    trials = history("LE LE LE")
    rng = random.Random(0)
    picks = [select_trial(trials, trial_number=4, context=CONTEXT, stage=STAGES["full"], rules=NO_MIN_CORRECT,
                          auto_reward=SIDE_TRIALS, rng=rng) for _ in range(40)]
    assert {p.side for p in picks} == {"right"}  # MaxSame switches to the right first
    assert not any(p.free_drop for p in picks)
    trials += history("RH")
    picks = [select_trial(trials, trial_number=5, context=CONTEXT, stage=STAGES["full"], rules=NO_MIN_CORRECT,
                          auto_reward=SIDE_TRIALS, rng=rng) for _ in range(40)]
    assert all(p.free_drop == (p.side == "left") for p in picks)
    assert any(p.free_drop for p in picks)


@pytest.mark.parametrize("auto", [AUTO, SIDE_TRIALS], ids=["last_trials", "side_trials"])
def test_simulated_session_gives_spaced_free_drops_to_the_weak_side(auto: AutoRewardSettings) -> None:
    rng, mouse = np.random.default_rng(5), np.random.default_rng(6)
    trials: list[ScoredTrial] = []
    for n in range(3000):
        spec = select_trial(trials, trial_number=n + 1, context=CONTEXT, stage=STAGES["full"], rules=RULES,
                            auto_reward=auto, rng=rng)
        licked = "right" if mouse.random() < 0.9 else "left"
        outcome = "hit" if licked == spec.side else "error"
        trials.append(scored(spec.side, outcome, free_drop=spec.free_drop))
    drops = [i for i, t in enumerate(trials) if t.free_drop]
    assert len(drops) > 50
    assert sum(trials[i].side == "left" for i in drops) / len(drops) > 0.9
    assert min(b - a for a, b in zip(drops, drops[1:], strict=False)) > AUTO.min_trials_since_last


# -- the trial spec and reproducibility -----------------------------------------------------------------


def test_select_trial_uses_the_stage_mode_and_fills_the_spec() -> None:
    spec = select_trial(history("LH LH LH"), trial_number=4, context=CONTEXT, stage=STAGES["sample"],
                        rules=RULES, auto_reward=AUTO, rng=random.Random(0))
    assert isinstance(spec, TrialSpec)
    assert (spec.mode, spec.side, spec.cue, spec.free_drop) == ("autolearn", "right", "pole_posterior", False)
    record = spec.to_dict()
    assert (record["stage"]["delay_s"], record["context"], record["trial_number"]) == (0.3, "tactile", 4)
    overridden = select_trial([], trial_number=1, context=CONTEXT, stage=STAGES["sample"], rules=RULES,
                              auto_reward=AUTO, rng=random.Random(0), mode="fixed")
    assert (overridden.mode, overridden.side) == ("fixed", "left")


@pytest.mark.parametrize("make_rng", [np.random.default_rng, random.Random], ids=["numpy", "random"])
def test_seeded_selection_is_reproducible(make_rng: Callable[[int], RandomSource]) -> None:
    def session(seed: int) -> list[str]:
        rng, mouse = make_rng(seed), np.random.default_rng(99)
        trials: list[ScoredTrial] = []
        for _ in range(500):
            side = choose_side(trials, "antibias", RULES, rng)
            trials.append(scored(side, biased(0.7)(side, mouse)))
        return [t.side for t in trials]

    assert session(7) == session(7)
    assert session(7) != session(8)
