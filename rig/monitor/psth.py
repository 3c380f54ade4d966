"""Peri-stimulus time histograms of every ROI, per condition, accumulated trial by trial as the monitor
receives traces: mean activity (dF/F, or deconvolved activity) aligned to the sample onset and to the go
cue, for left and right trials, hits and errors, per context or block.

A trial's samples wait (keyed by trial, in the trial's own time) until both its record (where the sample
and the go cue were) and its samples are in: at the record when the traces keep up, at the first sample of
a later trial when the online module runs behind. They are then binned and added to running sums, so the
cost per trial is fixed and memory is the bins, not the session. Selectivity (left vs right hits in the
last second of the delay, in units of each ROI's standard deviation) orders the heatmap and picks the
neurons the PSTH panel shows.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

BIN_S = 0.1
WINDOWS: Mapping[str, tuple[float, float]] = {"sample": (-1.0, 4.0), "go": (-2.0, 2.0)}
"""Seconds around each alignment event (sample onset, go cue)."""
SELECTIVITY_WINDOW_S = (-1.0, 0.0)
"""Where selectivity is measured: the last second before the go cue (the late delay)."""
PENDING_TRIALS = 6
"""Trials whose samples wait for their record; older ones are dropped (their record never came)."""
OUTCOMES = ("hit", "error")
FINISHED_KEPT = 64
"""Binned trials remembered, so that a trial is never counted twice."""


@dataclass(frozen=True)
class TrialAlignment:
    """Where a finished trial's events were, from its start (s), and its condition."""

    trial: int
    group: str  # the context, or the block label when the session runs blocks
    side: str | None
    outcome: str
    sample_s: float | None
    delay_s: float | None
    go_s: float | None


class PsthAccumulator:
    """Running per-condition sums of binned activity, for every ROI of one plane."""

    def __init__(self, bin_s: float = BIN_S, windows: Mapping[str, tuple[float, float]] = WINDOWS) -> None:
        self.bin_s = bin_s
        self.windows = dict(windows)
        self.n_bins = {a: int(round((w[1] - w[0]) / bin_s)) for a, w in self.windows.items()}
        self.n_rois = 0
        self.version = 0
        self.groups: list[str] = []
        self._pending: dict[int, tuple[list[float], list[np.ndarray]]] = {}
        self._finished: deque[int] = deque(maxlen=FINISHED_KEPT)  # trials binned: later samples are late
        self._reset(0)

    def _reset(self, n_rois: int) -> None:
        self.n_rois = n_rois
        self._sums: dict[tuple[str, str, str, str], np.ndarray] = {}
        self._counts: dict[tuple[str, str, str, str], np.ndarray] = {}
        self._trials: dict[tuple[str, str, str], int] = {}
        self._moments = np.zeros((3, n_rois))  # n, sum, sum of squares per ROI
        self._epochs = np.zeros(3)  # trials, sum of sample durations, sum of delay durations
        self.version += 1

    def centres(self, alignment: str) -> np.ndarray:
        w0 = self.windows[alignment][0]
        return w0 + (np.arange(self.n_bins[alignment]) + 0.5) * self.bin_s

    # ---- input

    def add(self, trial: int, time_in_trial_s: float | None, activity: np.ndarray) -> None:
        """One frame's activity of every ROI, at its time in `trial`."""
        if time_in_trial_s is None or not math.isfinite(time_in_trial_s) or trial in self._finished:
            return
        if activity.shape != (self.n_rois,):
            self._reset(int(activity.shape[0]))
            self._pending.clear()
        times, values = self._pending.setdefault(trial, ([], []))
        times.append(time_in_trial_s)
        values.append(activity)
        while len(self._pending) > PENDING_TRIALS:
            del self._pending[min(self._pending)]

    def finish(self, trial: TrialAlignment) -> bool:
        """Bin the waiting samples of a trial that ended; False if it has none or no usable condition."""
        pending = self._pending.pop(trial.trial, None)
        if pending is not None:
            self._finished.append(trial.trial)
        if pending is None or trial.side not in ("left", "right") or trial.outcome not in OUTCOMES:
            return False
        times, activity = np.asarray(pending[0]), np.stack(pending[1]).astype(np.float64)
        if activity.shape[1] != self.n_rois:
            return False
        events = {"sample": trial.sample_s, "go": trial.go_s}
        added = False
        for alignment, t0 in events.items():
            if t0 is None:
                continue
            index = np.floor((times - t0 - self.windows[alignment][0]) / self.bin_s).astype(int)
            keep = (index >= 0) & (index < self.n_bins[alignment])
            if not keep.any():
                continue
            key = (alignment, trial.group, trial.side, trial.outcome)
            sums = self._sums.setdefault(key, np.zeros((self.n_bins[alignment], self.n_rois)))
            counts = self._counts.setdefault(key, np.zeros(self.n_bins[alignment]))
            np.add.at(sums, index[keep], activity[keep])
            np.add.at(counts, index[keep], 1.0)
            added = True
        if not added:
            return False
        self._trials[(trial.group, trial.side, trial.outcome)] = (
            self._trials.get((trial.group, trial.side, trial.outcome), 0) + 1)
        self._moments += [np.full(self.n_rois, len(times)), activity.sum(axis=0), (activity**2).sum(axis=0)]
        if trial.sample_s is not None and trial.delay_s is not None and trial.go_s is not None:
            self._epochs += [1.0, trial.delay_s - trial.sample_s, trial.go_s - trial.delay_s]
        if trial.group not in self.groups:
            self.groups.append(trial.group)
        self.version += 1
        return True

    # ---- output

    def mean(self, alignment: str, group: str, side: str, outcome: str) -> np.ndarray | None:
        """(n_bins, n_rois) mean activity of a condition (NaN in bins without samples), None if none."""
        key = (alignment, group, side, outcome)
        sums = self._sums.get(key)
        if sums is None:
            return None
        counts = self._counts[key][:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    def trials(self, group: str, side: str, outcome: str) -> int:
        return self._trials.get((group, side, outcome), 0)

    def epochs(self) -> tuple[float, float] | None:
        """Mean sample and delay durations (s) of the trials so far (for shading), None before any."""
        n, sample, delay = self._epochs
        return None if n == 0 else (sample / n, delay / n)

    def selectivity(self, group: str | None = None) -> np.ndarray:
        """Per ROI: (left hits - right hits) in the late delay, in units of the ROI's standard deviation
        (0 where a side has no trials yet). Positive prefers left."""
        groups = self.groups if group is None else [group]
        result = np.zeros(self.n_rois)
        centres = self.centres("go")
        window = (centres >= SELECTIVITY_WINDOW_S[0]) & (centres < SELECTIVITY_WINDOW_S[1])
        sides = []
        for side in ("left", "right"):
            means = [m for g in groups if (m := self.mean("go", g, side, "hit")) is not None]
            if not means:
                return result
            with np.errstate(invalid="ignore"):
                sides.append(np.nanmean(np.stack(means)[:, window], axis=(0, 1)))
        n, total, squares = self._moments
        with np.errstate(invalid="ignore", divide="ignore"):
            sd = np.sqrt(np.maximum(squares / np.maximum(n, 1) - (total / np.maximum(n, 1)) ** 2, 0)) + 1e-6
            result = (sides[0] - sides[1]) / sd
        return np.nan_to_num(result)
