"""The paper's neuron filter: keep neurons whose trial-averaged activity is reliable within a block.

For each neuron the concatenated PSTH (the left trials' average, then the right trials', over the epoch
windows' bins) of the first half of the block's correct trials is correlated with that of the second half
(STEP2_PSTH_similarity.m of the paper's code, "1st vs 2nd half"); a neuron enters the CD only when that
correlation is at least `min_r` (the paper: 0.5). A neuron that is noise has no repeatable time course or
side preference, so its halves do not correlate. Trials are in the order they came (oldest first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from online.decoding.batch import EpochData


def _halves_psth(parts: Sequence[EpochData]) -> tuple[np.ndarray, np.ndarray]:
    """(first half, second half) concatenated PSTHs, (time points x neurons) each."""
    first: list[np.ndarray] = []
    second: list[np.ndarray] = []
    for data in parts:
        for bins in (data.left_bins, data.right_bins):
            if bins is None or len(bins) < 2:
                continue
            k = len(bins) // 2
            first.append(bins[:k].mean(axis=0))
            second.append(bins[k:].mean(axis=0))
    if not first:
        raise ValueError("the reliability filter needs binned activity of at least 2 trials on a side")
    return np.concatenate(first), np.concatenate(second)


def split_half_reliability(parts: Sequence[EpochData]) -> np.ndarray:
    """Per neuron, Pearson r of its concatenated PSTH between the first and the second half of the trials
    (NaN for a neuron whose PSTH is flat in a half)."""
    a, b = _halves_psth(parts)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    norm = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (a * b).sum(axis=0) / np.where(norm > 0, norm, 1.0), np.nan)


def reliable_neurons(parts: Sequence[EpochData], min_r: float) -> np.ndarray:
    """Boolean mask (neurons,): split-half reliability at least `min_r` (a flat neuron is not reliable)."""
    r = split_half_reliability(parts)
    return np.nan_to_num(r, nan=-np.inf) >= min_r
