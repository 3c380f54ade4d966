"""`python -m online replay`: the live pipeline over ScanImage files written (hardware/scanimage/writer.py)
from simulated frames, one loop-mode file per trial, with the session's trials.jsonl for decoding."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hardware.scanimage.reader import ScanImageFile
from hardware.scanimage.writer import ScanImageWriter
from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from online.config import PipelineConfig
from online.pipeline import OnlinePipeline
from online.process import replay, scanimage_files
from online.rois import RoiSet
from online.settings import DecoderSettings, OnlineSettings, RegistrationSettings
from online.store import read_jsonl, read_traces
from online.wire import FrameHeader
from rig.settings import dump_settings, parse_settings

REPO = Path(__file__).resolve().parents[1]
SIZE, RATE, PERIOD_S, N_TRIALS = 64, 10.0, 3.0, 14
CONFIG = PipelineConfig(OnlineSettings(registration=RegistrationSettings(reference_frames=10),
                                       decoder=DecoderSettings(min_trials_per_side=3)), frame_rate_hz=RATE)


def states(correct: bool) -> dict[str, list[list[float]]]:
    out = {"TrigTrialStart": [[0.0, 0.01]], "SamplePeriod": [[0.01, 1.01]], "DelayPeriod": [[1.01, 2.01]],
           "ResponseCue": [[2.01, 2.11]], "AnswerPeriod": [[2.11, 2.3]]}
    out["Reward" if correct else "TimeOut"] = [[2.3, 2.33]]
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimMicroscope, list]:
    """A session's imaging folder (sim_<trial>_00001.tif) and trials.jsonl, plus the frames themselves."""
    folder = tmp_path_factory.mktemp("session")
    imaging = folder / "imaging"
    sim = SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=12, frame_rate_hz=RATE, seed=6,
                                         frames_per_acquisition=int(PERIOD_S * RATE)))
    rng = np.random.default_rng(2)
    frames = []
    with open(folder / "trials.jsonl", "w") as trials:
        for trial in range(1, N_TRIALS + 1):
            side = str(rng.choice(["left", "right"]))
            start = 0.4 + trial * PERIOD_S
            sim.start_trial(start, "tactile", side, {"sample": 0.01, "delay": 1.01, "go": 2.01}, trial=trial)
            new = sim.frames_until(start + PERIOD_S - 1e-9)
            with ScanImageWriter.for_loop_trial(imaging, "sim", trial, height=SIZE, width=SIZE,
                                                frame_rate_hz=RATE, template="compact",
                                                first_frame_number=new[0].frame_number + 1,
                                                acq_trigger_timestamp_s=0.0) as writer:
                for f in new:
                    writer.write_frame(f.pixels, f.timestamp_s)
            frames += new
            record = {"trial": trial, "subject": "sim-mouse", "context": "tactile", "side": side,
                      "outcome": "hit", "licked_side": side, "free_drop": False,
                      "bpod": {"States": states(True), "Events": {"Tup": [0.01, 1.01]}}}
            trials.write(json.dumps(record) + "\n")
    return folder, sim, frames


def test_files_are_replayed_in_acquisition_order(recording: tuple[Path, SimMicroscope, list]) -> None:
    folder, _, _ = recording
    names = [p.name for p in scanimage_files(folder / "imaging")]
    assert names == [f"sim_{n:05d}_00001.tif" for n in range(1, N_TRIALS + 1)]


def test_replay_gives_the_live_pipelines_traces_and_decodes(recording: tuple[Path, SimMicroscope, list],
                                                            tmp_path: Path) -> None:
    folder, sim, frames = recording
    rois = RoiSet.from_masks((SIZE, SIZE), sim.masks)
    rois.save(tmp_path / "rois.npz")
    summary = replay(folder / "imaging", out=tmp_path / "out", rois=tmp_path / "rois.npz",
                     trials=folder / "trials.jsonl", config=CONFIG)
    assert summary.frames == len(frames) and summary.files == N_TRIALS and summary.frames_per_s > 100
    assert summary.trials_decoded == N_TRIALS
    table = read_traces(tmp_path / "out")
    # the same frames through the pipeline directly, as the live module would see them
    live = OnlinePipeline(CONFIG, rois=rois)
    traces = []
    for seq, f in enumerate(frames):
        header = FrameHeader(seq, f.frame_index, f.timestamp_s, 0.0, f.trial, 0, 0, SIZE, SIZE, "<i2",
                             time.time_ns())
        traces += live.process_frame(header, f.pixels).traces
    assert len(table) == len(traces)
    np.testing.assert_allclose(table.dff, np.array([t.dff for t in traces]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(table.index["shift_dy"], [t.shift_dy for t in traces], atol=1e-6)
    assert table.index["trial"].tolist() == [f.trial for f in frames]
    centres = [f.timestamp_s + 0.5 / RATE for f in frames]
    np.testing.assert_allclose(table.index["time_in_trial_s"], centres, atol=1e-6)
    lines = read_jsonl(tmp_path / "out" / "decoder.jsonl")
    assert [line["trial"] for line in lines] == list(range(1, N_TRIALS + 1))
    assert lines[-1]["decoded_side"] in ("left", "right") and lines[-1]["accuracy"]["tactile"] is not None
    assert lines[-1]["epochs"]["go_s"] == pytest.approx(2.01)


def test_the_replay_command_on_a_suite2p_folder(recording: tuple[Path, SimMicroscope, list],
                                                tmp_path: Path) -> None:
    folder, sim, frames = recording
    plane = tmp_path / "suite2p" / "plane0"
    plane.mkdir(parents=True)
    stat = np.empty(len(sim.masks), dtype=object)
    for i, m in enumerate(sim.masks):
        stat[i] = {"ypix": m.ypix, "xpix": m.xpix, "lam": m.lam, "med": list(m.med)}
    np.save(plane / "stat.npy", stat, allow_pickle=True)
    np.save(plane / "iscell.npy", np.ones((len(sim.masks), 2)))
    np.save(plane / "ops.npy", np.array({"meanImg": sim.template(), "Ly": SIZE, "Lx": SIZE}, dtype=object),
            allow_pickle=True)
    settings = parse_settings({"imaging": {"frame_rate_hz": RATE},
                               "online": {"decoder": {"min_trials_per_side": 3}}})
    (tmp_path / "settings.yaml").write_text(dump_settings(settings))
    out = tmp_path / "replayed"
    command = [sys.executable, "-m", "rig", "replay", str(folder / "imaging"), "--rois", str(plane),
               "--out", str(out), "--trials", str(folder / "trials.jsonl"), "--settings",
               str(tmp_path / "settings.yaml")]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.splitlines()[0])
    assert figures["frames"] == len(frames) and figures["frames_per_s"] > 0
    assert figures["trials_decoded"] == N_TRIALS
    assert "frames/s" in proc.stdout.splitlines()[1]
    assert len(read_traces(out)) == len(frames) and (out / "reference.npy").exists()
    bad = subprocess.run([sys.executable, "-m", "online", "replay", str(tmp_path / "nothing-here")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr


def test_files_that_cannot_be_memory_mapped_are_replayed_block_by_block_frame_for_frame(
        recording: tuple[Path, SimMicroscope, list], tmp_path: Path) -> None:
    """Unpadded descriptions of unequal length (aux-trigger edges on some frames) space the pages unequally,
    so no memory map fits and replay reads blocks through the library: every frame of every block, in
    order, must give the values the mapped replay of the same pixels gives."""
    folder, sim, frames = recording
    rois = tmp_path / "rois.npz"
    RoiSet.from_masks((SIZE, SIZE), sim.masks).save(rois)
    unmapped = tmp_path / "unmapped"
    for trial in range(1, N_TRIALS + 1):
        own = [f for f in frames if f.trial == trial]
        with ScanImageWriter.for_loop_trial(unmapped, "sim", trial, height=SIZE, width=SIZE,
                                            frame_rate_hz=RATE, template="compact",
                                            first_frame_number=own[0].frame_number + 1,
                                            acq_trigger_timestamp_s=0.0, description_bytes=0) as writer:
            for i, f in enumerate(own):
                edges = [f.timestamp_s + 0.001] * (i % 3)
                writer.write_frame(f.pixels, f.timestamp_s, aux_triggers=(edges, [], [], []))
    for mapped_file, block_file in zip(scanimage_files(folder / "imaging"), scanimage_files(unmapped),
                                       strict=True):
        with ScanImageFile(mapped_file) as a, ScanImageFile(block_file) as b:
            assert a.frames_view() is not None and b.frames_view() is None
    chunk = 7  # 30 frames per file: four whole blocks and a short one
    mapped = replay(folder / "imaging", out=tmp_path / "mapped", rois=rois, config=CONFIG, chunk_frames=chunk)
    blocks = replay(unmapped, out=tmp_path / "blocks", rois=rois, config=CONFIG, chunk_frames=chunk)
    assert blocks.frames == mapped.frames == len(frames) and not blocks.stops
    a, b = read_traces(tmp_path / "mapped"), read_traces(tmp_path / "blocks")
    assert len(b) == len(a) == len(frames)
    assert b.index["frame_index"].tolist() == [f.frame_index for f in frames]
    assert b.index["trial"].tolist() == [f.trial for f in frames]
    np.testing.assert_array_equal(b.index["timestamp_s"], a.index["timestamp_s"])
    np.testing.assert_array_equal(b.index["shift_dy"], a.index["shift_dy"])
    np.testing.assert_array_equal(b.dff, a.dff)
    # and the values are those of the frames themselves, through the live pipeline
    live = OnlinePipeline(CONFIG, rois=RoiSet.from_masks((SIZE, SIZE), sim.masks))
    traces = []
    for seq, f in enumerate(frames):
        header = FrameHeader(seq, f.frame_index, f.timestamp_s, 0.0, f.trial, 0, 0, SIZE, SIZE, "<i2",
                             time.time_ns())
        traces += live.process_frame(header, f.pixels).traces
    np.testing.assert_allclose(b.dff, np.array([t.dff for t in traces]), rtol=0, atol=1e-6)
