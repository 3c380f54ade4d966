"""The hardware-agnostic builder: structure errors that teach, and a lossless dict round trip."""

from __future__ import annotations

import json
import math

import pytest

from protocols.state_machine import StateMachine, StateMachineError


def trial_machine() -> StateMachine:
    """A small directional-licking trial, with every kind of item the builder knows."""
    sm = StateMachine()
    sm.set_global_timer(1, duration_s=0.5, channel="BNC1", on_value=1, off_value=0, onset_triggers=[2])
    sm.set_global_timer(2, duration_s=0.1, onset_delay_s=0.05, loop=2, loop_interval_s=0.02,
                        send_events=False)
    sm.set_global_counter(1, event="Port1In", threshold=3)
    sm.set_condition(1, channel="Port1", value=1)
    sm.add_state("TrialStart", timer_s=0.01, transitions={"Tup": "SamplePeriod"},
                 actions={"BNC1": 1, "GlobalTimerTrig": 1})
    sm.add_state("SamplePeriod", timer_s=1.3,
                 transitions={"Tup": "DelayPeriod", "GlobalCounter1_End": "exit"},
                 actions={"GlobalCounterReset": 1})
    sm.add_state("DelayPeriod", timer_s=1.2, transitions={"Tup": "ResponseCue", "Condition1": "DelayPeriod"})
    sm.add_state("ResponseCue", timer_s=0.1, transitions={"Tup": "AnswerPeriod"}, actions={"PWM1": 255})
    sm.add_state("AnswerPeriod", timer_s=2.0,
                 transitions={"Port1In": "Reward", "Port2In": ">back", "Tup": ">exit"},
                 actions={"GlobalTimerCancel": [1, 2]})
    sm.add_state("Reward", timer_s=0.05, transitions={"Tup": ">exit"}, actions={"Valve1": 1, "SoftCode": 3})
    return sm


def test_states_keep_their_order_and_may_be_referenced_before_they_exist() -> None:
    sm = trial_machine()
    assert sm.state_names == (
        "TrialStart", "SamplePeriod", "DelayPeriod", "ResponseCue", "AnswerPeriod", "Reward")
    assert len(sm) == 6
    assert sm.validate() is sm


def test_exit_is_accepted_with_or_without_the_arrow() -> None:
    sm = trial_machine()
    assert sm.states[1].transitions["GlobalCounter1_End"] == ">exit"


def test_round_trip_through_json() -> None:
    sm = trial_machine()
    data = sm.to_dict()
    text = json.dumps(data)
    again = StateMachine.from_dict(json.loads(text))
    assert again.to_dict() == data
    assert again.state_names == sm.state_names
    assert data["states"][4]["actions"]["GlobalTimerCancel"] == [1, 2]
    assert data["global_timers"][1]["send_events"] is False


def test_from_dict_refuses_an_unknown_key_and_names_the_nearest() -> None:
    data = trial_machine().to_dict()
    data["states"][0]["timer"] = data["states"][0].pop("timer_s")
    with pytest.raises(StateMachineError, match=r"unknown key 'timer'; did you mean 'timer_s'\?"):
        StateMachine.from_dict(data)


def test_duplicate_state_is_refused() -> None:
    sm = StateMachine()
    sm.add_state("ITI", timer_s=1.0, transitions={"Tup": ">exit"})
    with pytest.raises(StateMachineError, match="'ITI' is added twice"):
        sm.add_state("ITI")


def test_unknown_target_names_the_state_and_the_nearest_name() -> None:
    sm = StateMachine()
    sm.add_state("AnswerPeriod", timer_s=1.0, transitions={"Port1In": "Rewrad", "Tup": ">exit"})
    sm.add_state("Reward", timer_s=0.05, transitions={"Tup": ">exit"})
    with pytest.raises(StateMachineError) as err:
        sm.validate()
    message = str(err.value)
    assert "state 'AnswerPeriod'" in message
    assert "'Rewrad'" in message
    assert "did you mean 'Reward'?" in message


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "1.0"])
def test_bad_state_durations_are_refused(bad: object) -> None:
    sm = StateMachine()
    with pytest.raises(StateMachineError, match=r"state 'Wait': timer_s must be a finite number of seconds"):
        sm.add_state("Wait", timer_s=bad)  # type: ignore[arg-type]


def test_bad_timer_numbers_and_durations_are_refused() -> None:
    sm = StateMachine()
    with pytest.raises(StateMachineError, match="number must be an integer >= 1, got 0"):
        sm.set_global_timer(0, duration_s=1.0)
    with pytest.raises(StateMachineError, match="global timer 1: duration_s"):
        sm.set_global_timer(1, duration_s=-1.0)
    with pytest.raises(StateMachineError, match="loop must be an integer from 0 to 255"):
        sm.set_global_timer(1, duration_s=1.0, loop=300)
    with pytest.raises(StateMachineError, match="condition 1: value must be an integer from 0 to 1"):
        sm.set_condition(1, channel="Port1", value=2)
    with pytest.raises(StateMachineError, match="threshold"):
        sm.set_global_counter(1, event="Port1In", threshold=-1)


def test_bad_action_values_are_refused() -> None:
    sm = StateMachine()
    with pytest.raises(StateMachineError, match="the value of Valve1 must be an integer >= 0, got 1.5"):
        sm.add_state("Reward", actions={"Valve1": 1.5})
    with pytest.raises(StateMachineError, match="GlobalTimerTrig timer number .*got 0"):
        sm.add_state("Reward", actions={"GlobalTimerTrig": 0})
    with pytest.raises(StateMachineError, match="GlobalTimerCancel needs at least one"):
        sm.add_state("Reward", actions={"GlobalTimerCancel": []})


def test_reserved_state_names_are_refused() -> None:
    with pytest.raises(StateMachineError, match="reserved"):
        StateMachine().add_state(">exit")


def test_timers_counters_and_conditions_must_be_set_before_they_are_used() -> None:
    sm = StateMachine()
    sm.set_global_timer(1, duration_s=1.0)
    sm.add_state("A", transitions={"GlobalTimer2_End": ">exit", "Condition1": ">exit"},
                 actions={"GlobalTimerTrig": [1, 3], "GlobalCounterReset": 1})
    with pytest.raises(StateMachineError) as err:
        sm.validate()
    message = str(err.value)
    assert message.startswith("4 problems")
    assert "event 'GlobalTimer2_End' names global timer 2, which is not set (set: 1)" in message
    assert "event 'Condition1' names condition 1, which is not set (none is set)" in message
    assert "GlobalTimerTrig 3 names global timer 3" in message
    assert "GlobalCounterReset 1 names global counter 1" in message


def test_empty_and_oversized_machines_are_refused() -> None:
    with pytest.raises(StateMachineError, match="no states"):
        StateMachine().validate()
    sm = StateMachine()
    for i in range(256):
        sm.add_state(f"S{i}", transitions={"Tup": ">exit"})
    with pytest.raises(StateMachineError, match="256 states; at most 255"):
        sm.validate()


def test_a_timer_may_be_set_again() -> None:
    sm = StateMachine()
    sm.set_global_timer(1, duration_s=1.0)
    sm.set_global_timer(1, duration_s=2.0)
    assert [t.duration_s for t in sm.global_timers] == [2.0]
