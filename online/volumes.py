"""Plane frames grouped into volumes: the unit of decoding when several planes are imaged.

A resonant microscope with a fast z-piezo scans the planes of a volume one after the other (the paper: 30
Hz over 5 planes, so each plane is seen at 6 Hz). Each plane is registered and extracted on its own; the
population activity of one time point is the concatenation of the planes' ROIs in plane order, complete
once every plane of the volume has been processed. Frames of one volume share their `frame_index` (the
time point within the acquisition, as ScanImage numbers them) and, in loop mode, their trial.

Plane frames arrive in order; a frame of another volume than the open one closes the open volume, complete
or not (a plane frame lost upstream). An incomplete volume still has its planes' traces, but it is not a
time point of the population: the pipeline does not decode it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from online.registration import Shift
from online.wire import FrameHeader


@dataclass(frozen=True, eq=False)
class PlaneFrame:
    """One processed plane frame: its header, shift, and the population rows (dF/F, deconvolved) after its
    update."""

    header: FrameHeader
    shift: Shift
    row: np.ndarray
    """dF/F of every ROI of every plane (float32), this plane's fresh, the others' from their last frame."""
    aux: tuple[float, ...]
    deconvolved: np.ndarray | None = None
    """Deconvolved activity of every ROI of every plane, as `row` (None when deconvolution is off)."""


@dataclass(eq=False)
class Volume:
    """The plane frames of one time point."""

    key: tuple[int, int]
    parts: list[PlaneFrame] = field(default_factory=list)
    planes_seen: int = 0
    """Bit z set when plane z's frame is in `parts`."""

    @property
    def first(self) -> PlaneFrame:
        return self.parts[0]

    @property
    def last(self) -> PlaneFrame:
        return self.parts[-1]

    @property
    def aux(self) -> tuple[float, ...]:
        """Every plane frame's aux-trigger edges (a trigger lands on the plane frame it arrived in)."""
        if len(self.parts) == 1:
            return self.parts[0].aux
        return tuple(e for part in self.parts for e in part.aux)


class VolumeAssembler:
    """Groups plane frames, in arrival order, into volumes of `planes` planes."""

    def __init__(self, planes: int, by_trial: bool) -> None:
        if planes < 1:
            raise ValueError(f"planes must be at least 1, got {planes}")
        self.planes = planes
        self.by_trial = by_trial
        """Loop mode: a volume is also bounded by its trial (frame indices restart per acquisition)."""
        self._full = (1 << planes) - 1
        self._open: Volume | None = None
        self.incomplete = 0
        """Volumes closed with a plane frame missing."""

    def add(self, part: PlaneFrame) -> list[Volume]:
        """Add a plane frame; returns the volumes it closes (at most two: the previous, then its own)."""
        header = part.header
        if self.planes == 1:
            return [Volume((header.trial, header.frame_index), [part], 1)]
        key = (header.trial if self.by_trial else 0, header.frame_index)
        bit = 1 << header.plane
        closed: list[Volume] = []
        vol = self._open
        if vol is not None and (vol.key != key or vol.planes_seen & bit):
            closed.append(self._close())
            vol = None
        if vol is None:
            vol = self._open = Volume(key)
        vol.parts.append(part)
        vol.planes_seen |= bit
        if vol.planes_seen == self._full:
            closed.append(self._close())
        return closed

    def complete(self, volume: Volume) -> bool:
        return volume.planes_seen == self._full

    def flush(self) -> list[Volume]:
        """The open volume, if any (end of a replay or of the session)."""
        return [self._close()] if self._open is not None else []

    def _close(self) -> Volume:
        vol = self._open
        assert vol is not None
        self._open = None
        if vol.planes_seen != self._full:
            self.incomplete += 1
        return vol
