"""The online module's outputs on disk: append-only, crash-safe, readable while being written.

Per session (`<data_root>/<subject>/<YYYY-MM-DD_HHMMSS>/`, the folder the rig made):

- `rois.npz` (`RoiSet.save`) and `reference.npy`: written once, when the reference is ready, through a
  temporary file and an atomic rename (a reader never sees half a file). With several planes `rois.npz`
  holds every plane's ROIs, one plane's after another's (the neuron index), and `reference.npy` is plane
  0's; each plane's own ROIs and reference are `rois_plane<z>.npz` and `reference_plane<z>.npy`.
- `traces.f32`: per processed frame, n_rois float32 dF/F values (little-endian), nothing else, appended.
  `traces_index.bin`: one fixed-size record per frame (`INDEX_DTYPE`: frame_index, trial, channel, plane,
  timestamp_s, time_in_trial_s (NaN when not in a trial), shift_dy, shift_dx, correlation, seq (the
  frame's number on the lossless path, modulo 2^32: a restarted module's lost frames are the numbers
  missing between two runs), t_ns),
  appended after the frame's traces row. `deconvolved.f32`: the same layout, each ROI's deconvolved
  activity (online/deconvolution.py) per frame, when online deconvolution runs; opened with the first frame
  that has it (rows of earlier frames, or of a run without it, are NaN), its row written before the index
  record like the dF/F row. `traces.json` describes them (format, n_rois, `plane_rois`: the ROIs of each
  plane in plane order, dtypes, record size, the deconvolved file once there is one), written before the
  first frame. The binary files are opened unbuffered, so every frame reaches the OS at once: a killed
  process loses nothing, and `fsync` runs about once a second (an OS crash loses at most that). A torn
  last record is detected by its size and ignored by `read_traces`, which reads the frames present in both
  traces.f32 and the index (a restarted writer trims the files to them).
- `decoder.jsonl`: one line per trial end (the published `DecoderResult` plus details), fsynced.
- `decisions.jsonl`: closed-loop decisions, one line when a decision is sent (`"kind": "sent"`, or
  `"failed"`), one when the trial record shows where it landed (`"landed"`, or `"not_landed"`), and one per
  gated trial without a decision (`"none"`, with the reason). Flushed per line, fsynced about once a second.
- `online_summary.json`: counters at the end of the run (atomic replace).

Per subject: `<data_root>/<subject>/coding_directions.json` (`CodingDirectionFile`), the subject's stored
coding directions (`CodingDirectionStore.to_dict()`), replaced atomically (write a temporary file, fsync,
rename, fsync the folder), and merged with what is on disk at each save, so an entry written by another
session is never lost. A file that cannot be read is left untouched (never overwritten) and reported.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from online.decoding import CodingDirectionStore
from online.messages import TraceFrame
from online.rois import RoiSet

logger = logging.getLogger(__name__)

ROIS_FILE = "rois.npz"
REFERENCE_FILE = "reference.npy"
PLANE_ROIS_FILE, PLANE_REFERENCE_FILE = "rois_plane{}.npz", "reference_plane{}.npy"
"""Several planes: plane z's own ROIs and reference (`.format(z)`)."""
TRACES_FILE = "traces.f32"
DECONVOLVED_FILE = "deconvolved.f32"
TRACES_INDEX_FILE = "traces_index.bin"
TRACES_META_FILE = "traces.json"
DECODER_FILE = "decoder.jsonl"
DECISIONS_FILE = "decisions.jsonl"
SUMMARY_FILE = "online_summary.json"
CODING_DIRECTIONS_FILE = "coding_directions.json"
TRACES_FORMAT = "online-traces/1"

INDEX_DTYPE = np.dtype([
    ("frame_index", "<i8"), ("trial", "<i4"), ("channel", "<i2"), ("plane", "<i2"),
    ("timestamp_s", "<f8"), ("time_in_trial_s", "<f8"),
    ("shift_dy", "<f4"), ("shift_dx", "<f4"), ("correlation", "<f4"), ("seq", "<u4"),
    ("t_ns", "<i8"),
])
"""One record of traces_index.bin (56 bytes, little-endian)."""
TRACE_DTYPE = np.dtype("<f4")
SYNC_INTERVAL_S = 1.0


# -- small crash-safe file helpers ------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace `path` so that a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any, indent: int | None = 1) -> None:
    text = json.dumps(plain_json(data), indent=indent, sort_keys=True, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode())


def plain_json(value: Any) -> Any:
    """`value` with numpy scalars/arrays turned into Python numbers and lists, NaN/inf into None (JSON has
    no NaN), tuples into lists."""
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain_json(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Appends one JSON object per line; each line reaches the OS when written, fsync every `sync_s` (and at
    close), or at once with `fsync=True`."""

    def __init__(self, path: Path, sync_s: float = SYNC_INTERVAL_S) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._sync_s = sync_s
        self._last_sync = time.monotonic()
        self._dirty = False
        self.lines = 0

    def write(self, record: Mapping[str, Any], fsync: bool = False) -> None:
        self._file.write(json.dumps(plain_json(record), separators=(",", ":"), allow_nan=False) + "\n")
        self._file.flush()
        self.lines += 1
        self._dirty = True
        if fsync:
            self.sync()
        else:
            self.maybe_sync()

    def maybe_sync(self) -> None:
        if self._dirty and time.monotonic() - self._last_sync >= self._sync_s:
            self.sync()

    def sync(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._dirty = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


class JsonLinesError(ValueError):
    """A line in the middle of a JSON-lines file that is not JSON: damage, not a crash mid-write."""


def read_jsonl(path: Path) -> list[Any]:
    """The records of a JSON-lines file (trials.jsonl, decoder.jsonl, an events journal ...), for the rig
    and the online module alike. A torn last line (a writer killed mid-line, or one still writing) is
    skipped with a warning; a bad line anywhere else is a JsonLinesError naming the file and line."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) and not line.endswith("\n"):
                logger.warning("%s: line %d is incomplete (writer killed mid-line); skipped", path, number)
                continue
            raise JsonLinesError(f"{path}:{number}: not valid JSON") from None
    return out


# -- per-frame traces -------------------------------------------------------------------------------------


class TraceWriter:
    """Appends each frame's dF/F row to traces.f32, its deconvolved row (if any) to deconvolved.f32 and its
    record to traces_index.bin (module docstring)."""

    def __init__(self, folder: Path, n_rois: int, *, roi_set_id: str = "", frame_rate_hz: float | None = None,
                 plane_rois: Sequence[int] | None = None, sync_s: float = SYNC_INTERVAL_S) -> None:
        """`plane_rois`: the ROIs of each plane, in plane order, adding up to n_rois (None: one plane)."""
        if n_rois < 1:
            raise ValueError(f"n_rois must be at least 1, got {n_rois}")
        planes = [n_rois] if plane_rois is None else [int(n) for n in plane_rois]
        if sum(planes) != n_rois or min(planes) < 1:
            raise ValueError(f"plane_rois {planes} must be positive and add up to n_rois ({n_rois})")
        self.folder = Path(folder)
        self.n_rois = n_rois
        meta_path = self._meta_path = self.folder / TRACES_META_FILE
        if meta_path.exists():  # appending to an existing session (a restarted online process)
            meta = json.loads(meta_path.read_text())
            if meta.get("n_rois") != n_rois:
                raise ValueError(f"{meta_path} describes {meta.get('n_rois')} ROIs, this run has {n_rois}: "
                                 "use another session folder")
            _trim_to_common_length(self.folder, n_rois)
        else:
            write_json_atomic(meta_path, {
                "format": TRACES_FORMAT, "n_rois": n_rois, "plane_rois": planes, "traces_file": TRACES_FILE,
                "traces_dtype": TRACE_DTYPE.str, "index_file": TRACES_INDEX_FILE,
                "index_dtype": [[name, INDEX_DTYPE.fields[name][0].str] for name in INDEX_DTYPE.names],
                "index_record_bytes": INDEX_DTYPE.itemsize, "roi_set_id": roi_set_id,
                "frame_rate_hz": frame_rate_hz,
                "notes": "traces.f32: n_rois float32 dF/F per frame; row i belongs to index record i",
            })
        self._traces = open(self.folder / TRACES_FILE, "ab", buffering=0)  # noqa: SIM115
        self._index = open(self.folder / TRACES_INDEX_FILE, "ab", buffering=0)  # noqa: SIM115
        self._rows_before = (self.folder / TRACES_FILE).stat().st_size // (n_rois * TRACE_DTYPE.itemsize)
        self._deconvolved: Any = None  # deconvolved.f32, opened with the first frame that has it
        self._record = np.zeros(1, INDEX_DTYPE)
        self._sync_s = sync_s
        self._last_sync = time.monotonic()
        self.frames = 0

    def append(self, trace: TraceFrame, channel: int = 0, plane: int = 0, t_ns: int = 0,
               seq: int = 0) -> None:
        row = np.ascontiguousarray(trace.dff, dtype=TRACE_DTYPE)
        if row.shape != (self.n_rois,):
            raise ValueError(f"trace row has shape {row.shape}, expected ({self.n_rois},)")
        r = self._record
        r["frame_index"], r["trial"] = trace.frame_index, trace.trial
        r["channel"], r["plane"] = channel, plane
        r["timestamp_s"] = trace.timestamp_s
        r["time_in_trial_s"] = math.nan if trace.time_in_trial_s is None else trace.time_in_trial_s
        r["shift_dy"], r["shift_dx"], r["correlation"] = trace.shift_dy, trace.shift_dx, trace.correlation
        r["t_ns"] = t_ns
        r["seq"] = seq & 0xFFFFFFFF
        if trace.deconvolved is not None or self._deconvolved is not None:
            self._write_deconvolved(trace.deconvolved)
        self._traces.write(row.tobytes())
        self._index.write(r.tobytes())
        self.frames += 1
        now = time.monotonic()
        if now - self._last_sync >= self._sync_s:
            self.sync()

    def _write_deconvolved(self, values: np.ndarray | None) -> None:
        """This frame's deconvolved row (NaN when it has none); the file opened, and padded with NaN rows
        for the frames already written, the first time."""
        if values is None:
            row = np.full(self.n_rois, np.nan, TRACE_DTYPE)
        else:
            row = np.ascontiguousarray(values, dtype=TRACE_DTYPE)
            if row.shape != (self.n_rois,):
                raise ValueError(f"deconvolved row has shape {row.shape}, expected ({self.n_rois},)")
        if self._deconvolved is None:
            path = self.folder / DECONVOLVED_FILE
            size = path.stat().st_size if path.exists() else 0
            if size % row.nbytes:  # a torn row of an earlier run
                os.truncate(path, size - size % row.nbytes)
            self._deconvolved = open(path, "ab", buffering=0)  # noqa: SIM115
            missing = self._rows_before + self.frames - size // row.nbytes
            if missing > 0:
                self._deconvolved.write(np.full(missing * self.n_rois, np.nan, TRACE_DTYPE).tobytes())
            meta = json.loads(self._meta_path.read_text())
            if meta.get("deconvolved_file") != DECONVOLVED_FILE:
                meta["deconvolved_file"] = DECONVOLVED_FILE
                write_json_atomic(self._meta_path, meta)
        self._deconvolved.write(row.tobytes())

    def _files(self) -> list[Any]:
        return [self._traces, self._index] + ([self._deconvolved] if self._deconvolved is not None else [])

    def sync(self) -> None:
        for f in self._files():
            if not f.closed:
                os.fsync(f.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._traces.closed:
            self.sync()
            for f in self._files():
                f.close()


def _trim_to_common_length(folder: Path, n_rois: int) -> None:
    """Cut a torn last record (a crash mid-append) off the files, so appending continues aligned (a shorter
    deconvolved.f32 is padded when it is next appended to)."""
    traces, index, deconvolved = folder / TRACES_FILE, folder / TRACES_INDEX_FILE, folder / DECONVOLVED_FILE
    row = n_rois * TRACE_DTYPE.itemsize
    n = min((traces.stat().st_size if traces.exists() else 0) // row,
            (index.stat().st_size if index.exists() else 0) // INDEX_DTYPE.itemsize)
    for path, size in ((traces, n * row), (index, n * INDEX_DTYPE.itemsize), (deconvolved, n * row)):
        if path.exists() and path.stat().st_size > size:  # (traces and index are never shorter)
            logger.warning("%s: trimming a torn record (%d -> %d bytes)", path, path.stat().st_size, size)
            os.truncate(path, size)


@dataclass(frozen=True)
class TraceTable:
    """A session's traces as read back: `index` (structured, `INDEX_DTYPE`), `dff` (frames x ROIs) and
    `deconvolved` (frames x ROIs, NaN rows where a frame has none; None without deconvolved.f32)."""

    index: np.ndarray
    dff: np.ndarray
    meta: dict[str, Any]
    deconvolved: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.index.shape[0])


def read_traces(folder: str | Path) -> TraceTable:
    """Read traces.f32 + traces_index.bin (also while they are being written): the frames present in both."""
    folder = Path(folder)
    meta_path = folder / TRACES_META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} does not exist: no traces were written in {folder}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != TRACES_FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {TRACES_FORMAT!r}")
    n_rois = int(meta["n_rois"])
    raw = np.fromfile(folder / TRACES_FILE, dtype=TRACE_DTYPE) if (folder / TRACES_FILE).exists() else \
        np.zeros(0, TRACE_DTYPE)
    index = np.fromfile(folder / TRACES_INDEX_FILE, dtype=np.uint8) if (folder / TRACES_INDEX_FILE).exists() \
        else np.zeros(0, np.uint8)
    n = min(raw.size // n_rois, index.size // INDEX_DTYPE.itemsize)
    records = index[: n * INDEX_DTYPE.itemsize].view(INDEX_DTYPE)
    deconvolved = None
    if (folder / DECONVOLVED_FILE).exists():
        values = np.fromfile(folder / DECONVOLVED_FILE, dtype=TRACE_DTYPE)
        rows = min(n, values.size // n_rois)
        deconvolved = np.full((n, n_rois), np.nan, TRACE_DTYPE)
        deconvolved[:rows] = values[: rows * n_rois].reshape(rows, n_rois)
    return TraceTable(records, raw[: n * n_rois].reshape(n, n_rois), meta, deconvolved)


def index_length(folder: str | Path) -> int:
    """Complete records in a session's traces_index.bin (0 when there is none yet)."""
    path = Path(folder) / TRACES_INDEX_FILE
    try:
        return path.stat().st_size // INDEX_DTYPE.itemsize
    except FileNotFoundError:
        return 0


def read_index(folder: str | Path, start: int, stop: int) -> np.ndarray:
    """Records [start, stop) of a session's traces_index.bin (fewer if the file is shorter), read without
    loading the rest: the rig reads a few records around a restart of the online module."""
    path = Path(folder) / TRACES_INDEX_FILE
    start = max(0, start)  # (the record before the first: none)
    count = max(0, min(stop, index_length(folder)) - start)
    if count == 0:
        return np.zeros(0, INDEX_DTYPE)
    return np.fromfile(path, dtype=INDEX_DTYPE, count=count, offset=start * INDEX_DTYPE.itemsize)


# -- the session's outputs --------------------------------------------------------------------------------


class SessionOutputs:
    """Everything the online module writes into one session folder (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.traces: TraceWriter | None = None
        self.decoder = JsonlWriter(self.folder / DECODER_FILE)
        self.decisions = JsonlWriter(self.folder / DECISIONS_FILE)

    def write_rois(self, rois: RoiSet, reference: np.ndarray, *, frame_rate_hz: float | None = None,
                   roi_set_id: str = "", planes: Sequence[tuple[RoiSet, np.ndarray]] = ()) -> None:
        """rois.npz + reference.npy (atomic), each plane's files when `planes` has several (their ROIs and
        reference; `rois` is then their concatenation), and open the trace files for that ROI set."""
        self._save_rois(rois, ROIS_FILE)
        write_bytes_atomic(self.folder / REFERENCE_FILE, _npy_bytes(np.asarray(reference, dtype=np.float32)))
        if len(planes) > 1:
            for z, (plane_rois, plane_reference) in enumerate(planes):
                self._save_rois(plane_rois, PLANE_ROIS_FILE.format(z))
                write_bytes_atomic(self.folder / PLANE_REFERENCE_FILE.format(z),
                                   _npy_bytes(np.asarray(plane_reference, dtype=np.float32)))
        if self.traces is None:
            counts = [r.n for r, _ in planes] if len(planes) > 1 else None
            self.traces = TraceWriter(self.folder, rois.n, roi_set_id=roi_set_id, frame_rate_hz=frame_rate_hz,
                                      plane_rois=counts)

    def _save_rois(self, rois: RoiSet, name: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            rois.save(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / name)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def append_trace(self, trace: TraceFrame, channel: int = 0, plane: int = 0, t_ns: int = 0,
                     seq: int = 0) -> None:
        if self.traces is None:
            raise RuntimeError("append_trace before write_rois: the trace files are opened with the ROI set")
        self.traces.append(trace, channel, plane, t_ns, seq)

    def append_decoder(self, record: Mapping[str, Any]) -> None:
        self.decoder.write(record, fsync=True)

    def append_decision(self, record: Mapping[str, Any]) -> None:
        self.decisions.write(record)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json_atomic(self.folder / SUMMARY_FILE, summary)

    def sync(self) -> None:
        """Periodic fsync of what is pending (cheap when nothing is)."""
        self.decisions.maybe_sync()
        self.decoder.maybe_sync()

    def close(self) -> None:
        if self.traces is not None:
            self.traces.close()
        self.decoder.close()
        self.decisions.close()


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def load_reference(path: str | Path) -> np.ndarray:
    """A reference.npy written by `SessionOutputs` (a 2-D float image)."""
    path = Path(path)
    try:
        image = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"reference file {path} is not a readable .npy file: {exc}") from exc
    if image.ndim != 2 or not np.all(np.isfinite(image)):
        raise ValueError(f"reference file {path} does not hold a finite 2-D image (shape {image.shape})")
    return image.astype(np.float32)


# -- the subject's coding directions ----------------------------------------------------------------------


class CodingDirectionFile:
    """`<data_root>/<subject>/coding_directions.json`: the subject's CDs across sessions and contexts."""

    def __init__(self, path: str | Path, subject: str | None = None) -> None:
        self.path = Path(path)
        self.subject = subject
        self.readable = True
        self.error: str | None = None

    @classmethod
    def in_subject_dir(cls, subject_dir: str | Path) -> CodingDirectionFile:
        folder = Path(subject_dir)
        return cls(folder / CODING_DIRECTIONS_FILE, folder.name)

    def _read(self) -> CodingDirectionStore:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return CodingDirectionStore.from_dict(data)

    def load(self) -> CodingDirectionStore:
        """The stored CDs (empty when the file does not exist yet). A file that cannot be read is reported,
        kept as it is (`readable` becomes False: `save` will not overwrite it), and an empty store is
        returned."""
        if not self.path.exists():
            return CodingDirectionStore(self.subject)
        try:
            store = self._read()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.readable = False
            self.error = f"{self.path}: cannot read the stored coding directions ({exc}); the file is left " \
                         "as it is and this session's CDs are not saved to it"
            logger.error("%s", self.error)
            return CodingDirectionStore(self.subject)
        if store.subject is None:
            store.subject = self.subject
        return store

    def save(self, store: CodingDirectionStore, sessions: set[str] | None = None) -> bool:
        """Write `store` atomically, keeping entries on disk that `store` does not have (another session's).
        With `sessions`, only those sessions' entries are taken from `store`. False when not written."""
        if not self.readable:
            return False
        merged = CodingDirectionStore(store.subject or self.subject)
        if self.path.exists():
            try:
                disk = self._read()
                for session, cd in disk.entries():
                    merged.put(session, cd, disk.halves(session, cd))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.readable = False
                self.error = f"{self.path}: became unreadable ({exc}); not overwritten"
                logger.error("%s", self.error)
                return False
        for session, cd in store.entries():
            if sessions is None or session in sessions:
                merged.put(session, cd, store.halves(session, cd))
        write_json_atomic(self.path, merged.to_dict(), indent=None)
        return True
