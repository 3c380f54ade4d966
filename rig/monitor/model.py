"""What the monitor shows, as plain data updated from messages: no Qt, no sockets, testable alone.

`MonitorModel.apply(message)` takes any decoded message of the rig's event stream, the display frame
stream or the online module's results and updates one of two parts:

- `BehaviourModel`: one `TrialRow` per finished trial (from the live `trial` events, or read back from
  the session's trials.jsonl when the monitor (re)opens or a live event was dropped), Perf100 per context
  through the session, context switches, per-side performance, the session status, the Bpod state, the
  last trial's timeline (timeline.py) and the session's end.
- `ImagingModel`: the newest display frame of the shown plane with its registration shift and display
  levels; per plane the ROI snapshot, a ring buffer of every ROI's dF/F for the last seconds, the PSTHs
  (psth.py) and the registration history; decoder results and health. Messages without a `plane` field
  are plane 0.

Each part counts `version`s per panel so the window redraws only what changed since its last tick.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from online.messages import DecoderResult, HealthReport, RoiSnapshot, TraceFrame
from online.store import JsonLinesError, read_jsonl
from online.wire import (
    TOPIC_DECODER,
    TOPIC_FRAME,
    TOPIC_HEALTH,
    TOPIC_ROIS,
    TOPIC_STATE,
    TOPIC_TRACES,
    TOPIC_TRIAL,
    Event,
    FrameHeader,
    Message,
    WireError,
)
from protocols.directional_licking import DELAY_EPOCH, GO_CUE_EPOCH, SAMPLE_EPOCH
from protocols.outcome import PERF_WINDOW, fraction_correct
from protocols.settings import WiringSettings
from protocols.trial_record import TrialRecord, TrialRecordError
from rig.monitor.psth import PsthAccumulator, TrialAlignment
from rig.monitor.timeline import TrialTimeline, trial_timeline
from rig.store import TRIALS_FILE

log = logging.getLogger(__name__)

TRACE_SECONDS = 30.0
"""How much of every ROI's dF/F the trace panel keeps and shows."""
LEVELS_EVERY = 5
"""Display levels are re-estimated on every 5th frame (a percentile over a subsampled frame)."""
LEVELS_SMOOTHING = 0.3
"""Weight of a new level estimate in the running levels (so the image does not flicker)."""
MAX_DECODER_RESULTS = 5000
OFFLINE_AFTER_S = 5.0
"""A stream with no message for this long counts as not running."""


@dataclass(frozen=True)
class OnlineWatch:
    """What the session says about its online module's restarts (status["children"]["online"])."""

    restarts: int
    gaps: int
    frames_lost: int
    down_since: str | None
    """Host time the module was found dead, while it is not back."""
    gave_up: bool


def online_watch(status: Mapping[str, Any]) -> OnlineWatch | None:
    """The session status's record of the online module's deaths and restarts; None when the session does
    not run one (or says nothing usable: status messages come from another process)."""
    children = status.get("children")
    online = children.get("online") if isinstance(children, Mapping) else None
    if not isinstance(online, Mapping):
        return None

    def count(key: str) -> int:
        value = online.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    down = online.get("down_since")
    return OnlineWatch(count("restarts"), count("gaps"), count("frames_lost"),
                       down if isinstance(down, str) else None, online.get("gave_up") is True)


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# ----------------------------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class TrialRow:
    """One finished trial as the behaviour panels need it."""

    trial: int
    context: str
    side: str | None
    outcome: str
    early_lick: bool
    free_drop: bool
    licked_side: str | None
    reaction_time_s: float | None
    go_cue_s: float | None  # from trial start
    licks_left: tuple[float, ...]  # from trial start
    licks_right: tuple[float, ...]
    stage: Mapping[str, Any] = field(default_factory=dict)
    training_events: tuple[Mapping[str, Any], ...] = ()
    trial_start_s: float | None = None  # Bpod session clock
    trial_end_s: float | None = None
    sample_s: float | None = None  # from trial start
    delay_s: float | None = None
    reward_ul: float = 0.0
    block_label: str | None = None  # the block the trial belonged to, when the session runs blocks
    timeline: TrialTimeline | None = field(default=None, compare=False)  # its states and input lines

    @classmethod
    def from_record(cls, record: TrialRecord, wiring: WiringSettings) -> TrialRow:
        """From a trial record (a trials.jsonl line, or the published `trial` event's `record`)."""
        score = record.score
        licks = record.licks(wiring)
        return cls(
            trial=record.trial, context=record.context or "", side=record.side, outcome=record.outcome,
            early_lick=score.early_lick if score else False, free_drop=record.free_drop,
            licked_side=score.licked_side if score else None,
            reaction_time_s=_float_or_none(score.reaction_time_s) if score else None,
            go_cue_s=_float_or_none(record.entry_s(GO_CUE_EPOCH)),
            licks_left=tuple(licks["left"]), licks_right=tuple(licks["right"]),
            stage=dict(record.stage), training_events=tuple(record.training_events),
            trial_start_s=_float_or_none(record.trial_start_s),
            trial_end_s=_float_or_none(record.trial_end_s),
            sample_s=_float_or_none(record.entry_s(SAMPLE_EPOCH)),
            delay_s=_float_or_none(record.entry_s(DELAY_EPOCH)),
            reward_ul=_float_or_none(record.reward_ul) or 0.0,
            block_label=_text_or_none(getattr(record, "block_label", None)),
            timeline=trial_timeline(record),
        )

    def alignment(self) -> TrialAlignment:
        """Where the trial's sample and go cue were, and its condition (block, or context), for PSTHs."""
        return TrialAlignment(self.trial, self.block_label or self.context, self.side, self.outcome,
                              self.sample_s, self.delay_s, self.go_cue_s)

    def licks_from_go(self, side: str) -> np.ndarray:
        """Lick times of one side relative to the go cue (empty when the trial had no go cue)."""
        if self.go_cue_s is None:
            return np.empty(0)
        licks = self.licks_left if side == "left" else self.licks_right
        return np.asarray(licks, dtype=float) - self.go_cue_s


def read_trial_rows(folder: Path, wiring: WiringSettings) -> list[TrialRow]:
    """The trials written so far to `folder`/trials.jsonl (none if there is no such file yet)."""
    path = Path(folder) / TRIALS_FILE
    rows: list[TrialRow] = []
    if not path.is_file():
        return rows
    try:
        for record in read_jsonl(path):
            try:
                rows.append(TrialRow.from_record(TrialRecord.from_json(record), wiring))
            except TrialRecordError as exc:
                log.warning("%s: skipped a line: %s", path, exc)
    except (OSError, JsonLinesError) as exc:
        log.warning("cannot catch up from %s: %s", path, exc)
    return rows


class BehaviourModel:
    """Trials of the running session, Perf100 through it, context switches and the session status."""

    def __init__(self, wiring: WiringSettings | None = None) -> None:
        self.wiring = wiring or WiringSettings()
        self.rows: dict[int, TrialRow] = {}
        self.perf: dict[str, tuple[list[int], list[float]]] = {}  # context -> (trial numbers, Perf100)
        self.switches: list[tuple[int, str]] = []  # (first trial of the new context, its name)
        self.status: dict[str, Any] = {}
        self.status_time: float | None = None  # monotonic time of the last status (message or reply)
        self.event_time: float | None = None  # monotonic time of the last trial or state event
        self.state: tuple[int, str] | None = None  # (trial, Bpod state) from the newest state event
        self.session_folder: Path | None = None
        self.caught_up_from: Path | None = None
        self.live_timeline: TrialTimeline | None = None  # the newest live trial, with its outputs
        self.ended_at: datetime | None = None  # host time the session's end event came
        self.version = 0  # any change of the trial rows (rasters, performance)
        self.status_version = 0  # status, state, stage text
        self._windows: dict[str, deque[str]] = {}
        self._last_trial = 0
        self._last_context: str | None = None

    @property
    def trials(self) -> list[TrialRow]:
        return [self.rows[n] for n in sorted(self.rows)]

    @property
    def last_row(self) -> TrialRow | None:
        return self.rows[max(self.rows)] if self.rows else None

    @property
    def timeline(self) -> TrialTimeline | None:
        """The last trial's timeline: the live one (with the outputs each state set) when it is the last."""
        last = self.last_row
        live = self.live_timeline
        if live is not None and (last is None or live.trial >= last.trial):
            return live
        return last.timeline if last is not None else None

    def add_record(self, record: Mapping[str, Any], outputs: Mapping[str, Any] | None = None) -> bool:
        """Add one published trial record (and the outputs its states set, as the session sends them);
        False when that trial is already shown or it is not a trial."""
        try:
            parsed = TrialRecord.from_json(record)
            row = TrialRow.from_record(parsed, self.wiring)
        except TrialRecordError as exc:
            log.warning("skipped a trial record: %s", exc)
            return False
        if outputs is not None:
            clean = {str(k): v for k, v in outputs.items() if isinstance(v, Mapping)}
            self.live_timeline = trial_timeline(parsed, clean)
        return self.add_rows([row]) > 0

    def end_session(self, status: Mapping[str, Any], at: datetime | None = None) -> None:
        """The session said it ended: the header stops its clock, the monitor saves the summary figure."""
        self.set_status(status)
        self.ended_at = datetime.now() if at is None else at
        self.status_version += 1

    def add_rows(self, rows: Iterable[TrialRow]) -> int:
        added = [row for row in rows if row.trial not in self.rows]
        if not added:
            return 0
        in_order = min(r.trial for r in added) > self._last_trial
        for row in sorted(added, key=lambda r: r.trial):
            self.rows[row.trial] = row
            if in_order:
                self._extend_performance(row)
        if not in_order:
            self._rebuild_performance()
        self.version += 1
        return len(added)

    def missing_before(self, trial: int) -> bool:
        """Whether any trial before `trial` has not been seen (the monitor joined late, or dropped one)."""
        return len([n for n in self.rows if n < trial]) < trial - 1

    def catch_up(self, folder: Path) -> int:
        """Add the trials of `folder`/trials.jsonl the monitor has not seen; returns how many."""
        self.session_folder = self.caught_up_from = Path(folder)
        added = self.add_rows(read_trial_rows(folder, self.wiring))
        if added:
            log.info("caught up %d trial(s) from %s", added, folder)
        return added

    def set_status(self, status: Mapping[str, Any], now: float | None = None) -> None:
        if not status:
            return
        self.status = dict(status)
        self.status_time = time.monotonic() if now is None else now
        folder = status.get("session")
        if folder:
            if self.session_folder is not None and Path(folder) != self.session_folder:
                self.clear_trials()  # a new session on the same rig: start over
            self.session_folder = Path(folder)
        self.status_version += 1

    def clear_trials(self) -> None:
        self.rows = {}
        self.caught_up_from = None
        self.live_timeline, self.ended_at = None, None
        self._rebuild_performance()
        self.version += 1

    def set_state(self, trial: int, state: str, now: float | None = None) -> None:
        self.state = (trial, state)
        self.event_time = time.monotonic() if now is None else now
        self.status_version += 1

    # ---- performance

    def _extend_performance(self, row: TrialRow) -> None:
        window = self._windows.setdefault(row.context, deque(maxlen=PERF_WINDOW))
        window.append(row.outcome)
        if self._last_context is not None and row.context != self._last_context:
            self.switches.append((row.trial, row.context))
        self._last_context = row.context
        self._last_trial = row.trial
        perf = fraction_correct(window)
        if perf is not None:
            trials, values = self.perf.setdefault(row.context, ([], []))
            trials.append(row.trial)
            values.append(perf)

    def _rebuild_performance(self) -> None:
        self.perf, self.switches, self._windows = {}, [], {}
        self._last_trial, self._last_context = 0, None
        for row in self.trials:
            self._extend_performance(row)

    def perf100(self, context: str | None) -> float | None:
        """The newest Perf100 of `context` in this session: the last point of its curve. The one Perf100
        the monitor shows (curve and stage line alike); None before an answered trial."""
        values = self.perf.get(context or "", ([], []))[1]
        return values[-1] if values else None

    def side_performance(self, context: str | None = None) -> dict[str, float | None]:
        """Perf100 per side (left, right) of one context (default: the newest trial's)."""
        last = self.last_row
        context = context or (last.context if last else None)
        result: dict[str, float | None] = {}
        for side in ("left", "right"):
            outcomes = [r.outcome for r in self.trials if r.side == side and r.context == context]
            result[side] = fraction_correct(outcomes[-PERF_WINDOW:])
        return result

    def outcome_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row.outcome] = counts.get(row.outcome, 0) + 1
        return counts


# ----------------------------------------------------------------------------------------------- imaging


class TraceBuffer:
    """Every ROI's dF/F for the last `capacity` frames, as a ring; times on the Bpod session clock (s)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(2, int(capacity))
        self.n_rois = 0
        self._times = np.zeros(self.capacity)
        self._dff = np.zeros((self.capacity, 0), dtype=np.float32)
        self._count = 0  # samples ever written since the last reset
        self.version = 0

    def reset(self, n_rois: int) -> None:
        self.n_rois = n_rois
        self._dff = np.zeros((self.capacity, n_rois), dtype=np.float32)
        self._count = 0
        self.version += 1

    def append(self, t_s: float, dff: np.ndarray) -> None:
        if dff.shape != (self.n_rois,):
            self.reset(int(dff.shape[0]))
        i = self._count % self.capacity
        self._times[i] = t_s
        self._dff[i] = dff
        self._count += 1
        self.version += 1

    def __len__(self) -> int:
        return min(self._count, self.capacity)

    @property
    def latest_time(self) -> float | None:
        return None if self._count == 0 else float(self._times[(self._count - 1) % self.capacity])

    def window(self, seconds: float) -> tuple[np.ndarray, np.ndarray]:
        """(times relative to the newest sample, dff (n_samples, n_rois)), oldest first, newest at 0."""
        n = len(self)
        if n == 0:
            return np.empty(0), np.empty((0, self.n_rois), dtype=np.float32)
        end = self._count % self.capacity
        if self._count <= self.capacity:
            times, dff = self._times[:n], self._dff[:n]
        else:
            order = np.r_[end : self.capacity, 0:end]
            times, dff = self._times[order], self._dff[order]
        rel = times - times[-1]
        keep = rel > -seconds
        return rel[keep], dff[keep]


class LevelTracker:
    """Display levels from a running percentile of the frames, smoothed; never rescanned every frame."""

    def __init__(self, low_pct: float = 1.0, high_pct: float = 99.7, every: int = LEVELS_EVERY) -> None:
        self.low_pct, self.high_pct, self.every = low_pct, high_pct, every
        self.levels: tuple[float, float] | None = None
        self._n = 0

    def update(self, pixels: np.ndarray) -> tuple[float, float]:
        if self.levels is None or self._n % self.every == 0:
            sample = pixels[::4, ::4]
            low, high = (float(v) for v in np.percentile(sample, [self.low_pct, self.high_pct]))
            high = max(high, low + 1.0)
            if self.levels is None:
                self.levels = (low, high)
            else:
                a = LEVELS_SMOOTHING
                self.levels = (self.levels[0] * (1 - a) + low * a, self.levels[1] * (1 - a) + high * a)
        self._n += 1
        return self.levels


class RegistrationHistory:
    """The registration of one plane over the session: (dy, dx) shift and correlation with the reference,
    averaged over every `every` frames into a ring of `capacity` points (at 30 Hz and every 10 frames,
    the last 55 minutes), so drift is seen long before it ruins the session."""

    def __init__(self, every: int = 10, capacity: int = 10_000) -> None:
        self.every, self.capacity = every, capacity
        self._points = np.zeros((capacity, 4))  # time (session clock, s), dy, dx, correlation
        self._count = 0
        self._partial = np.zeros(4)
        self._n = 0
        self.version = 0

    def add(self, t_s: float, dy: float, dx: float, correlation: float) -> None:
        self._partial += (t_s, dy, dx, correlation)
        self._n += 1
        if self._n >= self.every:
            self._points[self._count % self.capacity] = self._partial / self._n
            self._count += 1
            self._partial[:] = 0
            self._n = 0
            self.version += 1

    def __len__(self) -> int:
        return min(self._count, self.capacity)

    def points(self) -> np.ndarray:
        """(n, 4) time, dy, dx, correlation, oldest first."""
        n = len(self)
        if self._count <= self.capacity:
            return self._points[:n].copy()
        end = self._count % self.capacity
        return np.concatenate([self._points[end:], self._points[:end]])


class PlaneData:
    """What the monitor keeps of one imaging plane: its ROIs, traces, PSTHs and registration."""

    def __init__(self, capacity: int) -> None:
        self.traces = TraceBuffer(capacity)
        self.rois: RoiSnapshot | None = None
        self.psth = PsthAccumulator()
        self.deconvolved_psth = PsthAccumulator()
        self.registration = RegistrationHistory()
        self.last_trial: int | None = None  # the trial of the newest traces


class ImagingModel:
    """The newest frame of the shown plane, and per plane its ROIs, traces, PSTHs and registration;
    decoder results and the online module's health."""

    def __init__(self, frame_rate_hz: float = 30.0, trace_seconds: float = TRACE_SECONDS) -> None:
        self.trace_seconds = trace_seconds
        self.frame_rate_hz = frame_rate_hz
        self.frame: np.ndarray | None = None
        self.frame_header: FrameHeader | None = None
        self.frame_shift: tuple[float, float] = (0.0, 0.0)  # (dy, dx) that aligns the frame
        self.levels: tuple[float, float] | None = None
        self.frame_version = 0
        self.shift_version = 0
        self._levels = LevelTracker()
        self._shifts: OrderedDict[tuple[int, int], tuple[float, float]] = OrderedDict()
        self.latest_shift: tuple[float, float] = (0.0, 0.0)
        self.latest_trace: TraceFrame | None = None
        self._capacity = int(math.ceil(trace_seconds * frame_rate_hz * 1.25)) + 8
        self.planes: dict[int, PlaneData] = {0: PlaneData(self._capacity)}
        self.plane = 0
        self.plane_version = 0  # the shown plane changed, or a new plane appeared
        self.rois_version = 0
        self.selected: int | None = None
        self.selection_version = 0
        self.decoder: list[DecoderResult] = []
        self.accuracy: dict[str, tuple[list[int], list[float]]] = {}
        self.similarity: dict[str, float] = {}
        self.decoder_version = 0
        self.health: HealthReport | None = None
        self.health_time: float | None = None
        self.online_time: float | None = None  # monotonic time of the newest online-module message
        self.frame_time: float | None = None

    # ---- the shown plane

    def _plane(self, plane: int) -> PlaneData:
        data = self.planes.get(plane)
        if data is None:
            data = self.planes[plane] = PlaneData(self._capacity)
            self.plane_version += 1
        return data

    @property
    def shown(self) -> PlaneData:
        return self.planes[self.plane]

    @property
    def traces(self) -> TraceBuffer:
        return self.shown.traces

    @property
    def rois(self) -> RoiSnapshot | None:
        return self.shown.rois

    def select_plane(self, plane: int) -> None:
        """Show another plane: its frames, ROIs, traces, PSTHs and registration."""
        if plane == self.plane or plane not in self.planes:
            return
        self.plane = plane
        self.frame, self.frame_header, self.levels = None, None, None
        self._levels = LevelTracker()
        self.plane_version += 1
        self.rois_version += 1
        self.frame_version += 1
        self.select(None)

    # ---- updates

    def add_frame(self, header: FrameHeader, pixels: np.ndarray, now: float) -> None:
        self._plane(header.plane)
        self.frame_time = now
        if header.plane != self.plane:
            return  # the display shows one plane; the others are counted as arriving
        self.frame_header = header
        self.frame = pixels
        self.frame_shift = self._shifts.get((header.trial, header.frame_index), self.latest_shift)
        self.levels = self._levels.update(pixels)
        self.frame_version += 1

    def add_traces(self, trace: TraceFrame, t_s: float, now: float, plane: int = 0,
                   deconvolved: np.ndarray | None = None) -> None:
        data = self._plane(plane)
        data.last_trial = trace.trial
        dff = np.asarray(trace.dff, dtype=np.float32)
        data.traces.append(t_s, dff)
        data.registration.add(t_s, trace.shift_dy, trace.shift_dx, trace.correlation)
        data.psth.add(trace.trial, trace.time_in_trial_s, dff)
        if deconvolved is not None and deconvolved.shape == dff.shape:
            data.deconvolved_psth.add(trace.trial, trace.time_in_trial_s, np.asarray(deconvolved, np.float32))
        self.online_time = now
        if plane != self.plane:
            return
        self.latest_trace = trace
        self.latest_shift = (trace.shift_dy, trace.shift_dx)
        self._shifts[(trace.trial, trace.frame_index)] = self.latest_shift
        while len(self._shifts) > 512:
            self._shifts.popitem(last=False)
        header = self.frame_header
        if header is not None and (header.trial, header.frame_index) == (trace.trial, trace.frame_index):
            self.frame_shift = self.latest_shift  # the shown frame's own shift, computed after it arrived
            self.shift_version += 1
        if self.selected is not None and self.selected >= self.traces.n_rois:
            self.select(None)

    def trial_done(self, row: TrialRow, plane: int | None = None, force: bool = False) -> None:
        """A trial's record is in: its samples go into the PSTHs of every plane whose traces have moved on
        to a later trial (a plane still behind bins it when its traces move on: `plane`), or of every
        plane (`force`, at the session's end)."""
        alignment = row.alignment()
        for number, data in self.planes.items():
            moved_on = data.last_trial is not None and data.last_trial > row.trial
            if force or number == plane or (plane is None and moved_on):
                data.psth.finish(alignment)
                data.deconvolved_psth.finish(alignment)

    def set_rois(self, rois: RoiSnapshot, now: float, plane: int = 0) -> None:
        data = self._plane(plane)
        old = data.rois
        same = (
            old is not None
            and rois.roi_set_id == old.roi_set_id
            and rois.n_rois == old.n_rois
            and rois.roi_set_id != ""
        )
        data.rois = rois
        self.online_time = now
        if not same and plane == self.plane:
            self.rois_version += 1
            if self.selected is not None and self.selected >= rois.n_rois:
                self.select(None)

    def add_decoder(self, result: DecoderResult, now: float) -> None:
        self.decoder.append(result)
        if len(self.decoder) > MAX_DECODER_RESULTS:
            del self.decoder[: len(self.decoder) - MAX_DECODER_RESULTS]
        for context, accuracy in result.accuracy.items():
            value = _float_or_none(accuracy)
            if value is not None:
                trials, values = self.accuracy.setdefault(context, ([], []))
                trials.append(result.trial)
                values.append(value)
        self.similarity = {
            k: float(v) for k, v in result.cd_similarity.items() if _float_or_none(v) is not None
        }
        self.online_time = now
        self.decoder_version += 1

    def set_health(self, health: HealthReport, now: float) -> None:
        self.health = health
        self.health_time = now
        self.online_time = now

    def select(self, roi: int | None) -> None:
        if roi is not None and roi < 0:
            roi = None
        if roi != self.selected:
            self.selected = roi
            self.selection_version += 1

    # ---- questions the panels ask

    def online_running(self, now: float) -> bool:
        return self.online_time is not None and now - self.online_time < OFFLINE_AFTER_S

    def frames_arriving(self, now: float) -> bool:
        return self.frame_time is not None and now - self.frame_time < OFFLINE_AFTER_S

    def nearest_roi(self, y: float, x: float, max_distance_px: float = 15.0) -> int | None:
        """The ROI whose centroid is nearest to (y, x) in frame pixels, if within `max_distance_px`."""
        if self.rois is None or self.rois.n_rois == 0:
            return None
        d2 = ((self.rois.centroids - np.array([y, x], dtype=np.float32)) ** 2).sum(axis=1)
        best = int(np.argmin(d2))
        return best if d2[best] <= max_distance_px**2 else None


# ----------------------------------------------------------------------------------------------- both


def _plane_of(message: Message) -> int:
    """The imaging plane a message is about (its `plane` field; 0 for a single-plane module)."""
    plane = message.fields.get("plane", 0)
    return plane if isinstance(plane, int) and not isinstance(plane, bool) and 0 <= plane < 64 else 0


class MonitorModel:
    """Everything the monitor shows; `apply` routes one decoded message to its part."""

    def __init__(
        self,
        wiring: WiringSettings | None = None,
        frame_rate_hz: float = 30.0,
        trace_seconds: float = TRACE_SECONDS,
    ) -> None:
        self.behaviour = BehaviourModel(wiring)
        self.imaging = ImagingModel(frame_rate_hz, trace_seconds)
        self.malformed = 0
        self.applied: dict[bytes, int] = {}

    def apply(self, message: Message, now: float | None = None) -> None:
        """Update from one message; a malformed one is counted and logged, never raised."""
        now = time.monotonic() if now is None else now
        try:
            self._apply(message, now)
        except (WireError, KeyError, TypeError, ValueError) as exc:
            self.malformed += 1
            log.warning("skipped a %r message: %s", message.topic, exc)
            return
        self.applied[message.topic] = self.applied.get(message.topic, 0) + 1

    def _trace_time(self, trace: TraceFrame) -> float:
        """Where a frame's traces go on the time axis: the Bpod session clock (trial start + time in the
        trial), so that a session running faster than real time, or a backlog, is drawn at its own pace.
        The running trial starts where the previous one ended (trials are queued with no dead time)."""
        rows = self.behaviour.rows
        start = None
        if trace.trial in rows:
            start = rows[trace.trial].trial_start_s
        elif trace.trial - 1 in rows:
            start = rows[trace.trial - 1].trial_end_s
        last = self.imaging.traces.latest_time
        if start is None or trace.time_in_trial_s is None:
            return (last if last is not None else 0.0) + 1.0 / self.imaging.frame_rate_hz
        return start + trace.time_in_trial_s

    def _apply(self, message: Message, now: float) -> None:
        topic = message.topic
        if topic == TOPIC_TRIAL:
            data = Event.from_message(message).data
            if isinstance(data.get("status"), Mapping):
                self.behaviour.set_status(data["status"], now)
            self.behaviour.event_time = now
            if data.get("kind") == "end" and isinstance(data.get("record"), Mapping):
                outputs = data.get("outputs")
                self.behaviour.add_record(data["record"], outputs if isinstance(outputs, Mapping) else None)
                row = self.behaviour.rows.get(data["record"].get("trial"))  # also when caught up before
                if row is not None:
                    self.imaging.trial_done(row)
            elif data.get("kind") == "session-end":
                status = data.get("status")
                self.behaviour.end_session(status if isinstance(status, Mapping) else {})
                if self.behaviour.last_row is not None:  # its traces will not move on to a later trial
                    self.imaging.trial_done(self.behaviour.last_row, force=True)
        elif topic == TOPIC_STATE:
            data = Event.from_message(message).data
            self.behaviour.set_state(int(data["trial"]), str(data["state"]), now)
        elif topic == TOPIC_FRAME:
            header = FrameHeader.from_message(message)
            self.imaging.add_frame(header, message.arrays[0], now)
        elif topic == TOPIC_TRACES:
            # dF/F first; the deconvolved activity beside it when the module publishes it
            deconvolved = message.arrays[1] if len(message.arrays) > 1 else None
            trace = TraceFrame.from_message(dataclasses.replace(message, arrays=message.arrays[:1]))
            plane = _plane_of(message)
            before = self.imaging.planes[plane].last_trial if plane in self.imaging.planes else None
            self.imaging.add_traces(trace, self._trace_time(trace), now, plane=plane, deconvolved=deconvolved)
            if before is not None and before != trace.trial and before in self.behaviour.rows:
                self.imaging.trial_done(self.behaviour.rows[before], plane)  # traces behind the trials
        elif topic == TOPIC_ROIS:
            self.imaging.set_rois(RoiSnapshot.from_message(message), now, plane=_plane_of(message))
        elif topic == TOPIC_DECODER:
            self.imaging.add_decoder(DecoderResult.from_message(message), now)
        elif topic == TOPIC_HEALTH:
            kind = (message.fields.get("data") or {}).get("kind", "online")
            if kind == "online":
                self.imaging.set_health(HealthReport.from_message(message), now)
