"""The online module's per-frame and per-trial logic, without sockets: frames and events in, records out.

Per frame (`OnlinePipeline.process_frame`):

1. Start-up. Until the pipeline is initialised, usable frames are kept: the reference is either
   given (`reference=`, e.g. suite2p's meanImg or a saved reference.npy) or built from the first
   `reference_frames` usable frames (`build_reference`); the ROIs are given (`rois=`: suite2p, rois.npz, the
   simulator's masks) or detected on the reference (`detect_rois`). The frame rate is measured from the
   kept frames' timestamps (the nominal rate from the settings is the fallback; a simulator reduced for a
   fast session runs slower than settings say). Then the kept frames are processed in order.
   Setup waits for usable frames instead of failing (`setup_status` says what it waits for): blank frames
   (one value everywhere: the shutter is closed) are counted and not kept; frames are kept per size, at most
   `MAX_SETUP_SIZES` sizes, and the first size with enough frames becomes the session's (the few frames of
   other sizes were strays: counted, dropped); a reference on which no ROI is found is dropped and the next
   frames are tried. With given ROIs or reference, their size is the session's from the start, and
   `WRONG_SIZE_FRAMES` frames of another size in a row end the setup (the ROIs are for another field).
   A frame with NaN or infinite pixels is counted and refused (`MalformedInput`) at any time.
2. `RigidRegistration.register` -> `TraceExtractor.extract` (ROI pixels read at the shifted position, no
   image is shifted) -> `DffTracker.update` -> a `TraceFrame` (published, and appended to disk by the caller).
3. Alignment to trials through the trigger only (DESIGN.md, Clocks). `alignment="trigger"` (loop mode, and
   sources that stamp each frame with its trial and trigger): trial = `FrameHeader.trial`, time in trial =
   `timestamp_s - trigger_timestamp_s` (0 when the source gives no trigger time: in loop mode the
   acquisition starts at the trigger). `alignment="aux"` (continuous mode): a `ContinuousAligner` over the
   aux-trigger edges each frame reports (`aux_trigger_s`). Frame times are placed at the frame's centre
   (`frame_offset_s`, half a frame period by default), where its activity was sampled.
4. The frame's dF/F joins its trial (`AlignedTrials`) and, when a closed loop is attached, updates it.

Per event:

- `on_state({"trial", "state", "time_s"})`: live epoch onsets (the rig's `state` topic); they place the
  windows until the trial's record arrives and drive the closed loop.
- `on_trial_start({"trial", "context", ...})` (optional `trial` message of kind "start"): the context of a
  running trial, which the closed loop needs before the trial's record. Without it the running trial is
  assumed to be in the context of the last finished trial (contexts switch only at trial boundaries).
- `on_trial_end(record)`: the trial's record (`trial`, `context`, `side`, `outcome`, `licked_side`, and
  `States` when present: they replace the live epochs; else `go_cue_s` completes them). The trial is
  finalised once its frames are in: when a frame of a later trial arrives, when its frames reach past the
  response window, on `flush()`, or `finalize_timeout_s` after the record (`poll()`, imaging stopped).

At finalisation the trial is decoded with its context's current delay CD BEFORE it is added (so every
decode is held out), then, if correct (outcome "hit", not a free-drop trial), it trains that context's
`ContextDecoder` (sample, delay and response windows). The `DecoderResult` carries the decode, the
cross-validated accuracy of every context's decoder, the trials per side, and the dot product of the
context's current delay CD with every stored CD over the same ROI set (`CodingDirectionStore`: earlier
sessions of this subject, and the other contexts of this session); the decoder.jsonl line adds the CDs'
similarities for the sample and response epochs and the running held-out ("prospective") accuracy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from online.alignment import (
    DEFAULT_EPOCH_STATES,
    AlignedTrials,
    ContinuousAligner,
    EpochStates,
    TrialEpochs,
    TrialFrames,
)
from online.closed_loop import ClosedLoopController, record_states
from online.decoding import (
    EPOCHS,
    CodingDirection,
    CodingDirectionStore,
    ContextDecoder,
    DecoderConfig,
    DecoderNotReady,
)
from online.messages import DecoderResult, RoiSnapshot, TraceFrame
from online.registration import RegistrationParams, RigidRegistration, Shift, build_reference
from online.rois import RoiSet, detect_rois
from online.settings import OnlineSettings
from online.traces import DffTracker, TraceExtractor
from online.wire import FrameHeader

logger = logging.getLogger(__name__)

Alignment = Literal["trigger", "aux"]
SIDES = ("left", "right")
CORRECT_OUTCOME = "hit"
NO_TRIAL = 0
"""TraceFrame.trial of a frame that belongs to no trial (before the first aux trigger)."""
MAX_SETUP_SIZES = 4
"""Frame sizes whose frames setup keeps at once (a fifth drops the size with the fewest frames)."""
WRONG_SIZE_FRAMES = 100
"""Frames in a row of another size than the given ROIs' that end setup with an error (a few are strays)."""
MAX_TRIAL_JUMP = 1000
"""How far past the latest trial a frame's trial number may be (more is a corrupt number: it would make
every trial in memory look finished and old)."""


class MalformedInput(ValueError):
    """An event or frame the pipeline cannot use; the message says what is wrong. Count it and go on."""


class PipelineError(RuntimeError):
    """The pipeline cannot start with what it was given (ROIs of another frame size, no ROI found)."""


@dataclass(frozen=True)
class PipelineConfig:
    """How the pipeline processes frames: settings online (`online`), the imaging's per-plane frame rate,
    and what only the process or a test chooses (alignment, channel, plane, ROI detection, bookkeeping)."""

    online: OnlineSettings = field(default_factory=OnlineSettings)
    """settings online: registration, neuropil, dF/F baseline, decoder."""
    frame_rate_hz: float = 30.0
    """Nominal per-plane frame rate; the measured rate replaces it when frames carry timestamps."""
    measure_frame_rate: bool = True
    alignment: Alignment = "trigger"
    frame_offset_s: float | None = None
    """Added to every frame's time in trial; None = half a frame period (the frame's centre)."""
    channel: int = 0
    plane: int = 0
    max_rois: int = 500
    roi_radius_px: float | None = None
    """detect_rois cell radius; None = 5 px at 512 px, scaled with the frame size."""
    finalize_timeout_s: float = 5.0
    """Host seconds after a trial's record to wait for its frames before deciding without them."""
    trials_kept: int = 6
    """Trials with frames but no record yet that are kept in memory (older ones are dropped)."""
    epoch_states: EpochStates = DEFAULT_EPOCH_STATES
    include_free_drop: bool = False
    """Correct trials with a free drop (auto-reward) train the decoder too."""

    def __post_init__(self) -> None:
        if not self.frame_rate_hz > 0:
            raise ValueError(f"frame_rate_hz must be positive, got {self.frame_rate_hz}")
        if self.alignment not in ("trigger", "aux"):
            raise ValueError(f"alignment must be 'trigger' or 'aux', got {self.alignment!r}")
        if self.max_rois < 1:
            raise ValueError(f"max_rois must be at least 1, got {self.max_rois}")

    @property
    def registration(self) -> RegistrationParams:
        """settings online.registration as the registration core's parameters."""
        reg = self.online.registration
        return RegistrationParams(crop_px=reg.crop_px, max_shift_px=float(reg.max_shift_px),
                                  upsample=reg.upsample)


@dataclass
class TrialDecoding:
    """What one trial's end produced: the published result, the decoder.jsonl line, whether CDs changed."""

    result: DecoderResult
    record: dict[str, Any]
    cds_changed: bool = False


@dataclass
class PipelineOutput:
    traces: list[TraceFrame] = field(default_factory=list)
    headers: list[FrameHeader] = field(default_factory=list)
    """The frame header of each trace (same order)."""
    trials: list[TrialDecoding] = field(default_factory=list)
    initialised: bool = False
    """True on the call that initialised the pipeline (save the ROIs and reference now)."""

    def extend(self, other: PipelineOutput) -> None:
        self.traces += other.traces
        self.headers += other.headers
        self.trials += other.trials
        self.initialised = self.initialised or other.initialised


@dataclass
class PipelineStats:
    frames_received: int = 0
    frames_processed: int = 0
    frames_other_channel: int = 0
    frames_invalid: int = 0
    frames_nonfinite: int = 0
    frames_blank_at_setup: int = 0
    frames_other_size_at_setup: int = 0
    """Frames kept during setup and dropped because frames of another size became the session's."""
    references_without_rois: int = 0
    frames_without_trial: int = 0
    frames_after_trial_end: int = 0
    frames_dropped_trials: int = 0
    states: int = 0
    trial_starts: int = 0
    trial_ends: int = 0
    trials_finalised: int = 0
    trials_without_frames: int = 0
    trials_timed_out: int = 0
    processing_ns: deque[int] = field(default_factory=lambda: deque(maxlen=2000))
    latency_ns: deque[int] = field(default_factory=lambda: deque(maxlen=2000))

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("processing_ns", "latency_ns")}
        for name, values in (("processing", self.processing_ns), ("latency", self.latency_ns)):
            if values:
                arr = np.fromiter(values, np.int64) / 1e6
                out[f"{name}_p50_ms"] = round(float(np.percentile(arr, 50)), 4)
                out[f"{name}_p99_ms"] = round(float(np.percentile(arr, 99)), 4)
            else:
                out[f"{name}_p50_ms"] = out[f"{name}_p99_ms"] = None
        return out


_Kept = tuple[FrameHeader, np.ndarray, tuple[float, ...]]
"""A frame kept during setup: its header, a copy of its pixels, its aux-trigger edges."""


@dataclass
class _Pending:
    trial: int
    record: dict[str, Any]
    since: float


@dataclass
class _Prospective:
    decoded: int = 0
    correct: int = 0


def roi_set_id(rois: RoiSet) -> str:
    """A short id of the ROI masks (same masks -> same id), so CDs compare only over the same neurons."""
    h = hashlib.sha1()
    h.update(np.asarray(rois.shape, np.int64).tobytes())
    for array in (rois.roi_offsets, rois.ypix, rois.xpix):
        h.update(np.ascontiguousarray(array).astype(np.int64).tobytes())
    h.update(np.round(np.asarray(rois.lam, np.float64), 4).tobytes())
    return f"rois-{h.hexdigest()[:12]}"


def _number(value: Any, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise MalformedInput(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _trial_number(value: Any, what: str = "trial") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedInput(f"{what} must be an integer >= 0, got {value!r}")
    return value


class OnlinePipeline:
    """Frames and trial events in, TraceFrames and DecoderResults out. Single-threaded; no I/O."""

    def __init__(self, config: PipelineConfig | None = None, *, rois: RoiSet | None = None,
                 reference: np.ndarray | None = None, session: str = "", cd_store: CodingDirectionStore | None
                 = None, closed_loop: ClosedLoopController | None = None,
                 clock_ns: Callable[[], int] = time.time_ns, monotonic: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.config = config or PipelineConfig()
        if reference is not None:
            reference = np.asarray(reference, dtype=np.float32)
            if reference.ndim != 2:
                raise PipelineError(f"the reference must be a 2-D image, got shape {reference.shape}")
            if rois is not None and tuple(rois.shape) != reference.shape:
                raise PipelineError(f"ROIs are for {rois.shape[0]}x{rois.shape[1]} frames but the reference "
                                    f"is {reference.shape[0]}x{reference.shape[1]}")
        self._given_rois = rois
        self._given_reference = reference
        self.session = session
        self.cd_store = cd_store if cd_store is not None else CodingDirectionStore()
        self.closed_loop = closed_loop
        self.clock_ns = clock_ns
        self.monotonic = monotonic
        self.stats = PipelineStats()
        self.rois: RoiSet | None = None
        self.reference: np.ndarray | None = None
        self.roi_set_id = ""
        self.frame_rate_hz = self.config.frame_rate_hz
        given = rois.shape if rois is not None else reference.shape if reference is not None else None
        self.shape: tuple[int, int] | None = (int(given[0]), int(given[1])) if given is not None else None
        """The session's frame size: the given ROIs' or reference's, else fixed when setup completes."""
        self.registration: RigidRegistration | None = None
        self.extractor: TraceExtractor | None = None
        self.dff: DffTracker | None = None
        self.trials: AlignedTrials | None = None
        self.decoder_config: DecoderConfig | None = None
        self.decoders: dict[str, ContextDecoder] = {}
        self.accuracy: dict[str, float | None] = {}
        self._prospective: dict[str, _Prospective] = {}
        self._setup: dict[tuple[int, int], list[_Kept]] = {}
        self._wrong_size_run = 0
        self._no_roi_note: str | None = None
        self._pending_states: list[tuple[int, str, float]] = []
        self._pending_ends: OrderedDict[int, _Pending] = OrderedDict()
        self._finalised: OrderedDict[int, None] = OrderedDict()
        self._contexts: OrderedDict[int, str] = OrderedDict()
        self._last_context: str | None = None
        self._latest_trial = -1
        self._aligner: ContinuousAligner[tuple[FrameHeader, Shift, np.ndarray]] | None = None
        self._offset_s = 0.0
        self._snapshot: RoiSnapshot | None = None

    # -- state --------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the reference, ROIs and extractors exist (frames are being processed)."""
        return self.extractor is not None

    @property
    def setup_status(self) -> str | None:
        """What setup is waiting for, in one sentence (None once frames are being processed)."""
        if self.ready:
            return None
        stats = self.stats
        held = max((len(kept) for kept in self._setup.values()), default=0)
        text = f"waiting for usable frames: {held} of {self._frames_needed()} kept for the reference"
        skipped = [f"{n} {what}" for n, what in (
            (stats.frames_blank_at_setup, "blank (shutter closed?)"),
            (stats.frames_nonfinite, "with NaN or infinite pixels"),
            (stats.frames_invalid + stats.frames_other_size_at_setup, "of another size")) if n]
        if skipped:
            text += "; skipped " + ", ".join(skipped)
        if self._no_roi_note is not None:
            text += f"; {self._no_roi_note}"
        return text

    @property
    def setup_frames_held(self) -> int:
        """Frames kept in memory for setup (bounded: at most MAX_SETUP_SIZES sizes of a reference's worth)."""
        return sum(len(kept) for kept in self._setup.values())

    @property
    def n_rois(self) -> int:
        return self.rois.n if self.rois is not None else 0

    @property
    def frame_period_s(self) -> float:
        return 1.0 / self.frame_rate_hz

    def context_for(self, trial: int) -> str | None:
        """The context of a trial: from its start message, else the last finished trial's."""
        return self._contexts.get(trial, self._last_context)

    def cd_for_trial(self, trial: int) -> tuple[str, CodingDirection] | None:
        """(context, current delay CD) for a running trial, or None while its decoder is not ready."""
        context = self.context_for(trial)
        decoder = self.decoders.get(context) if context is not None else None
        if decoder is None or not decoder.ready("delay"):
            return None
        try:
            return context, decoder.coding_direction("delay")  # type: ignore[return-value]
        except DecoderNotReady:
            return None

    def trial_frames(self, trial: int) -> TrialFrames | None:
        if self.trials is None or trial not in self.trials:
            return None
        return self.trials[trial]

    def roi_snapshot(self) -> RoiSnapshot | None:
        """The reference and ROI outlines for displays (None before initialisation)."""
        if self.rois is None or self.reference is None:
            return None
        if self._snapshot is None:
            points, offsets = self.rois.outline_arrays()
            self._snapshot = RoiSnapshot(self.reference.astype(np.float32),
                                         self.rois.centroids.astype(np.float32), points, offsets,
                                         self.roi_set_id)
        return self._snapshot

    # -- frames -------------------------------------------------------------------------------------

    def process_frame(self, header: FrameHeader, pixels: np.ndarray,
                      aux_trigger_s: Sequence[float] = ()) -> PipelineOutput:
        """One frame (any channel/plane: others than the configured one are counted and skipped)."""
        t0 = time.perf_counter_ns()
        stats, config = self.stats, self.config
        stats.frames_received += 1
        if header.channel != config.channel or header.plane != config.plane:
            stats.frames_other_channel += 1
            return PipelineOutput()
        pixels = np.asarray(pixels)
        if pixels.ndim != 2 or pixels.dtype.kind not in "iuf" or pixels.size == 0:
            self.stats.frames_invalid += 1
            raise MalformedInput(f"frame {header.frame_index}: pixels of dtype {pixels.dtype} and shape "
                                 f"{pixels.shape}, expected a 2-D numeric image")
        if pixels.dtype.kind == "f" and not math.isfinite(float(np.add.reduce(pixels, None, np.float64))):
            self.stats.frames_nonfinite += 1  # (one float64 sum: NaN or inf anywhere makes it non-finite)
            raise MalformedInput(f"frame {header.frame_index} has NaN or infinite pixels")
        # (the common case, no aux edges, skips building a tuple from a generator)
        aux = () if isinstance(aux_trigger_s, tuple) and not aux_trigger_s else tuple(
            float(e) for e in aux_trigger_s)
        if self.extractor is None:
            out = self._setup_frame(header, pixels, aux)
            if out.initialised:
                self.stats.processing_ns.append(time.perf_counter_ns() - t0)
            return out
        if pixels.shape != self.shape:
            self.stats.frames_invalid += 1
            assert self.shape is not None
            raise MalformedInput(f"frame {header.frame_index} is {pixels.shape[0]}x{pixels.shape[1]}, the "
                                 f"session's frames are {self.shape[0]}x{self.shape[1]}")
        if config.alignment == "trigger" and (far := self._far_trial(header.trial)) is not None:
            self.stats.frames_invalid += 1
            raise MalformedInput(f"frame {header.frame_index} {far}")
        out = self._process(header, pixels, aux)
        now = self.clock_ns()
        stats.processing_ns.append(time.perf_counter_ns() - t0)
        stats.latency_ns.append(now - header.t_ns)
        return out

    def _setup_frame(self, header: FrameHeader, pixels: np.ndarray, aux: tuple[float, ...]) -> PipelineOutput:
        """Keep a usable frame for setup; initialise once one size has enough of them."""
        stats = self.stats
        shape = (int(pixels.shape[0]), int(pixels.shape[1]))
        if self.shape is not None and shape != self.shape:  # the given ROIs' or reference's size
            stats.frames_invalid += 1
            self._wrong_size_run += 1
            given = "ROIs are" if self._given_rois is not None else "reference is"
            if self._wrong_size_run >= WRONG_SIZE_FRAMES:
                raise PipelineError(f"{given} for {self.shape[0]}x{self.shape[1]} frames, frames are "
                                    f"{shape[0]}x{shape[1]}")
            raise MalformedInput(f"frame {header.frame_index} is {shape[0]}x{shape[1]}, the {given} for "
                                 f"{self.shape[0]}x{self.shape[1]} frames")
        self._wrong_size_run = 0
        if pixels.min() == pixels.max():
            stats.frames_blank_at_setup += 1
            if stats.frames_blank_at_setup == 1:
                logger.info("waiting for usable frames: blank frames (one value everywhere: shutter closed?) "
                            "are not used for the reference")
            return PipelineOutput()
        kept = self._setup.setdefault(shape, [])
        kept.append((header, np.array(pixels, copy=True), aux))  # the message's memory is reused
        if len(self._setup) > MAX_SETUP_SIZES:
            fewest = min((s for s in self._setup if s != shape), key=lambda s: len(self._setup[s]))
            stats.frames_other_size_at_setup += len(self._setup.pop(fewest))
        if len(kept) < self._frames_needed():
            return PipelineOutput()
        strays = sum(len(frames) for size, frames in self._setup.items() if size != shape)
        if strays:
            stats.frames_other_size_at_setup += strays
            logger.warning("%d frame(s) of other sizes than %dx%d skipped during setup", strays, *shape)
        self._setup = {}
        return self._initialise(shape, kept)

    def _far_trial(self, trial: int) -> str | None:
        """Why `trial` is refused, if it is more than MAX_TRIAL_JUMP past the latest trial with frames."""
        if 0 <= self._latest_trial < trial - MAX_TRIAL_JUMP:
            latest = self._latest_trial
            return f"is of trial {trial}, more than {MAX_TRIAL_JUMP} past the latest trial {latest}"
        return None

    def _frames_needed(self) -> int:
        if self._given_reference is None:
            return self.config.online.registration.reference_frames
        return 8 if self.config.measure_frame_rate else 1

    def _measure_rate(self, kept: list[_Kept]) -> float:
        nominal = self.config.frame_rate_hz
        if not self.config.measure_frame_rate:
            return nominal
        frames = sorted((h.trial, h.frame_index, h.timestamp_s) for h, _, _ in kept)
        steps = [(b[2] - a[2]) / (b[1] - a[1]) for a, b in zip(frames, frames[1:], strict=False)
                 if a[0] == b[0] and b[1] > a[1] and a[2] >= 0 and b[2] > a[2]]
        if not steps:
            return nominal
        rate = 1.0 / float(np.median(steps))
        if abs(rate - nominal) > 0.02 * nominal:
            logger.warning("frames arrive at %.3f Hz (from their timestamps), settings say %.3f Hz: "
                           "using %.3f Hz", rate, nominal, rate)
        return rate

    def _initialise(self, shape: tuple[int, int], kept: list[_Kept]) -> PipelineOutput:
        """Reference, ROIs and extractors from the kept frames of `shape`, then those frames processed; no
        output (and the frames dropped) when no ROI is found on the reference: setup goes on."""
        cfg = self.config
        t0 = time.perf_counter()
        if self._given_reference is not None:
            reference = self._given_reference
            if reference.shape != shape:
                raise PipelineError(f"the reference is {reference.shape[0]}x{reference.shape[1]}, frames are "
                                    f"{shape[0]}x{shape[1]}")
        else:
            stack = np.stack([p for _, p, _ in kept[: cfg.online.registration.reference_frames]])
            reference = build_reference(stack, params=cfg.registration)
        rois = self._given_rois
        if rois is None:
            radius = cfg.roi_radius_px or max(1.5, 5.0 * min(shape) / 512)
            rois = detect_rois(reference, cfg.max_rois, radius)
            if rois.n == 0 and self._given_reference is not None:
                raise PipelineError("no ROI was found on the given reference image; give ROIs (--rois)")
            if rois.n == 0:
                self.stats.references_without_rois += 1
                self._no_roi_note = (f"no ROI was found on the reference of {len(stack)} frames (no cells in "
                                     "view?): trying the next frames; give ROIs with --rois")
                logger.warning("%s (%d so far)", self._no_roi_note, self.stats.references_without_rois)
                return PipelineOutput()
        if tuple(rois.shape) != shape:
            raise PipelineError(f"ROIs are for {rois.shape[0]}x{rois.shape[1]} frames, frames are "
                                f"{shape[0]}x{shape[1]}")
        self.shape = shape
        self.frame_rate_hz = self._measure_rate(kept)
        self.reference, self.rois = reference.astype(np.float32), rois
        self.roi_set_id = roi_set_id(rois)
        self.registration = RigidRegistration(self.reference, cfg.registration)
        self.extractor = TraceExtractor(rois, neuropil_coefficient=cfg.online.neuropil_coefficient,
                                        max_shift_px=cfg.registration.max_shift_px)
        self.dff = DffTracker(rois.n, self.frame_rate_hz, baseline_window_s=cfg.online.dff_baseline_window_s)
        self.trials = AlignedTrials(rois.n, cfg.epoch_states)
        self.decoder_config = DecoderConfig(cfg.online.decoder, bin_s=self.frame_period_s)
        self._offset_s = 0.5 * self.frame_period_s if cfg.frame_offset_s is None else cfg.frame_offset_s
        if cfg.alignment == "aux":
            self._aligner = ContinuousAligner(first_trial=1, frame_offset_s=self._offset_s, first_index=None)
        if self.closed_loop is not None:
            self.closed_loop.bind(self.cd_for_trial, self.trial_frames, self.frame_period_s)
        logger.info("online pipeline ready in %.2f s: %dx%d frames at %.2f Hz, %d ROIs (%s), reference %s",
                    time.perf_counter() - t0, self.shape[0], self.shape[1], self.frame_rate_hz, rois.n,
                    self.roi_set_id, "given" if self._given_reference is not None else
                    f"from {min(len(kept), cfg.online.registration.reference_frames)} frames")
        for trial, state, time_s in self._pending_states:
            self.trials.enter_state(trial, state, time_s)
        self._pending_states.clear()
        out = PipelineOutput(initialised=True)
        for header, pixels, aux in kept:
            out.extend(self._process(header, pixels, aux))
        return out

    def _process(self, header: FrameHeader, pixels: np.ndarray, aux: tuple[float, ...]) -> PipelineOutput:
        assert self.registration is not None and self.extractor is not None and self.dff is not None
        shift = self.registration.register(pixels)
        traces = self.extractor.extract(pixels, shift)
        dff = self.dff.update(traces.f_corrected)
        self.stats.frames_processed += 1
        out = PipelineOutput()
        if self._aligner is not None:
            if not self._aligner.edges and all(e > header.timestamp_s for e in aux):
                # Before the first aux trigger (frames in order): traces without a trial. The aligner counts
                # the frame in frames_before_first_trigger and does not place it.
                self.stats.frames_without_trial += 1
                out.traces.append(self._trace(header, None, NO_TRIAL, shift, dff))
                out.headers.append(header)
            for placed in self._aligner.add_frame(header.frame_index, header.timestamp_s, aux,
                                                  (header, shift, dff)):
                self._place(placed.trial, placed.time_s, *placed.payload, out)
        else:
            trial = header.trial
            timestamp = header.timestamp_s
            if timestamp < 0:  # no timestamps (ScanImage 3.x writes none): place by index
                timestamp = header.frame_index * self.frame_period_s
            trigger = header.trigger_timestamp_s if header.trigger_timestamp_s is not None else 0.0
            self._place(trial, timestamp - trigger + self._offset_s, header, shift, dff, out)
        return out

    def _trace(self, header: FrameHeader, time_s: float | None, trial: int, shift: Shift,
               dff: np.ndarray) -> TraceFrame:
        return TraceFrame(header.frame_index, trial, header.timestamp_s, time_s, float(shift.dy),
                          float(shift.dx), float(shift.correlation), dff.astype(np.float32, copy=False))

    def _place(self, trial: int, time_s: float, header: FrameHeader, shift: Shift, dff: np.ndarray,
               out: PipelineOutput) -> None:
        assert self.trials is not None
        out.traces.append(self._trace(header, time_s, trial, shift, dff))
        out.headers.append(header)
        if trial in self._finalised:
            self.stats.frames_after_trial_end += 1
        elif math.isfinite(time_s):
            self.trials.trial(trial).add(time_s, dff)  # = add_frame(AlignedFrame(...)), without the object
            if trial > self._latest_trial:
                self._latest_trial = trial
                self._drop_old_trials()
            if self.closed_loop is not None:
                self.closed_loop.on_frame(trial, time_s, dff, frame_index=header.frame_index,
                                          frame_start_s=time_s - self._offset_s, t_ns=header.t_ns)
        # A frame of a later trial (or past the response window) completes pending trials.
        if self._pending_ends:
            out.trials += self._finalise_ready()

    def _drop_old_trials(self) -> None:
        """Trials without a record that fell out of the kept range (no events, or records lost)."""
        assert self.trials is not None
        for number in list(self.trials):
            if number < self._latest_trial - self.config.trials_kept and number not in self._pending_ends:
                dropped = self.trials.pop(number)
                self.stats.frames_dropped_trials += len(dropped) if dropped is not None else 0

    # -- events -------------------------------------------------------------------------------------

    def on_state(self, data: Mapping[str, Any]) -> PipelineOutput:
        """A live state entry from the rig: {"trial", "state", "time_s"} (time from trial start)."""
        if not isinstance(data, Mapping):
            raise MalformedInput(f"state message data must be an object, got {type(data).__name__}")
        trial = _trial_number(data.get("trial"))
        state = data.get("state")
        if not isinstance(state, str) or not state:
            raise MalformedInput(f"state message needs a state name, got {state!r}")
        time_s = _number(data.get("time_s"), "state time_s")
        if (far := self._far_trial(trial)) is not None:
            raise MalformedInput(f"state {state!r} {far}")
        self.stats.states += 1
        if trial in self._finalised:
            return PipelineOutput()
        if self.trials is None:
            self._pending_states.append((trial, state, time_s))
            del self._pending_states[:-2000]
        else:
            self.trials.enter_state(trial, state, time_s)
        if self.closed_loop is not None:
            self.closed_loop.on_state(trial, state, time_s)
        return PipelineOutput()

    def on_trial_start(self, data: Mapping[str, Any]) -> None:
        """A trial's start message: its context (for the closed loop, before the record exists)."""
        if not isinstance(data, Mapping):
            raise MalformedInput("trial start data must be an object")
        trial = _trial_number(data.get("trial"))
        context = data.get("context")
        if not isinstance(context, str) or not context:
            raise MalformedInput(f"trial start needs a context name, got {context!r}")
        self.stats.trial_starts += 1
        self._contexts[trial] = context
        while len(self._contexts) > 64:
            self._contexts.popitem(last=False)

    def on_trial_end(self, record: Mapping[str, Any]) -> PipelineOutput:
        """A finished trial's record. Returns the trials finalised by it (possibly none yet)."""
        if not isinstance(record, Mapping):
            raise MalformedInput(f"trial record must be an object, got {type(record).__name__}")
        trial = _trial_number(record.get("trial"))
        context = record.get("context")
        if not isinstance(context, str) or not context:
            raise MalformedInput(f"trial {trial}: record needs a context name, got {context!r}")
        side = record.get("side")
        if side is not None and side not in SIDES:
            raise MalformedInput(f"trial {trial}: side must be 'left' or 'right', got {side!r}")
        states = record_states(record)
        if states is not None:
            for name, visits in states.items():
                if not isinstance(visits, Sequence) or not all(
                        isinstance(v, Sequence) and len(v) >= 1 for v in visits):
                    raise MalformedInput(f"trial {trial}: States[{name!r}] is not a list of [start, end]")
        if trial in self._finalised or trial in self._pending_ends:
            raise MalformedInput(f"trial {trial}: a second end record (ignored)")
        self.stats.trial_ends += 1
        self._last_context = context
        self._pending_ends[trial] = _Pending(trial, dict(record), self.monotonic())
        out = PipelineOutput()
        out.trials += self._finalise_ready()
        return out

    def poll(self) -> PipelineOutput:
        """Finalise trials whose frames did not come within `finalize_timeout_s` (call periodically)."""
        out = PipelineOutput()
        now = self.monotonic()
        for trial, pending in list(self._pending_ends.items()):
            if now - pending.since >= self.config.finalize_timeout_s:
                self.stats.trials_timed_out += 1
                out.trials.append(self._finalise(self._pending_ends.pop(trial)))
        return out

    def flush(self) -> PipelineOutput:
        """Finalise every pending trial now (end of a replay or of the session)."""
        out = PipelineOutput()
        if self.extractor is None and self._setup:
            shape, kept = max(self._setup.items(), key=lambda item: len(item[1]))
            self._setup = {}
            try:
                out.extend(self._initialise(shape, kept))
            except Exception:
                logger.exception("could not initialise on the %d frames received", len(kept))
        while self._pending_ends:
            _, pending = self._pending_ends.popitem(last=False)
            out.trials.append(self._finalise(pending))
        return out

    def _frames_complete(self, pending: _Pending) -> bool:
        if self.trials is None:
            return False
        if self._latest_trial > pending.trial:
            return True
        frames = self.trials.get(pending.trial)
        if frames is None or not len(frames):
            return False
        epochs = frames.epochs
        states = record_states(pending.record)
        if states is not None:
            epochs = TrialEpochs.from_states(states, self.config.epoch_states)
        go = epochs.go_s if epochs.go_s is not None else pending.record.get("go_cue_s")
        if not isinstance(go, int | float) or isinstance(go, bool):
            return False
        assert self.decoder_config is not None
        end = float(go) + self.decoder_config.response_window_s[1]
        return float(frames.times_s[-1]) >= end

    def _finalise_ready(self) -> list[TrialDecoding]:
        done = []
        for trial, pending in list(self._pending_ends.items()):
            if self._frames_complete(pending):
                done.append(self._finalise(self._pending_ends.pop(trial)))
        return done

    # -- a trial's end ------------------------------------------------------------------------------

    def _decoder(self, context: str) -> ContextDecoder | None:
        if self.rois is None or self.decoder_config is None:
            return None
        decoder = self.decoders.get(context)
        if decoder is None:
            decoder = self.decoders[context] = ContextDecoder(context, self.rois.n, self.decoder_config,
                                                              self.roi_set_id)
            self.accuracy.setdefault(context, None)
        return decoder

    def _finalise(self, pending: _Pending) -> TrialDecoding:
        record = pending.record
        trial, context = pending.trial, str(record["context"])
        side = record.get("side")
        outcome = record.get("outcome")
        licked = record.get("licked_side")
        self.stats.trials_finalised += 1
        self._finalised[trial] = None
        while len(self._finalised) > 1000:
            self._finalised.popitem(last=False)
        frames = self.trials.pop(trial) if self.trials is not None else None
        if frames is not None and len(frames) == 0:
            frames = None
        if frames is None:
            self.stats.trials_without_frames += 1
        else:
            states = record_states(record)
            if states is not None:
                try:
                    frames.epochs = TrialEpochs.from_states(states, self.config.epoch_states)
                except (TypeError, ValueError, IndexError) as exc:
                    logger.warning("trial %d: unusable States in the record (%s); live epochs kept", trial,
                                   exc)
            go = record.get("go_cue_s")
            if frames.epochs.go_s is None and isinstance(go, int | float) and not isinstance(go, bool):
                frames.epochs.enter(self.config.epoch_states.go, float(go))
        decoder = self._decoder(context)
        details: dict[str, Any] = {"n_frames": len(frames) if frames is not None else 0,
                                   "epochs": _epochs_dict(frames.epochs) if frames is not None else None}
        decoded = confidence = projection = boundary = None
        if decoder is not None and frames is not None and decoder.ready("delay"):
            try:
                cd = decoder.coding_direction("delay")
                decode = decoder.decode_trial(frames, "delay")
                decoded, confidence, projection = decode.side, round(decode.confidence, 6), decode.projection
                boundary = cd.boundary.value
            except (DecoderNotReady, ValueError) as exc:
                details["decode_skipped"] = str(exc)
        correct = outcome == CORRECT_OUTCOME and side in SIDES and (
            self.config.include_free_drop or not record.get("free_drop", False))
        if decoded is not None and correct:
            stats = self._prospective.setdefault(context, _Prospective())
            stats.decoded += 1
            stats.correct += decoded == side
        used: list[str] = []
        if correct and decoder is not None and frames is not None:
            try:
                used = decoder.add_trial(str(side), frames)
            except ValueError as exc:
                details["training_skipped"] = str(exc)
        details["trained_epochs"] = used
        cds_changed = False
        similarity: dict[str, dict[str, float]] = {}
        if decoder is not None and used:
            self.accuracy[context] = self._accuracy(decoder)
            for epoch in EPOCHS:
                if epoch not in used or not decoder.ready(epoch):
                    continue
                try:
                    cd = decoder.coding_direction(epoch)
                except DecoderNotReady:
                    continue
                similarity[epoch] = self._similarities(cd)
                self.cd_store.put(self.session, cd)
                cds_changed = True
        elif decoder is not None and decoder.ready("delay"):
            for epoch in EPOCHS:
                if decoder.ready(epoch):
                    with contextlib.suppress(DecoderNotReady):
                        similarity[epoch] = self._similarities(decoder.coding_direction(epoch))
        closed = self.closed_loop.on_trial_end(trial, record) if self.closed_loop is not None else None
        per_side = {s: decoder.n_trials(s, "delay") for s in SIDES} if decoder is not None else {}
        result = DecoderResult(
            trial=trial, context=context, actual_side=side if side in SIDES else None,
            licked_side=licked if licked in SIDES else None,
            outcome=outcome if isinstance(outcome, str) else None,
            decoded_side=decoded, confidence=confidence,
            projection=None if projection is None else float(projection),
            boundary=None if boundary is None else float(boundary),
            accuracy=dict(self.accuracy), trials_per_side=per_side,
            cd_similarity=dict(similarity.get("delay", {})), closed_loop=closed)
        prospective = {c: {"decoded": p.decoded, "correct": p.correct,
                           "accuracy": round(p.correct / p.decoded, 4) if p.decoded else None}
                       for c, p in self._prospective.items()}
        line = {**asdict(result), "session": self.session, "roi_set_id": self.roi_set_id,
                "correct": correct, "cd_similarity_by_epoch": similarity, "prospective": prospective,
                **details}
        return TrialDecoding(result, line, cds_changed)

    def _accuracy(self, decoder: ContextDecoder) -> float | None:
        if not decoder.ready("delay"):
            return None
        try:
            return round(decoder.accuracy("delay"), 4)
        except (DecoderNotReady, ValueError):
            return None

    def _similarities(self, cd: CodingDirection) -> dict[str, float]:
        """Dot products of `cd` with every stored CD of its epoch over the same ROIs (itself excluded); the
        other contexts of this session count with their current CDs."""
        out: dict[str, float] = {}
        for sim in self.cd_store.compare(cd):
            if sim.session == self.session and sim.context == cd.context:
                continue
            if sim.method != cd.method:
                continue
            out[f"{sim.session}/{sim.context}"] = round(sim.dot, 4)
        return out

    def summary(self) -> dict[str, Any]:
        return {"ready": self.ready, "n_rois": self.n_rois, "roi_set_id": self.roi_set_id,
                "frame_rate_hz": round(self.frame_rate_hz, 4), "shape": self.shape,
                "decoders": {c: d.status("delay") for c, d in self.decoders.items()},
                "accuracy": dict(self.accuracy), "stats": self.stats.to_dict(),
                "registration_bad_frames": self.registration.bad_frames if self.registration else 0,
                "clipped_shifts": self.extractor.clipped_shifts if self.extractor else 0,
                "closed_loop": self.closed_loop.stats() if self.closed_loop is not None else None}


def _epochs_dict(epochs: TrialEpochs) -> dict[str, float | None]:
    return {"sample_s": epochs.sample_s, "delay_s": epochs.delay_s, "go_s": epochs.go_s,
            "response_s": epochs.response_s}

