"""The simulated microscope's ScanImage TIFF files: one loop-mode file per trial, as ScanImage writes them.

`<folder>/sim_<trial>_00001.tif`, compact header. A file that cannot be written stops the TIFF output (the
error is kept for the health report); the frames are still published. Several planes: one time point per
volume, written once its last plane is rendered.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from hardware.scanimage.writer import ScanImageWriter
from hardware.sim.microscope import SimFrame, SimMicroscope

logger = logging.getLogger(__name__)

TIFF_STEM = "sim"


class LoopTiffFiles:
    """Writes each frame of `sim` into its acquisition's file, opening a new file per acquisition."""

    def __init__(self, folder: str | Path, sim: SimMicroscope, stem: str = TIFF_STEM) -> None:
        self.folder = Path(folder)
        self.sim = sim
        self.stem = stem
        self.files = 0
        self.frames = 0
        self.error: str | None = None
        self._writer: ScanImageWriter | None = None
        self._writer_acquisition: int | None = None
        self._volume: list[SimFrame] = []
        self._epoch = datetime.now()

    def write(self, frame: SimFrame, trial: int) -> None:
        """One frame of Bpod trial `trial`; after a failure, nothing more is written."""
        if self.error is not None:
            return
        try:
            self._write(frame, trial)
        except (OSError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("simulated microscope: cannot write TIFF files any more (%s); frames are still "
                         "published", self.error)
            self.close()

    def _write(self, frame: SimFrame, trial: int) -> None:
        if self._writer is None or self._writer_acquisition != frame.acquisition:
            self.close()
            sim = self.sim
            self._writer = ScanImageWriter.for_loop_trial(
                self.folder, self.stem, trial, height=sim.height, width=sim.width, planes=sim.planes,
                frame_rate_hz=sim.volume_rate_hz, dtype=sim.config.dtype, template="compact",
                first_frame_number=frame.frame_number + 1, epoch=self._epoch,
                acq_trigger_timestamp_s=frame.trigger_timestamp_s, overrides={"SI.extTrigEnable": 1})
            self._writer_acquisition = frame.acquisition
            self.files += 1
        if frame.plane == 0:
            self._volume = []
        self._volume.append(frame)
        planes = self.sim.planes
        if len(self._volume) < planes or [f.plane for f in self._volume] != list(range(planes)):
            return  # a volume is written once its last plane came (an acquisition cut mid-volume: dropped)
        volume, self._volume = self._volume, []
        aux = (tuple(e for f in volume for e in f.aux_trigger_s), (), (), ())
        pixels = np.stack([f.pixels for f in volume])[:, None]
        self._writer.write_frame(pixels, [f.timestamp_s for f in volume], aux_triggers=aux)
        self.frames += len(volume)

    def close(self) -> None:
        """Close the open file, if any."""
        if self._writer is not None:
            with contextlib.suppress(OSError, ValueError):
                self._writer.close()
            self._writer = None
            self._writer_acquisition = None

    def report(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "files": self.files, "frames": self.frames, "error": self.error}
