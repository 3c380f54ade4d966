"""The rig's settings: one typed, validated model for settings.yaml.

Every number the task, the devices and the online module use lives here, with its unit, so that code never
hides a parameter. A bad file is answered with one line per problem naming the key path, the bad value and
what is allowed (``task.timing.delay = -1: must be greater than 0``), never with a traceback.

The defaults of the model are the defaults of the repository's settings.yaml (a test keeps them equal), and
they run the embedded simulated rig. A user file may leave out anything; missing keys take these defaults.
Mappings of named things (``contexts``) and lists (``task.stages``) are replaced as a whole, not merged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from hardware.settings import (
    FIRMWARE_BY_MODEL,
    BpodSettings,
    LickportMotorSettings,
    PoleMotorSettings,
    SimSettings,
    SoundSettings,
    ValveCalibrationError,
    bpod_line_names,
    summarise_lines,
)
from online.settings import OnlineSettings
from online.transport import is_local_endpoint, parse_endpoint
from online.wire import did_you_mean
from protocols.contexts import Side
from protocols.settings import ContextSettings, TaskSettings, TimingSettings, WiringSettings, default_contexts
from rig.settings.problems import _NO_VALUE, Problem, _ProblemList, _Problems, _unwrap

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
# rig


class RigSettings(_Section):
    """Which rig this is; recorded in every session."""

    name: str = Field("sim-rig", min_length=1, max_length=100)
    """Rig name written to session.json."""


class SessionSettings(_Section):
    """What the monitor flags as the end of a session, and the manual valve controls.

    The end criteria only colour the monitor's header (amber from 90 %, green once one is reached); the
    experimenter ends the session (`rig run --trials/--minutes` stop it by themselves)."""

    end_trials: int | None = Field(None, ge=1)
    """Trials after which the session may end (None: no such criterion)."""
    end_minutes: float | None = Field(None, gt=0)
    """Minutes after which the session may end."""
    end_water_ul: float | None = Field(None, gt=0)
    """Water (uL, from the calibrated valves) after which the session may end: the day's ration."""
    flush_s: float = Field(2.0, gt=0, le=30)
    """How long a flush opens a valve (s), to fill or rinse its line."""


# --------------------------------------------------------------------------------------------------------
# imaging (the online section's models are online/settings.py's)


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
    planes: int = Field(5, ge=1, le=100)
    """Number of imaging planes (volume scanning; the paper's 5 at 30 Hz are 6 Hz per plane)."""
    channels: int = Field(1, ge=1, le=4)
    """Number of colour channels saved."""
    functional_channel: int = Field(1, ge=1, le=4)
    """The ScanImage channel (1-4) the online module analyses (GCaMP; others, e.g. a structural red
    channel, are skipped)."""
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


# --------------------------------------------------------------------------------------------------------
# metadata (for the NWB export)


class MetadataSettings(_Section):
    """Who ran the experiment and what the data files do not say about it, for `rig export-nwb`. The
    subject's species, sex, birth and genotype are the subject's own (subject.json `info`)."""

    lab: str | None = Field(None, max_length=200)
    """Lab name."""
    institution: str | None = Field(None, max_length=200)
    """Institution."""
    experimenter: list[str] = Field(default_factory=list)
    """Experimenters, as 'Last, First'."""
    indicator: str = Field("GCaMP6s", min_length=1, max_length=100)
    """Calcium indicator imaged."""
    excitation_lambda_nm: float = Field(920.0, gt=0, le=2000)
    """Two-photon excitation wavelength (nm)."""
    emission_lambda_nm: float = Field(510.0, gt=0, le=2000)
    """Emission wavelength of the functional channel (nm)."""
    imaging_location: str = Field("MOs", min_length=1, max_length=100)
    """Imaged area as an Allen CCF acronym (ALM lies in MOs, the secondary motor area)."""


# --------------------------------------------------------------------------------------------------------
# data, network


class DataSettings(_Section):
    """Where sessions are stored."""

    root: Path = Path("data")
    """Data root (<root>/<subject>/<date_time>/ per session); relative to the working directory."""


def _check_endpoint(endpoint: str) -> str:
    parse_endpoint(endpoint)  # a ValueError names the expected form
    return endpoint


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
            if not is_local_endpoint(endpoint):
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
# checks (`rig check-hardware`)


class Loopback(_Section):
    """A cable from a Bpod output to one of its inputs, for the self-test."""

    output: str = Field(min_length=1)
    """Output line driven high (BNC1)."""
    input: str = Field(min_length=1)
    """Input line that must see it (BNC2)."""


class ChecksSettings(_Section):
    """What `rig check-hardware` tests beyond the wiring (the emulator has these cables too)."""

    loopbacks: list[Loopback] = Field(default_factory=list, max_length=16)
    """Output -> input cables on this box, e.g. [{output: BNC1, input: BNC2}]."""
    touch_timeout_s: float = Field(10.0, gt=0, le=600)
    """How long a lick sensor may take to report a touch when asked (s, Bpod time)."""


# --------------------------------------------------------------------------------------------------------
# the whole file


def wiring_problems(wiring: WiringSettings, model: str) -> list[Problem]:
    """Problems with a wiring on a Bpod ``model``: unknown lines, wrong direction, shared lines."""
    inputs, outputs = bpod_line_names(model)
    lines = {"input": (inputs, "an input"), "output": (outputs, "an output"),
             "valve": ([name for name in outputs if name.startswith("Valve")], "a valve output")}
    problems: list[Problem] = []
    used: dict[str, str] = {}
    for role in WiringSettings.model_fields:
        line: str | None = getattr(wiring, role)
        if line is None:  # an optional role left unwired
            continue
        kind = WiringSettings.kind(role)
        valid, what = lines[kind]
        if line not in valid:
            hint = did_you_mean(line, valid)
            suggestion = f"; {hint}" if hint else ""
            message = f"not {what} of a Bpod {model} ({summarise_lines(valid)}){suggestion}"
            problems.append(((role,), line, message))
            continue
        key = f"{'in' if kind == 'input' else 'out'}:{line}"
        if key in used:
            problems.append(((role,), line, f"already used by wiring.{used[key]}"))
        else:
            used[key] = role
    return problems


SOUND_STATES: dict[str, tuple[str, str]] = {
    "tone_high": ("sample", "SamplePeriod"), "tone_low": ("sample", "SamplePeriod"),
    "go_cue": ("response_cue", "ResponseCue")}
"""Each HiFi sound -> the task.timing key (and state) it plays for: their durations must agree."""


def sound_problems(sound: SoundSettings, timing: TimingSettings) -> list[Problem]:
    """Problems of a HiFi sound section: a tone whose length differs from the state that plays it (it
    would sound on into the next epoch, or stop before its epoch ends). A pwm rig plays no waveforms, so
    nothing here applies to it. (A missing module or USB port is the session's to report: it is known
    only when the Bpod is connected.)"""
    if sound.device != "hifi":
        return []
    problems: list[Problem] = []
    for name, (key, state) in SOUND_STATES.items():
        tone_s, state_s = getattr(sound, name).duration_s, getattr(timing, key)
        if abs(tone_s - state_s) > 1e-9:
            problems.append(((name, "duration_s"), tone_s, f"must equal task.timing.{key} ({state_s:g} s): "
                             f"{state} plays it, and the tone must end with the state"))
    return problems


def _valid_timing(key: str, value: Any) -> bool:
    try:
        TimingSettings.model_validate({key: value})
    except ValidationError:
        return False
    return True


def _check_context_name(name: str) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ValueError("context names use lowercase letters, digits, '-' and '_'")


class Settings(_Section):
    """Everything the rig needs to run a session; the root of settings.yaml."""

    rig: RigSettings = Field(default_factory=RigSettings)
    """This rig."""
    session: SessionSettings = Field(default_factory=SessionSettings)
    """End criteria the monitor flags, and the manual valve controls."""
    bpod: BpodSettings = Field(default_factory=BpodSettings)
    """The Bpod state machine."""
    wiring: WiringSettings = Field(default_factory=WiringSettings)
    """Role -> Bpod line."""
    pole_motor: PoleMotorSettings = Field(default_factory=PoleMotorSettings)
    """The stage that moves the pole between trials (Zaber ASCII)."""
    lickport_motor: LickportMotorSettings = Field(default_factory=LickportMotorSettings)
    """The stage that moves the lick ports left-right for the bias correction (Zaber ASCII); none by
    default."""
    sound: SoundSettings = Field(default_factory=SoundSettings)
    """The sample tones and the go cue: the HiFi module, or the wiring's PWM tone lines."""
    task: TaskSettings = Field(default_factory=TaskSettings)
    """The directional-licking task and its training."""
    contexts: dict[str, ContextSettings] = Field(default_factory=default_contexts, min_length=1)
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
    checks: ChecksSettings = Field(default_factory=ChecksSettings)
    """The self-test's cables and timeouts (`rig check-hardware`)."""
    metadata: MetadataSettings = Field(default_factory=MetadataSettings)
    """Lab, experimenters and optics, for the NWB export."""

    @model_validator(mode="after")
    def _check_loopbacks(self) -> Settings:
        """Loopback lines are an output and an input of the Bpod model."""
        inputs, outputs = bpod_line_names(self.bpod.model)
        problems = _ProblemList()
        for i, cable in enumerate(self.checks.loopbacks):
            for key, valid, what in (("output", outputs, "an output"), ("input", inputs, "an input")):
                line = getattr(cable, key)
                if line not in valid:
                    problems.add(("checks", "loopbacks", i, key),
                                 f"not {what} of a Bpod {self.bpod.model} ({summarise_lines(valid)})", line)
        problems.raise_if_any()
        return self

    @model_validator(mode="before")
    @classmethod
    def _tones_follow_timing(cls, data: Any) -> Any:
        """A HiFi tone whose duration the file leaves out lasts as long as the state that plays it
        (`SOUND_STATES`), so changing task.timing is one edit; a duration written must agree (checked
        after validation)."""
        if not isinstance(data, Mapping):
            return data
        task, sound = data.get("task", {}), data.get("sound", {})
        timing = task.get("timing", {}) if isinstance(task, Mapping) else None
        if not isinstance(timing, Mapping) or not isinstance(sound, Mapping):
            return data  # validation names the bad section
        tones: dict[str, Any] = {}
        for name, (key, _) in SOUND_STATES.items():
            tone = sound.get(name, {})
            state_s = timing.get(key, TimingSettings.model_fields[key].default)
            if not isinstance(tone, Mapping) or "duration_s" in tone or not _valid_timing(key, state_s):
                continue  # a bad timing value is named once, at its own key
            default = SoundSettings.model_fields[name].default
            tones[name] = {"frequency_hz": default.frequency_hz, **tone, "duration_s": state_s}
        return {**data, "sound": {**sound, **tones}} if tones else data

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

        for path, value, message in wiring_problems(self.wiring, self.bpod.model):
            problems.add(("wiring", *path), message, value)
        code, baseline = self.task.trial_bitcode, self.task.timing.pre_sample
        if self.wiring.trial_bitcode is not None and code.duration_s >= baseline:
            problems.add(("task", "trial_bitcode"), f"takes {code.duration_s:g} s: it must be shorter than "
                         f"task.timing.pre_sample ({baseline:g} s), in which it is sent")

        if self.bpod.firmware not in FIRMWARE_BY_MODEL[self.bpod.model]:
            allowed = ", ".join(map(str, FIRMWARE_BY_MODEL[self.bpod.model]))
            problems.add(
                ("bpod", "firmware"),
                f"a Bpod {self.bpod.model} runs firmware {allowed} only",
                self.bpod.firmware,
            )

        for path, value, message in sound_problems(self.sound, self.task.timing):
            problems.add(("sound", *path), message, value)

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

