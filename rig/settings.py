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
import logging
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    model_validator,
)

from hardware.bpod.hardware_description import input_channel_names, output_channel_names, preset
from online.wire import did_you_mean
from rig.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS_PATH: Path = Path(__file__).resolve().parent.parent / "settings.yaml"
"""The repository's settings.yaml, used when no file is given."""

SelectionMode = Literal["antibias", "autolearn", "random", "fixed", "both_rewarded"]
Side = Literal["left", "right"]
BpodModel = Literal["r1", "r2", "r2plus"]

_NO_VALUE: Any = object()
"""Marks a problem that has no value to show (an unknown or missing key)."""


# --------------------------------------------------------------------------------------------------------
# Problems found by cross-field validators


class _Problems(ValueError):
    """Several problems found by one validator, each at its own key path below the validated model.

    Pydantic keeps the exception object in the error's context, so the converter can expand it into one
    line per problem instead of one vague line for the whole section.
    """

    def __init__(self, items: Sequence[tuple[tuple[str | int, ...], Any, str]]) -> None:
        self.items = list(items)
        super().__init__("; ".join(format_problem(path, message, value) for path, value, message in items))


class _ProblemList:
    """Collects (path, value, message) triples and raises them together."""

    def __init__(self) -> None:
        self.items: list[tuple[tuple[str | int, ...], Any, str]] = []

    def add(self, path: tuple[str | int, ...], message: str, value: Any = _NO_VALUE) -> None:
        self.items.append((path, value, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise _Problems(self.items)


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
                hint = did_you_mean(line, valid)
                suggestion = f"; {hint}" if hint else ""
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
            hint = did_you_mean(name, names)
            suggestion = f"{hint} " if hint else ""
            problems.add(path, f"unknown context ({suggestion}contexts: {', '.join(names)})", name)

        check_context(("task", "default_context"), self.task.default_context)
        for i, name in enumerate(self.task.context_switch.sequence):
            check_context(("task", "context_switch", "sequence", i), name)
        check_context(("sim", "subject", "trained_context"), self.sim.subject.trained_context)
        stage_names = [stage.name for stage in self.task.stages]
        if self.sim.subject.stage not in stage_names:
            hint = did_you_mean(self.sim.subject.stage, stage_names)
            suggestion = f"{hint} " if hint else ""
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


# --------------------------------------------------------------------------------------------------------
# errors: pydantic's ValidationError -> one line per problem


class SettingsError(UserError):
    """The settings cannot be used; ``problems`` holds one line per problem, ``str()`` joins them."""

    def __init__(self, problems: Sequence[str], source: Path | None = None) -> None:
        self._problems = list(problems)
        self.source = source
        super().__init__("\n".join(self._problems))

    @property
    def problems(self) -> list[str]:
        return list(self._problems)

    @classmethod
    def from_validation_error(
        cls, error: ValidationError, source: Path | None = None, root: type[BaseModel] | None = None
    ) -> SettingsError:
        """Translate pydantic's errors (validated against ``root``, default Settings) into problem lines."""
        root = root or Settings
        lines: list[str] = []
        for err in error.errors(include_url=False):
            for line in _describe_error(err, root):
                if line not in lines:
                    lines.append(line)
        return cls(lines, source)


def format_problem(path: Sequence[str | int], message: str, value: Any = _NO_VALUE) -> str:
    """``a.b[2].c = value: message``, or ``a.b: message`` when there is no value to show."""
    where = _format_path(path)
    if value is _NO_VALUE:
        return f"{where}: {message}"
    return f"{where} = {_format_value(value)}: {message}"


def _format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format_value(value: Any, limit: int = 80) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str | Path):
        text = repr(str(value))
    else:
        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, sort_keys=False).strip()
            text = text.removesuffix("...").strip()
        except yaml.YAMLError:
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(x: Any) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] so the walker sees the underlying type."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        elif isinstance(tp, type) and issubclass(tp, RootModel):
            tp = tp.model_fields["root"].annotation
        else:
            return tp


def _type_at(root: type[BaseModel], loc: Sequence[str | int]) -> Any:
    """The declared type at a key path, or None when the path leaves the model (for did-you-mean)."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if not isinstance(part, str) or part not in tp.model_fields:
                return None
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    return _unwrap(tp)


_SIMPLE_MESSAGES = {
    "missing": "required key is missing",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be text",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "path_type": "must be a path",
    "none_required": "must be null",
}


_NUMBER_TEXT = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$")
"""A number written as text (quoted in YAML): the message then says to drop the quotes."""


def _describe_error(err: Mapping[str, Any], root: type[BaseModel]) -> list[str]:
    """One pydantic error -> problem line(s)."""
    kind: str = err["type"]
    loc: tuple[str | int, ...] = tuple(err["loc"])
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    value = err.get("input", _NO_VALUE)

    if kind in ("value_error", "assertion_error") and isinstance(ctx.get("error"), _Problems):
        problems: _Problems = ctx["error"]
        return [format_problem(loc + rel, message, val) for rel, val, message in problems.items]
    if kind == "extra_forbidden":
        parent = _type_at(root, loc[:-1])
        key = str(loc[-1])
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            valid = list(parent.model_fields)
            hint = did_you_mean(key, valid)
            message = (
                f"unknown key ({hint})"
                if hint
                else f"unknown key (valid keys: {', '.join(valid)})"
            )
        else:
            message = "unknown key"
        return [format_problem(loc, message)]
    if kind == "missing":
        return [format_problem(loc, _SIMPLE_MESSAGES[kind])]
    if kind in _SIMPLE_MESSAGES:
        message = _SIMPLE_MESSAGES[kind]
        if kind in ("int_type", "float_type") and isinstance(value, bool):
            message += ", not true/false"
        elif kind in ("int_type", "float_type") and isinstance(value, str) and _NUMBER_TEXT.match(value):
            message += f", not text (write {value.strip()} without quotes)"
    elif kind == "greater_than":
        message = f"must be greater than {_number(ctx['gt'])}"
    elif kind == "greater_than_equal":
        message = f"must be at least {_number(ctx['ge'])}"
    elif kind == "less_than":
        message = f"must be less than {_number(ctx['lt'])}"
    elif kind == "less_than_equal":
        message = f"must be at most {_number(ctx['le'])}"
    elif kind == "literal_error":
        declared = _type_at(root, loc)
        choices = get_args(declared) if get_origin(declared) is Literal else ()
        if choices:
            message = "must be one of " + ", ".join(str(c) for c in choices)
        else:
            message = f"must be one of {ctx.get('expected', '?')}"
    elif kind == "too_short":
        message = f"must have at least {ctx['min_length']} item{'s' if ctx['min_length'] != 1 else ''}"
    elif kind == "too_long":
        message = f"must have at most {ctx['max_length']} items"
    elif kind == "string_too_short":
        message = (
            "must not be empty"
            if ctx.get("min_length") == 1
            else f"must be at least {ctx['min_length']} characters"
        )
    elif kind == "string_too_long":
        message = f"must be at most {ctx['max_length']} characters"
    elif kind in ("value_error", "assertion_error") and "error" in ctx:
        message = str(ctx["error"])
    else:
        msg = str(err.get("msg", kind))
        message = msg[:1].lower() + msg[1:]
    if isinstance(value, Mapping) and kind not in ("value_error", "assertion_error"):
        value = _NO_VALUE  # a whole section as the "value" only hides the message
    return [format_problem(loc, message, value)]


# --------------------------------------------------------------------------------------------------------
# reading and writing


MAX_SETTINGS_BYTES = 1_000_000
"""A settings file is a few kilobytes; a larger one is refused unread (PyYAML spent 38 s and 1.2 GB on
16 MB before the model could say no)."""
MAX_SETTINGS_DEPTH = 32
"""Nesting levels allowed in a settings file (the model's deepest value is 6 levels down). Checked while the
file is read, so deep input is refused long before PyYAML's recursive composer reaches Python's limit."""
MAX_SETTINGS_VALUES = 10_000
"""Keys and values in a settings file, as written and with its aliases expanded (the defaults have 451):
counted while the file is read, and nine lines of anchors and aliases can stand for a billion values."""


class _DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping defines a key twice; PyYAML would silently keep the last one."""


class _LimitError(yaml.MarkedYAMLError):
    """The file nests too deeply or its aliases expand too far: refused before it is built."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a repeated key silently overrides the first) and nesting
    beyond MAX_SETTINGS_DEPTH or MAX_SETTINGS_VALUES as it reads, and reads YAML 1.2 numbers such as 1e-3
    as numbers (YAML 1.1 needs a dot)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self._depth >= MAX_SETTINGS_DEPTH:
            raise _LimitError(None, None, f"nested more than {MAX_SETTINGS_DEPTH} levels deep (settings "
                              "need a few)", self.peek_event().start_mark)
        self._nodes += 1
        if self._nodes > MAX_SETTINGS_VALUES:
            raise _LimitError(None, None, f"more than {MAX_SETTINGS_VALUES:,} keys and values (settings "
                              "have a few hundred)", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # keys written in this mapping may override keys merged in with `<<: *anchor`, not each other
    written = {id(key_node) for key_node, _ in node.value if key_node.tag != _MERGE_TAG}
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    first_line: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError as exc:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value, not a list or mapping", key_node.start_mark
            ) from exc
        if id(key_node) in written:
            if key in first_line:
                raise _DuplicateKeyError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first_line[key] + 1})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases make it deeper than MAX_SETTINGS_DEPTH, larger than
    MAX_SETTINGS_VALUES values, or endless (an alias inside its own anchor). An alias is a shared node, so
    each node's expanded size is computed once: a walk over the nodes as written, without recursion."""
    done: dict[int, tuple[int, int]] = {}  # node -> (values, depth) with aliases expanded
    on_path: set[int] = set()  # started, not finished: the current node and its ancestors
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            on_path.discard(id(node))
            parts = [done[id(child)] for child in _children(node)]
            values = 1 + sum(v for v, _ in parts)
            depth = 1 + max((d for _, d in parts), default=0)
            if values > MAX_SETTINGS_VALUES:
                raise _LimitError(None, None, "aliases expand this file to more than "
                                  f"{MAX_SETTINGS_VALUES:,} values", node.start_mark)
            if depth > MAX_SETTINGS_DEPTH:
                raise _LimitError(None, None, f"nested more than {MAX_SETTINGS_DEPTH} levels deep through "
                                  "aliases (settings need a few)", node.start_mark)
            done[id(node)] = (values, depth)
            continue
        if id(node) in done:
            continue
        on_path.add(id(node))
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise _LimitError(None, None, "an alias inside its own anchor refers to itself, so its value "
                                  "never ends", child.start_mark)
            if id(child) not in done:
                stack.append((child, False))


def _read_text(path: Path) -> str:
    """The file's text, read no further than MAX_SETTINGS_BYTES + 1 bytes (a device or pipe may not end)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SETTINGS_BYTES + 1)
    except FileNotFoundError:
        raise SettingsError([f"{path}: settings file not found"], path) from None
    except IsADirectoryError:
        raise SettingsError([f"{path}: is a folder, not a settings file"], path) from None
    except OSError as exc:
        raise SettingsError([f"{path}: cannot read: {exc.strerror}"], path) from None
    if len(data) > MAX_SETTINGS_BYTES:
        raise SettingsError([f"{path}: too large for a settings file (more than "
                             f"{MAX_SETTINGS_BYTES // 1_000_000} MB)"], path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError([f"{path}: not a UTF-8 text file"], path) from None


def _load_yaml(text: str) -> Any:
    """yaml.load with the strict loader, plus the alias check between composing and building."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_settings_file(path: Path) -> dict[str, Any]:
    """The raw mapping in a settings file ({} if empty); file and YAML problems raise SettingsError."""
    text = _read_text(path)
    try:
        data = _load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        if isinstance(exc, _DuplicateKeyError | _LimitError):
            raise SettingsError([f"{where}: {exc.problem}"], path) from None
        detail = exc.problem or "invalid YAML"
        if exc.context:
            detail = f"{detail} ({exc.context})"
        raise SettingsError([f"{where}: YAML syntax error: {detail}"], path) from None
    except yaml.YAMLError as exc:
        raise SettingsError([f"{path}: YAML syntax error: {exc}"], path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            [f"{path}: must be a mapping of sections (rig:, bpod:, task:, ...), not a {type(data).__name__}"],
            path,
        )
    return data


def _expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """{'bpod.port': x} -> {'bpod': {'port': x}}, so callers can override one key by its path."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        target = out
        for part in parts[:-1]:
            existing = target.get(part)
            if not isinstance(existing, dict):
                existing = target[part] = {}
            target = existing
        if isinstance(value, Mapping):
            value = _expand_dotted(value)
        last = parts[-1]
        if isinstance(value, dict) and isinstance(target.get(last), dict):
            target[last] = _merge(target[last], value)
        else:
            target[last] = value
    return out


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of mappings; anything else in ``update`` (lists included) replaces ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_settings(data: Mapping[str, Any], source: Path | None = None) -> Settings:
    """Validate a raw mapping (as read from YAML) into Settings; problems raise SettingsError."""
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as exc:
        raise SettingsError.from_validation_error(exc, source) from None


def load_settings(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read, merge and validate settings.

    ``path`` defaults to the repository's settings.yaml. ``overrides`` (nested mappings, or dotted keys
    like ``{"bpod.emulator_speed": 10}``) replace values from the file, e.g. from command-line options,
    and are validated together with it.
    """
    source = Path(path) if path is not None else DEFAULT_SETTINGS_PATH
    raw = read_settings_file(source)
    if overrides:
        raw = _merge(raw, _expand_dotted(overrides))
    settings = parse_settings(raw, source)
    logger.debug("settings loaded from %s", source)
    return settings


class _Dumper(yaml.SafeDumper):
    """Writes short lists and small flat mappings on one line, so a dump reads like the hand-written file."""


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(_is_scalar(v) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, data: dict[Any, Any]) -> yaml.Node:
    flow = 0 < len(data) <= 3 and all(_is_scalar(v) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)


def dump_settings(settings: Settings) -> str:
    """The settings as YAML that ``load_settings`` reads back to an equal object (used for snapshots)."""
    data = settings.model_dump(mode="json")
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
