"""The pure emulator engine: bytes in, cycles advanced, bytes out (no pty, no threads)."""

from __future__ import annotations

import logging
import struct
import time

import pytest

from hardware.bpod.codec import (
    EventsReceived,
    SoftCodeReceived,
    StateMachineBody,
    TrialEnded,
    TrialStarted,
    TrialStreamParser,
    encode_state_machine,
    encode_trial_end,
)
from hardware.bpod.emulator import Firmware, OutputRecord, TrialRecord, World
from hardware.bpod.hardware_description import EventTable, encode_hardware_description, preset


class Rig:
    """A connected engine plus the host's view of its stream."""

    def __init__(self, model: str = "r2", firmware: int = 23, ports: bool = True,
                 faithful_quirks: bool = False) -> None:
        self.hw = preset(model, firmware)
        self.fw = Firmware(self.hw, faithful_quirks=faithful_quirks)
        self.world: World = self.fw.world
        self.events = EventTable.default(self.hw)
        self.parser = TrialStreamParser()
        assert self.command(b"6") == b"5"
        enable = [0 if c in "UXZ" else int(ports or c != "P") for c in self.hw.inputs]
        assert self.command(b"E" + bytes(enable)) == b"\x01"
        assert self.command(b"%" + bytes(self.hw.default_allocation())) == b"\x01"

    def command(self, data: bytes, cycles: int = 3) -> bytes:
        self.fw.receive_main(data)
        self.fw.advance_to(self.fw.cycle + cycles)
        return self.fw.take_main_output()

    def code(self, name: str) -> int:
        return self.events.code(name)

    def out(self, name: str) -> int:
        return self.world.output_names.index(name)

    def send(self, body: StateMachineBody, run_asap: bool = True, back: bool = True) -> None:
        self.parser.state_machine_sent()
        self.fw.receive_main(encode_state_machine(body, self.hw, run_asap=run_asap, use_back_signal=back))

    def run(self, cycles: int) -> list:
        self.fw.advance_to(self.fw.cycle + cycles)
        return self.parser.feed(self.fw.take_main_output())

    def start(self, body: StateMachineBody, back: bool = True) -> tuple[int, list]:
        """Send with RunASAP and run until the trial has started; returns its first cycle."""
        self.send(body, back=back)
        messages = self.run(2)
        assert isinstance(messages[0], TrialStarted), messages
        return self.world.trials[-1].cycle, messages

    def names(self, messages: list) -> list[tuple[int, list[str]]]:
        return [(m.cycle, [self.events.name(c) for c in m.codes])
                for m in messages if isinstance(m, EventsReceived)]


def machine(n_states: int, **counts: int) -> StateMachineBody:
    return StateMachineBody.empty(n_states, counts.get("timers", 0), counts.get("counters", 0),
                                  counts.get("conditions", 0))


# -- commands ------------------------------------------------------------------------------------


@pytest.mark.parametrize("firmware", [22, 23])
def test_handshake_and_command_replies(firmware: int) -> None:
    hw = preset("r2", firmware)
    fw = Firmware(hw)

    def ask(data: bytes, cycles: int = 3) -> bytes:
        fw.receive_main(data)
        fw.advance_to(fw.cycle + cycles)
        return fw.take_main_output()

    assert not fw.connected
    assert ask(b"6") == b"5" and fw.connected
    assert ask(b"F") == struct.pack("<HH", firmware, 3)
    assert ask(b"f") == (struct.pack("<H", 10) if firmware == 23 else b"")
    assert ask(b"v") == (bytes([4]) if firmware == 23 else b"")
    assert ask(b"H") == encode_hardware_description(hw)
    assert ask(b"G") == b"\x01"
    assert ask(b"E" + bytes(len(hw.inputs))) == b"\x01"
    assert ask(b"K\xff\x01") == b"\x01"
    assert ask(b"M", cycles=50) == b""  # modules get ~10 ms to describe themselves
    assert ask(b"", cycles=60) == bytes(5)  # then one 00 per UART port: no module
    assert ask(b"%" + bytes(len(hw.serial_channels))) == b"\x01"
    assert ask(b"*") == b"\x01"
    assert ask(b"S\x07") == b"\x02\x07"
    assert ask(b"L\x00\x02\x01\x02ab\x02\x01c") == b"\x01"
    assert ask(b">") == b"\x01"
    assert ask(b"T\x01\x03abc" + b"U\x01\x02" + b"J\x00\x01" + b"O\x0d\x01" + b"?", cycles=8) == b""
    assert ask(b"I" + bytes([hw.inputs.index("B")])) == b"\x00"
    if firmware == 23:
        assert ask(b":\x00") == b"\x01"
        assert ask(b"{") == b"" and fw.take_app_output() == bytes([222])
    idle_end = ask(b"X")
    assert len(idle_end) == 19 and idle_end[:3] == b"\x01\x01\xff"  # X while idle still ends a "trial"
    assert ask(b"Z") == b"1" and not fw.connected


def test_one_command_per_cycle_and_partial_command_waits() -> None:
    rig = Rig()
    rig.fw.receive_main(b"GGG")
    rig.fw.advance_to(rig.fw.cycle + 1)
    assert rig.fw.take_main_output() == b"\x01"
    rig.fw.advance_to(rig.fw.cycle + 2)
    assert rig.fw.take_main_output() == b"\x01\x01"
    rig.fw.receive_main(b"S")
    rig.fw.advance_to(rig.fw.cycle + 100)
    assert rig.fw.take_main_output() == b""
    assert rig.fw.next_wakeup_cycle() is None  # nothing can happen until the payload arrives
    rig.fw.receive_main(b"\x05")
    assert rig.fw.next_wakeup_cycle() == rig.fw.cycle + 1
    rig.fw.advance_to(rig.fw.cycle + 1)
    assert rig.fw.take_main_output() == b"\x02\x05"


def test_session_clock_resets_and_idle_end_record() -> None:
    rig = Rig()
    rig.fw.advance_to(rig.fw.cycle + 997)
    assert rig.command(b"*", cycles=1) == b"\x01"
    rig.fw.advance_to(rig.fw.cycle + 49)
    record = rig.command(b"X", cycles=1)
    (end_us,) = struct.unpack_from("<Q", record, 11)
    assert end_us == 50 * 100  # exact multiples of the 100 us cycle since the reset


# -- trial timing --------------------------------------------------------------------------------


def test_state_timer_is_exact_and_timer_zero_lasts_one_cycle() -> None:
    rig = Rig()
    body = machine(3)
    body.tup_targets = [1, 2, 3]
    body.state_timers = [5700, 0, 100]
    first, messages = rig.start(body)
    messages += rig.run(10_000)
    assert rig.names(messages) == [(5700, ["Tup"]), (5701, ["Tup"]), (5801, ["Tup"])]
    start, end = messages[0], messages[-1]
    assert isinstance(end, TrialEnded)
    assert end.cycle == 5801 and end.n_cycles == 5801
    assert end.end_us - start.start_us == 5801 * 100
    assert rig.world.trials[-1].cycle == first + 5801


def test_trial_start_after_run_command_and_confirmation_only_after_new_c() -> None:
    rig = Rig()
    body = machine(1)
    body.tup_targets = [1]
    body.state_timers = [10]
    rig.send(body, run_asap=False)
    assert rig.run(5) == []
    out = rig.command(b"R", cycles=20)
    assert out[0] == 1 and len(out) == 1 + 8 + 7 + 19  # confirmation, start time, Tup, end record
    out = rig.command(b"R", cycles=20)
    assert len(out) == 8 + 7 + 19  # no new C since the last start: no confirmation byte


def test_port_and_bnc_edges_with_polarity() -> None:
    rig = Rig()
    body = machine(1)
    first, messages = rig.start(body)
    port1, bnc1 = rig.hw.inputs.index("P"), rig.hw.inputs.index("B")
    rig.world.set_input("Port1", 1, at_cycle=first + 10)
    rig.world.set_input("Port1", 0, at_cycle=first + 25)
    rig.world.pulse_input("BNC1", 5, at_cycle=first + 30)
    messages += rig.run(20)
    assert rig.world.pins[port1] == 1  # ports are active-high
    assert rig.command(b"I" + bytes([port1]), cycles=1) == b"\x01"
    messages += rig.run(12)
    assert rig.world.pins[bnc1] == 0 and rig.world.input_level("BNC1") == 1  # BNC: raw 0 = High
    assert rig.command(b"I" + bytes([bnc1]), cycles=1) == b"\x01"
    messages += rig.run(5)
    messages += rig.parser.feed(rig.command(b"X", cycles=10))
    assert rig.names(messages) == [(10, ["Port1In"]), (25, ["Port1Out"]),
                                   (30, ["BNC1High"]), (35, ["BNC1Low"])]


def test_several_events_in_one_cycle_keep_firmware_order_and_first_match_wins() -> None:
    rig = Rig()
    body = machine(3, conditions=1)
    body.tup_targets = [1, 1, 2]
    body.state_timers = [40, 0, 0]
    body.input_matrix[0] = [(rig.code("Port2In"), 2)]
    body.condition_channels = [rig.hw.inputs.index("P") + 2]  # Port3
    body.condition_values = [1]
    body.condition_matrix[0] = [(0, 0)]  # listed, but a condition leading to the same state is not handled
    body.output_matrix[1] = [(rig.out("Valve1"), 1)]
    body.output_matrix[2] = [(rig.out("Valve2"), 1)]
    first, messages = rig.start(body)
    for name in ("Port3", "Port2", "BNC2", "Port1"):
        rig.world.set_input(name, 1, at_cycle=first + 40)
    messages += rig.run(50)
    # digital edges in channel order (BNC before ports, port 1 before 2), Tup last; Port1In is not
    # handled in state 0, so Port2In decides; the unhandled condition is not reported.
    assert rig.names(messages)[0] == (40, ["BNC2High", "Port1In", "Port2In", "Port3In", "Tup"])
    assert rig.world.output_level("Valve2") == 1 and rig.world.output_level("Valve1") == 0


def test_condition_fires_every_cycle_while_true_and_handled() -> None:
    rig = Rig()
    body = machine(2, conditions=1)
    body.condition_channels = [rig.hw.inputs.index("P")]
    body.condition_values = [1]
    body.condition_matrix[0] = [(0, 1)]
    body.condition_matrix[1] = [(0, 0)]
    body.tup_targets = [0, 1]
    first, messages = rig.start(body)
    rig.world.set_input("Port1", 1, at_cycle=first + 5)
    messages += rig.run(8)
    names = rig.names(messages)
    assert names[:3] == [(5, ["Condition1", "Port1In"]), (6, ["Condition1"]), (7, ["Condition1"])]


def test_back_signal_returns_to_previous_state() -> None:
    rig = Rig()
    body = machine(3)
    body.tup_targets = [1, 1, 2]
    body.state_timers = [10, 0, 0]
    body.input_matrix[1] = [(rig.code("Port1In"), 2)]
    body.input_matrix[2] = [(rig.code("Port1Out"), 255)]
    body.output_matrix[0] = [(rig.out("PWM1"), 10)]
    body.output_matrix[1] = [(rig.out("PWM1"), 11)]
    body.output_matrix[2] = [(rig.out("PWM1"), 12)]
    first, messages = rig.start(body)
    rig.world.pulse_input("Port1", 10, at_cycle=first + 20)
    messages += rig.run(40)
    pwm = [(r.cycle - first, r.value) for r in rig.world.iter_outputs("PWM1")]
    assert pwm == [(0, 10), (10, 11), (20, 12), (30, 11)]  # `>back` went to state 1, not state 0


# -- global timers and counters ------------------------------------------------------------------


def test_global_timer_delay_duration_and_channel() -> None:
    rig = Rig()
    body = machine(2, timers=1)
    body.timers_trigger = [1, 0]
    body.timer_channels = [rig.out("BNC1")]
    body.timer_durations = [200]
    body.timer_onset_delays = [100]
    body.timer_end_matrix[0] = [(0, 1)]
    body.tup_targets = [0, 2]
    body.state_timers = [0, 5]
    first, messages = rig.start(body)
    messages += rig.run(400)
    assert rig.names(messages) == [(100, ["GlobalTimer1_Start"]), (300, ["GlobalTimer1_End"]),
                                   (305, ["Tup"])]
    bnc = [(r.cycle - first, r.value) for r in rig.world.iter_outputs("BNC1")]
    assert bnc == [(100, 1), (300, 0)]


def test_global_timer_loops_send_events_and_onset_triggers() -> None:
    rig = Rig()
    body = machine(1, timers=3)
    body.timers_trigger = [0b011]
    body.timer_channels = [rig.out("Valve1"), rig.out("Valve2"), 254]
    body.timer_durations = [10, 5, 3]
    body.timer_loop_modes = [3, 1, 0]
    body.timer_loop_intervals = [20, 0, 0]
    body.timer_send_events = [1, 0, 0]
    body.timer_onset_triggers = [0b100, 0, 0]  # timer 1 starts timer 3 at each of its onsets
    body.tup_targets = [1]
    body.state_timers = [100]
    first, messages = rig.start(body)
    messages += rig.run(200)
    names = rig.names(messages)
    # Timer 1 runs 3 times (10 on, 20 off); timer 2 loops silently; timer 3 is one-shot: always reports.
    # Raised at state entry, carried to the next cycle; a triggered start is always reported.
    assert names[0] == (1, ["GlobalTimer3_Start", "GlobalTimer1_Start", "GlobalTimer2_Start"])
    assert (3, ["GlobalTimer3_End"]) in names
    assert [c for c, n in names if "GlobalTimer1_End" in n] == [10, 40, 70]
    assert [c for c, n in names if "GlobalTimer1_Start" in n] == [1, 30, 60]
    assert sum("GlobalTimer2" in name for _, n in names for name in n) == 1  # loops are silent
    valve1 = [(r.cycle - first, r.value) for r in rig.world.iter_outputs("Valve1")]
    assert valve1 == [(0, 1), (10, 0), (30, 1), (40, 0), (60, 1), (70, 0)]
    valve2 = [r.cycle - first for r in rig.world.iter_outputs("Valve2") if r.value == 1]
    # Loop mode 1 with no interval: re-armed at its end, on again one cycle later, and each new end is
    # counted from the re-arm cycle (the firmware's arithmetic), so later runs last 4 cycles, not 5.
    assert valve2[:4] == [0, 6, 11, 16]
    assert valve2[-1] < 100  # and it stops when the trial ends


def test_cancelled_timer_reports_its_end_at_the_front_of_the_next_cycle() -> None:
    rig = Rig()
    body = machine(3, timers=2)
    body.timers_trigger = [0b11, 0, 0]
    body.timers_cancel = [0, 0b11, 0]
    body.timer_channels = [rig.out("BNC2"), 254]
    body.timer_durations = [1000, 1000]
    body.timer_onset_delays = [0, 500]
    body.tup_targets = [1, 2, 3]
    body.state_timers = [50, 10, 0]
    body.output_matrix[1] = [(rig.out("BNC2"), 0)]
    first, messages = rig.start(body)
    assert rig.world.output_level("BNC2") == 1
    messages += rig.run(100)
    names = rig.names(messages)
    # Timer 1 was running: its end is always reported; timer 2 was still in its onset delay: silent.
    assert names[:3] == [(1, ["GlobalTimer1_Start"]), (50, ["Tup"]), (51, ["GlobalTimer1_End"])]
    assert not any("GlobalTimer2" in n for _, ns in names for n in ns)
    assert [(r.cycle - first, r.value) for r in rig.world.iter_outputs("BNC2")] == [(0, 1), (50, 0)]


def test_timer_channel_is_locked_against_state_outputs() -> None:
    rig = Rig()
    body = machine(2, timers=1)
    body.timers_trigger = [1, 0]
    body.timer_channels = [rig.out("Valve3")]
    body.timer_durations = [30]
    body.tup_targets = [1, 2]
    body.state_timers = [10, 40]
    body.output_matrix[0] = [(rig.out("Valve3"), 1)]
    first, _ = rig.start(body)
    rig.run(100)
    # State 1 does not drive Valve3 (would write 0), but the running timer owns the channel.
    assert [(r.cycle - first, r.value) for r in rig.world.iter_outputs("Valve3")] == [(0, 1), (30, 0)]


def test_counter_crossing_is_reported_one_cycle_late_and_reset_on_entry() -> None:
    rig = Rig()
    body = machine(3, counters=1)
    body.counter_events = [rig.code("Port1In")]
    body.counter_thresholds = [2]
    body.counter_matrix[0] = [(0, 1)]
    body.counter_resets = [0, 1, 0]
    body.input_matrix[1] = [(rig.code("Port1In"), 2)]
    body.counter_matrix[2] = [(0, 3)]
    first, messages = rig.start(body)
    for k in range(4):
        rig.world.pulse_input("Port1", 3, at_cycle=first + 10 + 10 * k)
    messages += rig.run(100)
    names = rig.names(messages)
    assert (21, ["GlobalCounter1_End"]) in names
    # Entering state 1 reset the counter: the crossing needs two more pokes (at 30 and 40).
    assert names[-1] == (41, ["GlobalCounter1_End"]) and isinstance(messages[-1], TrialEnded)


# -- soft codes and host inputs ------------------------------------------------------------------


def test_soft_code_out_in_and_app_port() -> None:
    rig = Rig()
    body = machine(2)
    body.output_matrix[0] = [(rig.out("SoftCode"), 9), (rig.out("APP_SoftCode"), 4)]
    body.input_matrix[0] = [(rig.code("SoftCode3"), 1)]
    body.input_matrix[1] = [(rig.code("APP_SoftCode3"), 2)]
    rig.fw.receive_app(b"\x03")  # idle: dropped
    rig.run(5)
    first, messages = rig.start(body)
    assert SoftCodeReceived(9) in messages and rig.fw.take_app_output() == b"\x04"
    rig.command(b"~\x0f", cycles=1)  # v23: at or above the allocation (15), ignored
    messages += rig.parser.feed(rig.command(b"~\x02", cycles=1))
    rig.fw.receive_app(b"\x03")
    messages += rig.run(5)
    assert [n for _, n in rig.names(messages)] == [["SoftCode3"], ["APP_SoftCode3"]]
    assert isinstance(messages[-1], TrialEnded)


def test_v22_soft_codes_alias_into_later_codes() -> None:
    rig = Rig(firmware=22)
    body = machine(1)
    first, messages = rig.start(body)
    messages += rig.parser.feed(rig.command(b"~\x11", cycles=1))  # 17 >= 15 allocated
    messages += rig.parser.feed(rig.command(b"X", cycles=1))
    offset = rig.events.offset_of_channel("X")
    assert [m.codes for m in messages if isinstance(m, EventsReceived)] == [(offset + 17,)]
    assert rig.events.name(offset + 17) == "BNC2High"


def test_virtual_input_only_while_running() -> None:
    rig = Rig()
    port2 = rig.hw.inputs.index("P") + 1
    rig.command(b"V" + bytes([port2, 1]))  # idle: ignored
    body = machine(1)
    first, messages = rig.start(body)
    bnc1 = rig.hw.inputs.index("B")
    messages += rig.parser.feed(rig.command(b"V" + bytes([port2, 1]), cycles=1))
    messages += rig.parser.feed(rig.command(b"V" + bytes([bnc1, 0]), cycles=1))  # raw 0 on BNC = High
    rig.world.set_input("Port2", 0)  # the pin is ignored for the rest of the trial
    messages += rig.run(5)
    messages += rig.parser.feed(rig.command(b"X", cycles=1))
    assert [n for _, n in rig.names(messages)] == [["Port2In"], ["BNC1High"]]


def test_queued_machine_starts_one_cycle_after_the_previous_trial_ends() -> None:
    rig = Rig()
    body = machine(1)
    body.tup_targets = [1]
    body.state_timers = [300]
    body.output_matrix[0] = [(rig.out("BNC1"), 1)]
    first, messages = rig.start(body)
    rig.run(100)
    rig.send(body)  # queued during the trial, RunASAP
    messages = rig.run(800)
    ends = [m for m in messages if isinstance(m, TrialEnded)]
    starts = [m for m in messages if isinstance(m, TrialStarted)]
    assert len(ends) == 2 and len(starts) == 1
    assert starts[0].confirmed is True
    # startSM runs in the ending cycle, the next interrupt writes the start timestamp: 1 cycle, no host time.
    assert starts[0].start_us == ends[0].end_us + 100
    assert ends[1].end_us - starts[0].start_us == 300 * 100
    assert ends[1].n_cycles == 301  # the firmware's count includes the ending cycle of the trial before
    trials = rig.world.trials
    assert [t.kind for t in trials] == ["start", "end", "start", "end"]
    assert trials[2].cycle == trials[1].cycle + 1
    # BNC1 went low at the end of trial 1 and high again at the start of trial 2, one cycle later.
    bnc = [(r.cycle - first, r.value) for r in rig.world.iter_outputs("BNC1")]
    assert bnc == [(0, 1), (300, 0), (301, 1), (601, 0)]


@pytest.mark.parametrize("faithful_quirks", [False, True])
def test_a_machine_whose_header_arrives_in_the_last_cycle_waits_for_run_with_faithful_quirks(
        faithful_quirks: bool) -> None:
    rig = Rig(faithful_quirks=faithful_quirks)
    body = machine(1)
    body.tup_targets = [1]
    body.state_timers = [300]
    first, _ = rig.start(body)
    following = machine(2)
    following.tup_targets = [1, 2]
    rig.parser.state_machine_sent()
    # The header is parsed in the trial's last cycle (first + 300), so its body is read after the end.
    rig.fw.receive_main(encode_state_machine(following, rig.hw, run_asap=True), at_cycle=first + 299)
    messages = rig.run(400)
    starts = [m for m in messages if isinstance(m, TrialStarted)]
    assert [m for m in messages if isinstance(m, TrialEnded)][0].end_us == (first + 300 - 1) * 100
    assert rig.fw.machine.n_states == 2  # loaded either way
    if not faithful_quirks:
        assert len(starts) == 1 and starts[0].confirmed is True
        return
    # firmware 23's `startFlag == true` typo: loaded, never started, until the host sends `R`
    assert starts == [] and not rig.fw.state.running
    messages = rig.parser.feed(rig.command(b"R", cycles=2))
    assert isinstance(messages[0], TrialStarted) and messages[0].confirmed is True


def test_stop_command_mid_trial_and_pause() -> None:
    rig = Rig()
    body = machine(1)
    body.output_matrix[0] = [(rig.out("Valve1"), 1)]
    first, messages = rig.start(body)
    rig.run(99)
    rig.command(b"$\x00", cycles=1)
    rig.run(500)  # paused: the trial clock stands still
    rig.command(b"$\x01", cycles=1)
    rig.run(9)
    messages = rig.parser.feed(rig.command(b"X", cycles=1))
    end = messages[0]
    assert isinstance(end, TrialEnded)
    assert end.cycle == 109 and end.n_cycles == 611  # cycles since the start, paused ones too
    assert rig.world.output_level("Valve1") == 0


def test_events_per_cycle_are_capped_on_machine_type_2() -> None:
    rig = Rig(model="r1", firmware=22)
    body = machine(2, conditions=5)
    ports = [i for i, c in enumerate(rig.hw.inputs) if c == "P"]
    body.condition_channels = ports[:5]
    body.condition_values = [1] * 5
    body.condition_matrix[0] = [(i, 1) for i in range(5)]
    first, messages = rig.start(body)
    for k in range(8):
        rig.world.set_input(f"Port{k + 1}", 1, at_cycle=first + 5)
    messages += rig.run(6)
    events = [m for m in messages if isinstance(m, EventsReceived)]
    # 5 conditions + 8 port edges in one cycle; the Bpod 0.7-1.0 keeps the first 10.
    assert events[0].codes == tuple([rig.code(f"Condition{i}") for i in range(1, 6)]
                                    + [rig.code(f"Port{k}In") for k in range(1, 6)])


def test_malformed_body_is_refused_without_crashing(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    rig.parser.state_machine_sent()
    with caplog.at_level(logging.ERROR):
        rig.fw.receive_main(b"C\x00\x01\x05\x00" + b"\x02\x00\x00\x00\x07")
        rig.run(5)
    assert "refused" in caplog.text
    assert rig.fw.machine.n_states == 0
    out = rig.command(b"R", cycles=2)
    assert out[0] == 0  # the next start reports the transfer as failed
    assert rig.command(b"X")[:3] == b"\x01\x01\xff"


def test_a_body_the_firmware_loads_is_loaded_though_the_codec_would_refuse_it() -> None:
    # loadStateMatrix never checks the length and has no case for unknown trailer ops: a body padded
    # after its end, with an op it does not know before the final flag, loads and is confirmed.
    rig = Rig()
    body = machine(2)
    body.tup_targets = [1, 2]
    body.state_timers = [10, 10]
    plain = encode_state_machine(body, rig.hw, run_asap=True)[5:]
    assert plain[-1] == 0  # the trailer's final flag
    padded = plain[:-1] + b"\x01Q\x00" + b"\x00\x00\x07"  # flag 1, unknown op 'Q', flag 0, then padding
    rig.parser.state_machine_sent()
    rig.fw.receive_main(b"C\x01\x01" + struct.pack("<H", len(padded)) + padded)
    messages = rig.run(40)
    assert rig.fw.machine.n_states == 2
    starts = [m for m in messages if isinstance(m, TrialStarted)]
    assert len(starts) == 1 and starts[0].confirmed is True
    assert [m.cycle for m in messages if isinstance(m, TrialEnded)] == [20]


def test_listener_scheduled_inputs_are_deterministic() -> None:
    rig = Rig()
    body = machine(3)
    body.tup_targets = [1, 3, 3]
    body.state_timers = [1234, 10_000, 0]
    body.output_matrix[1] = [(rig.out("BNC2"), 1)]
    body.input_matrix[1] = [(rig.code("Port2In"), 2)]

    def mouse(record) -> None:
        if record.channel == "BNC2" and record.value == 1:
            rig.world.pulse_input("Port2", 50, at_cycle=record.cycle + 1800)

    rig.world.add_output_listener(mouse)
    first, messages = rig.start(body)
    messages += rig.run(5000)
    assert rig.names(messages)[:2] == [(1234, ["Tup"]), (3034, ["Port2In"])]
    assert isinstance(messages[-1], TrialEnded) and messages[-1].cycle == 3035


def test_world_names_are_checked() -> None:
    world = Firmware(preset("r2", 23)).world
    with pytest.raises(ValueError, match="valid inputs: BNC1, BNC2, Port1"):
        world.set_input("Port9", 1)
    with pytest.raises(ValueError, match="Valve4"):
        world.output_level("Valve9")
    with pytest.raises(ValueError, match="already been processed"):
        world.set_input("Port1", 1, at_cycle=0)


def test_a_long_session_leaves_a_bounded_log_of_outputs_and_trials_in_the_world() -> None:
    """The world's logs are for inspection: thousands of trials (a long `rig run`, with the emulator in the
    rig process) leave only the most recent few hundred in memory, the newest last."""
    world = World(preset("r2", 23))
    lines = [world.output_names.index(name) for name in ("BNC1", "BNC2", "PWM4", "Valve1")]
    cycle = 0
    for trial in range(1, 3001):
        world.trial_event(TrialRecord("start", cycle, cycle * 100, trial))
        for level in (1, 0):
            for index in lines:
                cycle += 10
                world.output_changed(cycle, index, level)
        world.trial_event(TrialRecord("end", cycle, cycle * 100, trial))
    assert len(world.outputs) <= 5000  # of the 24,000 changes
    assert len(world.trials) <= 1000  # of the 6,000 records
    assert world.outputs[-1] == OutputRecord(cycle, "Valve1", 0)
    assert [(r.kind, r.trial) for r in list(world.trials)[-2:]] == [("start", 3000), ("end", 3000)]
    assert [r.cycle for r in world.iter_outputs("BNC1")][-2:] == [cycle - 70, cycle - 30]


def test_a_six_second_trial_costs_well_under_a_millisecond() -> None:
    rig = Rig()
    body = machine(2)
    body.tup_targets = [2, 1]
    body.state_timers = [60_000, 0]
    body.output_matrix[0] = [(rig.out("BNC1"), 1), (rig.out("Valve1"), 1)]
    rig.send(body)
    rig.fw.advance_to(rig.fw.cycle + 1)
    first = rig.fw.cycle + 1
    for k in range(30):
        rig.world.pulse_input("Port1", 20, at_cycle=first + 1000 + 1500 * k)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        rig.fw.advance_to(first + 60_010)
        best = min(best, time.perf_counter() - t0)
        messages = rig.parser.feed(rig.fw.take_main_output())
        assert isinstance(messages[-1], TrialEnded) and len(messages) == 1 + 60 + 1 + 1
        rig.send(body)
        rig.fw.advance_to(rig.fw.cycle + 1)
        first = rig.fw.cycle + 1
        for k in range(30):
            rig.world.pulse_input("Port1", 20, at_cycle=first + 1000 + 1500 * k)
    print(f"6 s trial with 60 port events: {best * 1e3:.3f} ms")
    assert best < 0.002, f"{best * 1e3:.2f} ms of CPU for a 6 s trial"


def test_end_record_matches_codec() -> None:
    rig = Rig()
    body = machine(1)
    body.tup_targets = [1]
    body.state_timers = [7]
    rig.send(body)
    rig.fw.advance_to(rig.fw.cycle + 1)
    start_cycle = rig.fw.cycle + 1
    rig.fw.advance_to(rig.fw.cycle + 20)
    out = rig.fw.take_main_output()
    end_us = (start_cycle + 7 - 1) * 100  # session clock was reset at cycle 1 by `6`
    assert out.endswith(encode_trial_end(7, 7, end_us))


def test_sync_channel_toggles_on_state_changes_and_is_not_a_state_output() -> None:
    rig = Rig()
    bnc2 = rig.out("BNC2")
    assert rig.command(b"K" + bytes([bnc2, 1])) == b"\x01"  # sync on BNC2, toggling at each state change
    body = machine(2)
    body.tup_targets = [1, 2]
    body.state_timers = [10, 10]
    body.output_matrix[0] = [(bnc2, 1), (rig.out("BNC1"), 1)]
    first, messages = rig.start(body)
    rig.run(30)
    assert [(r.cycle - first, r.value) for r in rig.world.iter_outputs("BNC2")] == [(0, 1), (10, 0), (20, 1)]
    assert rig.command(b"H")[-18:] == b"\x11" + rig.hw.outputs.encode()  # reported with its own letter


def test_output_override_locks_the_line_until_the_trial_ends() -> None:
    rig = Rig()
    rig.command(b"O" + bytes([rig.out("Valve2"), 1]))
    assert rig.world.output_level("Valve2") == 1
    body = machine(1)
    body.tup_targets = [1]
    body.state_timers = [10]
    body.output_matrix[0] = [(rig.out("Valve1"), 1)]  # Valve2 missing from the row: would be written 0
    first, messages = rig.start(body)
    assert rig.world.output_level("Valve2") == 1
    rig.run(20)
    assert [(r.cycle - first, r.value) for r in rig.world.iter_outputs("Valve2")][-1] == (10, 0)
