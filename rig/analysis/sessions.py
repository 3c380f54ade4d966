"""A subject's sessions as the analysis reads them: per trial what the rig ran and scored, and the online
module's traces binned on a go-cue-aligned grid, rebuilt from traces.f32 (or deconvolved.f32) and
trials.jsonl alone, so no result depends on a live process having run.

Each ROI is sampled when its plane is scanned; a trace row holds every ROI, the plane's own fresh and the
others' from their last frame, so a ROI's samples are the rows of its own plane (every row with one plane).
A bin's value is the activity at its centre, interpolated linearly between the ROI's two nearest samples
(frames come at the frame rate with jitter, so bins of one frame period would be empty or doubled now and
then); a bin beyond the trial's samples or across a gap of lost frames is NaN.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from online.alignment import TrialEpochs
from online.store import DECONVOLVED_FILE, TRACES_META_FILE, read_traces
from protocols.trial_record import TrialRecord
from rig.analysis.trials import TrialInfo
from rig.roi_matches import ROI_MATCHES_FILE
from rig.store import SESSION_FILE, TRIALS_FILE, DataError
from rig.summary import read_trials

logger = logging.getLogger(__name__)



@dataclass(frozen=True, eq=False)
class SessionActivity:
    """One session: its trials and their activity (trials x bins x ROIs, NaN where nothing was sampled)."""

    folder: Path
    trials: list[TrialInfo]
    activity: np.ndarray
    bin_s: float
    bin_centres_s: np.ndarray
    """Bin centres relative to the go cue (s)."""
    source: str
    """Which trace the activity is: deconvolved or dff."""
    roi_set_id: str = ""
    """Which ROIs the columns are (traces.json); sessions with the same id share their ROIs."""

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def n_rois(self) -> int:
        return int(self.activity.shape[2])

    def window(self, start_s: float, stop_s: float) -> np.ndarray:
        """Bins whose centre lies in [start, stop) relative to the go cue (trials x bins x ROIs)."""
        keep = (self.bin_centres_s >= start_s) & (self.bin_centres_s < stop_s)
        return self.activity[:, keep, :]


def is_session(folder: Path) -> bool:
    return (folder / SESSION_FILE).is_file() and (folder / TRIALS_FILE).is_file()


def session_folders(subject_dir: Path) -> list[Path]:
    """The subject's session folders, oldest first (their names are their start times)."""
    subject_dir = Path(subject_dir)
    if not subject_dir.is_dir():
        raise DataError(f"{subject_dir}: not a folder")
    folders = sorted(p for p in subject_dir.iterdir() if p.is_dir() and is_session(p))
    if not folders:
        raise DataError(f"{subject_dir}: no session folders (a session folder holds {SESSION_FILE} and "
                        f"{TRIALS_FILE})")
    return folders


def _trial_info(session: str, record: TrialRecord) -> TrialInfo | None:
    if record.context is None or record.side is None:
        return None
    closed_loop = record.closed_loop or {}
    states = record.bpod.states if record.bpod is not None else {}
    go_s = TrialEpochs.from_states(states).go_s if states else None
    return TrialInfo(session, record.trial, record.block or 0, record.block_label or record.context,
                     record.context, record.side, record.outcome, bool(closed_loop.get("gated", False)), go_s)


def read_trial_infos(folder: Path) -> list[TrialInfo]:
    """The session's trials with a context and a side (a bad line is a DataError naming it)."""
    infos = (_trial_info(folder.name, record) for record in read_trials(folder / TRIALS_FILE))
    return [info for info in infos if info is not None]


def roi_planes(meta: dict, n_rois: int, folder: Path) -> np.ndarray | None:
    """The plane of each ROI, when the session's traces.json says (`plane_rois`); None for one plane."""
    counts = meta.get("plane_rois")
    if not counts or len(counts) < 2:
        return None
    planes = np.repeat(np.arange(len(counts)), counts)
    if planes.size != n_rois:
        raise DataError(f"{folder / TRACES_META_FILE}: plane_rois add up to {planes.size} ROIs, the traces "
                        f"hold {n_rois}")
    return planes


MAX_GAP_FRAMES = 2.5
"""Samples further apart than this many frame periods (frames lost) are not interpolated between."""


def _on_grid(times: np.ndarray, values: np.ndarray, grid: np.ndarray, max_gap_s: float) -> np.ndarray:
    """Linear interpolation of one trial's samples (sorted times x ROIs) at the grid times; NaN outside
    the samples and across a gap."""
    out = np.full((grid.size, values.shape[1]), np.nan, dtype=np.float32)
    if times.size < 2:
        return out
    right = np.searchsorted(times, grid, side="left")
    exact = (right < times.size) & (times[np.minimum(right, times.size - 1)] == grid)
    inside = (right >= 1) & (right < times.size)
    left = np.clip(right - 1, 0, times.size - 1)
    right = np.clip(right, 0, times.size - 1)
    span = times[right] - times[left]
    usable = inside & (span <= max_gap_s) & (span > 0)
    w = np.where(usable, (grid - times[left]) / np.where(span > 0, span, 1.0), 0.0)[:, None]
    out[usable] = ((1 - w) * values[left] + w * values[right])[usable]
    out[exact] = values[right][exact]
    return out


def frame_rate_hz(folder: Path) -> float:
    """The per-plane frame rate a session's traces were taken at (traces.json)."""
    path = Path(folder) / TRACES_META_FILE
    try:
        rate = json.loads(path.read_text()).get("frame_rate_hz")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(rate, int | float) or rate <= 0:
        raise DataError(f"{path}: no frame_rate_hz; the bins cannot be laid out")
    return float(rate)


def load_session(folder: Path, *, source: str = "deconvolved", before_go_s: float = 4.2,
                 after_go_s: float = 2.0, bin_s: float | None = None) -> SessionActivity:
    """Trials and binned activity of one session folder. `source` deconvolved falls back to dF/F (with a
    warning) where the session has no deconvolved trace. `bin_s` (default: one frame period) lays several
    sessions, imaged at slightly different rates, on one grid."""
    folder = Path(folder)
    trials = read_trial_infos(folder)
    try:
        table = read_traces(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{folder}: no traces to analyse ({exc})") from None
    values, used = table.dff, "dff"
    if source == "deconvolved":
        if table.deconvolved is not None:
            values, used = table.deconvolved, "deconvolved"
        else:
            logger.warning("%s: no %s; analysing dF/F", folder.name, DECONVOLVED_FILE)
    elif source != "dff":
        raise ValueError(f"source must be 'deconvolved' or 'dff', got {source!r}")
    index = table.index[: len(values)]
    if bin_s is None:
        bin_s = 1.0 / frame_rate_hz(folder)
    elif bin_s <= 0:
        raise ValueError(f"bin_s must be positive, got {bin_s}")
    first = -int(np.ceil(before_go_s / bin_s))
    n_bins = int(np.ceil(after_go_s / bin_s)) - first
    centres = (np.arange(n_bins) + first + 0.5) * bin_s
    n_rois = values.shape[1]
    activity = np.full((len(trials), n_bins, n_rois), np.nan, dtype=np.float32)
    go = {t.trial: t.go_s for t in trials}
    row_of_trial = {t.trial: i for i, t in enumerate(trials)}
    trial_col = index["trial"].astype(np.int64)
    rel = index["time_in_trial_s"] - np.array([go.get(int(k)) or np.nan for k in trial_col], dtype=float)
    rows = np.array([row_of_trial.get(int(k), -1) for k in trial_col], dtype=np.int64)
    ok = (rows >= 0) & np.isfinite(rel)
    planes = roi_planes(table.meta, n_rois, folder)
    groups: Iterator[tuple[np.ndarray, np.ndarray]]
    if planes is None:
        groups = iter([(ok, np.arange(n_rois))])
    else:
        groups = ((ok & (index["plane"] == p), np.flatnonzero(planes == p)) for p in np.unique(planes))
    for rows_mask, cols in groups:
        picked = np.flatnonzero(rows_mask)
        order = np.lexsort((rel[picked], rows[picked]))
        picked = picked[order]
        bounds = np.flatnonzero(np.diff(rows[picked])) + 1
        for chunk in np.split(picked, bounds):
            if chunk.size:
                activity[rows[chunk[0]], :, cols] = _on_grid(rel[chunk], values[chunk][:, cols], centres,
                                                             max_gap_s=MAX_GAP_FRAMES * bin_s).T
    return SessionActivity(folder, trials, activity, bin_s, centres, used,
                           str(table.meta.get("roi_set_id") or ""))


def read_roi_matches(folder: Path) -> list[tuple[str, str, list[tuple[int, int]]]]:
    """The session's ROI matches to earlier sessions (roi_matches.json, pairs [earlier ROI, this ROI]) as
    (this session, earlier session, [(this ROI, earlier ROI), ...]); an earlier session that could not be
    compared (an entry with an error) has none."""
    path = Path(folder) / ROI_MATCHES_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        return [(Path(folder).name, str(m["session"]),
                 [(int(this), int(earlier)) for earlier, this in m["pairs"]])
                for m in data["matches"] if "error" not in m]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a ROI match file ({exc})") from None


def load_subject(subject_dir: Path, sessions: Sequence[Path] | None = None,
                 **options) -> list[SessionActivity]:
    return [load_session(folder, **options) for folder in (sessions or session_folders(subject_dir))]
