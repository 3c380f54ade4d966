"""The online pipeline on simulated microscope pixels (no sockets): traces, registration, decoding, CDs across
contexts and sessions through coding_directions.json, trial finalisation, and the session files.

Sessions: a 256x256 field with 100 neurons at 6 Hz per plane (the paper's 30 Hz over 5 planes), loop mode
(one acquisition per trial, 4.2 s), standard epochs (sample 1.3 s, delay 1.3 s), the mouse licking the
correct side on 90 % of trials (the population prepares the lick it will make). Session 1: 100 trials of
`tactile`, then 60 of `tactile-reversed` (a new context: the paper's context 2); session 2 (another day, new
noise, same neurons and ROI set): 60 trials of `tactile` again."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from online.config import PipelineConfig
from online.decoding import CodingDirectionStore
from online.errors import MalformedInput, PipelineError
from online.messages import DecoderResult, TraceFrame
from online.outputs import PipelineOutput
from online.pipeline import NO_TRIAL, OnlinePipeline
from online.rois import RoiSet, roi_set_id
from online.settings import DecoderSettings, OnlineSettings, RegistrationSettings
from online.store import (
    CODING_DIRECTIONS_FILE,
    INDEX_DTYPE,
    TRACES_FILE,
    TRACES_INDEX_FILE,
    CodingDirectionFile,
    SessionOutputs,
    read_jsonl,
    read_traces,
)
from online.wire import FrameHeader

log = logging.getLogger(__name__)

RATE = 6.0
SIZE = 256
N_NEURONS = 100
PERIOD_S = 4.2
EPOCHS = {"sample": 0.01, "delay": 1.31, "go": 2.61}
SESSION_1, SESSION_2 = "2025-01-06_100000", "2025-04-02_100000"


def trial_states(correct: bool) -> dict[str, list[list[float]]]:
    states = {"TrigTrialStart": [[0.0, 0.01]], "SamplePeriod": [[0.01, 1.31]], "DelayPeriod": [[1.31, 2.61]],
              "ResponseCue": [[2.61, 2.71]], "AnswerPeriod": [[2.71, 3.0]]}
    states["Reward" if correct else "TimeOut"] = [[3.0, 3.03]]
    return states


def header(frame: object, seq: int, channel: int = 0, size: int = SIZE) -> FrameHeader:
    f = frame  # a SimFrame
    return FrameHeader(seq, f.frame_index, f.timestamp_s, f.trigger_timestamp_s,  # type: ignore[attr-defined]
                       f.trial if f.trial is not None else f.acquisition, channel, 0,  # type: ignore[attr-defined]
                       size, size, "<i2", time.time_ns())


@dataclass
class Run:
    sim: SimMicroscope
    pipeline: OnlinePipeline
    traces: list[TraceFrame] = field(default_factory=list)
    truth_dff: list[np.ndarray] = field(default_factory=list)
    truth_shift: list[tuple[float, float]] = field(default_factory=list)
    results: list[DecoderResult] = field(default_factory=list)
    seq: int = 0
    t: float = 1.0
    trial: int = 0


def make_sim() -> SimMicroscope:
    return SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=N_NEURONS, frame_rate_hz=RATE,
                                          seed=0, context_overlap=0.0,
                                          frames_per_acquisition=int(PERIOD_S * RATE)))


def run_trials(run: Run, context: str, n_trials: int, rng: np.random.Generator,
               outputs: SessionOutputs | None = None, cd_file: CodingDirectionFile | None = None) -> None:
    """n trials through the pipeline: frames as the microscope makes them, then the trial's record."""

    def handle(out: PipelineOutput) -> None:
        p = run.pipeline
        if outputs is not None and out.initialised:
            assert p.rois is not None and p.reference is not None
            outputs.write_rois(p.rois, p.reference, roi_set_id=p.roi_set_id)
        run.traces += out.traces
        if outputs is not None:
            for trace in out.traces:
                outputs.append_trace(trace)
        for decoding in out.trials:
            run.results.append(decoding.result)
            if outputs is not None:
                outputs.append_decoder(decoding.record)
            if decoding.cds_changed and cd_file is not None:
                cd_file.save(p.cd_store, sessions={p.session})

    for _ in range(n_trials):
        run.trial += 1
        side = str(rng.choice(["left", "right"]))
        lick = side if rng.random() < 0.9 else ("left" if side == "right" else "right")
        run.sim.start_trial(run.t, context, lick, EPOCHS, trial=run.trial)
        for frame in run.sim.frames_until(run.t + PERIOD_S - 1e-9):
            run.truth_dff.append(frame.truth.dff)
            run.truth_shift.append(frame.truth.shift)
            handle(run.pipeline.process_frame(header(frame, run.seq), frame.pixels))
            run.seq += 1
        record = {"trial": run.trial, "context": context, "side": side, "licked_side": lick,
                  "outcome": "hit" if lick == side else "error",
                  "bpod": {"States": trial_states(lick == side)}}
        handle(run.pipeline.on_trial_end(record))
        run.t += PERIOD_S
    handle(run.pipeline.flush())


@dataclass
class Sessions:
    first: Run
    second: Run
    after_tactile: dict[str, float | None]
    cd_path: Path
    folder: Path


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Sessions:
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("data")
    subject = root / "sim-mouse"
    folder = subject / SESSION_1
    cd_file = CodingDirectionFile.in_subject_dir(subject)
    sim = make_sim()
    rois = RoiSet.from_masks((SIZE, SIZE), sim.masks)
    online = OnlineSettings(registration=RegistrationSettings(reference_frames=30),
                            decoder=DecoderSettings(min_trials_per_side=10))
    config = PipelineConfig(online, frame_rate_hz=RATE)
    first = Run(sim, OnlinePipeline(config, rois=rois, session=SESSION_1, cd_store=cd_file.load()))
    outputs = SessionOutputs(folder)
    rng = np.random.default_rng(1)
    run_trials(first, "tactile", 100, rng, outputs, cd_file)
    after_tactile = dict(first.results[-1].accuracy)
    run_trials(first, "tactile-reversed", 60, rng, outputs, cd_file)
    outputs.close()

    sim2 = make_sim()
    second = Run(sim2, OnlinePipeline(config, rois=RoiSet.from_masks((SIZE, SIZE), sim2.masks),
                                      session=SESSION_2, cd_store=CodingDirectionFile.in_subject_dir(
                                          subject).load()), t=1.37)
    run_trials(second, "tactile", 60, np.random.default_rng(3), cd_file=cd_file)
    log.info("simulated and processed 220 trials (%d frames) in %.1f s",
             len(first.traces) + len(second.traces), time.perf_counter() - t0)
    return Sessions(first, second, after_tactile, subject / CODING_DIRECTIONS_FILE, folder)


# -- traces and registration ------------------------------------------------------------------------------


def test_roi_traces_correlate_with_ground_truth(sessions: Sessions) -> None:
    run = sessions.first
    dff = np.array([t.dff for t in run.traces])
    truth = np.array(run.truth_dff)
    assert dff.shape == truth.shape == (len(run.truth_dff), N_NEURONS)
    r = np.array([np.corrcoef(dff[:, i], truth[:, i])[0, 1] for i in range(N_NEURONS)])
    log.info("trace vs ground truth: median r %.3f, 5th percentile %.3f", np.median(r), np.percentile(r, 5))
    assert np.median(r) >= 0.9


def test_registration_undoes_the_simulated_motion(sessions: Sessions) -> None:
    run = sessions.first
    shifts = np.array([(t.shift_dy, t.shift_dx) for t in run.traces])
    error = shifts + np.array(run.truth_shift)  # the aligning shift is minus the displacement
    error -= np.median(error, axis=0)  # the reference sits at the frames' median position
    rms = float(np.sqrt((error**2).sum(axis=1).mean()))
    assert np.abs(np.array(run.truth_shift)).max() > 0.5  # there is motion to undo
    assert rms < 0.25, rms
    assert all(t.correlation > 0.3 for t in run.traces)


def test_frames_are_placed_on_their_trial_at_the_frame_centre(sessions: Sessions) -> None:
    trace = sessions.first.traces[7]
    assert trace.trial == 1 and trace.time_in_trial_s == pytest.approx(7 / RATE + 0.5 / RATE)
    assert sessions.first.pipeline.frame_rate_hz == pytest.approx(RATE)


# -- decoding, coding directions -----------------------------------------------------------------------------


def test_one_decoder_result_per_trial_held_out_before_training(sessions: Sessions) -> None:
    results = sessions.first.results
    assert [r.trial for r in results] == list(range(1, 161))
    first = next(k for k, r in enumerate(results) if r.decoded_side is not None)
    assert first >= 20 and all(r.decoded_side is None and r.confidence is None for r in results[:first])
    before = results[first - 1].trials_per_side  # decoded only once 10 correct trials per side were in
    assert before["left"] >= 10 and before["right"] >= 10
    assert min(results[first - 2].trials_per_side.values()) < 10
    ready = [r for r in results[:100] if r.decoded_side is not None]
    assert all(0.5 <= (r.confidence or 0) <= 1 for r in ready)
    assert results[99].trials_per_side["left"] + results[99].trials_per_side["right"] == sum(
        r.outcome == "hit" for r in results[:100])


def test_delay_decoding_is_at_least_90_percent_after_100_trials(sessions: Sessions) -> None:
    accuracy = sessions.after_tactile["tactile"]
    decoder = sessions.first.pipeline.decoders["tactile"]
    held_out = [r for r in sessions.first.results[:100] if r.decoded_side is not None and r.outcome == "hit"]
    prospective = np.mean([r.decoded_side == r.actual_side for r in held_out])
    log.info("tactile: cross-validated %.3f, prospective %.3f over %d trials", accuracy, prospective,
             len(held_out))
    assert accuracy is not None and accuracy >= 0.9
    assert decoder.n_trials("left") + decoder.n_trials("right") >= 80
    assert prospective >= 0.9


def test_coding_directions_match_the_ground_truth(sessions: Sessions) -> None:
    decoder = sessions.first.pipeline.decoders["tactile"]
    sim = sessions.first.sim
    cosine = {epoch: float(decoder.coding_direction(epoch).vector @ sim.coding_direction("tactile", epoch))
              for epoch in ("sample", "delay", "response")}
    log.info("CD cosine with ground truth: %s", cosine)
    assert cosine["delay"] >= 0.9
    # deconvolved activity (the default input) follows the rates less closely in the short, strong sample
    # and response epochs than dF/F did (0.96 then; 0.85-0.95 now)
    assert cosine["sample"] >= 0.8 and cosine["response"] >= 0.8


def test_cd_dot_products_across_contexts_and_sessions_via_coding_directions_json(sessions: Sessions) -> None:
    stored = CodingDirectionStore.from_dict(json.loads(sessions.cd_path.read_text()))
    keys = {(s, cd.context, cd.epoch) for s, cd in stored.entries()}
    for session, context in ((SESSION_1, "tactile"), (SESSION_1, "tactile-reversed"), (SESSION_2, "tactile")):
        for epoch in ("sample", "delay", "response"):
            assert (session, context, epoch) in keys
    rois = sessions.first.pipeline.roi_set_id
    assert rois == roi_set_id(sessions.second.pipeline.rois) and rois.startswith("rois-")  # type: ignore[arg-type]
    assert all(cd.roi_set_id == rois for _, cd in stored.entries())
    # within session 1: the new context's CD against the first context's
    reversed_last = sessions.first.results[-1]
    assert reversed_last.context == "tactile-reversed"
    across_contexts = reversed_last.cd_similarity[f"{SESSION_1}/tactile"]
    # session 2 (tactile again) against what session 1 stored, read back from coding_directions.json
    last = sessions.second.results[-1]
    same_context = last.cd_similarity[f"{SESSION_1}/tactile"]
    other_context = last.cd_similarity[f"{SESSION_1}/tactile-reversed"]
    log.info("dot: tactile-reversed vs tactile %.3f, tactile s2 vs s1 %.3f, s2 tactile vs s1 reversed %.3f",
             across_contexts, same_context, other_context)
    assert abs(across_contexts) < 0.3 and abs(other_context) < 0.3
    assert same_context > 0.8


# -- session files --------------------------------------------------------------------------------------


def test_session_files_hold_every_frame_and_trial(sessions: Sessions) -> None:
    folder = sessions.folder
    table = read_traces(folder)
    run = sessions.first
    assert len(table) == len(run.traces)
    np.testing.assert_array_equal(table.dff, np.array([t.dff for t in run.traces], np.float32))
    # deconvolution is on by default: published beside dF/F and saved beside it (deconvolved.f32)
    assert table.deconvolved is not None and table.meta["deconvolved_file"] == "deconvolved.f32"
    published = np.array([t.deconvolved for t in run.traces], np.float32)
    np.testing.assert_array_equal(table.deconvolved, published)
    assert table.index["trial"][0] == 1 and table.index["frame_index"][5] == 5
    assert table.meta["n_rois"] == N_NEURONS
    assert (folder / "rois.npz").exists() and np.load(folder / "reference.npy").shape == (SIZE, SIZE)
    assert RoiSet.load(folder / "rois.npz").n == N_NEURONS
    lines = read_jsonl(folder / "decoder.jsonl")
    assert [line["trial"] for line in lines] == list(range(1, 161))
    assert lines[-1]["cd_similarity_by_epoch"]["delay"] and "prospective" in lines[-1]
    assert DecoderResult(**{k: lines[-1][k] for k in DecoderResult.__dataclass_fields__}) == run.results[-1]


def test_reading_traces_ignores_a_torn_last_record(tmp_path: Path) -> None:
    outputs = SessionOutputs(tmp_path)
    rois = RoiSet.from_masks((16, 16), [{"ypix": [3, 3, 4], "xpix": [3, 4, 3]}, {"ypix": [10], "xpix": [10]}])
    outputs.write_rois(rois, np.zeros((16, 16)))
    for i in range(3):
        outputs.append_trace(TraceFrame(i, 1, i / 30, None if i == 0 else i / 30, 0.1, -0.2, 0.9,
                                        np.array([i, -i], np.float32)), t_ns=123)
    outputs.close()
    with open(tmp_path / TRACES_FILE, "ab") as f:
        f.write(b"\x00\x00\x80")  # a crash in the middle of the next row
    table = read_traces(tmp_path)
    assert len(table) == 3 and table.dff[2].tolist() == [2.0, -2.0]
    assert np.isnan(table.index["time_in_trial_s"][0]) and table.index["t_ns"][1] == 123
    assert (tmp_path / TRACES_INDEX_FILE).stat().st_size == 3 * INDEX_DTYPE.itemsize
    again = SessionOutputs(tmp_path)  # a restarted process appends after trimming the torn bytes
    again.write_rois(rois, np.zeros((16, 16)))
    again.append_trace(TraceFrame(3, 2, 0.1, 0.1, 0.0, 0.0, 1.0, np.array([7, 8], np.float32)))
    again.close()
    table = read_traces(tmp_path)
    assert len(table) == 4 and table.dff[3].tolist() == [7.0, 8.0] and table.index["trial"][3] == 2


def test_unreadable_coding_directions_file_is_never_overwritten(tmp_path: Path, sessions: Sessions) -> None:
    path = tmp_path / CODING_DIRECTIONS_FILE
    path.write_text("{not json")
    cd_file = CodingDirectionFile(path, "m")
    store = cd_file.load()
    assert len(store) == 0 and not cd_file.readable and "cannot read" in (cd_file.error or "")
    store.put("s", sessions.first.pipeline.decoders["tactile"].coding_direction("delay"))
    assert cd_file.save(store) is False and path.read_text() == "{not json"


def test_saving_coding_directions_keeps_other_sessions_entries(tmp_path: Path, sessions: Sessions) -> None:
    cd = sessions.first.pipeline.decoders["tactile"].coding_direction("delay")
    a, b = CodingDirectionFile(tmp_path / "cd.json"), CodingDirectionFile(tmp_path / "cd.json")
    store_a, store_b = a.load(), b.load()
    store_a.put("session-a", cd)
    store_b.put("session-b", cd)
    assert a.save(store_a, sessions={"session-a"}) and b.save(store_b, sessions={"session-b"})
    assert {s for s, _ in CodingDirectionFile(tmp_path / "cd.json").load().entries()} == {"session-a",
                                                                                          "session-b"}


# -- small fields: events, finalisation, bad input ---------------------------------------------------------


def small_sim(**overrides: object) -> SimMicroscope:
    config = MicroscopeConfig(height=64, width=64, n_neurons=12, frame_rate_hz=10.0, seed=4, motion_px=0.0,
                              **overrides)  # type: ignore[arg-type]
    return SimMicroscope(config)


def small_pipeline(sim: SimMicroscope, registration: dict[str, object] | None = None,
                   decoder: dict[str, object] | None = None, **config: object) -> OnlinePipeline:
    reg = RegistrationSettings.model_validate({"reference_frames": 5, **(registration or {})})
    dec = DecoderSettings.model_validate({"min_trials_per_side": 2, **(decoder or {})})
    online = OnlineSettings(registration=reg, decoder=dec)
    values: dict[str, object] = {"frame_rate_hz": 10.0, "finalize_timeout_s": 5.0, **config}
    return OnlinePipeline(PipelineConfig(online, **values), rois=RoiSet.from_masks((64, 64), sim.masks))  # type: ignore


def test_a_trial_is_finalised_once_its_frames_are_in(tmp_path: Path) -> None:
    sim = small_sim(frames_per_acquisition=42)
    clock = [0.0]
    pipeline = small_pipeline(sim)
    pipeline.monotonic = lambda: clock[0]
    sim.start_trial(0.5, "tactile", "left", EPOCHS, trial=1)
    frames = sim.frames_until(2.0)  # up to the delay
    outs = [pipeline.process_frame(header(f, i, size=64), f.pixels) for i, f in enumerate(frames)]
    assert outs[4].initialised and sum(len(o.traces) for o in outs) == len(frames)
    pipeline.on_state({"trial": 1, "state": "ResponseCue", "time_s": 2.61})
    record = {"trial": 1, "context": "tactile", "side": "left", "outcome": "hit", "licked_side": "left"}
    assert pipeline.on_trial_end(record).trials == []  # frames up to the response window still to come
    rest = sim.frames_until(4.8)
    done = [d for i, f in enumerate(rest) for d in pipeline.process_frame(header(f, 100 + i, size=64),
                                                                          f.pixels).trials]
    assert [d.result.trial for d in done] == [1]
    assert done[0].record["epochs"]["go_s"] == pytest.approx(2.61) and done[0].record["n_frames"] >= 40
    # a record whose frames never come is finalised after the timeout, without them
    pipeline.on_trial_end({"trial": 7, "context": "tactile", "side": "right", "outcome": "hit"})
    assert pipeline.poll().trials == []
    clock[0] += 5.0
    late = pipeline.poll().trials
    assert [d.result.trial for d in late] == [7] and late[0].record["n_frames"] == 0
    assert pipeline.stats.trials_timed_out == 1 and pipeline.stats.trials_without_frames == 1


def test_malformed_events_and_frames_are_refused_with_a_reason() -> None:
    sim = small_sim()
    pipeline = small_pipeline(sim)
    bad_events = [
        (pipeline.on_state, {"trial": "1", "state": "DelayPeriod", "time_s": 1.0}, "trial"),
        (pipeline.on_state, {"trial": 1, "state": "", "time_s": 1.0}, "state name"),
        (pipeline.on_state, {"trial": 1, "state": "DelayPeriod", "time_s": float("nan")}, "finite"),
        (pipeline.on_trial_end, {"trial": 1, "side": "left"}, "context"),
        (pipeline.on_trial_end, {"trial": 1, "context": "tactile", "side": "up"}, "side"),
        (pipeline.on_trial_end, {"trial": 1, "context": "t", "bpod": {"States": {"A": 3}}}, "States"),
        (pipeline.on_trial_start, {"trial": 1}, "context"),
        (pipeline.on_trial_end, ["not", "a", "record"], "object"),
    ]
    for fn, data, reason in bad_events:
        with pytest.raises(MalformedInput, match=reason):
            fn(data)  # type: ignore[operator]
    sim.start_trial(0.1, "tactile", "left", EPOCHS, trial=1)
    frames = sim.frames_until(1.0)
    for i, f in enumerate(frames):
        pipeline.process_frame(header(f, i, size=64), f.pixels)
    with pytest.raises(MalformedInput, match="32x64"):
        pipeline.process_frame(header(frames[0], 50, size=64), frames[0].pixels[:32])
    assert pipeline.process_frame(header(frames[0], 51, channel=1, size=64), frames[0].pixels).traces == []
    assert pipeline.stats.frames_other_channel == 1 and pipeline.stats.frames_invalid == 1
    pipeline.on_trial_end({"trial": 1, "context": "tactile", "side": "left", "outcome": "hit"})
    with pytest.raises(MalformedInput, match="second end record"):
        pipeline.on_trial_end({"trial": 1, "context": "tactile", "side": "left", "outcome": "hit"})


def test_the_online_settings_reach_registration_and_the_decoders() -> None:
    """online.registration.crop_px is the side of the centre crop registered; online.decoder.cd_method the
    CD the decoders compute (the paper's lda unless the settings say otherwise)."""
    sim = small_sim()
    sim.start_trial(0.1, "tactile", "left", EPOCHS, trial=1)
    frames = sim.frames_until(1.0)
    default = small_pipeline(sim)
    cropped = small_pipeline(sim, registration={"crop_px": 32}, decoder={"cd_method": "classic"})
    for pipeline in (default, cropped):
        for i, f in enumerate(frames):
            pipeline.process_frame(header(f, i, size=64), f.pixels)
    assert default.frame_stage is not None and cropped.frame_stage is not None
    assert default.frame_stage.registration.crop_px == 64  # 128 by default, clipped to the 64 px frame
    assert cropped.frame_stage.registration.crop_px == 32
    assert default.decoder_config is not None and default.decoder_config.method == "lda"
    assert cropped.decoder_config is not None and cropped.decoder_config.method == "classic"


def test_rois_of_another_frame_size_are_refused() -> None:
    sim = small_sim()
    with pytest.raises(PipelineError, match="ROIs are for 64x64"):
        OnlinePipeline(PipelineConfig(), rois=RoiSet.from_masks((64, 64), sim.masks),
                       reference=np.zeros((32, 32)))


def test_continuous_mode_places_frames_through_the_aux_triggers() -> None:
    sim = small_sim(mode="continuous", acquisition_start_s=0.0)
    pipeline = small_pipeline(sim, alignment="aux")
    starts = [0.73, 5.21, 9.64]
    traces: list[TraceFrame] = []
    frames = []
    for k, start in enumerate(starts):
        sim.start_trial(start, "tactile", "left", EPOCHS, trial=k + 1)
        frames += sim.frames_until(start + 4.4)
    for i, f in enumerate(frames):
        h = FrameHeader(i, f.frame_index, f.timestamp_s, None, 1, 0, 0, 64, 64, "<i2", time.time_ns())
        traces += pipeline.process_frame(h, f.pixels, f.aux_trigger_s).traces
    assert len(traces) == len(frames)
    expected = [(f.trial or NO_TRIAL) for f in frames]
    assert [t.trial for t in traces] == expected
    placed = [(t, f) for t, f in zip(traces, frames, strict=True) if t.trial != NO_TRIAL]
    for trace, frame in placed:
        assert trace.time_in_trial_s == pytest.approx(frame.bpod_time_s - starts[trace.trial - 1] + 0.05,
                                                      abs=1e-6)
    assert traces[0].time_in_trial_s is None
