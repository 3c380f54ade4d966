"""Coding directions and decoding of the upcoming lick, on hand-made numbers and on the simulated rig.

The simulated sessions use the microscope's ground-truth dF/F (not pixels), so these tests do not depend on
registration or trace extraction. Sessions are simulated once per module at 10 Hz (bins of one frame)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pytest

from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from online.alignment import AlignedTrials, LoopAligner, TrialFrames
from online.decoding import (
    Boundary,
    CodingDirection,
    CodingDirectionStore,
    ContextDecoder,
    DecoderConfig,
    DecoderNotReady,
    EpochData,
    RunningProjection,
    cd_similarity,
    classic_cd,
    cross_decoding_matrix,
    decision_boundary,
    decoding_accuracy,
    fisher_lda_direction,
    gram_schmidt,
    lda_cd,
    split_half_similarity,
    train,
    trial_features,
)
from online.settings import DecoderSettings
from tests.timelines import trial_timeline

log = logging.getLogger(__name__)

RATE = 10.0
DT = 1 / RATE
N_NEURONS = 100
TRIAL_PERIOD_S = 5.5
ROI_SET = "sim-fov-1"


# -- simulated sessions ---------------------------------------------------------------------------------


@dataclass
class Session:
    sim: SimMicroscope
    decoder: ContextDecoder
    correct: list[tuple[str, TrialFrames]]
    n_trials: int


def simulate(context: str, trial_seed: int, n_trials: int = 110, lead_s: float = 1.0) -> Session:
    """One imaging session of one context: loop mode, 90 % correct choices, correct trials to the decoder.

    The neurons depend only on the microscope seed (0 everywhere); `trial_seed` draws the trial sequence
    and `lead_s` shifts the noise stream, so two sessions of a context share neurons but not noise."""
    sim = SimMicroscope(MicroscopeConfig(height=32, width=32, n_neurons=N_NEURONS, frame_rate_hz=RATE, seed=0,
                                         motion_px=0.0, context_overlap=0.0))
    rng = np.random.default_rng(trial_seed)
    aligner = LoopAligner(frame_offset_s=DT / 2)  # a frame at its centre
    trials = AlignedTrials(N_NEURONS)
    # about 50 correct trials per side: fewer than the default 50 on one side
    config = DecoderConfig(DecoderSettings(min_trials_per_side=10), bin_s=DT)
    decoder = ContextDecoder(context, N_NEURONS, config, roi_set_id=ROI_SET)
    correct = []
    t = lead_s
    for _ in range(n_trials):
        side = str(rng.choice(["left", "right"]))
        lick = side if rng.random() < 0.9 else ("left" if side == "right" else "right")
        # licks early enough that every window fits the acquisition
        states, events = trial_timeline(rng, 0.15, (0.2, 0.6), reward=False)
        states["Reward" if lick == side else "TimeOut"] = [[states["AnswerPeriod"][0][1]] * 2]
        number = sim.start_trial(t, context, lick)  # the population prepares the lick it will make
        for name, at in events:
            sim.mark_epoch(t + at, name)
        for f in sim.frames_until(t + TRIAL_PERIOD_S):
            trials.add_frame(aligner.align(f.acquisition, f.timestamp_s, f.trigger_timestamp_s, f.truth.dff))
        trials.set_record(number, states)
        frames = trials.pop(number)
        assert frames is not None
        if lick == side:
            decoder.add_trial(side, frames)
            correct.append((side, frames))
        t += TRIAL_PERIOD_S
    return Session(sim, decoder, correct, n_trials)


@pytest.fixture(scope="module")
def sessions() -> dict[str, Session]:
    t0 = time.perf_counter()
    out = {"A": simulate("tactile", 1), "B": simulate("auditory", 2),
           "A2": simulate("tactile", 3, lead_s=1.37)}  # context 1 again: same neurons, new noise
    log.info("simulated 3 sessions in %.1f s", time.perf_counter() - t0)
    return out


# -- on the simulated rig ---------------------------------------------------------------------------------


def test_sessions_have_about_100_correct_trials_all_usable(sessions: dict[str, Session]) -> None:
    for s in sessions.values():
        d = s.decoder
        assert 90 <= len(s.correct) <= s.n_trials
        assert d.n_trials("right") + d.n_trials("left") == len(s.correct)
        assert d.skipped == {"sample": 0, "delay": 0, "response": 0}
        assert d.ready("delay") and "ready" in d.status()


@pytest.mark.parametrize("method", ["classic", "lda"])
def test_delay_decoding_accuracy_on_held_out_correct_trials_is_at_least_90_percent(
        sessions: dict[str, Session], method: str) -> None:
    acc = sessions["A"].decoder.accuracy("delay", method, n_repeats=10, seed=0)
    log.info("delay decoding accuracy (%s): %.3f", method, acc)
    assert acc >= 0.9


@pytest.mark.parametrize("method", ["classic", "lda"])
@pytest.mark.parametrize("epoch", ["sample", "delay", "response"])
def test_cd_matches_the_simulators_ground_truth(sessions: dict[str, Session], method: str,
                                                epoch: str) -> None:
    s = sessions["A"]
    cd = s.decoder.coding_direction(epoch, method)
    cosine = cd_similarity(cd, s.sim.coding_direction("tactile", epoch))
    log.info("%s %s CD vs ground truth: cosine %.3f", epoch, method, cosine)
    assert cosine >= 0.9
    assert cd.boundary.mu_right > cd.boundary.mu_left  # right projects above left


def test_textbook_eigenvector_lda_decodes_but_is_a_noisy_direction(sessions: dict[str, Session]) -> None:
    """pinv(W) d with ~100 trials for 100 neurons: separates the training classes, poorly estimates the CD."""
    d = sessions["A"].decoder
    cd = d.coding_direction("delay", "lda_eigenvector")
    cosine = cd_similarity(cd, sessions["A"].sim.coding_direction("tactile"))
    acc = d.accuracy("delay", "lda_eigenvector", n_repeats=3)
    log.info("eigenvector LDA: cosine with ground truth %.3f, held-out accuracy %.3f", cosine, acc)
    assert acc >= 0.8
    paper = cd_similarity(d.coding_direction("delay", "lda"), sessions["A"].sim.coding_direction("tactile"))
    assert cosine < paper


@pytest.mark.parametrize("method", ["classic", "lda"])
def test_cd_similarity_new_context_near_zero_same_context_across_sessions_near_one(
        sessions: dict[str, Session], method: str) -> None:
    a, b, a2 = (sessions[k].decoder.coding_direction("delay", method) for k in ("A", "B", "A2"))
    truth = cd_similarity(sessions["A"].sim.coding_direction("tactile"),
                          sessions["A"].sim.coding_direction("auditory"))
    across_contexts, across_sessions = cd_similarity(a, b), cd_similarity(a, a2)
    ceiling = sessions["A"].decoder.split_half_similarity("delay", method, n_repeats=5)
    log.info("%s: A.B %.3f (truth %.3f), A.A2 %.3f, split-half ceiling %.3f", method, across_contexts, truth,
             across_sessions, ceiling)
    assert abs(across_contexts) < 0.3 and across_contexts == pytest.approx(truth, abs=0.1)
    assert across_sessions > 0.8
    assert ceiling > 0.8 and across_sessions <= ceiling + 0.05


def test_cross_decoding_matrix(sessions: dict[str, Session]) -> None:
    contexts = cross_decoding_matrix([sessions["A"].decoder, sessions["B"].decoder], n_repeats=5, seed=1)
    log.info("cross-decoding A/B:\n%s", np.round(contexts, 3))
    assert contexts.shape == (2, 2)
    assert min(contexts[0, 0], contexts[1, 1]) > max(contexts[0, 1], contexts[1, 0])
    every = cross_decoding_matrix({k: s.decoder for k, s in sessions.items()}, n_repeats=3)
    assert every.shape == (3, 3)
    assert every[0, 2] >= 0.9 and every[2, 0] >= 0.9  # the same context, another session
    again = cross_decoding_matrix({k: s.decoder for k, s in sessions.items()}, n_repeats=3)
    np.testing.assert_array_equal(every, again)  # seeded


def test_running_projection_equals_the_batch_projection_of_the_window(sessions: dict[str, Session]) -> None:
    decoder = sessions["A"].decoder
    cd = decoder.coding_direction()
    window = decoder.windows["delay"]
    for _, trial in sessions["A"].correct[:10]:
        running = RunningProjection(cd)  # reset at the window start, cumulative over its frames
        times, activity = trial.window_frames(window.start_s, window.stop_s, window.anchor)
        for t, row in zip(times, activity, strict=True):
            running.add(t, row)
        batch = decoder.decode_trial(trial)
        assert running.value == pytest.approx(batch.projection, rel=1e-9, abs=1e-12)
        expected = (batch.side, pytest.approx(batch.confidence), pytest.approx(batch.projection))
        assert running.decode() == expected
        assert decoder.decode_trial(trial.mean_in(window)) == batch
        assert decoder.decode_trial(activity).projection == pytest.approx(batch.projection)
    # The sliding default: the epoch window's length over the newest frames.
    sliding = decoder.running_projection()
    assert sliding.window_s == pytest.approx(decoder.config.settings.delay_window_s)


def test_running_projection_costs_microseconds_per_frame(sessions: dict[str, Session]) -> None:
    running = sessions["A"].decoder.running_projection()
    rows = np.asarray(sessions["A"].correct[0][1].activity, dtype=np.float32)
    t0 = time.perf_counter()
    for k in range(2000):
        running.add(k * DT, rows[k % len(rows)])
    per_frame_us = (time.perf_counter() - t0) / 2000 * 1e6
    log.info("running projection: %.2f us per frame (%d neurons)", per_frame_us, N_NEURONS)
    assert per_frame_us < 200  # generous: a shared CI machine; typically a few microseconds
    assert running.n_frames == round(running.window_s / DT)


def test_store_keeps_cds_as_json_and_recognises_the_returning_context(sessions: dict[str, Session]) -> None:
    store = CodingDirectionStore("JH160")
    store.put("2025-01-01_100000", sessions["A"].decoder.coding_direction())
    store.put("2025-02-01_100000", sessions["B"].decoder.coding_direction())
    store.put("2025-02-01_100000", sessions["B"].decoder.coding_direction("sample"))
    text = json.dumps(store.to_dict())  # plain data for subject.json
    back = CodingDirectionStore.from_dict(json.loads(text))
    assert len(back) == 3 and back.subject == "JH160"
    stored = back.get("2025-01-01_100000", "tactile")
    assert stored is not None and stored.roi_set_id == ROI_SET and stored.n_neurons == N_NEURONS
    np.testing.assert_allclose(stored.vector, sessions["A"].decoder.coding_direction().vector)
    live = sessions["A2"].decoder.coding_direction()  # months later, context 1 again
    ranking = back.compare(live)
    assert [r.context for r in ranking] == ["tactile", "auditory"]  # delay CDs only, best first
    assert ranking[0].dot > 0.8 and abs(ranking[1].dot) < 0.3
    other = CodingDirection(live.vector, live.boundary, "tactile", roi_set_id="another-fov")
    assert back.compare(other) == []  # other neurons: nothing to compare with
    with pytest.raises(ValueError, match="different ROI sets"):
        cd_similarity(other, stored)


# -- incremental = batch, readiness -----------------------------------------------------------------------


def test_incremental_updates_equal_the_batch_results(sessions: dict[str, Session]) -> None:
    decoder = ContextDecoder("tactile", N_NEURONS, DecoderConfig(DecoderSettings(min_trials_per_side=10),
                                                                 bin_s=DT), roi_set_id=ROI_SET)
    correct = sessions["A"].correct
    for k, (side, trial) in enumerate(correct):
        decoder.add_trial(side, trial)
        if k in (30, len(correct) - 1) and decoder.ready():
            decoder.coding_direction()  # a cached CD must be refreshed by the next update
    features = [(side, trial_features(trial, decoder.config)["delay"]) for side, trial in correct]
    batch = EpochData(np.array([f.mean for s, f in features if s == "right"]),
                      np.array([f.mean for s, f in features if s == "left"]),
                      np.array([f.bins for s, f in features if s == "right"]),
                      np.array([f.bins for s, f in features if s == "left"]))
    for method in ("classic", "lda", "lda_eigenvector"):
        online, offline = decoder.coding_direction("delay", method), train(batch, "tactile", method=method)
        np.testing.assert_allclose(online.vector, offline.vector, atol=1e-10)
        for name in ("mu_right", "mu_left", "var_right", "var_left", "value"):
            assert getattr(online.boundary, name) == pytest.approx(getattr(offline.boundary, name), rel=1e-9)
        fed_live = sessions["A"].decoder.coding_direction("delay", method)  # built while simulating
        np.testing.assert_allclose(online.vector, fed_live.vector, atol=1e-10)
    np.testing.assert_allclose(decoder.coding_direction("delay", "lda").vector,
                               lda_cd(batch.right_bins, batch.left_bins).vector, atol=1e-10)
    right_avg, left_avg = decoder.trial_average()
    np.testing.assert_allclose(right_avg, batch.right_bins.mean(axis=0))
    assert decoder.accuracy() == decoding_accuracy(batch, "lda")  # the default method, 10 repeats


def test_the_cd_method_of_the_settings_is_the_one_the_decoder_uses(sessions: dict[str, Session]) -> None:
    few = {"min_trials_per_side": 10}
    classic = ContextDecoder("tactile", N_NEURONS, DecoderConfig(DecoderSettings(cd_method="classic", **few),
                                                                 bin_s=DT))
    lda = ContextDecoder("tactile", N_NEURONS, DecoderConfig(DecoderSettings(**few), bin_s=DT))
    for side, trial in sessions["A"].correct:
        classic.add_trial(side, trial)
        lda.add_trial(side, trial)
    assert DecoderSettings().cd_method == "lda" and classic.coding_direction().method == "classic"
    cd = lda.coding_direction()
    assert cd.method == "lda"
    np.testing.assert_allclose(cd.vector, classic.coding_direction("delay", "lda").vector, atol=1e-12)
    assert not np.allclose(cd.vector, classic.coding_direction().vector)
    assert DecoderSettings().min_trials_per_side == 50  # the paper's sessions have at least 50 per side
    assert lda.decode_trial(sessions["A"].correct[0][1]) == cd.decode(
        sessions["A"].correct[0][1].mean_in(lda.windows["delay"]))


def test_too_few_trials_is_not_ready_rather_than_a_bogus_decode(sessions: dict[str, Session]) -> None:
    config = DecoderConfig(DecoderSettings(min_trials_per_side=10), bin_s=DT)
    decoder = ContextDecoder("tactile", N_NEURONS, config)
    rights = [t for s, t in sessions["A"].correct if s == "right"]
    lefts = [t for s, t in sessions["A"].correct if s == "left"]
    for trial in rights[:12] + lefts[:9]:
        decoder.add_trial("right" if trial in rights else "left", trial)
    assert not decoder.ready()
    with pytest.raises(DecoderNotReady, match="not ready .*10 correct trials per side.*12 right, 9 left"):
        decoder.decode_trial(rights[20])
    with pytest.raises(DecoderNotReady):
        decoder.running_projection()
    with pytest.raises(DecoderNotReady):
        decoder.accuracy()
    decoder.add_trial("left", lefts[9])
    assert decoder.ready()
    assert decoder.decode_trial(rights[20]).side == "right"
    assert decoder.decode_trial(lefts[20]).side == "left"


def test_trials_that_do_not_cover_a_window_are_skipped_for_that_epoch() -> None:
    decoder = ContextDecoder("tactile", 2, DecoderConfig(bin_s=0.1))
    trial = TrialFrames(1, 2)
    trial.epochs.enter("SamplePeriod", 0.01)
    for t in np.arange(0, 1.2, 0.1):  # frames stop before the delay window; no go cue known
        trial.add(t, np.ones(2))
    assert decoder.add_trial("right", trial) == ["sample"]
    assert decoder.skipped == {"sample": 0, "delay": 1, "response": 1}
    with pytest.raises(ValueError, match="side must be"):
        decoder.add_trial("up", trial)


# -- hand-made numbers ------------------------------------------------------------------------------------


def test_decision_boundary_is_the_inverse_variance_weighted_mean_of_the_class_means() -> None:
    assert decision_boundary(2.0, 1.0, -1.0, 4.0) == pytest.approx((2 / 1 - 1 / 4) / (1 / 1 + 1 / 4))  # 1.4
    assert decision_boundary(3.0, 2.0, 1.0, 2.0) == pytest.approx(2.0)  # equal variances: the midpoint
    assert decision_boundary(1.0, 0.0, -1.0, 0.0) == pytest.approx(0.0)  # no spread: still finite
    b = Boundary.fit(np.array([1.0, 2.0, 3.0]), np.array([-3.0, -1.0, 1.0, 3.0]))
    assert (b.mu_right, b.var_right, b.mu_left) == pytest.approx((2.0, 1.0, 0.0))
    assert b.var_left == pytest.approx(np.var([-3.0, -1.0, 1.0, 3.0], ddof=1))  # MATLAB std^2
    assert b.value == pytest.approx(decision_boundary(2.0, 1.0, 0.0, b.var_left))
    with pytest.raises(ValueError, match="at least 2 trials"):
        Boundary.fit(np.array([1.0]), np.array([0.0, 1.0]))


def test_confidence_is_half_on_the_boundary_and_rises_with_distance() -> None:
    b = Boundary(mu_right=1.0, mu_left=-1.0, var_right=0.5, var_left=0.5, value=0.0)
    distances = np.linspace(0, 3, 31)
    right = [b.confidence(d) for d in distances]
    left = [b.confidence(-d) for d in distances]
    assert right[0] == 0.5 and right == left
    assert all(np.diff(right) > 0) and right[-1] < 1.0
    # The logistic posterior of two Gaussians: log-odds = (muR - muL) / s^2 * distance.
    assert b.confidence(0.25) == pytest.approx(1 / (1 + math.exp(-2.0 / 0.5 * 0.25)))
    assert b.decode(0.3) == ("right", pytest.approx(b.confidence(0.3)), 0.3)
    assert b.decode(-0.3).side == "left" and b.decode(0.0).side == "left"


def test_classic_and_accuracy_on_hand_made_trials() -> None:
    right = np.array([[2.0, 0.0], [4.0, 1.0], [3.0, 2.0]])
    left = np.array([[-1.0, 0.0], [1.0, 2.0], [0.0, 1.0]])
    np.testing.assert_allclose(classic_cd(right, left), [1.0, 0.0])
    cd = train(EpochData(right, left), "tactile")
    assert cd.boundary.value == pytest.approx(1.5)  # means 3 and 0, equal variances
    assert cd.decode(np.array([2.0, 5.0])).side == "right"
    data = EpochData(np.tile(right, (4, 1)) + 0.01 * np.arange(12)[:, None], np.tile(left, (4, 1)))
    assert decoding_accuracy(data, n_repeats=4) == 1.0
    assert split_half_similarity(data, n_repeats=4) > 0.95


def test_lda_axes_are_the_right_singular_vector_and_the_eigenvector_of_pinv_w_b() -> None:
    rng = np.random.default_rng(0)
    for n_trials, n_neurons in ((40, 6), (8, 12)):  # more trials than neurons, and fewer (W singular)
        mix = rng.normal(size=(n_neurons, n_neurons))
        right = rng.normal(size=(n_trials, n_neurons)) @ mix + rng.normal(size=n_neurons)
        left = rng.normal(size=(n_trials + 3, n_neurons)) @ mix
        x = np.vstack([left, right])
        total = (x - x.mean(0)).T @ (x - x.mean(0))
        within = sum((c - c.mean(0)).T @ (c - c.mean(0)) for c in (left, right))
        m = np.linalg.pinv(within) @ (total - within)  # as in the paper's KD_LDA2
        v = np.linalg.svd(m)[2][0]
        v *= np.sign(right.mean(0) @ v - left.mean(0) @ v)
        np.testing.assert_allclose(fisher_lda_direction(right, left, "right_singular"), v, atol=1e-8)
        values, vectors = np.linalg.eig(m)
        e = np.real(vectors[:, np.argmax(np.real(values))])
        e /= np.linalg.norm(e)
        e *= np.sign(right.mean(0) @ e - left.mean(0) @ e)
        np.testing.assert_allclose(fisher_lda_direction(right, left, "eigenvector"), e, atol=1e-6)
    with pytest.raises(ValueError, match="unknown LDA axis"):
        fisher_lda_direction(right, left, "top")


def test_lda_cd_is_the_first_gram_schmidt_vector_of_the_averaged_weights() -> None:
    rng = np.random.default_rng(1)
    right = rng.normal(size=(20, 4, 6)) + np.array([1.0, 0, 0, 0, 0, 0])
    left = rng.normal(size=(22, 4, 6))
    result = lda_cd(right, left)
    averaged = result.bin_weights.mean(axis=0)
    np.testing.assert_allclose(result.vector, averaged / np.linalg.norm(averaged))
    np.testing.assert_allclose(result.basis @ result.basis.T, np.eye(len(result.basis)), atol=1e-10)
    assert len(lda_cd(right, left, n_singular=2).basis) == 3
    basis = gram_schmidt(np.array([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0], [6.0, 8.0, 0.0]]))
    np.testing.assert_allclose(basis, [[0.6, 0.8, 0.0], [0.8, -0.6, 0.0]])  # the dependent row is dropped


def test_coding_direction_must_be_a_unit_vector_and_neuron_counts_must_match() -> None:
    b = Boundary(1.0, -1.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="unit vector"):
        CodingDirection(np.array([1.0, 1.0]), b, "tactile")
    cd = CodingDirection(np.array([0.6, 0.8]), b, "tactile")
    with pytest.raises(ValueError, match="3 neurons, the CD 2"):
        cd.project(np.ones(3))
    with pytest.raises(ValueError, match="neuron counts"):
        cd_similarity(cd, np.ones(3))
    assert cd_similarity(cd, np.array([3.0, 4.0])) == pytest.approx(1.0)
    assert CodingDirection.from_dict(json.loads(json.dumps(cd.to_dict()))).vector.tolist() == [0.6, 0.8]


def test_sliding_running_projection_keeps_the_newest_window_of_frames() -> None:
    cd = CodingDirection(np.array([1.0, 0.0]), Boundary(1.0, -1.0, 1.0, 1.0, 0.0), "tactile")
    running = RunningProjection(cd, window_s=0.3)
    assert running.value is None and running.decode() is None
    for k, value in enumerate([5.0, 1.0, 2.0, 3.0, 4.0]):
        running.add(0.1 * k, np.array([value, 9.0]))
    assert running.n_frames == 3 and running.value == pytest.approx(3.0)  # frames at 0.2, 0.3, 0.4
    running.add(0.35, np.array([10.0, 0.0]))  # late but inside the window
    assert running.value == pytest.approx(4.75)
    running.add(0.0, np.array([100.0, 0.0]))  # older than the window: ignored
    assert running.n_frames == 4
    running.reset()
    assert running.value is None


def test_decoder_config_from_settings() -> None:
    decoder_settings = DecoderSettings(delay_window_s=0.5, min_trials_per_side=3)
    config = DecoderConfig(decoder_settings, bin_s=1 / 6.0)
    assert config.bin_s == pytest.approx(1 / 6) and config.settings.min_trials_per_side == 3
    assert config.windows()["delay"].start_s == -0.5 and config.windows()["delay"].n_bins(config.bin_s) == 3
    with pytest.raises(ValueError, match="cd_method(?s:.*)'classic', 'lda' or 'lda_eigenvector'"):
        DecoderSettings(cd_method="pca")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown CD method"):
        ContextDecoder("tactile", 2, config).coding_direction("delay", "pca")
