"""How the online pipeline runs: the settings' online section plus what only the process or a test chooses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from online.alignment import DEFAULT_EPOCH_STATES, EpochStates
from online.registration import RegistrationParams
from online.settings import OnlineSettings

Alignment = Literal["trigger", "aux"]


@dataclass(frozen=True)
class PipelineConfig:
    """How the pipeline processes frames: settings online (`online`), the imaging's per-plane frame rate,
    and what only the process or a test chooses (alignment, channel, plane, ROI detection, bookkeeping)."""

    online: OnlineSettings = field(default_factory=OnlineSettings)
    """settings online: registration, neuropil, dF/F baseline, decoder."""
    frame_rate_hz: float = 30.0
    """Nominal per-plane frame rate (= the volume rate); the measured rate replaces it when frames carry
    timestamps."""
    measure_frame_rate: bool = True
    alignment: Alignment = "trigger"
    frame_offset_s: float | None = None
    """Added to every frame's time in trial; None = half a frame period (the frame's centre)."""
    channel: int = 0
    """The functional channel (wire numbering: ScanImage channel - 1); other channels' frames are skipped."""
    planes: int = 1
    """Planes per volume (settings imaging.planes); frames of planes 0..planes-1 are processed."""
    max_rois: int = 500
    """Per plane, when ROIs are detected."""
    roi_radius_px: float | None = None
    """detect_rois cell radius; None = 5 px at 512 px, scaled with the frame size."""
    finalize_timeout_s: float = 5.0
    """Host seconds after a trial's record to wait for its frames before deciding without them."""
    trials_kept: int = 6
    """Trials with frames but no record yet that are kept in memory (older ones are dropped)."""
    epoch_states: EpochStates = DEFAULT_EPOCH_STATES
    include_free_drop: bool = False
    """Correct trials with a free drop (auto-reward) train the decoder too."""

    def __post_init__(self) -> None:
        if not self.frame_rate_hz > 0:
            raise ValueError(f"frame_rate_hz must be positive, got {self.frame_rate_hz}")
        if self.alignment not in ("trigger", "aux"):
            raise ValueError(f"alignment must be 'trigger' or 'aux', got {self.alignment!r}")
        if self.planes < 1 or self.channel < 0:
            raise ValueError(f"planes must be at least 1 and channel at least 0, got {self.planes}, "
                             f"{self.channel}")
        if self.max_rois < 1:
            raise ValueError(f"max_rois must be at least 1, got {self.max_rois}")

    @property
    def registration(self) -> RegistrationParams:
        """settings online.registration as the registration core's parameters."""
        reg = self.online.registration
        return RegistrationParams(crop_px=reg.crop_px, max_shift_px=float(reg.max_shift_px),
                                  upsample=reg.upsample)
