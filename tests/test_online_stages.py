"""Each stage of the online pipeline alone, on hand-made data: start-up, the frame stage, the trial stage
and the outputs (the composition is tested in test_online_pipeline.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from online.alignment import EpochStates
from online.config import PipelineConfig
from online.decoding import DecoderConfig
from online.errors import MalformedInput
from online.frame_stage import FrameStage
from online.outputs import PipelineOutput, trial_decoding
from online.pipeline import OnlinePipeline
from online.registration import RegistrationParams, Shift
from online.rois import RoiSet
from online.settings import DecoderSettings, OnlineSettings, RegistrationSettings
from online.startup import Startup
from online.trial_stage import Prospective, TrialOutcome, TrialStage, record_epochs
from online.wire import FrameHeader
from protocols.directional_licking import epoch_states

SIZE = 64
STATES = {"TrigTrialStart": [[0.0, 0.01]], "SamplePeriod": [[0.01, 1.01]], "DelayPeriod": [[1.01, 2.01]],
          "ResponseCue": [[2.01, 2.11]], "AnswerPeriod": [[2.11, 2.3]], "Reward": [[2.3, 2.33]]}


def blobs() -> tuple[np.ndarray, RoiSet]:
    """A field with four bright squares on a textured background, and the squares as ROIs."""
    rng = np.random.default_rng(0)
    image = rng.uniform(90, 110, (SIZE, SIZE))
    masks = []
    for y, x in ((12, 12), (12, 44), (44, 12), (44, 44)):
        image[y - 3:y + 3, x - 3:x + 3] += 400
        ys, xs = np.mgrid[y - 3:y + 3, x - 3:x + 3]
        masks.append({"ypix": ys.ravel(), "xpix": xs.ravel()})
    return image.astype(np.float32), RoiSet.from_masks((SIZE, SIZE), masks)


def header(index: int, trial: int = 1) -> FrameHeader:
    return FrameHeader(index, index, index * 0.1, 0.0, trial, 0, 0, SIZE, SIZE, "<f4", time.time_ns())


def test_startup_skips_blank_frames_and_begins_once_enough_are_kept() -> None:
    image, rois = blobs()
    config = PipelineConfig(OnlineSettings(registration=RegistrationSettings(reference_frames=3)),
                            frame_rate_hz=10.0)
    startup = Startup(config, rois=rois)
    assert startup.add(header(0), np.zeros((SIZE, SIZE), np.float32), ()) is None  # shutter closed
    assert startup.add(header(1), image, ()) is None and startup.frames_held == 1
    assert startup.add(header(2), image, ()) is None
    found = startup.add(header(3), image, ())
    assert found is not None and found[0] == (SIZE, SIZE) and len(found[1]) == 3
    assert startup.stats.frames_blank_at_setup == 1 and "1 blank" in startup.status()
    start = startup.build(*found)
    assert start is not None and start.rois is rois and start.reference.shape == (SIZE, SIZE)
    assert start.frame_rate_hz == pytest.approx(10.0)  # measured from the timestamps, 0.1 s apart


def test_the_frame_stage_registers_and_gives_each_roi_its_dff() -> None:
    image, rois = blobs()
    stage = FrameStage(image, rois, 10.0, OnlineSettings(), RegistrationParams(crop_px=48))
    assert stage.registration.crop_px == 48
    moved = np.roll(image, (2, -1), axis=(0, 1))  # the content moves by (+2, -1): registration says (-2, +1)
    shift, dff, _ = stage.process(moved)
    assert (round(shift.dy), round(shift.dx)) == (-2, 1) and shift.correlation > 0.5
    assert dff.shape == (rois.n,) and np.isfinite(dff).all()


def activity(side: str, rng: np.random.Generator) -> np.ndarray:
    base = np.array([1.0, 0.0]) if side == "right" else np.array([0.0, 1.0])
    return base + 0.05 * rng.standard_normal(2)


def test_the_trial_stage_decodes_each_trial_held_out_then_trains_on_it() -> None:
    stage = TrialStage("s")
    stage.start(2, DecoderConfig(DecoderSettings(min_trials_per_side=2), bin_s=0.1), "rois-test")
    rng = np.random.default_rng(1)
    outcomes: list[TrialOutcome] = []
    for trial in range(1, 9):
        side = "right" if trial % 2 else "left"
        stage.set_context(trial, "tactile")
        for k in range(37):  # 0-3.6 s: past the response window (go cue + 1.5 s)
            stage.add_frame(trial, k * 0.1, activity(side, rng))
        record = {"trial": trial, "context": "tactile", "side": side, "outcome": "hit",
                  "bpod": {"States": STATES}}
        outcomes += stage.end(trial, "tactile", record, now=0.0)
    assert [o.trial for o in outcomes] == list(range(1, 9))  # each finalised as its frames were in
    assert outcomes[0].epochs is not None and outcomes[0].epochs.go_s == pytest.approx(2.01)  # the record's
    assert outcomes[0].decode is None and "delay" in outcomes[0].trained_epochs  # not ready: trained only
    late = [o for o in outcomes if o.decode is not None]
    assert late and all(o.decode.side == o.record["side"] for o in late)  # type: ignore[union-attr]
    assert outcomes[-1].trials_per_side == {"left": 4, "right": 4} and outcomes[-1].accuracy["tactile"] == 1.0
    assert stage.cd_for_trial(9) is not None and stage.is_finalised(8)
    assert not stage.add_frame(8, 0.5, np.zeros(2)) and stage.stats.frames_after_trial_end == 1


def test_the_outputs_shape_a_trial_into_its_result_and_decoder_line() -> None:
    prospective = Prospective()
    for side, right in (("left", True), ("left", True), ("left", False), ("right", True)):
        prospective.add(side, right)
    similarity = {"dot": 0.9, "ceiling": 0.95, "ceiling_a": 0.96, "ceiling_b": 0.94, "n_right": 25,
                  "n_left": 25}
    outcome = TrialOutcome(3, "tactile", {"trial": 3, "side": "left", "outcome": "hit", "licked_side": "up"},
                           correct=True, block="1'", n_frames=12, trained_epochs=["delay"],
                           similarity={"delay": {"s0/1": similarity}}, ceiling={"delay": 0.97},
                           accuracy={"1'": 0.8}, trials_per_side={"left": 5, "right": 4},
                           prospective={"1'": prospective}, cds_changed=True)
    decoding = trial_decoding(outcome, "s1", "rois-x", closed_loop=None)
    result, line = decoding.result, decoding.record
    assert result.trial == 3 and result.actual_side == "left" and result.licked_side is None
    assert result.decoded_side is None and result.block == "1'" and not result.gated
    assert result.cd_similarity == {"s0/1": 0.9} and result.cd_similarity_ceiling == {"s0/1": 0.95}
    assert result.cd_ceiling == 0.97 and line["cd_similarity_by_epoch"]["delay"]["s0/1"] == similarity
    assert line["session"] == "s1" and line["roi_set_id"] == "rois-x" and line["n_frames"] == 12
    # balanced: (2/3 + 1/1) / 2, where the pooled fraction would be 3/4
    assert line["prospective"] == {"1'": {"decoded": 4, "correct": 3, "accuracy": 0.8333,
                                          "by_side": {"left": [3, 2], "right": [1, 1]}}}
    assert line["prospective_gated"] == {}
    assert line["epochs"] is None and "decode_skipped" not in line and decoding.cds_changed
    out = PipelineOutput()
    out.add_trace(header(7), 0.75, 1, Shift(1.0, -2.0, 0.9), np.array([0.5, 1.5]))
    (trace,) = out.traces
    assert trace.frame_index == 7 and trace.shift_dx == -2.0 and trace.dff.dtype == np.float32
    assert out.headers[0].frame_index == 7


def test_the_epochs_are_the_ones_the_trial_start_names() -> None:
    """A task whose go cue is another state: the pipeline takes the names from the trial-start message (as
    the rig sends the task module's epoch_states()), so the record's go cue is found under that name."""
    renamed = {("GoTone" if name == "ResponseCue" else name): times for name, times in STATES.items()}
    epochs = {"sample": "SamplePeriod", "delay": "DelayPeriod", "go": "GoTone", "response": ["Reward"]}
    pipeline = OnlinePipeline(PipelineConfig(OnlineSettings(), frame_rate_hz=10.0), rois=blobs()[1])
    pipeline.on_trial_start({"trial": 1, "context": "tactile", "epochs": epochs})
    named = EpochStates("SamplePeriod", "DelayPeriod", "GoTone", ("Reward",))
    assert pipeline.trial_stage.epoch_states == named
    assert record_epochs({"bpod": {"States": renamed}}, pipeline.trial_stage.epoch_states).go_s == 2.01
    assert record_epochs({"bpod": {"States": renamed}}, EpochStates()).go_s is None  # the default misses it
    assert EpochStates.from_message(epoch_states()) == EpochStates()  # the task's names are the defaults
    for bad in ({**epochs, "go": 3}, {**epochs, "response": "Reward"}, {"go": "GoTone"}, ["SamplePeriod"]):
        with pytest.raises(MalformedInput, match="epoch"):
            pipeline.on_trial_start({"trial": 2, "context": "tactile", "epochs": bad})


def test_frames_running_later_than_their_records_still_move_the_trials_on() -> None:
    """Frames more than the timeout behind their records (a slow start, a renderer behind): each trial is
    finalised without its frames, and its late frames are counted and skipped; they must still move the
    latest trial on, so old trials are dropped and, past trial 1000, states and frames are not refused."""
    stage = TrialStage("s")
    stage.start(2, DecoderConfig(DecoderSettings(min_trials_per_side=2), bin_s=0.1), "rois-test")
    lag = 3  # frames arrive three trials behind the records
    for trial in range(1, 1501):
        stage.enter_state(trial, "SamplePeriod", 0.1)  # a live state makes the trial's frame store
        record = {"trial": trial, "context": "tactile", "side": "left", "outcome": "hit",
                  "bpod": {"States": STATES}}
        stage.end(trial, "tactile", record, now=float(trial))
        stage.poll(now=trial + 10.0, timeout_s=5.0)  # its frames did not come in time
        if trial > lag:
            assert not stage.add_frame(trial - lag, 0.5, np.zeros(2))  # late: counted, not kept
    assert stage.stats.trials_timed_out == 1500 and stage.stats.frames_after_trial_end == 1500 - lag
    assert stage.latest_trial == 1500 - lag
    assert stage.trials is not None and len(stage.trials) <= stage.trials_kept + lag + 1  # old ones dropped
    assert stage.far_trial(1501) is None
