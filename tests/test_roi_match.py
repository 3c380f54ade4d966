"""Matching ROIs across sessions: the simulator's day-to-day field of view (a rigid shift, cells out of view)
is recovered from rendered mean images, and masks are matched one to one as the simulator's geometry says."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from online.roi_match import RoiMatchParams, assign, match_rois
from online.rois import RoiSet, detect_rois

SIZE = 256
CONFIG = MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=150, seed=11, mode="continuous",
                          day_shift_px=10.0, day_turnover=0.08, truth_history_frames=0)


@cache
def day(index: int) -> tuple[SimMicroscope, np.ndarray]:
    """The simulator on day `index` and the mean of 40 rendered (noisy, moving) frames."""
    sim = SimMicroscope(CONFIG, day=index)
    frames = sim.frames_until(40 / CONFIG.frame_rate_hz)
    return sim, np.mean([f.pixels.astype(np.float32) for f in frames], axis=0)


def visible_rois(sim: SimMicroscope) -> tuple[RoiSet, np.ndarray]:
    """The day's in-view cells as ROIs (their footprints where the day shows them) and their neuron ids."""
    ids = np.flatnonzero(sim.field.day.visible)
    return RoiSet.from_masks((SIZE, SIZE), [sim.masks[i] for i in ids]), ids


def true_pairs(ids_a: np.ndarray, ids_b: np.ndarray) -> set[tuple[int, int]]:
    index_b = {n: j for j, n in enumerate(ids_b)}
    return {(i, index_b[n]) for i, n in enumerate(ids_a) if n in index_b}


def test_the_simulated_field_moves_and_changes_cells_from_day_to_day() -> None:
    (a, _), (b, _) = day(0), day(3)
    assert a.field.day.shift == (0.0, 0.0) and a.field.day.visible.all()
    assert max(abs(v) for v in b.field.day.shift) > 1.0  # a few px at 256 (10 px bound at 512)
    assert 0 < (~b.field.day.visible).sum() < 0.2 * CONFIG.n_neurons
    again = SimMicroscope(CONFIG, day=3)  # deterministic per (seed, day)
    assert again.field.day.shift == b.field.day.shift
    np.testing.assert_array_equal(again.field.day.visible, b.field.day.visible)
    np.testing.assert_allclose(b.template(), again.template())
    other = SimMicroscope(CONFIG, day=4)
    assert other.field.day.shift != b.field.day.shift


@pytest.mark.parametrize("days", [(0, 3), (2, 5)])
def test_matching_recovers_the_shift_and_the_cells_through_mean_images(days: tuple[int, int]) -> None:
    (sim_a, mean_a), (sim_b, mean_b) = day(days[0]), day(days[1])
    rois_a, ids_a = visible_rois(sim_a)
    rois_b, ids_b = visible_rois(sim_b)
    match = match_rois(rois_a, mean_a, rois_b, mean_b)
    expected = np.subtract(sim_a.field.day.shift, sim_b.field.day.shift)
    np.testing.assert_allclose(match.shift, expected, atol=0.25)
    truth = true_pairs(ids_a, ids_b)
    found = {tuple(p) for p in match.pairs.tolist()}
    assert len(truth) < max(len(ids_a), len(ids_b))  # some cells really came or went
    precision = len(found & truth) / len(found)
    recall = len(found & truth) / len(truth)
    assert precision >= 0.99 and recall >= 0.95, (precision, recall)
    assert match.n_matched == len(found) and np.all(match.overlap >= RoiMatchParams().min_overlap)


def test_unregistered_masks_would_not_match() -> None:
    """The registration is what matches: with the shift forced to zero few of the cells overlap enough."""
    (sim_a, mean_a), (sim_b, _) = day(0), day(3)
    rois_a, ids_a = visible_rois(sim_a)
    rois_b, ids_b = visible_rois(sim_b)
    match = match_rois(rois_a, mean_a, rois_b, mean_a, RoiMatchParams(max_shift_px=0))
    truth = true_pairs(ids_a, ids_b)
    assert match.shift == (0.0, 0.0)
    assert len({tuple(p) for p in match.pairs.tolist()} & truth) < 0.5 * len(truth)


def test_detected_rois_match_across_days() -> None:
    """End to end without ground-truth masks: ROIs detected on each day's mean image, matched; a match is
    right when both ROIs lie on the same simulated neuron."""
    (sim_a, mean_a), (sim_b, mean_b) = day(0), day(3)
    rois_a, rois_b = (detect_rois(m, 300, 5.0 * SIZE / 512) for m in (mean_a, mean_b))
    match = match_rois(rois_a, mean_a, rois_b, mean_b, RoiMatchParams(min_overlap=0.4))

    def neuron_of(rois: RoiSet, sim: SimMicroscope) -> np.ndarray:
        owner = np.full((SIZE, SIZE), -1)
        for n in np.flatnonzero(sim.field.day.visible):
            m = sim.masks[n]
            body = m.lam >= 0.5 * m.lam.max()
            owner[m.ypix[body], m.xpix[body]] = n
        return np.array([owner[int(round(c[0])), int(round(c[1]))] for c in rois.centroids])

    na, nb = neuron_of(rois_a, sim_a), neuron_of(rois_b, sim_b)
    on_cells = [(i, j) for i, j in match.pairs.tolist() if na[i] >= 0 and nb[j] >= 0]
    right = sum(na[i] == nb[j] for i, j in on_cells)
    assert len(on_cells) >= 0.5 * CONFIG.n_neurons
    assert right / len(on_cells) >= 0.97


def test_assignment_is_one_to_one_and_keeps_the_best_total() -> None:
    overlap = np.array([[0.9, 0.6, 0.0],
                        [0.8, 0.0, 0.0],
                        [0.0, 0.0, 0.3]])
    pairs, values = assign(overlap, 0.5)
    assert pairs.tolist() == [[0, 1], [1, 0]]  # 0.6 + 0.8 beats 0.9 alone
    np.testing.assert_allclose(values, [0.6, 0.8])
    assert assign(np.zeros((2, 3)), 0.5)[0].shape == (0, 2)


def test_fields_of_different_sizes_are_refused() -> None:
    rois = RoiSet.from_masks((32, 32), [{"ypix": [5, 5], "xpix": [5, 6]}])
    other = RoiSet.from_masks((16, 16), [{"ypix": [5, 5], "xpix": [5, 6]}])
    with pytest.raises(ValueError, match="differ in size"):
        match_rois(rois, np.ones((32, 32)), other, np.ones((16, 16)))
    with pytest.raises(ValueError, match="mean image is 16x16"):
        match_rois(rois, np.ones((16, 16)), other, np.ones((16, 16)))
