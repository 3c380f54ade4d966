"""Placing Bpod epochs on imaging frames through the trial-start trigger (loop and continuous mode)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hardware.sim.microscope import MicroscopeConfig, SimFrame, SimMicroscope
from online.alignment import (
    AlignedTrials,
    ContinuousAligner,
    EpochWindow,
    LoopAligner,
    TrialEpochs,
    TrialFrames,
    delay_onset,
    go_aligned_average,
    go_cue,
    loop_frame_time,
    response_time,
    sample_onset,
    window_mean,
)
from tests.timelines import trial_timeline

# A trial with an early lick in the sample epoch and one in the delay epoch (times from trial start).
RESTARTED = {
    "TrigTrialStart": [[0.0, 0.01]],
    "SamplePeriod": [[0.01, 0.6], [0.65, 1.95]],
    "EarlyLickSample": [[0.6, 0.65]],
    "DelayPeriod": [[1.95, 2.4], [2.45, 3.75]],
    "EarlyLickDelay": [[2.4, 2.45]],
    "ResponseCue": [[3.75, 3.85]],
    "AnswerPeriod": [[3.85, 4.1]],
    "Reward": [[4.1, 4.13]],
    "RewardConsumption": [[4.13, 5.0]],
    "NoResponse": [[math.nan, math.nan]],
}


# -- epochs -------------------------------------------------------------------------------------------


def test_epochs_from_a_trial_record_take_the_last_sample_and_delay_entries() -> None:
    epochs = TrialEpochs.from_states(RESTARTED)
    assert epochs.sample_s == pytest.approx(0.65)  # the early lick restarted the sample epoch
    assert epochs.delay_s == pytest.approx(2.45)
    assert epochs.go_s == pytest.approx(3.75)
    assert epochs.response_s == pytest.approx(4.1)
    assert epochs.onset("trial") == 0.0 and epochs.onset("go") == epochs.go_s
    assert (sample_onset(RESTARTED), delay_onset(RESTARTED), go_cue(RESTARTED), response_time(RESTARTED)) == (
        epochs.sample_s, epochs.delay_s, epochs.go_s, epochs.response_s)


def test_live_state_entries_in_any_order_give_the_same_epochs() -> None:
    entries = [(name, visit[0]) for name, visits in RESTARTED.items() for visit in visits
               if math.isfinite(visit[0])]
    rng = np.random.default_rng(3)
    for _ in range(5):
        shuffled = [entries[i] for i in rng.permutation(len(entries))]
        assert TrialEpochs.from_entries(shuffled) == TrialEpochs.from_states(RESTARTED)


def test_no_response_trial_has_no_response_time_and_unknown_anchor_is_refused() -> None:
    epochs = TrialEpochs.from_states({"SamplePeriod": [[0.01, 1.31]], "DelayPeriod": [[1.31, 2.61]],
                                      "ResponseCue": [[2.61, 2.71]], "NoResponse": [[6.71, 6.71]]})
    assert epochs.response_s is None
    with pytest.raises(ValueError, match="valid: trial, sample, delay, go, response"):
        epochs.onset("cue")
    with pytest.raises(ValueError, match="anchor"):
        EpochWindow("gocue", -0.6, 0.0)
    with pytest.raises(ValueError, match="end after"):
        EpochWindow("go", 0.0, -0.6)


# -- one trial's frames -----------------------------------------------------------------------------------


def _ramp_trial(times: np.ndarray, n_neurons: int = 3, states: dict | None = None) -> TrialFrames:
    """Frames whose activity encodes their own time (neuron j = time + j), added in the given order."""
    trial = TrialFrames(7, n_neurons, TrialEpochs.from_states(states or RESTARTED), capacity=4)
    for t in times:
        trial.add(t, t + np.arange(n_neurons))
    return trial


def test_window_mean_takes_exactly_the_frames_of_the_half_open_window() -> None:
    times = np.arange(0, 6.0, 0.1)
    trial = _ramp_trial(times)
    go = 3.75
    inside = times[(times >= go - 0.6 - 1e-12) & (times < go - 1e-12)]
    win_times, activity = trial.window_frames(-0.6, 0.0, "go")
    np.testing.assert_allclose(win_times, inside)
    np.testing.assert_allclose(window_mean(trial, -0.6, 0.0, relative_to="go"), inside.mean() + np.arange(3))
    np.testing.assert_allclose(trial.mean_in(EpochWindow("sample", 0.0, 1.0)),
                               times[(times >= 0.65 - 1e-12) & (times < 1.65 - 1e-12)].mean() + np.arange(3))
    assert trial.window_mean(10.0, 11.0, "go") is None  # no frames there
    no_go = _ramp_trial(times, states={"SamplePeriod": [[0.01, 1.31]]})
    assert no_go.window_mean(-0.6, 0.0, "go") is None  # the go cue has not happened


def test_frames_arriving_out_of_order_read_back_sorted() -> None:
    times = np.round(np.arange(0, 5.0, 1 / 30), 6)
    order = np.random.default_rng(0).permutation(times.size)
    shuffled, ordered = _ramp_trial(times[order]), _ramp_trial(times)
    np.testing.assert_array_equal(shuffled.times_s, ordered.times_s)
    np.testing.assert_array_equal(shuffled.activity, ordered.activity)
    np.testing.assert_array_equal(shuffled.binned(-1.0, 0.5, 0.1), ordered.binned(-1.0, 0.5, 0.1))
    assert len(shuffled) == times.size


def test_bins_average_their_frames_interpolate_gaps_and_are_nan_outside_the_frames() -> None:
    times = np.arange(0.0, 6.0, 0.1)
    trial = _ramp_trial(times)
    # Bins of 0.2 s hold two frames each; the mean of times t and t + 0.1 is t + 0.05.
    wide = trial.binned(-1.0, 0.0, 0.2, "go")
    assert wide.shape == (5, 3)
    starts = 3.75 - 1.0 + 0.2 * np.arange(5)
    expected = np.array([times[(times >= s - 1e-9) & (times < s + 0.2 - 1e-9)].mean() for s in starts])
    np.testing.assert_allclose(wide[:, 0], expected)
    # Bins of 0.05 s: every other bin has no frame and takes the interpolation at its centre (= its time).
    narrow = trial.binned(-1.0, 0.0, 0.05, "go")
    centres = 3.75 - 1.0 + 0.05 * (np.arange(20) + 0.5)
    has_frame = np.array([np.any((times >= c - 0.025 - 1e-9) & (times < c + 0.025 - 1e-9)) for c in centres])
    np.testing.assert_allclose(narrow[~has_frame, 0], centres[~has_frame])
    # Beyond the last frame: NaN, so a trial that does not cover a window is recognisable.
    late = trial.binned(1.5, 3.0, 0.1, "go")
    assert np.isnan(late[-5:]).all() and np.isfinite(late[:5]).all()


def test_frame_shape_and_time_are_checked() -> None:
    trial = TrialFrames(1, 4)
    with pytest.raises(ValueError, match=r"shape \(3,\), expected \(4,\)"):
        trial.add(0.0, np.zeros(3))
    with pytest.raises(ValueError, match="not finite"):
        trial.add(math.nan, np.zeros(4))


def test_go_aligned_average_bins_each_trial_on_its_own_go_cue() -> None:
    a = _ramp_trial(np.arange(0, 6.0, 0.1))  # go at 3.75
    b = _ramp_trial(np.arange(0, 5.0, 0.1), states={"ResponseCue": [[2.61, 2.71]]})
    average = go_aligned_average([a, b], -1.0, 1.0, 0.2)
    expected = (a.binned(-1.0, 1.0, 0.2, "go") + b.binned(-1.0, 1.0, 0.2, "go")) / 2
    np.testing.assert_allclose(average, expected)
    assert average.shape == (10, 3)


# -- imaging clock to trial clock ---------------------------------------------------------------------------


def test_loop_mode_frame_time_is_frame_timestamp_minus_acquisition_trigger() -> None:
    aligner = LoopAligner(first_trial=11, first_acquisition=1)
    trigger = 0.0123  # acqTriggerTimestamps_sec need not be 0
    frames = [(n, k / 30 + trigger + 0.001, trigger) for n in (1, 2, 3) for k in range(150)]
    placed = [aligner.align(acq, ts, trig, (acq, k)) for k, (acq, ts, trig) in enumerate(frames)]
    assert [p.trial for p in placed] == [10 + acq for acq, _, _ in frames]
    np.testing.assert_allclose([p.time_s for p in placed], [ts - trig for _, ts, trig in frames])
    assert loop_frame_time(2.5, 0.5) == 2.0
    half = LoopAligner(frame_offset_s=0.5 / 30).align(1, 0.0, 0.0, None)
    assert half.time_s == pytest.approx(0.5 / 30)


def _continuous_stream(edges: list[float], rate_hz: float = 30.0, duration_s: float = 10.0,
                       ) -> list[tuple[int, float, tuple[float, ...]]]:
    """(frame_index, timestamp, aux edges during the frame) of one continuous acquisition."""
    dt = 1 / rate_hz
    out = []
    for k in range(int(round(duration_s * rate_hz))):
        ts = k * dt
        out.append((k, ts, tuple(e for e in edges if ts <= e < ts + dt)))
    return out


def _place(aligner: ContinuousAligner, stream: list) -> dict[int, tuple[int, float]]:
    placed = {}
    for index, ts, aux in stream:
        for frame in aligner.add_frame(index, ts, aux, index):
            assert frame.payload not in placed
            placed[frame.payload] = (frame.trial, frame.time_s)
    return placed


def test_continuous_mode_frames_belong_to_the_latest_aux_edge_whatever_the_arrival_order() -> None:
    edges = [0.505, 3.4567, 6.9]
    stream = _continuous_stream(edges)
    in_order = _place(ContinuousAligner(first_trial=1), stream)
    assert len(in_order) == len(stream) - 16  # frames 0..15 start before the first trigger
    for index, ts, _ in stream:
        k = sum(e <= ts for e in edges)
        if k:
            assert in_order[index] == (k, pytest.approx(ts - edges[k - 1]))
    rng = np.random.default_rng(1)
    shuffled = [stream[i] for i in rng.permutation(len(stream))]
    aligner = ContinuousAligner(first_trial=1, max_pending=len(stream))
    assert _place(aligner, shuffled) == in_order
    assert aligner.edges == pytest.approx(edges)
    assert aligner.frames_before_first_trigger == 16 and aligner.skipped_frames == 0
    assert aligner.trigger_of(2) == pytest.approx(3.4567) and aligner.trigger_of(4) is None


def test_continuous_mode_gives_up_a_lost_frame_and_counts_duplicates_and_late_edges() -> None:
    stream = _continuous_stream([0.1, 2.0], duration_s=3.0)
    lost = [s for s in stream if s[0] != 20]
    aligner = ContinuousAligner(max_pending=5)
    placed = _place(aligner, lost)
    assert aligner.skipped_frames == 1 and len(placed) == len(stream) - 1 - 3  # 3 before the first edge
    assert aligner.add_frame(5, 5 / 30, (), 5) == []
    assert aligner.duplicate_frames == 1
    late = ContinuousAligner()
    late.add_frame(0, 0.0, (0.0,), 0)
    late.add_frame(1, 1 / 30, (), 1)
    late.add_frame(2, 2 / 30, (0.01,), 2)  # an edge older than a frame already placed
    assert late.late_edges == 1


# -- with the simulated microscope ---------------------------------------------------------------------------

RATE = 10.0
DT = 1 / RATE
TRIAL_PERIOD_S = 5.5


def _run_sim(mode: str, n_trials: int = 8) -> tuple[SimMicroscope, list[SimFrame], dict, dict]:
    sim = SimMicroscope(MicroscopeConfig(height=32, width=32, n_neurons=20, frame_rate_hz=RATE, seed=4,
                                         mode=mode, acquisition_start_s=0.0))  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    frames: list[SimFrame] = []
    records, triggers = {}, {}
    t = 0.73
    for _ in range(n_trials):
        states, events = trial_timeline(rng, 0.3, (0.2, 1.0), reward=True)
        number = sim.start_trial(t, "tactile", str(rng.choice(["left", "right"])))
        for name, at in events:
            sim.mark_epoch(t + at, name)
        records[number], triggers[number] = states, t
        frames += sim.frames_until(t + TRIAL_PERIOD_S)
        t += TRIAL_PERIOD_S + float(rng.uniform(0, 0.3))
    return sim, frames, records, triggers


def _check_placement(trials: AlignedTrials, frames: list[SimFrame], triggers: dict) -> None:
    """Every frame sits at its Bpod time minus its trial's trigger, and each epoch window holds frames of
    that epoch only (ground truth of the simulator, frames taken at their centre)."""
    by_time = {round(f.bpod_time_s + DT / 2, 6): f for f in frames}
    windows = {"sample": EpochWindow("sample", 0.0, 1.0), "delay": EpochWindow("go", -0.6, 0.0),
               "response": EpochWindow("go", 0.16, 1.5)}
    for number, trial in trials.items():
        assert len(trial) >= 50
        for time_s in trial.times_s:
            frame = by_time[round(triggers[number] + time_s, 6)]
            assert frame.trial == number
        for epoch, window in windows.items():
            lo, hi = window.bounds(trial.epochs)
            inside = trial.times_s[(trial.times_s >= lo) & (trial.times_s < hi)]
            assert inside.size == pytest.approx(window.length_s * RATE, abs=1)
            assert {by_time[round(triggers[number] + x, 6)].truth.epoch for x in inside} == {epoch}


def test_simulated_loop_mode_epochs_land_on_the_right_frames_in_any_arrival_order() -> None:
    sim, frames, records, triggers = _run_sim("loop")
    aligner = LoopAligner(frame_offset_s=DT / 2)
    trials = AlignedTrials(sim.config.n_neurons)
    for i in np.random.default_rng(6).permutation(len(frames)):  # any order, any timing
        f = frames[i]
        trials.add_frame(aligner.align(f.acquisition, f.timestamp_s, f.trigger_timestamp_s, f.truth.dff))
    for number, states in records.items():
        trials.set_record(number, states)
    assert sorted(trials) == sorted(records)
    _check_placement(trials, frames, triggers)


def test_simulated_continuous_mode_epochs_land_on_the_right_frames_in_any_arrival_order() -> None:
    sim, frames, records, triggers = _run_sim("continuous")
    aligner: ContinuousAligner = ContinuousAligner(frame_offset_s=DT / 2, max_pending=len(frames))
    trials = AlignedTrials(sim.config.n_neurons)
    for number, states in records.items():  # live state messages first, then the authoritative record
        for name, visits in states.items():
            for start, _ in visits:
                trials.enter_state(number, name, start)
    for i in np.random.default_rng(7).permutation(len(frames)):
        f = frames[i]
        for placed in aligner.add_frame(f.frame_index, f.timestamp_s, f.aux_trigger_s, f.truth.dff):
            trials.add_frame(placed)
    for number, states in records.items():
        live = trials[number].epochs
        assert trials.set_record(number, states) == live  # the record agrees with what was said live
    assert aligner.frames_before_first_trigger == math.ceil(0.73 * RATE)  # frames starting at 0 ... 0.7 s
    assert aligner.edges == pytest.approx(list(triggers.values()))
    _check_placement(trials, frames, triggers)
    assert trials.pop(1) is not None and 1 not in trials and trials.pop(1) is None
