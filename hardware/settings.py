"""The settings sections of the devices: the Bpod (model, firmware, valve calibration), the lines a Bpod
model has, the pole motor (a Zaber stage), and the simulated mouse, microscope and subject.

The models are the devices' own records; `rig.settings` composes them into the whole settings file (checks
across sections, such as the wiring against the Bpod model, and the wording of problems live there). Each
model refuses unknown keys and lax types.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from hardware.bpod.hardware_description import input_channel_names, output_channel_names, preset

Side = Literal["left", "right"]
BpodModel = Literal["r1", "r2", "r2plus"]



def date_from_text(value: Any) -> Any:
    """A pydantic before-validator: a date written as text ('2025-03-01', as a JSON dump writes it) is a
    date (strict mode refuses text); YAML reads an unquoted 2025-03-01 as a date already."""
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError("must be a date written as YYYY-MM-DD") from None
    return value

class _Section(BaseModel):
    """Base of the devices' settings sections: unknown keys are errors, types are strict, objects read-only
    (the same rules as every section of `rig.settings`)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True, strict=True
    )


# --------------------------------------------------------------------------------------------------------
# bpod

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
    measured_on: date | None = None
    """Day the curves were measured (`rig calibrate-valves` writes it); null: not measured on this rig."""
    max_age_days: int = Field(30, ge=1, le=3650)
    """A session on a real Bpod warns (log and session.json) when the calibration is older than this."""

    _date_from_text = field_validator("measured_on", mode="before")(date_from_text)

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


FIRMWARE_BY_MODEL: dict[str, tuple[int, ...]] = {"r1": (22, 23), "r2": (22, 23), "r2plus": (23,)}
"""The firmware versions each Bpod model runs."""
_WIRABLE = re.compile(r"(Port|BNC|Wire|PWM|Valve)\d+")


def bpod_line_names(model: str) -> tuple[list[str], list[str]]:
    """Names of the (inputs, outputs) a Bpod ``model`` has that can be wired to a role, from the
    hardware description the device reports (serial, USB and the configurable r2+ Flex lines excluded)."""
    hw = preset(model, FIRMWARE_BY_MODEL[model][-1])
    inputs = [n for n in input_channel_names(hw) if _WIRABLE.fullmatch(n)]
    outputs = [n for n in output_channel_names(hw) if _WIRABLE.fullmatch(n)]
    return inputs, outputs


def summarise_lines(names: Sequence[str]) -> str:
    """'Port1-4, BNC1-2' instead of eight names."""
    groups: dict[str, list[int]] = {}
    for name in names:
        m = re.fullmatch(r"([A-Za-z]+)(\d+)", name)
        assert m is not None
        groups.setdefault(m.group(1), []).append(int(m.group(2)))
    return ", ".join(f"{k}{min(v)}-{max(v)}" if len(v) > 1 else f"{k}{v[0]}" for k, v in groups.items())


# --------------------------------------------------------------------------------------------------------
# pole motor


class PoleMotorSettings(_Section):
    """The Zaber linear stage (ASCII protocol) that moves the pole anterior-posterior between trials.

    Positions are in the stage's microsteps. Before every pole trial the stage goes to `midpoint` and then
    to the trial's position, so the motor's sound and travel time never tell which position comes."""

    port: str | None = Field("emulator", min_length=1)
    """Serial device (/dev/ttyUSB0, COM4), 'emulator' for the built-in emulated stage (with the simulated
    rig), or null for a rig without a pole motor."""
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] = 115200
    """Serial rate of the ASCII protocol (115200 unless the stage was set otherwise)."""
    device: int = Field(1, ge=1, le=99)
    """Address of the controller on the port."""
    axis: int = Field(1, ge=1, le=9)
    """The anterior-posterior axis of that controller."""
    anterior: int = Field(20_000, ge=0)
    """Stage position of the anterior pole (microsteps)."""
    posterior: int = Field(100_000, ge=0)
    """Stage position of the posterior pole (microsteps)."""
    midpoint: int | None = Field(None, ge=0)
    """Where every move passes first (microsteps); null: halfway between anterior and posterior."""
    max_speed: float = Field(200_000, gt=0, le=5_000_000)
    """Top speed of a move (microsteps/s), sent as the stage's maxspeed."""
    accel: float = Field(2_000_000, gt=0, le=100_000_000)
    """Acceleration and deceleration (microsteps/s^2), sent as the stage's accel."""
    move_timeout_s: float = Field(2.0, gt=0, le=120)
    """Each move (to the midpoint, to the target) not finished this long after the stage acknowledged it
    ends the session before the trial (s, on the stage's clock)."""
    home_timeout_s: float = Field(60.0, gt=0, le=600)
    """Homing at startup (when the stage has no reference position) must finish within this long."""
    timeout_s: float = Field(1.0, gt=0, le=60)
    """Serial read timeout (s); a stage silent for longer is reported as not responding."""

    @model_validator(mode="after")
    def _check_positions(self) -> PoleMotorSettings:
        if self.anterior == self.posterior:
            raise ValueError(f"anterior and posterior are the same position ({self.anterior})")
        low, high = sorted((self.anterior, self.posterior))
        if self.midpoint is not None and not low < self.midpoint < high:
            raise ValueError(f"midpoint {self.midpoint} must lie strictly between anterior and posterior "
                             f"({low}-{high}), so that both moves pass through it")
        return self

    @property
    def midpoint_position(self) -> int:
        return self.midpoint if self.midpoint is not None else (self.anterior + self.posterior) // 2


# --------------------------------------------------------------------------------------------------------
# lickport motor


class LickportMotorSettings(_Section):
    """The Zaber linear stage (ASCII protocol) that moves the lick ports left-right: at session start to
    `centre`, then one `step` toward the weaker side when the bias correction (task.lickport_bias) asks,
    between trials. Positions are in the stage's microsteps, increasing toward the mouse's right."""

    port: str | None = Field(None, min_length=1)
    """Serial device (/dev/ttyUSB1, COM5), 'emulator' for the built-in emulated stage (with the simulated
    rig), or null for a rig without a lickport motor (no bias correction)."""
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] = 115200
    """Serial rate of the ASCII protocol (115200 unless the stage was set otherwise)."""
    device: int = Field(1, ge=1, le=99)
    """Address of the controller on the port."""
    axis: int = Field(1, ge=1, le=9)
    """The left-right axis of that controller."""
    centre: int = Field(150_000, ge=0)
    """Stage position of the centred lickport, where every session starts (microsteps)."""
    step: int = Field(500, ge=1, le=1_000_000)
    """One step of the bias correction (microsteps; 500 is ~0.25 mm, the home-cage firmware's step, at
    0.49 um per microstep)."""
    max_speed: float = Field(200_000, gt=0, le=5_000_000)
    """Top speed of a move (microsteps/s), sent as the stage's maxspeed."""
    accel: float = Field(2_000_000, gt=0, le=100_000_000)
    """Acceleration and deceleration (microsteps/s^2), sent as the stage's accel."""
    move_timeout_s: float = Field(2.0, gt=0, le=120)
    """A move (to the centre, one step) not finished this long after the stage acknowledged it ends the
    session before the next trial (s, on the stage's clock)."""
    home_timeout_s: float = Field(60.0, gt=0, le=600)
    """Homing at startup (when the stage has no reference position) must finish within this long."""
    timeout_s: float = Field(1.0, gt=0, le=60)
    """Serial read timeout (s); a stage silent for longer is reported as not responding."""


# --------------------------------------------------------------------------------------------------------
# sound (the HiFi module)

class ToneSettings(_Section):
    """One pure tone the task plays."""

    frequency_hz: float = Field(gt=20, le=40_000)
    """Tone frequency in Hz."""
    duration_s: float = Field(gt=0, le=30)
    """Waveform length in seconds (the state that plays it may end it earlier only by a stop)."""


SoundDevice = Literal["hifi", "pwm"]


class SoundSettings(_Section):
    """The sound module: its Bpod channel, its own USB port and the waveforms loaded at session start."""

    device: SoundDevice = "hifi"
    """What plays the sample tones and the go cue: the HiFi module (waveforms below, onsets on the Bpod
    clock), or pwm: the wiring's tone lines (sample_tone_high, sample_tone_low, go_cue) into an external
    tone generator, for a rig without a HiFi."""
    module: str = "HiFi1"
    """The module's Bpod channel name (a HiFi on the first port with a HiFi is HiFi1)."""
    usb_port: str | None = None
    """The HiFi module's own USB serial port (waveforms are loaded over it); null with the emulator."""
    sampling_rate_hz: Literal[44100, 48000, 96000, 192000] = 192000
    """Playback sampling rate."""
    amplitude: float = Field(default=0.5, gt=0, le=1)
    """Peak amplitude as a fraction of full scale."""
    ramp_s: float = Field(default=0.005, ge=0, le=0.1)
    """Onset and offset ramp (raised cosine) of every tone, in seconds."""
    attenuation_db: float = Field(default=0.0, ge=-103, le=0)
    """Digital attenuation of the module (0 = full scale)."""
    tone_high: ToneSettings = ToneSettings(frequency_hz=10_000, duration_s=1.3)
    """High sample tone (auditory contexts)."""
    tone_low: ToneSettings = ToneSettings(frequency_hz=2_000, duration_s=1.3)
    """Low sample tone (auditory contexts)."""
    go_cue: ToneSettings = ToneSettings(frequency_hz=3_700, duration_s=0.1)
    """Go cue (ResponseCue)."""


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
    side_bias_drift: float = Field(0.15, ge=0, le=1)
    """Standard deviation of the side bias's slow walk around side_bias (over a few hundred trials)."""
    win_stay: float = Field(0.15, ge=0, le=1)
    """Pull toward the last side after a reward (fraction of the way to certainty)."""
    lose_shift: float = Field(0.15, ge=0, le=1)
    """Pull toward the other side after an error."""
    satiety_rewards: float = Field(400, ge=0)
    """Rewards in a session after which half the trials are ignored (sated)."""


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
    day_shift_px: float = Field(3.0, ge=0, le=50)
    """Largest rigid displacement of the field of view from one day (session of the subject) to another, per
    axis (pixels at 512 px across); day 0, the subject's first session, is undisplaced."""
    day_turnover: float = Field(0.05, ge=0, lt=1)
    """Fraction of cells out of view on a day other than the first (out of focus or no longer expressing),
    drawn afresh each day, so a few cells appear and disappear between sessions."""


class SimSubjectSettings(_Section):
    """The simulated subject: where a NEW one starts (simulated mice arrive trained, so a demo session shows
    the trained task and a context switch within a few hundred trials; real subjects start at the first
    stage), and its latent task states (each a mapping and a population pattern, learned from reward)."""

    stage: str = "full"
    """Training stage of a new simulated subject (a name from task.stages)."""
    task_learned: bool = True
    """Whether it has already met the last stage's criterion (context switches at criterion allowed)."""
    trained_context: str = "tactile"
    """The context whose cue-to-side mapping the simulated mouse already knows (and starts in)."""
    trials_in_context: int = Field(250, ge=0)
    """Trials it is credited with in that context, counted towards task.context_switch.min_trials."""
    naive: bool = False
    """A naive subject instead: it knows no mapping and starts at the first stage of task.stages."""
    new_patterns: bool = True
    """False: every mapping the mouse learns shares one population pattern (the 'no new pattern' subject)."""
    switch_evidence: float = Field(12.0, gt=0)
    """Evidence (nats) from rewards that the mouse needs to believe another mapping is in force."""
    retention: float = Field(0.3, ge=0, le=1)
    """Fraction of a mapping's confidence kept while another mapping is in force."""
    savings: float = Field(0.5, ge=0)
    """Learning-rate gain per switch of mapping (relearning gets faster each time)."""
    pattern_drift: float = Field(0.1, ge=0, le=1)
    """Fraction of a stored pattern's variance that is new when its mapping returns."""
    pattern_trace: float = Field(0.05, ge=0, le=2)
    """Weight of the pattern learned in between added to a returning pattern (the memory trace)."""


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
