"""Which side the next trial asks for, and whether it starts with a free drop.

Pure functions of the scored history (oldest first) and a random source passed in (a seeded
`numpy.random.Generator` or `random.Random`; anything with `.random()`), so a session can be replayed.
The modes, as in the lab's home-cage firmware (spec, "Trial selection and help"):

- antibias: p(left) = 1/2 * [fraction of right among recent hits + fraction of left among recent errors]
  over the last `history` trials (1/2 until there are both hits and errors); never more than `max_same`
  same-side trials in a row; but keep presenting a side while it has fewer than `min_correct` hits among
  its last max(max_incorrect + min_correct, 5) trials. As in the firmware, that last rule wins over
  `max_same`: a mouse that never gets one side right keeps getting that side (with free drops) until it
  does. When both sides lack their hits, the last trial's side is kept.
- autolearn: stay on a side until it has `autolearn_streak` hits since it was last switched to (errors do
  not reset the count, as in the firmware), then switch.
- random (p = 1/2), fixed (`fixed_side`), both_rewarded (random side for the cue, either lick rewarded).

Auto-reward: the next trial of a side gives a free drop before the go cue when that side's last
`after_errors` trials were all unrewarded (error or no answer, as the firmware counts) and more than
`min_trials_since_last` trials have passed since the last free drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from protocols.contexts import SIDES, Context, Side, other_side
from protocols.outcome import ScoredTrial
from protocols.settings import (
    SELECTION_MODES,
    AutoRewardSettings,
    SelectionMode,
    SelectionSettings,
    TrainingStage,
)
from protocols.trial_spec import TrialSpec


class RandomSource(Protocol):
    """`random.Random` and `numpy.random.Generator` both qualify."""

    def random(self) -> float: ...


def select_trial(history: Sequence[ScoredTrial], *, trial_number: int, context: Context, stage: TrainingStage,
                 rules: SelectionSettings, auto_reward: AutoRewardSettings, rng: RandomSource,
                 mode: SelectionMode | None = None) -> TrialSpec:
    """The next trial: side by the stage's selection mode (or `mode`), and a free drop if one is due."""
    mode = mode or stage.selection
    side = choose_side(history, mode, rules, rng)
    free_drop = mode != "both_rewarded" and free_drop_due(history, side, auto_reward)
    return TrialSpec(trial_number=trial_number, side=side, context=context, stage=stage, mode=mode,
                     free_drop=free_drop)


def choose_side(history: Sequence[ScoredTrial], mode: SelectionMode, rules: SelectionSettings,
                rng: RandomSource) -> Side:
    """The correct side of the next trial."""
    if mode == "antibias":
        return _antibias_side(history, rules, rng)
    if mode == "autolearn":
        return _autolearn_side(history, rules, rng)
    if mode == "fixed":
        return rules.fixed_side
    if mode in ("random", "both_rewarded"):
        return _draw(0.5, rng)
    raise ValueError(f"unknown selection mode {mode!r} (modes: {', '.join(SELECTION_MODES)})")


def antibias_p_left(history: Sequence[ScoredTrial], window: int) -> float:
    """p(left) from the last `window` trials: high when the mouse earns its hits on the right and errs on
    the left, i.e. when it is biased to the right."""
    recent = history[-window:]
    hit_sides = [t.side for t in recent if t.outcome == "hit"]
    error_sides = [t.side for t in recent if t.outcome == "error"]
    if not hit_sides or not error_sides:
        return 0.5
    right_among_hits = hit_sides.count("right") / len(hit_sides)
    left_among_errors = error_sides.count("left") / len(error_sides)
    return 0.5 * (right_among_hits + left_among_errors)


def same_side_run(history: Sequence[ScoredTrial]) -> int:
    """How many trials in a row, up to the last, had the last trial's side."""
    if not history:
        return 0
    last, run = history[-1].side, 0
    for trial in reversed(history):
        if trial.side != last:
            break
        run += 1
    return run


def sides_short_of_hits(history: Sequence[ScoredTrial], rules: SelectionSettings) -> list[Side]:
    """Sides with fewer than `min_correct` hits among their last `min_correct_window` trials."""
    short: list[Side] = []
    for side in SIDES:
        seen = hits = 0
        for trial in reversed(history):
            if trial.side == side:
                seen += 1
                hits += trial.outcome == "hit"
                if seen == rules.min_correct_window:
                    break
        if hits < rules.min_correct:
            short.append(side)
    return short


def free_drop_due(history: Sequence[ScoredTrial], side: Side, rules: AutoRewardSettings) -> bool:
    """A free drop on a `side` trial: that side's last `after_errors` trials all unrewarded, and more
    than `min_trials_since_last` trials since the last free drop."""
    if not rules.enabled:
        return False
    spacing = rules.min_trials_since_last  # as the firmware counts: with 3, the 4th trial after a drop
    if spacing and any(trial.free_drop for trial in history[-spacing:]):
        return False
    misses = 0
    for trial in reversed(history):
        if trial.side != side:
            continue
        if trial.outcome == "hit":
            return False
        misses += 1
        if misses >= rules.after_errors:
            return True
    return False


def _antibias_side(history: Sequence[ScoredTrial], rules: SelectionSettings, rng: RandomSource) -> Side:
    if history and same_side_run(history) >= rules.max_same:
        side = other_side(history[-1].side)
    else:
        side = _draw(antibias_p_left(history, rules.history), rng)
    short = sides_short_of_hits(history, rules)
    if len(short) == 1:
        return short[0]
    if len(short) == 2 and history:
        return history[-1].side
    return side


def _autolearn_side(history: Sequence[ScoredTrial], rules: SelectionSettings, rng: RandomSource) -> Side:
    if not history:
        return _draw(0.5, rng)
    last = history[-1].side
    hits = sum(t.outcome == "hit" for t in history[-same_side_run(history):])
    return other_side(last) if hits >= rules.autolearn_streak else last


def _draw(p_left: float, rng: RandomSource) -> Side:
    return "left" if float(rng.random()) < p_left else "right"
