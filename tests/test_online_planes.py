"""Several imaging planes through the online pipeline: the simulated microscope's 5 planes at 30 Hz (6 Hz per
plane, the paper's) -> one reference, ROI set, registration and dF/F per plane -> decoding over every plane's
neurons; a 5-plane ScanImage file read and replayed; bad plane indices, frame sizes, channels and missing
plane frames counted and refused or skipped, never a crash."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from hardware.scanimage.reader import ScanImageFile
from hardware.sim.loop_tiff import LoopTiffFiles
from hardware.sim.microscope import MicroscopeConfig, SimFrame, SimMicroscope
from online.config import PipelineConfig
from online.errors import MalformedInput, PipelineError, UserInputError
from online.frame_stage import FrameStage
from online.messages import DecoderResult, TraceFrame
from online.outputs import PipelineOutput
from online.pipeline import OnlinePipeline
from online.process import replay
from online.rois import RoiSet
from online.settings import DecoderSettings, OnlineSettings
from online.store import SUMMARY_FILE, read_traces
from online.wire import FrameHeader

PLANES = 5
SIZE = 128
N_NEURONS = 100  # 20 per plane
SCAN_RATE = 30.0  # frames per second over all planes
PERIOD_S = 4.2
VOLUMES_PER_TRIAL = int(PERIOD_S * SCAN_RATE / PLANES)
EPOCHS = {"sample": 0.01, "delay": 1.31, "go": 2.61}


def trial_states(correct: bool) -> dict[str, list[list[float]]]:
    states = {"TrigTrialStart": [[0.0, 0.01]], "SamplePeriod": [[0.01, 1.31]], "DelayPeriod": [[1.31, 2.61]],
              "ResponseCue": [[2.61, 2.71]], "AnswerPeriod": [[2.71, 3.0]]}
    states["Reward" if correct else "TimeOut"] = [[3.0, 3.03]]
    return states


def make_sim(seed: int = 0, planes: int = PLANES) -> SimMicroscope:
    return SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=N_NEURONS,
                                          frame_rate_hz=SCAN_RATE, planes=planes, seed=seed,
                                          context_overlap=0.0, frames_per_acquisition=VOLUMES_PER_TRIAL))


def header(frame: SimFrame, seq: int, *, plane: int | None = None, channel: int = 0,
           shape: tuple[int, int] = (SIZE, SIZE)) -> FrameHeader:
    trial = frame.trial if frame.trial is not None else frame.acquisition
    return FrameHeader(seq, frame.frame_index, frame.timestamp_s, frame.trigger_timestamp_s, trial, channel,
                       frame.plane if plane is None else plane, shape[0], shape[1], "<i2", time.time_ns())


def config(planes: int = PLANES, **kwargs: object) -> PipelineConfig:
    online = OnlineSettings(decoder=DecoderSettings(min_trials_per_side=6))
    return PipelineConfig(online, frame_rate_hz=SCAN_RATE / planes, planes=planes, **kwargs)  # type: ignore[arg-type]


@dataclass
class Run:
    sim: SimMicroscope
    pipeline: OnlinePipeline
    frames: list[SimFrame] = field(default_factory=list)
    traces: list[TraceFrame] = field(default_factory=list)
    headers: list[FrameHeader] = field(default_factory=list)
    results: list[DecoderResult] = field(default_factory=list)
    seq: int = 0
    t: float = 1.0
    trial: int = 0

    def handle(self, out: PipelineOutput) -> None:
        self.traces += out.traces
        self.headers += out.headers
        self.results += [d.result for d in out.trials]

    def trials(self, n: int, rng: np.random.Generator, context: str = "tactile") -> None:
        for _ in range(n):
            self.trial += 1
            side = str(rng.choice(["left", "right"]))
            lick = side if rng.random() < 0.9 else ("left" if side == "right" else "right")
            self.sim.start_trial(self.t, context, lick, EPOCHS, trial=self.trial)
            for frame in self.sim.frames_until(self.t + PERIOD_S - 1e-9):
                self.frames.append(frame)
                self.handle(self.pipeline.process_frame(header(frame, self.seq), frame.pixels))
                self.seq += 1
            self.handle(self.pipeline.on_trial_end({
                "trial": self.trial, "context": context, "side": side, "licked_side": lick,
                "outcome": "hit" if lick == side else "error",
                "bpod": {"States": trial_states(lick == side)}}))
            self.t += PERIOD_S
        self.handle(self.pipeline.flush())


@pytest.fixture(scope="module")
def run() -> Run:
    sim = make_sim()
    rois = [RoiSet.from_masks((SIZE, SIZE), sim.plane_masks(z)) for z in range(PLANES)]
    result = Run(sim, OnlinePipeline(config(), rois=rois, session="planes"))
    result.trials(40, np.random.default_rng(1))
    return result


def test_simulator_scans_the_planes_in_turn_each_its_own_field() -> None:
    sim = make_sim()
    assert [s.stop - s.start for s in sim.plane_neurons] == [20] * PLANES
    assert len(sim.masks) == N_NEURONS and sim.volume_rate_hz == pytest.approx(6.0)
    sim.start_trial(0.0, "tactile", "left", EPOCHS, trial=1)
    frames = sim.frames_until(1.0)
    assert [f.plane for f in frames[:7]] == [0, 1, 2, 3, 4, 0, 1]
    assert [f.frame_index for f in frames[:7]] == [0, 0, 0, 0, 0, 1, 1]
    assert np.allclose(np.diff([f.timestamp_s for f in frames[:6]]), 1 / SCAN_RATE)
    templates = [sim.template(z) for z in range(PLANES)]
    assert max(abs(np.corrcoef(templates[0].ravel(), t.ravel())[0, 1]) for t in templates[1:]) < 0.5
    # Planes differ in their cells, not only in their noise.
    centres = [np.array([m.med for m in sim.plane_masks(z)]) for z in range(PLANES)]
    assert not np.allclose(centres[0], centres[1])
    # One plane: the field is the one-plane simulator's as before (same seed, same cells).
    one = SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=N_NEURONS, seed=0))
    assert len(one.fields) == 1 and len(one.masks) == N_NEURONS and frames[0].plane == 0


def test_every_plane_gets_its_rois_registration_and_traces(run: Run) -> None:
    p = run.pipeline
    assert p.ready and [r.n for r in p.plane_rois] == [20] * PLANES and p.n_rois == N_NEURONS
    assert p.rois is not None and p.rois.n == N_NEURONS
    assert p.plane_columns == [slice(20 * z, 20 * z + 20) for z in range(PLANES)]
    assert p.frame_rate_hz == pytest.approx(6.0, rel=0.01)
    assert len(run.traces) == len(run.frames) and p.stats.frames_processed == len(run.frames)
    assert p.stats.volumes_incomplete == 0
    assert [h.plane for h in run.headers[:10]] == [0, 1, 2, 3, 4] * 2
    assert all(t.dff.shape == (N_NEURONS,) for t in run.traces)
    by_seq = {h.seq: (h, t) for h, t in zip(run.headers, run.traces, strict=True)}
    frames = {i: f for i, f in enumerate(run.frames)}
    for z in range(PLANES):
        seqs = [s for s, (h, _) in by_seq.items() if h.plane == z and s >= 50 * PLANES]
        # Registration per plane: the brain's motion, found on each plane's own reference (up to the
        # reference's own offset, the median over the frames).
        err = np.array([[by_seq[s][1].shift_dy + frames[s].truth.shift[0],
                         by_seq[s][1].shift_dx + frames[s].truth.shift[1]] for s in seqs])
        assert np.abs(err - np.median(err, axis=0)).max() < 0.3
        # The plane's own columns follow its own neurons' truth.
        cols = p.plane_columns[z]
        measured = np.array([by_seq[s][1].dff[cols] for s in seqs])
        truth = np.array([frames[s].truth.dff[run.sim.plane_neurons[z]] for s in seqs])
        r = [np.corrcoef(measured[:, i], truth[:, i])[0, 1] for i in range(20)]
        assert np.median(r) > 0.6, (z, np.median(r))


def test_each_plane_frame_carries_its_own_deconvolution_and_the_others_latest(run: Run) -> None:
    p = run.pipeline
    stages = p.plane_stages
    assert len({id(s.deconvolver) for s in stages}) == PLANES  # one deconvolver (own state) per plane
    assert all(s.deconvolver is not None and s.deconvolver.n == 20 for s in stages)
    assert all(t.deconvolved is not None and t.deconvolved.shape == (N_NEURONS,) for t in run.traces)
    pairs = sorted(zip(run.headers, run.traces, strict=True), key=lambda ht: ht[0].seq)
    for (_, before), (h, now) in zip(pairs[:400], pairs[1:401], strict=True):
        others = np.ones(N_NEURONS, bool)
        others[p.plane_columns[h.plane]] = False
        assert before.deconvolved is not None and now.deconvolved is not None
        np.testing.assert_array_equal(now.deconvolved[others], before.deconvolved[others])
    # A plane's columns are what a frame stage of that plane alone makes of that plane's frames.
    z = 3
    alone = FrameStage(p.plane_references[z], p.plane_rois[z], p.frame_rate_hz, p.config.online,
                       p.config.registration)
    mine = [(h, t) for h, t in pairs if h.plane == z][:150]
    for h, t in mine:
        _, dff, deconvolved = alone.process(run.frames[h.seq].pixels)
        assert t.deconvolved is not None and deconvolved is not None
        np.testing.assert_allclose(t.dff[p.plane_columns[z]], dff, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(t.deconvolved[p.plane_columns[z]], deconvolved, rtol=1e-5, atol=1e-6)
    assert max(float(np.abs(t.deconvolved[p.plane_columns[z]]).max()) for _, t in mine  # type: ignore[index]
               ) > 0  # (spikes were found, so the comparison is not of zeros)


def test_decoding_runs_over_every_planes_neurons(run: Run) -> None:
    p = run.pipeline
    decoder = p.decoders["tactile"]
    assert decoder.n_neurons == N_NEURONS
    decoded = [r for r in run.results if r.decoded_side is not None]
    assert len(decoded) >= 15
    correct = sum(r.decoded_side == r.licked_side for r in decoded)
    assert correct / len(decoded) > 0.75
    # The coding direction spans every plane's neurons, and each plane's carry part of it.
    cd = decoder.coding_direction("delay")
    assert cd.vector.shape == (N_NEURONS,) and cd.roi_set_id == p.roi_set_id
    assert all(np.abs(cd.vector[s]).sum() > 0.1 * np.abs(cd.vector).sum() for s in p.plane_columns)


def test_bad_plane_index_and_frame_size_are_refused_and_counted(run: Run) -> None:
    p = OnlinePipeline(config(), rois=run.pipeline.plane_rois, reference=run.pipeline.plane_references)
    sim = make_sim(seed=0)
    sim.start_trial(0.0, "tactile", "left", EPOCHS, trial=1)
    frames = sim.frames_until(3.0)
    for seq, frame in enumerate(frames[:PLANES * 10]):
        p.process_frame(header(frame, seq), frame.pixels)
    assert p.ready
    with pytest.raises(MalformedInput, match="plane 5, the session images 5 plane"):
        p.process_frame(header(frames[0], 99, plane=5), frames[0].pixels)
    assert p.stats.frames_other_plane == 1
    with pytest.raises(MalformedInput, match="of plane 2 is 64x64, the session's frames of plane 2 are"):
        p.process_frame(header(frames[2], 100, shape=(64, 64)), frames[2].pixels[:64, :64])
    assert p.stats.frames_invalid == 1
    other = p.process_frame(header(frames[3], 101, channel=1), frames[3].pixels)
    assert other.traces == [] and p.stats.frames_other_channel == 1
    # A lost plane frame: that volume's traces are kept, it is not decoded, the session goes on.
    before = p.stats.frames_processed
    for seq, frame in enumerate(frames[PLANES * 10:PLANES * 12], start=200):
        if not (frame.frame_index == 10 and frame.plane == 3):
            p.process_frame(header(frame, seq), frame.pixels)
    p.flush()
    assert p.stats.frames_processed == before + 2 * PLANES - 1
    assert p.stats.volumes_incomplete == 1


def test_plane_count_and_given_rois_must_agree(run: Run) -> None:
    with pytest.raises(PipelineError, match="1 ROI sets given for 5 plane"):
        OnlinePipeline(config(), rois=run.pipeline.plane_rois[0])
    one = OnlinePipeline(config(planes=1), rois=run.pipeline.plane_rois[0])
    with pytest.raises(MalformedInput, match="plane 1, the session images 1 plane"):
        one.process_frame(header(run.frames[1], 0), run.frames[1].pixels)


def test_setup_waits_for_every_plane_and_detects_rois_per_plane() -> None:
    sim = make_sim(seed=3)
    p = OnlinePipeline(config(), session="detect")
    run = Run(sim, p)
    run.trials(3, np.random.default_rng(0))
    assert p.ready and len(p.plane_rois) == PLANES and all(r.n > 5 for r in p.plane_rois)
    assert p.n_rois == sum(r.n for r in p.plane_rois)
    # Each plane's ROIs are found on its own cells: most of that plane's true cells have a ROI on them,
    # far fewer of another plane's.
    def found(rois: RoiSet, z: int) -> float:
        truth = np.array([m.med for m in sim.plane_masks(z)])
        d = np.min(np.linalg.norm(truth[:, None, :] - rois.centroids[None], axis=2), axis=1)
        return float(np.mean(d < 2.0))

    for z, rois in enumerate(p.plane_rois):
        assert found(rois, z) > 0.6 and found(rois, z) > found(rois, (z + 1) % PLANES) + 0.3, z
    assert len(run.traces) == len(run.frames)


def test_five_plane_scanimage_files_are_read_and_replayed(tmp_path: Path) -> None:
    sim = make_sim(seed=5)
    folder = tmp_path / "imaging"
    files = LoopTiffFiles(folder, sim)
    t = 1.0
    for trial in range(1, 4):
        sim.start_trial(t, "tactile", "left", EPOCHS, trial=trial)
        for frame in sim.frames_until(t + PERIOD_S - 1e-9):
            files.write(frame, trial)
        t += PERIOD_S
    files.close()
    assert files.error is None and files.files == 3
    paths = sorted(folder.glob("*.tif"))
    with ScanImageFile(paths[0]) as f:
        assert f.shape == (VOLUMES_PER_TRIAL, PLANES, 1, SIZE, SIZE)
        assert f.frame_rate_hz == pytest.approx(6.0)
        stamps = f.plane_timestamps_s
        assert stamps is not None and stamps.shape == (VOLUMES_PER_TRIAL, PLANES)
        assert np.allclose(np.diff(stamps.ravel()), 1 / SCAN_RATE, atol=1e-5)
        first = f.frame(0)
    assert np.array_equal(first[:, 0], np.stack([fr.pixels for fr in sim_frames(5, PLANES)]))
    summary = replay(folder, out=tmp_path / "out")
    assert summary.frames == 3 * VOLUMES_PER_TRIAL * PLANES and summary.frames_skipped == 0
    assert not summary.stops
    table = read_traces(tmp_path / "out")
    assert sorted(set(table.index["plane"].tolist())) == list(range(PLANES))
    assert table.dff.shape[0] == summary.frames
    assert table.deconvolved is not None and table.deconvolved.shape == table.dff.shape
    assert np.isfinite(table.deconvolved).all()
    counts = table.meta["plane_rois"]
    assert len(counts) == PLANES and sum(counts) == table.dff.shape[1]
    assert [RoiSet.load(tmp_path / "out" / f"rois_plane{z}.npz").n for z in range(PLANES)] == counts
    done = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert done["pipeline"]["planes"] == PLANES and len(done["pipeline"]["rois_per_plane"]) == PLANES
    # The recording says how many planes it has (settings of one plane: still every plane replayed), and a
    # session's per-plane ROIs (as a restarted module takes them, `--rois <session>`) come back per plane.
    again = replay(folder, out=tmp_path / "out1", rois=tmp_path / "out", config=config(planes=1))
    assert again.frames == summary.frames and again.frames_skipped == 0 and not again.stops
    first, second = (json.loads((tmp_path / d / SUMMARY_FILE).read_text())["pipeline"]
                     for d in ("out", "out1"))
    assert second["roi_set_id"] == first["roi_set_id"] and second["rois_per_plane"] == first["rois_per_plane"]


def sim_frames(seed: int, n: int) -> list[SimFrame]:
    """The first n frames of a fresh simulator with the seed (the same as the file's first volume)."""
    sim = make_sim(seed=seed)
    sim.start_trial(1.0, "tactile", "left", EPOCHS, trial=1)
    return sim.frames_until(1.0 + (n - 0.5) / SCAN_RATE)


class _Recorder:
    """Stands in for a FramePublisher: keeps what would be published."""

    def __init__(self) -> None:
        self.frames: list[dict[str, object]] = []

    def publish(self, pixels: np.ndarray, **fields: object) -> bool:
        self.frames.append(fields)
        return True


def test_scanimage_stream_of_a_volume_gives_each_frame_its_plane_and_time_point() -> None:
    from hardware.scanimage.publish import StreamAdapter
    from tests.scanimage_frames import encode_scanimage_frame

    recorder = _Recorder()
    adapter = StreamAdapter("tcp://127.0.0.1:1", recorder, planes=PLANES)  # type: ignore[arg-type]
    image = np.zeros((1, 4, 4), np.int16)
    for number in range(7, 7 + 2 * PLANES + 1):  # frameNumbers of a running acquisition
        adapter.handle(encode_scanimage_frame(image, number / SCAN_RATE, number))
    got = [(f["frame_index"], f["plane"]) for f in recorder.frames]
    assert got == [(v, z) for v in range(2) for z in range(PLANES)] + [(2, 0)]


def test_a_suite2p_folder_of_planes_gives_a_roi_set_and_reference_per_plane(tmp_path: Path, run: Run) -> None:
    from online.process import load_roi_source
    from tests.test_rois import write_suite2p

    root = tmp_path / "suite2p"
    for z, rois in enumerate(run.pipeline.plane_rois[:3]):
        stat = [{"ypix": y, "xpix": x, "lam": lam} for y, x, lam in (rois.roi(i) for i in range(rois.n))]
        ops = {"meanImg": run.sim.template(z), "Ly": SIZE, "Lx": SIZE}
        write_suite2p(root / f"plane{z}", stat, np.ones((rois.n, 2)), ops)
    sets, references = load_roi_source(root, 3)
    assert isinstance(sets, list) and [s.n for s in sets] == [20, 20, 20]
    with pytest.raises(UserInputError, match="are of 3 plane"):
        load_roi_source(root, 5)  # a session of 5 planes needs 5 ROI sets
    assert isinstance(references, list) and np.array_equal(references[2], run.sim.template(2))
    pipeline = OnlinePipeline(config(planes=3), rois=sets, reference=references)
    assert pipeline.shape == (SIZE, SIZE) and not pipeline.ready


def test_trials_wait_for_their_frames_while_a_plane_is_still_setting_up(run: Run) -> None:
    clock = [0.0]
    p = OnlinePipeline(config(), rois=run.pipeline.plane_rois, monotonic=lambda: clock[0])
    for seq, frame in enumerate(run.frames[:PLANES * 60]):
        if frame.plane != 4:  # plane 4 never comes: setup waits for it, the others' frames are kept
            p.process_frame(header(frame, seq), frame.pixels)
    assert not p.ready and p.setup_status is not None and p.setup_status.startswith("plane 4: waiting")
    p.on_trial_end({"trial": 1, "context": "tactile", "side": "left", "outcome": "hit",
                    "licked_side": "left"})
    clock[0] += 60.0
    assert p.poll().trials == [] and p.stats.trials_timed_out == 0
    assert p.setup_frames_held == 4 * 60  # the four ready planes keep their frames for when plane 4 is in


def test_a_followed_folder_of_five_plane_files_feeds_every_plane_to_the_pipeline(tmp_path: Path,
                                                                                  run: Run) -> None:
    from hardware.scanimage.follower import FolderFollower
    from hardware.scanimage.publish import page_fields

    sim = make_sim(seed=0)  # the fixture's field: its ROIs fit
    files = LoopTiffFiles(tmp_path, sim)
    t = 1.0
    for trial in (1, 2):
        sim.start_trial(t, "tactile", "left", EPOCHS, trial=trial)
        for frame in sim.frames_until(t + PERIOD_S - 1e-9):
            files.write(frame, trial)
        t += PERIOD_S
    files.close()
    follower = FolderFollower(tmp_path, idle_timeout_s=0.5, settle_s=0.0, poll_s=0.01)
    pages = list(follower)
    assert len(pages) == 2 * VOLUMES_PER_TRIAL * PLANES
    p = OnlinePipeline(config(), rois=run.pipeline.plane_rois, reference=run.pipeline.plane_references)
    traces = 0
    for seq, page in enumerate(pages):
        fields = page_fields(page)
        h = FrameHeader(seq, fields["frame_index"], fields["timestamp_s"], fields["trigger_timestamp_s"],
                        fields["trial"], fields["channel"], fields["plane"], SIZE, SIZE, "<i2", 0)
        traces += len(p.process_frame(h, page.pixels).traces)
    traces += len(p.flush().traces)
    assert p.ready and traces == len(pages) and p.stats.volumes_incomplete == 0
    assert [page_fields(pg)["plane"] for pg in pages[:6]] == [0, 1, 2, 3, 4, 0]


def test_continuous_mode_places_each_volume_on_the_trial_of_its_first_plane(run: Run) -> None:
    sim = SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=N_NEURONS,
                                         frame_rate_hz=SCAN_RATE, planes=PLANES, seed=0, mode="continuous"))
    p = OnlinePipeline(config(alignment="aux"), rois=run.pipeline.plane_rois,
                       reference=run.pipeline.plane_references)
    for trial in range(1, 5):  # triggers land inside volumes, on whichever plane frame is being scanned
        sim.start_trial(0.5 + 3.07 * trial, "tactile", "left", EPOCHS, trial=trial)
    frames = sim.frames_until(16.0)
    traces: list[TraceFrame] = []
    for seq, f in enumerate(frames):
        h = FrameHeader(seq, f.frame_index, f.timestamp_s, None, 1, 0, f.plane, SIZE, SIZE, "<i2", 0)
        traces += p.process_frame(h, f.pixels, f.aux_trigger_s).traces
    traces += p.flush().traces
    assert len(traces) == len(frames)
    first_plane = {f.frame_index: f for f in frames if f.plane == 0}
    placed = [(t.frame_index, t.trial) for t in traces if t.trial]
    assert placed and all(first_plane[i].trial == trial for i, trial in placed)
    assert {trial for _, trial in placed} == {1, 2, 3, 4}


def day_sim(day: int) -> SimMicroscope:
    return SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=N_NEURONS, planes=PLANES, seed=0,
                                          day=day, day_shift_px=8.0, day_turnover=0.2))


def test_a_later_day_moves_every_plane_by_one_shift_and_each_plane_loses_its_own_cells() -> None:
    from online.roi_match import register_fields

    first, later = day_sim(0), day_sim(1)
    shifts = {f.day.shift for f in later.fields}
    assert len(shifts) == 1 and max(abs(v) for v in shifts.pop()) > 1.0  # the volume moves as a whole
    assert all(f.day.visible.all() for f in first.fields)
    gone = [~f.day.visible for f in later.fields]
    assert all(0 < g.sum() < 20 for g in gone) and len({g.tobytes() for g in gone}) > 1
    for z in range(PLANES):  # each plane's image and masks moved by the day's shift
        dy, dx, _ = register_fields(first.template(z), later.template(z), 20.0)
        np.testing.assert_allclose([dy, dx], np.negative(later.fields[z].day.shift), atol=0.5)
        moved = np.subtract([m.med for m in later.plane_masks(z)], [m.med for m in first.plane_masks(z)])
        assert np.abs(np.median(moved, axis=0) - later.fields[z].day.shift).max() <= 1.0
    # One plane: the day is the one-plane simulator's as before.
    one = SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=N_NEURONS, seed=0, day=1,
                                         day_shift_px=8.0, day_turnover=0.2))
    assert one.field.day.shift == later.fields[0].day.shift


def test_sessions_of_several_planes_are_matched_plane_by_plane(tmp_path: Path) -> None:
    from online.store import SessionOutputs
    from rig.roi_matches import match_session

    folders = []
    for day, name in ((0, "2026-01-01_100000"), (1, "2026-01-02_100000")):
        sim = day_sim(day)
        sets = [RoiSet.from_masks((SIZE, SIZE), sim.plane_masks(z)) for z in range(PLANES)]
        templates = [sim.template(z) for z in range(PLANES)]
        folder = tmp_path / "m" / name
        outputs = SessionOutputs(folder)
        outputs.write_rois(RoiSet.concatenate(sets), templates[0], planes=list(zip(sets, templates,
                                                                                    strict=True)))
        outputs.close()
        (folder / "session.json").write_text("{}")
        assert json.loads((folder / "traces.json").read_text())["plane_rois"] == [20] * PLANES
        folders.append(folder)
    result = match_session(folders[1])
    assert result is not None and result["n_rois"] == N_NEURONS
    [match] = result["matches"]
    assert len(match["planes"]) == PLANES and match["n_current"] == match["n_previous"] == N_NEURONS
    truth = np.negative(day_sim(1).field.day.shift)
    for plane in match["planes"]:
        np.testing.assert_allclose(plane["shift_px"], truth, atol=0.5)
    pairs = np.array(match["pairs"])
    assert match["n_matched"] == sum(p["n_matched"] for p in match["planes"]) >= 0.6 * N_NEURONS
    # Indices into rois.npz: a cell matched to itself, on its own plane (20 ROIs a plane).
    assert (pairs[:, 0] == pairs[:, 1]).mean() > 0.95
    assert {int(i) // 20 for i in pairs[:, 1]} == set(range(PLANES))
    # Sessions of other plane counts are not compared.
    (folders[0] / "rois_plane4.npz").unlink()
    [other] = match_session(folders[1])["matches"]  # type: ignore[index]
    assert "4 plane(s), this one 5" in other["error"]


def test_traces_json_says_the_rois_of_each_plane(tmp_path: Path) -> None:
    from online.store import TraceWriter

    (tmp_path / "one").mkdir()
    TraceWriter(tmp_path / "one", 10).close()
    TraceWriter(tmp_path, 10, plane_rois=[4, 6]).close()
    assert json.loads((tmp_path / "traces.json").read_text())["plane_rois"] == [4, 6]
    assert json.loads((tmp_path / "one" / "traces.json").read_text())["plane_rois"] == [10]
    with pytest.raises(ValueError, match="add up to n_rois"):
        TraceWriter(tmp_path / "one", 10, plane_rois=[4, 5])
