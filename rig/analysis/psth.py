"""Per-context PSTHs of delay-selective neurons: the population's mean activity on right and left correct
trials, for the neurons that prefer each side, aligned to the go cue (sample and delay onsets are fixed
offsets before it in the full task)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Psth:
    label: str
    """The context or block the trials are from."""
    bin_centres_s: list[float]
    """Relative to the go cue."""
    right_preferring: dict[str, list[float]]
    """Mean over the right-preferring neurons: {"right": trace on right trials, "left": on left trials}."""
    left_preferring: dict[str, list[float]]
    n_right_preferring: int
    n_left_preferring: int
    n_trials: dict[str, int]


def selectivity_t(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Welch t of right minus left per neuron (trials x neurons each); 0 where undefined."""
    mr, ml = np.nanmean(right, axis=0), np.nanmean(left, axis=0)
    vr, vl = np.nanvar(right, axis=0, ddof=1), np.nanvar(left, axis=0, ddof=1)
    se = np.sqrt(vr / max(len(right), 1) + vl / max(len(left), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (mr - ml) / se
    return np.nan_to_num(t)


def psth(label: str, bin_centres_s: np.ndarray, right: np.ndarray, left: np.ndarray,
         delay_bins: np.ndarray, top_fraction: float = 0.1, min_t: float = 2.0) -> Psth:
    """`right` / `left`: correct trials x bins x neurons; `delay_bins` marks the delay-window bins that
    selectivity is judged in. The selective neurons are the top `top_fraction` by |t| with |t| >= min_t."""
    with warnings.catch_warnings():  # a trial whose window lost its frames is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        t = selectivity_t(np.nanmean(right[:, delay_bins], axis=1), np.nanmean(left[:, delay_bins], axis=1))
    k = max(1, int(round(top_fraction * t.size)))
    order = np.argsort(-np.abs(t))[:k]
    chosen = order[np.abs(t[order]) >= min_t]
    prefer_right, prefer_left = chosen[t[chosen] > 0], chosen[t[chosen] < 0]

    def mean(trials: np.ndarray, neurons: np.ndarray) -> list[float]:
        if not neurons.size or not len(trials):
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return [float(v) for v in np.nanmean(trials[:, :, neurons], axis=(0, 2))]

    return Psth(label, [float(c) for c in bin_centres_s],
                {"right": mean(right, prefer_right), "left": mean(left, prefer_right)},
                {"right": mean(right, prefer_left), "left": mean(left, prefer_left)},
                int(prefer_right.size), int(prefer_left.size), {"right": len(right), "left": len(left)})


def pooled(label: str, parts: Sequence[Psth]) -> Psth | None:
    """Trial-weighted mean of several sessions' PSTHs of one context (neurons differ, the grid does not)."""
    parts = [p for p in parts if p.right_preferring["right"] or p.left_preferring["right"]]
    if not parts:
        return None

    def combine(group: str, side: str) -> list[float]:
        rows = [(np.asarray(getattr(p, group)[side]), p.n_trials[side]) for p in parts
                if getattr(p, group)[side]]
        if not rows:
            return []
        weights = np.array([w for _, w in rows], dtype=float)
        return [float(v) for v in np.average(np.vstack([r for r, _ in rows]), axis=0, weights=weights)]

    return Psth(label, parts[0].bin_centres_s,
                {s: combine("right_preferring", s) for s in ("right", "left")},
                {s: combine("left_preferring", s) for s in ("right", "left")},
                sum(p.n_right_preferring for p in parts), sum(p.n_left_preferring for p in parts),
                {s: sum(p.n_trials[s] for p in parts) for s in ("right", "left")})
