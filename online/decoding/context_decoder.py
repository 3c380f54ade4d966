"""One block's decoder (a visit to a context, protocols/blocks.py), updated trial by trial from correct
trials (bounded memory), and decoding across blocks."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from online.alignment import EpochWindow, TrialFrames
from online.decoding.batch import (
    EpochData,
    accuracy,
    decoding_accuracy,
    masked_vector,
    split_half_similarity,
    split_halves,
    train,
)
from online.decoding.boundary import Boundary, Decode
from online.decoding.directions import (
    EPOCHS,
    CodingDirection,
    DecoderNotReady,
    Method,
    Side,
    _check_epoch,
    _check_method,
    _check_side,
    lda_cd,
    unit,
)
from online.decoding.projection import RunningProjection
from online.decoding.reliability import reliable_neurons
from online.settings import DecoderSettings

logger = logging.getLogger(__name__)


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
    """The most recent `capacity` rows of equal shape, oldest first in `array`; once full, the oldest row is
    overwritten. Its storage is claimed whole when the ring is made (and written, so the pages are
    resident): a context's decoder costs its bounded memory from its first trial on, instead of growing by
    steps through a long session (and never needs a copy to grow)."""

    def __init__(self, shape: tuple[int, ...], capacity: int) -> None:
        self.capacity = capacity
        self._data = np.empty((capacity, *shape))
        self._data.fill(0.0)
        self._start = 0
        self.n = 0

    def append(self, row: np.ndarray) -> np.ndarray | None:
        """Add a row; returns the row it replaced (a copy) once the ring is full, else None."""
        if self.n < self.capacity:
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
    """One block's CDs (sample, delay, response), updated trial by trial from correct trials.

    `block` is the block's label (1, 2, 1', ...): a return to a context is a new block and gets a new
    decoder, so 1 and 1' can be compared. Without a block the decoder is its context's (older records).
    With online.decoder.reliability_min_r set, only reliable neurons (online/decoding/reliability.py)
    enter the CDs (the others get weight 0).

    Feed only correct trials (`add_trial`): the CD is defined on them. An update stores the trial's window
    means and bins (the most recent `trials_kept_per_side` per side) and keeps per-side sums over them, so
    the classic CD is a subtraction of two running means and the boundary a projection of the stored means
    (O(trials x neurons)); the LDA CD is refitted lazily on request. Nothing is decoded until both sides
    have `min_trials_per_side` trials."""

    def __init__(self, context: str, n_neurons: int, config: DecoderConfig | None = None,
                 roi_set_id: str | None = None, block: str | None = None) -> None:
        if n_neurons < 1:
            raise ValueError(f"n_neurons must be at least 1, got {n_neurons}")
        self.context = context
        self.block = block
        self.n_neurons = n_neurons
        self.config = config or DecoderConfig()
        self.roi_set_id = roi_set_id
        self.windows = self.config.windows()
        self._stores = {epoch: _EpochStore(n_neurons, window.n_bins(self.config.bin_s),
                                           self.config.settings.trials_kept_per_side)
                        for epoch, window in self.windows.items()}
        self._cache: dict[tuple[str, str], CodingDirection] = {}
        self._mask: np.ndarray | None = None
        self.skipped: dict[str, int] = dict.fromkeys(EPOCHS, 0)

    @property
    def key(self) -> str:
        """The block's label, or the context's name for a decoder without a block."""
        return self.block if self.block is not None else self.context

    @property
    def name(self) -> str:
        """For logs: block 1' (tactile), or context 'tactile'."""
        if self.block is not None:
            return f"block {self.block} ({self.context})"
        return f"context {self.context!r}"

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
                logger.info("%s: trial %s does not cover the %s window; not used for that CD",
                            self.name, trial, epoch)
                continue
            n_bins = self.windows[epoch].n_bins(self.config.bin_s)
            if feature.mean.shape != (self.n_neurons,) or feature.bins.shape != (n_bins, self.n_neurons):
                raise ValueError(f"{self.name}, trial {trial}: {epoch} feature shapes "
                                 f"{feature.mean.shape}, {feature.bins.shape} do not match the decoder")
            was_ready = self.ready(epoch)
            store.add(side, feature, trial)
            taken.append(epoch)
            if not was_ready and self.ready(epoch):
                logger.info("%s: %s decoder ready (%d right, %d left correct trials)", self.name, epoch,
                            store.count("right"), store.count("left"))
        self._cache = {k: v for k, v in self._cache.items() if k[0] not in taken}
        if taken:
            self._mask = None
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
        return (f"{self.name} {epoch} decoder {state}: {store.count('right')} right, "
                f"{store.count('left')} left correct trials")

    def data(self, epoch: str = "delay") -> EpochData:
        """The stored training trials (copies) for batch analysis."""
        return self._stores[_check_epoch(epoch)].data()

    def neuron_mask(self) -> np.ndarray | None:
        """The neurons that enter the CDs (online.decoder.reliability_min_r over every epoch's trials), or
        None when the filter is off (every neuron)."""
        min_r = self.config.settings.reliability_min_r
        if min_r is None:
            return None
        if self._mask is None:
            try:
                self._mask = reliable_neurons([self.data(e) for e in EPOCHS], min_r)
            except ValueError:
                return np.zeros(self.n_neurons, dtype=bool)
            logger.info("%s: %d of %d neurons reliable (split-half r >= %s)", self.name,
                        int(self._mask.sum()), self.n_neurons, min_r)
        return self._mask

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
            mask = self.neuron_mask()
            if mask is not None:
                vector = unit(masked_vector(store.data(), method, mask))
            elif method == "classic":
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
                                 self.roi_set_id, self.block)
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

    def accuracy(self, epoch: str = "delay", method: Method | str | None = None, n_repeats: int | None = None,
                 seed: int = 0) -> float:
        """Held-out balanced decoding accuracy (online.decoder.split_repeats random halves per side)."""
        if not self.ready(epoch):
            raise DecoderNotReady(self.status(epoch))
        return decoding_accuracy(self.data(epoch), method or self.config.method,
                                 n_repeats or self.config.settings.split_repeats, seed, self.neuron_mask())

    def split_half_similarity(self, epoch: str = "delay", method: Method | str | None = None,
                              n_repeats: int | None = None, seed: int = 0) -> float:
        """Noise ceiling of CD similarity within this block (disjoint halves)."""
        if not self.ready(epoch):
            raise DecoderNotReady(self.status(epoch))
        return split_half_similarity(self.data(epoch), method or self.config.method,
                                     n_repeats or self.config.settings.split_repeats, seed,
                                     self.neuron_mask())


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
