"""`rig check-hardware` on the simulated rig: every check passes against the emulators, and a line the
hardware does not have, a sensor that never reports or a missing Bpod fails with exit status 1."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hardware.bpod.client import BpodClient
from hardware.bpod.emulator import EmulatorServer
from rig.bench import BenchBpod
from rig.self_test import CHECKS, CheckResult, register_check, run_checks, simulated_touch
from rig.settings import Settings, load_settings


def check_hardware(tmp_path: Path, rig_yaml: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "settings.yaml").write_text("task: {reward_volume_ul: 2.5}\n")
    (tmp_path / "rig.yaml").write_text(rig_yaml)
    return subprocess.run([sys.executable, "-m", "rig", "--log-level", "WARNING", "check-hardware",
                           "--settings", str(tmp_path / "settings.yaml"), *args],
                          capture_output=True, text=True, timeout=120)


@contextmanager
def emulator(model: str, speed: float = 50) -> Iterator[BenchBpod]:
    server = EmulatorServer(firmware=23, model=model, speed=speed).start()
    client = BpodClient(server.port)
    try:
        client.connect()
        yield BenchBpod(client, server.world)
    finally:
        client.close()
        server.stop()


def test_every_check_passes_on_the_simulated_rig(tmp_path: Path) -> None:
    result = check_hardware(tmp_path, "checks:\n  loopbacks: [{output: BNC1, input: BNC2}]\n")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("pass  ") for line in lines), lines
    names = [line.split(":")[0].removeprefix("pass  ") for line in lines]
    for name in ("bpod", "module Serial1", "wiring.left_lick", "wiring.imaging_trigger", "left_lick",
                 "right_lick", "left_valve", "right_valve", "loopback BNC1->BNC2", "pole motor",
                 "pole motor anterior", "pole motor posterior", "sound", "sound tone_high", "sound tone_low",
                 "sound go_cue", "module Serial1"):
        assert name in names
    assert "left_valve: Valve1 opened and closed (50 ms)" in result.stdout
    assert "module Serial1: HiFi1 (HiFi, firmware" in result.stdout  # the emulated HiFi, plugged in

    as_json = check_hardware(tmp_path, "rig: {name: box1}\n", "--json")
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)
    assert report["passed"] is True
    right = next(c for c in report["checks"] if c["name"] == "right_lick")
    assert right["passed"] is True and right["detail"].startswith("Port2 reported a touch")


def test_a_line_the_hardware_does_not_have_fails() -> None:
    # the settings describe a Bpod r1 (Port1-8); the connected one is an r2 (Port1-4)
    settings = load_settings(overrides={"bpod.model": "r1", "wiring.left_lick": "Port5"})
    with emulator("r2") as bpod:
        results = {r.name: r for r in run_checks(settings, bpod)}
    assert not results["wiring.left_lick"].passed
    assert results["wiring.left_lick"].detail.startswith("the connected Bpod has no input Port5")
    assert not results["left_lick"].passed and "not tested" in results["left_lick"].detail
    assert results["right_lick"].passed and results["left_valve"].passed


def test_a_lick_sensor_that_never_reports_fails() -> None:
    settings = load_settings(overrides={"checks.touch_timeout_s": 0.5})
    with emulator("r2") as bpod:
        assert bpod.world is not None
        touch = simulated_touch(bpod.world)

        def all_but_left(role: str, line: str) -> None:
            if role != "left_lick":
                touch(role, line)

        results = {r.name: r for r in run_checks(settings, bpod, all_but_left)}
    assert results["left_lick"] == CheckResult("left_lick", False, "Port1 reported no touch within 0.5 s")
    assert results["right_lick"].passed


def test_a_missing_bpod_and_a_failing_check_exit_1(tmp_path: Path) -> None:
    result = check_hardware(tmp_path, "bpod: {port: /dev/no-such-bpod}\n")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith("FAIL  bpod: cannot open the Bpod port /dev/no-such-bpod")

    as_json = check_hardware(tmp_path, "bpod: {port: /dev/no-such-bpod}\n", "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["passed"] is False


def test_a_loopback_cable_that_is_not_there_fails() -> None:
    settings = load_settings(overrides={"checks.loopbacks": [{"output": "BNC1", "input": "BNC2"}]})
    with emulator("r2") as bpod:  # no emulated_cables: the cable is unplugged
        results = {r.name: r for r in run_checks(settings, bpod)}
    assert results["loopback BNC1->BNC2"] == CheckResult(
        "loopback BNC1->BNC2", False, "BNC2 did not go high within 1 s of BNC1: check the cable")


def test_devices_plug_in_their_checks() -> None:
    @register_check("lickport motor")
    def homing(bench: object) -> list[CheckResult]:
        return [CheckResult("lickport motor", False, "did not reach home")]

    try:
        with emulator("r2") as bpod:
            results = run_checks(Settings(), bpod)
    finally:
        del CHECKS["lickport motor"]
    assert results[-1] == CheckResult("lickport motor", False, "did not reach home")
    assert "lickport motor" not in CHECKS


def test_bad_loopback_lines_are_refused_in_the_rig_file(tmp_path: Path) -> None:
    result = check_hardware(tmp_path, "checks:\n  loopbacks: [{output: BNC3, input: BNC1}]\n")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"{tmp_path / 'rig.yaml'}: checks.loopbacks[0].output = 'BNC3': not an "
                                     "output of a Bpod r2 (BNC1-2, PWM1-4, Valve1-4)")


@pytest.fixture(autouse=True)
def _registry_unchanged() -> Iterator[None]:
    before = list(CHECKS)
    yield
    assert list(CHECKS) == before


def test_the_pole_motor_check_moves_by_the_midpoint_and_fails_beyond_the_travel() -> None:
    settings = load_settings()
    with emulator("r2") as bpod:
        results = {r.name: r for r in run_checks(settings, bpod)}
    assert results["pole motor anterior"].passed
    assert results["pole motor anterior"].detail.startswith("midpoint 60000 -> target 20000 in ")
    beyond = load_settings(overrides={"pole_motor.posterior": 10**9})
    with emulator("r2") as bpod:
        results = {r.name: r for r in run_checks(beyond, bpod)}
    assert not results["pole motor"].passed and "beyond the stage's travel" in results["pole motor"].detail
    assert "pole motor posterior" not in results
    without = load_settings(overrides={"pole_motor.port": None})
    with emulator("r2") as bpod:
        assert not [r for r in run_checks(without, bpod) if r.name.startswith("pole motor")]


def test_the_sound_check_fails_in_one_sentence_without_the_hifi() -> None:
    """A Bpod with no HiFi on its module ports, while the rig file says sound.device: hifi."""
    with emulator("r2") as bpod:
        results = {r.name: r for r in run_checks(load_settings(), bpod)}
    assert not results["sound"].passed
    assert results["sound"].detail.startswith("sound.module HiFi1: the Bpod found no such module")
    assert "sound go_cue" not in results
    with emulator("r2") as bpod:
        pwm = run_checks(load_settings(overrides={"sound.device": "pwm"}), bpod)
    assert not [r for r in pwm if r.name.startswith("sound")]  # the tone lines are checked as wiring
