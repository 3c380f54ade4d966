"""The `online` section of settings.yaml: the online module's settings models, declared here, once.

The rig composes this section into its settings (rig/settings.py) and validates the whole file; the
online module builds its configuration from these models (`PipelineConfig`, `DecoderConfig`), so a key
means the same thing in the file, in the rig and in the pipeline.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CdMethod = Literal["classic", "lda", "lda_eigenvector"]
"""How a coding direction is computed (online/decoding.py): classic, the mean difference; lda, the
paper's code (per-bin first right singular vector of pinv(W) B); lda_eigenvector, the same with the
textbook Fisher axis (top eigenvector of pinv(W) B)."""


class _Section(BaseModel):
    """Base of the online section's models: the rig's rules for every settings section (unknown keys are
    errors, types strict, a loaded object read-only; see rig/settings.py)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True, strict=True
    )


class RegistrationSettings(_Section):
    """Rigid motion correction against a reference image."""

    reference_frames: int = Field(50, ge=1, le=10_000)
    """Frames averaged into the reference image."""
    max_shift_px: int = Field(30, ge=0, le=512)
    """Largest shift searched, in pixels."""
    upsample: int = Field(1, ge=1, le=100)
    """Subpixel refinement of the phase-correlation peak: 1 = a Gaussian fit of the peak (subpixel,
    fastest); above 1 = an upsampled DFT around the peak at that factor (slower, no more accurate here)."""
    crop_px: int = Field(128, ge=32, le=1024)
    """Side of the centre crop registered (a smaller crop is faster; the whole frame moves rigidly)."""


class DecoderSettings(_Section):
    """Preparatory (delay-epoch) decoding of the upcoming lick direction."""

    delay_window_s: float = Field(0.6, gt=0, le=10)
    """Window before the go cue the coding direction is computed over (s)."""
    min_trials_per_side: int = Field(10, ge=1, le=10_000)
    """Correct trials per side needed before a context's decoder is trained."""
    trials_kept_per_side: int = Field(200, ge=2, le=100_000)
    """A context's decoder trains on its most recent this many correct trials per side (bounded memory)."""
    cd_method: CdMethod = "classic"
    """How the coding direction is computed: classic (right-minus-left mean difference), lda (the paper's
    code: per-bin LDA axes averaged) or lda_eigenvector (the textbook Fisher axis; noisy with few trials)."""

    @model_validator(mode="after")
    def _keeps_enough(self) -> DecoderSettings:
        if self.trials_kept_per_side < self.min_trials_per_side:
            raise ValueError(f"trials_kept_per_side ({self.trials_kept_per_side}) must be at least "
                             f"min_trials_per_side ({self.min_trials_per_side})")
        return self


class ClosedLoopSettings(_Section):
    """Feeding the decoder's prediction back into the running trial."""

    enabled: bool = False
    """Send decisions to the Bpod during the trial."""
    mode: Literal["app_port", "soft_code"] = "app_port"
    """app_port: one byte on the Bpod's APP serial port (firmware 23); soft_code: via the rig process."""
    confidence_threshold: float = Field(0.8, ge=0, le=1)
    """Send a decision only when the decoder's confidence is at least this (0-1)."""
    max_delay_s: float = Field(2.0, gt=0, le=60)
    """Decisions later than this after the frame they are based on are dropped (s)."""


class OnlineSettings(_Section):
    """The online imaging module."""

    enabled: bool = True
    """Process frames online this session: frames go on the lossless path (network.frames)."""
    start_with_rig: bool = True
    """`rig run` starts the online module on this machine; false when it runs elsewhere (`python -m
    online` on an analysis PC, bound at network.frames)."""
    max_restarts: int = Field(3, ge=0, le=100)
    """Times `rig run` restarts an online module that died during the session (0: never)."""
    neuropil_coefficient: float = Field(0.7, ge=0, le=1)
    """F_cell - this x F_neuropil."""
    dff_baseline_window_s: float = Field(30.0, gt=0, le=3600)
    """Running-baseline window for dF/F (s)."""
    registration: RegistrationSettings = Field(default_factory=RegistrationSettings)
    """Motion correction."""
    decoder: DecoderSettings = Field(default_factory=DecoderSettings)
    """Preparatory decoding."""
    closed_loop: ClosedLoopSettings = Field(default_factory=ClosedLoopSettings)
    """Closed-loop output."""
