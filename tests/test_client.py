"""The Bpod client against the emulator over real pseudo-terminals: the spec's client checklist."""

from __future__ import annotations

import os
import pty
import threading
import time
import tty
from collections.abc import Iterator

import pytest
import serial

from hardware.bpod.client import BpodClient, BpodConnectionError, BpodError
from hardware.bpod.compiler import StateMachineCompileError
from hardware.bpod.emulator import EmulatorServer
from hardware.bpod.hardware_description import preset
from protocols.state_machine import StateMachine

SPEED = 10.0


@pytest.fixture(params=[22, 23], ids=["fw22", "fw23"])
def rig(request: pytest.FixtureRequest) -> Iterator[tuple[EmulatorServer, BpodClient]]:
    with EmulatorServer(firmware=request.param, model="r2", speed=SPEED) as server:
        client = BpodClient(server.port)
        client.connect()
        try:
            yield server, client
        finally:
            client.close()


@pytest.fixture
def rig23() -> Iterator[tuple[EmulatorServer, BpodClient]]:
    with EmulatorServer(firmware=23, model="r2", speed=SPEED) as server, BpodClient(server.port) as client:
        yield server, client


def timed_state(seconds: float, name: str = "Wait") -> StateMachine:
    sm = StateMachine()
    sm.add_state(name, timer_s=seconds, transitions={"Tup": ">exit"})
    return sm


def test_connect_reads_the_device(rig: tuple[EmulatorServer, BpodClient]) -> None:
    server, client = rig
    hw = client.hardware
    assert hw is not None and client.events is not None
    expected = preset("r2", hw.firmware_major)
    assert (hw.inputs, hw.outputs, hw.max_serial_events) == (
        expected.inputs,
        expected.outputs,
        expected.max_serial_events,
    )
    assert client.modules == [None] * 5
    assert client.events.allocated("X") == 15
    result = client.run_trial(timed_state(0.01), timeout_s=5)
    assert result.start_s < 1.0  # the session clock was reset at connect


def test_state_timer_is_exact_to_the_cycle(rig: tuple[EmulatorServer, BpodClient]) -> None:
    _, client = rig
    sm = StateMachine()
    sm.add_state("Sample", timer_s=0.57, transitions={"Tup": "Delay"})
    sm.add_state("Delay", timer_s=1.13, transitions={"Tup": ">exit"})
    result = client.run_trial(sm, timeout_s=5)
    assert [v.name for v in result.states] == ["Sample", "Delay"]
    sample, delay = result.states
    assert round((sample.end_s - sample.start_s) / 1e-4) == 5700
    assert round((delay.end_s - delay.start_s) / 1e-4) == 11300
    assert result.exit_cycle == 17000
    assert round((result.end_s - result.start_s) * 1e6) == 17000 * 100
    assert not result.missed_cycles
    assert result.confirmed is True


def test_queued_trials_have_no_host_dead_time(rig: tuple[EmulatorServer, BpodClient]) -> None:
    _, client = rig
    results = []
    client.start_trial(timed_state(1.0))
    for _ in range(5):
        assert client.wait_for_state({"Wait"}, timeout_s=5) == "Wait"
        client.start_trial(timed_state(1.0))
        results.append(client.wait_for_trial(timeout_s=5))
    results.append(client.wait_for_trial(timeout_s=5))
    for previous, current in zip(results, results[1:], strict=False):
        # the hardware's own gap only: a queued trial starts one cycle (100 us) after its predecessor ends
        assert round((current.start_s - previous.end_s) * 1e6) == 100
        assert current.confirmed is True
    assert not client.trial_running


def test_a_machine_sent_in_the_last_cycle_still_runs_when_the_firmware_does_not_start_it() -> None:
    # Firmware 23 leaves a queued machine whose header is parsed in the trial's last cycle loaded but not
    # started (faithful_quirks reproduces it); the client sends `R` when the start does not come.
    server = EmulatorServer(firmware=23, model="r2", speed=SPEED, faithful_quirks=True)
    fw = server.firmware
    deliver = fw.receive_main
    trial_cycles = 5000

    def in_the_last_cycle(data: bytes, at_cycle: int | None = None) -> None:
        if data[:1] == b"C" and fw.state.running:
            at_cycle = server.world.trials[-1].cycle + trial_cycles - 1  # parsed in the cycle the trial ends
        deliver(data, at_cycle)

    fw.receive_main = in_the_last_cycle  # type: ignore[method-assign]
    with server, BpodClient(server.port) as client:
        results = []
        client.start_trial(timed_state(trial_cycles * 1e-4))
        for _ in range(3):
            assert client.wait_for_state({"Wait"}, timeout_s=5) == "Wait"
            client.start_trial(timed_state(trial_cycles * 1e-4))
            results.append(client.wait_for_trial(timeout_s=5))
        results.append(client.wait_for_trial(timeout_s=5))
        assert not client.trial_running
    assert len(results) == 4 and all(r.confirmed is True for r in results)
    assert client.run_fallbacks == 3
    for previous, current in zip(results, results[1:], strict=False):
        assert current.start_s - previous.end_s > 1e-4  # started by `R`, not by the device on its own


def test_second_queued_trial_is_refused(rig23: tuple[EmulatorServer, BpodClient]) -> None:
    _, client = rig23
    client.start_trial(timed_state(0.5))
    client.start_trial(timed_state(0.1))
    with pytest.raises(BpodError, match="already queued"):
        client.start_trial(timed_state(0.1))
    client.wait_for_trial(timeout_s=5)
    client.wait_for_trial(timeout_s=5)


def test_world_licks_land_on_their_cycle(rig: tuple[EmulatorServer, BpodClient]) -> None:
    server, client = rig

    def lick_after_start(record: object) -> None:
        if getattr(record, "kind", None) == "start":
            server.world.pulse_input("Port1", 50, at_cycle=record.cycle + 1234)  # type: ignore[attr-defined]

    server.world.add_trial_listener(lick_after_start)
    sm = StateMachine()
    sm.add_state("WaitLick", timer_s=2.0, transitions={"Port1In": "Drink", "Tup": ">exit"})
    sm.add_state("Drink", timer_s=0.1, transitions={"Tup": ">exit"}, actions={"Valve1": 1})
    result = client.run_trial(sm, timeout_s=5)
    assert result.event_times("Port1In") == [pytest.approx(0.1234, abs=1e-9)]
    assert result.event_times("Port1Out") == [pytest.approx(0.1284, abs=1e-9)]
    assert [v.name for v in result.states] == ["WaitLick", "Drink"]
    valve = [o for o in server.world.outputs if o.channel == "Valve1"]
    assert [o.value for o in valve] == [1, 0]
    assert valve[1].cycle - valve[0].cycle == 1000


def test_soft_code_from_state_machine_reaches_handler(rig: tuple[EmulatorServer, BpodClient]) -> None:
    _, client = rig
    received: list[int] = []
    client.soft_code_handler = received.append
    sm = StateMachine()
    sm.add_state("Signal", timer_s=0.05, transitions={"Tup": ">exit"}, actions={"SoftCode": 7})
    result = client.run_trial(sm, timeout_s=5)
    assert received == [7] and result.soft_codes == (7,)


def test_soft_code_and_virtual_input_from_host(rig: tuple[EmulatorServer, BpodClient]) -> None:
    _, client = rig
    sm = StateMachine()
    sm.add_state("WaitSoft", timer_s=5.0, transitions={"SoftCode2": "WaitPort", "Tup": ">exit"})
    sm.add_state("WaitPort", timer_s=5.0, transitions={"Port3In": "WaitBNC", "Tup": ">exit"})
    sm.add_state("WaitBNC", timer_s=5.0, transitions={"BNC2High": ">exit", "Tup": ">exit"})
    client.start_trial(sm)
    assert client.wait_for_state({"WaitSoft"}, timeout_s=5)
    client.send_soft_code(2)
    assert client.wait_for_state({"WaitPort"}, timeout_s=5)
    client.set_virtual_input("Port3", 1)
    assert client.wait_for_state({"WaitBNC"}, timeout_s=5)
    client.set_virtual_input("BNC2", 1)
    result = client.wait_for_trial(timeout_s=5)
    assert [v.name for v in result.states] == ["WaitSoft", "WaitPort", "WaitBNC"]
    assert [e.name for e in result.events] == ["SoftCode2", "Port3In", "BNC2High"]
    assert result.duration_s < 5.0
    with pytest.raises(BpodError, match="SoftCode1..SoftCode15"):
        client.send_soft_code(16)
    with pytest.raises(BpodError, match="unknown input channel 'Port9'"):
        client.set_virtual_input("Port9", 1)


def test_app_port_byte_becomes_an_event_on_firmware_23(rig23: tuple[EmulatorServer, BpodClient]) -> None:
    server, client = rig23
    assert server.app_port is not None and client.verify_app_port(server.app_port)
    sm = StateMachine()
    sm.add_state("Delay", timer_s=5.0, transitions={"APP_SoftCode3": "GoCue", "Tup": ">exit"})
    sm.add_state("GoCue", timer_s=0.1, transitions={"Tup": ">exit"})
    client.start_trial(sm)
    assert client.wait_for_state({"Delay"}, timeout_s=5)
    with serial.Serial(server.app_port, timeout=1) as app:
        app.write(bytes([3]))
    result = client.wait_for_trial(timeout_s=5)
    assert [e.name for e in result.events][:1] == ["APP_SoftCode3"]
    assert [v.name for v in result.states] == ["Delay", "GoCue"]


def test_stop_trial_and_output_override(rig: tuple[EmulatorServer, BpodClient]) -> None:
    server, client = rig
    client.start_trial(timed_state(60.0, "Long"))
    assert client.wait_for_state({"Long"}, timeout_s=5)
    client.override_output("BNC2", 1)
    deadline = time.monotonic() + 2
    while server.world.output_level("BNC2") != 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert server.world.output_level("BNC2") == 1
    client.stop_trial()
    result = client.wait_for_trial(timeout_s=5)
    assert [v.name for v in result.states] == ["Long"] and result.duration_s < 60


def test_bad_state_machines_are_refused_before_sending(rig23: tuple[EmulatorServer, BpodClient]) -> None:
    _, client = rig23
    sm = StateMachine()
    sm.add_state("Answer", timer_s=1, transitions={"Port5In": ">exit"})
    with pytest.raises(StateMachineCompileError, match="Port1In"):
        client.start_trial(sm)
    sm = StateMachine()
    sm.add_state("Reward", timer_s=1, transitions={"Tup": ">exit"}, actions={"Valve9": 1})
    with pytest.raises(StateMachineCompileError, match="Valve"):
        client.start_trial(sm)
    assert not client.trial_running
    assert client.run_trial(timed_state(0.01), timeout_s=5).visited("Wait")


def test_wait_without_trial_is_an_error(rig23: tuple[EmulatorServer, BpodClient]) -> None:
    _, client = rig23
    with pytest.raises(BpodError, match="no trial is running"):
        client.wait_for_trial()
    with pytest.raises(BpodError, match="no trial is running"):
        client.wait_for_state({"X"})


def test_device_lost_mid_trial_is_one_clear_error() -> None:
    server = EmulatorServer(firmware=23, speed=SPEED)
    server.start()
    client = BpodClient(server.port)
    client.connect()
    sm = StateMachine()
    sm.add_state("A", timer_s=0.01, transitions={"Tup": "B"})
    sm.add_state("B", timer_s=60, transitions={"Tup": ">exit"})
    client.start_trial(sm)
    assert client.wait_for_state({"B"}, timeout_s=5)
    server.stop()
    started = time.monotonic()
    with pytest.raises(BpodConnectionError, match="lost the Bpod"):
        client.wait_for_trial(timeout_s=5)
    assert time.monotonic() - started < 1.0
    partial = client.partial_trial()
    assert partial is not None and partial.aborted and [v.name for v in partial.states] == ["A", "B"]
    client.close()
    assert not client.connected


class _FakeDevice:
    """A real pty whose far end answers like a broken device: for faults the emulator cannot make."""

    def __init__(self, replies: dict[bytes, bytes]) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.replies = replies
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if ready:
                for byte in os.read(self.master, 1024):
                    reply = self.replies.get(bytes([byte]))
                    if reply:
                        os.write(self.master, reply)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


@pytest.mark.parametrize(
    ("replies", "message"),
    [
        ({}, "no Bpod answered the handshake"),
        ({b"6": b"hello"}, "no Bpod answered the handshake .* it sent 68 65"),
        ({b"6": b"5", b"F": bytes([21, 0, 3, 0])}, "runs firmware 21; supported firmware: 22, 23"),
        ({b"6": b"5", b"F": bytes([22, 0, 3, 0])}, "sent 0 of 5 bytes of the hardware description"),
    ],
    ids=["silent", "not-a-bpod", "old-firmware", "stops-answering"],
)
def test_faulty_devices_give_one_clear_error_within_a_second(
    replies: dict[bytes, bytes], message: str
) -> None:
    device = _FakeDevice(replies)
    try:
        client = BpodClient(device.path, timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(BpodConnectionError, match=message):
            client.connect()
        assert time.monotonic() - started < 1.5
        assert not client.connected
    finally:
        device.close()


def test_missing_port_is_a_clear_error() -> None:
    with pytest.raises(BpodConnectionError, match="cannot open the Bpod port /dev/does-not-exist"):
        BpodClient("/dev/does-not-exist").connect()


def test_disconnect_restarts_discovery(rig23: tuple[EmulatorServer, BpodClient]) -> None:
    server, client = rig23
    client.close()
    with serial.Serial(server.port, timeout=0.5) as raw:
        raw.reset_input_buffer()
        assert raw.read(1) == bytes([0xDE])
