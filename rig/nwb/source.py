"""What a session folder holds, read for export: every part but the trial records is optional.

The rig writes `session.json`, `settings.yaml` and `trials.jsonl`; the online module, when it ran, writes
ROIs, traces and decoder outputs (online/store.py). Readers here accept a folder with any of those parts
missing, and with one plane or several: one ROI set for all planes, one plane after another, at the top of
the folder (the planes told apart by traces.json `plane_rois`), or a `plane<k>/` folder per plane with its
own ROIs and traces. An export never depends on which optional outputs a session produced.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from online.rois import RoiSet
from online.store import (
    DECISIONS_FILE,
    DECODER_FILE,
    INDEX_DTYPE,
    REFERENCE_FILE,
    ROIS_FILE,
    TRACES_FILE,
    TRACES_FORMAT,
    TRACES_INDEX_FILE,
    TRACES_META_FILE,
    TraceTable,
    load_reference,
    read_jsonl,
)
from protocols.trial_record import TrialRecord
from rig.errors import UserError
from rig.roi_matches import ROI_MATCHES_FILE
from rig.settings import Settings, load_settings
from rig.store import SESSION_FILE, SETTINGS_FILE, SUBJECT_FILE, TRIALS_FILE, DataError, read_json

log = logging.getLogger(__name__)

DECONVOLVED_FILE = "deconvolved.f32"
"""Deconvolved activity beside traces.f32: the same rows (one per index record), float32."""
NEUROPIL_FILE = "neuropil.f32"
FLUORESCENCE_FILE = "fluorescence.f32"
IMAGING_FOLDER = "imaging"
_PLANE_DIR = re.compile(r"plane(\d+)")


@dataclass(frozen=True)
class PlaneRois:
    """One imaging plane's ROIs: which ROIs of a set (and columns of its traces) are this plane's, and the
    plane's mean (reference) image."""

    plane: int
    rois: RoiSet
    indices: np.ndarray
    """ROIs of `rois` on this plane, which are also their columns in the traces beside it."""
    reference: np.ndarray | None
    folder: Path
    """Where the ROI file and its traces are (the session folder, or the plane's own folder)."""


@dataclass(frozen=True)
class TraceSet:
    """The per-frame traces of one trace folder: `dff` rows belong to `index` records (online/store.py);
    `extra` holds the other per-frame arrays present beside it (deconvolved, neuropil, fluorescence)."""

    table: TraceTable
    extra: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionFolder:
    """A session as read from its folder."""

    folder: Path
    info: dict[str, Any]
    settings: Settings
    """The settings snapshot the session ran with (settings.yaml and rig.yaml of the folder)."""
    trials: list[TrialRecord]
    subject_record: dict[str, Any]
    planes: list[PlaneRois]
    traces: dict[Path, TraceSet]
    """Traces by the folder they are in (the session folder, or a plane's own)."""
    decoder: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    coding_directions: list[dict[str, Any]]
    roi_matches: dict[str, Any] | None
    tiff_files: list[Path]

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def subject(self) -> str:
        return str(self.info.get("subject") or self.folder.parent.name)

    @property
    def simulated(self) -> bool:
        bpod = self.info.get("bpod")
        return bool(bpod.get("simulated")) if isinstance(bpod, dict) else False


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [line for line in read_jsonl(path) if isinstance(line, dict)]


def _map_traces(folder: Path) -> TraceTable:
    """traces.f32 + traces_index.bin as `read_traces` gives them, the traces mapped rather than read: an
    export takes each plane's rows and columns only."""
    meta = json.loads((folder / TRACES_META_FILE).read_text())
    if meta.get("format") != TRACES_FORMAT:
        raise DataError(f"{folder / TRACES_META_FILE}: format {meta.get('format')!r}, expected "
                        f"{TRACES_FORMAT!r}")
    n_rois = int(meta["n_rois"])
    index_path, traces_path = folder / TRACES_INDEX_FILE, folder / TRACES_FILE
    rows = index_path.stat().st_size // INDEX_DTYPE.itemsize if index_path.is_file() else 0
    stored = traces_path.stat().st_size // (4 * n_rois) if traces_path.is_file() else 0
    n = min(rows, stored)
    index = np.fromfile(index_path, dtype=INDEX_DTYPE, count=n) if n else np.zeros(0, INDEX_DTYPE)
    dff = np.memmap(traces_path, dtype="<f4", mode="r", shape=(n, n_rois)) if n else \
        np.zeros((0, n_rois), np.float32)
    return TraceTable(index, dff, meta)


def _extra_arrays(folder: Path, table: TraceTable) -> dict[str, np.ndarray]:
    """Per-frame float32 arrays beside traces.f32 with the same row layout (mapped), NaN-padded to the
    index's length when one stopped short."""
    n_rois = table.dff.shape[1] if table.dff.ndim == 2 else 0
    out: dict[str, np.ndarray] = {}
    for name, file in (("deconvolved", DECONVOLVED_FILE), ("neuropil", NEUROPIL_FILE),
                       ("fluorescence", FLUORESCENCE_FILE)):
        path = folder / file
        if not path.is_file() or n_rois == 0 or len(table) == 0:
            continue
        n = min(path.stat().st_size // (4 * n_rois), len(table))
        data = np.memmap(path, dtype="<f4", mode="r", shape=(n, n_rois)) if n else np.zeros((0, n_rois))
        if n < len(table):
            log.warning("%s has %d of %d frames; the missing ones are NaN", path, n, len(table))
            data = np.concatenate([data, np.full((len(table) - n, n_rois), np.nan, np.float32)])
        out[name] = data
    return out


def roi_planes(rois: RoiSet, meta: dict[str, Any]) -> np.ndarray:
    """The plane of each ROI of a set that holds several planes' ROIs one plane after another, from the
    traces' description (traces.json `plane_rois`, ROIs per plane); every ROI on plane 0 when it does not say
    (one plane) or its counts do not add up to the set's ROIs (logged)."""
    counts = meta.get("plane_rois")
    if isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts) \
            and sum(counts) == rois.n:
        return np.repeat(np.arange(len(counts)), counts)
    if counts is not None:
        log.warning("traces.json plane_rois %r do not add up to the %d ROIs of rois.npz: every ROI is "
                    "exported on plane 0", counts, rois.n)
    return np.zeros(rois.n, np.int64)


def _plane_reference(folder: Path, plane: int) -> np.ndarray | None:
    for name in ((REFERENCE_FILE,) if plane == 0 else ()) + (f"reference_plane{plane}.npy",):
        if (folder / name).is_file():
            return load_reference(folder / name)
    return None


def _read_planes(folder: Path) -> tuple[list[PlaneRois], dict[Path, TraceSet]]:
    """The planes' ROIs and the trace folders: the session folder (one ROI set for every plane, in plane
    order) and any `plane<k>/` folder with its own ROI set and traces."""
    traces: dict[Path, TraceSet] = {}
    planes: list[PlaneRois] = []
    subfolders = sorted((int(m.group(1)), p) for p in folder.iterdir()
                        if p.is_dir() and (m := _PLANE_DIR.fullmatch(p.name)))
    for sub in [folder, *(p for _, p in subfolders)]:
        if (sub / TRACES_META_FILE).is_file():
            table = _map_traces(sub)
            traces[sub] = TraceSet(table, _extra_arrays(sub, table))
    if (folder / ROIS_FILE).is_file():
        rois = RoiSet.load(folder / ROIS_FILE)
        top = traces.get(folder)
        of_roi = roi_planes(rois, top.table.meta if top is not None else {})
        for plane in np.unique(of_roi):
            planes.append(PlaneRois(int(plane), rois, np.flatnonzero(of_roi == plane),
                                    _plane_reference(folder, int(plane)), folder))
    for plane, sub in subfolders:
        if (sub / ROIS_FILE).is_file() and plane not in {p.plane for p in planes}:
            rois = RoiSet.load(sub / ROIS_FILE)
            planes.append(PlaneRois(plane, rois, np.arange(rois.n), _plane_reference(sub, 0), sub))
    return sorted(planes, key=lambda p: p.plane), traces


def _settings(folder: Path) -> Settings:
    """The session's settings snapshot; the defaults (with a warning) when it cannot be read as today's
    settings (a snapshot from an older version)."""
    path = folder / SETTINGS_FILE
    if path.is_file():
        try:
            return load_settings(path)
        except UserError as exc:
            log.warning("%s: not readable as settings (%s); the export uses the defaults for the valve "
                        "calibration, wiring and imaging", path, exc)
    return Settings()


def _scanimage_files(folder: Path, info: dict[str, Any], settings: Settings) -> list[Path]:
    """The session's ScanImage files: the simulated source's in `<session>/imaging/`; a real microscope's,
    in `imaging.scanimage_folder`, those written while the session ran (by modification time, from its
    start to a minute after its end)."""
    own = folder / IMAGING_FOLDER
    if own.is_dir():
        return sorted(own.glob("*.tif"))
    source = settings.imaging.scanimage_folder
    if settings.imaging.source != "scanimage_folder" or source is None or not Path(source).is_dir():
        return []
    try:
        start = datetime.fromisoformat(str(info.get("started"))).timestamp()
        end = datetime.fromisoformat(str(info.get("ended"))).timestamp() + 60
    except ValueError:
        return []
    return sorted(p for p in Path(source).glob("*.tif") if start <= p.stat().st_mtime <= end)


def read_session(folder: str | Path) -> SessionFolder:
    """Read a session folder; a folder without session.json or trials.jsonl is a DataError naming it."""
    folder = Path(folder)
    info_path, trials_path = folder / SESSION_FILE, folder / TRIALS_FILE
    if not info_path.is_file():
        raise DataError(f"{folder} is not a session folder (no {SESSION_FILE})")
    info = read_json(info_path)
    settings = _settings(folder)
    trials = [TrialRecord.from_json(line) for line in _jsonl(trials_path)]
    subject_path = folder.parent / SUBJECT_FILE
    subject_record = read_json(subject_path) if subject_path.is_file() else {}
    planes, traces = _read_planes(folder)
    cds: list[dict[str, Any]] = []
    cd_path = folder.parent / "coding_directions.json"
    if cd_path.is_file():
        try:
            data = json.loads(cd_path.read_text(encoding="utf-8"))
            cds = [e for e in data.get("coding_directions", []) if e.get("session") == folder.name]
        except (ValueError, AttributeError) as exc:
            log.warning("%s: not readable (%s); the export has no coding directions", cd_path, exc)
    matches_path = folder / ROI_MATCHES_FILE
    matches = read_json(matches_path) if matches_path.is_file() else None
    tiffs = _scanimage_files(folder, info, settings)
    return SessionFolder(folder, info, settings, trials, subject_record, planes, traces,
                         _jsonl(folder / DECODER_FILE), _jsonl(folder / DECISIONS_FILE), cds, matches, tiffs)
