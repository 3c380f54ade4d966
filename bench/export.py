"""NWB export benchmark: `rig export-nwb` of a long multi-plane session, timed.

The session is written quickly with the project's own writers, not run: `SessionStore` (session.json,
trials.jsonl of `TrialRecord`s with the task's states, events and outputs), `SessionOutputs` (one ROI set
for all planes and each plane's own, references, traces.f32 + traces_index.bin with traces.json's
plane_rois) and deconvolved.f32 beside the traces. Each plane frame updates its own plane's columns only,
as the online module's population rows do. Frames: `--rate` Hz over `--planes` planes,
placed in their trials through the trigger (loop mode).

Run: `.venv/bin/python bench/export.py [--trials 300] [--planes 5] [--rois 500] [--json]` (goal: < 30 s for
300 trials and 5 planes). Prints a table, and with --json one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import print_report  # noqa: E402
from online.messages import TraceFrame  # noqa: E402
from online.rois import RoiSet  # noqa: E402
from online.store import SessionOutputs  # noqa: E402
from protocols.trial_record import BpodRecord, TrialRecord, TrialScore  # noqa: E402
from rig.nwb.writer import export_session  # noqa: E402
from rig.settings import dump_settings_files, load_settings  # noqa: E402
from rig.store import SessionStore  # noqa: E402

GOAL_S = 30.0
SHAPE = (512, 512)
EPOCHS = (("TrigTrialStart", 0.01), ("PreSamplePeriod", 1.56), ("SamplePeriod", 1.3), ("DelayPeriod", 1.3),
          ("ResponseCue", 0.1), ("AnswerPeriod", 0.35), ("Reward", 0.03), ("RewardConsumption", 1.0),
          ("StopLicking", 1.0), ("InterTrialInterval", 1.0), ("TrialEnd", 0.01))
OUTPUTS = {"TrigTrialStart": {"BNC1": 1}, "SamplePeriod": {"BNC2": 1}, "ResponseCue": {"HiFi1": [80, 2]},
           "Reward": {"Valve2": 1}}


def _trial(number: int, start_s: float, rng: np.random.Generator) -> TrialRecord:
    """A rewarded right trial with the task's states, a few licks and the states' outputs."""
    states, t = {}, 0.0
    for name, duration in EPOCHS:
        states[name] = [[round(t, 4), round(t + duration, 4)]]
        t += duration
    answer = states["AnswerPeriod"][0][1]
    licks = np.round(answer + np.sort(rng.uniform(0, 1.5, 8)), 4)
    events = {"Tup": [v[0][1] for v in states.values()], "Port2In": licks.tolist(),
              "Port2Out": (licks + 0.03).round(4).tolist()}
    bpod = BpodRecord(trial_start_s=start_s, trial_end_s=start_s + t, n_cycles=int(t * 1e4),
                      state_sequence=tuple(states), states=states, events=events)
    score = TrialScore(licked_side="right", reaction_time_s=round(answer - states["ResponseCue"][0][0], 4),
                       rewarded=True)
    return TrialRecord(trial=number, outcome="hit", context="tactile", side="right", subject="bench",
                       trial_number=number, cue="pole_posterior", modality="tactile", contingency="normal",
                       mode="antibias", stage={"name": "full", "delay_s": 1.3, "timeout_s": 4.0,
                                               "sample_enforcement": True, "selection": "antibias"},
                       score=score, reward_ul=2.5, valve_time_s=0.03, bpod=bpod, outputs=OUTPUTS)


def _rois(planes: int, per_plane: int, rng: np.random.Generator) -> list[RoiSet]:
    """`per_plane` disc-shaped ROIs per plane, one set per plane."""
    yy, xx = np.mgrid[-4:5, -4:5]
    disc = yy**2 + xx**2 <= 16
    sets = []
    for _ in range(planes):
        centres = rng.integers(10, SHAPE[0] - 10, size=(per_plane, 2))
        sets.append(RoiSet.from_masks(SHAPE, [{"ypix": (cy + yy[disc]), "xpix": (cx + xx[disc]),
                                               "lam": np.ones(disc.sum())} for cy, cx in centres]))
    return sets


def write_session(root: Path, trials: int, planes: int, per_plane: int, rate_hz: float) -> Path:
    """A finished session folder of `trials` trials imaged over `planes` planes (see the module docstring)."""
    rng = np.random.default_rng(0)
    settings = load_settings(overrides={"imaging.planes": planes, "imaging.frame_rate_hz": rate_hz})
    experiment, rig = dump_settings_files(settings)
    started = datetime(2026, 1, 5, 10, 0, 0)
    store = SessionStore.create(root, "bench", started, experiment, {"subject": "bench", "started":
                                started.isoformat(), "bpod": {"simulated": True}}, rig_yaml=rig)
    records, start = [], 2.0
    for n in range(1, trials + 1):
        records.append(_trial(n, start, rng))
        start = records[-1].trial_end_s + 1e-4
    for record in records:
        store.append_trial(record)
    store.write_session_info({"subject": "bench", "started": started.isoformat(), "ended":
                              datetime.now().isoformat(), "trials": trials, "bpod": {"simulated": True},
                              "water": {"delivered_ul": 2.5 * trials}})
    store.close()
    outputs = SessionOutputs(store.folder)
    sets = _rois(planes, per_plane, rng)
    references = [rng.normal(100, 5, SHAPE).astype(np.float32) for _ in sets]
    rois = RoiSet.concatenate(sets)
    outputs.write_rois(rois, references[0], frame_rate_hz=rate_hz / planes,
                       planes=list(zip(sets, references, strict=True)))
    period = 1.0 / rate_hz
    row = np.zeros(rois.n, np.float32)
    deconvolved = []
    frame = 0
    for record in records:
        duration = record.trial_end_s - record.trial_start_s
        for k in range(int(duration / period)):
            plane = k % planes
            span = slice(plane * per_plane, (plane + 1) * per_plane)
            row[span] = rng.normal(0, 0.2, per_plane)
            t = k * period
            trace = TraceFrame(frame // planes, record.trial, record.trial_start_s + t, t + period / 2,
                               float(rng.normal()), float(rng.normal()), 0.9, row)
            outputs.append_trace(trace, plane=plane)
            deconvolved.append(np.maximum(row, 0))
            frame += 1
    outputs.close()
    np.asarray(deconvolved, np.float32).tofile(store.folder / "deconvolved.f32")
    return store.folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--planes", type=int, default=5)
    parser.add_argument("--rois", type=int, default=500, help="ROIs per plane")
    parser.add_argument("--rate", type=float, default=30.0, help="frame rate over all planes (Hz)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        t0 = time.perf_counter()
        folder = write_session(Path(tmp), args.trials, args.planes, args.rois, args.rate)
        built_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        exported = export_session(folder)
        export_s = time.perf_counter() - t0
        size_mb = exported.path.stat().st_size / 1e6
        frames = int((folder / "traces_index.bin").stat().st_size // 56)
    figures = {"trials": args.trials, "planes": args.planes, "rois_per_plane": args.rois,
               "plane_frames": frames, "export_s": round(export_s, 3), "build_s": round(built_s, 3),
               "file_mb": round(size_mb, 1), "goal_s": GOAL_S, "within_goal": export_s < GOAL_S}
    rows = [("trials", str(args.trials)), ("planes x ROIs", f"{args.planes} x {args.rois}"),
            ("plane frames", str(frames)), ("session written (s)", f"{built_s:.2f}"),
            ("export (s)", f"{export_s:.2f}"), ("NWB file (MB)", f"{size_mb:.1f}"),
            (f"goal < {GOAL_S:g} s", "met" if export_s < GOAL_S else "NOT met")]
    print_report("rig export-nwb", rows, figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
