"""Unmodified PyPI clients against the emulator: pybpod-api 1.8.2 (firmware 22) and bpod-core
0.1.0a15 (firmware 23).

Each client runs in a subprocess: pybpod-api swaps sys.stdout/sys.stderr and keeps its settings in
a process-global `confapp` object, bpod-core starts reader threads and a ZeroMQ service. The
emulator runs here, so the test can play the mouse through its `World` and play a second program
on the APP port. The client functions at the bottom run in the subprocess and write a JSON file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import serial

from hardware.bpod.emulator import EmulatorServer, TrialRecord

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _run_client(function: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    result = Path(args[-1])
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(TESTS)!r}]; import test_interop; "
            f"test_interop.{function}(*{list(args)!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{function} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(result.read_text())


def test_pybpod_api_runs_trials_on_firmware_22(tmp_path: Path) -> None:
    with EmulatorServer(firmware=22, speed=5) as emulator:

        def lick(record: TrialRecord) -> None:  # the mouse licks 0.65 s into every trial
            if record.kind == "start":
                emulator.world.pulse_input("Port1", 50, at_cycle=record.cycle + 6500)

        emulator.world.add_trial_listener(lick)
        result = _run_client("pybpod_client", emulator.port, str(tmp_path / "pybpod.json"))
        bnc1 = [r.value for r in emulator.world.iter_outputs("BNC1")]
    assert result["soft_codes"] == [3, 3, 3]
    assert len(result["trials"]) == 3
    for trial in result["trials"]:
        events, states = trial["Events timestamps"], trial["States timestamps"]
        assert events["Tup"] == [0.5]  # the 0.5 s state lasted exactly 5000 cycles
        assert events["Port1In"] == [0.65]
        # trigger_softcode(0), sent from the client's soft-code handler: its time is the host's
        # round trip (times the speed), so only its order is checked, not its value.
        (soft_in,) = events["SoftCode1"]
        assert 0.65 < soft_in < 5
        assert states["Start"] == [[0, 0.5]] and states["WaitLick"] == [[0.5, 0.65]]
        assert states["Cue"] == [[0.65, soft_in]]
        duration = trial["Trial end timestamp"] - trial["Trial start timestamp"]
        assert duration == pytest.approx(soft_in, abs=1e-4)
    assert bnc1 == [1, 0] * 3


@pytest.mark.parametrize(("model", "machine_type"), [("r2", 3), ("r2plus", 4)])
def test_bpod_core_runs_queued_trials_and_app_port_soft_code_on_firmware_23(
        tmp_path: Path, model: str, machine_type: int) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path / "home"),
           "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    for key in ("config", "home", "run"):
        (tmp_path / key).mkdir()
    with EmulatorServer(firmware=23, model=model, speed=10) as emulator:
        assert emulator.app_port is not None
        assert (emulator.analog_port is not None) == (model == "r2plus")
        first_trial = threading.Event()
        emulator.world.add_trial_listener(lambda r: first_trial.set() if r.kind == "start" else None)
        app = serial.Serial(emulator.app_port)

        def decoder() -> None:  # another program, writing one byte on the APP port mid-trial
            if first_trial.wait(30):
                time.sleep(0.02)  # 0.2 s of virtual time at speed 10
                app.write(b"\x03")

        writer = threading.Thread(target=decoder, daemon=True)
        writer.start()
        try:
            result = _run_client("bpod_core_client", emulator.port, emulator.app_port,
                                 emulator.analog_port or "", str(tmp_path / "bpod_core.json"), env=env)
        finally:
            first_trial.set()
            writer.join(5)
            app.close()
        trials = [t for t in emulator.world.trials if t.kind == "start"]
    assert result["version"][:2] == [[23, 10], machine_type]
    rows = result["rows"]
    by_trial = [[r for r in rows if r["Trial"] == n] for n in (0, 1)]
    app_events = [r for r in by_trial[0] if r["Event"] == "SoftCodeApp3"]
    assert len(app_events) == 1 and 0.1 < app_events[0]["t"] < 5  # host timing: 0.2 s at best
    states0 = [r["State"] for r in by_trial[0] if r["Type"] == "StateStart"]
    assert states0 == ["WaitApp", "Reward"]
    reward_end = [r["t"] for r in by_trial[0] if r["Type"] == "TrialEnd"][0]
    assert reward_end == pytest.approx(app_events[0]["t"] + 0.1, abs=1e-9)
    # Queued with RunASAP: trial 1 starts one cycle (100 us, the hardware's own gap) after trial 0 ended.
    assert result["trial_start_us"][1] == result["trial_end_us"][0] + 100
    assert [r["Event"] for r in by_trial[1] if r["Type"] == "InputEvent"] == ["Tup"]
    assert [r["t"] for r in by_trial[1] if r["Event"] == "Tup"] == [5.0]
    assert len(trials) == 2


# ----------------------------------------------------------------------------------------------
# Client side (runs in the subprocess)


def _install_sca_stub() -> None:
    """pybpod-api 1.8.2 imports `sca.formats.csv` (a CSV writer from the authors' own toolkit,
    not the package named `sca` on PyPI, and not declared as a dependency). Sessions only call
    `csv.writer(stream, columns_headers=..., ...)` and then `writerow`/`flush`; this stand-in
    accepts that and discards the rows (the test reads the trial data from the API instead)."""
    import types

    class _Writer:
        def __init__(self, stream: Any, columns_headers: list[str] | None = None, **_: Any) -> None:
            self.stream = stream

        def writerow(self, row: list[Any]) -> None:
            pass

        def flush(self) -> None:
            pass

    sca, formats, csv = (types.ModuleType(n) for n in ("sca", "sca.formats", "sca.formats.csv"))
    csv.writer = _Writer  # type: ignore[attr-defined]
    formats.csv = csv  # type: ignore[attr-defined]
    sca.formats = formats  # type: ignore[attr-defined]
    sys.modules.update({"sca": sca, "sca.formats": formats, "sca.formats.csv": csv})


def pybpod_client(port: str, result_path: str) -> None:
    """Three trials: a 0.5 s state, wait for a lick, then a soft code out answered with
    `trigger_softcode(0)` (the SoftCode1 event) from the client's soft-code handler."""
    import types

    _install_sca_stub()
    # confapp resolves a setting from the first module that defines it; pybpod-api loads a module
    # named `user_settings` ahead of its defaults, so the overrides go there.
    user_settings = types.ModuleType("user_settings")
    user_settings.SETTINGS_PRIORITY = 0  # type: ignore[attr-defined]
    user_settings.PYBPOD_API_STREAM2STDOUT = False  # type: ignore[attr-defined]
    user_settings.TARGET_BPOD_FIRMWARE_VERSION = "22"  # type: ignore[attr-defined]
    user_settings.BPOD_BNC_PORTS_ENABLED = [True, True]  # type: ignore[attr-defined]
    user_settings.BPOD_BEHAVIOR_PORTS_ENABLED = [True] * 4  # type: ignore[attr-defined]
    sys.modules["user_settings"] = user_settings
    from pybpodapi.protocol import Bpod, StateMachine

    bpod = Bpod(port)
    soft_codes: list[int] = []

    def on_soft_code(code: int) -> None:
        soft_codes.append(code)
        bpod.trigger_softcode(0)

    bpod.softcode_handler_function = on_soft_code
    trials = []
    for _ in range(3):
        sma = StateMachine(bpod)
        sma.add_state(state_name="Start", state_timer=0.5, state_change_conditions={"Tup": "WaitLick"},
                      output_actions=[("BNC1", 1)])
        sma.add_state(state_name="WaitLick", state_timer=2,
                      state_change_conditions={"Port1In": "Cue", "Tup": "exit"}, output_actions=[])
        sma.add_state(state_name="Cue", state_timer=5,
                      state_change_conditions={"SoftCode1": "exit", "Tup": "exit"},
                      output_actions=[("SoftCode", 3)])
        bpod.send_state_machine(sma)
        bpod.run_state_machine(sma)
        trials.append(bpod.session.current_trial.export())
    bpod.close()
    Path(result_path).write_text(json.dumps({"trials": trials, "soft_codes": soft_codes}))


def bpod_core_client(main_port: str, app_port: str, analog_port: str, result_path: str) -> None:
    """Two trials queued back to back (RunASAP); the first waits for APP soft code 3. With an analog
    port, the device is a Bpod 2+ (triple-serial Teensy), whose FlexIO port bpod-core opens too."""
    import bpod_core.com
    from serial.tools.list_ports_common import ListPortInfo

    def comports() -> list[ListPortInfo]:
        """The ptys, described as the dual-serial Teensy of a Bpod r2 (triple-serial: r2+) on firmware 23."""
        ports = []
        devices = [d for d in (main_port, app_port, analog_port) if d]
        for device in devices:
            info = ListPortInfo(device, skip_link_detection=True)
            info.vid, info.serial_number = 0x16C0, "EMULATOR0001"
            info.pid = 0x048C if analog_port else 0x048B
            ports.append(info)
        return ports

    bpod_core.com.comports = comports  # bpod-core finds devices only by USB vendor/product id
    from bpod_core.bpod import Bpod
    from bpod_core.fsm import StateMachine

    with Bpod() as bpod:
        fsm = StateMachine()
        fsm.add_state("WaitApp", timer=5, transitions={"SoftCodeApp3": "Reward", "Tup": ">exit"},
                      actions={"TTLOut1": 1})
        fsm.add_state("Reward", timer=0.1, transitions={"Tup": ">exit"}, actions={"Valve1": 1})
        bpod.run(fsm)
        bpod.run(fsm)  # queued: the device starts it the cycle the first one ends
        bpod.wait()
        data = bpod.get_data()
        version = [list(bpod.version.firmware), bpod.version.machine]
    rows, starts, ends = [], [], []
    for trial in (0, 1):
        frame = data.filter(data["Trial"] == trial)
        t0 = frame.filter(frame["Type"] == "TrialStart")["Time"][0]
        t_end = frame.filter(frame["Type"] == "TrialEnd")["Time"][0]
        starts.append(int(t0.timestamp() * 1e6 + 0.5))
        ends.append(int(t_end.timestamp() * 1e6 + 0.5))
        for row in frame.iter_rows(named=True):
            rows.append({"Trial": trial, "State": row["State"], "Type": str(row["Type"]),
                         "Event": row["Event"], "Channel": row["Channel"], "Value": row["Value"],
                         "t": round((row["Time"] - t0).total_seconds(), 6)})
    Path(result_path).write_text(json.dumps({"rows": rows, "version": version, "trial_start_us": starts,
                                             "trial_end_us": ends}))
