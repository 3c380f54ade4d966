"""What the online module keeps per trial is bounded: many synthetic trials through the trial-level code
(decoder training, the pipeline's trial bookkeeping, continuous-mode alignment) leave a fixed number of
trials in memory, and the decoder's coding direction is the one of the most recent trials it keeps."""

from __future__ import annotations

import numpy as np
import pytest

from online.alignment import ContinuousAligner
from online.config import PipelineConfig
from online.decoding import (
    Boundary,
    ContextDecoder,
    DecoderConfig,
    EpochFeature,
    classic_cd,
)
from online.pipeline import OnlinePipeline
from online.rois import RoiSet
from online.settings import DecoderSettings, OnlineSettings
from online.wire import FrameHeader

N_NEURONS = 12
KEPT = 25


def _features(config: DecoderConfig, rng: np.random.Generator, side: str) -> dict[str, EpochFeature]:
    sign = 1.0 if side == "right" else -1.0
    out = {}
    for epoch, window in config.windows().items():
        bins = rng.normal(0.2 * sign, 1.0, (window.n_bins(config.bin_s), N_NEURONS))
        out[epoch] = EpochFeature(bins.mean(axis=0), bins)
    return out


def test_a_decoder_keeps_the_most_recent_trials_per_side_and_its_cd_is_theirs() -> None:
    settings = DecoderSettings(min_trials_per_side=5, trials_kept_per_side=KEPT, cd_method="classic")
    config = DecoderConfig(settings, bin_s=0.1)
    decoder = ContextDecoder("tactile", N_NEURONS, config)
    rng = np.random.default_rng(0)
    fed: dict[str, list[np.ndarray]] = {"right": [], "left": []}
    for trial in range(1500):
        side = "right" if rng.random() < 0.5 else "left"
        features = _features(config, rng, side)
        fed[side].append(features["delay"].mean)
        decoder.add_features(side, features, trial)
    for epoch in ("sample", "delay", "response"):
        data = decoder.data(epoch)
        assert (data.n_right, data.n_left) == (KEPT, KEPT)
        assert decoder.n_trials("right", epoch) == decoder.n_trials("left", epoch) == KEPT
        assert data.right_bins is not None and data.right_bins.shape[0] == KEPT
    # the CD and boundary over exactly the last KEPT trials of each side, as a batch fit computes them
    right, left = np.array(fed["right"][-KEPT:]), np.array(fed["left"][-KEPT:])
    cd = decoder.coding_direction("delay")
    expected = classic_cd(right, left)
    np.testing.assert_allclose(cd.vector, expected, atol=1e-9)
    boundary = Boundary.fit(right @ expected, left @ expected)
    assert cd.boundary.value == pytest.approx(boundary.value, abs=1e-9)
    np.testing.assert_allclose(decoder.data("delay").right_means, right)  # oldest first
    lda = decoder.coding_direction("delay", "lda")
    assert lda.n_right == KEPT and np.isfinite(lda.vector).all()


def test_a_decoder_refuses_to_keep_fewer_trials_than_it_needs() -> None:
    with pytest.raises(ValueError, match="trials_kept_per_side"):
        DecoderSettings(min_trials_per_side=10, trials_kept_per_side=9)


SIZE = 32


def _pipeline(trials_kept_per_side: int) -> tuple[OnlinePipeline, np.ndarray]:
    size = SIZE
    masks = [(np.array([y, y, y + 1, y + 1]), np.array([x, x + 1, x, x + 1]))
             for y in range(4, 28, 8) for x in range(4, 28, 6)]
    rois = RoiSet.from_masks((size, size), [{"ypix": ys, "xpix": xs} for ys, xs in masks])
    reference = np.random.default_rng(2).uniform(50.0, 150.0, (size, size)).astype(np.float32)
    decoder = DecoderSettings(min_trials_per_side=3, trials_kept_per_side=trials_kept_per_side,
                              split_repeats=2)
    config = PipelineConfig(OnlineSettings(decoder=decoder), frame_rate_hz=10.0, measure_frame_rate=False)
    pipeline = OnlinePipeline(config, rois=rois, reference=reference, session="s")
    for index in range(20):  # initialises on the first usable frames, with the given reference and ROIs
        if pipeline.ready:
            break
        frame = FrameHeader(index, index, 0.1 * index, 0.0, 1, 0, 0, size, size, "<f4", 0)
        pipeline.process_frame(frame, reference)
    assert pipeline.ready
    return pipeline, reference


def test_the_pipeline_keeps_a_bounded_number_of_trials_through_thousands_of_trial_ends() -> None:
    pipeline, image = _pipeline(trials_kept_per_side=KEPT)
    assert pipeline.trials is not None
    n = pipeline.n_rois
    rng = np.random.default_rng(1)
    states = {"TrigTrialStart": [[0.0, 0.01]], "SamplePeriod": [[0.01, 1.31]], "DelayPeriod": [[1.31, 2.61]],
              "ResponseCue": [[2.61, 2.71]], "AnswerPeriod": [[2.71, 3.0]], "Reward": [[3.0, 3.03]]}
    times = np.arange(0.05, 4.2, 0.1)
    for trial in range(2, 1202):
        side = "right" if trial % 2 else "left"
        header = FrameHeader(100 + trial, 0, 0.0, 0.0, trial, 0, 0, SIZE, SIZE, "<f4", 0)
        pipeline.process_frame(header, image)  # one real frame per trial: the pipeline sees the trial
        frames = pipeline.trials.trial(trial)  # the rest as the frame path fills it, without rendering
        for t in times:
            frames.add(float(t), rng.normal(0.3 if side == "right" else -0.3, 1.0, n))
        pipeline.on_state({"trial": trial, "state": "DelayPeriod", "time_s": 1.31})
        pipeline.on_trial_start({"trial": trial, "context": f"ctx{trial % 3}"})
        pipeline.on_trial_end({"trial": trial, "context": f"ctx{trial % 3}", "side": side,
                               "licked_side": side, "outcome": "hit", "bpod": {"States": states}})
    pipeline.flush()
    assert pipeline.stats.trials_finalised == 1200
    assert len(pipeline.trials) <= pipeline.config.trials_kept  # the one trial that was never ended
    assert len(pipeline.decoders) == 3
    for decoder in pipeline.decoders.values():
        for epoch in ("sample", "delay", "response"):
            assert decoder.n_trials("right", epoch) == decoder.n_trials("left", epoch) == KEPT
    assert len(pipeline.trial_stage._finalised) <= 1000 and len(pipeline.trial_stage._contexts) <= 64


def test_continuous_alignment_keeps_a_bounded_number_of_trigger_edges() -> None:
    aligner: ContinuousAligner[int] = ContinuousAligner(first_trial=1, edges_kept=32)
    period, per_trial = 0.1, 20
    placed = []
    for index in range(3000 * per_trial):
        t = index * period
        aux = (t,) if index % per_trial == 0 else ()
        placed += aligner.add_frame(index, t, aux, index)
    assert len(aligner.edges) <= 32
    last = placed[-1]
    assert last.trial == 3000 and last.time_s == pytest.approx((per_trial - 1) * period)
    assert aligner.trigger_of(3000) == pytest.approx((3000 - 1) * per_trial * period)
    assert aligner.trigger_of(5) is None  # forgotten, not made up
