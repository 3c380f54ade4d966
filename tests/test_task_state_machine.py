"""The directional-licking trial as a state machine: structure only (the emulator runs it elsewhere)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from hardware.bpod.compiler import compile_state_machine
from hardware.bpod.hardware_description import EventTable, preset
from protocols.contexts import (
    SIDES,
    Context,
    UnknownContextError,
    context_named,
    contexts_from_settings,
)
from protocols.directional_licking import (
    BOTH_REWARDED_STATE,
    DECODER_WAIT_STATE,
    STATES,
    DecoderGate,
    build_trial,
)
from protocols.selection import TrialSpec
from protocols.settings import TrainingStage
from protocols.state_machine import EXIT, State, StateMachine
from rig.session import task_parameters
from rig.settings import Settings, parse_settings

SETTINGS = Settings()
CONTEXTS = contexts_from_settings(SETTINGS.contexts)
STAGES = {stage.name: stage for stage in SETTINGS.task.stages}
PARAMS = task_parameters(SETTINGS)
SPEC_STATES = (
    "TrigTrialStart", "PreSamplePeriod", "SamplePeriod", "EarlyLickSample", "DelayPeriod", "EarlyLickDelay",
    "GiveLeftDrop", "GiveRightDrop", "ResponseCue", "AnswerPeriod", "Reward", "RewardConsumption", "TimeOut",
    "NoResponse", "StopLicking", "StopLickingReturn", "InterTrialInterval", "TrialEnd",
)


def make_trial(side: str = "left", context: str = "tactile", stage: str = "full", free_drop: bool = False,
               mode: str | None = None) -> TrialSpec:
    spec = STAGES[stage]
    return TrialSpec(trial_number=1, side=side, context=CONTEXTS[context], stage=spec,  # type: ignore[arg-type]
                     mode=mode or spec.selection, free_drop=free_drop)  # type: ignore[arg-type]


def states(sm: StateMachine) -> dict[str, State]:
    return {state.name: state for state in sm.states}


def compiles(sm: StateMachine) -> None:
    """Every event and output name exists on a Bpod 2 with firmware 23 (the default rig)."""
    hw = preset("r2", 23)
    compile_state_machine(sm.to_dict(), hw, EventTable.default(hw))


# -- contexts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("context", "side", "cue"), [
    ("tactile", "right", "pole_posterior"), ("tactile", "left", "pole_anterior"),
    ("tactile-reversed", "right", "pole_anterior"), ("tactile-reversed", "left", "pole_posterior"),
    ("auditory", "right", "tone_high"), ("auditory", "left", "tone_low"),
    ("auditory-reversed", "right", "tone_low"), ("auditory-reversed", "left", "tone_high"),
])
def test_context_maps_side_to_cue_and_back(context: str, side: str, cue: str) -> None:
    ctx = CONTEXTS[context]
    assert ctx.cue_for(side) == cue  # type: ignore[arg-type]
    assert ctx.rewarded_side(cue) == side  # type: ignore[arg-type]


def test_context_errors_name_the_valid_choices() -> None:
    with pytest.raises(UnknownContextError, match=r"'tactil'.*did you mean 'tactile'.*auditory-reversed"):
        context_named("tactil", CONTEXTS)
    with pytest.raises(UnknownContextError, match="contexts: tactile, tactile-reversed"):
        Context.from_settings("olfactory", SETTINGS.contexts)
    with pytest.raises(ValueError, match="modality must be one of tactile, auditory"):
        Context("smell", "olfactory", "normal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no cue 'tone_high'"):
        CONTEXTS["tactile"].rewarded_side("tone_high")
    with pytest.raises(ValueError, match="side must be 'left' or 'right'"):
        CONTEXTS["tactile"].cue_for("center")  # type: ignore[arg-type]


# -- every state, every path -----------------------------------------------------------------------


@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("side", SIDES)
def test_every_spec_state_is_present_in_order(side: str, context: str) -> None:
    sm = build_trial(make_trial(side, context), PARAMS)
    assert STATES == SPEC_STATES
    assert sm.state_names == SPEC_STATES
    compiles(sm)


@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("side", SIDES)
def test_first_lick_decides_by_the_trial_side(side: str, context: str) -> None:
    s = states(build_trial(make_trial(side, context), PARAMS))
    left, right = "Port1In", "Port2In"
    correct, wrong = (left, right) if side == "left" else (right, left)
    assert s["AnswerPeriod"].transitions == {correct: "Reward", wrong: "TimeOut", "Tup": "NoResponse"}
    assert s["Reward"].actions == ({"Valve1": 1} if side == "left" else {"Valve2": 1})


def test_the_main_path_in_the_words_of_the_spec() -> None:
    s = states(build_trial(make_trial("right"), PARAMS))
    tup = {name: state.transitions["Tup"] for name, state in s.items()}
    assert tup == {
        "TrigTrialStart": "PreSamplePeriod", "PreSamplePeriod": "SamplePeriod", "SamplePeriod": "DelayPeriod",
        "EarlyLickSample": "SamplePeriod",
        "DelayPeriod": "ResponseCue", "EarlyLickDelay": "DelayPeriod", "GiveLeftDrop": "ResponseCue",
        "GiveRightDrop": "ResponseCue", "ResponseCue": "AnswerPeriod", "AnswerPeriod": "NoResponse",
        "Reward": "RewardConsumption", "RewardConsumption": "StopLicking", "TimeOut": "StopLicking",
        "NoResponse": "StopLicking", "StopLicking": "InterTrialInterval", "StopLickingReturn": "StopLicking",
        "InterTrialInterval": "TrialEnd", "TrialEnd": EXIT,
    }
    licks_to = {"Port1In", "Port2In"}
    assert {e for e, target in s["DelayPeriod"].transitions.items() if target == "EarlyLickDelay"} == licks_to
    assert {e for e, t in s["StopLicking"].transitions.items() if t == "StopLickingReturn"} == licks_to
    for quiet in ("PreSamplePeriod", "EarlyLickSample", "EarlyLickDelay", "ResponseCue", "Reward",
                  "RewardConsumption", "TimeOut", "NoResponse", "StopLickingReturn", "InterTrialInterval",
                  "TrialEnd"):
        assert set(s[quiet].transitions) == {"Tup"}, quiet


# -- outputs by role -------------------------------------------------------------------------------


@pytest.mark.parametrize(("context", "side", "line", "value"), [
    ("tactile", "left", "BNC2", 1), ("tactile", "right", "BNC2", 1),
    ("tactile-reversed", "right", "BNC2", 1),
    ("auditory", "right", "PWM3", 255), ("auditory", "left", "PWM2", 255),
    ("auditory-reversed", "right", "PWM2", 255), ("auditory-reversed", "left", "PWM3", 255),
])
def test_the_cue_is_on_in_the_sample_epoch_only(context: str, side: str, line: str, value: int) -> None:
    s = states(build_trial(make_trial(side, context), PARAMS))
    assert s["SamplePeriod"].actions == {line: value}
    assert s["EarlyLickSample"].actions == {line: value}  # an early lick does not retract the pole
    cue_lines = {"BNC2", "PWM2", "PWM3"}
    for name, state in s.items():
        if name not in ("SamplePeriod", "EarlyLickSample"):
            assert not cue_lines & set(state.actions), name


def test_trigger_go_cue_and_valves_by_role() -> None:
    s = states(build_trial(make_trial("left"), PARAMS))
    assert s["TrigTrialStart"].actions == {"BNC1": 1}
    assert s["ResponseCue"].actions == {"PWM4": 255}
    assert s["GiveLeftDrop"].actions == {"Valve1": 1}
    assert s["GiveRightDrop"].actions == {"Valve2": 1}
    with_outputs = {name for name, state in s.items() if state.actions}
    assert with_outputs == {"TrigTrialStart", "SamplePeriod", "EarlyLickSample", "GiveLeftDrop",
                            "GiveRightDrop", "ResponseCue", "Reward"}


def test_rewiring_is_a_settings_change() -> None:
    wiring = PARAMS.wiring.model_copy(update=dict(left_lick="Port3", right_lick="BNC1", left_valve="Valve3",
                                                  go_cue="Wire1", imaging_trigger="BNC2", pole="Wire2"))
    params = dataclasses.replace(PARAMS, wiring=wiring)
    s = states(build_trial(make_trial("left"), params))
    assert s["AnswerPeriod"].transitions == {"Port3In": "Reward", "BNC1High": "TimeOut", "Tup": "NoResponse"}
    assert s["Reward"].actions == {"Valve3": 1}
    assert s["ResponseCue"].actions == {"Wire1": 1}
    assert s["TrigTrialStart"].actions == {"BNC2": 1}
    assert s["SamplePeriod"].actions == {"Wire2": 1}
    assert SETTINGS.wiring == PARAMS.wiring


# -- durations -------------------------------------------------------------------------------------


def custom_settings(**task: Any) -> Settings:
    timing = {"trig_trial_start": 0.02, "pre_sample": 0.9, "sample": 1.1, "early_lick_sample": 0.07,
              "early_lick_delay": 0.08, "response_cue": 0.15, "answer_period": 3.5,
              "reward_consumption": 0.9, "no_response": 0.03, "stop_licking": 1.7,
              "inter_trial_interval": 1.3, "trial_end": 0.04}
    return parse_settings({"task": {"timing": timing, **task}})


def test_durations_come_from_timing_and_the_stage() -> None:
    settings = custom_settings()
    t = settings.task.timing
    params = task_parameters(settings)
    for stage in STAGES.values():
        s = states(build_trial(make_trial("right", stage=stage.name), params))
        assert s["DelayPeriod"].timer_s == stage.delay_s
        assert s["TimeOut"].timer_s == stage.timeout_s
        expected = {"TrigTrialStart": t.trig_trial_start, "PreSamplePeriod": t.pre_sample,
                    "SamplePeriod": t.sample,
                    "EarlyLickSample": t.early_lick_sample, "EarlyLickDelay": t.early_lick_delay,
                    "ResponseCue": t.response_cue, "AnswerPeriod": t.answer_period,
                    "RewardConsumption": t.reward_consumption, "NoResponse": t.no_response,
                    "StopLicking": t.stop_licking, "InterTrialInterval": t.inter_trial_interval,
                    "TrialEnd": t.trial_end, "StopLickingReturn": 0.0}
        assert {name: s[name].timer_s for name in expected} == expected


def test_delay_ramp_reaches_the_machine() -> None:
    delays = [states(build_trial(make_trial(stage=name), PARAMS))["DelayPeriod"].timer_s for name in STAGES]
    assert delays == [0.3, 0.3, 0.3, 0.5, 0.8, 1.0, 1.3, 1.3]


def test_reward_and_free_drop_valve_times_are_the_calibrated_ones() -> None:
    curve_left = [{"valve_time_s": 0.02, "volume_ul": 1.0}, {"valve_time_s": 0.08, "volume_ul": 4.0}]
    curve_right = [{"valve_time_s": 0.01, "volume_ul": 1.0}, {"valve_time_s": 0.04, "volume_ul": 4.0}]
    settings = parse_settings({"task": {"reward_volume_ul": 2.5},
                               "bpod": {"valve_calibration": {"left": curve_left, "right": curve_right}}})
    params = task_parameters(settings)
    assert params.left_valve_s == pytest.approx(settings.reward_valve_time_s("left")) == pytest.approx(0.05)
    assert params.right_valve_s == pytest.approx(0.025)
    for side, valve_s in (("left", 0.05), ("right", 0.025)):
        s = states(build_trial(make_trial(side), params))
        assert s["Reward"].timer_s == pytest.approx(valve_s)
    s = states(build_trial(make_trial("left"), params))
    assert s["GiveLeftDrop"].timer_s == pytest.approx(0.05)
    assert s["GiveRightDrop"].timer_s == pytest.approx(0.025)


# -- free drop, sample enforcement, both rewarded ------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
def test_free_drop_comes_between_delay_and_go_cue(side: str) -> None:
    drop = "GiveLeftDrop" if side == "left" else "GiveRightDrop"
    with_drop = states(build_trial(make_trial(side, free_drop=True), PARAMS))
    assert with_drop["DelayPeriod"].transitions["Tup"] == drop
    assert with_drop[drop].transitions == {"Tup": "ResponseCue"}
    without = states(build_trial(make_trial(side, free_drop=False), PARAMS))
    assert without["DelayPeriod"].transitions["Tup"] == "ResponseCue"


def test_sample_enforcement_on_and_off() -> None:
    assert STAGES["full"].sample_enforcement and not STAGES["delay-1.3"].sample_enforcement
    on = states(build_trial(make_trial(stage="full"), PARAMS))
    assert on["SamplePeriod"].transitions == {"Port1In": "EarlyLickSample", "Port2In": "EarlyLickSample",
                                              "Tup": "DelayPeriod"}
    off = states(build_trial(make_trial(stage="delay-1.3"), PARAMS))
    assert off["SamplePeriod"].transitions == {"Tup": "DelayPeriod"}
    assert off["DelayPeriod"].transitions["Port1In"] == "EarlyLickDelay"  # the delay is always enforced


@pytest.mark.parametrize("side", SIDES)
def test_both_rewarded_pays_the_other_side_too(side: str) -> None:
    sm = build_trial(make_trial(side, stage="sample", mode="both_rewarded"), PARAMS)
    s = states(sm)
    other_lick, other_valve = ("Port2In", "Valve2") if side == "left" else ("Port1In", "Valve1")
    assert s["AnswerPeriod"].transitions[other_lick] == BOTH_REWARDED_STATE
    assert s[BOTH_REWARDED_STATE].actions == {other_valve: 1}
    assert s[BOTH_REWARDED_STATE].transitions == {"Tup": "RewardConsumption"}
    assert set(SPEC_STATES) < set(sm.state_names)
    compiles(sm)


# -- closed loop hook ------------------------------------------------------------------------------


def test_decoder_gated_delay_is_off_by_default() -> None:
    assert PARAMS.decoder_gated_delay is None
    assert DECODER_WAIT_STATE not in build_trial(make_trial(), PARAMS).state_names


@pytest.mark.parametrize("free_drop", [False, True])
def test_decoder_gated_delay_structure(free_drop: bool) -> None:
    gate = DecoderGate(event="APP_SoftCode1", min_s=0.8, max_s=2.0)
    params = dataclasses.replace(task_parameters(SETTINGS), decoder_gated_delay=gate)
    sm = build_trial(make_trial("right", free_drop=free_drop), params)
    s = states(sm)
    after = "GiveRightDrop" if free_drop else "ResponseCue"
    assert s["DelayPeriod"].timer_s == 0.8
    assert s["DelayPeriod"].transitions == {"Port1In": "EarlyLickDelay", "Port2In": "EarlyLickDelay",
                                            "Tup": DECODER_WAIT_STATE}
    wait = s[DECODER_WAIT_STATE]
    assert wait.timer_s == pytest.approx(1.2)
    assert wait.transitions == {"Port1In": "EarlyLickDelay", "Port2In": "EarlyLickDelay",
                                "APP_SoftCode1": after, "Tup": after}
    assert s["EarlyLickDelay"].transitions == {"Tup": "DelayPeriod"}  # an early lick restarts the minimum
    assert sm.state_names.index(DECODER_WAIT_STATE) == sm.state_names.index("DelayPeriod") + 1
    compiles(sm)


def test_decoder_gate_refuses_an_empty_window() -> None:
    with pytest.raises(ValueError, match="min_s <= max_s"):
        DecoderGate("APP_SoftCode1", min_s=2.0, max_s=1.0)


def test_trial_spec_refuses_bad_side_and_mode() -> None:
    stage: TrainingStage = STAGES["full"]
    with pytest.raises(ValueError, match="side"):
        TrialSpec(1, "up", CONTEXTS["tactile"], stage, "antibias")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode must be one of"):
        TrialSpec(1, "left", CONTEXTS["tactile"], stage, "sometimes")  # type: ignore[arg-type]
