"""The online module's logic without sockets: frames and events in, records out. A thin composition of
stages, in the order the data flows:

1. Start-up (online/startup.py): frames are kept until the reference, ROIs and frame rate are known. A
   frame with NaN or infinite pixels is counted and refused (`MalformedInput`) at any time.
2. The frame stage (online/frame_stage.py): register, extract, dF/F, deconvolve -> a `TraceFrame` (both
   published, and appended to disk by the caller).
3. Alignment to trials through the trigger only (DESIGN.md, Clocks), here. `alignment="trigger"` (loop
   mode, and sources that stamp each frame with its trial and trigger): trial = `FrameHeader.trial`, time
   in trial = `timestamp_s - trigger_timestamp_s` (0 when the source gives no trigger time: in loop mode
   the acquisition starts at the trigger). `alignment="aux"` (continuous mode): a `ContinuousAligner` over
   the aux-trigger edges each frame reports (`aux_trigger_s`). Frame times are placed at the frame's
   centre (`frame_offset_s`, half a frame period by default), where its activity was sampled.
4. The trial stage (online/trial_stage.py): the frame's activity (settings online.decoder.input: its
   deconvolved activity by default, or its dF/F) joins its trial; a finished trial is decoded
   and trains its context's decoder. When a closed loop is attached, it is pushed each frame of a trial in
   its delay, with the trial's context, current delay CD and frames so far.
5. Outputs (online/outputs.py): traces and one `TrialDecoding` (DecoderResult + decoder.jsonl line) per
   finished trial.

Per event:

- `on_state({"trial", "state", "time_s"})`: live epoch onsets (the rig's `state` topic); they place the
  windows until the trial's record arrives and drive the closed loop.
- `on_trial_start({"trial", "context", "epochs", ...})` (optional `trial` message of kind "start"): the
  context of a running trial, which the closed loop needs before the trial's record, and the task's states
  of its epochs (`epochs`: sample, delay, go, response; the task module says them). Without it the running
  trial is assumed to be in the context of the last finished trial (contexts switch only at trial
  boundaries) and the epochs keep their names.
- `on_trial_end(record)`: the trial's record (`trial`, `context`, `side`, `outcome`, `licked_side`, and
  `States` when present: they replace the live epochs; else `go_cue_s` completes them).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from online.alignment import AlignedTrials, ContinuousAligner, EpochStates
from online.closed_loop import ClosedLoopController, record_states
from online.config import PipelineConfig
from online.decoding import CodingDirectionStore, ContextDecoder, DecoderConfig
from online.errors import MalformedInput
from online.frame_stage import FrameStage
from online.messages import RoiSnapshot
from online.outputs import PipelineOutput, roi_snapshot, trial_decoding
from online.registration import Shift
from online.rois import RoiSet, roi_set_id
from online.startup import Kept, Shape, Startup
from online.stats import PipelineStats
from online.trial_stage import SIDES, TrialOutcome, TrialStage
from online.wire import FrameHeader

logger = logging.getLogger(__name__)

NO_TRIAL = 0
"""TraceFrame.trial of a frame that belongs to no trial (before the first aux trigger)."""
_Frame = tuple[FrameHeader, Shift, np.ndarray, np.ndarray | None]
"""A processed frame waiting for its trial: header, shift, dF/F, deconvolved activity."""


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
        self.stats = PipelineStats()
        self.startup = Startup(self.config, rois, reference, self.stats)
        self.trial_stage = TrialStage(session, cd_store, epoch_states=self.config.epoch_states,
                                      include_free_drop=self.config.include_free_drop,
                                      trials_kept=self.config.trials_kept, stats=self.stats)
        self.session = session
        self.closed_loop = closed_loop
        self.clock_ns = clock_ns
        self.monotonic = monotonic
        self.frame_stage: FrameStage | None = None
        self.rois: RoiSet | None = None
        self.reference: np.ndarray | None = None
        self.roi_set_id = ""
        self.frame_rate_hz = self.config.frame_rate_hz
        self.shape: Shape | None = self.startup.shape
        """The session's frame size: the given ROIs' or reference's, else fixed when setup completes."""
        self._aligner: ContinuousAligner[_Frame] | None = None
        self._offset_s = 0.0
        self._snapshot: RoiSnapshot | None = None
        self._decode_deconvolved = self.config.online.decoder.input == "deconvolved"
        """The decoders' input (settings online.decoder.input; they refuse "deconvolved" without it)."""

    # -- state --------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the reference, ROIs and extractors exist (frames are being processed)."""
        return self.frame_stage is not None

    @property
    def setup_status(self) -> str | None:
        """What setup is waiting for, in one sentence (None once frames are being processed)."""
        return None if self.ready else self.startup.status()

    @property
    def setup_frames_held(self) -> int:
        """Frames kept in memory for setup (bounded: at most MAX_SETUP_SIZES sizes of a reference's worth)."""
        return self.startup.frames_held

    @property
    def n_rois(self) -> int:
        return self.rois.n if self.rois is not None else 0

    @property
    def frame_period_s(self) -> float:
        return 1.0 / self.frame_rate_hz

    @property
    def cd_store(self) -> CodingDirectionStore:
        return self.trial_stage.cd_store

    @property
    def decoders(self) -> dict[str, ContextDecoder]:
        return self.trial_stage.decoders

    @property
    def accuracy(self) -> dict[str, float | None]:
        return self.trial_stage.accuracy

    @property
    def decoder_config(self) -> DecoderConfig | None:
        return self.trial_stage.decoder_config

    @property
    def trials(self) -> AlignedTrials | None:
        return self.trial_stage.trials

    def roi_snapshot(self) -> RoiSnapshot | None:
        """The reference and ROI outlines for displays (None before initialisation)."""
        if self.rois is None or self.reference is None:
            return None
        if self._snapshot is None:
            self._snapshot = roi_snapshot(self.reference, self.rois, self.roi_set_id)
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
            stats.frames_invalid += 1
            raise MalformedInput(f"frame {header.frame_index}: pixels of dtype {pixels.dtype} and shape "
                                 f"{pixels.shape}, expected a 2-D numeric image")
        if pixels.dtype.kind == "f" and not math.isfinite(float(np.add.reduce(pixels, None, np.float64))):
            stats.frames_nonfinite += 1  # (one float64 sum: NaN or inf anywhere makes it non-finite)
            raise MalformedInput(f"frame {header.frame_index} has NaN or infinite pixels")
        # (the common case, no aux edges, skips building a tuple from a generator)
        aux = () if isinstance(aux_trigger_s, tuple) and not aux_trigger_s else tuple(
            float(e) for e in aux_trigger_s)
        if self.frame_stage is None:
            found = self.startup.add(header, pixels, aux)
            out = self._initialise(*found) if found is not None else PipelineOutput()
            if out.initialised:
                stats.processing_ns.append(time.perf_counter_ns() - t0)
            return out
        if pixels.shape != self.shape:
            stats.frames_invalid += 1
            assert self.shape is not None
            raise MalformedInput(f"frame {header.frame_index} is {pixels.shape[0]}x{pixels.shape[1]}, the "
                                 f"session's frames are {self.shape[0]}x{self.shape[1]}")
        if config.alignment == "trigger" and (far := self.trial_stage.far_trial(header.trial)) is not None:
            stats.frames_invalid += 1
            raise MalformedInput(f"frame {header.frame_index} {far}")
        out = self._process(header, pixels, aux)
        now = self.clock_ns()
        stats.processing_ns.append(time.perf_counter_ns() - t0)
        stats.latency_ns.append(now - header.t_ns)
        return out

    def _initialise(self, shape: Shape, kept: list[Kept]) -> PipelineOutput:
        """The stages from the start-up's reference, ROIs and rate, then the kept frames processed; no
        output when no ROI is found on the reference (setup goes on)."""
        start = self.startup.build(shape, kept)
        if start is None:
            return PipelineOutput()
        cfg = self.config
        self.shape, self.frame_rate_hz = start.shape, start.frame_rate_hz
        self.reference, self.rois = start.reference, start.rois
        self.roi_set_id = roi_set_id(start.rois)
        self.frame_stage = FrameStage(start.reference, start.rois, self.frame_rate_hz, cfg.online,
                                      cfg.registration)
        self.trial_stage.start(start.rois.n, DecoderConfig(cfg.online.decoder, bin_s=self.frame_period_s),
                               self.roi_set_id)
        self._offset_s = 0.5 * self.frame_period_s if cfg.frame_offset_s is None else cfg.frame_offset_s
        if cfg.alignment == "aux":
            self._aligner = ContinuousAligner(first_trial=1, frame_offset_s=self._offset_s, first_index=None)
        given = self.startup.given_reference is not None
        logger.info("online pipeline ready in %.2f s: %dx%d frames at %.2f Hz, %d ROIs (%s), reference %s",
                    start.seconds, shape[0], shape[1], self.frame_rate_hz, start.rois.n, self.roi_set_id,
                    "given" if given else
                    f"from {min(len(kept), cfg.online.registration.reference_frames)} frames")
        out = PipelineOutput(initialised=True)
        for header, pixels, aux in start.kept:
            out.extend(self._process(header, pixels, aux))
        return out

    def _process(self, header: FrameHeader, pixels: np.ndarray, aux: tuple[float, ...]) -> PipelineOutput:
        assert self.frame_stage is not None
        shift, dff, deconvolved = self.frame_stage.process(pixels)
        self.stats.frames_processed += 1
        out = PipelineOutput()
        if self._aligner is not None:
            if not self._aligner.edges and all(e > header.timestamp_s for e in aux):
                # Before the first aux trigger (frames in order): traces without a trial. The aligner counts
                # the frame in frames_before_first_trigger and does not place it.
                self.stats.frames_without_trial += 1
                out.add_trace(header, None, NO_TRIAL, shift, dff, deconvolved)
            for placed in self._aligner.add_frame(header.frame_index, header.timestamp_s, aux,
                                                  (header, shift, dff, deconvolved)):
                self._place(placed.trial, placed.time_s, *placed.payload, out)
        else:
            trial = header.trial
            timestamp = header.timestamp_s
            if timestamp < 0:  # no timestamps (ScanImage 3.x writes none): place by index
                timestamp = header.frame_index * self.frame_period_s
            trigger = header.trigger_timestamp_s if header.trigger_timestamp_s is not None else 0.0
            self._place(trial, timestamp - trigger + self._offset_s, header, shift, dff, deconvolved, out)
        return out

    def _place(self, trial: int, time_s: float, header: FrameHeader, shift: Shift, dff: np.ndarray,
               deconvolved: np.ndarray | None, out: PipelineOutput) -> None:
        out.add_trace(header, time_s, trial, shift, dff, deconvolved)
        stage = self.trial_stage
        activity = deconvolved if deconvolved is not None and self._decode_deconvolved else dff
        if stage.add_frame(trial, time_s, activity):
            loop = self.closed_loop
            if loop is not None and loop.wants_frame(trial, time_s):
                start_s = time_s - self._offset_s
                loop.on_frame(trial, time_s, activity, frame_index=header.frame_index, frame_start_s=start_s,
                              frame_end_s=start_s + self.frame_period_s, t_ns=header.t_ns,
                              cd=stage.cd_for_trial(trial), frames=stage.frames_of(trial))
        # A frame of a later trial (or past the response window) completes pending trials.
        if stage.has_pending:
            self._decoded(stage.finalise_ready(), out)

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
        if (far := self.trial_stage.far_trial(trial)) is not None:
            raise MalformedInput(f"state {state!r} {far}")
        self.stats.states += 1
        if self.trial_stage.enter_state(trial, state, time_s) and self.closed_loop is not None:
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
        if "epochs" in data:  # the task's own names for its epochs (protocols' epoch_states())
            try:
                names = EpochStates.from_message(data["epochs"])
            except ValueError as exc:
                raise MalformedInput(f"trial {trial}: {exc}") from None
            self.trial_stage.use_epoch_states(names)
        block = data.get("block_label")
        if block is not None and (not isinstance(block, str) or not block):
            raise MalformedInput(f"trial {trial}: block_label must be a label such as 1', got {block!r}")
        self.stats.trial_starts += 1
        self.trial_stage.set_context(trial, context, block, data.get("gated") is True)

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
        if self.trial_stage.is_ended(trial):
            raise MalformedInput(f"trial {trial}: a second end record (ignored)")
        self.stats.trial_ends += 1
        return self._decoded(self.trial_stage.end(trial, context, record, self.monotonic()))

    def poll(self) -> PipelineOutput:
        """Finalise trials whose frames did not come within `finalize_timeout_s` (call periodically)."""
        return self._decoded(self.trial_stage.poll(self.monotonic(), self.config.finalize_timeout_s))

    def flush(self) -> PipelineOutput:
        """Finalise every pending trial now (end of a replay or of the session)."""
        out = PipelineOutput()
        found = self.startup.take_most() if self.frame_stage is None else None
        if found is not None:
            try:
                out.extend(self._initialise(*found))
            except Exception:
                logger.exception("could not initialise on the %d frames received", len(found[1]))
        return self._decoded(self.trial_stage.flush(), out)

    def _decoded(self, outcomes: list[TrialOutcome], out: PipelineOutput | None = None) -> PipelineOutput:
        """Finished trials as outputs; the closed loop learns where its decision landed."""
        out = out if out is not None else PipelineOutput()
        for outcome in outcomes:
            loop = self.closed_loop
            closed = loop.on_trial_end(outcome.trial, outcome.record) if loop is not None else None
            out.trials.append(trial_decoding(outcome, self.session, self.roi_set_id, closed))
        return out

    def summary(self) -> dict[str, Any]:
        stage = self.frame_stage
        return {"ready": self.ready, "n_rois": self.n_rois, "roi_set_id": self.roi_set_id,
                "frame_rate_hz": round(self.frame_rate_hz, 4), "shape": self.shape,
                "decoders": self.trial_stage.decoder_status(), "accuracy": dict(self.accuracy),
                "stats": self.stats.to_dict(),
                "registration_bad_frames": stage.bad_frames if stage else 0,
                "clipped_shifts": stage.clipped_shifts if stage else 0,
                "closed_loop": self.closed_loop.stats() if self.closed_loop is not None else None}
