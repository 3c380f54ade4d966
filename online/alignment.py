"""Placing Bpod epochs on imaging frames, through the trial-start trigger only.

Two clocks meet here. Behaviour epochs come as state entries in seconds from trial start on the Bpod clock
(the trial record's `States` {name: [[start, end], ...]}, or live `(state, time_s)` messages). Frames come
with imaging-clock timestamps. The only bridge is the hardware trigger the first state of every trial
raises (DESIGN.md, Clocks), which sits at 0 on the trial clock:

- loop mode (one acquisition per trial, started by the trigger): time in trial = frameTimestamp -
  acqTriggerTimestamp of that acquisition (`loop_frame_time`, `LoopAligner`);
- continuous mode (one acquisition, the trigger lands on an aux-trigger input): time in trial k =
  frameTimestamp - the k-th aux-trigger edge (`ContinuousAligner`).

Host arrival times never enter: frames may arrive late, in bursts or out of order and land on the same
trial times. `TrialFrames` keeps one trial's frames (times relative to trial start, activity frames x
neurons) and answers window questions relative to an epoch ("the last 0.6 s before the go cue").
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

Anchor = Literal["trial", "sample", "delay", "go", "response"]
ANCHORS: tuple[str, ...] = ("trial", "sample", "delay", "go", "response")
T = TypeVar("T")


# -- epochs on the trial clock --------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochStates:
    """Which Bpod states mark which epoch. Defaults are the directional-licking task's state names; they are
    spelled here, not imported, because `online` learns epochs from the rig's events, not from task code."""

    sample: str = "SamplePeriod"
    delay: str = "DelayPeriod"
    go: str = "ResponseCue"
    response: tuple[str, ...] = ("Reward", "TimeOut", "RewardOtherSide")
    """States entered by the answering lick; the first entry of any of them is the response time."""

    @classmethod
    def from_message(cls, data: object) -> EpochStates:
        """The names a trial-start message gives (`epochs`: sample, delay, go as state names, response as a
        list of them); a ValueError says what is wrong."""
        if not isinstance(data, Mapping) or set(data) != {"sample", "delay", "go", "response"}:
            raise ValueError("epochs must be an object with sample, delay, go and response")
        names = [data["sample"], data["delay"], data["go"]]
        response = data["response"]
        if not isinstance(response, list) or not response:
            raise ValueError("epochs.response must be a list of state names")
        if not all(isinstance(n, str) and 0 < len(n) <= 64 for n in [*names, *response]):
            raise ValueError("epoch states must be names of 1 to 64 characters")
        return cls(sample=names[0], delay=names[1], go=names[2], response=tuple(response))


DEFAULT_EPOCH_STATES = EpochStates()


@dataclass
class TrialEpochs:
    """Epoch onsets of one trial, in seconds from trial start (Bpod clock); None until reached.

    Early licks restart the sample and delay epochs (EarlyLickSample -> SamplePeriod again), so sample and
    delay onsets are the LAST entries of their states: the activity that precedes the go cue follows the
    last restart. Entries may be reported in any order; "last" and "first" are by time, not by arrival."""

    sample_s: float | None = None
    delay_s: float | None = None
    go_s: float | None = None
    """ResponseCue start (its last entry; the task enters it once)."""
    response_s: float | None = None
    """The answering lick: first entry of a response state (None for no-response trials)."""
    names: EpochStates = DEFAULT_EPOCH_STATES

    def enter(self, state: str, time_s: float) -> None:
        """One state entry (a live `state` message, or one visit of the trial record)."""
        t = float(time_s)
        if not math.isfinite(t):
            raise ValueError(f"state {state!r} entered at a non-finite time {time_s!r}")
        n = self.names
        if state == n.sample:
            self.sample_s = t if self.sample_s is None else max(self.sample_s, t)
        elif state == n.delay:
            self.delay_s = t if self.delay_s is None else max(self.delay_s, t)
        elif state == n.go:
            self.go_s = t if self.go_s is None else max(self.go_s, t)
        elif state in n.response:
            self.response_s = t if self.response_s is None else min(self.response_s, t)

    @classmethod
    def from_states(
        cls, states: Mapping[str, Sequence[Sequence[float]]], names: EpochStates = DEFAULT_EPOCH_STATES
    ) -> TrialEpochs:
        """From a trial record's `States` {name: [[start, end], ...]} (MATLAB RawEvents convention).
        Unvisited states are absent, or hold [[nan, nan]] in records from MATLAB Bpod: both are skipped."""
        epochs = cls(names=names)
        for state, visits in states.items():
            for visit in visits:
                start = float(visit[0])
                if math.isfinite(start):
                    epochs.enter(state, start)
        return epochs

    @classmethod
    def from_entries(
        cls, entries: Iterable[tuple[str, float]], names: EpochStates = DEFAULT_EPOCH_STATES
    ) -> TrialEpochs:
        """From live `(state, time_s)` entries, in any order."""
        epochs = cls(names=names)
        for state, time_s in entries:
            epochs.enter(state, time_s)
        return epochs

    def onset(self, anchor: Anchor | str) -> float | None:
        """Time of an epoch event from trial start; 'trial' is the trigger itself (0)."""
        if anchor == "trial":
            return 0.0
        if anchor == "sample":
            return self.sample_s
        if anchor == "delay":
            return self.delay_s
        if anchor == "go":
            return self.go_s
        if anchor == "response":
            return self.response_s
        raise ValueError(f"unknown epoch anchor {anchor!r}; valid: {', '.join(ANCHORS)}")


@dataclass(frozen=True)
class EpochWindow:
    """A time window relative to an epoch event, e.g. EpochWindow('go', -0.6, 0.0) = the last 0.6 s of the
    delay. Half-open, [start, stop): a frame at exactly the go cue is not delay activity."""

    anchor: str
    start_s: float
    stop_s: float

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise ValueError(f"unknown epoch anchor {self.anchor!r}; valid: {', '.join(ANCHORS)}")
        if not self.stop_s > self.start_s:
            raise ValueError(f"window must end after it starts, got [{self.start_s}, {self.stop_s})")

    @property
    def length_s(self) -> float:
        return self.stop_s - self.start_s

    def bounds(self, epochs: TrialEpochs) -> tuple[float, float] | None:
        """The window in seconds from trial start, or None while its anchor has not happened."""
        onset = epochs.onset(self.anchor)
        return None if onset is None else (onset + self.start_s, onset + self.stop_s)

    def n_bins(self, bin_s: float) -> int:
        if bin_s <= 0:
            raise ValueError(f"bin_s must be positive, got {bin_s}")
        return max(1, int(round(self.length_s / bin_s)))


def sample_onset(states: Mapping[str, Sequence[Sequence[float]]],
                 names: EpochStates = DEFAULT_EPOCH_STATES) -> float | None:
    """Sample onset from a trial record's `States`: SamplePeriod's last entry (early licks restart it)."""
    return TrialEpochs.from_states(states, names).sample_s


def delay_onset(states: Mapping[str, Sequence[Sequence[float]]],
                names: EpochStates = DEFAULT_EPOCH_STATES) -> float | None:
    """Delay onset: DelayPeriod's last entry."""
    return TrialEpochs.from_states(states, names).delay_s


def go_cue(states: Mapping[str, Sequence[Sequence[float]]],
           names: EpochStates = DEFAULT_EPOCH_STATES) -> float | None:
    """Go cue: ResponseCue's start."""
    return TrialEpochs.from_states(states, names).go_s


def response_time(states: Mapping[str, Sequence[Sequence[float]]],
                  names: EpochStates = DEFAULT_EPOCH_STATES) -> float | None:
    """The answering lick: the first entry of a response state (None when the mouse did not answer)."""
    return TrialEpochs.from_states(states, names).response_s


# -- one trial's frames ---------------------------------------------------------------------------------


class TrialFrames:
    """One trial's frames: times from trial start (trial clock) and activity (frames x neurons).

    Frames are appended as they arrive, in any order; readers see them sorted by time. Storage grows by
    doubling, so an append is O(neurons) amortised."""

    def __init__(
        self, trial: int, n_neurons: int, epochs: TrialEpochs | None = None, capacity: int = 256
    ) -> None:
        if n_neurons < 1:
            raise ValueError(f"n_neurons must be at least 1, got {n_neurons}")
        self.trial = trial
        self.n_neurons = n_neurons
        self.epochs = epochs if epochs is not None else TrialEpochs()
        self._times = np.empty(max(capacity, 1))
        self._activity = np.empty((max(capacity, 1), n_neurons))
        self._n = 0
        self._sorted = True

    def __len__(self) -> int:
        return self._n

    def add(self, time_s: float, values: np.ndarray | Sequence[float]) -> None:
        """Append one frame: its time from trial start and its per-neuron activity (e.g. dF/F)."""
        row = np.asarray(values, dtype=float)
        if row.shape != (self.n_neurons,):
            raise ValueError(
                f"trial {self.trial}: frame activity has shape {row.shape}, expected ({self.n_neurons},)"
            )
        t = float(time_s)
        if not math.isfinite(t):
            raise ValueError(f"trial {self.trial}: frame time {time_s!r} is not finite")
        if self._n == self._times.size:
            self._times = np.resize(self._times, 2 * self._n)
            grown = np.empty((2 * self._n, self.n_neurons))
            grown[: self._n] = self._activity[: self._n]
            self._activity = grown
        if self._n and t < self._times[self._n - 1]:
            self._sorted = False
        self._times[self._n] = t
        self._activity[self._n] = row
        self._n += 1

    def _sort(self) -> None:
        if not self._sorted:
            order = np.argsort(self._times[: self._n], kind="stable")
            self._times[: self._n] = self._times[: self._n][order]
            self._activity[: self._n] = self._activity[: self._n][order]
            self._sorted = True

    @property
    def times_s(self) -> np.ndarray:
        """Frame times from trial start, ascending (a read-only view)."""
        self._sort()
        view = self._times[: self._n]
        view.flags.writeable = False
        return view

    @property
    def activity(self) -> np.ndarray:
        """Activity (frames x neurons), rows in the order of `times_s` (a read-only view)."""
        self._sort()
        view = self._activity[: self._n]
        view.flags.writeable = False
        return view

    def _bounds(self, start_s: float, end_s: float, relative_to: str) -> tuple[float, float] | None:
        onset = self.epochs.onset(relative_to)
        return None if onset is None else (onset + start_s, onset + end_s)

    def window_frames(
        self,
        start_s: float,
        end_s: float,
        relative_to: Anchor | str = "go",
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(times, activity) of the frames in [start, end) relative to an epoch event; None while that
        event has not happened in this trial."""
        bounds = self._bounds(start_s, end_s, relative_to)
        if bounds is None:
            return None
        times = self.times_s
        lo, hi = np.searchsorted(times, bounds, side="left")
        return times[lo:hi], self.activity[lo:hi]

    def window_mean(
        self, start_s: float, end_s: float, relative_to: Anchor | str = "go"
    ) -> np.ndarray | None:
        """Mean activity per neuron over the frames in [start, end) relative to an epoch event; None when the
        event has not happened or no frame falls in the window."""
        frames = self.window_frames(start_s, end_s, relative_to)
        if frames is None or frames[0].size == 0:
            return None
        return frames[1].mean(axis=0)

    def mean_in(self, window: EpochWindow) -> np.ndarray | None:
        return self.window_mean(window.start_s, window.stop_s, window.anchor)

    def binned(
        self,
        start_s: float,
        end_s: float,
        bin_s: float,
        relative_to: Anchor | str = "go",
    ) -> np.ndarray | None:
        """Activity in time bins over [start, end) relative to an epoch event (bins x neurons): round(length /
        bin_s) bins (at least one) that tile the window exactly, so their width is bin_s up to rounding.

        A bin holds the mean of its frames. A bin without a frame (bins narrower than the frame period, or a
        trigger that is not frame-aligned) takes the linear interpolation of the neighbouring frames at the
        bin centre; bins outside the trial's frames are NaN. None while the event has not happened."""
        onset = self.epochs.onset(relative_to)
        if onset is None:
            return None
        if not end_s > start_s or bin_s <= 0:
            raise ValueError(f"need end_s > start_s and bin_s > 0, got [{start_s}, {end_s}), bin_s={bin_s}")
        n_bins = max(1, int(round((end_s - start_s) / bin_s)))
        edges = onset + np.linspace(start_s, end_s, n_bins + 1)
        out = np.full((n_bins, self.n_neurons), np.nan)
        times, activity = self.times_s, self.activity
        if times.size == 0:
            return out
        index = np.searchsorted(edges, times, side="right") - 1
        inside = (index >= 0) & (index < n_bins)
        counts = np.bincount(index[inside], minlength=n_bins)
        sums = np.zeros((n_bins, self.n_neurons))
        np.add.at(sums, index[inside], activity[inside])
        filled = counts > 0
        out[filled] = sums[filled] / counts[filled, None]
        empty = np.flatnonzero(~filled)
        if empty.size:
            centres = 0.5 * (edges[empty] + edges[empty + 1])
            right = np.searchsorted(times, centres, side="left")
            ok = (right > 0) & (right < times.size)
            for b, c, r in zip(empty[ok], centres[ok], right[ok], strict=True):
                t0, t1 = times[r - 1], times[r]
                a = 0.0 if t1 == t0 else (c - t0) / (t1 - t0)
                out[b] = (1 - a) * activity[r - 1] + a * activity[r]
        return out

    def binned_in(self, window: EpochWindow, bin_s: float) -> np.ndarray | None:
        return self.binned(window.start_s, window.stop_s, bin_s, window.anchor)


def window_mean(trial: TrialFrames, start_s: float, end_s: float, relative_to: Anchor | str = "go",
                ) -> np.ndarray | None:
    """Mean activity per neuron of a trial's frames in [start, end) relative to an epoch event."""
    return trial.window_mean(start_s, end_s, relative_to)


def go_aligned_average(
    trials: Iterable[TrialFrames],
    start_s: float,
    end_s: float,
    bin_s: float,
) -> np.ndarray:
    """Trial-averaged activity in bins aligned to the go cue (bins x neurons), NaN-aware: a trial adds to
    the bins its frames cover. Trials without a go cue are left out. For CD work (bins of 1/frame rate)."""
    total: np.ndarray | None = None
    count: np.ndarray | None = None
    for trial in trials:
        binned = trial.binned(start_s, end_s, bin_s, "go")
        if binned is None:
            continue
        if total is None or count is None:
            total, count = np.zeros_like(binned), np.zeros(binned.shape)
        ok = np.isfinite(binned)
        total[ok] += binned[ok]
        count += ok
    if total is None or count is None:
        raise ValueError("no trial with a go cue to average")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# -- imaging clock -> trial clock -------------------------------------------------------------------------


def loop_frame_time(frame_timestamp_s: float, acq_trigger_timestamp_s: float) -> float:
    """Loop mode: a frame's time from trial start = frameTimestamp - acqTriggerTimestamp (the trigger is
    the trial start, 0 on the trial clock)."""
    return float(frame_timestamp_s) - float(acq_trigger_timestamp_s)


@dataclass(frozen=True)
class AlignedFrame(Generic[T]):
    """A frame placed on a trial: `time_s` from that trial's start (trial clock), plus what it carried."""

    trial: int
    time_s: float
    payload: T


@dataclass
class LoopAligner:
    """Loop mode: acquisition n belongs to trial n - first_acquisition + first_trial.

    `frame_offset_s` is added to every frame time (e.g. half a frame period to place a frame at its centre
    rather than its first pixel). Order-free: each frame carries its own acquisition and trigger time."""

    first_trial: int = 1
    first_acquisition: int = 1
    frame_offset_s: float = 0.0

    def align(
        self, acquisition: int, frame_timestamp_s: float, acq_trigger_timestamp_s: float, payload: T
    ) -> AlignedFrame[T]:
        trial = int(acquisition) - self.first_acquisition + self.first_trial
        time_s = loop_frame_time(frame_timestamp_s, acq_trigger_timestamp_s) + self.frame_offset_s
        return AlignedFrame(trial, time_s, payload)


@dataclass
class ContinuousAligner(Generic[T]):
    """Continuous mode: the k-th aux-trigger edge (k = 0, 1, ...) starts trial first_trial + k, and a frame
    belongs to the latest edge at or before its timestamp (its first pixel, as ScanImage stamps it; the
    frame during which a trigger arrives is the previous trial's last frame). `frame_offset_s` then shifts
    the reported time only.

    A frame reports the edges that arrived while it was acquired, so a frame can be placed only once every
    earlier frame (by frame index) has been seen: frames that arrive ahead of a gap wait in a small buffer and
    are released, in order, when the gap fills. A frame that never comes (dropped upstream) is given up after
    `max_pending` later frames, counted in `skipped_frames` and logged. Frames before the first edge belong
    to no trial (`frames_before_first_trigger`). An edge reported after frames later than it were already
    placed (a late trigger) is counted in `late_edges`: those frames stay on the previous trial. Only the
    most recent `edges_kept` edges are kept (a session's trials are numbered on from the forgotten ones), so
    memory stays bounded; a frame older than every kept edge is counted in `frames_too_old`."""

    first_trial: int = 1
    frame_offset_s: float = 0.0
    first_index: int | None = 0
    """frame_index of the acquisition's first frame; None = whichever frame arrives first (joining a running
    acquisition, whose earlier triggers are then unknown: set first_trial accordingly)."""
    max_pending: int = 64
    edge_tolerance_s: float = 1e-6
    """Edges closer than this are the same edge reported twice."""
    edges_kept: int = 256
    edges: list[float] = field(default_factory=list)
    """The most recent `edges_kept` edges; edges[k] starts trial first_trial + edges_dropped + k."""
    edges_dropped: int = 0
    frames_too_old: int = 0
    skipped_frames: int = 0
    late_edges: int = 0
    duplicate_frames: int = 0
    frames_before_first_trigger: int = 0
    _next_index: int | None = field(default=None, init=False, repr=False)
    _pending: dict[int, tuple[float, tuple[float, ...], T]] = field(
        default_factory=dict, init=False, repr=False)
    _last_placed_s: float = field(default=-math.inf, init=False, repr=False)

    def add_frame(
        self, frame_index: int, frame_timestamp_s: float, aux_trigger_s: Iterable[float], payload: T
    ) -> list[AlignedFrame[T]]:
        """Take one frame (any order); returns the frames that can now be placed, in frame order."""
        index = int(frame_index)
        if self._next_index is None:
            self._next_index = index if self.first_index is None else self.first_index
        if index < self._next_index or index in self._pending:
            self.duplicate_frames += 1
            logger.warning(
                "continuous alignment: frame %d seen twice or after it was given up; skipped", index
            )
            return []
        self._pending[index] = (float(frame_timestamp_s), tuple(float(e) for e in aux_trigger_s), payload)
        placed: list[AlignedFrame[T]] = []
        while True:
            if self._next_index in self._pending:
                ts, edges, item = self._pending.pop(self._next_index)
                self._next_index += 1
                self._add_edges(edges)
                frame = self._place(ts, item)
                if frame is not None:
                    placed.append(frame)
            elif len(self._pending) > self.max_pending:
                missing = self._next_index
                self._next_index = min(self._pending)
                self.skipped_frames += self._next_index - missing
                logger.warning(
                    "continuous alignment: frames %d-%d never arrived; placing later frames without "
                    "them (an aux trigger in them would be lost)",
                    missing,
                    self._next_index - 1,
                )
            else:
                return placed

    def _add_edges(self, edges: Iterable[float]) -> None:
        for edge in edges:
            i = bisect.bisect_left(self.edges, edge)
            near = [self.edges[j] for j in (i - 1, i) if 0 <= j < len(self.edges)]
            if any(abs(edge - e) <= self.edge_tolerance_s for e in near):
                continue
            if edge <= self._last_placed_s:
                self.late_edges += 1
                logger.warning(
                    "continuous alignment: aux trigger at %.4f s reported after frames up to %.4f s "
                    "were placed; those frames stay on the previous trial",
                    edge,
                    self._last_placed_s,
                )
            self.edges.insert(i, edge)
        if len(self.edges) > self.edges_kept:
            excess = len(self.edges) - self.edges_kept
            del self.edges[:excess]
            self.edges_dropped += excess

    def _place(self, timestamp_s: float, payload: T) -> AlignedFrame[T] | None:
        k = bisect.bisect_right(self.edges, timestamp_s) - 1
        self._last_placed_s = max(self._last_placed_s, timestamp_s)
        if k < 0:
            if self.edges_dropped:
                self.frames_too_old += 1
            else:
                self.frames_before_first_trigger += 1
            return None
        return AlignedFrame(self.first_trial + self.edges_dropped + k,
                            timestamp_s - self.edges[k] + self.frame_offset_s, payload)

    def trigger_of(self, trial: int) -> float | None:
        """That trial's trigger on the imaging clock, once its edge has been seen (None once forgotten)."""
        k = trial - self.first_trial - self.edges_dropped
        return self.edges[k] if 0 <= k < len(self.edges) else None


# -- a session's trials ------------------------------------------------------------------------------------


class AlignedTrials(Mapping[int, TrialFrames]):
    """Trials by number: frames from an aligner, epochs from state messages or the finished trial record."""

    def __init__(self, n_neurons: int, names: EpochStates = DEFAULT_EPOCH_STATES) -> None:
        self.n_neurons = n_neurons
        self.names = names
        self._trials: dict[int, TrialFrames] = {}

    def trial(self, number: int) -> TrialFrames:
        """The trial's frames, created empty on first use (a frame or a state may come first)."""
        frames = self._trials.get(number)
        if frames is None:
            frames = TrialFrames(number, self.n_neurons, TrialEpochs(names=self.names))
            self._trials[number] = frames
        return frames

    def add_frame(self, frame: AlignedFrame[np.ndarray]) -> TrialFrames:
        trial = self.trial(frame.trial)
        trial.add(frame.time_s, frame.payload)
        return trial

    def enter_state(self, number: int, state: str, time_s: float) -> None:
        """A live state message (time from trial start, Bpod clock)."""
        self.trial(number).epochs.enter(state, time_s)

    def set_record(self, number: int, states: Mapping[str, Sequence[Sequence[float]]]) -> TrialEpochs:
        """The finished trial's `States`: authoritative, it replaces what live messages said."""
        epochs = TrialEpochs.from_states(states, self.names)
        self.trial(number).epochs = epochs
        return epochs

    def pop(self, number: int) -> TrialFrames | None:
        """Forget a trial (once its features have been taken) to bound memory."""
        return self._trials.pop(number, None)

    def __getitem__(self, number: int) -> TrialFrames:
        return self._trials[number]

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._trials))

    def __len__(self) -> int:
        return len(self._trials)
