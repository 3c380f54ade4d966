"""The frame stage: one frame's pixels -> its registration shift, every ROI's dF/F and deconvolved activity.

`RigidRegistration.register` -> `TraceExtractor.extract` (ROI pixels read at the shifted position, no
image is shifted) -> `DffTracker.update` -> `OnlineDeconvolver.update` (when online.deconvolution is
enabled). Built once the reference, the ROIs and the frame rate are known (online/startup.py); settings
online.registration, neuropil_coefficient, dff_baseline_window_s and deconvolution.
"""

from __future__ import annotations

import numpy as np

from online.deconvolution import OnlineDeconvolver, decay_factor
from online.registration import RegistrationParams, RigidRegistration, Shift
from online.rois import RoiSet
from online.settings import OnlineSettings
from online.traces import DffTracker, TraceExtractor


class FrameStage:
    """Register, extract, dF/F, deconvolve. Keeps running baselines and the deconvolution's pools, so frames
    go through in order."""

    def __init__(self, reference: np.ndarray, rois: RoiSet, frame_rate_hz: float, online: OnlineSettings,
                 registration: RegistrationParams) -> None:
        self.registration = RigidRegistration(reference, registration)
        self.extractor = TraceExtractor(rois, neuropil_coefficient=online.neuropil_coefficient,
                                        max_shift_px=registration.max_shift_px)
        self.dff = DffTracker(rois.n, frame_rate_hz, baseline_window_s=online.dff_baseline_window_s)
        deconv = online.deconvolution
        self.deconvolver = OnlineDeconvolver(
            rois.n, decay_factor(deconv.tau_decay_s, frame_rate_hz), min_spike_sd=deconv.min_spike_sd,
            penalty_sd=deconv.penalty_sd) if deconv.enabled else None

    def process(self, pixels: np.ndarray) -> tuple[Shift, np.ndarray, np.ndarray | None]:
        """The frame's shift, dF/F (n_rois,) and deconvolved activity (n_rois,; None when disabled)."""
        shift = self.registration.register(pixels)
        traces = self.extractor.extract(pixels, shift)
        dff = self.dff.update(traces.f_corrected)
        return shift, dff, None if self.deconvolver is None else self.deconvolver.update(dff)

    @property
    def bad_frames(self) -> int:
        return self.registration.bad_frames

    @property
    def clipped_shifts(self) -> int:
        return self.extractor.clipped_shifts
