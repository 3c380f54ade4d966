"""The state-machine compiler: every matrix lands where the firmware reads it, names are checked
against the device before anything is sent, and durations round to the nearest cycle."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hardware.bpod.codec import decode_state_machine_body, encode_state_machine
from hardware.bpod.compiler import (
    CompiledStateMachine,
    StateMachineCompileError,
    compile_state_machine,
    summarise_names,
)
from hardware.bpod.hardware_description import (
    EventTable,
    HardwareDescription,
    input_channel_names,
    output_channel_names,
    preset,
)
from protocols.state_machine import StateMachine

DEVICES = [preset("r2", 22), preset("r2", 23), preset("r2plus", 23)]
DEVICE_IDS = ["r2-v22", "r2-v23", "r2plus-v23"]

# Spec section 3.3, copied byte for byte (left column of the annotated example).
SPEC_EXAMPLE_HEX = """
43 01 01 75 00
02 03 02 01
01 02
00 | 00
02 0a 0a 0d 01 | 00
00 | 00
01 00 02 | 00
00 | 01 01 ff
00 | 01 00 00
07 fe fe
01 00 00 | 00 00 00
00 00 03 | 01 01 01
fe 6d
0a | 01
01 01 02
01 00 00 00
00 00 04 00
00 00 00 00 00 00
64 00 00 00 64 00 00 00
d0 07 00 00 00 00 00 00 b8 0b 00 00
00 00 00 00 00 00 00 00 e8 03 00 00
00 00 00 00 00 00 00 00 f4 01 00 00
00 00 00 00 05 00 00 00
00
"""


def spec_example() -> StateMachine:
    """The spec's example in our 1-based names: bpod-core timer 0 is GlobalTimer1, counter 1 is
    GlobalCounter2, condition 0 is Condition1, Port1_High is Port1In, TTLOut1 is BNC1."""
    sm = StateMachine()
    sm.set_global_timer(1, duration_s=0.2, channel="BNC1", on_value=1, off_value=0)
    sm.set_global_timer(3, duration_s=0.3, onset_delay_s=0.1, loop=3, loop_interval_s=0.05)
    sm.set_global_counter(2, event="Port1In", threshold=5)
    sm.set_condition(1, channel="Port2", value=1)
    sm.add_state("s0", timer_s=0.01, transitions={"Tup": "s1", "GlobalTimer1_End": ">exit"},
                 actions={"PWM2": 10, "Valve1": 1, "GlobalTimerTrig": 1})
    sm.add_state("s1", timer_s=0.01,
                 transitions={"Tup": ">exit", "GlobalCounter2_End": ">back", "Condition1": "s0"},
                 actions={"GlobalTimerCancel": 3, "GlobalCounterReset": 2})
    return sm.validate()


def trial_machine() -> StateMachine:
    """Every kind of entry at least once, on names all three devices have."""
    sm = StateMachine()
    sm.set_global_timer(1, duration_s=0.5, channel="BNC1", on_value=1, off_value=0, onset_triggers=[2])
    sm.set_global_timer(2, duration_s=0.1, onset_delay_s=0.05, loop=2, loop_interval_s=0.02,
                        send_events=False)
    sm.set_global_counter(1, event="Port1In", threshold=3)
    sm.set_condition(1, channel="Port1", value=1)
    sm.set_condition(2, channel="GlobalTimer2", value=0)
    sm.add_state("TrialStart", timer_s=0.01, transitions={"Tup": "SamplePeriod"},
                 actions={"BNC1": 1, "GlobalTimerTrig": 1})
    sm.add_state("SamplePeriod", timer_s=1.3,
                 transitions={"Tup": "DelayPeriod", "GlobalCounter1_End": "exit",
                              "GlobalTimer2_Start": "Reward"},
                 actions={"GlobalCounterReset": 1})
    sm.add_state("DelayPeriod", timer_s=1.2,
                 transitions={"Tup": "ResponseCue", "Condition1": "DelayPeriod", "Condition2": ">exit"})
    sm.add_state("ResponseCue", timer_s=0.1, transitions={"Tup": "AnswerPeriod"}, actions={"PWM1": 255})
    sm.add_state("AnswerPeriod", timer_s=2.0,
                 transitions={"Port2In": ">back", "Port1In": "Reward", "Tup": ">exit", "SoftCode2": "Reward",
                              "GlobalTimer1_End": ">exit"},
                 actions={"GlobalTimerCancel": [1, 2]})
    sm.add_state("Reward", timer_s=0.05, transitions={"Tup": ">exit"}, actions={"SoftCode": 3, "Valve1": 1})
    return sm.validate()


def compile_for(hw: HardwareDescription, description: Any) -> CompiledStateMachine:
    return compile_state_machine(description, hw, EventTable.default(hw))


def refusal(hw: HardwareDescription, description: Any) -> str:
    with pytest.raises(StateMachineCompileError) as err:
        compile_for(hw, description)
    return str(err.value)


def test_spec_example_compiles_to_exactly_its_bytes() -> None:
    hw = preset("r2", 23)
    compiled = compile_for(hw, spec_example())
    assert compiled.uses_back
    command = encode_state_machine(compiled.body, hw, run_asap=True, use_back_signal=compiled.uses_back)
    expected = bytes.fromhex(SPEC_EXAMPLE_HEX.replace("|", ""))
    assert command.hex(" ") == expected.hex(" ")
    assert compiled.command(hw, run_asap=True) == expected


def test_dict_and_builder_compile_the_same() -> None:
    hw = preset("r2", 23)
    assert compile_for(hw, spec_example().to_dict()) == compile_for(hw, spec_example())


@pytest.mark.parametrize("hw", DEVICES, ids=DEVICE_IDS)
def test_every_matrix_lands_where_the_firmware_reads_it(hw: HardwareDescription) -> None:
    events = EventTable.default(hw)
    compiled = compile_state_machine(trial_machine(), hw, events)
    body = compiled.body
    out = {name: i for i, name in enumerate(output_channel_names(hw))}
    inputs = {name: i for i, name in enumerate(input_channel_names(hw))}
    s = {name: i for i, name in enumerate(compiled.state_names)}
    exit_, back = 6, 255

    assert (body.n_states, body.n_global_timers, body.n_global_counters, body.n_conditions) == (6, 2, 1, 2)
    assert body.tup_targets == [s["SamplePeriod"], s["DelayPeriod"], s["ResponseCue"], s["AnswerPeriod"],
                                exit_, exit_]
    assert body.input_matrix[s["AnswerPeriod"]] == sorted([
        (events.code("Port2In"), back), (events.code("Port1In"), s["Reward"]),
        (events.code("SoftCode2"), s["Reward"])])
    assert all(code < events.timer_start_offset for row in body.input_matrix for code, _ in row)
    assert body.timer_start_matrix[s["SamplePeriod"]] == [(1, s["Reward"])]
    assert body.timer_end_matrix[s["AnswerPeriod"]] == [(0, exit_)]
    assert body.counter_matrix[s["SamplePeriod"]] == [(0, exit_)]
    assert body.condition_matrix[s["DelayPeriod"]] == [(0, s["DelayPeriod"]), (1, exit_)]
    assert body.output_matrix[s["TrialStart"]] == [(out["BNC1"], 1)]
    assert body.output_matrix[s["ResponseCue"]] == [(out["PWM1"], 255)]
    assert body.output_matrix[s["Reward"]] == [(out["SoftCode"], 3), (out["Valve1"], 1)]
    assert body.timers_trigger == [1, 0, 0, 0, 0, 0]
    assert body.timers_cancel == [0, 0, 0, 0, 0b11, 0]
    assert body.counter_resets == [0, 1, 0, 0, 0, 0]
    assert body.timer_channels == [out["BNC1"], 254]
    assert body.timer_on_values == [1, 0] and body.timer_off_values == [0, 0]
    assert body.timer_loop_modes == [0, 2]
    assert body.timer_send_events == [1, 0]
    assert body.timer_onset_triggers == [0b10, 0]
    assert body.timer_durations == [5000, 1000]
    assert body.timer_onset_delays == [0, 500]
    assert body.timer_loop_intervals == [0, 200]
    assert body.state_timers == [100, 13000, 12000, 1000, 20000, 500]
    assert body.counter_events == [events.code("Port1In")]
    assert body.counter_thresholds == [3]
    assert body.condition_channels == [inputs["Port1"], len(hw.inputs) + 1]
    assert body.condition_values == [1, 0]

    command = encode_state_machine(body, hw, run_asap=False, use_back_signal=compiled.uses_back)
    assert command[1:3] == bytes([0, 1])
    assert decode_state_machine_body(command[5:], hw) == body


@pytest.mark.parametrize("hw", DEVICES, ids=DEVICE_IDS)
def test_a_machine_without_timers_has_no_timer_sections(hw: HardwareDescription) -> None:
    sm = StateMachine()
    sm.add_state("ITI", timer_s=2.0, transitions={"Tup": ">exit"})
    compiled = compile_for(hw, sm)
    body = compiled.body
    assert (body.n_global_timers, body.n_global_counters, body.n_conditions) == (0, 0, 0)
    assert not compiled.uses_back
    payload = encode_state_machine(compiled.body, hw, run_asap=True, use_back_signal=False)[5:]
    assert decode_state_machine_body(payload, hw) == compiled.body


def test_state_names_by_index() -> None:
    compiled = compile_for(preset("r2", 23), spec_example())
    assert compiled.state_name(0) == "s0"
    assert compiled.state_name(2) == "exit"
    assert compiled.state_index("s1") == 1 and compiled.state_index("exit") == 2
    with pytest.raises(IndexError):
        compiled.state_name(3)


@pytest.mark.parametrize(("seconds", "cycles"), [
    (0.57, 5700), (1.13, 11300), (0.1 + 0.2, 3000), (0.7 + 0.1, 8000), (2.675, 26750), (1e-5, 0), (0, 0),
])
def test_durations_round_to_the_nearest_cycle(seconds: float, cycles: int) -> None:
    sm = StateMachine()
    sm.set_global_timer(1, duration_s=seconds, onset_delay_s=seconds, loop_interval_s=seconds)
    sm.add_state("Wait", timer_s=seconds, transitions={"Tup": ">exit"}, actions={"GlobalTimerTrig": 1})
    body = compile_for(preset("r2", 23), sm).body
    assert body.state_timers == [cycles]
    assert body.timer_durations == body.timer_onset_delays == body.timer_loop_intervals == [cycles]


def test_negative_and_non_numeric_durations_are_refused() -> None:
    data = spec_example().to_dict()
    data["states"][1]["timer_s"] = -0.01
    assert "state 's1': timer_s must be a finite number of seconds >= 0, got -0.01" in refusal(preset(), data)
    data["states"][1]["timer_s"] = True
    assert "got True" in refusal(preset(), data)


def test_unknown_event_names_the_nearest_valid_one() -> None:
    sm = StateMachine()
    sm.add_state("AnswerPeriod", timer_s=1.0, transitions={"Port5In": ">exit"})
    message = refusal(preset("r2", 23), sm)
    assert message.startswith("state 'AnswerPeriod': unknown event 'Port5In'; did you mean 'Port")
    assert "Port1In..Port4In" in message
    assert len(message) < 300
    assert compile_for(preset("r2plus", 23), sm).body.input_matrix[0] == [(95, 1)]  # r2+ has a fifth port
    sm = StateMachine()
    sm.add_state("AnswerPeriod", transitions={"Lick": ">exit"})
    assert "(valid: BNC1High..BNC2High, BNC1Low..BNC2Low, Port1In..Port4In, Port1Out..Port4Out," \
        in refusal(preset("r2", 23), sm)


def test_event_names_follow_the_allocation_and_hidden_names_are_refused() -> None:
    hw = preset("r2", 23)
    events = EventTable(hw, (10,) * 7)
    for name in ("Serial1_11", "_Unallocated70"):
        sm = StateMachine()
        sm.add_state("A", transitions={name: ">exit"})
        with pytest.raises(StateMachineCompileError, match=f"unknown event '{name}'"):
            compile_state_machine(sm, hw, events)


def test_app_soft_codes_only_exist_on_firmware_23() -> None:
    sm = StateMachine()
    sm.add_state("A", transitions={"APP_SoftCode0": ">exit"})
    assert compile_for(preset("r2", 23), sm).body.input_matrix[0] == [(90, 1)]
    assert "unknown event 'APP_SoftCode0'" in refusal(preset("r2", 22), sm)


def test_unknown_output_names_the_nearest_valid_one() -> None:
    sm = StateMachine()
    sm.add_state("Reward", timer_s=0.05, transitions={"Tup": ">exit"}, actions={"Valve5": 1})
    message = refusal(preset("r2", 23), sm)
    assert message.startswith("state 'Reward': unknown output 'Valve5'; did you mean 'Valve")
    assert "(valid: Valve1..Valve4, " in message
    sm = StateMachine()
    sm.add_state("Reward", actions={"Lick": 1})
    assert "(valid: SoftCode, APP_SoftCode, BNC1..BNC2, PWM1..PWM4, Valve1..Valve4, GlobalTimerTrig, ...)" \
        in refusal(preset("r2", 23), sm)
    assert len(message) < 250


@pytest.mark.parametrize(("action", "value", "expected"), [
    ("Valve1", 2, "Valve1 must be an integer from 0 to 1, got 2"),
    ("BNC2", -1, "BNC2 must be an integer from 0 to 1"),
    ("PWM1", 256, "PWM1 must be an integer from 0 to 255, got 256"),
    ("SoftCode", 255, "SoftCode must be an integer from 0 to 254"),
    ("Serial1", 1.5, "Serial1 must be an integer from 0 to 255, got 1.5"),
    ("GlobalTimerTrig", 17, "GlobalTimerTrig (global timer numbers) must be an integer from 1 to 16, got 17"),
    ("GlobalTimerTrig", 2, "GlobalTimerTrig 2 names global timer 2, which is not set (set: 1)"),
    ("GlobalTimerCancel", [1, 0], "GlobalTimerCancel (global timer numbers) must be an integer from 1 to 16"),
    ("GlobalCounterReset", 9, "GlobalCounterReset (global counter numbers) must be an integer from 1 to 8"),
])
def test_bad_output_values_are_refused(action: str, value: object, expected: str) -> None:
    data: dict[str, Any] = {
        "states": [{"name": "Reward", "timer_s": 0.1, "transitions": {"Tup": ">exit"},
                    "actions": {action: value}}],
        "global_timers": [{"number": 1, "duration_s": 1.0}],
    }
    message = refusal(preset("r2", 23), data)
    assert message.startswith("state 'Reward': ")
    assert expected in message


def test_too_many_timers_counters_or_conditions_are_refused() -> None:
    hw = preset("r2", 23)
    sm = StateMachine()
    sm.set_global_timer(17, duration_s=1.0)
    sm.add_state("A", transitions={"Tup": ">exit"}, actions={"GlobalTimerTrig": 17})
    assert "number 17 is beyond this device's 16 global timers (numbers 1..16)" in refusal(hw, sm)
    sm = StateMachine()
    sm.set_global_counter(9, event="Port1In", threshold=1)
    sm.add_state("A", transitions={"Tup": ">exit"})
    assert "beyond this device's 8 global counters" in refusal(hw, sm)
    r1 = preset("r1", 22)
    sm = StateMachine()
    sm.set_condition(6, channel="Port1", value=1)
    sm.add_state("A", transitions={"Tup": ">exit"})
    assert "beyond this device's 5 conditions" in refusal(r1, sm)


def test_unknown_state_target_in_a_raw_description_names_the_nearest_state() -> None:
    data = spec_example().to_dict()
    data["states"][0]["transitions"]["Tup"] = "s2"
    message = refusal(preset(), data)
    assert message.startswith("state 's0': Tup -> 's2', but no state is named 's2'; did you mean 's")


def test_duplicate_states_and_unknown_keys_in_a_raw_description_are_refused() -> None:
    data = spec_example().to_dict()
    data["states"].append(copy.deepcopy(data["states"][0]))
    assert "state 's0' is defined twice" in refusal(preset(), data)
    data = spec_example().to_dict()
    data["global_timer"] = data.pop("global_timers")
    assert "unknown key 'global_timer'; did you mean 'global_timers'?" in refusal(preset(), data)


def test_timer_and_condition_channels_are_checked() -> None:
    hw = preset("r2", 23)
    sm = StateMachine()
    sm.set_global_timer(1, duration_s=1.0, channel="BNC3")
    sm.add_state("A", transitions={"Tup": ">exit"}, actions={"GlobalTimerTrig": 1})
    assert "global timer 1: unknown output channel 'BNC3'; did you mean 'BNC" in refusal(hw, sm)
    sm = StateMachine()
    sm.set_global_timer(1, duration_s=1.0, channel="Valve1", on_value=2)
    sm.add_state("A", transitions={"Tup": ">exit"}, actions={"GlobalTimerTrig": 1})
    assert "on_value for Valve1 must be an integer from 0 to 1, got 2" in refusal(hw, sm)
    sm = StateMachine()
    sm.set_condition(1, channel="Port9", value=1)
    sm.add_state("A", transitions={"Condition1": ">exit"})
    assert "condition 1: unknown input channel 'Port9'; did you mean 'Port" in refusal(hw, sm)
    sm = StateMachine()
    sm.set_global_counter(1, event="Port9In", threshold=1)
    sm.add_state("A", transitions={"GlobalCounter1_End": ">exit"})
    assert "global counter 1: unknown event 'Port9In'" in refusal(hw, sm)


def test_too_many_states_are_refused() -> None:
    hw = preset("r2", 23)
    states = [{"name": f"S{i}", "transitions": {"Tup": ">exit"}} for i in range(255)]
    assert compile_for(hw, {"states": states}).body.n_states == 255
    assert "256 states; this device runs at most 255" in refusal(hw, {"states": [*states, {"name": "S255"}]})
    states[0]["transitions"] = {"Tup": ">back"}
    assert "255 states; this device runs at most 254 (with '>back'" in refusal(hw, {"states": states})
    small = HardwareDescription(23, 3, 128, 100, 105, 16, 8, 16, "UUUUUXZBBPPPP", "UUUUUXZBBPPPPVVVV")
    assert "at most 128" in refusal(small, {"states": [{"name": f"S{i}"} for i in range(129)]})


def test_event_table_must_belong_to_the_device() -> None:
    with pytest.raises(StateMachineCompileError, match="another hardware description"):
        compile_state_machine(spec_example(), preset("r2", 23), EventTable.default(preset("r2", 22)))


def test_name_summary_folds_numbered_runs_and_puts_similar_names_first() -> None:
    names = ["Serial1", "SoftCode", "BNC1", "BNC2", "PWM1", "PWM2", "Valve1", "Valve2"]
    assert summarise_names(names, like="Valve9", limit=2) == "Valve1..Valve2, Serial1, ..."
    assert summarise_names(names) == "Serial1, SoftCode, BNC1..BNC2, PWM1..PWM2, Valve1..Valve2"


def test_same_state_machine_as_bpod_core() -> None:
    """bpod-core (0-based names) compiles the trial machine to the same body, up to the order of
    pairs within a row: it keeps insertion order, we sort by event code (the firmware reads rows
    into a table, so the order carries no meaning)."""
    pytest.importorskip("bpod_core")
    from bpod_core.bpod._compiler import StateMachineCompiler
    from bpod_core.bpod.structs import VersionInfo, _HardwareConfiguration
    from bpod_core.fsm import StateMachine as BpodCoreStateMachine

    hw = preset("r2", 23)
    config = _HardwareConfiguration(
        max_states=256, cycle_period_us=100, max_serial_events=105, max_bytes_per_serial_message=5,
        n_global_timers=16, n_global_counters=8, n_conditions=16, n_inputs=13,
        input_description=b"UUUUUXZBBPPPP", n_outputs=17, output_description=b"UUUUUXZBBPPPPVVVV",
        cycle_frequency=10000, n_modules=5, n_flexio=0)
    version = VersionInfo(firmware=(23, 10), machine=3, machine_str="r2", pcb=4, bpod_core="test")
    modules = {f"Serial{k}": [f"Serial{k}_{j}" for j in range(15)] for k in range(1, 6)}
    compiler = StateMachineCompiler(config, version, modules, flexio_channel_types={}, threshold_voltages={})

    theirs = BpodCoreStateMachine()
    theirs.set_global_timer(0, 0.5, channel="TTLOut1", value_on=1, value_off=0, onset_trigger=0b10)
    theirs.set_global_timer(1, 0.1, onset_delay=0.05, loop=2, loop_interval=0.02, send_events=False)
    theirs.set_global_counter(0, "Port1_High", 3)
    theirs.set_condition(0, "Port1", 1)
    theirs.set_condition(1, "GlobalTimer1", 0)
    theirs.add_state("TrialStart", 0.01, {"Tup": "SamplePeriod"}, {"TTLOut1": 1, "GlobalTimerTrig": 0})
    theirs.add_state("SamplePeriod", 1.3,
                     {"Tup": "DelayPeriod", "GlobalCounter0_End": ">exit", "GlobalTimer1_Start": "Reward"},
                     {"GlobalCounterReset": 0})
    theirs.add_state("DelayPeriod", 1.2,
                     {"Tup": "ResponseCue", "Condition0": "DelayPeriod", "Condition1": ">exit"})
    theirs.add_state("ResponseCue", 0.1, {"Tup": "AnswerPeriod"}, {"PWM1": 255})
    theirs.add_state("AnswerPeriod", 2.0,
                     {"Port2_High": ">back", "Port1_High": "Reward", "Tup": ">exit", "SoftCode1": "Reward",
                      "GlobalTimer0_End": ">exit"},
                     {"GlobalTimerCancel": 0})
    theirs.add_state("Reward", 0.05, {"Tup": ">exit"}, {"SoftCode": 2, "Valve1": 1})  # +1 on their wire
    their_bytes, _ = compiler.compile(state_machine=theirs)

    ours = trial_machine().to_dict()
    ours["states"][4]["actions"]["GlobalTimerCancel"] = 1  # bpod-core cancels one timer per state
    compiled = compile_for(hw, ours)
    assert their_bytes[:3] == bytes([1]) + len(their_bytes[3:]).to_bytes(2, "little")  # back flag, length
    their_body = decode_state_machine_body(their_bytes[3:], hw)
    for matrix in ("input_matrix", "output_matrix", "timer_start_matrix", "timer_end_matrix",
                   "counter_matrix", "condition_matrix"):
        setattr(their_body, matrix, [sorted(row) for row in getattr(their_body, matrix)])
    assert their_body == compiled.body
