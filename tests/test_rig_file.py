"""One experiment (settings.yaml), one rig file per box (rig.yaml): the split, the refusals, the snapshot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rig.free_endpoints import free_network
from rig.session import RunOptions, SessionRunner
from rig.settings import (
    DEFAULT_SETTINGS_PATH,
    EXPERIMENT_SECTIONS,
    RIG_FILE_NAME,
    Settings,
    SettingsError,
    dump_settings_files,
    load_settings,
    read_settings_file,
    rig_sections,
)

EXPERIMENT = {"task": {"reward_volume_ul": 2.0}, "online": {"enabled": False}, "imaging": {"source": "none"}}


def write(path: Path, data: dict[str, object] | str) -> Path:
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def box(name: str, left_lick: str, left_ul: tuple[float, float],
        network: dict[str, str]) -> dict[str, object]:
    curve = [{"valve_time_s": 0.02, "volume_ul": left_ul[0]}, {"valve_time_s": 0.05, "volume_ul": left_ul[1]}]
    return {"rig": {"name": name}, "bpod": {"port": "emulator", "valve_calibration": {"left": curve}},
            "wiring": {"left_lick": left_lick}, "network": network}


def test_every_section_belongs_to_one_file_and_the_repository_files_hold_theirs() -> None:
    assert set(rig_sections()) | set(EXPERIMENT_SECTIONS) == set(Settings.model_fields)
    assert not set(rig_sections()) & set(EXPERIMENT_SECTIONS)
    assert {"rig", "bpod", "wiring", "data", "network"} <= set(rig_sections())
    assert {"task", "contexts", "online"} <= set(EXPERIMENT_SECTIONS)
    assert set(read_settings_file(DEFAULT_SETTINGS_PATH)) <= set(EXPERIMENT_SECTIONS)
    assert set(read_settings_file(DEFAULT_SETTINGS_PATH.parent / RIG_FILE_NAME)) == set(rig_sections())
    rig = DEFAULT_SETTINGS_PATH.parent / RIG_FILE_NAME
    assert load_settings(DEFAULT_SETTINGS_PATH, rig=rig) == load_settings(DEFAULT_SETTINGS_PATH) == Settings()


def test_one_protocol_on_two_boxes(tmp_path: Path) -> None:
    experiment = write(tmp_path / "settings.yaml", EXPERIMENT)
    box1 = write(tmp_path / "box1.yaml", box("box1", "Port3", (1.0, 4.0), free_network()))
    box2 = write(tmp_path / "box2.yaml", box("box2", "Port4", (1.0, 2.5), free_network()))
    one, two = load_settings(experiment, rig=box1), load_settings(experiment, rig=box2)
    assert (one.rig.name, two.rig.name) == ("box1", "box2")
    assert (one.wiring.left_lick, two.wiring.left_lick) == ("Port3", "Port4")
    assert one.task == two.task and one.contexts == two.contexts and one.task.reward_volume_ul == 2.0
    assert one.reward_valve_time_s("left") == pytest.approx(0.03)
    assert two.reward_valve_time_s("left") == pytest.approx(0.04)
    assert one.bpod.valve_calibration.right == Settings().bpod.valve_calibration.right  # defaults fill in


def test_the_rig_file_beside_the_settings_is_found_and_a_given_one_wins(tmp_path: Path) -> None:
    experiment = write(tmp_path / "settings.yaml", EXPERIMENT)
    assert load_settings(experiment).rig.name == Settings().rig.name  # none beside: the built-in rig
    write(tmp_path / RIG_FILE_NAME, {"rig": {"name": "beside"}})
    assert load_settings(experiment).rig.name == "beside"
    other = write(tmp_path / "other.yaml", {"rig": {"name": "other"}})
    assert load_settings(experiment, rig=other).rig.name == "other"
    # overrides apply on top of both files
    assert load_settings(experiment, overrides={"rig.name": "x", "task.reward_volume_ul": 3}).rig.name == "x"


def test_a_section_in_the_wrong_file_is_one_sentence(tmp_path: Path) -> None:
    experiment = write(tmp_path / "settings.yaml", {**EXPERIMENT, "bpod": {"port": "/dev/ttyACM0"}})
    rig = write(tmp_path / "box.yaml", {"rig": {"name": "b"}, "contexts": {"t": {"modality": "tactile"}}})
    with pytest.raises(SettingsError) as caught:
        load_settings(experiment, rig=rig)
    assert caught.value.problems == [
        f"{experiment}: bpod: belongs to the rig file ({rig}), not the experiment's settings; move it there",
        f"{rig}: contexts: belongs to the experiment's settings ({experiment}), not a rig file; "
        "move it there",
    ]
    # without a rig file, one settings file may hold everything, as before
    assert load_settings(experiment).bpod.port == "/dev/ttyACM0"


def test_problems_name_the_file_and_the_key_path(tmp_path: Path) -> None:
    experiment = write(tmp_path / "settings.yaml", "task:\n  timing: {sample: -1}\n  reward_volume_ul: 15\n")
    rig = write(tmp_path / "box.yaml", "bpod: {firmware: 24}\nwiring: {left_lick: Port9}\nbpd: {}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(experiment, rig=rig)
    lines = caught.value.problems
    assert f"{rig}: bpod.firmware = 24: must be one of 22, 23" in lines
    assert f"{experiment}: task.timing.sample = -1: must be greater than 0" in lines
    assert any(line.startswith(f"{rig}: bpd: unknown key (did you mean 'bpod'?)") for line in lines)
    rig.write_text("bpod: {firmware: 23}\n")
    experiment.write_text("task:\n  reward_volume_ul: 15\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(experiment, rig=rig)
    assert any(line.startswith(f"{experiment}: task.reward_volume_ul = 15.0: left and right valves: 15 uL is "
                               "outside the valve calibration") for line in caught.value.problems)
    bad_yaml = write(tmp_path / "broken.yaml", "rig: [1, 2\n")
    with pytest.raises(SettingsError, match=f"^{bad_yaml}:.*YAML syntax error"):
        load_settings(experiment, rig=bad_yaml)
    with pytest.raises(SettingsError, match=f"^{tmp_path / 'missing.yaml'}: settings file not found$"):
        load_settings(experiment, rig=tmp_path / "missing.yaml")


def test_the_snapshot_is_both_files_and_loads_back(tmp_path: Path) -> None:
    rig = write(tmp_path / "box.yaml", box("box1", "Port3", (1.0, 4.0), free_network()))
    settings = load_settings(write(tmp_path / "settings.yaml", EXPERIMENT), rig=rig)
    experiment_yaml, rig_yaml = dump_settings_files(settings)
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    write(snapshot / "settings.yaml", experiment_yaml)
    write(snapshot / RIG_FILE_NAME, rig_yaml)
    assert set(yaml.safe_load(experiment_yaml)) == set(EXPERIMENT_SECTIONS)
    assert set(yaml.safe_load(rig_yaml)) == set(rig_sections())
    assert load_settings(snapshot / "settings.yaml") == settings


def test_sessions_on_two_boxes_record_their_rig_file(tmp_path: Path) -> None:
    experiment = write(tmp_path / "settings.yaml", EXPERIMENT)
    for name, lick in (("box1", "Port3"), ("box2", "Port4")):
        rig = write(tmp_path / f"{name}.yaml", box(name, lick, (1.0, 4.0), free_network()))
        settings = load_settings(experiment, rig=rig)
        result = SessionRunner(settings, RunOptions(data_root=tmp_path / "data", speed=100, trials=2,
                                                    handle_signals=False, rig_file=rig)).run()
        info = json.loads((result.folder / "session.json").read_text())
        assert info["rig"] == name and info["rig_file"] == str(rig)
        assert yaml.safe_load((result.folder / RIG_FILE_NAME).read_text())["wiring"]["left_lick"] == lick
        assert "wiring" not in yaml.safe_load((result.folder / "settings.yaml").read_text())
        assert load_settings(result.folder / "settings.yaml") == settings


def test_rig_run_takes_a_rig_file(tmp_path: Path) -> None:
    experiment = write(tmp_path / "settings.yaml", EXPERIMENT)
    rig = write(tmp_path / "box1.yaml", box("box1", "Port3", (1.0, 4.0), free_network()))
    result = subprocess.run(
        [sys.executable, "-m", "rig", "run", "--settings", str(experiment), "--rig", str(rig), "--no-gui",
         "--trials", "2", "--speed", "100", "--data", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (session,) = (tmp_path / "data" / "sim-mouse").glob("20*")
    info = json.loads((session / "session.json").read_text())
    assert info["rig"] == "box1" and info["rig_file"] == str(rig.resolve())
    check = subprocess.run([sys.executable, "-m", "rig", "check-settings", str(experiment), "--rig",
                            str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60)
    assert check.returncode == 2
    assert check.stderr.strip() == f"{tmp_path / 'nope.yaml'}: settings file not found"


def test_a_settings_file_named_rig_yaml_is_not_also_its_own_rig_file(tmp_path: Path) -> None:
    """A single settings file that happens to be called rig.yaml holds every section, as a single file."""
    path = tmp_path / "rig.yaml"
    path.write_text("bpod:\n  timeout_s: 2.0\ntask:\n  reward_volume_ul: 3.0\n")
    settings = load_settings(path)
    assert settings.bpod.timeout_s == 2.0 and settings.task.reward_volume_ul == 3.0
