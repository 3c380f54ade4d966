"""rig simulate-study: the schedule, the settings each day runs with, and a short real study."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from rig.free_endpoints import free_network
from rig.settings import DEFAULT_SETTINGS_PATH, load_settings
from rig.study import StudyError, parse_schedule, write_study_settings

CONTEXTS = ["tactile", "tactile-reversed", "auditory"]


def test_schedule_expands_to_days_in_order():
    days = parse_schedule("tactile:2, tactile-reversed:1,tactile:1", CONTEXTS)
    assert [(d.number, d.context) for d in days] == [(1, "tactile"), (2, "tactile"), (3, "tactile-reversed"),
                                                     (4, "tactile")]


@pytest.mark.parametrize(("text", "words"), [
    ("tactile", "CONTEXT:DAYS"),
    ("tactle:3", "unknown context 'tactle'"),
    ("tactile:x", "'x' is not a number of days"),
    ("tactile:0", "days must be 1 to 1000"),
    (" , ", "names no day"),
])
def test_bad_schedules_are_refused_by_name(text, words):
    with pytest.raises(StudyError, match=words):
        parse_schedule(text, CONTEXTS)


def test_study_settings_turn_automatic_switching_off_for_a_schedule(tmp_path):
    path = write_study_settings(None, tmp_path / "m1", switch_at_criterion=False)
    assert yaml.safe_load(path.read_text())["task"]["context_switch"]["enabled"] is False
    assert load_settings(path).task.context_switch.enabled is False
    path = write_study_settings(None, tmp_path / "m1", switch_at_criterion=True)
    assert load_settings(path).task.context_switch.enabled is True


def _rig_file_on_free_ports(tmp_path):
    """The repository's rig file with every endpoint on a free port, so the study runs beside others."""
    rig = yaml.safe_load((DEFAULT_SETTINGS_PATH.parent / "rig.yaml").read_text())
    rig["network"] = {**(rig.get("network") or {}), **free_network()}
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(rig))
    return path


def test_a_two_day_study_runs_one_session_per_day_in_the_scheduled_contexts(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rig", "--log-level", "WARNING", "simulate-study", "--subject", "m1",
         "--schedule", "tactile:1,tactile-reversed:1", "--trials-per-session", "6", "--speed", "50",
         "--data", str(tmp_path), "--rig", str(_rig_file_on_free_ports(tmp_path))],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    sessions = sorted(p.parent for p in (tmp_path / "m1").glob("*/trials.jsonl"))
    assert len(sessions) == 2
    contexts = [{line["context"] for line in map(yaml.safe_load, s.joinpath("trials.jsonl").read_text()
                                                 .splitlines())} for s in sessions]
    assert contexts == [{"tactile"}, {"tactile-reversed"}]
    assert "day 2/2 tactile-reversed" in result.stderr


def test_a_study_refuses_a_real_rig_and_a_missing_plan(tmp_path):
    real = tmp_path / "settings.yaml"
    real.write_text("imaging: {source: none}\n")
    for extra, words in ((["--schedule", "tactile:1", "--settings", str(real)], "simulated rig only"),
                         ([], "give --schedule")):
        result = subprocess.run([sys.executable, "-m", "rig", "simulate-study", "--subject", "m1",
                                 "--data", str(tmp_path), *extra], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and words in result.stderr, result.stderr


def test_a_fresh_seed_becomes_the_subjects_own_so_every_day_images_the_same_mouse(tmp_path):
    source = tmp_path / "settings.yaml"
    source.write_text("sim: {seed: null}\n")
    first = load_settings(write_study_settings(source, tmp_path / "m1", switch_at_criterion=False)).sim.seed
    again = load_settings(write_study_settings(source, tmp_path / "m1", switch_at_criterion=False)).sim.seed
    other = load_settings(write_study_settings(source, tmp_path / "m2", switch_at_criterion=False)).sim.seed
    assert isinstance(first, int) and first == again != other
