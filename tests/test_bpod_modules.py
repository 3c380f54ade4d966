"""Bpod UART modules: discovery (`M`), module events, bytes from states to modules, the serial message
library, against the emulator's module ports (engine without ptys, and the client over ptys)."""

from __future__ import annotations

import pytest

from hardware.bpod.client import BpodClient
from hardware.bpod.codec import decode_state_machine_body
from hardware.bpod.compiler import StateMachineCompileError, compile_state_machine
from hardware.bpod.emulator import EmulatorServer, Firmware
from hardware.bpod.emulator.modules import BpodTime, ModuleLink
from hardware.bpod.hardware_description import EventTable, preset
from hardware.bpod.module_info import (
    ModuleInfo,
    allocate_module_events,
    encode_module_records,
    encode_self_description,
    read_module_records,
)
from protocols.state_machine import StateMachine

SPEED = 10.0
INFO = ModuleInfo("Echo", 3, events_requested=20, event_names=("Ping",), hardware_major=1, hardware_minor=2)


class EchoModule:
    """Answers the probe, records what it hears, and sends back the byte after each 'E'."""

    def __init__(self, info: ModuleInfo = INFO) -> None:
        self.info = info
        self.heard: list[tuple[bytes, BpodTime]] = []
        self.link: ModuleLink | None = None

    def plugged_in(self, link: ModuleLink) -> None:
        self.link = link

    def receive(self, data: bytes, at: BpodTime) -> None:
        assert self.link is not None
        if data[0] == 255:
            self.link.send(encode_self_description(self.info))
            return
        self.heard.append((data, at))
        if data[0] == ord("E") and len(data) > 1:
            self.link.send(data[1:2])


def test_module_records_round_trip_and_allocation() -> None:
    modules = [INFO, None, ModuleInfo("Echo", 3), None, None]
    data = encode_module_records(modules)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        pos += n
        return data[pos - n:pos]

    assert read_module_records(read, 5) == modules and pos == len(data)
    hw = preset("r2", 23)
    allocation = allocate_module_events(hw.max_serial_events, hw.serial_channels, modules)
    assert allocation == (20, 15, 15, 15, 10, 15, 15)  # the 5 extra come from the last empty port
    events = EventTable(hw, allocation, tuple(modules))
    assert events.name(0) == "Echo1_Ping" and events.name(1) == "Echo1_2"
    assert events.name(20) == "Serial2_1" and events.name(35) == "Echo2_1"
    assert events.code("SoftCode1") == EventTable.default(hw).code("SoftCode1")


@pytest.mark.parametrize("firmware", [22, 23])
def test_m_reply_lists_the_module(firmware: int) -> None:
    hw = preset("r2", firmware)
    fw = Firmware(hw)
    fw.world.attach_module(1, EchoModule())
    fw.receive_main(b"6M")
    fw.advance_to(fw.cycle + 200)
    out = fw.take_main_output()
    assert out[:1] == b"5"
    assert out[1:] == encode_module_records([INFO, None, None, None, None])


def echo_machine() -> StateMachine:
    sm = StateMachine()
    sm.add_state("Settle", timer_s=0.01, transitions={"Tup": "Ask"})
    sm.add_state("Ask", timer_s=1.0, transitions={"Echo1_2": "Heard", "Tup": ">exit"},
                 actions={"Echo1": [ord("E"), 2]})
    sm.add_state("Heard", timer_s=0.005, transitions={"Tup": ">exit"}, actions={"Echo1": ord("X")})
    return sm


def test_client_sees_the_module_and_its_events_drive_the_trial() -> None:
    module = EchoModule()
    with EmulatorServer(firmware=23, model="r2", speed=SPEED) as server:
        server.world.attach_module(1, module)
        with BpodClient(server.port) as client:
            assert client.modules == [INFO, None, None, None, None]
            assert client.events is not None and client.events.allocation[0] == 20
            result = client.run_trial(echo_machine(), timeout_s=5)
    visits = {v.name: v for v in result.states}
    assert [v.name for v in result.states] == ["Settle", "Ask", "Heard"]
    assert [e.name for e in result.events] == ["Tup", "Echo1_2", "Tup"]
    # The message left in the cycle Ask began and the echo came back one cycle later, as event Echo1_2.
    assert visits["Heard"].start_s - visits["Ask"].start_s == pytest.approx(1e-4)
    (ask, ask_at), (stop, stop_at) = module.heard
    assert ask == b"E\x02" and stop == b"X"
    start_us = round(result.start_s * 1e6)
    assert ask_at.session_us == start_us + round(visits["Ask"].start_s * 1e6)
    assert stop_at.session_us == start_us + round(visits["Heard"].start_s * 1e6)


def test_compiler_builds_the_message_library_in_the_trailer() -> None:
    hw = preset("r2", 23)
    events = EventTable(hw, hw.default_allocation(), (INFO,))
    compiled = compile_state_machine(echo_machine(), hw, events)
    body = decode_state_machine_body(compiled.command(hw, run_asap=True)[5:], hw)
    assert body.serial_message_ops == [(0, [(1, b"E\x02")])]
    assert body.output_matrix[1] == [(0, 1)] and body.output_matrix[2] == [(0, ord("X"))]


def test_unknown_module_name_gets_the_nearest_valid_one() -> None:
    hw = preset("r2", 23)
    events = EventTable(hw, hw.default_allocation(), (INFO,))
    sm = StateMachine()
    sm.add_state("Ask", timer_s=0.01, transitions={"Tup": ">exit"}, actions={"Echo2": [ord("E"), 1]})
    with pytest.raises(StateMachineCompileError, match="did you mean 'Echo1'"):
        compile_state_machine(sm, hw, events)
    sm = StateMachine()
    sm.add_state("Wait", timer_s=0.01, transitions={"Echo_2": ">exit"})
    with pytest.raises(StateMachineCompileError, match="did you mean 'Echo1_2'"):
        compile_state_machine(sm, hw, events)


def test_module_messages_are_refused_where_the_device_cannot_send_them() -> None:
    events22 = EventTable(preset("r2", 22), preset("r2", 22).default_allocation(), (INFO,))
    with pytest.raises(StateMachineCompileError, match="firmware 22 cannot load"):
        compile_state_machine(echo_machine(), preset("r2", 22), events22)
    hw = preset("r2", 23)
    events = EventTable(hw, hw.default_allocation(), (INFO,))
    sm = StateMachine()
    sm.add_state("Ask", timer_s=0.01, transitions={"Tup": ">exit"}, actions={"Echo1": [1, 2, 3, 4, 5, 6]})
    with pytest.raises(StateMachineCompileError, match="at most 5 bytes"):
        compile_state_machine(sm, hw, events)
    sm = StateMachine()
    sm.add_state("A", timer_s=0.01, transitions={"Tup": "B"}, actions={"Echo1": [ord("E"), 2]})
    sm.add_state("B", timer_s=0.01, transitions={"Tup": ">exit"}, actions={"Echo1": 1})
    with pytest.raises(StateMachineCompileError, match=r"state 'B'.*send it as a list \(\[1\]\)"):
        compile_state_machine(sm, hw, events)


def test_host_writes_to_modules_with_t_u_and_l() -> None:
    hw = preset("r2", 23)
    fw = Firmware(hw)
    module = EchoModule()
    fw.world.attach_module(1, module)
    fw.receive_main(b"6" + b"T\x01\x02AB" + b"L\x00\x01\x07\x02PQ" + b"U\x01\x07" + b"U\x01\x08"
                    + b">" + b"U\x01\x07")
    fw.advance_to(fw.cycle + 20)
    assert fw.take_main_output() == b"5\x01\x01"
    assert [data for data, _ in module.heard] == [b"AB", b"PQ", b"\x08", b"\x07"]
