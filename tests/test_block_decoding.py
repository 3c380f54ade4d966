"""Decoding as the paper does it, on hand-made numbers: the LDA CD, balanced accuracy, the similarity of
two blocks with its split-half ceiling, the reliability filter; and, in the trial stage, a decoder per
block (1 and 1' apart), gated trials never trained on, similarities published with their ceilings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from online.config import PipelineConfig
from online.decoding import (
    Boundary,
    CodingDirection,
    CodingDirectionStore,
    ContextDecoder,
    DecoderConfig,
    EpochData,
    EpochFeature,
    accuracy,
    lda_cd,
    train,
)
from online.decoding.batch import block_similarity, half_cds, masked_vector, split_halves
from online.decoding.reliability import reliable_neurons, split_half_reliability
from online.errors import MalformedInput
from online.pipeline import OnlinePipeline
from online.settings import DecoderSettings, OnlineSettings
from online.trial_stage import Prospective, TrialOutcome, TrialStage

# -- the paper's LDA CD, by hand --------------------------------------------------------------------------

# two trials per side, two bins of the window, two neurons (trials x bins x neurons)
RIGHT = np.array([[[3.0, 0.0], [0.0, 5.0]], [[1.0, 0.0], [0.0, 3.0]]])
LEFT = np.array([[[0.0, 1.0], [1.0, 0.0]], [[0.0, -1.0], [-1.0, 0.0]]])


def _kd_lda2_axis(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """KD_LDA2 read literally: first right singular vector of pinv(W) B, signed so right projects above."""
    x = np.vstack([left, right])
    x = x - x.mean(axis=0)
    total = x.T @ x
    within = sum(((z := part - part.mean(axis=0)).T @ z) for part in (left, right))
    _, _, vt = np.linalg.svd(np.linalg.pinv(within) @ (total - within))
    v = vt[0]
    return v * np.sign((right @ v).mean() - (left @ v).mean())


def test_the_lda_cd_is_the_mean_of_the_per_bin_axes_as_computed_by_hand() -> None:
    # bin 0: right mean (2, 0), left mean (0, 0): axis (1, 0); bin 1: (0, 4) vs (0, 0): axis (0, 1).
    for b, axis in enumerate(([1.0, 0.0], [0.0, 1.0])):
        np.testing.assert_allclose(_kd_lda2_axis(RIGHT[:, b], LEFT[:, b]), axis, atol=1e-12)
    # averaged (0.5, 0.5), then Gram-Schmidt against the singular vectors leaves it as the first vector
    expected = np.array([1.0, 1.0]) / np.sqrt(2)
    result = lda_cd(RIGHT, LEFT)
    np.testing.assert_allclose(result.vector, expected, atol=1e-12)
    np.testing.assert_allclose(result.basis @ result.basis.T, np.eye(len(result.basis)), atol=1e-12)
    # the classic CD of the same trials is the window's mean difference (1, 2) / sqrt(5): another vector
    data = EpochData(RIGHT.mean(axis=1), LEFT.mean(axis=1), RIGHT, LEFT)
    np.testing.assert_allclose(train(data, "c", method="classic").vector, np.array([1, 2]) / np.sqrt(5))
    cd = train(data, "c", method="lda")
    # window-mean projections: right 4/sqrt2 and 2/sqrt2 (var 1), left +-1/sqrt2 (var 1): DB = 1.5/sqrt2
    assert cd.boundary.mu_right == pytest.approx(3 / np.sqrt(2)) and cd.boundary.mu_left == pytest.approx(0)
    assert cd.boundary.var_right == pytest.approx(1.0) and cd.boundary.var_left == pytest.approx(1.0)
    assert cd.boundary.value == pytest.approx(1.5 / np.sqrt(2))
    # the online decoder, by default, computes the same CD from its running sums
    decoder = ContextDecoder("c", 2, DecoderConfig(DecoderSettings(min_trials_per_side=2), bin_s=0.3))
    assert decoder.config.method == "lda"
    for side, trials in (("right", RIGHT), ("left", LEFT)):
        for bins in trials:
            n = decoder.windows["delay"].n_bins(0.3)
            decoder.add_features(side, {"delay": EpochFeature(bins.mean(axis=0), bins[:n])})
    np.testing.assert_allclose(decoder.coding_direction("delay").vector, expected, atol=1e-12)


def test_half_cds_are_the_cds_of_their_halves() -> None:
    rng = np.random.default_rng(4)
    data = EpochData(rng.normal(1, 1, (12, 5)), rng.normal(0, 1, (9, 5)), rng.normal(1, 1, (12, 3, 5)),
                     rng.normal(0, 1, (9, 3, 5)))
    for method in ("classic", "lda"):
        first, second = half_cds(data, (5, 4), method, n_repeats=3, seed=np.random.default_rng(0))
        assert first.shape == second.shape == (3, 5)
        np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0)
    a, b = split_halves(data, np.random.default_rng(0), (5, 4))
    assert (a.n_right, a.n_left, b.n_right, b.n_left) == (5, 4, 5, 4)
    with pytest.raises(ValueError, match="at least 10 trials"):
        split_halves(data, np.random.default_rng(0), (5, 5))
    mask = np.array([True, True, False, True, False])
    v = masked_vector(data, "lda", mask)
    assert np.all(v[~mask] == 0) and np.linalg.norm(v) == pytest.approx(1.0)


# -- balanced accuracy ------------------------------------------------------------------------------------


def test_accuracy_is_balanced_so_calling_every_trial_right_scores_chance() -> None:
    always_right = CodingDirection(np.array([1.0]), Boundary(1.0, 0.0, 1.0, 1.0, -100.0), "c")
    data = EpochData(np.ones((9, 1)), np.zeros((1, 1)))  # 9 right trials, 1 left: pooled would be 0.9
    assert accuracy(always_right, data) == 0.5
    fair = CodingDirection(np.array([1.0]), Boundary(1.0, 0.0, 1.0, 1.0, 0.5), "c")
    data = EpochData(np.array([[1.0]] * 8 + [[0.0]] * 2), np.array([[0.0]]))  # right 8/10, left 1/1
    assert accuracy(fair, data) == pytest.approx(0.9)  # pooled: 9/11
    live = Prospective()
    for side, right in [("right", True)] * 9 + [("left", False)]:
        live.add(side, right)
    assert live.balanced_accuracy == 0.5 and live.correct / live.decoded == 0.9


# -- similarity with its ceiling ----------------------------------------------------------------------------


def _block(pattern: np.ndarray, n: int, rng: np.random.Generator, noise: float = 1.0) -> EpochData:
    """n trials per side: right = +pattern, left = -pattern, in every one of 4 bins, plus noise."""
    bins = pattern.size
    right = pattern + noise * rng.standard_normal((n, 4, bins))
    left = -pattern + noise * rng.standard_normal((n, 4, bins))
    return EpochData(right.mean(axis=1), left.mean(axis=1), right, left)


def test_block_similarity_compares_equal_halves_and_carries_the_ceiling() -> None:
    rng = np.random.default_rng(2)
    n_neurons = 60
    pattern_1 = 0.3 * rng.standard_normal(n_neurons)
    pattern_2 = 0.3 * rng.standard_normal(n_neurons)
    pattern_2 -= (pattern_2 @ pattern_1) / (pattern_1 @ pattern_1) * pattern_1  # a new, unrelated pattern
    block_1, block_1b = _block(pattern_1, 80, rng, 2.0), _block(pattern_1, 30, rng, 2.0)  # 1, 1' (fewer)
    block_2 = _block(pattern_2, 80, rng, 2.0)
    same = block_similarity(block_1, block_1b, "lda", n_repeats=10)
    other = block_similarity(block_1, block_2, "lda", n_repeats=10)
    assert (same.n_right, same.n_left) == (15, 15)  # the smaller block's half, on both sides
    assert (other.n_right, other.n_left) == (40, 40)
    # halves of 15 trials are noisy: the ceiling is well below 1, and the same pattern reaches it
    assert 0.2 < same.ceiling < 0.9 and same.dot == pytest.approx(same.ceiling, abs=0.15)
    assert abs(other.dot) < 0.15 < other.ceiling - 0.3
    assert set(same.to_dict()) == {"dot", "ceiling", "ceiling_a", "ceiling_b", "n_right", "n_left"}


# -- the reliability filter ---------------------------------------------------------------------------------


def test_the_reliability_filter_drops_noise_neurons() -> None:
    rng = np.random.default_rng(3)
    n_trials, n_bins, signal, noise = 60, 8, 10, 10
    t = np.linspace(0, 1, n_bins)
    shape = np.outer(np.sin(3 * t) + t, rng.uniform(0.5, 1.5, signal))  # a time course per side
    right = np.concatenate([shape + 0.5 * rng.standard_normal((n_trials, n_bins, signal)),
                            rng.standard_normal((n_trials, n_bins, noise))], axis=2)
    left = np.concatenate([0.3 * shape + 0.5 * rng.standard_normal((n_trials, n_bins, signal)),
                           rng.standard_normal((n_trials, n_bins, noise))], axis=2)
    data = EpochData(right.mean(axis=1), left.mean(axis=1), right, left)
    r = split_half_reliability([data])
    assert np.all(r[:signal] > 0.8) and np.all(r[signal:] < 0.5)
    mask = reliable_neurons([data], 0.5)
    assert mask.tolist() == [True] * signal + [False] * noise
    filtered = ContextDecoder("c", signal + noise, DecoderConfig(
        DecoderSettings(min_trials_per_side=5, reliability_min_r=0.5), bin_s=0.1))
    for side, trials in (("right", right), ("left", left)):
        for bins in trials:
            filtered.add_features(side, {e: EpochFeature(bins.mean(axis=0), bins[:n]) for e, n in
                                         ((e, w.n_bins(0.1)) for e, w in filtered.windows.items())
                                         if n <= n_bins})
    cd = filtered.coding_direction("delay")
    assert np.all(cd.vector[signal:] == 0) and np.all(cd.vector[:signal] != 0)
    assert filtered.neuron_mask().tolist() == mask.tolist()  # type: ignore[union-attr]


# -- the trial stage: per block, gated trials ---------------------------------------------------------------

STATES = {"TrigTrialStart": [[0.0, 0.01]], "SamplePeriod": [[0.01, 1.01]], "DelayPeriod": [[1.01, 2.01]],
          "ResponseCue": [[2.01, 2.11]], "AnswerPeriod": [[2.11, 2.3]], "Reward": [[2.3, 2.33]]}
PATTERNS = {"tactile": np.array([1.0, -1.0, 0.0, 0.0]), "auditory": np.array([0.0, 0.0, 1.0, -1.0])}


def _run_trial(stage: TrialStage, trial: int, context: str, block: str, rng: np.random.Generator,
               gated: bool = False) -> list[TrialOutcome]:
    side = "right" if trial % 2 else "left"
    sign = 1.0 if side == "right" else -1.0
    stage.set_context(trial, context, block, gated)
    for k in range(37):  # 0-3.6 s: past the response window
        stage.add_frame(trial, k * 0.1, 0.5 + sign * PATTERNS[context] + 0.3 * rng.standard_normal(4))
    record = {"trial": trial, "context": context, "block": None, "block_label": block, "side": side,
              "outcome": "hit", "bpod": {"States": STATES},
              "closed_loop": {"gated": True} if gated else None}
    return stage.end(trial, context, record, now=0.0)


def test_a_return_to_a_context_gets_its_own_decoder_and_is_compared_with_its_ceiling() -> None:
    stage = TrialStage("s")
    stage.start(4, DecoderConfig(DecoderSettings(min_trials_per_side=4, split_repeats=4), bin_s=0.1), "rois")
    rng = np.random.default_rng(5)
    outcomes: list[TrialOutcome] = []
    trial = 0
    for context, block in (("tactile", "1"), ("auditory", "2"), ("tactile", "1'")):
        for _ in range(12):
            trial += 1
            outcomes += _run_trial(stage, trial, context, block, rng)
    assert list(stage.decoders) == ["1", "2", "1'"]
    assert stage.decoders["1"].n_trials("right") == stage.decoders["1'"].n_trials("right") == 6  # apart
    assert stage.decoders["1'"].block == "1'" and stage.decoders["1'"].context == "tactile"
    last = outcomes[-1]
    assert last.block == "1'" and last.trials_per_side == {"left": 6, "right": 6}
    assert set(last.accuracy) == {"1", "2", "1'"}
    sims = last.similarity["delay"]
    assert set(sims) == {"s/1", "s/2"}
    assert sims["s/1"]["dot"] > 0.8 * sims["s/1"]["ceiling"] and abs(sims["s/2"]["dot"]) < 0.3
    assert sims["s/1"]["n_right"] == 3 and last.ceiling["delay"] > 0.8
    assert stage.cd_store.get("s", "1'") is not None and stage.cd_store.halves("s", stage.cd_store.get(
        "s", "1'")) is not None  # type: ignore[arg-type]
    assert stage.pooled("tactile").n_right == 12  # both tactile blocks together, where asked
    running = stage.cd_for_trial(trial)
    assert running is not None and running[0] == "tactile" and running[1].block == "1'"


def test_decoder_gated_trials_are_decoded_but_never_trained_on() -> None:
    stage = TrialStage("s")
    stage.start(4, DecoderConfig(DecoderSettings(min_trials_per_side=3, split_repeats=2), bin_s=0.1), "rois")
    rng = np.random.default_rng(6)
    first = _run_trial(stage, 1, "tactile", "1", rng, gated=True)  # no decoder yet: it could not gate
    assert first[0].gated and first[0].trained_epochs
    for trial in range(2, 9):
        _run_trial(stage, trial, "tactile", "1", rng)
    assert stage.decoders["1"].ready()
    before = {s: stage.decoders["1"].n_trials(s) for s in ("left", "right")}
    gated = [o for trial in range(9, 15) for o in _run_trial(stage, trial, "tactile", "1", rng, gated=True)]
    assert {s: stage.decoders["1"].n_trials(s) for s in ("left", "right")} == before  # nothing learned
    assert all(o.gated and o.decode is not None and not o.trained_epochs for o in gated)
    assert all("gated" in (o.training_skipped or "") for o in gated)
    last = gated[-1]
    assert last.prospective_gated["1"].decoded == 6 and last.prospective["1"].decoded == 8 - 6
    assert stage.decoders["1"].ready()
    # the start message alone says so too (a record from a rig that does not write closed_loop)
    stage.set_context(15, "tactile", "1", gated=True)
    for k in range(37):
        stage.add_frame(15, k * 0.1, 0.5 + PATTERNS["tactile"] + 0.3 * rng.standard_normal(4))
    (out,) = stage.end(15, "tactile", {"trial": 15, "context": "tactile", "block_label": "1", "side": "right",
                                       "outcome": "hit", "bpod": {"States": STATES}}, now=0.0)
    assert out.gated and not out.trained_epochs


def test_a_block_of_an_earlier_session_is_compared_through_its_stored_half_cds() -> None:
    config = DecoderConfig(DecoderSettings(min_trials_per_side=4, split_repeats=4), bin_s=0.1)
    rng = np.random.default_rng(7)
    day_1 = TrialStage("d1")
    day_1.start(4, config, "rois")
    trial = 0
    for context, block in (("tactile", "1"), ("auditory", "2")):
        for _ in range(12):
            trial += 1
            _run_trial(day_1, trial, context, block, rng)
    saved = json.loads(json.dumps(day_1.cd_store.to_dict()))  # coding_directions.json
    day_2 = TrialStage("d2", CodingDirectionStore.from_dict(saved))
    day_2.start(4, config, "rois")
    outcomes = [o for t in range(1, 13) for o in _run_trial(day_2, t, "tactile", "1'", rng)]
    sims = outcomes[-1].similarity["delay"]
    assert set(sims) == {"d1/1", "d1/2"}
    assert sims["d1/1"]["dot"] > 0.8 * sims["d1/1"]["ceiling"] and abs(sims["d1/2"]["dot"]) < 0.3
    assert (sims["d1/1"]["n_right"], sims["d1/1"]["n_left"]) == (3, 3)  # the stored halves' counts
    old = CodingDirectionStore.from_dict({"coding_directions": [  # written before halves existed: skipped
        {k: v for k, v in e.items() if k != "halves"} for e in saved["coding_directions"]]})
    day_3 = TrialStage("d3", old)
    day_3.start(4, config, "rois")
    outcomes = [o for t in range(1, 13) for o in _run_trial(day_3, t, "tactile", "1''", rng)]
    assert outcomes[-1].similarity["delay"] == {}


def test_the_pipeline_takes_the_block_and_the_gate_from_the_trial_start() -> None:
    pipeline = OnlinePipeline(PipelineConfig(OnlineSettings(), frame_rate_hz=10.0))
    stage = pipeline.trial_stage
    start = {"trial": 1, "context": "tactile", "block": 3, "block_label": "1'", "gated": True}
    pipeline.on_trial_start(start)
    assert stage.decoder_key_for(1) == "1'" and stage.context_for(1) == "tactile"
    pipeline.on_trial_start({"trial": 2, "context": "tactile"})  # a rig that sends no block: per context
    assert stage.decoder_key_for(2) == "tactile"
    for bad in ("", 3):
        with pytest.raises(MalformedInput, match="block_label"):
            pipeline.on_trial_start({"trial": 3, "context": "tactile", "block_label": bad})
