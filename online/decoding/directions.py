"""Coding directions: the classic and LDA CDs of two classes of trials, as unit vectors over one ROI set,
and their similarity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from online.decoding.boundary import Boundary, Decode, Side
from online.settings import CdMethod

Method = CdMethod
LdaAxis = Literal["right_singular", "eigenvector"]
LDA_AXES: tuple[str, ...] = ("right_singular", "eigenvector")
EPOCHS: tuple[str, ...] = ("sample", "delay", "response")
METHODS: tuple[str, ...] = get_args(CdMethod)


class DecoderNotReady(RuntimeError):
    """The context has too few correct trials per side for a coding direction; no decode is made."""


def unit(v: np.ndarray) -> np.ndarray:
    """v / |v| (a zero vector stays zero)."""
    v = np.asarray(v, dtype=float)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v.copy()


def _check_side(side: str) -> Side:
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    return side  # type: ignore[return-value]


def _check_epoch(epoch: str) -> str:
    if epoch not in EPOCHS:
        raise ValueError(f"unknown epoch {epoch!r}; valid: {', '.join(EPOCHS)}")
    return epoch


def _check_method(method: str) -> Method:
    if method not in METHODS:
        raise ValueError(f"unknown CD method {method!r}; valid: {', '.join(METHODS)}")
    return method  # type: ignore[return-value]


def _lda_axis(method: str) -> LdaAxis:
    return "eigenvector" if method == "lda_eigenvector" else "right_singular"


def classic_cd(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Unit right-minus-left difference of trial means; `right` and `left` are trials x neurons."""
    right, left = np.asarray(right, dtype=float), np.asarray(left, dtype=float)
    if right.ndim != 2 or left.ndim != 2 or right.shape[1] != left.shape[1] or not (len(right) and len(left)):
        raise ValueError(f"need trials x neurons arrays with trials on both sides, got {right.shape}, "
                         f"{left.shape}")
    return unit(right.mean(axis=0) - left.mean(axis=0))


def fisher_lda_direction(right: np.ndarray, left: np.ndarray, axis: LdaAxis | str = "right_singular",
                         ) -> np.ndarray:
    """Fisher LDA axis of one time bin (trials x neurons per side), unit length, right projecting above left.

    W is the within-class scatter, B = T - W the between-class scatter; with two classes
    B = nR nL / n (muR - muL)(muR - muL)^T has rank one, so pinv(W) B = c (pinv(W) d) d^T with d = muR - muL.
    Its two readings have closed forms, used here (no n x n decomposition):

    - "right_singular": the first right singular vector of pinv(W) B, which is what the paper's published
      code takes (KD_LDA2: `[u,s,v] = svd(pinv(W)*B)`, axis = v(:,1)). For a rank-one matrix that vector is
      d / |d|: the per-bin mean difference, whatever W is;
    - "eigenvector": the top eigenvector of pinv(W) B, the textbook Fisher axis pinv(W) d. With about as
      many trials as neurons or fewer, W is poorly estimated and this axis is mostly noise (module notes).
      pinv's cut-off is MATLAB's (max(size(W)) * eps * |W|); it is computed through the eigenvectors of the
      centred trials' Gram matrix X X^T (W = X^T X), O(trials^2 neurons). When W is zero it falls back to d.
    """
    right, left = np.asarray(right, dtype=float), np.asarray(left, dtype=float)
    mu_r, mu_l = right.mean(axis=0), left.mean(axis=0)
    d = mu_r - mu_l
    if axis == "right_singular":
        return unit(d)
    if axis != "eigenvector":
        raise ValueError(f"unknown LDA axis {axis!r}; valid: {', '.join(LDA_AXES)}")
    x = np.vstack([right - mu_r, left - mu_l])  # W = x^T x
    s2, u = np.linalg.eigh(x @ x.T)  # the trials' Gram matrix: W's non-zero eigenvalues, trials^2 in size
    if not s2.size or s2.max() <= 0:
        return unit(d)
    keep = s2 > x.shape[1] * np.finfo(float).eps * s2.max()
    v = (x.T @ u[:, keep]) / np.sqrt(s2[keep])  # W's eigenvectors (neurons x kept)
    w = v @ ((v.T @ d) / s2[keep])
    if float(w @ d) < 0:
        w = -w
    return unit(w) if np.any(w) else unit(d)


def gram_schmidt(vectors: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Orthonormal rows from the rows of `vectors` in order (modified Gram-Schmidt, twice for stability);
    a row that is (numerically) in the span of the earlier ones is dropped. The first row keeps its
    direction: basis[0] = vectors[0] / |vectors[0]|."""
    basis: list[np.ndarray] = []
    for v in np.asarray(vectors, dtype=float):
        norm0 = float(np.linalg.norm(v))
        if norm0 == 0:
            continue
        u = v.copy()
        for _ in range(2):
            for b in basis:
                u -= (u @ b) * b
        norm = float(np.linalg.norm(u))
        if norm > tol * norm0:
            basis.append(u / norm)
    return np.array(basis).reshape(len(basis), np.asarray(vectors).shape[-1])


@dataclass(frozen=True, eq=False)
class LdaResult:
    """The paper's LDA CD with what it was built from."""

    vector: np.ndarray
    """The CD: the first unit vector of `basis` (= the normalised bin-averaged LDA weights)."""
    basis: np.ndarray
    """Orthonormal rows: the CD, then the trial-averaged activity's singular vectors made orthogonal to it."""
    bin_weights: np.ndarray
    """Per-bin LDA axes (bins x neurons)."""


def lda_vector(right_bins: np.ndarray, left_bins: np.ndarray, axis: LdaAxis | str = "right_singular",
               ) -> np.ndarray:
    """The paper's CD alone (= `lda_cd(...).vector`, without the basis): the unit mean of the per-bin LDA
    axes, or the window's unit mean difference when no bin is selective."""
    right_bins, left_bins = np.asarray(right_bins, dtype=float), np.asarray(left_bins, dtype=float)
    if axis == "right_singular":  # per-bin unit mean differences, vectorised
        per_bin = right_bins.mean(axis=0) - left_bins.mean(axis=0)
        norms = np.linalg.norm(per_bin, axis=1, keepdims=True)
        weights = np.divide(per_bin, norms, out=np.zeros_like(per_bin), where=norms > 0)
    else:
        weights = np.array([fisher_lda_direction(right_bins[:, b], left_bins[:, b], axis)
                            for b in range(right_bins.shape[1])])
    averaged = weights.mean(axis=0)
    if not np.any(averaged):
        averaged = right_bins.mean(axis=(0, 1)) - left_bins.mean(axis=(0, 1))
    return unit(averaged)


def lda_cd(right_bins: np.ndarray, left_bins: np.ndarray, n_singular: int | None = None,
           axis: LdaAxis | str = "right_singular") -> LdaResult:
    """The paper's CD from binned window activity (trials x bins x neurons per side): per-bin LDA axes
    averaged, then Gram-Schmidt against the trial average's singular vectors (the CD is the first vector)."""
    right_bins, left_bins = np.asarray(right_bins, dtype=float), np.asarray(left_bins, dtype=float)
    if right_bins.ndim != 3 or left_bins.ndim != 3 or right_bins.shape[1:] != left_bins.shape[1:]:
        raise ValueError(f"need trials x bins x neurons arrays of matching bins and neurons, got "
                         f"{right_bins.shape}, {left_bins.shape}")
    n_bins = right_bins.shape[1]
    weights = np.array([fisher_lda_direction(right_bins[:, b], left_bins[:, b], axis) for b in range(n_bins)])
    averaged = weights.mean(axis=0)
    if not np.any(averaged):  # no selectivity in any bin: nothing better than the window's mean difference
        averaged = unit(right_bins.mean(axis=(0, 1)) - left_bins.mean(axis=(0, 1)))
    trial_average = np.vstack([left_bins.mean(axis=0), right_bins.mean(axis=0)])  # (2 bins) x neurons
    _, _, vt = np.linalg.svd(trial_average, full_matrices=False)
    if n_singular is not None:
        vt = vt[:n_singular]
    basis = gram_schmidt(np.vstack([averaged, vt]))
    if not np.any(averaged):  # identical classes: a zero CD, and the basis is the singular vectors alone
        return LdaResult(np.zeros(averaged.size), basis, weights)
    return LdaResult(basis[0].copy(), basis, weights)


@dataclass(frozen=True, eq=False)
class CodingDirection:
    """A unit CD over a fixed set of neurons (ROI set), with the boundary trained alongside it."""

    vector: np.ndarray
    boundary: Boundary
    context: str
    epoch: str = "delay"
    method: str = "classic"
    n_right: int = 0
    n_left: int = 0
    roi_set_id: str | None = None
    """Which neurons the vector's entries are (e.g. a hash of the ROI masks); CDs compare only within one."""
    block: str | None = None
    """The block (visit to the context, protocols/blocks.py: 1, 2, 1', ...) it was trained on; None for
    CDs stored before blocks existed (one per context)."""

    def __post_init__(self) -> None:
        vector = np.array(self.vector, dtype=float)  # a copy: the caller's array stays writeable and ours not
        if vector.ndim != 1 or not vector.size:
            raise ValueError(f"a coding direction is a non-empty vector, got shape {vector.shape}")
        norm = float(np.linalg.norm(vector))
        if abs(norm - 1.0) > 1e-6:
            raise ValueError(f"a coding direction is a unit vector (its boundary is in its units), "
                             f"got norm {norm}")
        vector.flags.writeable = False
        object.__setattr__(self, "vector", vector)

    @property
    def n_neurons(self) -> int:
        return int(self.vector.size)

    def project(self, activity: np.ndarray) -> float:
        """Projection of window-mean activity (neurons,), or the mean projection of frames x neurons."""
        a = np.asarray(activity, dtype=float)
        if a.shape[-1] != self.n_neurons:
            raise ValueError(f"activity has {a.shape[-1]} neurons, the CD {self.n_neurons}")
        return float(np.mean(a @ self.vector)) if a.ndim == 2 else float(a @ self.vector)

    def decode(self, activity: np.ndarray) -> Decode:
        return self.boundary.decode(self.project(activity))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (lists of floats) for subject.json."""
        return {"context": self.context, "epoch": self.epoch, "method": self.method,
                "n_neurons": self.n_neurons, "roi_set_id": self.roi_set_id, "n_right": self.n_right,
                "n_left": self.n_left, "block": self.block, "vector": [float(x) for x in self.vector],
                "boundary": self.boundary.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodingDirection:
        vector = np.asarray(data["vector"], dtype=float)
        if int(data.get("n_neurons", vector.size)) != vector.size:
            raise ValueError(f"stored CD of context {data.get('context')!r} says {data['n_neurons']} neurons "
                             f"but holds {vector.size} weights")
        return cls(vector, Boundary.from_dict(data["boundary"]), str(data["context"]),
                   str(data.get("epoch", "delay")), str(data.get("method", "classic")),
                   int(data.get("n_right", 0)), int(data.get("n_left", 0)), data.get("roi_set_id"),
                   None if data.get("block") is None else str(data["block"]))

    @property
    def key(self) -> str:
        """What it is the CD of: its block's label, or its context's name for a CD without a block."""
        return self.block if self.block is not None else self.context


def cd_similarity(a: CodingDirection | np.ndarray, b: CodingDirection | np.ndarray) -> float:
    """Dot product of two unit CDs over the same neurons (1 = same pattern, ~0 = unrelated)."""
    if isinstance(a, CodingDirection) and isinstance(b, CodingDirection) and \
            a.roi_set_id is not None and b.roi_set_id is not None and a.roi_set_id != b.roi_set_id:
        raise ValueError(f"CDs over different ROI sets ({a.roi_set_id!r} vs {b.roi_set_id!r}) do not compare")
    va = a.vector if isinstance(a, CodingDirection) else unit(np.asarray(a, dtype=float))
    vb = b.vector if isinstance(b, CodingDirection) else unit(np.asarray(b, dtype=float))
    if va.shape != vb.shape:
        raise ValueError(f"CDs over different neuron counts ({va.size} vs {vb.size}) do not compare")
    return float(va @ vb)
