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

Auto-reward (`AutoRewardSettings.rule`): by default as the firmware's autoReward, which runs after every
trial: when the last `after_errors` trials were all of one side and all unrewarded (error or no answer) and
more than `min_trials_since_last` trials have passed since it last fired, it fires for that side, and the
next trial gives a free drop before the go cue if it is of that side. The firmware's counter is replayed
over the last `FREE_DROP_REPLAY` trials, so the answer is the same whether the history was just run or read
back from subject.json. `side_trials` is the rule this code had first: that side's own last trials, spaced
from the last drop given. Once the task is learned (the context-switching stage), there are no free drops
unless `after_task_learned`, as in the firmware.
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

FREE_DROP_REPLAY = 100
"""Trials over which the firmware's free-drop counter is replayed (fewer than the subject keeps)."""


class RandomSource(Protocol):
    """`random.Random` and `numpy.random.Generator` both qualify."""

    def random(self) -> float: ...


def select_trial(history: Sequence[ScoredTrial], *, trial_number: int, context: Context, stage: TrainingStage,
                 rules: SelectionSettings, auto_reward: AutoRewardSettings, rng: RandomSource,
                 mode: SelectionMode | None = None, task_learned: bool = False) -> TrialSpec:
    """The next trial: side by the stage's selection mode (or `mode`), and a free drop if one is due
    (never in both_rewarded mode, and once the task is learned only if the settings ask for it)."""
    mode = mode or stage.selection
    side = choose_side(history, mode, rules, rng)
    helped = not task_learned or auto_reward.after_task_learned
    free_drop = mode != "both_rewarded" and helped and free_drop_due(history, side, auto_reward)
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
    """Whether a `side` trial after `history` starts with a free drop, by `rules.rule`."""
    if not rules.enabled:
        return False
    if rules.rule == "last_trials":
        return free_drop_side(history, rules) == side
    return _side_trials_unrewarded(history, side, rules)


def free_drop_side(history: Sequence[ScoredTrial], rules: AutoRewardSettings) -> Side | None:
    """The side the firmware's autoReward fired for after the last trial, if it did: the last
    `after_errors` trials all of that side and unrewarded, more than `min_trials_since_last` trials after
    it last fired (its counter replayed from zero over the last `FREE_DROP_REPLAY` trials)."""
    recent = history[-FREE_DROP_REPLAY:]
    n, since, fired = rules.after_errors, 0, None
    for end in range(1, len(recent) + 1):
        since += 1
        fired = None
        last = recent[max(0, end - n):end]
        sides = {trial.side for trial in last}
        if since > rules.min_trials_since_last and len(last) == n and len(sides) == 1 and not any(
                trial.outcome == "hit" for trial in last):
            fired, since = sides.pop(), 0
    return fired


def _side_trials_unrewarded(history: Sequence[ScoredTrial], side: Side, rules: AutoRewardSettings) -> bool:
    """That side's last `after_errors` trials all unrewarded, and more than `min_trials_since_last` trials
    since the last free drop."""
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
