"""A session with the simulated microscope and the online module, with the closed loop on and off."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from online.rois import RoiSet
from online.store import read_traces
from rig.control import send_request
from rig.free_endpoints import free_network_overrides
from rig.session import RunOptions, SessionRunner
from rig.settings import load_settings
from rig.store import read_jsonl
from tests.test_session import SessionThread


def test_online_module_runs_beside_the_session_and_saves_its_outputs(tmp_path: Path) -> None:
    # 5 planes (the default): each builds its own reference at setup, while frames queue at 10x the real rate
    # (at 20x, five planes' set-up and deconvolution fall behind on a shared host and frames are lost);
    # 20 reference frames keep that setup as short as one plane's at the default 50.
    settings = load_settings(overrides={**free_network_overrides(), "online.decoder.min_trials_per_side": 3,
                                        "online.registration.reference_frames": 20})
    result = SessionRunner(settings, RunOptions(subject="o1", trials=16, speed=10, data_root=tmp_path,
                                                handle_signals=False)).run()
    info = json.loads((result.folder / "session.json").read_text())
    assert info["online"]["exit_status"] == 0
    assert info["imaging"]["source"] == "simulated"
    trials = list(read_jsonl(result.folder / "trials.jsonl"))
    decoded = [json.loads(line) for line in (result.folder / "decoder.jsonl").read_text().splitlines()]
    assert [d["trial"] for d in decoded] == [t["trial"] for t in trials]
    assert all(d["context"] == t["context"] and d["actual_side"] == t["side"]
               for d, t in zip(decoded, trials, strict=True))
    assert all(d["n_frames"] > 0 for d in decoded)
    assert (result.folder / "traces.f32").stat().st_size > 0 and (result.folder / "rois.npz").exists()
    planes = settings.imaging.planes
    assert planes == 5 and (result.folder / f"rois_plane{planes - 1}.npz").exists()
    traces = read_traces(result.folder)
    assert sorted(set(traces.index["plane"].tolist())) == list(range(planes))
    # traces.json says each plane's ROIs (those of its own file); every plane frame has deconvolved activity
    counts = traces.meta["plane_rois"]
    assert counts == [RoiSet.load(result.folder / f"rois_plane{z}.npz").n for z in range(planes)]
    assert sum(counts) == traces.dff.shape[1]
    assert traces.deconvolved is not None and np.isfinite(traces.deconvolved).all()
    summary = json.loads((result.folder / "online_summary.json").read_text())
    assert summary["events_receiver"]["gaps"] == 0 and summary["events_receiver"]["malformed"] == 0
    assert summary["frames_receiver"]["gaps"] == 0


def test_closed_loop_gates_the_delay_and_can_be_switched_off(tmp_path: Path) -> None:
    # One plane: at 10x the simulator renders fewer frames than 30 Hz, and over 5 planes the per-plane rate
    # would be too low for the 0.6 s delay window within the trials this test waits for.
    settings = load_settings(overrides={**free_network_overrides(), "online.decoder.min_trials_per_side": 3,
                                        "online.closed_loop.enabled": True, "imaging.planes": 1})
    session = SessionThread(settings, tmp_path, subject="o2", trials=30, speed=10.0)
    session.wait_for_trials(22, timeout_s=120)
    off = send_request(settings.network.control, "closed-loop", enabled=False)
    assert off["ok"] and off["closed_loop"] is False
    refused = send_request(settings.network.control, "soft-code", number=1, trial=9999)
    assert not refused["ok"] and "is not running" in refused["error"]
    result = session.join(timeout_s=180)
    trials = list(read_jsonl(result.folder / "trials.jsonl"))
    gated = [t for t in trials if t["closed_loop"]]
    assert gated and gated[0]["trial"] == 1 and trials[-1]["closed_loop"] is None
    landed = [t for t in gated if t["closed_loop"]["event_times"]]
    assert landed, "no decision reached the Bpod"
    ended_by_decision = 0
    for t in landed:
        assert "DelayDecoderWait" in t["bpod"]["state_sequence"]
        wait_start, wait_end = t["bpod"]["States"]["DelayDecoderWait"][-1]
        go = t["bpod"]["States"]["ResponseCue"][-1][0]
        decision = t["closed_loop"]["event_times"][0]
        # a decision that lands while the delay waits for it ends the delay; one that lands after the wait
        # ran out (a slow host at 10x: host latency is ten times longer in Bpod time) finds the go cue begun
        if wait_start <= decision <= wait_end + 2e-4:
            assert go == pytest.approx(decision, abs=2e-4)
            ended_by_decision += 1
        else:
            assert decision > wait_end, "a decision landed before the delay waited for it"
    assert ended_by_decision, "no decision ended a delay"
    decisions = [json.loads(line) for line in (result.folder / "decisions.jsonl").read_text().splitlines()]
    assert any(d.get("kind") == "landed" for d in decisions)


