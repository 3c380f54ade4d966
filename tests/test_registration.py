"""Rigid subpixel registration: sign convention, accuracy on simulated and real images, bounds, references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardware.sim.microscope import SimMicroscope
from online.registration import (
    RegistrationParams,
    RigidRegistration,
    Shift,
    apply_shift,
    build_reference,
    fourier_shift,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_FRAME = DATA / "twophoton_frame_512_imagej.tif"


def noisy(image: np.ndarray, rng: np.random.Generator, gain: float, read_sd: float) -> np.ndarray:
    """Photon shot noise (counts = Poisson(image / gain) * gain) plus Gaussian read noise, as int16."""
    counts = rng.poisson(np.clip(image, 0, None) / gain) * gain
    return np.clip(counts + rng.normal(0, read_sd, image.shape), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def sim() -> SimMicroscope:
    return SimMicroscope(mode="continuous", motion_px=6.0)


@pytest.fixture(scope="module")
def template(sim: SimMicroscope) -> np.ndarray:
    return sim.template()


def test_sign_convention_the_shift_applied_to_the_frame_aligns_it(template: np.ndarray) -> None:
    moved = np.roll(template, (3, -2), axis=(0, 1))  # content displaced down 3, left 2
    shift = RigidRegistration(template).register(moved)
    assert shift.dy == pytest.approx(-3, abs=0.02) and shift.dx == pytest.approx(2, abs=0.02)
    aligned = apply_shift(moved, shift.dy, shift.dx)
    inner = (slice(20, -20), slice(20, -20))
    assert np.abs(aligned[inner] - template[inner]).max() < 0.02 * np.abs(template).max()
    assert shift.correlation > 0.95 and not shift.clipped


def test_simulator_frames_register_to_minus_their_true_displacement(sim: SimMicroscope,
                                                                    template: np.ndarray) -> None:
    """SimFrame.truth.shift is the content's displacement; the aligning shift is its negative."""
    reg = RigidRegistration(template)
    sim.lick(0.2, "left")
    sim.lick(0.9, "right")
    frames = sim.frames_until(1.5)
    err = np.array([(s.dy + f.truth.shift[0], s.dx + f.truth.shift[1])
                    for f in frames for s in [reg.register(f.pixels)]])
    assert np.sqrt((err**2).sum(axis=1).mean()) <= 0.1


def test_template_with_known_subpixel_shifts_and_noise_within_0_1_px_rms(template: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    reg = RigidRegistration(template)
    errors = []
    for _ in range(40):
        d = rng.uniform(-8, 8, 2)
        frame = noisy(fourier_shift(template, *d), rng, gain=4.0, read_sd=10.0)
        s = reg.register(frame)
        errors.append((s.dy + d[0], s.dx + d[1]))
    rms = float(np.sqrt((np.array(errors) ** 2).sum(axis=1).mean()))
    assert rms <= 0.1, rms


def test_upsampled_dft_refinement_is_as_accurate(template: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    reg = RigidRegistration(template, RegistrationParams(upsample=10))
    errors = []
    for _ in range(20):
        d = rng.uniform(-6, 6, 2)
        s = reg.register(noisy(fourier_shift(template, *d), rng, gain=4.0, read_sd=10.0))
        errors.append((s.dy + d[0], s.dx + d[1]))
    assert np.sqrt((np.array(errors) ** 2).sum(axis=1).mean()) <= 0.1


@pytest.mark.skipif(not REAL_FRAME.is_file(), reason=f"shared sample data not present at {DATA}")
@pytest.mark.parametrize("displacement", [(0.37, -0.81), (-2.45, 3.6), (5.3, -6.75), (-7.9, -12.2),
                                          (11.6, 9.15), (-15.25, 0.5)])
def test_real_frame_shifted_with_noise_within_0_2_px(displacement: tuple[float, float]) -> None:
    tifffile = pytest.importorskip("tifffile")
    stored = tifffile.imread(REAL_FRAME)  # big-endian uint16 = int16 + 32768 (ImageJ re-save)
    real = (stored.astype(np.int32) - 32768).astype(np.float32)
    rng = np.random.default_rng(abs(hash(displacement)) % 2**32)
    frame = noisy(fourier_shift(real, *displacement), rng, gain=8.0, read_sd=20.0)
    shift = RigidRegistration(real).register(frame)
    error = np.hypot(shift.dy + displacement[0], shift.dx + displacement[1])
    assert error <= 0.2, (shift, displacement)


def test_max_shift_bounds_the_search_and_flags_clipping(template: np.ndarray) -> None:
    reg = RigidRegistration(template, RegistrationParams(max_shift_px=5))
    inside = reg.register(fourier_shift(template, 4.3, -2.0))
    assert (inside.dy, inside.dx) == pytest.approx((-4.3, 2.0), abs=0.05) and not inside.clipped
    beyond = reg.register(fourier_shift(template, 6.0, -2.0))
    assert beyond.clipped and beyond.dy == -5.0 and beyond.dx == pytest.approx(2.0, abs=0.1)
    # The aligning shift (-14, -11) lies outside the search: a bounded search cannot find its peak, so what
    # it returns has a correlation far below a match (an unbounded search would find it, at ~1).
    far = reg.register(fourier_shift(template, 14.0, 11.0))
    assert far.correlation < 0.2 and inside.correlation > 0.9 and far.clipped


def test_max_shift_larger_than_the_crop_allows_is_reduced() -> None:
    reg = RigidRegistration(np.random.default_rng(0).random((256, 256)), RegistrationParams(crop_px=64,
                                                                                            max_shift_px=40))
    assert reg.max_shift == 30


def test_correlation_is_high_for_a_match_and_low_for_noise(template: np.ndarray) -> None:
    reg = RigidRegistration(template)
    assert reg.register(template).correlation == pytest.approx(1.0, abs=1e-3)
    noise = np.random.default_rng(3).normal(0, 100, template.shape).astype(np.float32)
    assert reg.register(noise).correlation < 0.2


def test_frames_of_any_numeric_dtype_and_wrong_shapes(template: np.ndarray) -> None:
    reg = RigidRegistration(template)
    moved = np.roll(template, (1, 2), axis=(0, 1))
    for dtype in (np.int16, np.uint16, np.float32, np.float64):
        s = reg.register(moved.astype(dtype))
        assert isinstance(s, Shift) and (s.dy, s.dx) == pytest.approx((-1, -2), abs=0.05)
    blank = reg.register(np.zeros_like(template))  # shutter closed: no peak, no made-up motion
    assert (blank.dy, blank.dx, blank.correlation) == (0.0, 0.0, 0.0) and reg.bad_frames == 1
    with pytest.raises(ValueError, match="does not match"):
        reg.register(template[:100])
    with pytest.raises(ValueError, match="2-D"):
        RigidRegistration(template[None])
    with pytest.raises(ValueError, match="upsample"):
        RegistrationParams(upsample=0)


def test_reference_built_from_frames_with_motion(sim: SimMicroscope, template: np.ndarray) -> None:
    start = sim.next_frame_time_s or 0.0
    for k in range(3):
        sim.lick(start + 0.2 + 0.4 * k, "left")
    frames = sim.frames_until(start + 40 / sim.frame_rate_hz)
    stack = np.stack([f.pixels for f in frames])
    truth = np.array([f.truth.shift for f in frames])
    assert np.ptp(truth, axis=0).max() > 2  # real motion to undo
    reference = build_reference(stack, iterations=3)
    assert reference.shape == template.shape and reference.dtype == np.float32
    reg = RigidRegistration(reference)
    shifts = np.array([(s.dy, s.dx) for s in map(reg.register, stack)])
    offset = np.median(shifts + truth, axis=0)  # the reference sits at the frames' median position
    np.testing.assert_allclose(offset, np.median(truth, axis=0), atol=0.2)
    residual = shifts + truth - offset
    assert np.sqrt((residual**2).sum(axis=1).mean()) <= 0.1
    found = RigidRegistration(template).register(reference)
    np.testing.assert_allclose((found.dy, found.dx), -np.median(truth, axis=0), atol=0.2)
    assert found.correlation > 0.8


def test_apply_shift_matches_integer_rolls_and_replicates_edges() -> None:
    img = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    out = apply_shift(img, 2, -3)
    np.testing.assert_array_equal(out[2:, :-3], img[:-2, 3:])
    np.testing.assert_array_equal(out[0], np.r_[img[0, 3:], [img[0, -1]] * 3])
    half = apply_shift(img, 0.5, 0)
    np.testing.assert_allclose(half[1:], 0.5 * (img[1:] + img[:-1]))
