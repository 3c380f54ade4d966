"""The settings sections the task reads: timing, wiring, selection, auto reward, training stages, context
switching, the task itself and its contexts.

The models are the task's own records: `build_trial`, `select_trial` and `Training` read them directly, and
`rig.settings` composes them into the whole settings file (cross-section checks, such as the wiring against
the Bpod model, and the wording of problems live there). Each model refuses unknown keys and lax types.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from protocols.contexts import Contingency, Modality, Side
from protocols.state_machine import input_event

SelectionMode = Literal["antibias", "autolearn", "random", "fixed", "both_rewarded"]
SELECTION_MODES: tuple[str, ...] = get_args(SelectionMode)
FreeDropRule = Literal["last_trials", "side_trials"]
StageMeasure = Literal["rewarded", "answered"]
MIN_CORRECT_WINDOW_FLOOR = 5
"""The firmware looks at no fewer than 5 trials of a side for its min_correct rule (spec)."""
RoleKind = Literal["input", "valve", "output"]

Problem = tuple[tuple[str | int, ...], Any, str]
"""(key path below the model, bad value, message) of one problem a validator found."""


class _Section(BaseModel):
    """Base of the task's settings sections: unknown keys are errors, types are strict, objects read-only
    (the same rules as every section of `rig.settings`)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True, strict=True
    )


def _refuse(model: type[BaseModel], problems: Sequence[Problem]) -> None:
    """Raise every problem at its own key path (pydantic prefixes the paths of enclosing models)."""
    if problems:
        raise ValidationError.from_exception_data(model.__name__, [
            InitErrorDetails(type="value_error", loc=path, input=value, ctx={"error": ValueError(message)})
            for path, value, message in problems
        ])


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
    trial_bitcode: str | None = None
    """Output: the trial number as a bitcode after the trigger (`task.trial_bitcode`); None: not sent."""

    INPUT_ROLES: ClassVar[tuple[str, ...]] = ("left_lick", "right_lick")
    VALVE_ROLES: ClassVar[tuple[str, ...]] = ("left_valve", "right_valve")

    @classmethod
    def kind(cls, role: str) -> RoleKind:
        """Whether a role is an input, a valve output or another output."""
        if role in cls.INPUT_ROLES:
            return "input"
        return "valve" if role in cls.VALVE_ROLES else "output"

    def on(self, role: str) -> dict[str, int]:
        """The output action that turns a role on: level 1, or full duty cycle on a PWM line."""
        line: str = getattr(self, role)
        return {line: 255 if line.startswith("PWM") else 1}

    def lick(self, side: Side) -> str:
        """The event of a lick on `side` (`Port1In` for a port, `BNC1High` for a BNC input)."""
        return input_event(self.left_lick if side == "left" else self.right_lick)



class TimingSettings(_Section):
    """State durations, in seconds. The delay and the error timeout belong to the training stage
    (`task.stages[].delay_s`, `timeout_s`), so they are not here."""

    trig_trial_start: float = Field(0.01, gt=0, le=60)
    """TrigTrialStart: imaging-trigger pulse at trial start (s)."""
    pre_sample: float = Field(1.56, ge=0, le=60)
    """PreSamplePeriod: baseline between the trigger pulse and the cue (s); the sample starts
    trig_trial_start + pre_sample after the trigger (1.57 s in the paper's aligned data)."""
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
    inter_trial_interval: float = Field(1.0, ge=0, le=60)
    """InterTrialInterval: the trial's last epoch, after StopLicking; licks are ignored and the pole motor
    moves to the next trial's position (s)."""
    trial_end: float = Field(0.01, gt=0, le=60)
    """TrialEnd (s)."""


class TrialBitcodeSettings(_Section):
    """The trial number sent at trial start on `wiring.trial_bitcode` (when it is set): a start pulse,
    then `bits` bits, least significant first, each a low gap and a slot that is high for a 1. It is sent
    inside the pre-sample baseline, which must be longer than it."""

    bits: int = Field(16, ge=1, le=32)
    """Number of bits (trial numbers up to 2**bits - 1)."""
    start_s: float = Field(0.005, gt=0, le=1)
    """Start pulse (s)."""
    gap_s: float = Field(0.002, gt=0, le=1)
    """Low gap before each bit (s)."""
    bit_s: float = Field(0.002, gt=0, le=1)
    """Bit slot, high for a 1 (s)."""

    @property
    def duration_s(self) -> float:
        return self.start_s + self.bits * (self.gap_s + self.bit_s)


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

    @property
    def min_correct_window(self) -> int:
        """How many of a side's most recent trials the min_correct rule looks at."""
        return max(self.max_incorrect + self.min_correct, MIN_CORRECT_WINDOW_FLOOR)


class AutoRewardSettings(_Section):
    """Free drop on the correct side before the go cue, to rescue a mouse stuck on one side."""

    enabled: bool = True
    """Give free drops at all."""
    rule: FreeDropRule = "last_trials"
    """last_trials (the home-cage firmware's autoReward): the last `after_errors` trials were all of one side
    and all unrewarded, and more than `min_trials_since_last` trials have passed since the rule last fired
    (whether or not the next trial was of that side); side_trials: that side's last `after_errors` trials
    (trials of the other side in between skipped) were unrewarded, and more than `min_trials_since_last`
    trials have passed since the last free drop given."""
    after_errors: int = Field(3, ge=1, le=100)
    """Unrewarded trials (errors or no answer) that trigger a free drop on that side's next trial."""
    min_trials_since_last: int = Field(3, ge=0, le=1000)
    """More than this many trials between two free drops (see `rule` for where the count starts)."""
    after_task_learned: bool = False
    """Free drops also once the task is learned (the context-switching stage); the firmware gives none
    there, so a new contingency is learned without help."""


class LickportBiasSettings(_Section):
    """Lickport bias correction (home-cage firmware), applied only when a lickport motor is configured."""

    every_trials: int = Field(50, ge=1, le=10_000)
    """More than this many trials since the last move before the gap is looked at."""
    window: int = Field(50, ge=1, le=1000)
    """Recent trials the per-side performance is computed over."""
    max_gap: float = Field(0.3, ge=0, le=1)
    """A left/right performance gap above this moves the lickport a step toward the weaker side."""
    max_steps: int = Field(4, ge=0, le=100)
    """At most this many steps from the starting position on either side (the step itself is the rig's:
    lickport_motor.step)."""


class AdvanceCriterion(_Section):
    """When a training stage is passed: enough trials, and performance above threshold over a window."""

    min_trials: int = Field(ge=0, le=100_000)
    """Trials done in the stage (more than this many)."""
    perf_threshold: float = Field(ge=0, le=1)
    """Performance (0-1) the window must be above."""
    window: int = Field(ge=1, le=1000)
    """Number of most recent trials the performance is computed over."""
    counts: StageMeasure = "rewarded"
    """rewarded: rewarded trials among all trials of the window, no answer counting as a failure (the
    home-cage firmware's stage performance); answered: fraction correct among answered trials (Perf100's
    measure, which the firmware uses to leave the last stage)."""
    spans_stages: bool = True
    """The window holds the subject's last trials whatever their stage, as the firmware's history is not
    reset at a stage change; false: it starts empty when this stage is entered."""

    def met(self, trials_in_stage: int, performance: float | None) -> bool:
        """More than `min_trials` trials in the stage, and performance above `perf_threshold`."""
        above = performance is not None and performance > self.perf_threshold
        return trials_in_stage > self.min_trials and above


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
    """The home-cage progression: sample stage, antibias, delay ramp 0.3 -> 1.3 s, full task. As in the
    firmware, the stages count rewarded trials of the last 30, and the full task is left at Perf100."""

    def stage(
        name: str, delay: float, timeout: float, mode: str, enforce: bool, crit: tuple,
        counts: StageMeasure = "rewarded",
    ) -> TrainingStage:
        return TrainingStage.model_validate(
            {
                "name": name,
                "delay_s": delay,
                "timeout_s": timeout,
                "selection": mode,
                "sample_enforcement": enforce,
                "advance": dict(zip(("min_trials", "perf_threshold", "window"), crit, strict=True))
                | {"counts": counts},
            }
        )

    stages = [
        stage("sample", 0.3, 1.0, "autolearn", False, (200, 0.0, 100)),
        stage("sample-antibias", 0.3, 3.0, "antibias", False, (100, 0.75, 30)),
    ]
    for delay in (0.3, 0.5, 0.8, 1.0, 1.3):
        stages.append(stage(f"delay-{delay:.1f}", delay, 3.0, "antibias", False, (100, 0.70, 30)))
    stages.append(stage("full", 1.3, 4.0, "antibias", True, (500, 0.70, 100), counts="answered"))
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

    def next_context(self, current: str) -> str:
        """The context after `current` in the sequence; from outside the sequence, its first context."""
        if current in self.sequence:
            return self.sequence[(self.sequence.index(current) + 1) % len(self.sequence)]
        return next((name for name in self.sequence if name != current), current)


class TaskSettings(_Section):
    """The delayed-response directional-licking task."""

    default_context: str = "tactile"
    """Context of a new subject."""
    reward_volume_ul: float = Field(2.5, gt=0, le=20)
    """Water per reward in microlitres; the valve time comes from bpod.valve_calibration."""
    timing: TimingSettings = Field(default_factory=TimingSettings)
    """State durations (s)."""
    trial_bitcode: TrialBitcodeSettings = Field(default_factory=TrialBitcodeSettings)
    """Shape of the trial-number bitcode (sent only when wiring.trial_bitcode is set)."""
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    """Trial-side selection."""
    auto_reward: AutoRewardSettings = Field(default_factory=AutoRewardSettings)
    """Free drops after repeated errors."""
    stages: list[TrainingStage] = Field(default_factory=_default_stages, min_length=1)
    """Training stages in order; a new subject starts at the first."""
    context_switch: ContextSwitchSettings = Field(default_factory=ContextSwitchSettings)
    """Automatic context switching."""
    lickport_bias: LickportBiasSettings = Field(default_factory=LickportBiasSettings)
    """Lickport bias correction, when a lickport motor is configured."""

    @model_validator(mode="after")
    def _check_stages(self) -> TaskSettings:
        problems: list[Problem] = []
        first_index: dict[str, int] = {}
        for i, stage in enumerate(self.stages):
            if stage.name in first_index:
                problems.append((
                    ("stages", i, "name"),
                    stage.name,
                    f"duplicate stage name (also task.stages[{first_index[stage.name]}])",
                ))
            first_index.setdefault(stage.name, i)
        switch = self.context_switch
        if switch.enabled and len(set(switch.sequence)) < 2:
            problems.append((
                ("context_switch", "sequence"),
                switch.sequence,
                "needs at least two different contexts while context_switch.enabled is true",
            ))
        _refuse(type(self), problems)
        return self


class ContextSettings(_Section):
    """A task context: which cue is given and which lick it asks for."""

    modality: Modality
    """tactile: pole posterior/anterior; auditory: tone high/low."""
    contingency: Contingency
    """normal: posterior pole or high tone -> lick right; reversed swaps the sides."""


def default_contexts() -> dict[str, ContextSettings]:
    return {
        "tactile": ContextSettings(modality="tactile", contingency="normal"),
        "tactile-reversed": ContextSettings(modality="tactile", contingency="reversed"),
        "auditory": ContextSettings(modality="auditory", contingency="normal"),
        "auditory-reversed": ContextSettings(modality="auditory", contingency="reversed"),
    }
