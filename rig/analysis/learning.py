"""Learning across a study: running performance per block with the context switches marked, and the trials
each block took to reach criterion (the paper: learning got faster with each reversal)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rig.analysis.trials import TrialInfo


@dataclass(frozen=True)
class LearningCurve:
    """Running fraction correct over the last `window` answered trials (None until one is answered), one value
    per trial of the study, with where each block and session starts."""

    window: int
    performance: list[float | None]
    block_starts: list[tuple[int, str, str]]
    """(trial index in the study, block label, context)."""
    session_starts: list[tuple[int, str]]


def learning_curve(trials: Sequence[TrialInfo], window: int = 100) -> LearningCurve:
    """Performance restarts at each block: a new block's first trials are not averaged with the old
    mapping's."""
    performance: list[float | None] = []
    block_starts: list[tuple[int, str, str]] = []
    session_starts: list[tuple[int, str]] = []
    answered: list[bool] = []
    for index, trial in enumerate(trials):
        if not block_starts or block_starts[-1][1] != trial.block_label or \
                trials[index - 1].block != trial.block:
            block_starts.append((index, trial.block_label, trial.context))
            answered = []
        if not session_starts or session_starts[-1][1] != trial.session:
            session_starts.append((index, trial.session))
        if trial.outcome in ("hit", "error"):
            answered.append(trial.outcome == "hit")
        recent = answered[-window:]
        performance.append(float(np.mean(recent)) if recent else None)
    return LearningCurve(window, performance, block_starts, session_starts)


@dataclass(frozen=True)
class TrialsToCriterion:
    block_label: str
    context: str
    trials: int | None
    """Trials from the block's start until the running performance over `window` answered trials first
    reached the criterion; None if it never did."""


def trials_to_criterion(trials: Sequence[TrialInfo], criterion: float = 0.75,
                        window: int = 100) -> list[TrialsToCriterion]:
    """Per block; the running window must be full (window answered trials) before it can count."""
    if not 0 < criterion <= 1:
        raise ValueError(f"criterion must be in (0, 1], got {criterion}")
    if window < 1:
        raise ValueError(f"window must be at least 1 trial, got {window}")
    results: list[TrialsToCriterion] = []
    current: tuple[int, str, str] | None = None
    answered: list[bool] = []
    reached: int | None = None
    count = 0
    for trial in trials:
        if current is None or current[0] != trial.block:
            if current is not None:
                results.append(TrialsToCriterion(current[1], current[2], reached))
            current, answered, reached, count = (trial.block, trial.block_label, trial.context), [], None, 0
        count += 1
        if trial.outcome in ("hit", "error"):
            answered.append(trial.outcome == "hit")
        if reached is None and len(answered) >= window and np.mean(answered[-window:]) >= criterion:
            reached = count
    if current is not None:
        results.append(TrialsToCriterion(current[1], current[2], reached))
    return results
