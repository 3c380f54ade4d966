"""The simulated two-photon microscope: Bpod-clock framing, ground truth, coding directions, speed plans."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import pytest

from hardware.settings import MicroscopeSimSettings
from hardware.sim.microscope import (
    MicroscopeConfig,
    SimFrame,
    SimMicroscope,
    measure_frame_cost_s,
    plan_for_speed,
)

EPOCHS = {"sample": 0.01, "delay": 1.31, "go": 2.61}
DT = 1 / 30


def advance(sim: SimMicroscope, until_s: float, rng: np.random.Generator) -> list[SimFrame]:
    """Pull frames in irregular steps, as a caller following the Bpod clock would, checking each batch."""
    frames: list[SimFrame] = []
    t = 0.0
    while t < until_s:
        t = min(until_s, t + float(rng.uniform(0.001, 0.25)))
        batch = sim.frames_until(t)
        assert all(f.bpod_time_s < t for f in batch)
        nxt = sim.next_frame_time_s
        assert nxt is None or nxt >= t - 1e-12
        frames += batch
    return frames


def small(**kw: object) -> SimMicroscope:
    return SimMicroscope(MicroscopeConfig(height=64, width=64, **kw))  # type: ignore[arg-type]


def test_default_frames_are_512_int16_at_30hz_with_negative_pixels() -> None:
    sim = SimMicroscope(mode="continuous")
    frames = sim.frames_until(0.2)
    assert len(frames) == 6
    for k, f in enumerate(frames):
        assert f.pixels.shape == (512, 512) and f.pixels.dtype == np.int16
        assert f.frame_index == k and f.timestamp_s == pytest.approx(k / 30)
    assert frames[0].pixels.min() < 0  # PMT offset: dark vessels read negative, like real int16 data
    assert len(sim.masks) == 200


def test_loop_mode_restarts_numbering_per_trial_and_never_repeats_a_frame() -> None:
    sim = small()
    triggers = [1.0, 4.52, 8.013]
    for n, t in enumerate(triggers, start=1):
        assert sim.start_trial(t, "tactile", "left" if n % 2 else "right", EPOCHS) == n
    assert sim.frames_until(0.99) == []  # waiting for the first trigger
    frames = advance(sim, 11.0, np.random.default_rng(1))
    assert [f.frame_number for f in frames] == list(range(len(frames)))
    for n, (start, end) in enumerate(zip(triggers, [*triggers[1:], 11.0], strict=True), start=1):
        mine = [f for f in frames if f.trial == n]
        expected = int(np.ceil((end - start) * 30 - 1e-9))
        assert len(mine) == expected
        assert [f.frame_index for f in mine] == list(range(expected))
        assert all(f.acquisition == n and f.trigger_timestamp_s == 0.0 for f in mine)
        assert all(f.aux_trigger_s == () for f in mine)
        np.testing.assert_allclose([f.timestamp_s for f in mine], np.arange(expected) * DT, atol=1e-9)
        np.testing.assert_allclose([f.bpod_time_s for f in mine], start + np.arange(expected) * DT, atol=1e-9)
    assert sim.late_events == 0


def test_loop_mode_with_fixed_frames_per_acquisition_waits_for_the_next_trigger() -> None:
    sim = small(frames_per_acquisition=10)
    sim.start_trial(0.5)
    assert len(sim.frames_until(3.0)) == 10
    assert sim.next_frame_time_s is None
    sim.start_trial(3.2)
    frames = sim.frames_until(3.2 + 5 * DT + 1e-9)
    assert [f.frame_index for f in frames] == [0, 1, 2, 3, 4, 5] and frames[0].bpod_time_s == 3.2


def test_continuous_mode_puts_trial_triggers_on_aux_trigger_edges() -> None:
    sim = small(mode="continuous", acquisition_start_s=0.2)
    triggers = [1.0, 3.337, 5.5]
    for t in triggers:
        sim.start_trial(t, "auditory", "right", EPOCHS)
    frames = advance(sim, 7.0, np.random.default_rng(2))
    assert len(frames) == int(np.ceil((7.0 - 0.2) * 30))
    np.testing.assert_allclose([f.timestamp_s for f in frames], np.arange(len(frames)) * DT, atol=1e-9)
    assert [f.frame_index for f in frames] == list(range(len(frames)))
    with_edges = [f for f in frames if f.aux_trigger_s]
    assert len(with_edges) == 3
    for f, t in zip(with_edges, triggers, strict=True):
        (edge,) = f.aux_trigger_s
        assert edge == pytest.approx(t - 0.2)
        assert f.timestamp_s <= edge < f.timestamp_s + DT
    after = [f for f in frames if f.bpod_time_s >= 3.337 and f.bpod_time_s < 5.5]
    assert {f.trial for f in after} == {2} and after[0].trigger_timestamp_s == pytest.approx(3.137)
    assert frames[0].trial is None and frames[0].trigger_timestamp_s is None


def test_late_events_are_counted_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    sim = small(mode="continuous")
    sim.frames_until(1.0)
    with caplog.at_level(logging.WARNING):
        sim.lick(0.5, "left")
    assert sim.late_events == 1 and "late events" in caplog.text


def extract_traces(frames: list[SimFrame], sim: SimMicroscope) -> np.ndarray:
    """Weighted mask means after undoing each frame's ground-truth displacement (bilinear sampling)."""
    ys = np.concatenate([m.ypix for m in sim.masks]).astype(float)
    xs = np.concatenate([m.xpix for m in sim.masks]).astype(float)
    lam = np.concatenate([m.lam for m in sim.masks])
    owner = np.concatenate([np.full(m.ypix.size, i) for i, m in enumerate(sim.masks)])
    norm = np.bincount(owner, weights=lam)
    traces = []
    for f in frames:
        y, x = ys + f.truth.shift[0], xs + f.truth.shift[1]
        y0 = np.clip(np.floor(y).astype(int), 0, sim.height - 2)
        x0 = np.clip(np.floor(x).astype(int), 0, sim.width - 2)
        ty, tx = y - y0, x - x0
        flat, px, w = y0 * sim.width + x0, f.pixels.ravel(), sim.width
        v = ((1 - ty) * ((1 - tx) * px[flat] + tx * px[flat + 1])
             + ty * ((1 - tx) * px[flat + w] + tx * px[flat + w + 1]))
        traces.append(np.bincount(owner, weights=lam * v) / norm)
    return np.array(traces)


def test_mask_traces_from_motion_corrected_frames_follow_ground_truth_calcium() -> None:
    sim = SimMicroscope(mode="continuous")
    for k, side in enumerate(["left", "right", "right"]):
        sim.start_trial(0.3 + 3.5 * k, "tactile", side, EPOCHS)
        for lick in (2.8, 2.95, 3.1):
            sim.lick(0.3 + 3.5 * k + lick, side)
    frames = sim.frames_until(10.0)
    traces = extract_traces(frames, sim)
    calcium = np.array([f.truth.calcium for f in frames])
    r = [np.corrcoef(traces[:, i], calcium[:, i])[0, 1] for i in range(calcium.shape[1])]
    assert np.median(r) >= 0.9
    assert max(abs(f.truth.shift[0]) for f in frames) > 0.5  # motion was really applied


def delay_means(sim: SimMicroscope, context: str, sides: list[str], t0: float = 0.5,
                trial_s: float = 4.5) -> tuple[np.ndarray, float]:
    """Mean ground-truth dF/F over the last 0.6 s of the delay of each trial."""
    means = []
    for side in sides:
        sim.start_trial(t0, context, side, EPOCHS)
        frames = sim.frames_until(t0 + trial_s)
        go = t0 + EPOCHS["go"]
        means.append(np.mean([f.truth.dff for f in frames if go - 0.6 <= f.bpod_time_s < go], axis=0))
        t0 += trial_s
    return np.array(means), t0


def test_delay_activity_separates_sides_along_the_contexts_coding_direction() -> None:
    sim = small()
    sides = list(np.random.default_rng(3).permutation(["left", "right"] * 16))
    means, _ = delay_means(sim, "tactile", sides)
    right = np.array([s == "right" for s in sides])
    cd = sim.coding_direction("tactile")
    proj = means @ cd
    assert proj[right].min() > proj[~right].max()  # every trial on the correct side of the boundary
    empirical = means[right].mean(0) - means[~right].mean(0)
    empirical /= np.linalg.norm(empirical)
    assert empirical @ cd >= 0.9
    assert empirical @ sim.coding_direction("tactile", space="rate") >= 0.85
    difference = means[right].mean(0) - means[~right].mean(0)
    assert difference @ cd > 3 * abs(difference @ sim.coding_direction("tactile-reversed"))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_contexts_get_near_orthogonal_patterns_and_a_returning_context_gets_its_own_back(seed: int) -> None:
    a, b = small(seed=seed), small(seed=seed)
    for space in ("rate", "dff"):
        cd1 = a.coding_direction("tactile", space=space)
        cd2 = a.coding_direction("tactile-reversed", space=space)
        assert abs(cd1 @ cd2) < 0.3
        assert np.linalg.norm(cd1) == pytest.approx(1.0)
        # Another simulator with the same seed, seeing the contexts in the other order.
        b.coding_direction("auditory", space=space)
        b_cd2 = b.coding_direction("tactile-reversed", space=space)
        b_cd1 = b.coding_direction("tactile", space=space)
        assert b_cd1 @ cd1 == pytest.approx(1.0) and np.array_equal(b_cd2, cd2)
    assert np.array_equal(a.population.pattern("tactile").delay, b.population.pattern("tactile").delay)


def test_context_overlap_setting_controls_similarity() -> None:
    same = small(context_overlap=1.0)
    cos_same = same.coding_direction("x", space="rate") @ same.coding_direction("y", space="rate")
    assert cos_same == pytest.approx(1.0)
    cos = []
    for seed in range(6):
        sim = small(context_overlap=0.5, seed=seed)
        cos.append(sim.coding_direction("x", space="rate") @ sim.coding_direction("y", space="rate"))
    assert 0.3 < np.mean(cos) < 0.7


def estimate_shift(frame: np.ndarray, template: np.ndarray) -> tuple[float, float]:
    """Phase correlation, parabolic sub-pixel peak: displacement of the frame content vs the template."""
    a = np.fft.fft2(frame - frame.mean())
    b = np.fft.fft2(template - template.mean())
    cross = a * np.conj(b)
    corr = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    iy, ix = np.unravel_index(np.argmax(corr), corr.shape)
    h, w = corr.shape

    def vertex(m: float, c: float, p: float) -> float:
        den = m - 2 * c + p
        return 0.0 if den == 0 else 0.5 * (m - p) / den

    dy = iy + vertex(corr[iy - 1, ix], corr[iy, ix], corr[(iy + 1) % h, ix])
    dx = ix + vertex(corr[iy, ix - 1], corr[iy, ix], corr[iy, (ix + 1) % w])
    return (dy + h / 2) % h - h / 2, (dx + w / 2) % w - w / 2


def test_ground_truth_shift_is_the_applied_motion() -> None:
    sim = SimMicroscope(height=256, width=256, mode="continuous", motion_px=4.0)
    for t in np.arange(0.3, 3.0, 0.15):
        sim.lick(float(t), "right")
    template = sim.template()
    frames = sim.frames_until(3.0)[::6]
    shifts = np.array([f.truth.shift for f in frames])
    assert np.ptp(shifts[:, 0]) > 0.5  # the frames really moved, by sub-pixel amounts
    for f in frames:
        est = estimate_shift(f.pixels.astype(float), template)
        assert est == pytest.approx(f.truth.shift, abs=0.3)


def cost_per_pixel(seconds_per_512_frame: float) -> Callable[[int, int], float]:
    """A host whose render cost is proportional to the pixel count (what `plan_for_speed` is given)."""
    return lambda h, w: seconds_per_512_frame * h * w / 512**2


def test_plan_for_speed_keeps_full_size_at_1x_and_reduces_at_20x(caplog: pytest.LogCaptureFixture) -> None:
    slow = cost_per_pixel(4e-3)  # 4 ms per 512x512 frame
    with caplog.at_level(logging.WARNING):
        assert plan_for_speed(1.0, frame_cost_s=slow) == (512, 512, 30.0)  # 30/s x 4 ms = 0.12 core
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        plan = plan_for_speed(20.0, frame_cost_s=slow)
    # 512x512 fits 0.5 core / (20 x 4 ms) = 6.25 Hz; 256x256 (the smallest on which a neuron is still >= 2 px
    # across) fits 25 Hz: below 30 Hz, so the rate is lowered rather than the frame shrunk further.
    assert plan == (256, 256, 25.0)
    assert "cannot render 512x512 at 30.0 Hz for a session at 20x speed" in caplog.text
    assert "4.00 ms per frame" in caplog.text and "using 256x256 at 25.00 Hz" in caplog.text


def test_plan_for_speed_keeps_full_size_at_20x_on_a_fast_host(caplog: pytest.LogCaptureFixture) -> None:
    fast = cost_per_pixel(5e-4)  # 0.5 ms per 512x512 frame: 600 frames/s use 0.3 core
    with caplog.at_level(logging.WARNING):
        assert plan_for_speed(20.0, frame_cost_s=fast) == (512, 512, 30.0)
        assert plan_for_speed(20.0, 0.2, frame_cost_s=fast) == (256, 256, 30.0)  # a smaller budget
    assert caplog.text.count("cannot render 512x512") == 1


def test_plan_for_speed_prefers_smaller_frames_then_lower_rates() -> None:
    def cost(h: int, w: int) -> float:  # a fixed cost model: 0.2 ms + 12 ns per pixel
        return 2e-4 + 1.2e-8 * h * w

    assert plan_for_speed(1.0, frame_cost_s=cost) == (512, 512, 30.0)
    assert plan_for_speed(4.0, frame_cost_s=cost) == (512, 512, 30.0)  # 120/s x 3.35 ms = 0.40 core
    assert plan_for_speed(6.0, frame_cost_s=cost) == (256, 256, 30.0)  # 180/s x 3.35 ms = 0.60 core
    h, w, rate = plan_for_speed(20.0, frame_cost_s=cost)
    assert (h, w) == (256, 256) and rate == pytest.approx(0.5 / 20 / cost(256, 256), abs=0.01)
    sim = SimMicroscope.for_speed(20.0, MicroscopeConfig(height=128, width=128), frame_cost_s=cost)
    assert (sim.height, sim.width, sim.frame_rate_hz) == plan_for_speed(
        20.0, config=MicroscopeConfig(height=128, width=128), frame_cost_s=cost)


def test_frame_cost_is_measured_at_the_edge_as_host_seconds_per_frame() -> None:
    config = MicroscopeConfig(height=64, width=64, n_neurons=20)
    cost = measure_frame_cost_s(config, n_frames=5)
    assert cost > 0 and math.isfinite(cost)
    sim = SimMicroscope.for_speed(1.0, config)  # no cost given: measured on this host
    assert sim.height <= 64 and sim.width <= 64 and 0 < sim.frame_rate_hz <= 30.0


def test_measured_frame_rate_is_reported() -> None:
    fps = SimMicroscope().measure_frames_per_s(30)
    logging.getLogger(__name__).info("512x512: %.2f ms per frame", 1e3 / fps)
    assert fps > 0


def test_config_from_the_settings_model() -> None:
    cfg = MicroscopeConfig.from_settings(MicroscopeSimSettings(n_neurons=50, context_overlap=0.0), seed=7,
                                         height=128, width=256, mode="continuous")
    got = (cfg.n_neurons, cfg.context_overlap, cfg.height, cfg.width, cfg.frame_rate_hz, cfg.seed, cfg.mode)
    assert got == (50, 0.0, 128, 256, 30.0, 7, "continuous")
    assert MicroscopeConfig.from_settings(MicroscopeSimSettings(), seed=None).seed >= 0


def test_world_coupling_turns_the_imaging_ttl_into_trial_starts_on_the_engine_clock() -> None:
    from hardware.bpod.emulator.world import TrialRecord, World
    from hardware.bpod.hardware_description import preset
    from hardware.sim.world_coupling import WorldCoupling

    world = World(preset("r2", 23))
    sim = small()
    coupling = WorldCoupling(sim, world)
    out = {n: i for i, n in enumerate(world.output_names)}
    start = 12_345  # cycles
    coupling.announce_trial("tactile", "right")  # before the trial: applies to the next trigger
    world.trial_event(TrialRecord("start", start, 0, 1))
    world.output_changed(start, out["BNC1"], 1)
    world.output_changed(start + 100, out["BNC1"], 0)
    world.output_changed(start + 100, out["BNC2"], 1)  # pole in: sample
    coupling.lick(start + 5_000, "left")
    world.output_changed(start + 13_100, out["BNC2"], 0)  # pole out: delay
    world.output_changed(start + 26_100, out["PWM4"], 255)  # go cue
    frames = coupling.frames_until_cycle(start + 30_000)
    assert frames[0].bpod_time_s == pytest.approx(1.2345) and frames[0].trial == 1
    assert len(frames) == int(np.ceil(3.0 * 30))
    assert frames[0].truth.epoch == "sample"  # the pole came in 10 ms after the TTL, mid-frame 0
    assert {f.truth.epoch for f in frames} == {"sample", "delay", "response"}
    delay = [f for f in frames if f.truth.epoch == "delay"]
    assert delay[0].bpod_time_s + DT / 2 >= 1.2345 + 1.31 and delay[0].truth.side == "right"
    assert delay[0].truth.context == "tactile"
    world.trial_event(TrialRecord("end", start + 40_000, 0, 1))
    coupling.close()
    world.output_changed(start + 50_000, out["BNC1"], 1)
    assert sim.frames_until(10.0)[-1].trial == 1  # no longer listening
