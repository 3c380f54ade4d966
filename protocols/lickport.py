"""Lickport bias correction, as the home-cage firmware's autoAdjustLickportPosition: when the mouse does
much better on one side, the lickport moves a step toward the other (weaker) side.

Counted after every trial: once more than `every_trials` trials have passed since the last move (or the
start), the per-side performance over the last `window` trials is compared each trial (rewarded trials of
that side among its trials, no answer a failure; a side without trials counts as 1, as in the firmware);
a gap above `max_gap` asks for a step toward the weaker side, at most `max_steps` from the start, and
restarts the count. Pure: the session (when a lickport motor is configured) moves the motor it is told.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocols.contexts import SIDES, Side
from protocols.outcome import ScoredTrial
from protocols.settings import LickportBiasSettings


def side_performance(history: Sequence[ScoredTrial], side: Side, window: int) -> float:
    """Rewarded trials of `side` among its trials in the last `window` trials (1 without any)."""
    trials = [trial for trial in history[-window:] if trial.side == side]
    return sum(trial.outcome == "hit" for trial in trials) / len(trials) if trials else 1.0


@dataclass
class LickportBiasCorrection:
    """The rule's state between trials: trials since the last move, and steps taken (+ right)."""

    rules: LickportBiasSettings
    trials_since_move: int = 0
    steps: int = 0

    def after_trial(self, history: Sequence[ScoredTrial]) -> Side | None:
        """Count the trial that ended (the last of `history`); the side to step toward, if any."""
        self.trials_since_move += 1
        if self.trials_since_move <= self.rules.every_trials:
            return None
        left, right = (side_performance(history, side, self.rules.window) for side in SIDES)
        if abs(left - right) <= self.rules.max_gap:
            return None
        self.trials_since_move = 0
        weaker: Side = "left" if left < right else "right"
        step = -1 if weaker == "left" else 1
        if abs(self.steps + step) > self.rules.max_steps:
            return None  # at the end of its travel (the firmware restarts the count all the same)
        self.steps += step
        return weaker
