"""The imaging of a session as NWB: device, planes, the ScanImage files linked (not copied), motion shifts,
ROIs with pixel masks per plane, the traces as `RoiResponseSeries`, and cross-session ROI matches.

Frames are placed on the Bpod session clock through the trial-start trigger, as the online module placed
them (online/alignment.py): a frame's time is its trial's start on the Bpod clock plus its time in the trial
(the trace index's `time_in_trial_s`, measured from the trigger on the imaging clock, at the frame's
centre). A frame outside any trial (before the first trigger) takes the imaging-to-Bpod offset of the
nearest placed frame. Host arrival times never enter.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hdmf.common import DynamicTable, VectorData, VectorIndex
from pynwb import NWBFile, TimeSeries
from pynwb.base import Images
from pynwb.device import Device
from pynwb.image import GrayscaleImage
from pynwb.ophys import (
    DfOverF,
    Fluorescence,
    ImageSegmentation,
    ImagingPlane,
    OpticalChannel,
    PlaneSegmentation,
    RoiResponseSeries,
    TwoPhotonSeries,
)

from rig.nwb.source import PlaneRois, SessionFolder, TraceSet

log = logging.getLogger(__name__)

CCF_LOCATION = "MOs"
"""Allen CCF acronym of the imaged area: ALM lies in the secondary motor area (MOs)."""


@dataclass(frozen=True)
class ImagingMetadata:
    """What the files do not say about the optics (from the settings' metadata section)."""

    location: str = CCF_LOCATION
    indicator: str = "GCaMP6s"
    excitation_lambda_nm: float = 920.0
    emission_lambda_nm: float = 510.0
    device: str = "two-photon microscope (ScanImage)"


def frame_times(index: np.ndarray, trial_starts: Mapping[int, float]) -> np.ndarray:
    """Bpod session-clock time of each trace index record (see the module docstring)."""
    trials = index["trial"].astype(np.int64)
    in_trial = index["time_in_trial_s"].astype(np.float64)
    starts = np.array([trial_starts.get(int(k), np.nan) for k in trials], np.float64)
    times = starts + in_trial
    placed = np.isfinite(times)
    if placed.all() or not placed.any():
        return times if placed.any() else index["timestamp_s"].astype(np.float64)
    offsets = times[placed] - index["timestamp_s"][placed]
    positions = np.flatnonzero(placed)
    nearest = np.clip(np.searchsorted(positions, np.flatnonzero(~placed)), 0, positions.size - 1)
    times[~placed] = index["timestamp_s"][~placed] + offsets[nearest]
    return times


PIXEL_MASK_DTYPE = np.dtype([("x", "<u4"), ("y", "<u4"), ("weight", "<f4")])


def _segmentation(plane: PlaneRois, imaging_plane: ImagingPlane) -> PlaneSegmentation:
    """The plane's ROIs as weighted pixel masks (x, y, weight), built as whole columns (one ROI at a time
    through `add_roi` converts every pixel on its own)."""
    rois = plane.rois
    starts, stops = rois.roi_offsets[plane.indices], rois.roi_offsets[plane.indices + 1]
    take = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)]) if starts.size \
        else np.zeros(0, np.int64)
    masks = np.zeros(take.size, PIXEL_MASK_DTYPE)
    masks["x"], masks["y"], masks["weight"] = rois.xpix[take], rois.ypix[take], rois.lam[take]
    pixel_mask = VectorData(name="pixel_mask", data=masks,
                            description="pixels of each ROI: x (column), y (row), weight")
    index = VectorIndex(name="pixel_mask_index", data=np.cumsum(stops - starts).astype(np.int64),
                        target=pixel_mask)
    return PlaneSegmentation(name=f"PlaneSegmentation{plane.plane}", imaging_plane=imaging_plane,
                             description=f"ROIs of plane {plane.plane} (online module; weighted pixel masks)",
                             columns=[pixel_mask, index], id=list(range(plane.indices.size)))


def _series_data(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(data, dtype=np.float32)


def _take(data: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """data[rows][:, columns], without a copy of all rows first when the columns are one span."""
    if columns.size and np.array_equal(columns, np.arange(columns[0], columns[0] + columns.size)):
        return data[rows, int(columns[0]): int(columns[0]) + columns.size]
    return data[np.ix_(rows, columns)]


def add_imaging(nwb: NWBFile, session: SessionFolder, trial_starts: Mapping[int, float],
                meta: ImagingMetadata, imaging_settings: Any, link_base: Path) -> None:
    """Everything of the session's imaging that is on disk; nothing when the online module did not run.
    ScanImage files are linked by their path relative to `link_base`, the NWB file's folder."""
    if not session.planes:
        return
    device = nwb.create_device(name="Microscope", description=meta.device)
    nominal = float(imaging_settings.frame_rate_hz) / max(1, int(imaging_settings.planes))
    ophys = nwb.create_processing_module("ophys", "two-photon imaging: motion, ROIs, traces (online module)")
    image_seg = ImageSegmentation(name="ImageSegmentation")
    ophys.add(image_seg)
    fluorescence, dff_container = Fluorescence(name="Fluorescence"), DfOverF(name="DfOverF")
    images = Images(name="SummaryImages", description="each plane's registration reference (mean image)")
    n_planes = len(session.planes)
    for plane in session.planes:
        traces = session.traces.get(plane.folder)
        measured = traces.table.meta.get("frame_rate_hz") if traces is not None else None
        rate = float(measured) if isinstance(measured, int | float) and measured > 0 else nominal
        imaging_plane = _imaging_plane(nwb, device, plane.plane, rate, meta)
        seg = _segmentation(plane, imaging_plane)
        image_seg.add_plane_segmentation(seg)
        if plane.reference is not None:
            images.add_image(GrayscaleImage(name=f"reference_plane{plane.plane}", data=plane.reference,
                                            description=f"registration reference of plane {plane.plane}"))
        if traces is None:
            continue
        rows = _plane_rows(traces, plane.plane, n_planes)
        index = traces.table.index[rows]
        times = frame_times(index, trial_starts)
        _add_shifts(ophys, plane.plane, index, times)
        region = seg.create_roi_table_region(description=f"the ROIs of plane {plane.plane}",
                                             region=list(range(plane.indices.size)))
        _add_traces(fluorescence, dff_container, plane.plane, traces, rows, plane.indices, region, times)
        _add_two_photon_series(nwb, session, plane.plane, imaging_plane, times, _frames_per_trial(index),
                               plane.rois.shape, link_base)
    if images.images:
        ophys.add(images)
    if fluorescence.roi_response_series:
        ophys.add(fluorescence)
    if dff_container.roi_response_series:
        ophys.add(dff_container)
    if session.roi_matches and any(m.get("pairs") for m in session.roi_matches.get("matches") or []):
        ophys.add(_roi_matches(session.roi_matches))  # a first session has nothing to be matched to


def _imaging_plane(nwb: NWBFile, device: Device, plane: int, rate: float,
                   meta: ImagingMetadata) -> ImagingPlane:
    channel = OpticalChannel(name="green", description="functional channel",
                             emission_lambda=meta.emission_lambda_nm)
    return nwb.create_imaging_plane(
        name=f"ImagingPlane{plane}", optical_channel=channel, imaging_rate=rate, device=device,
        description=f"plane {plane} (Allen CCF {meta.location}: secondary motor area, ALM)",
        excitation_lambda=meta.excitation_lambda_nm, indicator=meta.indicator, location=meta.location)


def _plane_rows(traces: TraceSet, plane: int, n_planes: int) -> np.ndarray:
    """The records of `plane`'s frames (all of them when one plane is imaged)."""
    planes = traces.table.index["plane"]
    if n_planes == 1:
        return np.arange(len(traces.table))
    return np.flatnonzero(planes == plane)


def _frames_per_trial(index: np.ndarray) -> dict[int, int]:
    """Frames of each trial with frames, in trial order (a loop-mode file per trial)."""
    trials = index["trial"]
    return {int(k): int((trials == k).sum()) for k in np.unique(trials[trials > 0])}


def _add_shifts(ophys: Any, plane: int, index: np.ndarray, times: np.ndarray) -> None:
    shifts = np.stack([index["shift_dy"], index["shift_dx"]], axis=1).astype(np.float32)
    ophys.add(TimeSeries(name=f"MotionShiftsPlane{plane}", data=shifts, unit="pixels", timestamps=times,
                         description=f"rigid registration shift of each plane {plane} frame: (dy, dx), rows "
                                     "down and columns right, applied to align it to the reference"))
    ophys.add(TimeSeries(name=f"RegistrationCorrelationPlane{plane}",
                         data=index["correlation"].astype(np.float32), unit="n.a.", timestamps=times,
                         description="phase correlation peak of each frame's registration (0-1)"))


def _add_traces(fluorescence: Fluorescence, dff_container: DfOverF, plane: int, traces: TraceSet,
                rows: np.ndarray, columns: np.ndarray, region: Any, times: np.ndarray) -> None:
    dff = _series_data(_take(traces.table.dff, rows, columns))
    dff_container.create_roi_response_series(
        name=f"DfOverFPlane{plane}", data=dff, rois=region, unit="n.a.", timestamps=times,
        description="dF/F of each ROI (neuropil-corrected, running baseline), as computed online")
    for name, unit, what in (("fluorescence", "a.u.", "raw fluorescence (ROI mean, weighted)"),
                             ("neuropil", "a.u.", "neuropil fluorescence (annulus mean)"),
                             ("deconvolved", "a.u.", "deconvolved activity (spike-rate proxy)")):
        if name in traces.extra:
            fluorescence.add_roi_response_series(RoiResponseSeries(
                name=f"{name.capitalize()}Plane{plane}",
                data=_series_data(_take(traces.extra[name], rows, columns)), rois=region, unit=unit,
                timestamps=times, description=what))


def _add_two_photon_series(nwb: NWBFile, session: SessionFolder, plane: int, imaging_plane: ImagingPlane,
                           times: np.ndarray, per_trial: dict[int, int], shape: tuple[int, int],
                           link_base: Path) -> None:
    """Link the ScanImage files (one per trial in loop mode) when they are there and match the frames."""
    files = session.tiff_files
    traced = sorted(per_trial)
    if files and len(files) != len(traced) and traced and traced[-1] <= len(files):
        # loop mode writes trial k's frames to the k-th file; the online module traced none of the first
        # trials' frames while it built its references, so those files are not part of the series
        files = [files[k - 1] for k in traced]
    counts = [per_trial[k] for k in traced]
    if not files or len(files) != len(traced) or sum(counts) != times.size:
        if files:
            log.warning("%s: %d ScanImage files for %d imaged trials; the raw frames are not linked",
                        session.folder, len(files), len(traced))
        return
    starting = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    paths = [os.path.relpath(f.resolve(), Path(link_base).resolve()) for f in files]
    nwb.add_acquisition(TwoPhotonSeries(
        name=f"TwoPhotonSeriesPlane{plane}", imaging_plane=imaging_plane, external_file=paths,
        starting_frame=starting.tolist(), format="external", timestamps=times, unit="n.a.",
        dimension=[int(shape[1]), int(shape[0])],
        description=f"plane {plane}'s frames in the ScanImage files of the session folder (one per trial; "
                    "with several planes the files interleave them: plane k is every n-th frame from the "
                    "k-th, n planes); paths relative to this NWB file"))


def _roi_matches(matches: Mapping[str, Any]) -> DynamicTable:
    """One row per ROI of this session matched to an ROI of an earlier one (roi_matches.json)."""
    rows: list[tuple[int, str, int, float, float, float, float]] = []
    for entry in matches.get("matches") or []:
        if not isinstance(entry, Mapping) or "pairs" not in entry:
            continue  # a session that could not be compared
        overlap = list(entry.get("overlap") or [])
        shift = list(entry.get("shift_px") or [math.nan, math.nan])
        for k, (previous, current) in enumerate(entry["pairs"]):
            rows.append((int(current), str(entry.get("session", "")), int(previous),
                         float(overlap[k]) if k < len(overlap) else math.nan, float(shift[0]),
                         float(shift[1]), float(entry.get("correlation") or math.nan)))
    names = (("roi", "this session's ROI (rois.npz index: the plane segmentations' rows, planes in order)",
              np.int64),
             ("matched_session", "the earlier session", str),
             ("matched_roi", "that session's ROI", np.int64),
             ("overlap", "Jaccard overlap of the two masks after registration", float),
             ("shift_dy", "shift moving this session's field onto that one (rows, px)", float),
             ("shift_dx", "same, columns (px)", float),
             ("correlation", "mean images' correlation after registration", float))
    columns = [VectorData(name=name, description=what,
                          data=[r[i] for r in rows] if rows else np.zeros(0, kind))
               for i, (name, what, kind) in enumerate(names)]
    return DynamicTable(name="RoiMatches", columns=columns,
                        description="this session's ROIs matched one to one to the subject's earlier "
                                    "sessions' (registered mean images, masks matched by overlap)")
