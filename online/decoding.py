"""Preparatory coding directions (CD) and decoding of the upcoming lick, per task context.

What is computed (task-and-analysis.md, "Coding direction (CD) and decoding"; Kim, Daie & Li 2025 and
their published analysis code, STEP3_*_CD.m and KD_LDA2.m), on correct trials only:

- classic CD (`method="classic"`): mean(right) - mean(left) of the window-mean activity, unit length;
- the paper's LDA CD (`method="lda"`): per time bin of the window, a Fisher LDA axis signed so right
  projects above left; those unit axes averaged over the window's bins; then Gram-Schmidt of
  [w, v1, v2, ...], v_i the right singular vectors (neuron space) of the trial-averaged activity in the
  window (left and right averages stacked, as in the paper's code); CD = the first unit vector.
  Gram-Schmidt leaves its first vector's direction alone, so the CD is w / |w|; the singular vectors only
  shape the rest of the basis (`LdaResult.basis`, for variance-explained plots). That is the paper's code
  read literally.
  The per-bin axis: the spec says "top eigenvector of pinv(W) B"; the published code takes the first RIGHT
  singular vector of pinv(W) B (`[u,s,v] = svd(pinv(W)*B); v(:,1)`). B has rank one for two classes, so
  that vector is the bin's unit mean difference d / |d|, while the eigenvector is pinv(W) d. Both are here:
  `method="lda"` is the code's (reproduces the paper's numbers), `method="lda_eigenvector"` the
  textbook one. With fewer trials than about the number of neurons, pinv(W) d is mostly noise (on the
  simulated rig, ~100 trials x 100 neurons: cosine ~0.3 with the true CD, against ~0.99 for the others);
- windows: sample = 0-1 s from sample onset (last SamplePeriod entry), delay = the last `delay_window_s`
  before the go cue, response = 0.16-1.5 s after the go cue; bins of one frame period by default;
- decision boundary DB = (muR/varR + muL/varL) / (1/varR + 1/varL) over the TRAINING trials' projections
  (window-mean activity on the CD; the paper's code does the same), accuracy = fraction of held-out trials
  on their side of DB, over repeated seeded 50/50 splits per side.

Online, `ContextDecoder` computes the CD of settings `online.decoder.cd_method` (`classic` by default;
every method stays available by name) and takes correct trials one by one (running sums plus per-trial
window means, so an update is O(bins x neurons)) and decodes once both sides have `min_trials_per_side`
trials; before that it raises `DecoderNotReady` instead of guessing. It keeps the most recent
`trials_kept_per_side` correct trials per side (online.decoder.trials_kept_per_side), so memory stays
bounded over any session length.
`RunningProjection` is the closed-loop path: one dot product per frame. CDs travel as plain JSON-able data
(`CodingDirection.to_dict`) and `CodingDirectionStore` keeps them per (session, context) for a subject, so
a live CD can be compared with stored ones (dot product of unit vectors over the same ROI set).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

from online.alignment import EpochWindow, TrialFrames
from online.settings import CdMethod, DecoderSettings

logger = logging.getLogger(__name__)

Side = Literal["left", "right"]
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


# -- coding directions (batch cores) ---------------------------------------------------------------------


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


# -- decision boundary and confidence ------------------------------------------------------------------


def decision_boundary(mu_right: float, var_right: float, mu_left: float, var_left: float) -> float:
    """DB = (muR/varR + muL/varL) / (1/varR + 1/varL): the inverse-variance-weighted mean of the class means
    (closer to the tighter class). Zero variances are floored so the formula stays finite."""
    floor = 1e-12 * max(1.0, (mu_right - mu_left) ** 2)
    var_right, var_left = max(var_right, floor), max(var_left, floor)
    return (mu_right / var_right + mu_left / var_left) / (1.0 / var_right + 1.0 / var_left)


class Decode(NamedTuple):
    """A single-trial decode: the side, the probability it is right (see `Boundary.confidence`), the
    projection on the CD."""

    side: Side
    confidence: float
    projection: float


@dataclass(frozen=True)
class Boundary:
    """Class statistics of the training trials' projections and the decision boundary between them."""

    mu_right: float
    mu_left: float
    var_right: float
    var_left: float
    value: float

    @classmethod
    def fit(cls, right: np.ndarray, left: np.ndarray) -> Boundary:
        """From the projections of training trials (at least two per side: variances are sample variances,
        ddof=1, like MATLAB's std)."""
        right, left = np.asarray(right, dtype=float), np.asarray(left, dtype=float)
        if right.size < 2 or left.size < 2:
            raise ValueError(f"a boundary needs at least 2 trials per side, got {right.size} right, "
                             f"{left.size} left")
        mu_r, mu_l = float(right.mean()), float(left.mean())
        var_r, var_l = float(right.var(ddof=1)), float(left.var(ddof=1))
        return cls(mu_r, mu_l, var_r, var_l, decision_boundary(mu_r, var_r, mu_l, var_l))

    @property
    def pooled_sd(self) -> float:
        return math.sqrt(max(0.5 * (self.var_right + self.var_left), 1e-300))

    def side(self, projection: float) -> Side:
        """Right above the boundary, left at or below it (the paper counts a tie as wrong for both)."""
        return "right" if projection > self.value else "left"

    def confidence(self, projection: float) -> float:
        """Probability that the decoded side is the true one, in [0.5, 1): the logistic posterior of two
        Gaussian classes with the pooled variance s^2 = (varR + varL) / 2, centred on DB:
        log-odds(right) = (muR - muL) / s^2 * (p - DB). 0.5 on the boundary, rising monotonically with the
        distance |p - DB| (in units of s, the slope is the class separation d' = (muR - muL) / s).
        Calibrated when the training projections are Gaussian with similar spreads."""
        s2 = self.pooled_sd**2
        log_odds = abs(self.mu_right - self.mu_left) / s2 * abs(projection - self.value)
        return 1.0 / (1.0 + math.exp(-min(log_odds, 700.0)))

    def decode(self, projection: float) -> Decode:
        return Decode(self.side(projection), self.confidence(projection), float(projection))

    def to_dict(self) -> dict[str, float]:
        return {"mu_right": self.mu_right, "mu_left": self.mu_left, "var_right": self.var_right,
                "var_left": self.var_left, "value": self.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Boundary:
        return cls(*(float(data[k]) for k in ("mu_right", "mu_left", "var_right", "var_left", "value")))


# -- a context's coding direction as data --------------------------------------------------------------


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
                "n_left": self.n_left, "vector": [float(x) for x in self.vector],
                "boundary": self.boundary.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodingDirection:
        vector = np.asarray(data["vector"], dtype=float)
        if int(data.get("n_neurons", vector.size)) != vector.size:
            raise ValueError(f"stored CD of context {data.get('context')!r} says {data['n_neurons']} neurons "
                             f"but holds {vector.size} weights")
        return cls(vector, Boundary.from_dict(data["boundary"]), str(data["context"]),
                   str(data.get("epoch", "delay")), str(data.get("method", "classic")),
                   int(data.get("n_right", 0)), int(data.get("n_left", 0)), data.get("roi_set_id"))


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


# -- training data and the batch analysis ---------------------------------------------------------------


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


# -- online: one context's decoder ---------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder parameters: settings online.decoder, the bin width (one frame period of the imaging) and
    the sample and response windows, which the paper fixes."""

    settings: DecoderSettings = field(default_factory=DecoderSettings)
    """online.decoder: delay window, trials needed and kept per side, the CD method `decode_trial` uses
    (classic and lda update from running sums, O(bins x neurons) per trial; lda_eigenvector refits from
    the stored trials on request)."""
    bin_s: float = 1.0 / 30.0
    sample_window_s: tuple[float, float] = (0.0, 1.0)
    """Relative to sample onset."""
    response_window_s: tuple[float, float] = (0.16, 1.5)
    """Relative to the go cue."""

    def __post_init__(self) -> None:
        if self.bin_s <= 0:
            raise ValueError(f"bin_s must be positive, got {self.bin_s}")

    @property
    def method(self) -> Method:
        """The CD method of settings online.decoder.cd_method."""
        return self.settings.cd_method

    def windows(self) -> dict[str, EpochWindow]:
        return {
            "sample": EpochWindow("sample", *self.sample_window_s),
            "delay": EpochWindow("go", -self.settings.delay_window_s, 0.0),
            "response": EpochWindow("go", *self.response_window_s),
        }


class EpochFeature(NamedTuple):
    """One trial in one epoch window: mean over its frames (neurons,) and its bins (bins x neurons)."""

    mean: np.ndarray
    bins: np.ndarray


def trial_features(trial: TrialFrames, config: DecoderConfig) -> dict[str, EpochFeature | None]:
    """Each epoch's window mean and bins for one trial; None for a window the trial does not cover
    (epoch not reached, or bins without frames on both sides)."""
    out: dict[str, EpochFeature | None] = {}
    for epoch, window in config.windows().items():
        mean = trial.mean_in(window)
        bins = trial.binned_in(window, config.bin_s)
        out[epoch] = None if mean is None or bins is None or not np.isfinite(bins).all() else \
            EpochFeature(mean, bins)
    return out


class _Ring:
    """The most recent `capacity` rows of equal shape, oldest first in `array`; storage grows by doubling up
    to `capacity`, then the oldest row is overwritten (a trial's features stay bounded however long the
    session runs)."""

    def __init__(self, shape: tuple[int, ...], capacity: int) -> None:
        self.capacity = capacity
        self._data = np.empty((min(8, capacity), *shape))
        self._start = 0
        self.n = 0

    def append(self, row: np.ndarray) -> np.ndarray | None:
        """Add a row; returns the row it replaced (a copy) once the ring is full, else None."""
        if self.n < self.capacity:
            if self.n == len(self._data):
                grown = np.empty((min(2 * self.n, self.capacity), *self._data.shape[1:]))
                grown[: self.n] = self._data[: self.n]
                self._data = grown
            self._data[self.n] = row
            self.n += 1
            return None
        evicted = self._data[self._start].copy()
        self._data[self._start] = row
        self._start = (self._start + 1) % self.capacity
        return evicted

    @property
    def wrapped(self) -> bool:
        """True right after the oldest row was overwritten at the start of the storage (once per lap)."""
        return self.n == self.capacity and self._start == 0

    @property
    def array(self) -> np.ndarray:
        """The kept rows, oldest first (a view until the ring has wrapped, then a copy)."""
        if self._start == 0:
            return self._data[: self.n]
        return np.concatenate([self._data[self._start:], self._data[: self._start]])


@dataclass
class _SideStore:
    means: _Ring
    bins: _Ring
    mean_sum: np.ndarray
    bin_sum: np.ndarray
    trials: deque[int | None]


class _EpochStore:
    """Both sides of one epoch: the most recent `capacity` trials' window means and bins per side, and their
    running sums (an evicted trial is subtracted; the sums are recomputed once per lap of the ring, so
    rounding never accumulates)."""

    def __init__(self, n_neurons: int, n_bins: int, capacity: int) -> None:
        self.sides: dict[str, _SideStore] = {
            side: _SideStore(_Ring((n_neurons,), capacity), _Ring((n_bins, n_neurons), capacity),
                             np.zeros(n_neurons), np.zeros((n_bins, n_neurons)), deque(maxlen=capacity))
            for side in ("right", "left")}

    def add(self, side: Side, feature: EpochFeature, trial: int | None) -> None:
        s = self.sides[side]
        old_mean = s.means.append(feature.mean)
        old_bins = s.bins.append(feature.bins)
        s.trials.append(trial)
        if s.means.wrapped:
            s.mean_sum = s.means.array.sum(axis=0)
            s.bin_sum = s.bins.array.sum(axis=0)
            return
        s.mean_sum += feature.mean
        s.bin_sum += feature.bins
        if old_mean is not None and old_bins is not None:
            s.mean_sum -= old_mean
            s.bin_sum -= old_bins

    def count(self, side: Side) -> int:
        return self.sides[side].means.n

    def data(self) -> EpochData:
        r, lf = self.sides["right"], self.sides["left"]
        return EpochData(r.means.array.copy(), lf.means.array.copy(), r.bins.array.copy(),
                         lf.bins.array.copy())


class ContextDecoder:
    """One context's CDs (sample, delay, response), updated trial by trial from correct trials.

    Feed only correct trials (`add_trial`): the CD is defined on them. An update stores the trial's window
    means and bins (the most recent `trials_kept_per_side` per side) and keeps per-side sums over them, so
    the classic CD is a subtraction of two running means and the boundary a projection of the stored means
    (O(trials x neurons)); the LDA CD is refitted lazily on request. Nothing is decoded until both sides
    have `min_trials_per_side` trials."""

    def __init__(self, context: str, n_neurons: int, config: DecoderConfig | None = None,
                 roi_set_id: str | None = None) -> None:
        if n_neurons < 1:
            raise ValueError(f"n_neurons must be at least 1, got {n_neurons}")
        self.context = context
        self.n_neurons = n_neurons
        self.config = config or DecoderConfig()
        self.roi_set_id = roi_set_id
        self.windows = self.config.windows()
        self._stores = {epoch: _EpochStore(n_neurons, window.n_bins(self.config.bin_s),
                                           self.config.settings.trials_kept_per_side)
                        for epoch, window in self.windows.items()}
        self._cache: dict[tuple[str, str], CodingDirection] = {}
        self.skipped: dict[str, int] = dict.fromkeys(EPOCHS, 0)

    # -- updates -------------------------------------------------------------------------------------

    def add_features(self, side: str, features: Mapping[str, EpochFeature | None],
                     trial: int | None = None) -> list[str]:
        """Add one correct trial's features; returns the epochs that took it (a window the trial did not
        cover is skipped for that epoch, counted in `skipped` and logged)."""
        side = _check_side(side)
        taken = []
        for epoch, store in self._stores.items():
            feature = features.get(epoch)
            if feature is None:
                self.skipped[epoch] += 1
                logger.info("context %r: trial %s does not cover the %s window; not used for that CD",
                            self.context, trial, epoch)
                continue
            n_bins = self.windows[epoch].n_bins(self.config.bin_s)
            if feature.mean.shape != (self.n_neurons,) or feature.bins.shape != (n_bins, self.n_neurons):
                raise ValueError(f"context {self.context!r}, trial {trial}: {epoch} feature shapes "
                                 f"{feature.mean.shape}, {feature.bins.shape} do not match the decoder")
            was_ready = self.ready(epoch)
            store.add(side, feature, trial)
            taken.append(epoch)
            if not was_ready and self.ready(epoch):
                logger.info("context %r: %s decoder ready (%d right, %d left correct trials)", self.context,
                            epoch, store.count("right"), store.count("left"))
        self._cache = {k: v for k, v in self._cache.items() if k[0] not in taken}
        return taken

    def add_trial(self, side: str, trial: TrialFrames) -> list[str]:
        """Add one correct trial from its aligned frames (side = the lick direction = the trial type)."""
        return self.add_features(side, trial_features(trial, self.config), trial.trial)

    # -- state ---------------------------------------------------------------------------------------

    def n_trials(self, side: str, epoch: str = "delay") -> int:
        return self._stores[_check_epoch(epoch)].count(_check_side(side))

    def ready(self, epoch: str = "delay") -> bool:
        need = max(self.config.settings.min_trials_per_side, 2)
        store = self._stores[_check_epoch(epoch)]
        return store.count("right") >= need and store.count("left") >= need

    def status(self, epoch: str = "delay") -> str:
        """One sentence for logs and the GUI."""
        store = self._stores[_check_epoch(epoch)]
        need = max(self.config.settings.min_trials_per_side, 2)
        state = "ready" if self.ready(epoch) else f"not ready (needs {need} correct trials per side)"
        return (f"context {self.context!r} {epoch} decoder {state}: {store.count('right')} right, "
                f"{store.count('left')} left correct trials")

    def data(self, epoch: str = "delay") -> EpochData:
        """The stored training trials (copies) for batch analysis."""
        return self._stores[_check_epoch(epoch)].data()

    # -- coding directions and decoding ----------------------------------------------------------------

    def coding_direction(self, epoch: str = "delay", method: Method | str | None = None) -> CodingDirection:
        """The CD and boundary over all stored trials; raises DecoderNotReady with too few trials."""
        if method is None:  # fast path (every frame in the closed loop): entries exist only while ready
            cd = self._cache.get((epoch, self.config.method))
            if cd is not None:
                return cd
        epoch, method = _check_epoch(epoch), _check_method(method or self.config.method)
        if not self.ready(epoch):
            raise DecoderNotReady(self.status(epoch))
        key = (epoch, method)
        cd = self._cache.get(key)
        if cd is None:
            store = self._stores[epoch]
            r, lf = store.sides["right"], store.sides["left"]
            if method == "classic":
                vector = unit(r.mean_sum / r.means.n - lf.mean_sum / lf.means.n)
            elif method == "lda":  # per-bin unit mean differences, averaged: the paper's code, from sums
                per_bin = r.bin_sum / r.means.n - lf.bin_sum / lf.means.n
                norms = np.linalg.norm(per_bin, axis=1, keepdims=True)
                per_bin = np.divide(per_bin, norms, out=np.zeros_like(per_bin), where=norms > 0)
                vector = unit(per_bin.mean(axis=0))
                if not np.any(vector):
                    vector = unit(r.mean_sum / r.means.n - lf.mean_sum / lf.means.n)
            else:
                vector = lda_cd(r.bins.array, lf.bins.array, axis="eigenvector").vector
            if not np.any(vector):
                raise DecoderNotReady(f"{self.status(epoch)}, but right and left trials do not differ")
            boundary = Boundary.fit(r.means.array @ vector, lf.means.array @ vector)
            cd = CodingDirection(vector, boundary, self.context, epoch, method, r.means.n, lf.means.n,
                                 self.roi_set_id)
            self._cache[key] = cd
        return cd

    def trial_average(self, epoch: str = "delay") -> tuple[np.ndarray, np.ndarray]:
        """(right, left) trial-averaged bins of the epoch window (bins x neurons), from the running sums."""
        store = self._stores[_check_epoch(epoch)]
        r, lf = store.sides["right"], store.sides["left"]
        if not r.means.n or not lf.means.n:
            raise DecoderNotReady(self.status(epoch))
        return r.bin_sum / r.means.n, lf.bin_sum / lf.means.n

    def decode_trial(self, activity: np.ndarray | TrialFrames, epoch: str = "delay",
                     method: Method | str | None = None) -> Decode:
        """Decode one trial: window-mean activity (neurons,), frames x neurons of the window (averaged), or a
        `TrialFrames` (its window is taken). Raises DecoderNotReady rather than guessing."""
        cd = self.coding_direction(epoch, method)
        if isinstance(activity, TrialFrames):
            mean = activity.mean_in(self.windows[epoch])
            if mean is None:
                raise ValueError(f"trial {activity.trial} has no frames in its {epoch} window yet")
            activity = mean
        return cd.decode(activity)

    def running_projection(self, epoch: str = "delay", window_s: float | None = None,
                           method: Method | str | None = None) -> RunningProjection:
        """A closed-loop projector on the current CD over a sliding window (default: the epoch's window
        length, e.g. the last delay_window_s)."""
        cd = self.coding_direction(epoch, method)
        return RunningProjection(cd, self.windows[epoch].length_s if window_s is None else window_s)

    def accuracy(self, epoch: str = "delay", method: Method | str | None = None, n_repeats: int = 10,
                 seed: int = 0) -> float:
        """Held-out decoding accuracy (repeated 50/50 splits per side)."""
        if not self.ready(epoch):
            raise DecoderNotReady(self.status(epoch))
        return decoding_accuracy(self.data(epoch), method or self.config.method, n_repeats, seed)

    def split_half_similarity(self, epoch: str = "delay", method: Method | str | None = None,
                              n_repeats: int = 10, seed: int = 0) -> float:
        """Noise ceiling of CD similarity within this session."""
        if not self.ready(epoch):
            raise DecoderNotReady(self.status(epoch))
        return split_half_similarity(self.data(epoch), method or self.config.method, n_repeats, seed)


# -- the closed-loop fast path ---------------------------------------------------------------------------


class RunningProjection:
    """Mean projection on a CD of the frames of the current window, updated per frame (one dot product).

    `window_s=None` averages every frame since the last `reset()` (call it at the window's start, e.g. on
    each DelayPeriod entry, since an early lick restarts the delay); a number keeps a sliding window of the
    frames within `window_s` of the newest one. Frames may come out of order; a frame older than the window
    is ignored. Because projection is linear, the result equals `cd.project(mean of the same frames)`."""

    def __init__(self, cd: CodingDirection, window_s: float | None = None) -> None:
        if window_s is not None and window_s <= 0:
            raise ValueError(f"window_s must be positive or None, got {window_s}")
        self.cd = cd
        self.window_s = window_s
        self._vector = np.ascontiguousarray(cd.vector)
        self._frames: list[tuple[float, float]] = []
        self._sum = 0.0
        self._count = 0

    def reset(self) -> None:
        self._frames.clear()
        self._sum = 0.0
        self._count = 0

    def add(self, time_s: float, values: np.ndarray) -> float:
        """Add one frame's activity (neurons,); returns the window's mean projection so far."""
        p = float(self._vector @ values)
        if self.window_s is None:
            self._sum += p
            self._count += 1
            return self._sum / self._count
        frames = self._frames
        if frames and time_s <= frames[-1][0] - self.window_s:
            return self._sum / self._count
        bisect.insort(frames, (time_s, p))
        self._sum += p
        self._count += 1
        oldest = frames[-1][0] - self.window_s
        while frames[0][0] <= oldest:
            self._sum -= frames.pop(0)[1]
            self._count -= 1
        return self._sum / self._count

    @property
    def n_frames(self) -> int:
        return self._count

    @property
    def value(self) -> float | None:
        """Mean projection over the window's frames (None before the first frame)."""
        return self._sum / self._count if self._count else None

    def decode(self) -> Decode | None:
        value = self.value
        return None if value is None else self.cd.boundary.decode(value)


# -- across contexts and sessions ----------------------------------------------------------------------


def _epoch_data(source: ContextDecoder | EpochData, epoch: str) -> EpochData:
    return source.data(epoch) if isinstance(source, ContextDecoder) else source


Source = ContextDecoder | EpochData


def cross_decoding_matrix(sources: Sequence[Source] | Mapping[str, Source], epoch: str = "delay",
                          method: Method | str = "classic", n_repeats: int = 10, seed: int = 0) -> np.ndarray:
    """N x N held-out accuracies: entry [a, b] trains the CD and boundary on a random half of a's trials and
    tests on a half of b's (the other half when a == b), averaged over `n_repeats` seeded splits. All sources
    must be over the same neurons (same ROI set)."""
    items = list(sources.values()) if isinstance(sources, Mapping) else list(sources)
    data = [_epoch_data(s, _check_epoch(epoch)) for s in items]
    if not data:
        raise ValueError("no decoders to cross-decode")
    if len({d.n_neurons for d in data}) != 1:
        raise ValueError(f"cross-decoding needs the same neurons everywhere, got "
                         f"{[d.n_neurons for d in data]}")
    rois = {s.roi_set_id for s in items if isinstance(s, ContextDecoder) and s.roi_set_id is not None}
    if len(rois) > 1:
        raise ValueError(f"cross-decoding needs one ROI set, got {sorted(rois)}")
    rng = np.random.default_rng(seed)
    n = len(data)
    total = np.zeros((n, n))
    for _ in range(n_repeats):
        halves = [split_halves(d, rng) for d in data]
        cds = [train(first, "", epoch, method) for first, _ in halves]
        for a in range(n):
            for b in range(n):
                total[a, b] += accuracy(cds[a], halves[b][1])
    return total / n_repeats


class Similarity(NamedTuple):
    session: str
    context: str
    epoch: str
    method: str
    dot: float


class CodingDirectionStore:
    """A subject's CDs per (session, context, epoch, method), as plain JSON-able data for subject.json.

    Each entry keeps its neuron count and ROI-set id; `compare` dots a live CD with every stored CD over the
    same neurons, so a returning context's re-activated pattern shows as a high dot product."""

    def __init__(self, subject: str | None = None) -> None:
        self.subject = subject
        self._entries: dict[tuple[str, str, str, str], CodingDirection] = {}

    def put(self, session: str, cd: CodingDirection) -> None:
        """Store (or replace) the CD of a session's context."""
        self._entries[(session, cd.context, cd.epoch, cd.method)] = cd

    def get(self, session: str, context: str, epoch: str = "delay", method: str = "classic",
            ) -> CodingDirection | None:
        return self._entries.get((session, context, epoch, method))

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[tuple[str, CodingDirection]]:
        """(session, CD) pairs in insertion order."""
        return [(key[0], cd) for key, cd in self._entries.items()]

    def compare(self, cd: CodingDirection, same_epoch: bool = True) -> list[Similarity]:
        """Dot products of `cd` with every stored CD over the same neurons (and ROI set, when both have one),
        highest first. Stored CDs over other neurons are skipped."""
        out = []
        for (session, context, epoch, method), stored in self._entries.items():
            if same_epoch and epoch != cd.epoch:
                continue
            if stored.n_neurons != cd.n_neurons or (
                    stored.roi_set_id is not None and cd.roi_set_id is not None
                    and stored.roi_set_id != cd.roi_set_id):
                continue
            out.append(Similarity(session, context, epoch, method, cd_similarity(cd, stored)))
        return sorted(out, key=lambda s: s.dot, reverse=True)

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject,
                "coding_directions": [{"session": s, **cd.to_dict()} for s, cd in self.entries()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodingDirectionStore:
        store = cls(data.get("subject"))
        for entry in data.get("coding_directions", []):
            store.put(str(entry["session"]), CodingDirection.from_dict(entry))
        return store
