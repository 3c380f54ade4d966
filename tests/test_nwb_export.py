"""`rig export-nwb`: a simulated session through the real rig (online module, closed loop, ScanImage files),
exported, read back with pynwb and compared with its folder; nwbinspector on the file; the subject's
description, weight and water."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pynwb = pytest.importorskip("pynwb", reason="pynwb is not installed (pip install -e '.[dev]')")

from online.rois import RoiSet  # noqa: E402
from online.store import read_traces  # noqa: E402
from protocols.trial_record import TrialRecord  # noqa: E402
from rig.cli import main  # noqa: E402
from rig.free_endpoints import free_network_overrides  # noqa: E402
from rig.nwb.writer import default_path, export_session, export_subject  # noqa: E402
from rig.session import RunOptions, SessionRunner  # noqa: E402
from rig.settings import load_settings  # noqa: E402
from rig.store import read_jsonl  # noqa: E402
from rig.water import valve_curves, volume_ul  # noqa: E402

TRIALS = 10


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One simulated session with everything an export can hold: imaging files, traces, decoding, closed
    loop (decoder trained after 2 trials per side), a weight."""
    root = tmp_path_factory.mktemp("nwb-data")
    settings = load_settings(overrides={**free_network_overrides(), "online.decoder.min_trials_per_side": 2,
                                        "online.closed_loop.enabled": True, "imaging.write_tiff": True})
    result = SessionRunner(settings, RunOptions(subject="nwb-1", trials=TRIALS, speed=20, data_root=root,
                                                handle_signals=False, weight_g=24.5)).run()
    return result.folder


@pytest.fixture(scope="module")
def exported(session: Path) -> Iterator[tuple[Path, Any]]:
    path = export_session(session).path
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        yield path, io.read()


def _records(session: Path) -> list[TrialRecord]:
    return [TrialRecord.from_json(line) for line in read_jsonl(session / "trials.jsonl")]


def test_file_is_named_the_dandi_way_and_marked_simulated(session: Path, exported: tuple[Path, Any]) -> None:
    path, nwb = exported
    assert path == session.parent.parent / "nwb" / "sub-nwb-1" / \
        f"sub-nwb-1_ses-{session.name.replace('_', '-')}_behavior+ophys.nwb"
    assert nwb.session_description.startswith("SIMULATED SESSION")
    assert "simulated" in list(nwb.keywords[:])
    assert nwb.subject.subject_id == "nwb-1" and nwb.subject.weight == "24.5 g"
    assert nwb.subject.species == "Mus musculus"
    program = yaml.safe_load(nwb.lab_meta_data["task"].task_program.data)
    assert program["task"]["timing"] == load_settings(session / "settings.yaml").task.timing.model_dump()


def test_trials_states_events_and_actions_round_trip(session: Path, exported: tuple[Path, Any]) -> None:
    _, nwb = exported
    records = [r for r in _records(session) if r.bpod is not None]
    trials = nwb.trials
    assert len(trials) == len(records) == TRIALS
    recording = nwb.acquisition["task_recording"]
    state_names = list(nwb.lab_meta_data["task"].state_types["state_name"].data[:])
    event_names = list(nwb.lab_meta_data["task"].event_types["event_name"].data[:])
    for row, record in enumerate(records):
        t0 = record.trial_start_s
        assert trials["trial_number"][row] == record.trial
        assert trials["start_time"][row] == pytest.approx(t0)
        assert trials["stop_time"][row] == pytest.approx(record.trial_end_s)
        states = trials["states"][row]
        expected = sorted((a + t0, b + t0, name) for name, visits in record.bpod.states.items()
                          for a, b in visits)
        got = sorted(zip(states["start_time"], states["stop_time"],
                         [state_names[i] for i in recording.states["state_type"].data[:][states.index]],
                         strict=True))
        assert [g[2] for g in got] == [e[2] for e in expected]
        assert np.allclose([g[:2] for g in got], [e[:2] for e in expected], rtol=0, atol=1e-9)
        events = trials["events"][row]
        expected_events = sorted((t + t0, name) for name, times in record.bpod.events.items() for t in times)
        types = recording.events["event_type"].data[:][events.index]
        got_events = sorted(zip(events["timestamp"], [event_names[i] for i in types], strict=True))
        assert [g[1] for g in got_events] == [e[1] for e in expected_events]
        assert np.allclose([g[0] for g in got_events], [e[0] for e in expected_events], rtol=0, atol=1e-9)
        outputs = record.outputs or {}
        assert len(trials["actions"][row]) == sum(len(outputs.get(name, {})) for name, visits
                                                  in record.bpod.states.items() for _ in visits)
        side_outcome = {"hit": "hit", "error": "miss", "no_response": "ignore"}
        assert trials["outcome"][row] == side_outcome.get(record.outcome, record.outcome)
        assert trials["trial_instruction"][row] == record.side
        go = record.entry_s("ResponseCue")
        assert trials["go_cue_time"][row] == pytest.approx(t0 + go) if go is not None else \
            math.isnan(trials["go_cue_time"][row])
    licks = sum(len(r.bpod.events.get("Port1In", ())) for r in records)
    assert len(nwb.events["licks_left"]) == licks


def test_water_from_the_valves_is_recorded_and_exported(session: Path, exported: tuple[Path, Any]) -> None:
    _, nwb = exported
    info = json.loads((session / "session.json").read_text())
    delivered = info["water"]["delivered_ul"]
    assert info["weight_g"] == 24.5
    assert delivered == pytest.approx(float(np.sum(nwb.trials["water_delivered"][:])), abs=1e-3)
    rewarded = sum(1 for r in _records(session) if r.score and r.score.rewarded)
    free = sum(1 for r in _records(session) if r.free_drop)
    assert delivered == pytest.approx(2.5 * (rewarded + free), abs=1e-3)  # default curve: 0.03 s -> 2.5 uL
    water = nwb.processing["behavior"]["Water"]
    assert water["volume_ul"][0] == pytest.approx(delivered)


def test_imaging_round_trips(session: Path, exported: tuple[Path, Any]) -> None:
    """Every plane of the session (settings imaging.planes, told apart by traces.json plane_rois): its
    ROIs, dF/F and deconvolved columns over its own frames, shifts, files and rate."""
    path, nwb = exported
    traces = read_traces(session)
    counts = traces.meta["plane_rois"]
    assert len(counts) == load_settings(session / "settings.yaml").imaging.planes > 1
    assert traces.deconvolved is not None
    starts = {r.trial: r.trial_start_s for r in _records(session) if r.bpod is not None}
    begin = 0
    for plane, count in enumerate(counts):
        rois = RoiSet.load(session / f"rois_plane{plane}.npz")
        assert rois.n == count
        seg = nwb.processing["ophys"]["ImageSegmentation"][f"PlaneSegmentation{plane}"]
        assert len(seg) == rois.n
        for i in (0, rois.n // 2, rois.n - 1):
            y, x, lam = rois.roi(i)
            mask = np.array(seg["pixel_mask"][i].tolist() if hasattr(seg["pixel_mask"][i], "tolist")
                            else seg["pixel_mask"][i])
            got = np.array([tuple(m) for m in mask], float)
            assert np.array_equal(got[:, 0], x) and np.array_equal(got[:, 1], y)
            assert np.allclose(got[:, 2], lam)
        rows = np.flatnonzero(traces.index["plane"] == plane)
        columns = slice(begin, begin + count)
        begin += count
        dff = nwb.processing["ophys"]["DfOverF"][f"DfOverFPlane{plane}"]
        assert np.array_equal(dff.data[:], traces.dff[rows][:, columns])
        deconvolved = nwb.processing["ophys"]["Fluorescence"][f"DeconvolvedPlane{plane}"]
        assert np.array_equal(deconvolved.data[:], traces.deconvolved[rows][:, columns])
        index = traces.index[rows]
        placed = index["trial"] > 0
        trial_starts = np.array([starts[int(k)] for k in index["trial"][placed]])
        expected = trial_starts + index["time_in_trial_s"][placed]
        assert np.allclose(dff.timestamps[:][placed], expected, rtol=0, atol=1e-9)
        assert np.all(np.diff(dff.timestamps[:]) > 0)
        shifts = nwb.processing["ophys"][f"MotionShiftsPlane{plane}"]
        assert np.allclose(shifts.data[:, 1], index["shift_dx"])
        series = nwb.acquisition[f"TwoPhotonSeriesPlane{plane}"]
        files = list(series.external_file[:])
        traced = np.unique(index["trial"][placed])  # the online module may trace none of trial 1's frames
        assert len(files) == traced.size and traced.size >= TRIALS // 2  # (frames lost on a busy host)
        assert all((path.parent / f).is_file() for f in files)
        assert np.array_equal(series.timestamps[:], dff.timestamps[:])
        assert nwb.imaging_planes[f"ImagingPlane{plane}"].location == "MOs"
        assert nwb.imaging_planes[f"ImagingPlane{plane}"].imaging_rate == pytest.approx(
            traces.meta["frame_rate_hz"])
        assert list(series.dimension[:]) == [rois.shape[1], rois.shape[0]]
    assert begin == traces.dff.shape[1]


def test_decoding_round_trips(session: Path, exported: tuple[Path, Any]) -> None:
    _, nwb = exported
    decoder = list(read_jsonl(session / "decoder.jsonl"))
    table = nwb.processing["decoding"]["TrialDecoding"]
    assert list(table["trial"][:]) == [d["trial"] for d in decoder]
    assert [s or None for s in table["decoded_side"][:]] == [d["decoded_side"] for d in decoder]
    decided = [d for d in read_jsonl(session / "decisions.jsonl") if d.get("kind") == "sent"]
    if decided:  # a slow host may decide too late in so few trials
        decisions = nwb.processing["decoding"]["ClosedLoopDecisions"]
        assert list(decisions["trial"][:]) == [d["trial"] for d in decided]
        assert np.allclose(decisions["host_latency_ms"][:], [d["host_latency_ms"] for d in decided])


def inspector_problems(path: Path) -> str:
    """nwbinspector's critical issues, violations and check errors on a file, one line each."""
    inspector = pytest.importorskip("nwbinspector", reason="nwbinspector is not installed (the dev extras)")
    found = [m for m in inspector.inspect_nwbfile(nwbfile_path=str(path))
             if m.importance.name in ("CRITICAL", "BEST_PRACTICE_VIOLATION", "ERROR")]
    return "\n".join(f"{m.importance.name} {m.check_function_name} {m.object_name}: {m.message}"
                     for m in found)


def test_nwbinspector_finds_no_critical_issue_and_no_violation(exported: tuple[Path, Any]) -> None:
    path, _ = exported
    assert inspector_problems(path) == ""


def test_export_subject_writes_only_what_is_not_exported(session: Path, exported: tuple[Path, Any],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert default_path(session, True).exists()
    assert export_subject(session.parent) == []
    assert main(["export-nwb", str(session.parent)]) == 0
    assert "already exported" in capsys.readouterr().out
    out = session.parent.parent / "elsewhere.nwb"
    assert main(["export-nwb", str(session), "--out", str(out)]) == 0 and out.is_file()
    assert main(["export-nwb", str(session.parent), "--out", str(out)]) == 2
    assert main(["export-nwb", str(tmp_path_empty(session))]) == 2


def tmp_path_empty(session: Path) -> Path:
    empty = session.parent.parent / "empty"
    empty.mkdir(exist_ok=True)
    return empty


def test_valve_volume_follows_the_calibration_curve() -> None:
    curve = valve_curves(load_settings())["Valve1"]
    assert volume_ul(curve, 0.03) == pytest.approx(2.5)
    assert volume_ul(curve, 0.045) == pytest.approx(4.0)
    assert volume_ul(curve, 0.0) == 0.0
    assert volume_ul(curve, 0.09) == pytest.approx(8.5)  # the last segment extended


def test_several_planes_in_one_roi_set_export_plane_by_plane(tmp_path: Path) -> None:
    from bench.export import write_session

    folder = write_session(tmp_path, trials=6, planes=3, per_plane=12, rate_hz=30.0)
    path = export_session(folder).path
    traces = read_traces(folder)
    deconvolved = np.fromfile(folder / "deconvolved.f32", "<f4").reshape(traces.dff.shape)
    rois = RoiSet.load(folder / "rois.npz")
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        segmentation = nwb.processing["ophys"]["ImageSegmentation"]
        assert sorted(segmentation.plane_segmentations) == [f"PlaneSegmentation{p}" for p in range(3)]
        for plane in range(3):
            seg = segmentation[f"PlaneSegmentation{plane}"]
            assert len(seg) == 12
            y, x, _ = rois.roi(plane * 12)
            first = np.array([tuple(m) for m in seg["pixel_mask"][0]], float)
            assert np.array_equal(first[:, 0], x) and np.array_equal(first[:, 1], y)
            rows = traces.index["plane"] == plane
            columns = slice(plane * 12, plane * 12 + 12)
            dff = nwb.processing["ophys"]["DfOverF"][f"DfOverFPlane{plane}"]
            assert np.array_equal(dff.data[:], traces.dff[rows, columns])
            assert np.array_equal(nwb.processing["ophys"]["Fluorescence"][f"DeconvolvedPlane{plane}"].data[:],
                                  deconvolved[rows, columns])
            assert nwb.imaging_planes[f"ImagingPlane{plane}"].imaging_rate == pytest.approx(10.0)
    assert inspector_problems(path) == ""


def test_a_trial_cut_short_ends_at_its_last_state_or_event() -> None:
    from protocols.trial_record import BpodRecord
    from rig.nwb.behaviour import exported_trials, stop_s

    cut = TrialRecord(trial=3, outcome="aborted", bpod=BpodRecord(
        trial_start_s=100.0, states={"TrigTrialStart": [[0.0, 0.01]], "SamplePeriod": [[0.01, 1.2]]},
        events={"Port1In": [1.5]}, aborted=True))
    never = TrialRecord(trial=4, outcome="not_started")
    assert exported_trials([cut, never]) == [cut]
    assert stop_s(cut) == pytest.approx(101.5)


def test_roi_matches_are_one_row_per_matched_roi(tmp_path: Path) -> None:
    from bench.export import write_session

    folder = write_session(tmp_path, trials=3, planes=1, per_plane=10, rate_hz=30.0)
    (folder / "roi_matches.json").write_text(json.dumps({
        "format": "roi-matches/1", "session": folder.name, "n_rois": 10, "matches": [
            {"session": "2026-01-04_100000", "n_previous": 9, "n_current": 10, "n_matched": 2,
             "shift_px": [1.5, -2.0], "correlation": 0.8, "pairs": [[0, 3], [4, 7]], "overlap": [0.7, 0.6]},
            {"session": "2026-01-03_100000", "error": "another field size"}]}))
    with pynwb.NWBHDF5IO(str(export_session(folder).path), "r") as io:
        matches = io.read().processing["ophys"]["RoiMatches"].to_dataframe()
    assert list(matches["roi"]) == [3, 7] and list(matches["matched_roi"]) == [0, 4]
    assert list(matches["matched_session"]) == ["2026-01-04_100000"] * 2
    assert list(matches["overlap"]) == pytest.approx([0.7, 0.6])
    assert list(matches["shift_dx"]) == [-2.0, -2.0]
