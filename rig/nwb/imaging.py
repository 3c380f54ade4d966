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
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hdmf.common import DynamicTable, VectorData
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


def _plane_columns(planes: Sequence[PlaneRois], plane: int, width: int, own_folder: bool) -> slice:
    """Which trace columns are `plane`'s ROIs: all of them in the plane's own trace folder, else its span
    in the planes' concatenation (plane order), or all when the row holds one plane only."""
    sizes = {p.plane: p.rois.n for p in planes}
    if own_folder or width == sizes.get(plane):
        return slice(0, width)
    start = sum(n for p, n in sizes.items() if p < plane)
    return slice(start, start + sizes[plane])


def _segmentation(plane: PlaneRois, imaging_plane: ImagingPlane) -> PlaneSegmentation:
    seg = PlaneSegmentation(name=f"PlaneSegmentation{plane.plane}", imaging_plane=imaging_plane,
                            description=f"ROIs of plane {plane.plane} (online module; weighted pixel masks)")
    rois = plane.rois
    for i in range(rois.n):
        y, x, lam = rois.roi(i)
        seg.add_roi(pixel_mask=[(int(a), int(b), float(w)) for a, b, w in zip(x, y, lam, strict=True)])
    return seg


def _series_data(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(data, dtype=np.float32)


def add_imaging(nwb: NWBFile, session: SessionFolder, trial_starts: Mapping[int, float],
                meta: ImagingMetadata, imaging_settings: Any, link_base: Path) -> None:
    """Everything of the session's imaging that is on disk; nothing when the online module did not run.
    ScanImage files are linked by their path relative to `link_base`, the NWB file's folder."""
    if not session.planes and not session.traces:
        return
    device = nwb.create_device(name="Microscope", description=meta.device)
    rate = float(imaging_settings.frame_rate_hz) / max(1, int(imaging_settings.planes))
    ophys = nwb.create_processing_module("ophys", "two-photon imaging: motion, ROIs, traces (online module)")
    image_seg = ImageSegmentation(name="ImageSegmentation")
    ophys.add(image_seg)
    fluorescence, dff_container = Fluorescence(name="Fluorescence"), DfOverF(name="DfOverF")
    images = Images(name="SummaryImages", description="each plane's registration reference (mean image)")
    planes = session.planes or [PlaneRois(0, None, None)]  # type: ignore[arg-type]
    tiff_counts: dict[int, list[int]] = {}
    segmentations = {}
    for plane in planes:
        imaging_plane = _imaging_plane(nwb, device, plane.plane, rate, meta)
        if plane.rois is not None:
            seg = _segmentation(plane, imaging_plane)
            image_seg.add_plane_segmentation(seg)
            segmentations[plane.plane] = seg
        if plane.reference is not None:
            images.add_image(GrayscaleImage(name=f"reference_plane{plane.plane}", data=plane.reference,
                                            description=f"registration reference of plane {plane.plane}"))
        traces = session.traces.get(plane.plane) or session.traces.get(0)
        if traces is None:
            continue
        own_folder = plane.plane in session.traces and plane.plane != 0
        rows = _plane_rows(traces, plane.plane, len(planes))
        index = traces.table.index[rows]
        times = frame_times(index, trial_starts)
        tiff_counts[plane.plane] = _frames_per_trial(index)
        _add_shifts(ophys, plane.plane, index, times)
        if plane.plane in segmentations:
            seg = segmentations[plane.plane]
            columns = _plane_columns(session.planes, plane.plane, traces.table.dff.shape[1], own_folder)
            region = seg.create_roi_table_region(description=f"the ROIs of plane {plane.plane}",
                                                 region=list(range(plane.rois.n)))
            _add_traces(fluorescence, dff_container, plane.plane, traces, rows, columns, region, times)
        _add_two_photon_series(nwb, session, plane.plane, imaging_plane, times, tiff_counts[plane.plane],
                               imaging_settings, link_base)
    if images.images:
        ophys.add(images)
    if fluorescence.roi_response_series:
        ophys.add(fluorescence)
    if dff_container.roi_response_series:
        ophys.add(dff_container)
    if session.roi_matches:
        ophys.add(_roi_matches(session.roi_matches))


def _imaging_plane(nwb: NWBFile, device: Device, plane: int, rate: float,
                   meta: ImagingMetadata) -> ImagingPlane:
    channel = OpticalChannel(name="green", description="functional channel",
                             emission_lambda=meta.emission_lambda_nm)
    return nwb.create_imaging_plane(
        name=f"ImagingPlane{plane}", optical_channel=channel, imaging_rate=rate, device=device,
        description=f"plane {plane} (Allen CCF {meta.location}: secondary motor area, ALM)",
        excitation_lambda=meta.excitation_lambda_nm, indicator=meta.indicator, location=meta.location)


def _plane_rows(traces: TraceSet, plane: int, n_planes: int) -> np.ndarray:
    planes = traces.table.index["plane"]
    if n_planes == 1 and not (planes == plane).any():
        return np.arange(len(traces.table))
    return np.flatnonzero(planes == plane)


def _frames_per_trial(index: np.ndarray) -> list[int]:
    """Frames of each trial with frames, in trial order (a loop-mode file per trial)."""
    trials = index["trial"]
    return [int((trials == k).sum()) for k in np.unique(trials[trials > 0])]


def _add_shifts(ophys: Any, plane: int, index: np.ndarray, times: np.ndarray) -> None:
    shifts = np.stack([index["shift_dy"], index["shift_dx"]], axis=1).astype(np.float32)
    ophys.add(TimeSeries(name=f"MotionShiftsPlane{plane}", data=shifts, unit="pixels", timestamps=times,
                         description=f"rigid registration shift of each plane {plane} frame: (dy, dx), rows "
                                     "down and columns right, applied to align it to the reference"))
    ophys.add(TimeSeries(name=f"RegistrationCorrelationPlane{plane}",
                         data=index["correlation"].astype(np.float32), unit="n.a.", timestamps=times,
                         description="phase correlation peak of each frame's registration (0-1)"))


def _add_traces(fluorescence: Fluorescence, dff_container: DfOverF, plane: int, traces: TraceSet,
                rows: np.ndarray, columns: slice, region: Any, times: np.ndarray) -> None:
    dff = _series_data(traces.table.dff[rows, columns])
    dff_container.create_roi_response_series(
        name=f"DfOverFPlane{plane}", data=dff, rois=region, unit="n.a.", timestamps=times,
        description="dF/F of each ROI (neuropil-corrected, running baseline), as computed online")
    for name, unit, what in (("fluorescence", "a.u.", "raw fluorescence (ROI mean, weighted)"),
                             ("neuropil", "a.u.", "neuropil fluorescence (annulus mean)"),
                             ("deconvolved", "a.u.", "deconvolved activity (spike-rate proxy)")):
        if name in traces.extra:
            fluorescence.add_roi_response_series(RoiResponseSeries(
                name=f"{name.capitalize()}Plane{plane}", data=_series_data(traces.extra[name][rows, columns]),
                rois=region, unit=unit, timestamps=times, description=what))


def _add_two_photon_series(nwb: NWBFile, session: SessionFolder, plane: int, imaging_plane: ImagingPlane,
                           times: np.ndarray, per_trial: list[int], imaging_settings: Any,
                           link_base: Path) -> None:
    """Link the ScanImage files (one per trial in loop mode) when they are there and match the frames."""
    files = session.tiff_files
    if not files or len(files) != len(per_trial) or sum(per_trial) != times.size:
        if files:
            log.warning("%s: %d ScanImage files for %d imaged trials; the raw frames are not linked",
                        session.folder, len(files), len(per_trial))
        return
    starting = np.concatenate([[0], np.cumsum(per_trial)[:-1]]).astype(np.int64)
    paths = [os.path.relpath(f.resolve(), Path(link_base).resolve()) for f in files]
    nwb.add_acquisition(TwoPhotonSeries(
        name=f"TwoPhotonSeriesPlane{plane}", imaging_plane=imaging_plane, external_file=paths,
        starting_frame=starting.tolist(), format="external", timestamps=times, unit="n.a.",
        dimension=[int(imaging_settings.frame_width), int(imaging_settings.frame_height)],
        description=f"plane {plane}'s frames in the ScanImage files of the session folder (one per trial); "
                    "paths relative to this NWB file"))


def _roi_matches(matches: Mapping[str, Any]) -> DynamicTable:
    """The session's ROIs matched to other sessions' (one row per match, columns as recorded)."""
    rows = matches.get("matches") if isinstance(matches.get("matches"), list) else []
    keys = sorted({k for r in rows if isinstance(r, Mapping) for k, v in r.items()
                   if isinstance(v, int | float | str | bool)})
    columns = [VectorData(name=k, description=f"match {k}", data=[r.get(k) if r.get(k) is not None else ""
                                                                   for r in rows]) for k in keys]
    return DynamicTable(name="RoiMatches", columns=columns,
                        description="this session's ROIs matched to the subject's other sessions "
                                    f"({matches.get('method', 'mask overlap after registration')})")
