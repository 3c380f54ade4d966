"""The pure Bpod codec: hardware description, event layout, `C` bodies and the trial stream."""

from __future__ import annotations

import random

import pytest

from hardware.bpod.codec import (
    CodecError,
    EventsReceived,
    SoftCodeReceived,
    StateMachineBody,
    TrialEnded,
    TrialStarted,
    TrialStreamParser,
    decode_state_machine_body,
    encode_confirmation,
    encode_events,
    encode_soft_code,
    encode_state_machine,
    encode_trial_end,
    encode_trial_start_time,
)
from hardware.bpod.hardware_description import (
    EventTable,
    HardwareDescriptionError,
    decode_hardware_description,
    encode_hardware_description,
    input_channel_names,
    output_channel_names,
    preset,
)


def encode_trial_start(start_us: int, confirmation: int | None) -> bytes:
    """A trial start as the device sends it: the confirmation byte after a new `C`, then the time."""
    prefix = b"" if confirmation is None else encode_confirmation(confirmation == 1)
    return prefix + encode_trial_start_time(start_us)


PRESETS = [("r2", 22), ("r2", 23), ("r2plus", 23), ("r1", 22), ("r1", 23), ("r2.5", 23)]

# Spec section 1.3: the r2 / firmware 23 reply that bpod-core's own fixture uses.
H_R2_V23 = (
    bytes.fromhex("0001 6400 69 05 100810 0d") + b"UUUUUXZBBPPPP" + bytes([0x11]) + b"UUUUUXZBBPPPPVVVV"
)
H_R2_V22 = bytes.fromhex("0001 6400 5a 100810 0c") + b"UUUUUXBBPPPP" + bytes([0x10]) + b"UUUUUXBBPPPPVVVV"

# Spec section 3.3: a v23 r2 state machine as bpod-core sends it.
SPEC_EXAMPLE = bytes.fromhex(
    "43 01 01 75 00 02 03 02 01 01 02 00 00 02 0a 0a 0d 01 00 00 00 01 00 02 00 00 01 01 ff 00 01 00 00"
    " 07 fe fe 01 00 00 00 00 00 00 00 03 01 01 01 fe 6d 0a 01 01 01 02 01 00 00 00 00 00 04 00 00 00 00"
    " 00 00 00 64 00 00 00 64 00 00 00 d0 07 00 00 00 00 00 00 b8 0b 00 00 00 00 00 00 00 00 00 00 e8 03"
    " 00 00 00 00 00 00 00 00 00 00 f4 01 00 00 00 00 00 00 05 00 00 00 00"
)


@pytest.mark.parametrize(("model", "firmware"), PRESETS)
def test_hardware_description_round_trip(model: str, firmware: int) -> None:
    hw = preset(model, firmware)
    decoded = decode_hardware_description(encode_hardware_description(hw), hw.firmware_major, hw.machine_type)
    assert decoded.inputs == hw.inputs and decoded.outputs == hw.outputs
    assert decoded.max_serial_events == hw.max_serial_events
    assert (decoded.n_global_timers, decoded.n_global_counters, decoded.n_conditions) == (
        hw.n_global_timers,
        hw.n_global_counters,
        hw.n_conditions,
    )
    assert decoded.serial_message_max_bytes == (hw.serial_message_max_bytes if firmware >= 23 else 3)


def test_spec_hardware_replies_decode_to_presets() -> None:
    assert encode_hardware_description(preset("r2", 23)) == H_R2_V23
    assert encode_hardware_description(preset("r2", 22)) == H_R2_V22
    v23 = decode_hardware_description(H_R2_V23, 23, 3)
    assert v23.serial_message_max_bytes == 5 and v23.max_serial_events == 105
    with pytest.raises(HardwareDescriptionError, match="truncated"):
        decode_hardware_description(H_R2_V23[:-3], 23, 3)
    with pytest.raises(HardwareDescriptionError, match="unexpected bytes"):
        decode_hardware_description(H_R2_V22 + b"\x00", 22, 3)


@pytest.mark.parametrize(
    ("model", "firmware", "soft1", "app0", "bnc1", "port1", "gt_start", "gt_end", "gc", "cond", "tup"),
    [
        ("r1", 22, 45, None, 60, 68, 84, 89, 94, 99, 104),
        ("r2", 22, 75, None, 90, 94, 102, 118, 134, 142, 158),
        ("r2", 23, 75, 90, 105, 109, 117, 133, 149, 157, 173),
        ("r2plus", 23, 45, 60, 83, 87, 97, 113, 129, 137, 153),
    ],
)
def test_event_layout_matches_spec_table(
    model: str,
    firmware: int,
    soft1: int,
    app0: int | None,
    bnc1: int,
    port1: int,
    gt_start: int,
    gt_end: int,
    gc: int,
    cond: int,
    tup: int,
) -> None:
    table = EventTable.default(preset(model, firmware))
    assert table.code("SoftCode1") == soft1
    if app0 is not None:
        assert table.code("APP_SoftCode0") == app0
    assert table.code("BNC1High") == bnc1 and table.code("BNC1Low") == bnc1 + 1
    assert table.code("Port1In") == port1 and table.code("Port1Out") == port1 + 1
    assert table.code("GlobalTimer1_Start") == gt_start == table.timer_start_offset
    assert table.code("GlobalTimer1_End") == gt_end
    assert table.code("GlobalCounter1_End") == gc
    assert table.code("Condition1") == cond
    assert table.code("Tup") == tup == table.tup_code
    assert table.digital_input_of_code(port1) == (input_channel_names(table.hw).index("Port1"), True)


def test_channel_names_r2_v23() -> None:
    hw = preset("r2", 23)
    assert input_channel_names(hw) == [
        "Serial1",
        "Serial2",
        "Serial3",
        "Serial4",
        "Serial5",
        "USB",
        "APP",
        "BNC1",
        "BNC2",
        "Port1",
        "Port2",
        "Port3",
        "Port4",
    ]
    assert output_channel_names(hw)[5:] == [
        "SoftCode",
        "APP_SoftCode",
        "BNC1",
        "BNC2",
        "PWM1",
        "PWM2",
        "PWM3",
        "PWM4",
        "Valve1",
        "Valve2",
        "Valve3",
        "Valve4",
    ]


def test_event_allocation_is_checked() -> None:
    hw = preset("r2", 23)
    with pytest.raises(HardwareDescriptionError, match="serial channels"):
        EventTable(hw, (15, 15))
    with pytest.raises(HardwareDescriptionError, match="exceeds"):
        EventTable(hw, (20,) * 7)


def test_spec_example_state_machine_round_trips() -> None:
    hw = preset("r2", 23)
    body = decode_state_machine_body(SPEC_EXAMPLE[5:], hw)
    assert body.n_states == 2 and body.n_global_timers == 3 and body.counter_resets == [0, 2]
    assert body.counter_matrix[1] == [(1, 255)] and body.timer_durations == [2000, 0, 3000]
    assert encode_state_machine(body, hw, run_asap=True, use_back_signal=True) == SPEC_EXAMPLE


def _random_body(rng: random.Random, hw_n_timers: int, wide: bool) -> StateMachineBody:
    n_states = rng.randint(1, 12)
    n_t, n_c, n_k = rng.randint(0, hw_n_timers), rng.randint(0, 8), rng.randint(0, 16)
    body = StateMachineBody.empty(n_states, n_t, n_c, n_k)
    vmax = 0xFFFF if wide else 0xFF
    for s in range(n_states):
        body.tup_targets[s] = rng.randint(0, n_states)
        body.input_matrix[s] = [
            (rng.randint(0, 100), rng.randint(0, n_states)) for _ in range(rng.randint(0, 4))
        ]
        body.output_matrix[s] = [(rng.randint(0, 16), rng.randint(0, vmax)) for _ in range(rng.randint(0, 4))]
        for matrix, n in (
            (body.timer_start_matrix, n_t),
            (body.timer_end_matrix, n_t),
            (body.counter_matrix, n_c),
            (body.condition_matrix, n_k),
        ):
            if n:
                matrix[s] = [(rng.randrange(n), rng.randint(0, n_states)) for _ in range(rng.randint(0, 2))]
        body.counter_resets[s] = rng.randint(0, n_c)
        body.state_timers[s] = rng.randint(0, 2**32 - 1)
        body.timers_trigger[s] = rng.randint(0, 2**n_t - 1)
        body.timers_cancel[s] = rng.randint(0, 2**n_t - 1)
    for t in range(n_t):
        body.timer_channels[t] = rng.choice([254, rng.randint(0, 16)])
        body.timer_on_values[t] = rng.randint(0, vmax)
        body.timer_loop_modes[t] = rng.randint(0, 5)
        body.timer_onset_triggers[t] = rng.randint(0, 2**n_t - 1)
        body.timer_durations[t] = rng.randint(0, 100_000)
        body.timer_onset_delays[t] = rng.randint(0, 100_000)
    for c in range(n_c):
        body.counter_events[c] = rng.randint(0, 254)
        body.counter_thresholds[c] = rng.randint(0, 1000)
    for k in range(n_k):
        body.condition_channels[k] = rng.randint(0, 20)
        body.condition_values[k] = rng.randint(0, 1)
    return body


@pytest.mark.parametrize(("model", "firmware"), [("r2", 22), ("r2", 23), ("r2plus", 23), ("r1", 22)])
def test_state_machine_bodies_round_trip(model: str, firmware: int) -> None:
    hw = preset(model, firmware)
    rng = random.Random(f"{model}{firmware}")
    for _ in range(200):
        body = _random_body(rng, hw.n_global_timers, hw.machine_type >= 4)
        if hw.machine_type >= 4:
            body.analog_thresh_enable = [(0, 3)]
        if firmware >= 23 and rng.random() < 0.3:
            body.serial_message_ops = [(1, [(1, b"\x01\x02"), (2, b"\xff")])]
        message = encode_state_machine(body, hw, run_asap=False)
        assert message[:1] == b"C" and int.from_bytes(message[3:5], "little") == len(message) - 5
        assert decode_state_machine_body(message[5:], hw) == body


def test_malformed_bodies_are_refused() -> None:
    hw = preset("r2", 23)
    with pytest.raises(CodecError, match="truncated"):
        decode_state_machine_body(SPEC_EXAMPLE[5:-4], hw)
    with pytest.raises(CodecError, match="left over"):
        decode_state_machine_body(SPEC_EXAMPLE[5:] + b"\x00", hw)
    with pytest.raises(CodecError, match="no states"):
        decode_state_machine_body(b"\x00\x00\x00\x00", hw)
    body = StateMachineBody.empty(2)
    body.state_timers = [1]
    with pytest.raises(CodecError, match="state_timers has 1 entries"):
        encode_state_machine(body, hw, run_asap=True)


def test_trial_stream_with_queued_trial_in_one_read() -> None:
    stream = (
        encode_trial_start(1_000_000, confirmation=1)
        + encode_events([109], 12)
        + encode_soft_code(3)
        + encode_events([110, 173], 5700)
        + encode_trial_end(5700, 5701, 1_570_000)
        + encode_trial_start(1_570_000, confirmation=1)
    )
    expected = [
        TrialStarted(1_000_000, True),
        EventsReceived((109,), 12),
        SoftCodeReceived(3),
        EventsReceived((110, 173), 5700),
        TrialEnded(5700, 5701, 1_570_000),
        TrialStarted(1_570_000, True),
    ]
    parser = TrialStreamParser()
    parser.state_machine_sent()
    first = parser.feed(stream[:-9])
    parser.state_machine_sent()  # the host queued the next trial while the first ran
    assert first + parser.feed(stream[-9:]) == expected

    bytewise = TrialStreamParser()
    bytewise.state_machine_sent()
    messages = []
    for i in range(len(stream)):
        if i == len(stream) - 9:
            bytewise.state_machine_sent()
        messages += bytewise.feed(stream[i : i + 1])
    assert messages == expected


def test_trial_start_without_new_state_machine_has_no_confirmation() -> None:
    parser = TrialStreamParser()
    assert parser.feed(encode_trial_start(200, None)) == [TrialStarted(200, None)]
    unacknowledged = TrialStreamParser()
    unacknowledged.state_machine_sent()
    assert unacknowledged.feed(encode_trial_start(300, 0)) == [TrialStarted(300, False)]


def test_trial_stream_out_of_protocol_byte_is_an_error() -> None:
    parser = TrialStreamParser()
    parser.feed(encode_trial_start(0, None))
    with pytest.raises(CodecError, match="unexpected op code 0x07"):
        parser.feed(b"\x07\x01\x02")


def test_next_trial_queued_before_the_current_start_was_parsed() -> None:
    """The host may send the next `C` before its reader has parsed the current trial's start."""
    parser = TrialStreamParser()
    parser.state_machine_sent()
    parser.state_machine_sent()
    stream = encode_trial_start(100, 1) + encode_trial_end(10, 10, 1100) + encode_trial_start(1100, 1)
    expected = [TrialStarted(100, True), TrialEnded(10, 10, 1100), TrialStarted(1100, True)]
    assert parser.feed(stream) == expected
