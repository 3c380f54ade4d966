"""The rig's settings: one typed, validated model for settings.yaml.

Every number the task, the devices and the online module use lives here, with its unit, so that code never
hides a parameter. A bad file is answered with one line per problem naming the key path, the bad value and
what is allowed (``task.timing.delay = -1: must be greater than 0``), never with a traceback.

The defaults of the model are the defaults of the repository's settings.yaml (a test keeps them equal), and
they run the embedded simulated rig. A user file may leave out anything; missing keys take these defaults.
Mappings of named things (``contexts``) and lists (``task.stages``) are replaced as a whole, not merged.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    model_validator,
)

from hardware.bpod.hardware_description import input_channel_names, output_channel_names, preset
from rig.settings.problems import _NO_VALUE, _did_you_mean, _ProblemList, _Problems, _unwrap

SelectionMode = Literal["antibias", "autolearn", "random", "fixed", "both_rewarded"]
Side = Literal["left", "right"]
BpodModel = Literal["r1", "r2", "r2plus"]


# --------------------------------------------------------------------------------------------------------
# Base


class _Section(BaseModel):
    """Base of every settings section: unknown keys are errors, types are strict and a loaded settings
    object is read-only.

    Strict, because a lax model turns `true` into 1.0 and '3' into 3: a typo in a file would run a session
    with a number nobody wrote. A whole number is still a number (2 for 2.0), and a path is written as text.
    Read-only because the session snapshot written to disk must be exactly what ran; derive changed
    settings with ``load_settings(overrides=...)`` or ``model_copy(update=...)``.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True, strict=True
    )

    @model_validator(mode="before")
    @classmethod
    def _paths_from_text(cls, data: Any) -> Any:
        """YAML has no path type: text given for a Path field becomes a Path (strict mode refuses text)."""
        if not isinstance(data, Mapping):
            return data
        paths = {name: Path(data[name]) for name, info in cls.model_fields.items()
                 if isinstance(data.get(name), str) and _unwrap(info.annotation) is Path}
        return {**data, **paths} if paths else data


# --------------------------------------------------------------------------------------------------------
# rig, bpod


class RigSettings(_Section):
    """Which rig this is; recorded in every session."""

    name: str = Field("sim-rig", min_length=1, max_length=100)
    """Rig name written to session.json."""


class ValvePoint(_Section):
    """One valve-calibration measurement: opening the valve this long delivers this volume."""

    valve_time_s: float = Field(gt=0, le=1.0)
    """Valve open time in seconds."""
    volume_ul: float = Field(gt=0, le=100)
    """Measured volume per opening in microlitres."""


class ValveCalibrationError(ValueError):
    """A requested volume is outside what a valve calibration can deliver."""


def valve_time_s(points: Sequence[ValvePoint], volume_ul: float) -> float:
    """Valve open time (s) that delivers ``volume_ul``, by linear interpolation between calibration points.

    Between the outermost points the curve is interpolated; outside them the end segments are extended,
    but only from half the smallest to twice the largest calibrated volume, and only while the time stays
    positive: farther out a straight line is a guess, and a wrong reward size silently changes the task.
    """
    if len(points) < 2:
        raise ValveCalibrationError("a valve calibration needs at least 2 points")
    pts = sorted(points, key=lambda p: p.volume_ul)
    v_min, v_max = pts[0].volume_ul, pts[-1].volume_ul
    lo, hi = v_min / 2, v_max * 2
    if not lo <= volume_ul <= hi:
        raise ValveCalibrationError(
            f"{volume_ul:g} uL is outside the valve calibration (calibrated {v_min:g}-{v_max:g} uL; "
            f"extrapolated at most to {lo:g}-{hi:g} uL); recalibrate the valve"
        )
    if volume_ul <= pts[0].volume_ul:
        a, b = pts[0], pts[1]
    elif volume_ul >= pts[-1].volume_ul:
        a, b = pts[-2], pts[-1]
    else:
        i = next(k for k in range(1, len(pts)) if pts[k].volume_ul >= volume_ul)
        a, b = pts[i - 1], pts[i]
    slope = (b.valve_time_s - a.valve_time_s) / (b.volume_ul - a.volume_ul)
    t = a.valve_time_s + slope * (volume_ul - a.volume_ul)
    if t <= 0:
        raise ValveCalibrationError(
            f"{volume_ul:g} uL extrapolates to a valve time of {t:g} s; recalibrate the valve"
        )
    return t


class ValveCurve(RootModel[list[ValvePoint]]):
    """A valve's calibration points, at least two, with time and volume both strictly increasing."""

    model_config = ConfigDict(frozen=True, validate_default=True, strict=True)

    @model_validator(mode="after")
    def _check_points(self) -> ValveCurve:
        points = self.root
        if len(points) < 2:
            raise ValueError(f"needs at least 2 calibration points, got {len(points)}")
        for i in range(1, len(points)):
            prev, cur = points[i - 1], points[i]
            if cur.valve_time_s <= prev.valve_time_s or cur.volume_ul <= prev.volume_ul:
                raise ValueError(
                    f"points must strictly increase in valve_time_s and volume_ul; point [{i}] "
                    f"({cur.valve_time_s:g} s, {cur.volume_ul:g} uL) does not follow point [{i - 1}] "
                    f"({prev.valve_time_s:g} s, {prev.volume_ul:g} uL)"
                )
        return self

    def valve_time_s(self, volume_ul: float) -> float:
        """Valve open time (s) for ``volume_ul``; see the module function :func:`valve_time_s`."""
        return valve_time_s(self.root, volume_ul)


def _default_valve_curve() -> ValveCurve:
    # ~2.5 uL at 0.03 s, as in the lab's rig protocols; every rig must measure its own.
    return ValveCurve(
        [
            ValvePoint(valve_time_s=0.015, volume_ul=1.0),
            ValvePoint(valve_time_s=0.03, volume_ul=2.5),
            ValvePoint(valve_time_s=0.06, volume_ul=5.5),
        ]
    )


class ValveCalibration(_Section):
    """Calibration curve per reward valve, named by the side it serves."""

    left: ValveCurve = Field(default_factory=_default_valve_curve)
    """Left valve: list of {valve_time_s, volume_ul}."""
    right: ValveCurve = Field(default_factory=_default_valve_curve)
    """Right valve: list of {valve_time_s, volume_ul}."""

    def valve_time_s(self, valve: Side, volume_ul: float) -> float:
        """Valve open time (s) that delivers ``volume_ul`` from the ``left`` or ``right`` valve."""
        curve: ValveCurve = getattr(self, valve)
        return curve.valve_time_s(volume_ul)


class BpodSettings(_Section):
    """The Bpod state machine: where it is and how it is calibrated."""

    port: str = Field("emulator", min_length=1)
    """Serial device (/dev/ttyACM0, COM3), or 'emulator' to start the built-in emulator on a pty."""
    firmware: Literal[22, 23] = 23
    """Firmware version the emulator speaks (a real Bpod reports its own). 23 adds the APP port."""
    model: BpodModel = "r2"
    """Hardware model: r2 (Bpod 2.x), r2plus (Bpod 2+), r1 (Bpod 0.7-1.0); decides which lines exist."""
    emulator_speed: float = Field(1.0, gt=0, le=1000)
    """How many times faster than real time the emulator's virtual clock runs."""
    timeout_s: float = Field(1.0, gt=0, le=60)
    """Serial read timeout in seconds; a device silent for longer is reported as not responding."""
    app_port: str | None = None
    """Firmware 23: the Bpod's second (APP) serial port, for closed-loop bytes from the online module
    (/dev/ttyACM1). Not needed with the emulator, which reports its own."""
    valve_calibration: ValveCalibration = Field(default_factory=ValveCalibration)
    """Valve open time <-> delivered volume, per valve."""


# --------------------------------------------------------------------------------------------------------
# wiring

_INPUT_ROLES = ("left_lick", "right_lick")
_VALVE_ROLES = ("left_valve", "right_valve")

_FIRMWARE_BY_MODEL: dict[str, tuple[int, ...]] = {"r1": (22, 23), "r2": (22, 23), "r2plus": (23,)}
_WIRABLE = re.compile(r"(Port|BNC|Wire|PWM|Valve)\d+")


def bpod_line_names(model: str) -> tuple[list[str], list[str]]:
    """Names of the (inputs, outputs) a Bpod ``model`` has that can be wired to a role, from the
    hardware description the device reports (serial, USB and the configurable r2+ Flex lines excluded)."""
    hw = preset(model, _FIRMWARE_BY_MODEL[model][-1])
    inputs = [n for n in input_channel_names(hw) if _WIRABLE.fullmatch(n)]
    outputs = [n for n in output_channel_names(hw) if _WIRABLE.fullmatch(n)]
    return inputs, outputs


def _summarise_lines(names: Sequence[str]) -> str:
    """'Port1-4, BNC1-2' instead of eight names."""
    groups: dict[str, list[int]] = {}
    for name in names:
        m = re.fullmatch(r"([A-Za-z]+)(\d+)", name)
        assert m is not None
        groups.setdefault(m.group(1), []).append(int(m.group(2)))
    return ", ".join(f"{k}{min(v)}-{max(v)}" if len(v) > 1 else f"{k}{v[0]}" for k, v in groups.items())


class WiringSettings(_Section):
    """Which Bpod line plays which role; the task refers to roles only, so rewiring is a settings change.

    Inputs are behaviour ports (lick detectors); outputs are BNC, wire, PWM (port LED line) or valve lines.
    The tone lines are TTL inputs of an external tone generator.
    """

    left_lick: str = "Port1"
    """Input: left lick detector."""
    right_lick: str = "Port2"
    """Input: right lick detector."""
    left_valve: str = "Valve1"
    """Output: left reward valve."""
    right_valve: str = "Valve2"
    """Output: right reward valve."""
    pole: str = "BNC2"
    """Output: high moves the pole in (tactile sample cue)."""
    sample_tone_high: str = "PWM3"
    """Output: high-frequency sample tone (10 kHz, auditory contexts)."""
    sample_tone_low: str = "PWM2"
    """Output: low-frequency sample tone (2 kHz, auditory contexts); PWM2 is the unused LED line of port 2."""
    go_cue: str = "PWM4"
    """Output: go-cue tone (~3.7 kHz) in ResponseCue."""
    imaging_trigger: str = "BNC1"
    """Output: TTL at trial start that triggers the microscope (one acquisition per trial)."""

    def check_against(self, model: str) -> list[tuple[tuple[str | int, ...], Any, str]]:
        """Problems with this wiring on a Bpod ``model``: unknown lines, wrong direction, shared lines."""
        inputs, outputs = bpod_line_names(model)
        valves = [name for name in outputs if name.startswith("Valve")]
        problems: list[tuple[tuple[str | int, ...], Any, str]] = []
        used: dict[str, str] = {}
        for role in type(self).model_fields:
            line: str = getattr(self, role)
            if role in _INPUT_ROLES:
                valid, kind = inputs, "an input"
            elif role in _VALVE_ROLES:
                valid, kind = valves, "a valve output"
            else:
                valid, kind = outputs, "an output"
            if line not in valid:
                hint = _did_you_mean(line, valid)
                suggestion = f"; did you mean {hint!r}?" if hint else ""
                problems.append(
                    (
                        (role,),
                        line,
                        f"not {kind} of a Bpod {model} ({_summarise_lines(valid)}){suggestion}",
                    )
                )
                continue
            key = f"{'in' if role in _INPUT_ROLES else 'out'}:{line}"
            if key in used:
                problems.append(((role,), line, f"already used by wiring.{used[key]}"))
            else:
                used[key] = role
        return problems


# --------------------------------------------------------------------------------------------------------
# task


class TimingSettings(_Section):
    """State durations, in seconds. The delay and the error timeout belong to the training stage
    (`task.stages[].delay_s`, `timeout_s`), so they are not here."""

    trig_trial_start: float = Field(0.01, gt=0, le=60)
    """TrigTrialStart: imaging-trigger pulse at trial start (s)."""
    sample: float = Field(1.3, gt=0, le=60)
    """SamplePeriod: cue presented (s)."""
    early_lick_sample: float = Field(0.05, gt=0, le=60)
    """EarlyLickSample: pause before the sample epoch restarts after an early lick (s)."""
    early_lick_delay: float = Field(0.05, gt=0, le=60)
    """EarlyLickDelay: pause before the delay epoch restarts after an early lick (s)."""
    response_cue: float = Field(0.1, gt=0, le=60)
    """ResponseCue: go-cue tone (s)."""
    answer_period: float = Field(2.0, gt=0, le=60)
    """AnswerPeriod: window for the first lick after the go cue (s)."""
    reward_consumption: float = Field(1.0, gt=0, le=60)
    """RewardConsumption: time to drink after a reward (s)."""
    no_response: float = Field(0.01, gt=0, le=60)
    """NoResponse: state entered when no lick came in the answer period (s)."""
    stop_licking: float = Field(1.0, gt=0, le=60)
    """StopLicking: the mouse must not lick for this long before the trial ends; a lick restarts it (s)."""
    trial_end: float = Field(0.01, gt=0, le=60)
    """TrialEnd (s)."""


class SelectionSettings(_Section):
    """How the next trial's side is chosen (the stage's selection mode replaces ``mode`` while training)."""

    mode: SelectionMode = "antibias"
    """antibias, autolearn, random, fixed, or both_rewarded (early habituation)."""
    history: int = Field(30, ge=1, le=1000)
    """Antibias: number of recent trials the side probabilities are computed from."""
    max_same: int = Field(3, ge=1, le=100)
    """Never more than this many same-side trials in a row."""
    min_correct: int = Field(1, ge=0, le=100)
    """Keep presenting a side until it has at least this many correct among its recent trials."""
    max_incorrect: int = Field(3, ge=0, le=100)
    """With min_correct, sets how many recent trials of a side are looked at: max(this + min_correct, 5)."""
    autolearn_streak: int = Field(3, ge=1, le=100)
    """Autolearn: stay on a side until this many correct in a row."""
    fixed_side: Side = "left"
    """Fixed: the side every trial uses."""


class AutoRewardSettings(_Section):
    """Free drop on the correct side before the go cue, to rescue a mouse stuck on one side."""

    enabled: bool = True
    """Give free drops at all."""
    after_errors: int = Field(3, ge=1, le=100)
    """Consecutive errors on one side that trigger a free drop on that side's next trial."""
    min_trials_since_last: int = Field(3, ge=0, le=1000)
    """At least this many trials since the last free drop."""


class AdvanceCriterion(_Section):
    """When a training stage is passed: enough trials, and performance above threshold over a window."""

    min_trials: int = Field(ge=0, le=100_000)
    """Trials done in the stage (more than this many)."""
    perf_threshold: float = Field(ge=0, le=1)
    """Fraction correct among answered trials in the window (0-1)."""
    window: int = Field(ge=1, le=1000)
    """Number of most recent trials the performance is computed over."""


def _check_stage_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError("stage names use letters, digits, '.', '-' and '_' and start with a letter or digit")
    return name


class TrainingStage(_Section):
    """One step of the training progression; the subject advances when ``advance`` is met.

    On the last stage, meeting ``advance`` marks the task as learned, which allows context switches.
    """

    name: Annotated[str, AfterValidator(_check_stage_name)]
    """Stage name, stored in the subject's state."""
    delay_s: float = Field(gt=0, le=60)
    """DelayPeriod duration in this stage (s)."""
    timeout_s: float = Field(gt=0, le=60)
    """TimeOut after an error in this stage (s)."""
    selection: SelectionMode
    """Trial-selection mode used in this stage."""
    sample_enforcement: bool = False
    """Licks in the sample epoch restart it (EarlyLickSample)."""
    advance: AdvanceCriterion
    """Criterion to leave this stage."""


def _default_stages() -> list[TrainingStage]:
    """The home-cage progression: sample stage, antibias, delay ramp 0.3 -> 1.3 s, full task."""

    def stage(
        name: str, delay: float, timeout: float, mode: str, enforce: bool, crit: tuple
    ) -> TrainingStage:
        return TrainingStage.model_validate(
            {
                "name": name,
                "delay_s": delay,
                "timeout_s": timeout,
                "selection": mode,
                "sample_enforcement": enforce,
                "advance": dict(zip(("min_trials", "perf_threshold", "window"), crit, strict=True)),
            }
        )

    stages = [
        stage("sample", 0.3, 1.0, "autolearn", False, (200, 0.0, 100)),
        stage("sample-antibias", 0.3, 3.0, "antibias", False, (100, 0.75, 100)),
    ]
    for delay in (0.3, 0.5, 0.8, 1.0, 1.3):
        stages.append(stage(f"delay-{delay:.1f}", delay, 3.0, "antibias", False, (100, 0.70, 30)))
    stages.append(stage("full", 1.3, 4.0, "antibias", True, (500, 0.70, 100)))
    return stages


class ContextSwitchSettings(_Section):
    """Automatic, uncued context switches at criterion once the last training stage is passed."""

    enabled: bool = True
    """Switch automatically (the experimenter can always switch by command)."""
    min_trials: int = Field(300, ge=0, le=100_000)
    """More than this many trials in the current context."""
    perf_threshold: float = Field(0.75, ge=0, le=1)
    """Perf100 (fraction correct among answered trials of the last 100) above this (0-1)."""
    min_answered_last_100: int = Field(70, ge=0, le=100)
    """More than this many of the last 100 trials answered."""
    sequence: list[str] = Field(default_factory=lambda: ["tactile", "tactile-reversed"])
    """Contexts in switching order; after the last comes the first again (1 -> 2 -> 1' -> 2')."""


class TaskSettings(_Section):
    """The delayed-response directional-licking task."""

    default_context: str = "tactile"
    """Context of a new subject."""
    reward_volume_ul: float = Field(2.5, gt=0, le=20)
    """Water per reward in microlitres; the valve time comes from bpod.valve_calibration."""
    timing: TimingSettings = Field(default_factory=TimingSettings)
    """State durations (s)."""
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    """Trial-side selection."""
    auto_reward: AutoRewardSettings = Field(default_factory=AutoRewardSettings)
    """Free drops after repeated errors."""
    stages: list[TrainingStage] = Field(default_factory=_default_stages, min_length=1)
    """Training stages in order; a new subject starts at the first."""
    context_switch: ContextSwitchSettings = Field(default_factory=ContextSwitchSettings)
    """Automatic context switching."""

    @model_validator(mode="after")
    def _check_stages(self) -> TaskSettings:
        problems = _ProblemList()
        first_index: dict[str, int] = {}
        for i, stage in enumerate(self.stages):
            if stage.name in first_index:
                problems.add(
                    ("stages", i, "name"),
                    f"duplicate stage name (also task.stages[{first_index[stage.name]}])",
                    stage.name,
                )
            first_index.setdefault(stage.name, i)
        switch = self.context_switch
        if switch.enabled and len(set(switch.sequence)) < 2:
            problems.add(
                ("context_switch", "sequence"),
                "needs at least two different contexts while context_switch.enabled is true",
                switch.sequence,
            )
        problems.raise_if_any()
        return self


# --------------------------------------------------------------------------------------------------------
# contexts


class ContextSettings(_Section):
    """A task context: which cue is given and which lick it asks for."""

    modality: Literal["tactile", "auditory"]
    """tactile: pole posterior/anterior; auditory: tone high/low."""
    contingency: Literal["normal", "reversed"]
    """normal: posterior pole or high tone -> lick right; reversed swaps the sides."""


def _default_contexts() -> dict[str, ContextSettings]:
    return {
        "tactile": ContextSettings(modality="tactile", contingency="normal"),
        "tactile-reversed": ContextSettings(modality="tactile", contingency="reversed"),
        "auditory": ContextSettings(modality="auditory", contingency="normal"),
        "auditory-reversed": ContextSettings(modality="auditory", contingency="reversed"),
    }


# --------------------------------------------------------------------------------------------------------
# imaging, online


class ImagingSettings(_Section):
    """Where frames come from and what they look like."""

    source: Literal["simulated", "scanimage_folder", "scanimage_stream", "none"] = "simulated"
    """simulated microscope, a ScanImage output folder followed as files appear, a live stream, or none
    (behaviour only, e.g. training sessions without the microscope)."""
    frame_height: int = Field(512, ge=16, le=4096)
    """Lines per frame (pixels)."""
    frame_width: int = Field(512, ge=16, le=4096)
    """Pixels per line."""
    frame_rate_hz: float = Field(30.0, gt=0, le=1000)
    """Frame rate over all planes (Hz); the per-plane rate is this divided by planes."""
    planes: int = Field(1, ge=1, le=100)
    """Number of imaging planes (volume scanning)."""
    channels: int = Field(1, ge=1, le=4)
    """Number of colour channels saved."""
    dtype: Literal["int16", "uint16"] = "int16"
    """Pixel type (ScanImage writes int16)."""
    scanimage_folder: Path | None = None
    """Folder ScanImage writes into; required when source is scanimage_folder."""
    stream_endpoint: str = "tcp://127.0.0.1:5560"
    """ScanImage's ZeroMQ frame stream (its PUB) to connect to when source is scanimage_stream."""
    write_tiff: bool = False
    """Simulated source: also write ScanImage TIFF files, one per trial, into <session>/imaging/."""
    silence_timeout_s: float | None = Field(10.0, gt=0, le=3600)
    """scanimage_folder: end the session when no new frame arrived for this long while trials run (host
    seconds; the microscope stopped or its disk is gone); null: never."""

    @model_validator(mode="after")
    def _check_folder(self) -> ImagingSettings:
        if self.source == "scanimage_folder" and self.scanimage_folder is None:
            raise _Problems(
                [(("scanimage_folder",), _NO_VALUE, "required when imaging.source is 'scanimage_folder'")]
            )
        return self

    @model_validator(mode="after")
    def _check_stream_endpoint(self) -> ImagingSettings:
        try:
            _check_endpoint(self.stream_endpoint)
        except ValueError as exc:
            raise _Problems([(("stream_endpoint",), self.stream_endpoint, str(exc))]) from None
        return self


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


# --------------------------------------------------------------------------------------------------------
# sim


class NormalDistribution(_Section):
    """Mean and standard deviation of a normally distributed quantity (same unit as the field name)."""

    mean: float = Field(gt=0, le=10)
    """Mean."""
    sd: float = Field(ge=0, le=10)
    """Standard deviation."""


class MouseSimSettings(_Section):
    """The simulated mouse: licking and learning."""

    lick_rate_hz: float = Field(6.0, gt=0, le=20)
    """Lick rate within a bout (Hz)."""
    reaction_time_s: NormalDistribution = Field(default_factory=lambda: NormalDistribution(mean=0.3, sd=0.1))
    """First-lick latency after the go cue (s)."""
    early_lick_prob: float = Field(0.1, ge=0, le=1)
    """Probability of licking during the sample or delay epoch, per epoch."""
    side_bias: float = Field(0.0, ge=-1, le=1)
    """Preference for one side: -1 always left, +1 always right, 0 none."""
    learning_rate: float = Field(0.02, ge=0, le=1)
    """How fast the cue-to-side mapping is learned, per rewarded trial."""
    lapse: float = Field(0.05, ge=0, le=1)
    """Probability of a random choice or no lick regardless of learning."""


class MicroscopeSimSettings(_Section):
    """The simulated two-photon microscope."""

    n_neurons: int = Field(200, ge=1, le=5000)
    """Neurons in the field of view."""
    noise: float = Field(0.1, ge=0, le=10)
    """Pixel noise standard deviation, as a fraction of baseline brightness."""
    motion_px: float = Field(2.0, ge=0, le=50)
    """Largest rigid motion of the field of view (pixels)."""
    neuron_radius_px: float = Field(5.0, gt=0, le=50)
    """Radius of a simulated soma (pixels)."""
    selective_fraction: float = Field(0.3, ge=0, le=1)
    """Fraction of neurons whose delay activity depends on the upcoming lick direction."""
    context_overlap: float = Field(0.0, ge=0, le=1)
    """Overlap of the direction-selective populations of two contexts (0 = new pattern, 1 = the same)."""


class SimSubjectSettings(_Section):
    """Where a NEW simulated subject starts: simulated mice arrive trained, so a demo session shows the
    trained task and a context switch within a few hundred trials. Real subjects start at the first stage."""

    stage: str = "full"
    """Training stage of a new simulated subject (a name from task.stages)."""
    task_learned: bool = True
    """Whether it has already met the last stage's criterion (context switches at criterion allowed)."""
    trained_context: str = "tactile"
    """The context whose cue-to-side mapping the simulated mouse already knows (and starts in)."""
    trials_in_context: int = Field(250, ge=0)
    """Trials it is credited with in that context, counted towards task.context_switch.min_trials."""


class SimSettings(_Section):
    """The embedded simulated rig (used when bpod.port is 'emulator' and imaging.source is 'simulated')."""

    seed: int | None = Field(0, ge=0)
    """Random seed, so a simulated session can be reproduced; null draws a fresh one."""
    mouse: MouseSimSettings = Field(default_factory=MouseSimSettings)
    """Simulated mouse."""
    microscope: MicroscopeSimSettings = Field(default_factory=MicroscopeSimSettings)
    """Simulated microscope."""
    subject: SimSubjectSettings = Field(default_factory=SimSubjectSettings)
    """Starting point of a new simulated subject."""


# --------------------------------------------------------------------------------------------------------
# data, network


class DataSettings(_Section):
    """Where sessions are stored."""

    root: Path = Path("data")
    """Data root (<root>/<subject>/<date_time>/ per session); relative to the working directory."""


_ENDPOINT = re.compile(r"(?P<transport>tcp|ipc|inproc)://(?P<address>.+)")
_TCP_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(?P<port>\d{1,5})")


def _check_endpoint(endpoint: str) -> str:
    m = _ENDPOINT.fullmatch(endpoint)
    if m is None:
        raise ValueError("must look like tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    if m["transport"] == "tcp":
        tcp = _TCP_ADDRESS.fullmatch(m["address"])
        if tcp is None or not 1 <= int(tcp["port"]) <= 65535:
            raise ValueError("must look like tcp://HOST:PORT with a port from 1 to 65535")
    return endpoint


def endpoint_is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint stays on this machine (ipc, inproc, or tcp on a loopback address)."""
    m = _ENDPOINT.fullmatch(endpoint)
    if m is None:
        return False
    if m["transport"] != "tcp":
        return True
    tcp = _TCP_ADDRESS.fullmatch(m["address"])
    if tcp is None:
        return False
    host = tcp["host"].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]


class NetworkSettings(_Section):
    """ZeroMQ endpoints; one machine or three is a matter of these addresses."""

    events_pub: Endpoint = "tcp://127.0.0.1:5555"
    """Rig publishes trial events (PUB)."""
    control: Endpoint = "tcp://127.0.0.1:5556"
    """Rig answers control requests: switch context, pause, stop, status (REP)."""
    frames: Endpoint = "tcp://127.0.0.1:5557"
    """Lossless frame path to the online module (back-pressure)."""
    frames_display: Endpoint = "tcp://127.0.0.1:5558"
    """Lossy latest-wins frame path for displays."""
    online_results: Endpoint = "tcp://127.0.0.1:5559"
    """Online module publishes traces and decoder results (PUB)."""
    bind_loopback_only: bool = True
    """Refuse endpoints off this machine; with false, every endpoint off loopback uses ZeroMQ CURVE."""
    keys: Path | None = None
    """Folder of this machine's CURVE key pair, made by `rig keys` (needed for endpoints off loopback)."""
    authorized_keys: Path | None = None
    """Folder of the public keys (.key) of the machines allowed in; the server of an endpoint is the key
    named after its host (tcp://10.0.0.1:5555 -> 10.0.0.1.key)."""

    @model_validator(mode="after")
    def _check_endpoints(self) -> NetworkSettings:
        problems = _ProblemList()
        seen: dict[str, str] = {}
        remote: list[str] = []
        for key in ("events_pub", "control", "frames", "frames_display", "online_results"):
            endpoint: str = getattr(self, key)
            if not endpoint_is_loopback(endpoint):
                remote.append(f"network.{key} = {endpoint}")
                if self.bind_loopback_only:
                    problems.add(
                        (key,),
                        "not a loopback address while network.bind_loopback_only is true "
                        "(use 127.0.0.1, or set bind_loopback_only: false to bind elsewhere)",
                        endpoint,
                    )
            if endpoint in seen:
                problems.add((key,), f"same endpoint as network.{seen[endpoint]}", endpoint)
            seen.setdefault(endpoint, key)
        if remote and not self.bind_loopback_only:
            for key in ("keys", "authorized_keys"):
                if getattr(self, key) is None:
                    problems.add((key,), f"needed, since {remote[0]} is not a loopback address: every "
                                 "socket off loopback uses CURVE (make this machine's key pair with "
                                 "`rig keys`)")
        problems.raise_if_any()
        return self


# --------------------------------------------------------------------------------------------------------
# the whole file


def _check_context_name(name: str) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ValueError("context names use lowercase letters, digits, '-' and '_'")


class Settings(_Section):
    """Everything the rig needs to run a session; the root of settings.yaml."""

    rig: RigSettings = Field(default_factory=RigSettings)
    """This rig."""
    bpod: BpodSettings = Field(default_factory=BpodSettings)
    """The Bpod state machine."""
    wiring: WiringSettings = Field(default_factory=WiringSettings)
    """Role -> Bpod line."""
    task: TaskSettings = Field(default_factory=TaskSettings)
    """The directional-licking task and its training."""
    contexts: dict[str, ContextSettings] = Field(default_factory=_default_contexts, min_length=1)
    """Task contexts by name."""
    imaging: ImagingSettings = Field(default_factory=ImagingSettings)
    """Frame source."""
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    """Online imaging module."""
    sim: SimSettings = Field(default_factory=SimSettings)
    """Simulated mouse and microscope."""
    data: DataSettings = Field(default_factory=DataSettings)
    """Data storage."""
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    """ZeroMQ endpoints."""

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        """Cross-section checks: context names, reward volume vs calibration, wiring vs model, firmware."""
        problems = _ProblemList()
        names = list(self.contexts)
        for name in names:
            try:
                _check_context_name(name)
            except ValueError as exc:
                problems.add(("contexts", name), str(exc))

        def check_context(path: tuple[str | int, ...], name: str) -> None:
            if name in self.contexts:
                return
            hint = _did_you_mean(name, names)
            suggestion = f"did you mean {hint!r}? " if hint else ""
            problems.add(path, f"unknown context ({suggestion}contexts: {', '.join(names)})", name)

        check_context(("task", "default_context"), self.task.default_context)
        for i, name in enumerate(self.task.context_switch.sequence):
            check_context(("task", "context_switch", "sequence", i), name)
        check_context(("sim", "subject", "trained_context"), self.sim.subject.trained_context)
        stage_names = [stage.name for stage in self.task.stages]
        if self.sim.subject.stage not in stage_names:
            hint = _did_you_mean(self.sim.subject.stage, stage_names)
            suggestion = f"did you mean {hint!r}? " if hint else ""
            message = f"unknown stage ({suggestion}stages: {', '.join(stage_names)})"
            problems.add(("sim", "subject", "stage"), message, self.sim.subject.stage)

        valve_problems: dict[str, list[str]] = {}  # message -> sides, so equal curves give one line
        for side in ("left", "right"):
            try:
                self.bpod.valve_calibration.valve_time_s(side, self.task.reward_volume_ul)
            except ValveCalibrationError as exc:
                valve_problems.setdefault(str(exc), []).append(side)
        for message, sides in valve_problems.items():
            which = " and ".join(sides) + (" valves" if len(sides) > 1 else " valve")
            problems.add(("task", "reward_volume_ul"), f"{which}: {message}", self.task.reward_volume_ul)

        for path, value, message in self.wiring.check_against(self.bpod.model):
            problems.add(("wiring", *path), message, value)

        if self.bpod.firmware not in _FIRMWARE_BY_MODEL[self.bpod.model]:
            allowed = ", ".join(map(str, _FIRMWARE_BY_MODEL[self.bpod.model]))
            problems.add(
                ("bpod", "firmware"),
                f"a Bpod {self.bpod.model} runs firmware {allowed} only",
                self.bpod.firmware,
            )

        loop = self.online.closed_loop
        if loop.enabled and loop.mode == "app_port" and self.bpod.firmware != 23:
            problems.add(
                ("online", "closed_loop", "mode"),
                f"needs bpod.firmware 23 (the APP serial port), firmware is {self.bpod.firmware}",
                loop.mode,
            )
        problems.raise_if_any()
        return self

    def reward_valve_time_s(self, side: Side) -> float:
        """Valve open time (s) that delivers task.reward_volume_ul on ``side``."""
        return self.bpod.valve_calibration.valve_time_s(side, self.task.reward_volume_ul)

