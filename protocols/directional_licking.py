"""The delayed-response directional-licking task: one trial as a Bpod state machine.

    TrigTrialStart -> SamplePeriod -> DelayPeriod -> [GiveLeftDrop | GiveRightDrop] -> ResponseCue
    -> AnswerPeriod -> Reward -> RewardConsumption | TimeOut | NoResponse -> StopLicking -> TrialEnd

A lick in the sample epoch (once the stage enforces it) or in the delay goes to EarlyLickSample /
EarlyLickDelay, which restart that epoch; a lick in StopLicking goes through StopLickingReturn back to
a fresh StopLicking, so the trial ends only after the mouse has stopped licking. Every state is in
every trial's machine (unused ones are simply not reached), so trial records line up.

Durations come from the settings (`TimingSettings`) and the training stage (delay, timeout, sample
enforcement); valve times are passed in already calibrated; outputs are named by role (`WiringSettings`).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.contexts import Side, other_side
from protocols.selection import TrialSpec
from protocols.settings import TimingSettings, WiringSettings
from protocols.state_machine import EXIT, StateMachine

STATES: tuple[str, ...] = (
    "TrigTrialStart", "SamplePeriod", "EarlyLickSample", "DelayPeriod", "EarlyLickDelay",
    "GiveLeftDrop", "GiveRightDrop", "ResponseCue", "AnswerPeriod", "Reward", "RewardConsumption",
    "TimeOut", "NoResponse", "StopLicking", "StopLickingReturn", "TrialEnd",
)
"""The spec's states, in the order they are added (the first one runs first)."""
BOTH_REWARDED_STATE = "RewardOtherSide"  # both_rewarded mode: a lick on the other side is rewarded too
DECODER_WAIT_STATE = "DelayDecoderWait"  # decoder-gated delay: the delay after its minimum


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

    def valve_s(self, side: Side) -> float:
        return self.left_valve_s if side == "left" else self.right_valve_s


def build_trial(trial: TrialSpec, params: TaskParameters) -> StateMachine:
    """The state machine of one trial of the directional-licking task."""
    t, w, stage, side = params.timing, params.wiring, trial.stage, trial.side

    def any_lick(target: str) -> dict[str, str]:
        return {w.lick("left"): target, w.lick("right"): target}

    cue = w.on(trial.context.cue_output_role(side))  # pole in, or the high / low tone
    free_drop = {"left": "GiveLeftDrop", "right": "GiveRightDrop"}[side]
    after_delay = free_drop if trial.free_drop else "ResponseCue"
    wrong_lick = BOTH_REWARDED_STATE if trial.both_rewarded else "TimeOut"
    gate = params.decoder_gated_delay

    sm = StateMachine()
    sm.add_state("TrigTrialStart", t.trig_trial_start, {"Tup": "SamplePeriod"}, w.on("imaging_trigger"))
    sample_licks = any_lick("EarlyLickSample") if stage.sample_enforcement else {}
    sm.add_state("SamplePeriod", t.sample, {**sample_licks, "Tup": "DelayPeriod"}, cue)
    sm.add_state("EarlyLickSample", t.early_lick_sample, {"Tup": "SamplePeriod"}, cue)  # the cue stays on
    if gate is None:
        sm.add_state("DelayPeriod", stage.delay_s, {**any_lick("EarlyLickDelay"), "Tup": after_delay})
    else:
        sm.add_state("DelayPeriod", gate.min_s, {**any_lick("EarlyLickDelay"), "Tup": DECODER_WAIT_STATE})
        sm.add_state(DECODER_WAIT_STATE, gate.max_s - gate.min_s,
                     {**any_lick("EarlyLickDelay"), gate.event: after_delay, "Tup": after_delay})
    sm.add_state("EarlyLickDelay", t.early_lick_delay, {"Tup": "DelayPeriod"})
    sm.add_state("GiveLeftDrop", params.valve_s("left"), {"Tup": "ResponseCue"}, w.on("left_valve"))
    sm.add_state("GiveRightDrop", params.valve_s("right"), {"Tup": "ResponseCue"}, w.on("right_valve"))
    sm.add_state("ResponseCue", t.response_cue, {"Tup": "AnswerPeriod"}, w.on("go_cue"))
    sm.add_state("AnswerPeriod", t.answer_period,
                 {w.lick(side): "Reward", w.lick(other_side(side)): wrong_lick, "Tup": "NoResponse"})
    sm.add_state("Reward", params.valve_s(side), {"Tup": "RewardConsumption"}, w.on(f"{side}_valve"))
    if trial.both_rewarded:
        other = other_side(side)
        sm.add_state(BOTH_REWARDED_STATE, params.valve_s(other), {"Tup": "RewardConsumption"},
                     w.on(f"{other}_valve"))
    sm.add_state("RewardConsumption", t.reward_consumption, {"Tup": "StopLicking"})
    sm.add_state("TimeOut", stage.timeout_s, {"Tup": "StopLicking"})  # silent error timeout
    sm.add_state("NoResponse", t.no_response, {"Tup": "StopLicking"})
    sm.add_state("StopLicking", t.stop_licking, {**any_lick("StopLickingReturn"), "Tup": "TrialEnd"})
    sm.add_state("StopLickingReturn", 0.0, {"Tup": "StopLicking"})  # re-entering restarts StopLicking
    sm.add_state("TrialEnd", t.trial_end, {"Tup": EXIT})
    return sm.validate()
