"""`rig calibrate-valves` on the emulator: drops through the Bpod, weights, fit, the rig file rewritten."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from rig.calibration import (
    Batch,
    Measurement,
    calibration_warning,
    fit_valve,
    read_weights,
)
from rig.errors import UserError
from rig.free_endpoints import free_network
from rig.session import RunOptions, SessionRunner
from rig.settings import ValveCalibration, load_settings
from rig.settings.files import replace_settings_section

RIG_TEXT = """\
# box 1 in room 210
rig:
  name: box1                # on the door

bpod:
  port: emulator
  emulator_speed: 200       # the drops take no time in the test
  valve_calibration:        # rewritten by rig calibrate-valves
    left:
      - {valve_time_s: 0.015, volume_ul: 1.0}
      - {valve_time_s: 0.06, volume_ul: 5.5}
    max_age_days: 10
  timeout_s: 2.0            # after the calibration

# wiring as built
wiring:
  left_lick: Port1
"""
WEIGHTS = "valve,duration_s,grams\nleft,0.02,0.15\nleft,0.04,0.31\nleft,0.08,0.61\n" \
          "right,0.02,0.10\nright,0.04,0.20\nright,0.08,0.42\n"


def calibrate(tmp_path: Path, weights: str, *extra: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    (tmp_path / "settings.yaml").write_text("task: {reward_volume_ul: 2.0}\n")
    (tmp_path / "weights.csv").write_text(weights)
    args = ["--drops", "50", "--durations", "0.02,0.04,0.08", "--interval", "0.05", *extra]
    return subprocess.run(
        [sys.executable, "-m", "rig", "calibrate-valves", "--settings", str(tmp_path / "settings.yaml"),
         *args],
        capture_output=True, text=True, timeout=120, input=stdin)


def test_calibrate_valves_with_a_weights_file_on_the_emulator(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(RIG_TEXT)
    result = calibrate(tmp_path, WEIGHTS, "--weights", str(tmp_path / "weights.csv"))
    assert result.returncode == 0, result.stderr
    assert "left valve: 50 drops of 0.02 s ... done" in result.stdout
    assert "measured   3.000 uL/drop" in result.stdout  # 0.15 g / 50 drops
    text = rig.read_text()
    # the other lines, comments included, are as written
    for line in ("# box 1 in room 210", "  name: box1                # on the door",
                 "  timeout_s: 2.0            # after the calibration", "# wiring as built",
                 "  left_lick: Port1"):
        assert line in text.splitlines()
    settings = load_settings(tmp_path / "settings.yaml")  # rig.yaml beside it
    calibration = settings.bpod.valve_calibration
    assert calibration.measured_on == date.today() and calibration.max_age_days == 10
    assert settings.bpod.timeout_s == 2.0 and settings.rig.name == "box1"
    left = [(p.valve_time_s, p.volume_ul) for p in calibration.left.root]
    assert [t for t, _ in left] == [0.02, 0.04, 0.08]
    assert [v for _, v in left] == pytest.approx([3.0, 6.1, 12.2], abs=0.15)
    assert calibration.right.root[-1].volume_ul == pytest.approx(8.4, abs=0.2)
    (figure,) = tmp_path.glob("rig_valves_*.png")
    assert figure.read_bytes().startswith(b"\x89PNG") and figure.stat().st_size > 5000  # a drawn figure
    assert not list(tmp_path.glob(".rig.yaml.tmp"))


def test_calibrate_valves_asks_on_stdin(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(RIG_TEXT)
    result = calibrate(tmp_path, "", "--valves", "right", "--durations", "0.02,0.05",
                       stdin="abc\n0.1\n0.26\n")
    assert result.returncode == 0, result.stderr
    assert "weight: grams 'abc' is not a number" in result.stdout
    calibration = load_settings(tmp_path / "settings.yaml").bpod.valve_calibration
    assert [p.volume_ul for p in calibration.right.root] == pytest.approx([2.0, 5.2])
    assert [p.volume_ul for p in calibration.left.root] == [1.0, 5.5]  # not calibrated this time: kept


@pytest.mark.parametrize(("weights", "message"), [
    ("valve,duration_s,grams\nleft,0.02,0.15\nmiddle,0.04,0.3\n",
     "weights.csv:3: valve 'middle' must be left or right"),
    ("valve,duration_s,grams\nleft,0.02,heavy\n", "weights.csv:2: grams 'heavy' is not a number"),
    ("valve,grams\nleft,0.1\n", "weights.csv: the first line must name the columns valve,duration_s,grams "
                                "(missing: duration_s)"),
    ("valve,duration_s,grams\nleft,0.02,0.15\n",
     "weights.csv: no weight for the left valve at 0.04 s (50 drops)"),
])
def test_a_bad_weights_file_is_one_sentence_and_nothing_is_written(tmp_path: Path, weights: str,
                                                                   message: str) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(RIG_TEXT)
    result = calibrate(tmp_path, weights, "--valves", "left", "--weights", str(tmp_path / "weights.csv"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"{tmp_path / message}"
    assert rig.read_text() == RIG_TEXT


def test_calibrate_valves_needs_a_rig_file(tmp_path: Path) -> None:
    result = calibrate(tmp_path, WEIGHTS, "--weights", str(tmp_path / "weights.csv"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("calibrate-valves writes the curves into a rig file: give --rig")


def test_a_fit_that_does_not_rise_is_refused() -> None:
    batches = [Batch("left", 0.02, 10), Batch("left", 0.04, 10)]
    with pytest.raises(UserError, match="the left valve's weights do not give more water for longer"):
        fit_valve("left", [Measurement(batches[0], 0.05), Measurement(batches[1], 0.04)])
    with pytest.raises(UserError, match="needs weights at 2 or more open times"):
        fit_valve("left", [Measurement(batches[0], 0.05)])


def test_a_yaml_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("- {valve: left, duration_s: 0.02, grams: 0.1}\n"
                    "- {valve: left, duration_s: 0.04, grams: 0.2}\n")
    batches = [Batch("left", 0.02, 10), Batch("left", 0.04, 10)]
    assert [m.volume_ul for m in read_weights(path, batches)] == pytest.approx([10.0, 20.0])
    path.write_text("left: 0.1\n")
    with pytest.raises(UserError, match=r"w.yaml: must be a list of \{valve, duration_s, grams\} entries"):
        read_weights(path, batches)


def test_the_section_is_added_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "rig.yaml"
    path.write_text("rig: {name: a}\nbpod:\n  port: emulator  # here\n")
    text = replace_settings_section(path, "bpod", "valve_calibration", {"max_age_days": 5})
    assert text == "rig: {name: a}\nbpod:\n  port: emulator  # here\n  valve_calibration: {max_age_days: 5}\n"
    path.write_text("rig: {name: a}\n")
    assert replace_settings_section(path, "bpod", "x", 1) == "rig: {name: a}\n\nbpod: {x: 1}\n"


def test_an_old_calibration_warns_in_the_session(tmp_path: Path) -> None:
    today = date(2025, 6, 1)
    fresh = ValveCalibration(measured_on=today - timedelta(days=30))
    assert calibration_warning(fresh, today, simulated=False) is None
    old = ValveCalibration(measured_on=today - timedelta(days=31))
    assert calibration_warning(old, today, simulated=True) == (
        "the valve calibration is 31 days old (measured 2025-05-01, max_age_days 30): recalibrate with "
        "`rig calibrate-valves`")
    assert calibration_warning(ValveCalibration(), today, simulated=True) is None
    assert "has no date" in str(calibration_warning(ValveCalibration(), today, simulated=False))

    rig = tmp_path / "rig.yaml"
    rig.write_text(yaml.safe_dump({"bpod": {"valve_calibration": {"measured_on": "2020-01-01"}},
                                   "network": free_network()}))
    (tmp_path / "settings.yaml").write_text("online: {enabled: false}\nimaging: {source: none}\n")
    settings = load_settings(tmp_path / "settings.yaml")
    result = SessionRunner(settings, RunOptions(data_root=tmp_path / "data", speed=100, trials=1,
                                                handle_signals=False)).run()
    info = json.loads((result.folder / "session.json").read_text())
    assert info["valve_calibration"]["measured_on"] == "2020-01-01"
    assert info["valve_calibration"]["warning"].startswith("the valve calibration is ")
