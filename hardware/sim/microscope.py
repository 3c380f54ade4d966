"""Simulated two-photon microscope, driven on the Bpod clock.

Pure numpy, no threads, no sockets: the caller reports behaviour (`start_trial` at the trial-start TTL,
`mark_epoch`, `lick`) and then asks for `frames_until(bpod_time_s)`, which renders every frame whose
acquisition starts before that time. Whoever publishes or writes frames wraps this; `WorldCoupling`
(hardware/sim/world_coupling.py) feeds it from the Bpod emulator.

Clocks, as on a real rig: frame times are on the imaging clock (seconds since the acquisition started);
the bridge to behaviour is the trial-start TTL. In loop mode (ScanImage LOOP with an external trigger, the
paper's setup) each TTL starts a new acquisition, so frame_index and timestamp_s restart at 0 on every
trial and the trigger sits at timestamp 0. In continuous mode one acquisition runs from
`acquisition_start_s` (Bpod time) and each TTL lands on auxTrigger0 of the frame during which it arrives.

Report events before asking for frames past their time: an event older than frames already rendered is
applied from the next frame on, counted in `late_events` and logged.

Several planes (`planes`, the paper's 5 at 30 Hz: 6 Hz per plane): the neurons are split over the planes
in order (plane 0 holds the first of them), each plane its own field of view (own cells, neuropil and
vessels). The planes of a volume are scanned one after the other, each a frame of 1 / frame_rate_hz: a
frame's `plane` is its z index and its `frame_index` the time point (volume) within the acquisition, as
ScanImage numbers them; its `timestamp_s` is the plane frame's own start. The brain moves rigidly: every
plane is displaced by the same motion at its own time. On a later `day` every plane's field is displaced
by the same day shift (the volume is put back under the objective as a whole), and each plane's cells go
out of view on their own (`FieldOfView.day` of `fields[z]`).

Ground truth is kept for tests and benchmarks: masks (suite2p-like ypix/xpix/lam), per-frame spikes,
calcium, noiseless dF/F and displacement, and the per-context coding directions.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import numpy as np

from hardware.settings import MicroscopeSimSettings
from hardware.sim.motion import BrainMotion, OrnsteinUhlenbeck
from hardware.sim.neurons import Population, PopulationParams, TaskState, named_rng, side_sign, unit
from hardware.sim.optics import FieldOfView, OpticsParams, RoiMask

logger = logging.getLogger(__name__)

EVENT_EPOCHS: dict[str, str] = {"sample": "sample", "delay": "delay", "go": "response"}
"""Behaviour events the microscope understands, and the epoch each one starts."""

Mode = Literal["loop", "continuous"]


@dataclass(frozen=True)
class MicroscopeConfig:
    """Everything that shapes a simulated acquisition. The first eight fields mirror sim.microscope."""

    n_neurons: int = 200
    noise: float = 0.1
    motion_px: float = 2.0
    neuron_radius_px: float = 5.0
    selective_fraction: float = 0.3
    context_overlap: float = 0.2
    day_shift_px: float = 3.0
    day_turnover: float = 0.05
    day: int = 0
    """Imaging day (the subject's earlier sessions): the field's displacement and cells in view that day."""
    height: int = 512
    width: int = 512
    frame_rate_hz: float = 30.0
    """Frames per second over all planes (ScanImage's scanFrameRate); each plane is seen at this / planes."""
    planes: int = 1
    dtype: str = "int16"
    seed: int = 0
    mode: Mode = "loop"
    acquisition_start_s: float = 0.0
    """Continuous mode: Bpod time at which the single acquisition starts."""
    frames_per_acquisition: int | None = None
    """Loop mode: time points (volumes) acquired per trigger; None = until the next trigger."""
    reference_size_px: int = 512
    """Frame size at which neuron_radius_px and motion_px are given; smaller frames show the same field."""
    truth_history_frames: int = 36_000
    """Per-frame ground truth kept in memory (20 min at 30 Hz)."""

    def __post_init__(self) -> None:
        if self.frame_rate_hz <= 0:
            raise ValueError(f"frame_rate_hz must be positive, got {self.frame_rate_hz}")
        if not 1 <= self.planes <= self.n_neurons:
            raise ValueError(f"planes must be within 1 and n_neurons ({self.n_neurons}), got {self.planes}")
        if self.mode not in ("loop", "continuous"):
            raise ValueError(f"mode must be 'loop' or 'continuous', got {self.mode!r}")
        if self.frames_per_acquisition is not None and self.frames_per_acquisition < 1:
            raise ValueError(
                f"frames_per_acquisition must be at least 1 or None, got {self.frames_per_acquisition}")
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")

    @classmethod
    def from_settings(cls, microscope: MicroscopeSimSettings, seed: int | None = 0,
                      **overrides: Any) -> MicroscopeConfig:
        """From `settings.sim.microscope`; the frame format (height, width, frame_rate_hz, dtype) and the
        rest come as `overrides`. A None seed draws a fresh one, which is logged so the run can be
        reproduced."""
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
            logger.info("simulated microscope: fresh seed %d", seed)
        return cls(**{**microscope.model_dump(), "seed": int(seed), **overrides})

    def population_params(self) -> PopulationParams:
        return PopulationParams(n_neurons=self.n_neurons, selective_fraction=self.selective_fraction,
                                context_overlap=self.context_overlap)

    def optics_params(self) -> OpticsParams:
        return OpticsParams(height=self.height, width=self.width, reference_size_px=self.reference_size_px,
                            neuron_radius_px=self.neuron_radius_px, motion_px=self.motion_px,
                            noise=self.noise, dtype=self.dtype, day=self.day,
                            day_shift_px=self.day_shift_px, day_turnover=self.day_turnover)


@dataclass(frozen=True)
class FrameTruth:
    """What really happened during one frame. Neural values are at the frame's mid-time."""

    frame_number: int
    bpod_time_s: float
    spikes: np.ndarray
    """Spikes per neuron since the previous frame's mid-time."""
    calcium: np.ndarray
    dff: np.ndarray
    """Noiseless dF/F per neuron (saturating function of calcium)."""
    shift: tuple[float, float]
    """(dy, dx) px: the content is displaced by this much relative to `SimMicroscope.template()`;
    a registration undoes it by shifting the frame by (-dy, -dx)."""
    gain: float
    """Slow brightness drift (1 = none)."""
    epoch: str
    context: str | None
    side: str | None
    plane: int = 0


@dataclass(frozen=True)
class SimFrame:
    """One rendered frame with the metadata ScanImage would give, plus its ground truth."""

    pixels: np.ndarray
    """(height, width), int16 (or uint16)."""
    frame_index: int
    """The time point (volume) within the acquisition, from 0 (restarts per trial in loop mode); the planes
    of one volume share it."""
    frame_number: int
    """0-based since the simulator was built; never restarts, so gaps can be counted."""
    acquisition: int
    """1-based acquisition number (ScanImage acquisitionNumbers; one per trial in loop mode)."""
    timestamp_s: float
    """Imaging clock: seconds since the acquisition started, at the frame's first pixel."""
    bpod_time_s: float
    """The same instant on the Bpod clock (ground truth; a real microscope does not know it)."""
    trial: int | None
    """Trial of the latest trigger at or before the frame start (None before the first)."""
    trigger_timestamp_s: float | None
    """That trial's trigger on the imaging clock: 0 in loop mode, its auxTrigger0 time in continuous mode."""
    aux_trigger_s: tuple[float, ...]
    """auxTrigger0 edges (imaging clock) during this frame; continuous mode only."""
    truth: FrameTruth
    plane: int = 0
    """z index of the plane (0 = the first scanned)."""


@dataclass(frozen=True)
class TruthArrays:
    """The kept per-frame ground truth, stacked (frames along axis 0)."""

    frame_number: np.ndarray
    bpod_time_s: np.ndarray
    spikes: np.ndarray
    calcium: np.ndarray
    dff: np.ndarray
    shift: np.ndarray
    gain: np.ndarray


@dataclass
class RenderStats:
    """Host cost of making frames (host time is for measurement only)."""

    frames: int = 0
    total_s: float = 0.0
    max_s: float = 0.0

    @property
    def mean_ms(self) -> float:
        return 1e3 * self.total_s / self.frames if self.frames else float("nan")


@dataclass
class _Trial:
    number: int
    trigger_s: float
    context: str | None
    side: str | None
    events: list[tuple[float, str]] = field(default_factory=list)
    cue: str | None = None


@dataclass
class _Acquisition:
    number: int
    start_s: float
    trial: int | None
    index: int = 0


class ImagingPlan(NamedTuple):
    """Frame size and rate that a simulator can sustain (unpacks as (height, width, rate_hz))."""

    height: int
    width: int
    rate_hz: float


class SimMicroscope:
    """A field of ALM neurons behind a resonant-scanning two-photon microscope, on the Bpod clock."""

    def __init__(self, config: MicroscopeConfig | None = None, **overrides: Any) -> None:
        config = replace(config or MicroscopeConfig(), **overrides)
        self.config = config
        self.population = Population(config.population_params(), config.seed)
        bounds = np.linspace(0, config.n_neurons, config.planes + 1).round().astype(int)
        self.plane_neurons = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        """Each plane's neurons (plane z holds neurons plane_neurons[z]: neuron order is plane order)."""
        resting = self.population.resting_dff
        self.fields: list[FieldOfView] = []
        for z, s in enumerate(self.plane_neurons):
            # The day moves the volume as a whole (plane 0's displacement for every plane); each plane's
            # cells leave the view on their own.
            suffix = "" if z == 0 else f":plane{z}"
            self.fields.append(FieldOfView(
                config.optics_params(), s.stop - s.start, named_rng(config.seed, "field" + suffix),
                resting[s], named_rng(config.seed, f"day:{config.day}" + suffix),
                self.fields[0].day.shift if z else None))
        self.field = self.fields[0]
        self._rng = named_rng(config.seed, "acquisition")
        self.motion = BrainMotion(config.optics_params().motion_max_px, self._rng)
        self._drift = OrnsteinUhlenbeck(np.array(0.03), 120.0, self._rng)
        self._dt = 1.0 / config.frame_rate_hz
        self._trials: deque[_Trial] = deque(maxlen=16)
        self._trial_counter = 0
        self._triggers: deque[_Trial] = deque()  # not yet turned into acquisitions / aux edges
        self._acq: _Acquisition | None = None
        self._acq_counter = 0
        if config.mode == "continuous":
            self._acq = _Acquisition(1, config.acquisition_start_s, None)
            self._acq_counter = 1
        self._frame_number = 0
        self._neural_time_s: float | None = None
        self._motion_time_s: float | None = None
        self._horizon_s = -math.inf
        self.late_events = 0
        self.stats = RenderStats()
        self.truth: deque[FrameTruth] = deque(maxlen=config.truth_history_frames)
        self._cd_cache: dict[tuple[str, str, str], np.ndarray] = {}

    # -- what the caller sees ------------------------------------------------------------------

    @property
    def height(self) -> int:
        return self.config.height

    @property
    def width(self) -> int:
        return self.config.width

    @property
    def frame_rate_hz(self) -> float:
        """Frames per second over all planes."""
        return self.config.frame_rate_hz

    @property
    def planes(self) -> int:
        return self.config.planes

    @property
    def volume_rate_hz(self) -> float:
        """Time points per second: each plane's frame rate."""
        return self.config.frame_rate_hz / self.config.planes

    @property
    def masks(self) -> list[RoiMask]:
        """Ground-truth footprints, one per neuron (every plane's, in plane order), in their plane's frame
        pixels at zero displacement."""
        return [m for f in self.fields for m in f.masks]

    def plane_masks(self, plane: int) -> list[RoiMask]:
        """The footprints of one plane's neurons (neurons plane_neurons[plane])."""
        return self.fields[plane].masks

    def template(self, plane: int = 0) -> np.ndarray:
        """Noiseless resting image of a plane (float32, no PMT offset, zero displacement)."""
        return self.fields[plane].template()

    def coding_direction(self, context: str, epoch: str = "delay",
                         space: Literal["dff", "rate"] = "dff") -> np.ndarray:
        """Ground-truth unit coding direction over neurons (right minus left, the paper's sign).

        space="dff" (default): the direction of mean dF/F differences over the paper's epoch window (delay:
        the last 0.6 s before the go cue) in a standard 1.3 s + 1.3 s trial, which is what a decoder on dF/F
        converges to. space="rate": the model's selectivity weights; the two differ (cosine ~0.94 for the
        delay) because calcium carries sample-epoch selectivity into the delay and saturates. Both depend
        only on (seed, context), so a returning context, or another simulator with the same seed, gets the
        same vector."""
        key = (context, epoch, space)
        cd = self._cd_cache.get(key)
        if cd is None:
            if space == "rate":
                cd = unit(self.population.selectivity(context, epoch))
            elif space == "dff":
                cd = self.population.expected_dff_cd(context, epoch, dt_s=self._dt)
            else:
                raise ValueError(f"space must be 'dff' or 'rate', got {space!r}")
            self._cd_cache[key] = cd
        return cd.copy()

    @property
    def next_frame_time_s(self) -> float | None:
        """Bpod time at which the next frame starts; None while waiting for a trigger (loop mode)."""
        return self._next_frame_start()

    def truth_arrays(self) -> TruthArrays:
        """The kept per-frame ground truth as arrays (the last `truth_history_frames` frames)."""
        t = list(self.truth)
        n = self.config.n_neurons
        return TruthArrays(
            frame_number=np.array([x.frame_number for x in t], dtype=np.int64),
            bpod_time_s=np.array([x.bpod_time_s for x in t]),
            spikes=np.array([x.spikes for x in t]).reshape(len(t), n),
            calcium=np.array([x.calcium for x in t]).reshape(len(t), n),
            dff=np.array([x.dff for x in t]).reshape(len(t), n),
            shift=np.array([x.shift for x in t], dtype=float).reshape(len(t), 2),
            gain=np.array([x.gain for x in t]),
        )

    # -- behaviour in --------------------------------------------------------------------------

    def start_trial(self, bpod_time_s: float, context: str | None = None, upcoming_side: str | None = None,
                    epochs: Mapping[str, float] | None = None, trial: int | None = None) -> int:
        """The trial-start TTL at a Bpod time: a new acquisition (loop) or an aux trigger edge (continuous).

        `upcoming_side` is the side the mouse will lick ('left' | 'right' | None), which is what preparatory
        activity predicts; `epochs` gives event onsets relative to the trigger ({"sample": 0.01, "delay":
        1.31, "go": 2.61}), or report them later with `mark_epoch`. Returns the trial number."""
        side_sign(upcoming_side)
        self._check_late(bpod_time_s, "trial start")
        self._trial_counter = trial if trial is not None else self._trial_counter + 1
        record = _Trial(self._trial_counter, bpod_time_s, context, upcoming_side)
        self._trials.append(record)
        self._triggers.append(record)
        for name, offset in (epochs or {}).items():
            self.mark_epoch(bpod_time_s + offset, name)
        return record.number

    def set_trial_info(self, context: str | None = None, upcoming_side: str | None = None,
                       cue: str | None = None) -> None:
        """Context (or defined pattern), upcoming side and sensed cue of the current (latest) trial, when
        known after its trigger."""
        side_sign(upcoming_side)
        if not self._trials:
            raise RuntimeError("set_trial_info before any start_trial")
        trial = self._trials[-1]
        trial.context, trial.side, trial.cue = context, upcoming_side, cue

    def define_pattern(self, key: str, recipe: Mapping[str, float]) -> None:
        """A pattern trials may name as their context (`Population.define_pattern`)."""
        self.population.define_pattern(key, recipe)
        self._cd_cache = {k: v for k, v in self._cd_cache.items() if k[0] != key}

    def mark_epoch(self, bpod_time_s: float, event: str) -> None:
        """A behaviour event ('sample' cue on, 'delay' cue off, 'go' cue) in the trial running at that time.
        A later event of the same kind (an early lick restarting the epoch) simply restarts it."""
        if event not in EVENT_EPOCHS:
            raise ValueError(f"unknown epoch event {event!r}; valid: {', '.join(EVENT_EPOCHS)}")
        trial = self._trial_at(bpod_time_s) or (self._trials[-1] if self._trials else None)
        if trial is None:
            raise RuntimeError(f"epoch event {event!r} at {bpod_time_s:.4f} s before any start_trial")
        self._check_late(bpod_time_s, f"epoch {event!r}")
        bisect.insort(trial.events, (bpod_time_s, event))

    def lick(self, bpod_time_s: float, side: str) -> None:
        """A lick: jolts the field (motion artefact) from the first frame after it."""
        if side_sign(side) == 0:
            raise ValueError("a lick needs a side, 'left' or 'right'")
        self._check_late(bpod_time_s, "lick")
        self.motion.lick(bpod_time_s)

    # -- frames out ----------------------------------------------------------------------------

    def frames_until(self, bpod_time_s: float) -> list[SimFrame]:
        """Every frame whose acquisition starts before `bpod_time_s` and was not returned yet, in order."""
        frames = []
        while True:
            start = self._next_frame_start()
            if start is None or start >= bpod_time_s:
                break
            frames.append(self._acquire(start))
        self._horizon_s = max(self._horizon_s, bpod_time_s)
        return frames

    def measure_frames_per_s(self, n_frames: int = 60) -> float:
        """Frames per second this configuration renders on one core (on a scratch copy: no state changes)."""
        return 1.0 / measure_frame_cost_s(self.config, n_frames)

    # -- internals -----------------------------------------------------------------------------

    def _check_late(self, bpod_time_s: float, what: str) -> None:
        if bpod_time_s < self._horizon_s:
            self.late_events += 1
            if self.late_events == 1 or self.late_events % 100 == 0:
                logger.warning("%s at %.4f s reported after frames up to %.4f s were requested; applied from "
                               "the next frame (late events so far: %d)", what, bpod_time_s, self._horizon_s,
                               self.late_events)

    def _trial_at(self, t: float) -> _Trial | None:
        best = None
        for trial in self._trials:
            if trial.trigger_s <= t and (best is None or trial.trigger_s >= best.trigger_s):
                best = trial
        return best

    def _task_state(self, t: float) -> TaskState:
        trial = self._trial_at(t)
        if trial is None:
            return TaskState("iti")
        onset, event = trial.trigger_s, None
        for te, name in trial.events:
            if te > t:
                break
            onset, event = te, name
        epoch = "pre" if event is None else EVENT_EPOCHS[event]
        since = t - onset
        if epoch == "response" and since > self.population.params.response_duration_s:
            epoch, since = "iti", since - self.population.params.response_duration_s
        return TaskState(epoch, since, trial.context, trial.side, trial.cue)

    def _next_frame_start(self) -> float | None:
        cfg = self.config
        if cfg.mode == "continuous":
            assert self._acq is not None
            return self._acq.start_s + self._acq.index * self._dt
        while True:
            acq = self._acq
            pending = self._triggers[0] if self._triggers else None
            next_start = None if acq is None else acq.start_s + acq.index * self._dt
            if next_start is None or (pending is not None and pending.trigger_s <= next_start):
                if pending is None:
                    return None
                self._triggers.popleft()
                self._acq_counter += 1
                self._acq = _Acquisition(self._acq_counter, pending.trigger_s, pending.number)
                continue
            limit = cfg.frames_per_acquisition
            if limit is not None and acq.index >= limit * cfg.planes:
                if pending is None:
                    return None
                self._acq = None
                continue
            return acq.start_s + acq.index * self._dt

    def _advance_neurons(self, t: float) -> np.ndarray:
        """Spikes from the last neural time to t, in steps of at most one frame period (gaps included)."""
        pop = self.population
        if self._neural_time_s is None:
            self._neural_time_s = t - self._dt
        gap = t - self._neural_time_s
        if gap <= 0:
            return np.zeros(pop.n, dtype=np.int64)
        steps = max(1, math.ceil(gap / self._dt - 1e-6))
        h = gap / steps
        spikes = np.zeros(pop.n, dtype=np.int64)
        for k in range(steps):
            mid = self._neural_time_s + (k + 0.5) * h
            spikes += pop.step(h, pop.rates(self._task_state(mid)), self._rng)
        self._neural_time_s = t
        return spikes

    def _acquire(self, start: float) -> SimFrame:
        t0 = time.perf_counter()
        cfg, acq = self.config, self._acq
        assert acq is not None
        mid = start + 0.5 * self._dt
        spikes = self._advance_neurons(mid)
        calcium = self.population.calcium
        dff = self.population.dff_of(calcium)
        shift = self.motion.advance(mid)
        drift_dt = 0.0 if self._motion_time_s is None else max(mid - self._motion_time_s, 0.0)
        self._motion_time_s = mid if self._motion_time_s is None else max(mid, self._motion_time_s)
        gain = float(math.exp(float(self._drift.advance(drift_dt))))
        volume, plane = divmod(acq.index, cfg.planes)
        neurons = self.plane_neurons[plane]
        pixels = self.fields[plane].render(dff[neurons], shift, gain, self._rng)
        state = self._task_state(mid)
        truth = FrameTruth(self._frame_number, start, spikes.astype(np.int32), calcium.astype(np.float32),
                           dff.astype(np.float32), shift, gain, state.epoch, state.context, state.side, plane)
        self.truth.append(truth)
        if cfg.mode == "loop":
            trial, trigger_ts, aux = acq.trial, 0.0, ()
        else:
            aux = self._take_aux_edges(start)
            current = self._trial_at(start)
            trial = current.number if current else None
            trigger_ts = current.trigger_s - acq.start_s if current else None
        frame = SimFrame(pixels, volume, self._frame_number, acq.number, acq.index * self._dt, start,
                         trial, trigger_ts, aux, truth, plane)
        acq.index += 1
        self._frame_number += 1
        elapsed = time.perf_counter() - t0
        self.stats.frames += 1
        self.stats.total_s += elapsed
        self.stats.max_s = max(self.stats.max_s, elapsed)
        return frame

    def _take_aux_edges(self, start: float) -> tuple[float, ...]:
        """Trigger edges that arrived before the end of this frame (late ones land here too)."""
        assert self._acq is not None
        edges = []
        while self._triggers and self._triggers[0].trigger_s < start + self._dt:
            t = self._triggers.popleft().trigger_s
            if t >= self._acq.start_s:
                edges.append(t - self._acq.start_s)
        return tuple(edges)

    # -- speed ---------------------------------------------------------------------------------

    @classmethod
    def for_speed(cls, speed_factor: float, config: MicroscopeConfig | None = None,
                  budget_fraction_of_core: float = 0.5,
                  frame_cost_s: Callable[[int, int], float] | None = None) -> SimMicroscope:
        """A simulator reduced (with a logged warning) to keep up with a session at `speed_factor`; frame
        costs are measured on this host unless `frame_cost_s(height, width)` gives them."""
        config = config or MicroscopeConfig()
        if frame_cost_s is None:
            frame_cost_s = measured_frame_cost(config)
        plan = plan_for_speed(speed_factor, budget_fraction_of_core, config, frame_cost_s=frame_cost_s)
        return cls(replace(config, height=plan.height, width=plan.width, frame_rate_hz=plan.rate_hz))


def measure_frame_cost_s(config: MicroscopeConfig, n_frames: int = 60) -> float:
    """Host seconds per frame for a configuration, measured on a scratch continuous-mode simulator."""
    sim = SimMicroscope(config, mode="continuous", acquisition_start_s=0.0, truth_history_frames=8)
    sim.start_trial(0.0, "tactile", "left", {"sample": 0.0, "delay": 1.0, "go": 2.0})
    dt = 1.0 / config.frame_rate_hz
    sim.frames_until(5 * dt)
    t0 = time.perf_counter()
    sim.frames_until((5 + n_frames) * dt)
    return (time.perf_counter() - t0) / n_frames


def measured_frame_cost(config: MicroscopeConfig, n_frames: int = 30) -> Callable[[int, int], float]:
    """A `frame_cost_s(height, width)` for `plan_for_speed` that measures `config` at that size."""
    return lambda h, w: measure_frame_cost_s(replace(config, height=h, width=w), n_frames=n_frames)


def plan_for_speed(speed_factor: float, budget_fraction_of_core: float = 0.5,
                   config: MicroscopeConfig | None = None, *, frame_cost_s: Callable[[int, int], float],
                   min_radius_px: float = 2.0, min_rate_hz: float = 1.0) -> ImagingPlan:
    """The largest frame, then the highest rate, that fits the CPU budget at a session speed.

    A session at `speed_factor` x real time needs frame_rate_hz * speed_factor frames per host second, each
    costing frame_cost_s(height, width) host seconds (given, so the choice can be tested for any host; the
    edges measure it: `measured_frame_cost`). Halve the frame first while a neuron stays at least
    `min_radius_px` across (so ROIs remain usable), then lower the rate; below `min_rate_hz` keep halving.
    Any reduction is logged as a warning: the simulator must never fall silently behind the clock.
    """
    if speed_factor <= 0 or budget_fraction_of_core <= 0:
        raise ValueError(f"speed_factor and budget_fraction_of_core must be positive, got {speed_factor}, "
                         f"{budget_fraction_of_core}")
    config = config or MicroscopeConfig()
    costs: dict[tuple[int, int], float] = {}

    def max_rate(h: int, w: int) -> float:
        if (h, w) not in costs:
            costs[(h, w)] = frame_cost_s(h, w)
        return budget_fraction_of_core / (speed_factor * costs[(h, w)])

    sizes = [(config.height >> k, config.width >> k) for k in range(8)
             if min(config.height >> k, config.width >> k) >= 16] or [(config.height, config.width)]
    radius = [config.neuron_radius_px * min(h / config.reference_size_px, w / config.reference_size_px)
              for h, w in sizes]
    readable = [s for s, r in zip(sizes, radius, strict=True) if r >= min_radius_px] or sizes[:1]
    plan = None
    for h, w in readable:
        if max_rate(h, w) >= config.frame_rate_hz:
            plan = ImagingPlan(h, w, config.frame_rate_hz)
            break
    if plan is None:
        for h, w in [readable[-1], *sizes[len(readable):]]:
            rate = math.floor(min(config.frame_rate_hz, max_rate(h, w)) * 100) / 100
            plan = ImagingPlan(h, w, rate)
            if rate >= min_rate_hz:
                break
    assert plan is not None
    full = ImagingPlan(config.height, config.width, config.frame_rate_hz)
    if plan != full:
        logger.warning(
            "simulated microscope cannot render %dx%d at %.1f Hz for a session at %gx speed within %.0f%% "
            "of a core (%.2f ms per frame); using %dx%d at %.2f Hz instead", full.height, full.width,
            full.rate_hz, speed_factor, 100 * budget_fraction_of_core,
            1e3 * costs.get((full.height, full.width), float("nan")), plan.height, plan.width, plan.rate_hz)
        if plan.rate_hz < min_rate_hz:
            logger.warning("even %dx%d at %.2f Hz is below the minimum rate %.1f Hz: expect a sparse stream",
                           plan.height, plan.width, plan.rate_hz, min_rate_hz)
    return plan
