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

Several planes (`PipelineConfig.planes`, settings imaging.planes): each plane has its own start-up
(reference, ROIs), registration, extraction, dF/F and deconvolver; the neuron index is the concatenation
of the planes' ROIs in plane order. Plane frames are grouped into volumes (online/volumes.py); a complete
volume is one time point of the population for alignment, decoding and the closed loop (at the per-plane
rate, the volume rate). Each plane frame still gives its TraceFrame (its own shift), holding the whole
population's dF/F and deconvolved activity: that plane's ROIs fresh, the other planes' from their latest
frame. Frames of another channel than the
functional one are counted and skipped; a frame of a plane beyond the session's is counted and refused.

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
from online.errors import MalformedInput, PipelineError
from online.frame_stage import FrameStage
from online.messages import RoiSnapshot
from online.outputs import PipelineOutput, roi_snapshot, trial_decoding
from online.rois import RoiSet, roi_set_id
from online.startup import MAX_SETUP_SIZES, Shape, Start, Startup
from online.stats import PipelineStats
from online.trial_stage import SIDES, TrialOutcome, TrialStage
from online.volumes import PlaneFrame, Volume, VolumeAssembler
from online.wire import FrameHeader

logger = logging.getLogger(__name__)

NO_TRIAL = 0
"""TraceFrame.trial of a frame that belongs to no trial (before the first aux trigger)."""


def _number(value: Any, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise MalformedInput(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _trial_number(value: Any, what: str = "trial") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedInput(f"{what} must be an integer >= 0, got {value!r}")
    return value


def _per_plane(value: Any, planes: int, what: str) -> list[Any]:
    """A given ROI set or reference per plane: one (a single plane), or a sequence of one per plane."""
    if value is None:
        return [None] * planes
    single = isinstance(value, RoiSet) or (isinstance(value, np.ndarray) and value.ndim == 2)
    values = [value] if single else list(value)
    if len(values) != planes:
        raise PipelineError(f"{len(values)} {what} given for {planes} plane(s): give one per plane")
    return values


class _Plane:
    """One plane's start-up, then its frame stage and its columns in the population."""

    def __init__(self, startup: Startup) -> None:
        self.startup = startup
        self.start: Start | None = None
        self.stage: FrameStage | None = None
        self.columns = slice(0, 0)

    @property
    def shape(self) -> Shape | None:
        return self.start.shape if self.start is not None else self.startup.shape


class OnlinePipeline:
    """Frames and trial events in, TraceFrames and DecoderResults out. Single-threaded; no I/O.

    `rois` and `reference`: one per plane (a sequence) or, with one plane, the set or image itself."""

    def __init__(self, config: PipelineConfig | None = None, *, rois: RoiSet | Sequence[RoiSet] | None = None,
                 reference: np.ndarray | Sequence[np.ndarray] | None = None, session: str = "",
                 cd_store: CodingDirectionStore | None = None,
                 closed_loop: ClosedLoopController | None = None,
                 clock_ns: Callable[[], int] = time.time_ns, monotonic: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.config = config or PipelineConfig()
        self.stats = PipelineStats()
        n = self.config.planes
        self._planes = [_Plane(Startup(self.config, r, ref, self.stats)) for r, ref in zip(
            _per_plane(rois, n, "ROI sets"), _per_plane(reference, n, "references"), strict=True)]
        self.startup = self._planes[0].startup
        self.trial_stage = TrialStage(session, cd_store, epoch_states=self.config.epoch_states,
                                      include_free_drop=self.config.include_free_drop,
                                      trials_kept=self.config.trials_kept, stats=self.stats)
        self.session = session
        self.closed_loop = closed_loop
        self.clock_ns = clock_ns
        self.monotonic = monotonic
        self.frame_stage: FrameStage | None = None
        """Plane 0's (every plane's: `plane_stages`)."""
        self.rois: RoiSet | None = None
        """Every plane's ROIs in plane order (the neuron index; one RoiSet of the frame size)."""
        self.plane_rois: list[RoiSet] = []
        self.reference: np.ndarray | None = None
        """Plane 0's reference (every plane's: `plane_references`)."""
        self.plane_references: list[np.ndarray] = []
        self.roi_set_id = ""
        self.frame_rate_hz = self.config.frame_rate_hz
        self.shape: Shape | None = self.startup.shape
        """The session's frame size: the given ROIs' or reference's, else fixed when setup completes."""
        self._volumes = VolumeAssembler(self.config.planes, by_trial=self.config.alignment == "trigger")
        self._row: np.ndarray | None = None
        self._deconvolved_row: np.ndarray | None = None
        self._aligner: ContinuousAligner[tuple[Volume, bool]] | None = None
        self._offset_s = 0.0
        self._snapshot: RoiSnapshot | None = None
        self._ready_at: float | None = None
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
        if self.ready:
            return None
        if len(self._planes) == 1:
            return self.startup.status()
        waiting = [(z, p.startup) for z, p in enumerate(self._planes) if p.start is None]
        (z, first), rest = waiting[0], waiting[1:]
        text = f"plane {z}: {first.status()}"  # (the skip counts are the session's, said once)
        return text + "".join(f"; plane {z}: {s.frames_held} of {s.frames_needed()} kept" for z, s in rest)

    @property
    def setup_frames_held(self) -> int:
        """Frames kept in memory for setup (bounded: at most MAX_SETUP_SIZES sizes of a reference's worth)."""
        return sum(p.startup.frames_held + (len(p.start.kept) if p.start is not None else 0)
                   for p in self._planes)

    @property
    def plane_stages(self) -> list[FrameStage]:
        """Each plane's frame stage (empty until ready)."""
        return [p.stage for p in self._planes if p.stage is not None]

    @property
    def plane_sets(self) -> list[tuple[RoiSet, np.ndarray]]:
        """Each plane's ROIs and reference, in plane order (empty until ready)."""
        return list(zip(self.plane_rois, self.plane_references, strict=True))

    @property
    def plane_columns(self) -> list[slice]:
        """Each plane's ROIs in the population (neuron index), once ready."""
        return [p.columns for p in self._planes]

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
        if self._snapshot is None:  # plane 0: its ROIs are the population's first columns
            self._snapshot = roi_snapshot(self.reference, self.plane_rois[0], self.roi_set_id)
        return self._snapshot

    # -- frames -------------------------------------------------------------------------------------

    def process_frame(self, header: FrameHeader, pixels: np.ndarray,
                      aux_trigger_s: Sequence[float] = ()) -> PipelineOutput:
        """One frame of any channel and plane: other channels than the functional one are counted and
        skipped; a plane beyond the session's planes is counted and refused (`MalformedInput`)."""
        t0 = time.perf_counter_ns()
        stats, config = self.stats, self.config
        stats.frames_received += 1
        if header.channel != config.channel:
            stats.frames_other_channel += 1
            return PipelineOutput()
        if header.plane >= config.planes:
            stats.frames_other_plane += 1
            raise MalformedInput(f"frame {header.frame_index} is of plane {header.plane}, the session images "
                                 f"{config.planes} plane(s) (0-{config.planes - 1}; settings imaging.planes)")
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
        plane = self._planes[header.plane]
        if self.frame_stage is None:
            out = self._setup(plane, header, pixels, aux)
            if out.initialised:
                stats.processing_ns.append(time.perf_counter_ns() - t0)
            return out
        if pixels.shape != plane.shape:
            stats.frames_invalid += 1
            shape = plane.shape
            assert shape is not None
            where = f" of plane {header.plane}" if config.planes > 1 else ""
            raise MalformedInput(f"frame {header.frame_index}{where} is {pixels.shape[0]}x{pixels.shape[1]}, "
                                 f"the session's frames{where} are {shape[0]}x{shape[1]}")
        if config.alignment == "trigger" and (far := self.trial_stage.far_trial(header.trial)) is not None:
            stats.frames_invalid += 1
            raise MalformedInput(f"frame {header.frame_index} {far}")
        out = self._process(plane, header, pixels, aux)
        now = self.clock_ns()
        stats.processing_ns.append(time.perf_counter_ns() - t0)
        stats.latency_ns.append(now - header.t_ns)
        return out

    def _setup(self, plane: _Plane, header: FrameHeader, pixels: np.ndarray,
               aux: tuple[float, ...]) -> PipelineOutput:
        """A frame during setup: kept by its plane's start-up; once every plane has begun, initialise."""
        if plane.start is not None:  # this plane is ready, another one still waits: keep a bounded few
            shape = plane.start.shape
            if pixels.shape != shape:
                self.stats.frames_invalid += 1
                raise MalformedInput(f"frame {header.frame_index} of plane {header.plane} is "
                                     f"{pixels.shape[0]}x{pixels.shape[1]}, the plane's frames are "
                                     f"{shape[0]}x{shape[1]}")
            kept = plane.start.kept
            kept.append((header, np.array(pixels, copy=True), aux))
            if len(kept) > MAX_SETUP_SIZES * plane.startup.frames_needed():
                del kept[0]
                self.stats.frames_dropped_at_setup += 1
            return PipelineOutput()
        found = plane.startup.add(header, pixels, aux)
        if found is None:
            return PipelineOutput()
        plane.start = plane.startup.build(*found)
        if any(p.start is None for p in self._planes):
            return PipelineOutput()
        return self._initialise()

    def _initialise(self) -> PipelineOutput:
        """The stages from every plane's reference, ROIs and rate, then the kept frames processed in the
        order they came (by `seq` across planes)."""
        starts = [p.start for p in self._planes]
        assert all(s is not None for s in starts)
        planes: list[Start] = starts  # type: ignore[assignment]
        cfg = self.config
        first = planes[0]
        try:
            self.rois = RoiSet.concatenate([s.rois for s in planes])
        except ValueError as exc:
            raise PipelineError(f"planes of different frame sizes are not supported: {exc}") from None
        self.shape, self.reference = first.shape, first.reference
        self.plane_rois = [s.rois for s in planes]
        self.plane_references = [s.reference for s in planes]
        self.frame_rate_hz = float(np.median([s.frame_rate_hz for s in planes]))
        self.roi_set_id = roi_set_id(self.rois)
        begin = 0
        for plane, start in zip(self._planes, planes, strict=True):
            plane.stage = FrameStage(start.reference, start.rois, self.frame_rate_hz, cfg.online,
                                     cfg.registration)
            plane.columns = slice(begin, begin + start.rois.n)
            begin += start.rois.n
        self._row = np.zeros(begin, np.float32)
        self._deconvolved_row = np.zeros(begin, np.float32) if cfg.online.deconvolution.enabled else None
        self.frame_stage = self._planes[0].stage
        self.trial_stage.start(begin, DecoderConfig(cfg.online.decoder, bin_s=self.frame_period_s),
                               self.roi_set_id)
        self._offset_s = 0.5 * self.frame_period_s if cfg.frame_offset_s is None else cfg.frame_offset_s
        if cfg.alignment == "aux":
            self._aligner = ContinuousAligner(first_trial=1, frame_offset_s=self._offset_s, first_index=None)
        given = self.startup.given_reference is not None
        kept = [k for s in planes for k in s.kept]
        if len(planes) > 1:
            kept.sort(key=lambda k: k[0].seq)
        logger.info("online pipeline ready in %.2f s: %d plane(s) of %dx%d frames at %.2f Hz per plane, "
                    "%d ROIs (%s: %s per plane), reference %s", sum(s.seconds for s in planes), len(planes),
                    first.shape[0], first.shape[1], self.frame_rate_hz, begin, self.roi_set_id,
                    "/".join(str(s.rois.n) for s in planes), "given" if given else
                    f"from {min(len(first.kept), cfg.online.registration.reference_frames)} frames")
        for start in planes:
            start.kept.clear()
        self._ready_at = self.monotonic()
        out = PipelineOutput(initialised=True)
        for header, pixels, aux in kept:
            out.extend(self._process(self._planes[header.plane], header, pixels, aux))
        return out

    def _process(self, plane: _Plane, header: FrameHeader, pixels: np.ndarray,
                 aux: tuple[float, ...]) -> PipelineOutput:
        assert plane.stage is not None and self._row is not None
        shift, dff, deconvolved = plane.stage.process(pixels)
        self.stats.frames_processed += 1
        if len(self._planes) > 1:
            self._row[plane.columns] = dff
            dff = self._row.copy()
            if deconvolved is not None and self._deconvolved_row is not None:
                self._deconvolved_row[plane.columns] = deconvolved
                deconvolved = self._deconvolved_row.copy()
        out = PipelineOutput()
        for volume in self._volumes.add(PlaneFrame(header, shift, dff, aux, deconvolved)):
            self._volume(volume, out)
        return out

    def _volume(self, volume: Volume, out: PipelineOutput) -> None:
        """A closed volume: aligned to its trial (by its first plane frame), then placed."""
        complete = self._volumes.complete(volume)
        if not complete:
            self.stats.volumes_incomplete += 1
        header = volume.first.header
        if self._aligner is not None:
            aux = volume.aux
            if not self._aligner.edges and all(e > header.timestamp_s for e in aux):
                # Before the first aux trigger (frames in order): traces without a trial. The aligner counts
                # the frame in frames_before_first_trigger and does not place it.
                self.stats.frames_without_trial += len(volume.parts)
                for part in volume.parts:
                    out.add_trace(part.header, None, NO_TRIAL, part.shift, part.row, part.deconvolved)
            for placed in self._aligner.add_frame(header.frame_index, header.timestamp_s, aux,
                                                  (volume, complete)):
                self._place(placed.trial, placed.time_s, *placed.payload, out)
        else:
            timestamp = header.timestamp_s
            if timestamp < 0:  # no timestamps (ScanImage 3.x writes none): place by index
                timestamp = header.frame_index * self.frame_period_s
            trigger = header.trigger_timestamp_s if header.trigger_timestamp_s is not None else 0.0
            self._place(header.trial, timestamp - trigger + self._offset_s, volume, complete, out)

    def _place(self, trial: int, time_s: float, volume: Volume, complete: bool, out: PipelineOutput) -> None:
        for part in volume.parts:
            out.add_trace(part.header, time_s, trial, part.shift, part.row, part.deconvolved)
        stage = self.trial_stage
        last = volume.last
        activity = last.deconvolved if last.deconvolved is not None and self._decode_deconvolved else last.row
        if complete and stage.add_frame(trial, time_s, activity):
            loop = self.closed_loop
            if loop is not None and loop.wants_frame(trial, time_s):
                header = volume.last.header
                start_s = time_s - self._offset_s
                loop.on_frame(trial, time_s, activity, frame_index=header.frame_index,
                              frame_start_s=start_s, frame_end_s=start_s + self.frame_period_s,
                              t_ns=header.t_ns, cd=stage.cd_for_trial(trial), frames=stage.frames_of(trial))
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
        """Finalise trials whose frames did not come within `finalize_timeout_s` (call periodically).

        Not while frames are kept for setup, nor for `finalize_timeout_s` after it (every plane's reference
        and ROIs take seconds, during which frames queue up): those trials' frames are coming."""
        now, timeout = self.monotonic(), self.config.finalize_timeout_s
        if self.stats.frames_received and (self._ready_at is None or now - self._ready_at < timeout):
            return PipelineOutput()
        return self._decoded(self.trial_stage.poll(now, timeout))

    def flush(self) -> PipelineOutput:
        """Finalise every pending trial now (end of a replay or of the session); a setup that never
        completed begins on the frames received, when every plane has some."""
        out = PipelineOutput()
        if self.frame_stage is None:
            try:
                for plane in self._planes:
                    found = plane.startup.take_most() if plane.start is None else None
                    if found is not None:
                        plane.start = plane.startup.build(*found)
                if all(p.start is not None for p in self._planes):
                    out.extend(self._initialise())
            except Exception:
                logger.exception("could not initialise on the %d frames received", self.stats.frames_received)
        else:
            for volume in self._volumes.flush():
                self._volume(volume, out)
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
        stages = self.plane_stages
        return {"ready": self.ready, "n_rois": self.n_rois, "roi_set_id": self.roi_set_id,
                "planes": self.config.planes, "rois_per_plane": [r.n for r in self.plane_rois],
                "frame_rate_hz": round(self.frame_rate_hz, 4), "shape": self.shape,
                "decoders": self.trial_stage.decoder_status(), "accuracy": dict(self.accuracy),
                "stats": self.stats.to_dict(),
                "registration_bad_frames": sum(stage.bad_frames for stage in stages),
                "clipped_shifts": sum(stage.clipped_shifts for stage in stages),
                "closed_loop": self.closed_loop.stats() if self.closed_loop is not None else None}
