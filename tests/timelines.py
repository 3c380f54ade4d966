"""Synthetic trial timelines shared by the alignment and decoding tests."""

from __future__ import annotations

import numpy as np

Timeline = tuple[dict[str, list[list[float]]], list[tuple[str, float]]]


def trial_timeline(rng: np.random.Generator, restart_prob: float, lick_range_s: tuple[float, float],
                   reward: bool) -> Timeline:
    """One trial's `States` and the matching microscope epoch events: sample and delay of 1.3 s, each
    restarted by an early lick with probability `restart_prob` (lick `lick_range_s` into the epoch)."""
    states: dict[str, list[list[float]]] = {"TrigTrialStart": [[0.0, 0.01]]}
    events: list[tuple[str, float]] = []
    t = 0.01
    for epoch, state, early in (("sample", "SamplePeriod", "EarlyLickSample"),
                                ("delay", "DelayPeriod", "EarlyLickDelay")):
        events.append((epoch, t))
        if rng.random() < restart_prob:
            lick = t + float(rng.uniform(*lick_range_s))
            states.setdefault(state, []).append([t, lick])
            states.setdefault(early, []).append([lick, lick + 0.05])
            t = lick + 0.05
            events.append((epoch, t))
        states.setdefault(state, []).append([t, t + 1.3])
        t += 1.3
    events.append(("go", t))
    states.update(ResponseCue=[[t, t + 0.1]], AnswerPeriod=[[t + 0.1, t + 0.4]])
    if reward:
        states["Reward"] = [[t + 0.4, t + 0.43]]
    return states, events
