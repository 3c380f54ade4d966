"""The frame stage: one frame's pixels -> its registration shift and every ROI's dF/F.

`RigidRegistration.register` -> `TraceExtractor.extract` (ROI pixels read at the shifted position, no
image is shifted) -> `DffTracker.update`. Built once the reference, the ROIs and the frame rate are known
(online/startup.py); settings online.registration, neuropil_coefficient and dff_baseline_window_s.
"""

from __future__ import annotations

import numpy as np

from online.registration import RegistrationParams, RigidRegistration, Shift
from online.rois import RoiSet
from online.settings import OnlineSettings
from online.traces import DffTracker, TraceExtractor


class FrameStage:
    """Register, extract, dF/F. Keeps the running dF/F baseline, so frames go through in order."""

    def __init__(self, reference: np.ndarray, rois: RoiSet, frame_rate_hz: float, online: OnlineSettings,
                 registration: RegistrationParams) -> None:
        self.registration = RigidRegistration(reference, registration)
        self.extractor = TraceExtractor(rois, neuropil_coefficient=online.neuropil_coefficient,
                                        max_shift_px=registration.max_shift_px)
        self.dff = DffTracker(rois.n, frame_rate_hz, baseline_window_s=online.dff_baseline_window_s)

    def process(self, pixels: np.ndarray) -> tuple[Shift, np.ndarray]:
        """The frame's shift and dF/F (n_rois,)."""
        shift = self.registration.register(pixels)
        traces = self.extractor.extract(pixels, shift)
        return shift, self.dff.update(traces.f_corrected)

    @property
    def bad_frames(self) -> int:
        return self.registration.bad_frames

    @property
    def clipped_shifts(self) -> int:
        return self.extractor.clipped_shifts
