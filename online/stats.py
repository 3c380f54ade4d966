"""The pipeline's counters: what it received, skipped and finalised, and how long frames took."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class PipelineStats:
    frames_received: int = 0
    frames_processed: int = 0
    frames_other_channel: int = 0
    frames_other_plane: int = 0
    """Frames of a plane beyond the session's planes (refused)."""
    volumes_incomplete: int = 0
    """Time points with a plane frame missing: their traces are kept, they are not decoded."""
    frames_dropped_at_setup: int = 0
    """Frames of a plane that was ready while another plane still waited, beyond what setup keeps."""
    frames_invalid: int = 0
    frames_nonfinite: int = 0
    frames_blank_at_setup: int = 0
    frames_other_size_at_setup: int = 0
    """Frames kept during setup and dropped because frames of another size became the session's."""
    references_without_rois: int = 0
    frames_without_trial: int = 0
    frames_after_trial_end: int = 0
    frames_dropped_trials: int = 0
    states: int = 0
    trial_starts: int = 0
    trial_ends: int = 0
    trials_finalised: int = 0
    trials_without_frames: int = 0
    trials_timed_out: int = 0
    processing_ns: deque[int] = field(default_factory=lambda: deque(maxlen=2000))
    latency_ns: deque[int] = field(default_factory=lambda: deque(maxlen=2000))

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("processing_ns", "latency_ns")}
        for name, values in (("processing", self.processing_ns), ("latency", self.latency_ns)):
            if values:
                arr = np.fromiter(values, np.int64) / 1e6
                out[f"{name}_p50_ms"] = round(float(np.percentile(arr, 50)), 4)
                out[f"{name}_p99_ms"] = round(float(np.percentile(arr, 99)), 4)
            else:
                out[f"{name}_p50_ms"] = out[f"{name}_p99_ms"] = None
        return out
