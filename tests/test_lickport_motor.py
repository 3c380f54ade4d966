"""The lickport motor on a Zaber stage: it starts at the centre, a step moves it by the step size left or
right and waits idle, a stage that never goes idle is one clear timeout; a session with a strongly
biased simulated mouse moves the lickport toward the weaker side and records it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hardware.lickport_motor import LickportMotorError, LickportMotorTimeout
from hardware.settings import LickportMotorSettings
from hardware.sim.subject_file import SUBJECT_STATE_FILE
from hardware.zaber.emulator import Device, ZaberEmulatorServer
from hardware.zaber.lickport import ZaberLickportMotor
from hardware.zaber.protocol import Command, Reply
from protocols.trial_record import TrialRecord
from rig.errors import SessionFault
from rig.free_endpoints import free_network_overrides
from rig.session import RunOptions, SessionRunner
from rig.settings import load_settings
from rig.store import read_jsonl

SIM_FOLDER = SUBJECT_STATE_FILE.parts[0]  # the simulated mouse's own state beside the sessions

LICKPORT = LickportMotorSettings(port="emulator")


def test_it_starts_at_the_centre_and_a_step_moves_it_by_the_step_size() -> None:
    with ZaberEmulatorServer(speed=20) as server:
        axis = server.device.axis(1)
        with ZaberLickportMotor.open(server.port, LICKPORT, clock=server.now_s, poll_s=0.0005) as motor:
            assert axis.homed and axis.position(server.now_s()) == LICKPORT.centre and motor.offset == 0
            right = motor.step_toward("right")
            assert not axis.busy(server.now_s())  # returned once the stage was idle there
            assert axis.position(server.now_s()) == LICKPORT.centre + LICKPORT.step
            left = [motor.step_toward("left") for _ in range(3)]
            assert axis.position(server.now_s()) == LICKPORT.centre - 2 * LICKPORT.step
        assert (right.toward, right.offset, right.position) == ("right", LICKPORT.step,
                                                                 LICKPORT.centre + LICKPORT.step)
        assert [m.offset for m in left] == [0, -LICKPORT.step, -2 * LICKPORT.step]
        assert motor.offset == -2 * LICKPORT.step
        assert right.travel_s >= axis.moves[-4].duration  # the stage's time, measured on its clock
        assert right.to_record() == {"toward": "right", "position": LICKPORT.centre + LICKPORT.step,
                                     "offset": LICKPORT.step, "travel_s": round(right.travel_s, 6)}


def test_a_stage_that_never_goes_idle_times_out_on_its_own_clock() -> None:
    settings = LICKPORT.model_copy(update={"move_timeout_s": 1.0})
    with ZaberEmulatorServer(speed=50) as server, ZaberLickportMotor.open(
            server.port, settings, clock=server.now_s, poll_s=0.0005) as motor:
        server.device.axis(1).stuck = True
        target = LICKPORT.centre - LICKPORT.step
        with pytest.raises(LickportMotorTimeout, match=rf"^lickport motor: the step left \(to {target}\) did "
                                                       r"not finish within 1 s .*the stage was stopped"):
            motor.step_toward("left")


def test_a_missing_stage_or_a_centre_beyond_the_travel_is_one_lickport_motor_error() -> None:
    with pytest.raises(LickportMotorError, match="^lickport motor: cannot open the Zaber stage's port /dev/"):
        ZaberLickportMotor.open("/dev/nope", LICKPORT)
    with ZaberEmulatorServer() as server, pytest.raises(LickportMotorError, match="beyond the stage's trav"):
        ZaberLickportMotor.open(server.port, LICKPORT.model_copy(update={"centre": 10_000_000}))
    with ZaberEmulatorServer() as server, pytest.raises(LickportMotorError,
                                                        match="BADAXIS.*lickport_motor.axis"):
        ZaberLickportMotor.open(server.port, LICKPORT.model_copy(update={"axis": 2}))


def test_a_session_with_a_biased_mouse_moves_the_lickport_toward_the_weaker_side(tmp_path: Path) -> None:
    """The mouse licks left on every answered trial: its right trials fail, so after more than 50 trials
    the lickport steps toward the right, and the move is in the next trial's record."""
    settings = load_settings(overrides={
        **free_network_overrides(), "online.enabled": False, "imaging.source": "none",
        "lickport_motor.port": "emulator", "sim.mouse.side_bias": -1.0, "sim.mouse.lapse": 0.0})
    started = time.monotonic()
    result = SessionRunner(settings, RunOptions(data_root=tmp_path, subject="lp1", trials=55, speed=100.0,
                                                handle_signals=False)).run()
    log = f"(the session took {time.monotonic() - started:.1f} s)"
    records = list(read_jsonl(result.folder / "trials.jsonl"))
    assert result.end_reason == "trial limit" and len(records) == 55, log
    moves = [r for r in records if "lickport" in r]
    assert moves, f"no lickport move recorded {log}"
    first = moves[0]["lickport"]
    step, centre = settings.lickport_motor.step, settings.lickport_motor.centre
    assert (first["toward"], first["offset"], first["position"]) == ("right", step, centre + step)
    assert first["after_trial"] == moves[0]["trial"] - 1 > settings.task.lickport_bias.every_trials
    assert all(m["lickport"]["toward"] == "right" for m in moves)
    info = json.loads((result.folder / "session.json").read_text())
    assert info["lickport_motor"] == {"port": "emulator", "simulated": True, "moves": len(moves),
                                      "steps": {"left": 0, "right": len(moves)}, "offset": len(moves) * step}


class JammingDevice(Device):
    """A stage whose carriage jams on its first step (its moves: homing, the centre, then the steps)."""

    def handle(self, command: Command, now: float) -> list[Reply]:
        if command.words[:1] == ["move"] and len(self.axis(1).moves) >= 2:
            self.axis(1).stuck = True
        return super().handle(command, now)


def test_a_stuck_lickport_ends_the_session_before_the_next_trial(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rig.simulated_rig.Device", JammingDevice)
    settings = load_settings(overrides={
        **free_network_overrides(), "online.enabled": False, "imaging.source": "none",
        "pole_motor.port": None, "lickport_motor.port": "emulator", "sim.mouse.side_bias": -1.0,
        "sim.mouse.lapse": 0.0, "task.lickport_bias.every_trials": 3, "task.lickport_bias.window": 3})
    with pytest.raises(SessionFault, match="the step right .* did not finish within 2 s.*the session ended"):
        SessionRunner(settings, RunOptions(data_root=tmp_path, subject="lp2", trials=20, speed=100.0,
                                           handle_signals=False)).run()
    folder = next(p for p in (tmp_path / "lp2").iterdir() if p.is_dir() and p.name != SIM_FOLDER)
    records = list(read_jsonl(folder / "trials.jsonl"))
    assert [r["outcome"] for r in records][-1] == "not_started" and len(records) == 5  # step after trial 4
    assert records[-1]["abort_reason"] == "lickport motor failed" and "lickport" not in records[-1]
    info = json.loads((folder / "session.json").read_text())
    assert info["end_reason"] == "lickport motor failed" and info["lickport_motor"]["moves"] == 0


def test_the_step_is_read_back_from_the_trial_record_and_older_lines_have_none() -> None:
    step = {"after_trial": 51, "toward": "right", "position": 150_500, "offset": 500, "travel_s": 0.03}
    record = TrialRecord(trial=52, outcome="hit", lickport=step)
    assert TrialRecord.from_json(record.to_json()).lickport == step
    older = {k: v for k, v in record.to_json().items() if k != "lickport"}
    assert TrialRecord.from_json(older).lickport is None and "lickport" not in TrialRecord(1, "hit").to_json()
