"""The Zaber stage: the ASCII codec, the trapezoid move, the emulator on a pty against the client and the
pole motor driver, and sessions on the simulated rig that move the pole through the emulated stage.

Every duration is read on the stage's own clock (a manual clock, or the emulator's speed clock), never on
the host's: a slow host makes a test slower, not wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hardware.pole_motor import PoleMotorError, PoleMotorTimeout
from hardware.settings import PoleMotorSettings
from hardware.sim.pole_motor import StagePoleSensor
from hardware.sim.subject_file import SUBJECT_STATE_FILE
from hardware.zaber.client import ZaberClient, ZaberConnectionError, ZaberRejected
from hardware.zaber.emulator import Device, ZaberEmulatorServer
from hardware.zaber.emulator.device import MOVES_KEPT
from hardware.zaber.motion import Trapezoid
from hardware.zaber.pole import PolePositions, ZaberPoleMotor
from hardware.zaber.protocol import (
    ACCEL_DATA_PER_USTEP_S2,
    VELOCITY_DATA_PER_USTEP_S,
    Command,
    ProtocolError,
    Reply,
    parse_command,
    parse_reply,
)
from rig.errors import SessionFault, UserError
from rig.free_endpoints import free_network_overrides
from rig.session import RunOptions, SessionRunner
from rig.settings import Settings, load_settings
from rig.store import read_jsonl

SIM_FOLDER = SUBJECT_STATE_FILE.parts[0]  # the simulated mouse's own state beside the sessions

POLE = PoleMotorSettings(port="emulator")


class ManualClock:
    """A stage clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- codec and profile (pure) ------------------------------------------------------------------------------


def test_replies_and_commands_parse_as_the_manual_writes_them() -> None:
    reply = parse_reply(b"@01 1 OK IDLE -- 0\r\n")
    assert (reply.device, reply.axis, reply.flag, reply.status, reply.warning, reply.data) == (
        1, 1, "OK", "IDLE", "--", "0")
    assert reply.encode() == b"@01 1 OK IDLE -- 0\r\n"
    rejected = parse_reply("@01 1 RJ IDLE WR BADCOMMAND")
    assert rejected.rejected and rejected.warning == "WR" and rejected.data == "BADCOMMAND"
    with_id = parse_reply("@02 0 07 OK BUSY -- 12345")
    assert with_id.message_id == 7 and with_id.busy and with_id.int_data() == 12345
    assert parse_reply("#01 0 a note").kind == "#"
    assert parse_command(b"/1 1 00 get pos:2C\n") == Command(1, 1, "get pos", 0)  # checksum verified
    assert parse_command("/home") == Command(0, 0, "home")
    assert Command(1, 2, "move abs 5").encode() == b"/1 2 move abs 5\n"
    for bad in ("OK IDLE", "@01 1 MAYBE IDLE -- 0", "@x 1 OK IDLE -- 0"):
        with pytest.raises(ProtocolError):
            parse_reply(bad)
    with pytest.raises(ProtocolError, match="checksum"):
        parse_command("/1 1 00 get pos:2D")


def test_trapezoid_and_triangle_take_the_time_speed_and_accel_say() -> None:
    long = Trapezoid(0, 100_000, speed=50_000, accel=100_000)  # ramps of 0.5 s and 12 500 steps each
    assert long.duration == pytest.approx(0.5 + 75_000 / 50_000 + 0.5)
    assert long.position(long.duration / 2) == pytest.approx(50_000)
    assert long.position(0.5) == pytest.approx(12_500) and long.velocity(1.0) == pytest.approx(50_000)
    short = Trapezoid(10_000, 0, speed=50_000, accel=100_000)  # never reaches full speed
    assert short.duration == pytest.approx(2 * (10_000 / 100_000) ** 0.5)
    assert short.position(short.duration) == 0 and short.position(-1) == 10_000
    stopped = long.stopped_at(1.0)  # cruising at 50 000/s: 12 500 steps to stand still, in 0.5 s
    assert stopped.target == pytest.approx(long.position(1.0) + 12_500)
    assert stopped.end == pytest.approx(1.5) and stopped.position(1.0) == pytest.approx(long.position(1.0))


# -- the emulator against the client -----------------------------------------------------------------------


@pytest.fixture
def manual_stage() -> Any:
    clock = ManualClock()
    with ZaberEmulatorServer(Device(axes=2), clock=clock) as server, ZaberClient(server.port) as client:
        yield server, client, clock


def test_a_move_is_busy_for_its_trapezoid_then_idle_at_the_target(manual_stage: Any) -> None:
    server, client, clock = manual_stage
    client.set(1, 1, "maxspeed", round(80_000 * VELOCITY_DATA_PER_USTEP_S))
    client.set(1, 1, "accel", round(400_000 * ACCEL_DATA_PER_USTEP_S2))
    speed = client.get(1, 1, "maxspeed") / VELOCITY_DATA_PER_USTEP_S
    accel = client.get(1, 1, "accel") / ACCEL_DATA_PER_USTEP_S2
    expected = Trapezoid(0, 60_000, speed, accel)
    assert client.move_abs(1, 1, 60_000).busy
    assert server.device.axis(1).moves[-1].duration == pytest.approx(expected.duration)
    clock.advance(expected.duration / 2)
    half = client.command(1, 1, "get pos")
    assert half.busy and half.int_data() == round(expected.position(expected.duration / 2)) == 30_000
    assert not client.status(1, 2).busy  # the other axis stays put
    clock.advance(expected.duration / 2 - 1e-6)
    assert client.status(1, 1).busy
    clock.advance(2e-6)
    done = client.command(1, 1, "get pos")
    assert not done.busy and done.int_data() == 60_000


def test_home_clears_the_no_reference_warning(manual_stage: Any) -> None:
    server, client, clock = manual_stage
    axis = server.device.axis(1)
    axis._position = 50_000.0
    assert client.status(1, 1).warning == "WR"
    assert client.home(1, 1).busy
    clock.advance(axis.moves[-1].duration)
    reply = client.command(1, 1, "get pos")
    assert (reply.busy, reply.warning, reply.int_data()) == (False, "--", 0)


def test_stop_interrupts_a_move_with_a_warning(manual_stage: Any) -> None:
    server, client, clock = manual_stage
    client.home(1, 1)
    client.move_abs(1, 1, 200_000)
    clock.advance(0.5)
    client.stop(1, 1)
    clock.advance(10)
    reply = client.command(1, 1, "get pos")
    assert not reply.busy and reply.warning == "NI" and 0 < reply.int_data() < 200_000


def test_bad_commands_are_rejected_with_the_reason(manual_stage: Any) -> None:
    _, client, _ = manual_stage
    for text, reason in (("fly away", "BADCOMMAND"), ("get nonsense", "BADCOMMAND"),
                         ("move abs 99999999", "BADDATA"), ("move abs x", "BADDATA")):
        with pytest.raises(ZaberRejected, match=reason) as info:
            client.command(1, 1, text)
        assert info.value.reason == reason
    with pytest.raises(ZaberRejected, match="BADAXIS"):
        client.command(1, 3, "get pos")
    assert client.get(1, 1, "pos") == 0  # and the device goes on answering


def test_an_unplugged_stage_is_one_clear_error() -> None:
    with ZaberEmulatorServer() as server, ZaberClient(server.port, timeout_s=0.5) as client:
        assert client.get(1, 1, "pos") == 0
        server.unplug()
        with pytest.raises(ZaberConnectionError, match=f"Zaber stage on {server.port}"):
            client.get(1, 1, "pos")
    with pytest.raises(ZaberConnectionError, match="cannot open the Zaber stage's port /dev/no-such-stage"):
        ZaberClient("/dev/no-such-stage").connect()


def test_the_command_line_serves_an_emulator_and_prints_its_port() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "hardware.zaber.emulator", "--axes", "2"],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("port: /dev/")
        with ZaberClient(line.removeprefix("port: ")) as client:
            assert client.get(1, 0, "system.axiscount") == 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- the pole motor driver ---------------------------------------------------------------------------------


def test_every_move_goes_to_the_midpoint_first_then_waits_idle_at_the_target() -> None:
    with ZaberEmulatorServer(speed=20) as server:
        axis = server.device.axis(1)
        with ZaberPoleMotor.open(server.port, POLE, clock=server.now_s, poll_s=0.0005) as motor:
            assert axis.homed  # it had no reference position
            homing = len(axis.moves)
            first = motor.move_to("anterior")
            again = motor.move_to("anterior")  # already there: the same two moves, the same sound
            last = motor.move_to("posterior")
            assert motor.position == "posterior" and not axis.busy(server.now_s())
        targets = [m.target for m in list(axis.moves)[homing:]]
        mid = POLE.midpoint_position
        assert targets == [mid, POLE.anterior, mid, POLE.anterior, mid, POLE.posterior]
        to_anterior = (("midpoint", mid), ("target", POLE.anterior))
        to_posterior = (("midpoint", mid), ("target", POLE.posterior))
        assert [r.reached for r in (first, again, last)] == [to_anterior, to_anterior, to_posterior]
        legs = list(axis.moves)[homing:homing + 2]
        assert first.travel_s >= sum(m.duration for m in legs)  # the stage's time, measured on its clock
        assert axis.moves[homing + 2].duration == pytest.approx(axis.moves[homing + 1].duration)
        assert first.to_record() == {"target": "anterior", "target_position": POLE.anterior, "reached": [
            {"at": "midpoint", "position": mid}, {"at": "target", "position": POLE.anterior}],
            "travel_s": round(first.travel_s, 6)}


def test_a_stage_that_never_goes_idle_times_out_on_its_own_clock() -> None:
    settings = POLE.model_copy(update={"move_timeout_s": 1.0})
    with ZaberEmulatorServer(speed=50) as server, ZaberPoleMotor.open(
            server.port, settings, clock=server.now_s, poll_s=0.0005) as motor:
        server.device.axis(1).stuck = True
        with pytest.raises(PoleMotorTimeout, match=r"the move to the midpoint \(60000\) did not finish "
                                                   r"within 1 s"):
            motor.move_to("posterior")
        assert motor.position is None


def test_an_unplugged_or_missing_stage_is_one_pole_motor_error() -> None:
    with ZaberEmulatorServer(speed=20) as server:
        motor = ZaberPoleMotor.open(server.port, POLE, clock=server.now_s, poll_s=0.0005)
        server.unplug()
        with pytest.raises(PoleMotorError, match=r"^pole motor: lost the Zaber stage on .* \(unplugged\?\)"):
            motor.move_to("anterior")
        motor.close()
    with pytest.raises(PoleMotorError, match="pole motor: cannot open the Zaber stage's port /dev/nope"):
        ZaberPoleMotor.open("/dev/nope", POLE)
    with ZaberEmulatorServer() as server, pytest.raises(PoleMotorError, match="beyond the stage's travel"):
        ZaberPoleMotor.open(server.port, POLE.model_copy(update={"posterior": 10_000_000}))
    with ZaberEmulatorServer() as server, pytest.raises(PoleMotorError, match="BADAXIS.*pole_motor.axis"):
        ZaberPoleMotor.open(server.port, POLE.model_copy(update={"axis": 2}))


def test_the_mouse_feels_a_named_position_only_where_the_carriage_is() -> None:
    clock = ManualClock()
    device = Device()
    sensor = StagePoleSensor(lambda: device.axis(1).position(clock()), PolePositions.from_settings(POLE))
    assert sensor.position is None  # at 0: neither place
    device.axis(1).start(POLE.anterior, clock())
    assert sensor.position is None
    clock.advance(10)
    assert sensor.position == "anterior"


def test_settings_refuse_a_midpoint_outside_the_two_positions() -> None:
    with pytest.raises(ValueError, match="midpoint 5 must lie strictly between"):
        PoleMotorSettings(anterior=100, posterior=1000, midpoint=5)
    with pytest.raises(ValueError, match="the same position"):
        PoleMotorSettings(anterior=100, posterior=100)
    assert PoleMotorSettings(anterior=100, posterior=1000).midpoint_position == 550


# -- sessions on the simulated rig -------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    return load_settings(overrides={**free_network_overrides(), "online.enabled": False,
                                    "imaging.source": "none"})


def run(settings: Settings, data: Path, **options: Any) -> Any:
    return SessionRunner(settings, RunOptions(data_root=data, handle_signals=False, **options)).run()


def test_a_session_records_the_pole_moves_through_the_emulated_stage(settings: Settings,
                                                                     tmp_path: Path) -> None:
    result = run(settings, tmp_path, subject="z1", trials=8, speed=50.0)
    records = list(read_jsonl(result.folder / "trials.jsonl"))
    assert result.end_reason == "trial limit" and len(records) == 8
    pole = settings.pole_motor
    for record in records:
        assert record["cue"].startswith("pole_")
        target = record["cue"].removeprefix("pole_")
        moved = record["pole"]
        assert moved["target"] == target and moved["target_position"] == getattr(pole, target)
        assert moved["reached"] == [{"at": "midpoint", "position": pole.midpoint_position},
                                    {"at": "target", "position": getattr(pole, target)}]
        assert moved["travel_s"] > 0
    assert {r["outcome"] for r in records} <= {"hit", "error", "no_response"}
    assert any(r["outcome"] == "hit" for r in records)  # the mouse felt the pole where the stage put it
    info = json.loads((result.folder / "session.json").read_text())
    assert info["pole_motor"] == {"port": "emulator", "simulated": True}


class JammingDevice(Device):
    """A stage whose carriage jams on its `jam_at`-th move (counting homing)."""

    jam_at = 6

    def handle(self, command: Command, now: float) -> list[Reply]:
        if command.words[:1] == ["move"] and len(self.axis(1).moves) + 1 >= self.jam_at:
            self.axis(1).stuck = True
        return super().handle(command, now)


def test_a_stuck_stage_ends_the_session_before_the_trial(settings: Settings, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rig.simulated_rig.Device", JammingDevice)
    with pytest.raises(SessionFault, match="did not finish within 2 s.*the session ended there") as info:
        run(settings, tmp_path, subject="z2", trials=10, speed=50.0)
    assert info.value.reason == "pole motor failed"
    folder = next(p for p in (tmp_path / "z2").iterdir() if p.is_dir() and p.name != SIM_FOLDER)
    records = list(read_jsonl(folder / "trials.jsonl"))
    # homing, then two moves for each of trials 1 and 2: the midpoint move of trial 3 jams
    assert [r["outcome"] for r in records][-1] == "not_started" and len(records) == 3
    assert records[-1]["abort_reason"] == "pole motor failed" and "pole" not in records[-1]
    assert json.loads((folder / "session.json").read_text())["end_reason"] == "pole motor failed"
    assert all(r["outcome"] in ("hit", "error", "no_response") and r["pole"] for r in records[:-1])


def test_a_missing_stage_stops_the_session_before_it_begins(settings: Settings, tmp_path: Path) -> None:
    missing = settings.model_copy(update={"pole_motor": PoleMotorSettings(port="/dev/no-pole-stage")})
    with pytest.raises(UserError, match="pole motor: cannot open the Zaber stage's port /dev/no-pole-stage"):
        run(missing, tmp_path, subject="z3", trials=2, speed=50.0)
    real = settings.model_copy(update={"bpod": settings.bpod.model_copy(update={"port": "/dev/ttyACM9"})})
    with pytest.raises(UserError, match="pole_motor.port 'emulator' runs with the simulated rig only"):
        SessionRunner(real, RunOptions(data_root=tmp_path))


def test_an_axis_remembers_a_bounded_number_of_moves() -> None:
    """Two moves a pole trial through a session of thousands of trials: the emulated stage keeps the last
    MOVES_KEPT, not all (it lives in the rig process)."""
    axis = Device(1).axis(1)
    for k in range(3 * MOVES_KEPT):
        axis.start(float(k % 2) * 1000.0, now=float(k))
    assert len(axis.moves) == MOVES_KEPT and axis.moves[-1].target == float((3 * MOVES_KEPT - 1) % 2) * 1000.0
