"""Trace extraction at shifted sampling positions, traces against the simulator's calcium, running dF/F."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.sim.microscope import SimMicroscope
from online.registration import RigidRegistration, apply_shift
from online.rois import NeuropilParams, RoiSet
from online.traces import DffTracker, TraceExtractor


def disk(cy: int, cx: int, r: float, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """A disk ROI with weights falling off from the centre, cut to the frame."""
    yy, xx = np.mgrid[-int(r):int(r) + 1, -int(r):int(r) + 1]
    keep = (yy**2 + xx**2 <= r * r) & (cy + yy >= 0) & (cy + yy < shape[0]) & (cx + xx >= 0) & (
        cx + xx < shape[1])
    return {"ypix": cy + yy[keep], "xpix": cx + xx[keep], "lam": 1.5 - np.hypot(yy[keep], xx[keep]) / r}


@pytest.fixture(scope="module")
def edge_rois() -> RoiSet:
    """ROIs everywhere, including on the frame edges and corners, so clamped reads are exercised."""
    masks = [disk(cy, cx, 4, (96, 128)) for cy in (0, 3, 40, 77, 95) for cx in (0, 4, 50, 100, 127)]
    return RoiSet.from_masks((96, 128), masks, NeuropilParams(inner_px=2, outer_px=10, min_pixels=20))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(5)
    return (1000 + 300 * rng.standard_normal((96, 128))).astype(np.int16)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.3, -0.7), (-1.5, 2.25), (5.5, -7.9), (-12.4, 12.6),
                                   (29.5, -29.99)])
@pytest.mark.parametrize("every", [1, 3])
def test_shifted_sampling_equals_extraction_from_an_explicitly_shifted_frame(
        edge_rois: RoiSet, image: np.ndarray, shift: tuple[float, float], every: int) -> None:
    ex = TraceExtractor(edge_rois, (96, 128), neuropil_sample_every=every)
    got = ex.extract(image, shift)
    ref = ex.extract(apply_shift(image, *shift))  # bilinear with replicated edges, as the sampling
    np.testing.assert_allclose(got.f, ref.f, rtol=1e-5)
    # the neuropil is read at the nearest whole pixel
    nearest = ex.extract(apply_shift(image, round(shift[0]), round(shift[1])))
    np.testing.assert_allclose(got.f_neuropil, nearest.f_neuropil, rtol=1e-5)
    np.testing.assert_allclose(got.f_corrected, got.f - np.float32(0.7) * got.f_neuropil, rtol=1e-6)


def test_f_is_the_weighted_mean_and_neuropil_the_annulus_mean(edge_rois: RoiSet, image: np.ndarray) -> None:
    ex = TraceExtractor(edge_rois, neuropil_sample_every=1, neuropil_coefficient=0.5)
    got = ex.extract(image)
    for i in (0, 7, 12, 24):
        y, x, lam = edge_rois.roi(i)
        assert got.f[i] == pytest.approx(np.sum(lam * image[y, x]) / lam.sum(), rel=1e-5)
        ny, nx = edge_rois.neuropil_pixels(i)
        assert got.f_neuropil[i] == pytest.approx(image[ny, nx].mean(), rel=1e-5)
        assert got.f_corrected[i] == pytest.approx(got.f[i] - 0.5 * got.f_neuropil[i], rel=1e-5)


def test_any_frame_dtype_and_shift_objects(edge_rois: RoiSet, image: np.ndarray) -> None:
    ex = TraceExtractor(edge_rois)
    base = ex.extract(image, (1.25, -0.5)).f
    for dtype in (np.uint16, np.float32, np.float64, ">u2"):
        np.testing.assert_allclose(ex.extract(image.astype(dtype), (1.25, -0.5)).f, base, rtol=1e-5)
    np.testing.assert_allclose(ex.extract(np.asfortranarray(image), (1.25, -0.5)).f, base, rtol=1e-6)
    shift = RigidRegistration(image.astype(np.float32)).register(image)
    np.testing.assert_allclose(ex.extract(image, shift).f, ex.extract(image).f, rtol=1e-4)
    with pytest.raises(ValueError, match="does not match"):
        ex.extract(image[:50])
    with pytest.raises(ValueError, match="does not match"):
        TraceExtractor(edge_rois, (512, 512))


def test_shifts_beyond_the_bound_are_clipped_and_counted(edge_rois: RoiSet, image: np.ndarray) -> None:
    ex = TraceExtractor(edge_rois, max_shift_px=5)
    np.testing.assert_array_equal(ex.extract(image, (40.0, -9.0)).f, ex.extract(image, (5.0, -5.0)).f)
    assert ex.clipped_shifts == 1


def test_traces_follow_the_simulated_calcium() -> None:
    """Simulator masks + registration against its template: traces correlate with the true calcium."""
    sim = SimMicroscope(mode="continuous", motion_px=6.0, n_neurons=120)
    for k in range(4):
        t = 0.1 + 2.5 * k
        sim.start_trial(t, "tactile", "left" if k % 2 else "right", {"sample": 0.01, "delay": 0.8, "go": 1.6})
        sim.lick(t + 1.7, "left")
        sim.lick(t + 1.9, "right")
    frames = sim.frames_until(10.0)
    rois = RoiSet.from_masks((sim.height, sim.width), sim.masks)
    reg = RigidRegistration(sim.template())
    ex = TraceExtractor(rois)
    registered = np.array([ex.extract(f.pixels, reg.register(f.pixels)).f_corrected for f in frames])
    unregistered = np.array([ex.extract(f.pixels).f_corrected for f in frames])
    calcium = sim.truth_arrays().calcium[-len(frames):]
    r = [np.corrcoef(registered[:, i], calcium[:, i])[0, 1] for i in range(rois.n)]
    r0 = [np.corrcoef(unregistered[:, i], calcium[:, i])[0, 1] for i in range(rois.n)]
    assert np.median(r) >= 0.9, np.median(r)
    assert np.median(r) > np.median(r0) + 0.05  # the motion is real, and registration undoes it


def test_dff_of_a_flat_trace_is_zero_from_the_first_frame() -> None:
    tracker = DffTracker(3, frame_rate_hz=30.0, baseline_window_s=10.0)
    f = np.array([100.0, 250.0, 7.0], np.float32)
    out = np.array([tracker.update(f) for _ in range(400)])
    np.testing.assert_allclose(out, 0.0, atol=1e-6)
    np.testing.assert_allclose(tracker.baseline, f)


def test_dff_of_a_transient_peaks_at_its_relative_amplitude() -> None:
    rng = np.random.default_rng(0)
    n, rate = 50, 30.0
    tracker = DffTracker(n, rate, baseline_window_s=30.0)
    base = rng.uniform(200, 800, n).astype(np.float32)
    t = np.arange(int(40 * rate)) / rate
    kernel = np.where(t >= 30, np.exp(-(t - 30) / 0.8) - np.exp(-(t - 30) / 0.05), 0.0)
    amplitude = rng.uniform(0.2, 1.0, n)
    noise = 0.02 * base * rng.standard_normal((t.size, n))
    traces = base * (1 + amplitude * kernel[:, None] / kernel.max()) + noise
    out = np.array([tracker.update(row.astype(np.float32)) for row in traces])
    assert np.all(np.isfinite(out))
    quiet = out[int(5 * rate):int(29 * rate)]
    assert abs(float(np.median(quiet))) < 0.02  # the baseline sits at the resting level
    peak = out[int(30 * rate):int(32 * rate)].max(axis=0)
    np.testing.assert_allclose(peak, amplitude, atol=0.1)


def test_dff_warm_up_is_finite_and_small_and_baselines_refresh_round_robin() -> None:
    rng = np.random.default_rng(1)
    tracker = DffTracker(500, 30.0)
    first = [tracker.update((300 + 10 * rng.standard_normal(500)).astype(np.float32)) for _ in range(30)]
    assert np.all(np.isfinite(first)) and np.abs(first[0]).max() == 0.0
    assert np.abs(np.array(first)).max() < 0.2
    tracker.update(np.full(500, 600, np.float32))  # baselines are bins of the past, not this frame
    assert tracker.baseline.max() < 400
    with pytest.raises(ValueError, match="expected 500 values"):
        tracker.update(np.zeros(3))


def test_dim_rois_divide_by_the_minimum_baseline_not_by_their_own() -> None:
    # Neuropil-corrected F of dim ROIs sits near or below zero. Resting levels -5, 0 and 0.5 (below the
    # minimum baseline 1.0) and 4 (above it), 10 s at rest, then one frame 3 units up: dF/F is 0 at rest,
    # then 3 / max(F0, 1) = 3, 3, 3 and 0.75; dividing by F0 itself would give -0.6, inf, 6 and 0.75.
    tracker = DffTracker(4, 30.0, baseline_window_s=10.0, min_baseline=1.0)
    rest = np.array([-5.0, 0.0, 0.5, 4.0], np.float32)
    quiet = np.array([tracker.update(rest) for _ in range(300)])
    np.testing.assert_array_equal(quiet, 0.0)
    np.testing.assert_array_equal(tracker.baseline, rest)
    np.testing.assert_allclose(tracker.update(rest + 3.0), [3.0, 3.0, 3.0, 0.75], rtol=1e-6)
