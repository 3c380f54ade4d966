"""Block-by-block population analysis, as in the paper: CD similarity with its split-half ceiling, the
cross-decoding matrix and the memory trace, from per-trial delay-window activity of tracked neurons.

Every comparison runs over the neurons both blocks share (tracked across their sessions), and every CD is
trained on a random half of a block's correct trials with the same number of trials per side on both sides
of a comparison, so a similarity and its ceiling are comparable. Accuracies are balanced (the mean of the
per-side accuracies), so an unbalanced test block cannot look decodable by predicting one side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from online.decoding.batch import EpochData, accuracy, fit_vector, split_halves, train


@dataclass(frozen=True, eq=False)
class BlockActivity:
    """One block's correct, ungated trials: binned delay-window activity per side (trials x bins x neurons),
    columns named by subject-wide neuron ids."""

    label: str
    context: str
    sessions: tuple[str, ...]
    right_bins: np.ndarray
    left_bins: np.ndarray
    neuron_ids: np.ndarray

    def __post_init__(self) -> None:
        for name in ("right_bins", "left_bins"):
            bins = getattr(self, name)
            if bins.ndim != 3 or bins.shape[2] != len(self.neuron_ids):
                raise ValueError(f"block {self.label}: {name} must be trials x bins x {len(self.neuron_ids)} "
                                 f"neurons, got shape {bins.shape}")

    @property
    def n_right(self) -> int:
        return int(self.right_bins.shape[0])

    @property
    def n_left(self) -> int:
        return int(self.left_bins.shape[0])

    @property
    def half_size(self) -> int:
        """Trials per side in one half: half the smaller side."""
        return min(self.n_right, self.n_left) // 2

    def on(self, neuron_ids: np.ndarray) -> EpochData:
        """The block's trials over those neurons, in that order."""
        column = {int(n): i for i, n in enumerate(self.neuron_ids)}
        cols = np.array([column[int(n)] for n in neuron_ids], dtype=int)
        rb, lb = self.right_bins[:, :, cols], self.left_bins[:, :, cols]
        return EpochData(rb.mean(axis=1), lb.mean(axis=1), rb, lb)


def shared_neurons(*blocks: BlockActivity) -> np.ndarray:
    """Neuron ids present in every block, sorted."""
    ids = blocks[0].neuron_ids
    for block in blocks[1:]:
        ids = np.intersect1d(ids, block.neuron_ids)
    return np.sort(ids)


def _draw(data: EpochData, k: int, rng: np.random.Generator) -> tuple[EpochData, EpochData]:
    """k trials per side, and the rest."""
    r, lf = rng.permutation(data.n_right), rng.permutation(data.n_left)
    return data.subset(r[:k], lf[:k]), data.subset(r[k:], lf[k:])


@dataclass(frozen=True)
class SimilarityMatrix:
    """CD dot products between blocks (off the diagonal), each block's split-half ceiling on the diagonal."""

    labels: list[str]
    matrix: list[list[float | None]]
    ceiling: list[float | None]
    neurons: list[list[int]]
    """Neurons each comparison ran over."""
    half_trials: list[list[int]]
    """Trials per side in each half compared."""


def cd_similarity_matrix(blocks: Sequence[BlockActivity], method: str, n_repeats: int, min_half: int,
                         seed: int = 0) -> SimilarityMatrix:
    """Mean dot product of CDs trained on equal-sized halves; a pair with fewer than `min_half` trials per
    side in a half (or fewer than two shared neurons) is None."""
    rng = np.random.default_rng(seed)
    n = len(blocks)
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    neurons = [[0] * n for _ in range(n)]
    halves = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            ids = shared_neurons(blocks[i], blocks[j])
            k = min(blocks[i].half_size, blocks[j].half_size)
            neurons[i][j] = neurons[j][i] = int(ids.size)
            halves[i][j] = halves[j][i] = k
            if k < min_half or ids.size < 2:
                continue
            a, b = blocks[i].on(ids), blocks[j].on(ids)
            dots = []
            for _ in range(n_repeats):
                if i == j:
                    first, second = split_halves(a, rng, sizes=(k, k))
                else:
                    first, second = _draw(a, k, rng)[0], _draw(b, k, rng)[0]
                dots.append(float(fit_vector(first, method) @ fit_vector(second, method)))
            matrix[i][j] = matrix[j][i] = float(np.mean(dots))
    ceiling = [matrix[i][i] for i in range(n)]
    return SimilarityMatrix([b.label for b in blocks], matrix, ceiling, neurons, halves)


@dataclass(frozen=True)
class CrossDecoding:
    """Balanced accuracy of the CD and boundary trained on block i (row) tested on block j (column); the
    diagonal is held-out (trained on one half, tested on the other)."""

    labels: list[str]
    matrix: list[list[float | None]]


def cross_decoding_matrix(blocks: Sequence[BlockActivity], method: str, n_repeats: int, min_half: int,
                          seed: int = 0) -> CrossDecoding:
    rng = np.random.default_rng(seed)
    n = len(blocks)
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            ids = shared_neurons(blocks[i], blocks[j])
            k = blocks[i].half_size
            if k < min_half or ids.size < 2 or min(blocks[j].n_right, blocks[j].n_left) < 1:
                continue
            a, b = blocks[i].on(ids), blocks[j].on(ids)
            scores = []
            for _ in range(n_repeats):
                trained_on, held_out = _draw(a, k, rng)
                scores.append(accuracy(train(trained_on, "", method=method), held_out if i == j else b))
            matrix[i][j] = float(np.mean(scores))
    return CrossDecoding([b.label for b in blocks], matrix)


@dataclass(frozen=True)
class MemoryTrace:
    """Context 2's delay CD decoding context 1 (before it) and 1' (after it), with a one-sided
    permutation test of 1' > 1."""

    cd_block: str
    prev_block: str
    return_block: str
    prev_context_accuracy: float
    return_context_accuracy: float
    p_value: float
    neurons: int


def memory_trace(cd_block: BlockActivity, prev_block: BlockActivity, return_block: BlockActivity, method: str,
                 n_permutations: int = 2000, seed: int = 0) -> MemoryTrace:
    """The CD (and boundary) of `cd_block` on all its trials, tested on every trial of the two others.
    The p-value permutes trials between the two tested blocks within each side (how often a random split
    of their trials separates them as much as the real one)."""
    ids = shared_neurons(cd_block, prev_block, return_block)
    if ids.size < 2:
        raise ValueError(f"blocks {cd_block.label}, {prev_block.label}, {return_block.label} share "
                         f"{ids.size} neurons; the memory trace needs at least 2")
    cd = train(cd_block.on(ids), "", method=method)
    prev, ret = prev_block.on(ids), return_block.on(ids)
    db = cd.boundary.value
    right = np.concatenate([prev.right_means @ cd.vector, ret.right_means @ cd.vector]) > db
    left = np.concatenate([prev.left_means @ cd.vector, ret.left_means @ cd.vector]) < db
    n_pr, n_pl = prev.n_right, prev.n_left

    def difference(r: np.ndarray, lf: np.ndarray) -> float:
        acc_prev = 0.5 * (r[:n_pr].mean() + lf[:n_pl].mean())
        acc_ret = 0.5 * (r[n_pr:].mean() + lf[n_pl:].mean())
        return float(acc_ret - acc_prev)

    observed = difference(right, left)
    rng = np.random.default_rng(seed)
    exceed = sum(difference(rng.permutation(right), rng.permutation(left)) >= observed - 1e-12
                 for _ in range(n_permutations))
    acc_prev = 0.5 * (right[:n_pr].mean() + left[:n_pl].mean())
    acc_ret = 0.5 * (right[n_pr:].mean() + left[n_pl:].mean())
    return MemoryTrace(cd_block.label, prev_block.label, return_block.label, float(acc_prev), float(acc_ret),
                       float((exceed + 1) / (n_permutations + 1)), int(ids.size))
