"""Batch analysis of stored trials: fit a CD and its boundary on some trials, test on others, split
halves for held-out accuracy, and the similarity of two blocks' CDs with its split-half ceiling.

Accuracy is balanced (the mean of the right and the left trials' fractions on their side), so a decoder
that calls every trial "right" scores 0.5 however unbalanced the test trials are. Similarities compare CDs
trained on halves of equal trial counts, the same counts as the within-block ceiling they are published
with, so a similarity and its ceiling are on one scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from online.decoding.boundary import Boundary
from online.decoding.directions import (
    CodingDirection,
    Method,
    _check_method,
    _lda_axis,
    classic_cd,
    lda_vector,
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

    def only_neurons(self, keep: np.ndarray) -> EpochData:
        """The same trials over the neurons where `keep` is true."""
        rb = None if self.right_bins is None else self.right_bins[..., keep]
        lb = None if self.left_bins is None else self.left_bins[..., keep]
        return EpochData(self.right_means[:, keep], self.left_means[:, keep], rb, lb)

    @classmethod
    def concat(cls, parts: list[EpochData]) -> EpochData:
        """The trials of several blocks together (e.g. every block of one context, pooled)."""
        if not parts:
            raise ValueError("nothing to pool")
        binned = all(p.right_bins is not None and p.left_bins is not None for p in parts)
        return cls(np.concatenate([p.right_means for p in parts]),
                   np.concatenate([p.left_means for p in parts]),
                   np.concatenate([p.right_bins for p in parts]) if binned else None,  # type: ignore[misc]
                   np.concatenate([p.left_bins for p in parts]) if binned else None)  # type: ignore[misc]


def fit_vector(data: EpochData, method: Method | str = "classic") -> np.ndarray:
    """The unit CD of the data by one of the `METHODS`."""
    if _check_method(method) == "classic":
        return classic_cd(data.right_means, data.left_means)
    if data.right_bins is None or data.left_bins is None:
        raise ValueError("the LDA CD needs binned window activity (EpochData.right_bins / left_bins)")
    return lda_vector(data.right_bins, data.left_bins, axis=_lda_axis(method))


def train(data: EpochData, context: str, epoch: str = "delay", method: Method | str = "classic",
          roi_set_id: str | None = None, vector: np.ndarray | None = None, mask: np.ndarray | None = None,
          ) -> CodingDirection:
    """CD and boundary from training trials (the boundary from their own projections, as in the paper);
    `mask` keeps only those neurons (the reliability filter)."""
    v = unit(masked_vector(data, method, mask) if vector is None else vector)
    if not np.any(v):
        raise ValueError(f"context {context!r}: right and left trials do not differ; no coding direction")
    boundary = Boundary.fit(data.right_means @ v, data.left_means @ v)
    return CodingDirection(v, boundary, context, epoch, method, data.n_right, data.n_left, roi_set_id)


def balanced_accuracy(n_right_correct: int, n_right: int, n_left_correct: int, n_left: int) -> float:
    """Mean of the per-side fractions decoded correctly (a side without trials is left out)."""
    rates = [c / n for c, n in ((n_right_correct, n_right), (n_left_correct, n_left)) if n > 0]
    if not rates:
        raise ValueError("no trials to test")
    return float(np.mean(rates))


def accuracy(cd: CodingDirection, data: EpochData) -> float:
    """Balanced accuracy: the mean of the right trials' fraction above the boundary and the left trials'
    fraction below it (the paper's code pools the two; balanced is not fooled by unbalanced sides)."""
    pr, pl = data.right_means @ cd.vector, data.left_means @ cd.vector
    db = cd.boundary.value
    return balanced_accuracy(int(np.count_nonzero(pr > db)), pr.size, int(np.count_nonzero(pl < db)), pl.size)


def split_halves(data: EpochData, rng: np.random.Generator, sizes: tuple[int, int] | None = None,
                 ) -> tuple[EpochData, EpochData]:
    """A random split per side: round(n/2) trials to the first half, the rest to the second; with
    `sizes` = (right, left), two disjoint halves of exactly that many trials per side (the rest unused)."""
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for i, n in enumerate((data.n_right, data.n_left)):
        order = rng.permutation(n)
        if sizes is None:
            k = int(round(n / 2))
            parts.append((np.sort(order[:k]), np.sort(order[k:])))
            continue
        k = sizes[i]
        if not 0 < k <= n // 2:
            raise ValueError(f"halves of {k} trials need at least {2 * k} trials on that side, got {n}")
        parts.append((np.sort(order[:k]), np.sort(order[k:2 * k])))
    (r1, r2), (l1, l2) = parts
    return data.subset(r1, l1), data.subset(r2, l2)


def decoding_accuracy(data: EpochData, method: Method | str = "classic", n_repeats: int = 10,
                      seed: int = 0, mask: np.ndarray | None = None) -> float:
    """Held-out balanced accuracy: train CD and boundary on a random half of each side, test on the other
    half, averaged over `n_repeats` seeded splits."""
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_repeats):
        first, second = split_halves(data, rng)
        scores.append(accuracy(train(first, "", method=method, mask=mask), second))
    return float(np.mean(scores))


def split_half_similarity(data: EpochData, method: Method | str = "classic", n_repeats: int = 10,
                          seed: int = 0, mask: np.ndarray | None = None) -> float:
    """Within-block noise ceiling: dot product of the CDs of two disjoint halves, averaged over splits."""
    rng = np.random.default_rng(seed)
    dots = []
    for _ in range(n_repeats):
        first, second = split_halves(data, rng)
        dots.append(float(masked_vector(first, method, mask) @ masked_vector(second, method, mask)))
    return float(np.mean(dots))


@dataclass(frozen=True)
class BlockSimilarity:
    """CD similarity of blocks a and b from halves of equal trial counts, with the ceilings of those halves.

    `dot`: mean over splits of the dot products between a's and b's half-CDs (each half-CD of `n_right` +
    `n_left` trials); `ceiling_a` / `ceiling_b`: the dot of each block's own two disjoint halves of the
    same counts; `ceiling` = sqrt(ceiling_a x ceiling_b) (negative ceilings count as 0), the similarity two
    blocks of the same pattern reach at these counts. `dot / ceiling` near 1 = the same pattern."""

    dot: float
    ceiling: float
    ceiling_a: float
    ceiling_b: float
    n_right: int
    n_left: int

    def to_dict(self) -> dict[str, Any]:
        return {"dot": round(self.dot, 4), "ceiling": round(self.ceiling, 4),
                "ceiling_a": round(self.ceiling_a, 4), "ceiling_b": round(self.ceiling_b, 4),
                "n_right": self.n_right, "n_left": self.n_left}


def _ceiling(ceiling_a: float, ceiling_b: float) -> float:
    return float(np.sqrt(max(ceiling_a, 0.0) * max(ceiling_b, 0.0)))


def _selections(n: int, k: int, n_repeats: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Averaging matrices (repeats x n) of two disjoint random halves of k of n trials per repeat."""
    if not 0 < k <= n // 2:
        raise ValueError(f"halves of {k} trials need at least {2 * k} trials on that side, got {n}")
    order = np.argsort(rng.random((n_repeats, n)), axis=1)
    rows = np.arange(n_repeats)[:, None]
    first, second = np.zeros((n_repeats, n)), np.zeros((n_repeats, n))
    first[rows, order[:, :k]] = 1.0 / k
    second[rows, order[:, k:2 * k]] = 1.0 / k
    return first, second


def half_cds(data: EpochData, sizes: tuple[int, int], method: Method | str = "classic", n_repeats: int = 10,
             seed: int | np.random.Generator = 0, mask: np.ndarray | None = None,
             ) -> tuple[np.ndarray, np.ndarray]:
    """Unit CDs (repeats x neurons) of the first and of the second of two disjoint random halves of `sizes`
    = (right, left) trials, per repeat: the same CDs as `masked_vector` of each half, all repeats in one
    product per side (the trial means of a half are a selection matrix times the trials)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    method = _check_method(method)
    if method == "lda_eigenvector":  # no closed form over sums: one fit per half
        pairs = [split_halves(data, rng, sizes) for _ in range(n_repeats)]
        return (np.array([masked_vector(a, method, mask) for a, _ in pairs]),
                np.array([masked_vector(b, method, mask) for _, b in pairs]))
    keep = np.ones(data.n_neurons, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if method == "lda":
        if data.right_bins is None or data.left_bins is None:
            raise ValueError("the LDA CD needs binned window activity (EpochData.right_bins / left_bins)")
        right, left = data.right_bins[..., keep], data.left_bins[..., keep]
    else:
        right, left = data.right_means[:, None, keep], data.left_means[:, None, keep]
    n_bins, n_kept = right.shape[1], right.shape[2]
    r1, r2 = _selections(len(right), sizes[0], n_repeats, rng)
    l1, l2 = _selections(len(left), sizes[1], n_repeats, rng)
    flat_r, flat_l = right.reshape(len(right), -1), left.reshape(len(left), -1)
    out = []
    for sel_r, sel_l in ((r1, l1), (r2, l2)):
        d = (sel_r @ flat_r - sel_l @ flat_l).reshape(n_repeats, n_bins, n_kept)
        norms = np.linalg.norm(d, axis=2, keepdims=True)
        w = np.divide(d, norms, out=np.zeros_like(d), where=norms > 0).mean(axis=1)
        flat = np.all(w == 0, axis=1)
        w[flat] = d[flat].mean(axis=1)  # no selective bin: the window's mean difference
        norm = np.linalg.norm(w, axis=1, keepdims=True)
        w = np.divide(w, norm, out=np.zeros_like(w), where=norm > 0)
        full = np.zeros((n_repeats, data.n_neurons))
        full[:, keep] = w
        out.append(full)
    return out[0], out[1]


def block_similarity(a: EpochData, b: EpochData, method: Method | str = "classic", n_repeats: int = 10,
                     seed: int = 0, mask: np.ndarray | None = None) -> BlockSimilarity:
    """Similarity of two blocks' CDs with its ceiling, every CD from k trials per side, k = the smaller
    block's half (floor(n/2) per side); `mask` (neurons,) keeps only those neurons in every CD."""
    if a.n_neurons != b.n_neurons:
        raise ValueError(f"blocks over different neuron counts ({a.n_neurons} vs {b.n_neurons}) do not "
                         "compare")
    sizes = (min(a.n_right, b.n_right) // 2, min(a.n_left, b.n_left) // 2)
    if min(sizes) < 1:
        raise ValueError(f"halves need at least 2 trials per side in both blocks, got {a.n_right}/{a.n_left} "
                         f"and {b.n_right}/{b.n_left} (right/left)")
    rng = np.random.default_rng(seed)
    a1, a2 = half_cds(a, sizes, method, n_repeats, rng, mask)
    b1, b2 = half_cds(b, sizes, method, n_repeats, rng, mask)
    dot = float(np.mean([np.sum(x * y, axis=1) for x in (a1, a2) for y in (b1, b2)]))
    ca, cb = float(np.mean(np.sum(a1 * a2, axis=1))), float(np.mean(np.sum(b1 * b2, axis=1)))
    return BlockSimilarity(dot, _ceiling(ca, cb), ca, cb, *sizes)


def half_vectors(data: EpochData, sizes: tuple[int, int], method: Method | str = "classic",
                 seed: int = 0, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two unit CDs from disjoint halves of `sizes` = (right, left) trials, kept with a stored CD so a later
    session can compare with it at equal counts (`similarity_to_halves`)."""
    first, second = half_cds(data, sizes, method, 1, seed, mask)
    return first[0], second[0]


def similarity_to_halves(a: EpochData, halves: tuple[np.ndarray, np.ndarray], sizes: tuple[int, int],
                         method: Method | str = "classic", n_repeats: int = 10, seed: int = 0,
                         mask: np.ndarray | None = None) -> BlockSimilarity:
    """Block a (with its trials) against a stored block known only by two half-CDs of `sizes` trials per
    side: a's halves are drawn at the same sizes (fewer when a has fewer; `n_right`/`n_left` say which)."""
    b1, b2 = (unit(np.asarray(h, dtype=float)) for h in halves)
    if b1.size != a.n_neurons:
        raise ValueError(f"blocks over different neuron counts ({a.n_neurons} vs {b1.size}) do not compare")
    own = (min(a.n_right // 2, sizes[0]), min(a.n_left // 2, sizes[1]))
    if min(own) < 1:
        raise ValueError(f"halves need at least 2 trials per side, got {a.n_right}/{a.n_left} (right/left)")
    a1, a2 = half_cds(a, own, method, n_repeats, seed, mask)
    dot = float(np.mean([x @ y for x in (a1, a2) for y in (b1, b2)]))
    ca, cb = float(np.mean(np.sum(a1 * a2, axis=1))), float(b1 @ b2)
    return BlockSimilarity(dot, _ceiling(ca, cb), ca, cb, *own)


def masked_vector(data: EpochData, method: Method | str = "classic", mask: np.ndarray | None = None,
                  ) -> np.ndarray:
    """The unit CD of the data with the neurons outside `mask` set to zero (None: every neuron)."""
    if mask is None:
        return fit_vector(data, method)
    keep = np.asarray(mask, dtype=bool)
    v = np.zeros(data.n_neurons)
    if keep.any():
        v[keep] = fit_vector(data.only_neurons(keep), method)
    return v
