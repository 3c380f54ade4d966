"""The science chain scored against the simulator's ground truth: simulated studies run through the rig
(emulated Bpod, rendered frames, the online module's traces), analysed from the session files alone by
`rig analyze`'s core, and the answer compared with what the simulated subject really did.

- A subject that forms a new pattern for a new mapping and re-activates the old one on its return: the
  analysis finds the block-2 CD unlike block 1's and block 1' like block 1's, each against its ceiling.
- A subject with no new pattern (every mapping shares one): the analysis finds block 2 like block 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rig.analysis.study import AnalysisOptions, analyze_subject
from rig.free_endpoints import free_network
from rig.settings import DEFAULT_SETTINGS_PATH
from rig.settings.files import read_settings_file

TRIALS_PER_SESSION = 160
MIN_TRIALS = 20


def _study(tmp_path: Path, subject: str, schedule: str, new_patterns: bool) -> Path:
    raw = read_settings_file(DEFAULT_SETTINGS_PATH)
    raw["sim"]["subject"]["new_patterns"] = new_patterns
    raw["sim"]["mouse"]["learning_rate"] = 0.1  # learns a reversal within a session
    raw["sim"]["subject"]["switch_evidence"] = 6.0
    # one plane of 128x128 at 10 Hz: at 50x the online module takes 500 frames/s, also on a busy host
    raw["imaging"].update({"frame_height": 128, "frame_width": 128, "planes": 1, "frame_rate_hz": 10.0})
    raw["sim"]["microscope"].update({"n_neurons": 80, "neuron_radius_px": 4.0})
    settings = tmp_path / f"{subject}.yaml"
    settings.write_text(yaml.safe_dump(raw))
    rig = yaml.safe_load((DEFAULT_SETTINGS_PATH.parent / "rig.yaml").read_text())
    rig["network"] = {**(rig.get("network") or {}), **free_network()}
    rig_file = tmp_path / f"{subject}-rig.yaml"
    rig_file.write_text(yaml.safe_dump(rig))
    result = subprocess.run(
        [sys.executable, "-m", "rig", "--log-level", "WARNING", "simulate-study", "--subject", subject,
         "--schedule", schedule, "--trials-per-session", str(TRIALS_PER_SESSION), "--speed", "50",
         "--data", str(tmp_path), "--settings", str(settings), "--rig", str(rig_file)],
        capture_output=True, text=True, timeout=900)
    log = (tmp_path / subject / "study.log").read_text()
    assert result.returncode == 0, (result.stderr[-3000:], log[-3000:])
    return tmp_path / subject


def _truth(subject_dir: Path) -> list[dict]:
    """The simulator's truth per trial, with the block and outcome the rig recorded for that trial."""
    joined = []
    for session in sorted(p.parent for p in subject_dir.glob("*/sim-truth.jsonl")):
        lines = (session / "trials.jsonl").read_text().splitlines()
        recorded = {r["trial"]: r for r in map(json.loads, lines)}
        for line in (session / "sim-truth.jsonl").read_text().splitlines():
            truth = json.loads(line)
            record = recorded.get(truth.get("trial"))
            if record is not None:
                joined.append({**truth, "block_label": record.get("block_label"),
                               "rig_outcome": record["outcome"]})
    return joined


@pytest.fixture(scope="module")
def returning(tmp_path_factory) -> tuple[Path, dict]:
    folder = _study(tmp_path_factory.mktemp("returning"), "m-return",
                    "tactile:1,tactile-reversed:1,tactile:1", new_patterns=True)
    return folder, analyze_subject(folder, AnalysisOptions(min_trials_per_side=MIN_TRIALS, n_repeats=6))


@pytest.fixture(scope="module")
def no_new_pattern(tmp_path_factory) -> tuple[Path, dict]:
    folder = _study(tmp_path_factory.mktemp("same"), "m-same", "tactile:1,tactile-reversed:1",
                    new_patterns=False)
    return folder, analyze_subject(folder, AnalysisOptions(min_trials_per_side=MIN_TRIALS, n_repeats=6))


def _relative(result: dict, a: str, b: str) -> float:
    """The similarity of blocks a and b over the geometric mean of their ceilings."""
    sim = result["cd_similarity"]
    i, j = sim["labels"].index(a), sim["labels"].index(b)
    ceiling = float(np.sqrt(sim["ceiling"][i] * sim["ceiling"][j]))
    return sim["matrix"][i][j] / ceiling


@pytest.mark.timeout(900)
def test_a_new_context_gets_a_new_pattern_and_a_return_re_activates_the_old(returning):
    folder, result = returning
    assert [b["label"] for b in result["blocks"]] == ["1", "2", "1'"]
    assert all(b["decoded"] for b in result["blocks"]), result["blocks"]
    # the truth: block 2's correct trials were made mostly by another latent state than block 1's
    truth = _truth(folder)
    assert truth, "the simulator keeps its ground truth in the session folders"
    states = {label: [t["state"] for t in truth if t["block_label"] == label and t["rig_outcome"] == "hit"]
              for label in ("1", "2", "1'")}
    main = {label: max(set(s), key=s.count) for label, s in states.items()}
    assert main["1"] == main["1'"] != main["2"], main
    # the analysis, from frames alone
    ceilings = result["cd_similarity"]["ceiling"]
    assert all(c is not None and c > 0.3 for c in ceilings), ceilings
    assert _relative(result, "1", "2") < 0.5
    assert _relative(result, "1", "1'") > 0.7
    cross = dict(zip(result["cross_decoding"]["labels"], result["cross_decoding"]["matrix"], strict=True))
    assert cross["1"][2] > 0.75 and cross["1"][1] < 0.65


@pytest.mark.timeout(900)
def test_a_subject_without_new_patterns_shows_none(no_new_pattern):
    folder, result = no_new_pattern
    assert [b["label"] for b in result["blocks"]] == ["1", "2"]
    assert all(b["decoded"] for b in result["blocks"]), result["blocks"]
    assert _relative(result, "1", "2") > 0.7
