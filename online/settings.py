"""The `online` section of settings.yaml: the online module's settings models, declared here, once.

The rig composes this section into its settings (rig/settings/) and validates the whole file; the
online module builds its configuration from these models (`PipelineConfig`, `DecoderConfig`), so a key
means the same thing in the file, in the rig and in the pipeline.

The online process itself is started with `OnlineProcessSettings`: the online section and the few values of
other sections it needs (per-plane frame rate, data root, endpoints and keys), which the rig writes as JSON
from its validated settings (`rig run`, `rig online`, `rig replay`) and which are checked again here. So the
online module reads no settings.yaml and imports nothing of the rig.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from online.errors import UserInputError

MAX_PROCESS_SETTINGS_BYTES = 1 << 20
"""An online-settings file larger than this is not one the rig wrote: refused unread."""

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


class RoiMatchSettings(_Section):
    """Matching ROIs across sessions: mean images registered, masks matched by overlap
    (online/roi_match.py)."""

    min_overlap: float = Field(0.5, gt=0, le=1)
    """Smallest Jaccard index (intersection over union of two masks' bodies, after registration) of a
    match."""
    max_shift_px: float = Field(40.0, ge=0, le=512)
    """Largest field-of-view displacement between two sessions searched, per axis (px)."""
    previous_sessions: int = Field(5, ge=0, le=1000)
    """The subject's most recent earlier sessions matched to each new one (0: none)."""
DecoderInput = Literal["deconvolved", "dff"]
"""What the decoders see per frame: each ROI's deconvolved activity (online/deconvolution.py) or its dF/F."""


class DeconvolutionSettings(_Section):
    """Online spike deconvolution of every ROI's dF/F (OASIS's AR(1) model, online/deconvolution.py); the
    result is published and saved beside dF/F (deconvolved.f32)."""

    enabled: bool = True
    """Deconvolve every frame (needed by online.decoder.input: deconvolved)."""
    tau_decay_s: float = Field(0.6, ge=0.01, le=30)
    """The indicator's decay time constant (s); with the per-plane frame rate it gives the AR(1) factor
    g = exp(-1 / (tau x rate)). The simulated indicator decays in 0.5-1 s (GCaMP6s about 1-1.5 s, GCaMP6f
    about 0.4 s); the short end of the range is better than too long a decay, which hides the spikes of
    sustained firing (the decoders' coding directions drift from the true ones)."""
    min_spike_sd: float = Field(1.0, ge=0, le=20)
    """Smallest spike, in noise SDs of the ROI's dF/F (OASIS's s_min; the noise is estimated per ROI)."""
    penalty_sd: float = Field(0.0, ge=0, le=20)
    """L1 sparsity penalty, in noise SDs (OASIS's lambda; 0: none, the spike size floor alone)."""


class DecoderSettings(_Section):
    """Preparatory (delay-epoch) decoding of the upcoming lick direction."""

    input: DecoderInput = "deconvolved"
    """The activity the decoders train and decode on: deconvolved (as the paper does) or dff."""

    delay_window_s: float = Field(0.6, gt=0, le=10)
    """Window before the go cue the coding direction is computed over (s)."""
    min_trials_per_side: int = Field(50, ge=1, le=10_000)
    """Correct trials per side a block's decoder needs before it decodes (the paper uses sessions with at
    least 50)."""
    trials_kept_per_side: int = Field(200, ge=2, le=100_000)
    """A block's decoder trains on its most recent this many correct trials per side (bounded memory)."""
    cd_method: CdMethod = "lda"
    """How the coding direction is computed: lda (the paper's code: per-bin LDA axes averaged over the
    window, orthogonalised against the trial average's singular vectors), classic (right-minus-left mean
    difference) or lda_eigenvector (the textbook Fisher axis; noisy with few trials)."""
    split_repeats: int = Field(10, ge=1, le=1000)
    """Random train/test halves (per side) that accuracies and similarities are averaged over (the paper's
    code uses 2)."""
    reliability_min_r: float | None = Field(None, ge=-1, le=1)
    """The paper's neuron filter: a neuron enters the CD only when the correlation of its concatenated
    left/right trial-averaged activity between the first and the second half of a block's correct trials
    is at least this (the paper uses 0.5); null keeps every neuron."""

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
    """`rig run` starts the online module on this machine; false when it runs elsewhere (`rig
    online` on an analysis PC, bound at network.frames)."""
    max_restarts: int = Field(3, ge=0, le=100)
    """Times `rig run` restarts an online module that died during the session (0: never)."""
    neuropil_coefficient: float = Field(0.7, ge=0, le=1)
    """F_cell - this x F_neuropil."""
    dff_baseline_window_s: float = Field(30.0, gt=0, le=3600)
    """Running-baseline window for dF/F (s)."""
    rois: Path | None = Field(None, strict=False)
    """The session's ROIs instead of detecting them on the reference: suite2p output (a plane folder with
    stat.npy, iscell.npy, ops.npy, or the folder of its plane0..planeN) or a rois.npz; relative to the
    working directory. `rig run --rois` overrides it; null: detect."""
    roi_match: RoiMatchSettings = Field(default_factory=RoiMatchSettings)
    """Matching a session's ROIs to the subject's previous sessions (roi_matches.json)."""
    deconvolution: DeconvolutionSettings = Field(default_factory=DeconvolutionSettings)
    """Online spike deconvolution of dF/F."""
    registration: RegistrationSettings = Field(default_factory=RegistrationSettings)
    """Motion correction."""
    decoder: DecoderSettings = Field(default_factory=DecoderSettings)
    """Preparatory decoding."""
    closed_loop: ClosedLoopSettings = Field(default_factory=ClosedLoopSettings)
    """Closed-loop output."""

    @model_validator(mode="after")
    def _decoder_input_exists(self) -> OnlineSettings:
        if self.decoder.input == "deconvolved" and not self.deconvolution.enabled:
            raise ValueError("online.decoder.input is 'deconvolved' but online.deconvolution.enabled is "
                             "false: enable deconvolution or set online.decoder.input to 'dff'")
        return self


class OnlineLinkSettings(_Section):
    """The endpoints and keys of the rig's `network` section the online module uses (validated there)."""

    events_pub: str
    """The rig's trial events (the module SUBscribes)."""
    control: str
    """The rig's control socket (closed loop in soft_code mode)."""
    frames: str
    """Lossless frame path (the module binds)."""
    online_results: str
    """Traces and decoder results (the module binds a PUB)."""
    bind_loopback_only: bool = True
    keys: Path | None = None
    authorized_keys: Path | None = None


class OnlineProcessSettings(_Section):
    """What the online process is started with (see the module docstring)."""

    version: Literal[1] = 1
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    frame_rate_hz: float = Field(gt=0, le=10_000)
    """Frames per second of one plane (imaging.frame_rate_hz / imaging.planes)."""
    planes: int = Field(1, ge=1, le=100)
    """Planes per volume (imaging.planes)."""
    channel: int = Field(0, ge=0, le=3)
    """The functional channel on the wire (imaging.functional_channel - 1)."""
    data_root: Path
    """Where a session folder is made when none is given (<data_root>/online/<date_time>)."""
    network: OnlineLinkSettings


def read_process_settings(path: Path) -> OnlineProcessSettings:
    """The online-settings JSON at `path`; a missing, oversized or invalid file is one sentence naming it."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        raise UserInputError(f"online settings {path}: a settings.yaml, not the online settings the rig "
                             "writes from it; use `rig online --settings FILE` (`rig replay ... --settings "
                             "FILE` for replay)")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PROCESS_SETTINGS_BYTES + 1)
    except OSError as exc:
        raise UserInputError(f"online settings {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_PROCESS_SETTINGS_BYTES:
        raise UserInputError(f"online settings {path}: larger than {MAX_PROCESS_SETTINGS_BYTES} bytes; not a "
                             "file the rig wrote (rig online / rig replay write it from settings.yaml)")
    try:
        return OnlineProcessSettings.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise UserInputError(f"online settings {path}: {problems}") from None
