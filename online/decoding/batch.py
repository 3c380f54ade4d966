"""Batch analysis of stored trials: fit a CD and its boundary on some trials, test on others, split
halves for held-out accuracy and the within-session similarity ceiling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from online.decoding.boundary import Boundary
from online.decoding.directions import (
    CodingDirection,
    Method,
    _check_method,
    _lda_axis,
    classic_cd,
    lda_cd,
    unit,
)


@dataclass(frozen=True, eq=False)
class EpochData:
    """Correct trials of one context in one epoch window: per-trial window means (trials x neurons) and,
    for the LDA CD, per-trial bins (trials x bins x neurons), by side."""

    right_means: np.ndarray
    left_means: np.ndarray
    right_bins: np.ndarray | None = None
    left_bins: np.ndarray | None = None

    @property
    def n_right(self) -> int:
        return int(len(self.right_means))

    @property
    def n_left(self) -> int:
        return int(len(self.left_means))

    @property
    def n_neurons(self) -> int:
        return int(np.shape(self.right_means)[-1])

    def subset(self, right: np.ndarray, left: np.ndarray) -> EpochData:
        """The trials at those indices of each side."""
        rb = None if self.right_bins is None else self.right_bins[right]
        lb = None if self.left_bins is None else self.left_bins[left]
        return EpochData(self.right_means[right], self.left_means[left], rb, lb)


def fit_vector(data: EpochData, method: Method | str = "classic") -> np.ndarray:
    """The unit CD of the data by one of the `METHODS`."""
    if _check_method(method) == "classic":
        return classic_cd(data.right_means, data.left_means)
    if data.right_bins is None or data.left_bins is None:
        raise ValueError("the LDA CD needs binned window activity (EpochData.right_bins / left_bins)")
    return lda_cd(data.right_bins, data.left_bins, axis=_lda_axis(method)).vector


def train(data: EpochData, context: str, epoch: str = "delay", method: Method | str = "classic",
          roi_set_id: str | None = None, vector: np.ndarray | None = None) -> CodingDirection:
    """CD and boundary from training trials (the boundary from their own projections, as in the paper)."""
    v = unit(fit_vector(data, method) if vector is None else vector)
    if not np.any(v):
        raise ValueError(f"context {context!r}: right and left trials do not differ; no coding direction")
    boundary = Boundary.fit(data.right_means @ v, data.left_means @ v)
    return CodingDirection(v, boundary, context, epoch, method, data.n_right, data.n_left, roi_set_id)


def accuracy(cd: CodingDirection, data: EpochData) -> float:
    """Fraction of trials on their side of the boundary (right above DB, left below)."""
    pr, pl = data.right_means @ cd.vector, data.left_means @ cd.vector
    db = cd.boundary.value
    total = pr.size + pl.size
    if total == 0:
        raise ValueError("no trials to test")
    return float((np.count_nonzero(pr > db) + np.count_nonzero(pl < db)) / total)


def split_halves(data: EpochData, rng: np.random.Generator) -> tuple[EpochData, EpochData]:
    """A random 50/50 split per side: round(n/2) trials to the first half, the rest to the second."""
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for n in (data.n_right, data.n_left):
        order = rng.permutation(n)
        k = int(round(n / 2))
        parts.append((np.sort(order[:k]), np.sort(order[k:])))
    (r1, r2), (l1, l2) = parts
    return data.subset(r1, l1), data.subset(r2, l2)


def decoding_accuracy(data: EpochData, method: Method | str = "classic", n_repeats: int = 10,
                      seed: int = 0) -> float:
    """Held-out accuracy: train CD and boundary on a random half of each side, test on the other half,
    averaged over `n_repeats` seeded splits."""
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_repeats):
        first, second = split_halves(data, rng)
        scores.append(accuracy(train(first, "", method=method), second))
    return float(np.mean(scores))


def split_half_similarity(data: EpochData, method: Method | str = "classic", n_repeats: int = 10,
                          seed: int = 0) -> float:
    """Within-session noise ceiling: dot product of the CDs of two disjoint halves, averaged over splits."""
    rng = np.random.default_rng(seed)
    dots = []
    for _ in range(n_repeats):
        first, second = split_halves(data, rng)
        dots.append(float(fit_vector(first, method) @ fit_vector(second, method)))
    return float(np.mean(dots))
