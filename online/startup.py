"""Start-up: the frames kept until the pipeline can begin, and the reference, ROIs and frame rate from them.

Until the pipeline is initialised, usable frames are kept: the reference is either given (`reference=`,
e.g. suite2p's meanImg or a saved reference.npy) or built from the first `reference_frames` usable frames
(`build_reference`); the ROIs are given (`rois=`: suite2p, rois.npz, the simulator's masks) or detected on
the reference (`detect_rois`). The frame rate is measured from the kept frames' timestamps (the nominal
rate from the settings is the fallback; a simulator reduced for a fast session runs slower than settings
say). Then the pipeline processes the kept frames in order.

Setup waits for usable frames instead of failing (`status` says what it waits for): blank frames (one value
everywhere: the shutter is closed) are counted and not kept; frames are kept per size, at most
`MAX_SETUP_SIZES` sizes, and the first size with enough frames becomes the session's (the few frames of
other sizes were strays: counted, dropped); a reference on which no ROI is found is dropped and the next
frames are tried. With given ROIs or reference, their size is the session's from the start, and
`WRONG_SIZE_FRAMES` frames of another size in a row end the setup (the ROIs are for another field).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from online.config import PipelineConfig
from online.errors import MalformedInput, PipelineError
from online.registration import build_reference
from online.rois import RoiSet, detect_rois
from online.stats import PipelineStats
from online.wire import FrameHeader

logger = logging.getLogger(__name__)

MAX_SETUP_SIZES = 4
"""Frame sizes whose frames setup keeps at once (a fifth drops the size with the fewest frames)."""
WRONG_SIZE_FRAMES = 100
"""Frames in a row of another size than the given ROIs' that end setup with an error (a few are strays)."""

Kept = tuple[FrameHeader, np.ndarray, tuple[float, ...]]
"""A frame kept during setup: its header, a copy of its pixels, its aux-trigger edges."""
Shape = tuple[int, int]


@dataclass(frozen=True, eq=False)
class Start:
    """What the pipeline begins with."""

    shape: Shape
    reference: np.ndarray
    """float32."""
    rois: RoiSet
    frame_rate_hz: float
    kept: list[Kept]
    """The frames kept meanwhile, to be processed first."""
    seconds: float
    """Time taken to build the reference and ROIs."""


class Startup:
    """Keeps usable frames until one size has enough, then builds the reference and ROIs from them."""

    def __init__(self, config: PipelineConfig, rois: RoiSet | None = None,
                 reference: np.ndarray | None = None, stats: PipelineStats | None = None) -> None:
        if reference is not None:
            reference = np.asarray(reference, dtype=np.float32)
            if reference.ndim != 2:
                raise PipelineError(f"the reference must be a 2-D image, got shape {reference.shape}")
            if rois is not None and tuple(rois.shape) != reference.shape:
                raise PipelineError(f"ROIs are for {rois.shape[0]}x{rois.shape[1]} frames but the reference "
                                    f"is {reference.shape[0]}x{reference.shape[1]}")
        self.config = config
        self.given_rois = rois
        self.given_reference = reference
        self.stats = stats if stats is not None else PipelineStats()
        given = rois.shape if rois is not None else reference.shape if reference is not None else None
        self.shape: Shape | None = (int(given[0]), int(given[1])) if given is not None else None
        """The given ROIs' or reference's size (frames of another size are refused)."""
        self._kept: dict[Shape, list[Kept]] = {}
        self._wrong_size_run = 0
        self._no_roi_note: str | None = None

    @property
    def frames_held(self) -> int:
        """Frames kept in memory (bounded: at most MAX_SETUP_SIZES sizes of a reference's worth)."""
        return sum(len(kept) for kept in self._kept.values())

    def frames_needed(self) -> int:
        if self.given_reference is None:
            return self.config.online.registration.reference_frames
        return 8 if self.config.measure_frame_rate else 1

    def status(self) -> str:
        """What setup is waiting for, in one sentence."""
        stats = self.stats
        held = max((len(kept) for kept in self._kept.values()), default=0)
        text = f"waiting for usable frames: {held} of {self.frames_needed()} kept for the reference"
        skipped = [f"{n} {what}" for n, what in (
            (stats.frames_blank_at_setup, "blank (shutter closed?)"),
            (stats.frames_nonfinite, "with NaN or infinite pixels"),
            (stats.frames_invalid + stats.frames_other_size_at_setup, "of another size")) if n]
        if skipped:
            text += "; skipped " + ", ".join(skipped)
        if self._no_roi_note is not None:
            text += f"; {self._no_roi_note}"
        return text

    def add(self, header: FrameHeader, pixels: np.ndarray,
            aux: tuple[float, ...]) -> tuple[Shape, list[Kept]] | None:
        """Keep a usable frame; returns (size, frames) once one size has enough of them to begin."""
        stats = self.stats
        shape = (int(pixels.shape[0]), int(pixels.shape[1]))
        if self.shape is not None and shape != self.shape:  # the given ROIs' or reference's size
            stats.frames_invalid += 1
            self._wrong_size_run += 1
            given = "ROIs are" if self.given_rois is not None else "reference is"
            if self._wrong_size_run >= WRONG_SIZE_FRAMES:
                raise PipelineError(f"{given} for {self.shape[0]}x{self.shape[1]} frames, frames are "
                                    f"{shape[0]}x{shape[1]}")
            raise MalformedInput(f"frame {header.frame_index} is {shape[0]}x{shape[1]}, the {given} for "
                                 f"{self.shape[0]}x{self.shape[1]} frames")
        self._wrong_size_run = 0
        if pixels.min() == pixels.max():
            stats.frames_blank_at_setup += 1
            if stats.frames_blank_at_setup == 1:
                logger.info("waiting for usable frames: blank frames (one value everywhere: shutter closed?) "
                            "are not used for the reference")
            return None
        kept = self._kept.setdefault(shape, [])
        kept.append((header, np.array(pixels, copy=True), aux))  # the message's memory is reused
        if len(self._kept) > MAX_SETUP_SIZES:
            fewest = min((s for s in self._kept if s != shape), key=lambda s: len(self._kept[s]))
            stats.frames_other_size_at_setup += len(self._kept.pop(fewest))
        if len(kept) < self.frames_needed():
            return None
        strays = sum(len(frames) for size, frames in self._kept.items() if size != shape)
        if strays:
            stats.frames_other_size_at_setup += strays
            logger.warning("%d frame(s) of other sizes than %dx%d skipped during setup", strays, *shape)
        self._kept = {}
        return shape, kept

    def take_most(self) -> tuple[Shape, list[Kept]] | None:
        """The size with the most frames kept and its frames (the end of a replay that never began)."""
        if not self._kept:
            return None
        shape, kept = max(self._kept.items(), key=lambda item: len(item[1]))
        self._kept = {}
        return shape, kept

    def build(self, shape: Shape, kept: list[Kept]) -> Start | None:
        """Reference, ROIs and frame rate from the kept frames of `shape`; None (and the frames dropped) when
        no ROI is found on the reference: setup goes on."""
        cfg = self.config
        n_reference = cfg.online.registration.reference_frames
        t0 = time.perf_counter()
        if self.given_reference is not None:
            reference = self.given_reference
            if reference.shape != shape:
                raise PipelineError(f"the reference is {reference.shape[0]}x{reference.shape[1]}, frames are "
                                    f"{shape[0]}x{shape[1]}")
        else:
            stack = np.stack([p for _, p, _ in kept[:n_reference]])
            reference = build_reference(stack, params=cfg.registration)
        rois = self.given_rois
        if rois is None:
            radius = cfg.roi_radius_px or max(1.5, 5.0 * min(shape) / 512)
            rois = detect_rois(reference, cfg.max_rois, radius)
            if rois.n == 0 and self.given_reference is not None:
                raise PipelineError("no ROI was found on the given reference image; give ROIs (--rois)")
            if rois.n == 0:
                self.stats.references_without_rois += 1
                self._no_roi_note = (f"no ROI was found on the reference of {len(stack)} frames (no cells in "
                                     "view?): trying the next frames; give ROIs with --rois")
                logger.warning("%s (%d so far)", self._no_roi_note, self.stats.references_without_rois)
                return None
        if tuple(rois.shape) != shape:
            raise PipelineError(f"ROIs are for {rois.shape[0]}x{rois.shape[1]} frames, frames are "
                                f"{shape[0]}x{shape[1]}")
        return Start(shape, reference.astype(np.float32), rois, self._measure_rate(kept), kept,
                     time.perf_counter() - t0)

    def _measure_rate(self, kept: list[Kept]) -> float:
        nominal = self.config.frame_rate_hz
        if not self.config.measure_frame_rate:
            return nominal
        frames = sorted((h.trial, h.frame_index, h.timestamp_s) for h, _, _ in kept)
        steps = [(b[2] - a[2]) / (b[1] - a[1]) for a, b in zip(frames, frames[1:], strict=False)
                 if a[0] == b[0] and b[1] > a[1] and a[2] >= 0 and b[2] > a[2]]
        if not steps:
            return nominal
        rate = 1.0 / float(np.median(steps))
        if abs(rate - nominal) > 0.02 * nominal:
            logger.warning("frames arrive at %.3f Hz (from their timestamps), settings say %.3f Hz: "
                           "using %.3f Hz", rate, nominal, rate)
        return rate
