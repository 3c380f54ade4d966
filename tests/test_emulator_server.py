"""The emulator on real ptys, driven with raw pyserial, and its command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from hardware.bpod.codec import (
    EventsReceived,
    StateMachineBody,
    TrialEnded,
    TrialStarted,
    TrialStreamParser,
    encode_state_machine,
)
from hardware.bpod.emulator import EmulatorServer
from hardware.bpod.hardware_description import EventTable

REPO = Path(__file__).resolve().parents[1]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(firmware=23) as emulator:
        yield emulator


def connect(emulator: EmulatorServer) -> serial.Serial:
    port = serial.Serial(emulator.port, timeout=1)
    port.reset_input_buffer()
    port.write(b"6")
    reply = port.read(1)
    while reply == b"\xde":  # a discovery byte may precede the reply
        reply = port.read(1)
    assert reply == b"5"
    hw = emulator.hw
    port.write(b"E" + bytes(0 if c in "UXZ" else 1 for c in hw.inputs))
    port.write(b"%" + bytes(hw.default_allocation()))
    assert port.read(2) == b"\x01\x01"
    return port


def read_trial(port: serial.Serial, parser: TrialStreamParser, timeout: float = 5.0) -> list:
    messages: list = []
    deadline = time.monotonic() + timeout
    while not (messages and isinstance(messages[-1], TrialEnded)):
        assert time.monotonic() < deadline, f"no trial end; got {messages}"
        messages += parser.feed(port.read(max(1, port.in_waiting)))
    return messages


def lick_machine(emulator: EmulatorServer, timer_cycles: int = 20_000) -> StateMachineBody:
    """State 0 waits for Port1In (-> state 1) or its timer (-> exit); state 1 exits after 10 cycles."""
    events = EventTable.default(emulator.hw)
    body = StateMachineBody.empty(2)
    body.tup_targets = [2, 2]
    body.state_timers = [timer_cycles, 10]
    body.input_matrix[0] = [(events.code("Port1In"), 1)]
    body.output_matrix[0] = [(emulator.world.output_names.index("BNC1"), 1)]
    return body


def test_discovery_bytes_until_connected_then_silence(server: EmulatorServer) -> None:
    with serial.Serial(server.port, timeout=0.5) as port:
        port.reset_input_buffer()
        stamps = []
        for _ in range(4):
            assert port.read(1) == b"\xde"
            stamps.append(time.monotonic())
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        assert all(0.07 < g < 0.15 for g in gaps), gaps
        port.write(b"6")
        rest = port.read(1)
        assert rest == b"5"
        port.timeout = 0.35
        assert port.read(1) == b""  # connected: no more discovery bytes
        port.write(b"Z")
        assert port.read(1) == b"1"
        t0 = time.monotonic()
        assert port.read(1) == b"\xde"
        assert time.monotonic() - t0 > 0.07  # discovery resumes ~100 ms after `Z`


def test_unread_discovery_bytes_do_not_pile_up(server: EmulatorServer) -> None:
    time.sleep(0.45)
    with serial.Serial(server.port, timeout=0.05) as port:  # opening does not flush a pty
        assert port.read(100).count(b"\xde") <= 1


def test_app_port_handshake(server: EmulatorServer) -> None:
    assert server.app_port is not None
    with connect(server) as port, serial.Serial(server.app_port, timeout=1) as app:
        app.reset_input_buffer()
        port.write(b"{")
        assert app.read(1) == bytes([222])


def test_r2plus_analog_port_handshake() -> None:
    # bpod-core and the MATLAB client find the Bpod 2+'s third port by `}` -> 223 on it (none on the r2).
    with EmulatorServer(firmware=23, model="r2plus") as emulator:
        assert emulator.analog_port is not None and emulator.app_port is not None
        with connect(emulator) as port, serial.Serial(emulator.analog_port, timeout=1) as analog, \
                serial.Serial(emulator.app_port, timeout=0.2) as app:
            analog.reset_input_buffer()
            port.write(b"}")
            assert analog.read(1) == bytes([223])
            assert app.read(1) == b""
            port.write(b"F")
            assert port.read(4) == b"\x17\x00\x04\x00"
    with EmulatorServer(firmware=23, model="r2") as emulator:
        assert emulator.analog_port is None


def test_trial_with_a_world_scheduled_lick(server: EmulatorServer) -> None:
    events = EventTable.default(server.hw)
    parser = TrialStreamParser()
    started = threading.Event()
    server.world.add_trial_listener(lambda r: started.set() if r.kind == "start" else None)
    with connect(server) as port:
        parser.state_machine_sent()
        port.write(encode_state_machine(lick_machine(server), server.hw, run_asap=True))
        assert started.wait(2)
        start_cycle = server.world.trials[-1].cycle
        server.world.pulse_input("Port1", 30, at_cycle=start_cycle + 3000)
        messages = read_trial(port, parser)
    assert isinstance(messages[0], TrialStarted) and messages[0].confirmed
    names = [(m.cycle, [events.name(c) for c in m.codes]) for m in messages if isinstance(m, EventsReceived)]
    assert names == [(3000, ["Port1In"]), (3010, ["Tup"])]
    assert messages[-1].end_us - messages[0].start_us == 3010 * 100
    assert [(r.channel, r.value, r.cycle - start_cycle) for r in server.world.outputs] == [
        ("BNC1", 1, 0), ("BNC1", 0, 3000)]  # state 1 does not drive BNC1


def test_world_input_latency_at_real_time(server: EmulatorServer) -> None:
    parser = TrialStreamParser()
    with connect(server) as port:
        parser.state_machine_sent()
        port.write(encode_state_machine(lick_machine(server), server.hw, run_asap=True))
        while not server.world.trials:
            time.sleep(0.001)
        latencies = []
        parser.feed(port.read(9))
        for _ in range(5):
            cycle = server.world.pulse_input("Port2", 5, at_cycle=server.world.now_cycle + 200)
            due = server.host_time(cycle)
            data = port.read(7)  # one event packet (Port2In), then one (Port2Out)
            latencies.append(time.perf_counter() - due)
            port.read(7)
        port.write(b"X")
        read_trial(port, parser)
    print(f"world input -> bytes on the pty: median {sorted(latencies)[2] * 1e3:.3f} ms")
    assert data[:3] == bytes([1, 1, EventTable.default(server.hw).code("Port2In")])
    assert sorted(latencies)[2] < 0.002


@pytest.mark.parametrize(("model", "frame_us"), [("r2", 1000), ("r2plus", 125)])
def test_usb_model_delivers_bytes_at_frame_boundaries(model: str, frame_us: int) -> None:
    frame_cycles = frame_us / 100
    with EmulatorServer(firmware=23, model=model, usb_frames=True) as emulator, connect(emulator) as port:
        assert emulator.usb_frame_us == frame_us
        parser = TrialStreamParser()
        parser.state_machine_sent()
        port.write(encode_state_machine(lick_machine(emulator), emulator.hw, run_asap=True))
        parser.feed(port.read(9))
        for offset in (203, 207):  # licks inside a frame: their event waits for the frame's end
            cycle = emulator.world.pulse_input("Port2", 5, at_cycle=emulator.world.now_cycle + offset)
            frame_end = emulator.host_time((cycle // frame_cycles + 1) * frame_cycles)
            assert port.read(7)[:2] == b"\x01\x01"
            assert time.perf_counter() >= frame_end
            port.read(7)
        round_trips = []
        for _ in range(5):  # `S`: one frame out, then its reply one frame back at the earliest
            sent = time.perf_counter()
            port.write(b"S\x07")
            assert port.read(2) == b"\x02\x07"
            round_trips.append(time.perf_counter() - sent)
        port.write(b"X")
        read_trial(port, parser)
    assert min(round_trips) >= frame_us * 1e-6


def test_speed_factor_runs_a_one_second_trial_in_fifty_milliseconds() -> None:
    with EmulatorServer(firmware=23, speed=20) as fast:
        parser = TrialStreamParser()
        with connect(fast) as port:
            parser.state_machine_sent()
            t0 = time.perf_counter()
            port.write(encode_state_machine(lick_machine(fast, timer_cycles=10_000), fast.hw, run_asap=True))
            messages = read_trial(port, parser)
            elapsed = time.perf_counter() - t0
    assert messages[-1].end_us - messages[0].start_us == 1_000_000  # virtual time is exact
    assert 0.045 < elapsed < 0.12, elapsed


def test_v22_has_no_app_port() -> None:
    with EmulatorServer(firmware=22) as emulator:
        assert emulator.app_port is None
        with connect(emulator) as port:
            port.write(b"F")
            assert port.read(4) == b"\x16\x00\x03\x00"


def test_stop_releases_fds_and_threads() -> None:
    fds, threads = open_fds(), threading.active_count()
    for _ in range(3):
        with EmulatorServer(firmware=23) as emulator, connect(emulator):
            pass
    assert open_fds() == fds
    assert threading.active_count() == threads


def _spawn(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hardware.bpod.emulator", *args], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, **kwargs)


def test_cli_prints_ports_and_exits_cleanly_on_sigterm() -> None:
    proc = _spawn(["--firmware", "23", "--speed", "2"])
    try:
        main = proc.stdout.readline().strip()
        app = proc.stdout.readline().strip()
        assert main.startswith("main: /dev/") and app.startswith("app: /dev/")
        with serial.Serial(main.split(": ")[1], timeout=2) as port:
            port.write(b"6")
            reply = port.read(1)
            while reply == b"\xde":
                reply = port.read(1)
            assert reply == b"5"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_cli_dies_with_its_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "p = subprocess.Popen([sys.executable, '-m', 'hardware.bpod.emulator', '--firmware', '22',"
         " '--exit-with-parent'])\n"
         "print(p.pid, flush=True)\n"
         "time.sleep(60)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().startswith("main: /dev/")  # the child shares the pipe
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while _alive(child):
            assert time.monotonic() < deadline, "the emulator outlived its parent"
            time.sleep(0.02)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status
