"""The delayed-response directional-licking task: one trial as a Bpod state machine.

    TrigTrialStart -> PreSamplePeriod -> SamplePeriod -> DelayPeriod -> [GiveLeftDrop | GiveRightDrop]
    -> ResponseCue -> AnswerPeriod -> Reward -> RewardConsumption | TimeOut | NoResponse -> StopLicking
    -> InterTrialInterval -> TrialEnd

PreSamplePeriod is the baseline between the imaging trigger and the cue (sample onset 1.57 s after the
trigger by default, as in the paper's aligned data). The inter-trial interval is the trial's last epoch, so
that the first state of every trial is still the trigger (trial start = trigger: the clock bridge) and the
dead time between Bpod trials stays the session's latency figure; the pole motor moves to the next trial's
position while it runs (the session moves it as soon as the next trial is queued, at this trial's outcome).

A lick in the sample epoch (once the stage enforces it) or in the delay goes to EarlyLickSample /
EarlyLickDelay, which restart that epoch; a lick in StopLicking goes through StopLickingReturn back to
a fresh StopLicking, so the trial ends only after the mouse has stopped licking. Every state is in
every trial's machine (unused ones are simply not reached), so trial records line up.

Durations come from the settings (`TimingSettings`) and the training stage (delay, timeout, sample
enforcement); valve times are passed in already calibrated; outputs are named by role (`WiringSettings`).
The tones (sample tones, go cue) are either wiring roles too, or, given `cue_actions`, the outputs that
make a sound module play them; an early lick in the sample then cuts the tone, and the restarted
SamplePeriod plays it again from its onset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocols.contexts import Side, other_side
from protocols.settings import TimingSettings, TrialBitcodeSettings, WiringSettings
from protocols.state_machine import EXIT, StateMachine
from protocols.trial_bitcode import BITCODE_START, add_bitcode_states
from protocols.trial_spec import TrialSpec

# -- the task's states, named once: the rig, scoring and the displays read them from here ---------------
TRIG_TRIAL_START = "TrigTrialStart"  # raises the imaging trigger
PRE_SAMPLE_PERIOD = "PreSamplePeriod"  # baseline before the cue
SAMPLE_PERIOD = "SamplePeriod"  # the cue (pole or tone)
EARLY_LICK_SAMPLE = "EarlyLickSample"  # a lick in the sample epoch: the sample restarts
DELAY_PERIOD = "DelayPeriod"
EARLY_LICK_DELAY = "EarlyLickDelay"  # a lick in the delay: the delay restarts
GIVE_LEFT_DROP, GIVE_RIGHT_DROP = "GiveLeftDrop", "GiveRightDrop"  # free drop on the correct side
RESPONSE_CUE = "ResponseCue"  # the go cue
ANSWER_PERIOD = "AnswerPeriod"  # window for the first lick
REWARD = "Reward"
REWARD_CONSUMPTION = "RewardConsumption"
TIMEOUT = "TimeOut"  # a lick on the wrong side
NO_RESPONSE = "NoResponse"
STOP_LICKING, STOP_LICKING_RETURN = "StopLicking", "StopLickingReturn"
INTER_TRIAL_INTERVAL = "InterTrialInterval"  # the pole moves to the next trial's position
TRIAL_END = "TrialEnd"

STATES: tuple[str, ...] = (
    TRIG_TRIAL_START, PRE_SAMPLE_PERIOD, SAMPLE_PERIOD, EARLY_LICK_SAMPLE, DELAY_PERIOD, EARLY_LICK_DELAY,
    GIVE_LEFT_DROP, GIVE_RIGHT_DROP, RESPONSE_CUE, ANSWER_PERIOD, REWARD, REWARD_CONSUMPTION,
    TIMEOUT, NO_RESPONSE, STOP_LICKING, STOP_LICKING_RETURN, INTER_TRIAL_INTERVAL, TRIAL_END,
)
"""The spec's states, in the order they are added (the first one runs first)."""
BOTH_REWARDED_STATE = "RewardOtherSide"  # both_rewarded mode: a lick on the other side is rewarded too
DECODER_WAIT_STATE = "DelayDecoderWait"  # decoder-gated delay: the delay after its minimum

# -- the task's epochs, as the paper names them: the state each one is ------------------------------------
SAMPLE_EPOCH = SAMPLE_PERIOD
DELAY_EPOCH = DELAY_PERIOD
GO_CUE_EPOCH = RESPONSE_CUE
ANSWER_EPOCH = ANSWER_PERIOD
OUTCOME_EPOCH: frozenset[str] = frozenset({REWARD, TIMEOUT, NO_RESPONSE})
"""The outcome epoch: entering any of these states means the trial's outcome is known."""
EARLY_LICK_STATES: dict[str, str] = {EARLY_LICK_SAMPLE: "sample", EARLY_LICK_DELAY: "delay"}
"""Early-lick state -> the epoch it restarts."""
FREE_DROP_STATES: tuple[str, ...] = (GIVE_LEFT_DROP, GIVE_RIGHT_DROP)
ANSWER_LICK_STATES: tuple[str, ...] = (REWARD, TIMEOUT, BOTH_REWARDED_STATE)
"""States the answering lick enters: the first entry of any of them is the response time."""


def epoch_states() -> dict[str, str | list[str]]:
    """The state of each epoch, as the trial-start message tells the online module (which imports no task
    code): sample, delay, go cue, and the states of the answering lick."""
    return {"sample": SAMPLE_EPOCH, "delay": DELAY_EPOCH, "go": GO_CUE_EPOCH,
            "response": list(ANSWER_LICK_STATES)}


CUE_SOUNDS: tuple[str, ...] = ("tone_high", "tone_low", "go_cue")
"""The sounds the task plays when a sound module plays them (`TaskParameters.cue_actions`)."""
STOP_SOUND = "stop"


@dataclass(frozen=True)
class DecoderGate:
    """Closed loop (off unless given): the delay ends on `event` (e.g. `APP_SoftCode1`, sent by the
    online decoder) once `min_s` has passed, and at `max_s` at the latest."""

    event: str
    min_s: float
    max_s: float

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"decoder-gated delay needs 0 < min_s <= max_s, got {self.min_s}, {self.max_s}")


@dataclass(frozen=True)
class TaskParameters:
    """What stays the same from trial to trial: timing, wiring, calibrated valve times, closed loop."""

    timing: TimingSettings
    wiring: WiringSettings
    left_valve_s: float  # valve open time that gives one reward on the left (s)
    right_valve_s: float
    decoder_gated_delay: DecoderGate | None = None
    bitcode: TrialBitcodeSettings | None = None
    """The trial-number bitcode on `wiring.trial_bitcode`, or None (not sent)."""
    cue_actions: Mapping[str, Mapping[str, Any]] | None = None
    """Sound-module outputs by `CUE_SOUNDS` name (tone_high, tone_low, go_cue) and `STOP_SOUND`; None:
    the tones are the wiring's tone lines."""

    def __post_init__(self) -> None:
        if self.bitcode is not None and self.wiring.trial_bitcode is None:
            raise ValueError("a trial bitcode needs wiring.trial_bitcode (the line to send it on)")
        if self.bitcode is not None and self.bitcode.duration_s >= self.timing.pre_sample:
            raise ValueError(f"the trial bitcode ({self.bitcode.duration_s:g} s) must be shorter than the "
                             f"pre-sample baseline it is sent in ({self.timing.pre_sample:g} s)")
        if self.cue_actions is not None:
            missing = [k for k in (*CUE_SOUNDS, STOP_SOUND) if k not in self.cue_actions]
            if missing:
                raise ValueError(f"cue_actions has no output for {', '.join(missing)}")

    def valve_s(self, side: Side) -> float:
        return self.left_valve_s if side == "left" else self.right_valve_s


def build_trial(trial: TrialSpec, params: TaskParameters) -> StateMachine:
    """The state machine of one trial of the directional-licking task."""
    t, w, stage, side = params.timing, params.wiring, trial.stage, trial.side

    def any_lick(target: str) -> dict[str, str]:
        return {w.lick("left"): target, w.lick("right"): target}

    sounds = params.cue_actions
    if sounds is not None and trial.cue in sounds:  # the sound module plays the tone; a lick cuts it
        cue, cue_after_lick = dict(sounds[trial.cue]), dict(sounds[STOP_SOUND])
    else:  # pole in, or the tone line: it stays on through the early lick
        cue = cue_after_lick = w.on(trial.context.cue_output_role(side))
    go_cue = dict(sounds["go_cue"]) if sounds is not None else w.on("go_cue")
    free_drop = {"left": GIVE_LEFT_DROP, "right": GIVE_RIGHT_DROP}[side]
    after_delay = free_drop if trial.free_drop else RESPONSE_CUE
    wrong_lick = BOTH_REWARDED_STATE if trial.both_rewarded else TIMEOUT
    gate = params.decoder_gated_delay

    sm = StateMachine()
    code = params.bitcode
    after_trigger = PRE_SAMPLE_PERIOD if code is None else BITCODE_START
    sm.add_state(TRIG_TRIAL_START, t.trig_trial_start, {"Tup": after_trigger}, w.on("imaging_trigger"))
    if code is not None:  # the trial number, taken out of the baseline
        add_bitcode_states(sm, trial.trial_number, code, w.on("trial_bitcode"), then=PRE_SAMPLE_PERIOD)
    baseline = t.pre_sample - (code.duration_s if code is not None else 0.0)
    sm.add_state(PRE_SAMPLE_PERIOD, baseline, {"Tup": SAMPLE_PERIOD})  # licks here are ignored
    sample_licks = any_lick(EARLY_LICK_SAMPLE) if stage.sample_enforcement else {}
    sm.add_state(SAMPLE_PERIOD, t.sample, {**sample_licks, "Tup": DELAY_PERIOD}, cue)
    sm.add_state(EARLY_LICK_SAMPLE, t.early_lick_sample, {"Tup": SAMPLE_PERIOD}, cue_after_lick)
    if gate is None:
        sm.add_state(DELAY_PERIOD, stage.delay_s, {**any_lick(EARLY_LICK_DELAY), "Tup": after_delay})
    else:
        sm.add_state(DELAY_PERIOD, gate.min_s, {**any_lick(EARLY_LICK_DELAY), "Tup": DECODER_WAIT_STATE})
        sm.add_state(DECODER_WAIT_STATE, gate.max_s - gate.min_s,
                     {**any_lick(EARLY_LICK_DELAY), gate.event: after_delay, "Tup": after_delay})
    sm.add_state(EARLY_LICK_DELAY, t.early_lick_delay, {"Tup": DELAY_PERIOD})
    sm.add_state(GIVE_LEFT_DROP, params.valve_s("left"), {"Tup": RESPONSE_CUE}, w.on("left_valve"))
    sm.add_state(GIVE_RIGHT_DROP, params.valve_s("right"), {"Tup": RESPONSE_CUE}, w.on("right_valve"))
    sm.add_state(RESPONSE_CUE, t.response_cue, {"Tup": ANSWER_PERIOD}, go_cue)
    sm.add_state(ANSWER_PERIOD, t.answer_period,
                 {w.lick(side): REWARD, w.lick(other_side(side)): wrong_lick, "Tup": NO_RESPONSE})
    sm.add_state(REWARD, params.valve_s(side), {"Tup": REWARD_CONSUMPTION}, w.on(f"{side}_valve"))
    if trial.both_rewarded:
        other = other_side(side)
        sm.add_state(BOTH_REWARDED_STATE, params.valve_s(other), {"Tup": REWARD_CONSUMPTION},
                     w.on(f"{other}_valve"))
    sm.add_state(REWARD_CONSUMPTION, t.reward_consumption, {"Tup": STOP_LICKING})
    sm.add_state(TIMEOUT, stage.timeout_s, {"Tup": STOP_LICKING})  # silent error timeout
    sm.add_state(NO_RESPONSE, t.no_response, {"Tup": STOP_LICKING})
    sm.add_state(STOP_LICKING, t.stop_licking, {**any_lick(STOP_LICKING_RETURN), "Tup": INTER_TRIAL_INTERVAL})
    sm.add_state(STOP_LICKING_RETURN, 0.0, {"Tup": STOP_LICKING})  # re-entering restarts StopLicking
    sm.add_state(INTER_TRIAL_INTERVAL, t.inter_trial_interval, {"Tup": TRIAL_END})  # licks ignored
    sm.add_state(TRIAL_END, t.trial_end, {"Tup": EXIT})
    return sm.validate()
