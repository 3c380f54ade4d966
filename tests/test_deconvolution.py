"""Online deconvolution (online/deconvolution.py) against OASIS's batch solution (`oasis-deconv`), on
simulated calcium with known spikes; its settings; bad samples; the pipeline publishing, saving and decoding
it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from online.config import PipelineConfig
from online.deconvolution import OnlineDeconvolver, decay_factor
from online.messages import TraceFrame
from online.pipeline import OnlinePipeline
from online.rois import RoiSet
from online.settings import DecoderSettings, DeconvolutionSettings, OnlineSettings, RegistrationSettings
from online.store import DECONVOLVED_FILE, TRACES_FILE, SessionOutputs, read_traces
from online.wire import TOPIC_TRACES, FrameHeader, Sender, WireError, decode_message

oasis = pytest.importorskip("oasis.functions")

log = logging.getLogger(__name__)

RATE = 6.0  # Hz per plane (30 Hz over 5 planes)
TAU = 0.8
SD = 0.15


def simulated(n: int, frames: int, rate_hz: np.ndarray | float, seed: int = 0, amplitude: float = 0.3,
              offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
    """dF/F-like traces (frames x n) of AR(1) calcium with Poisson spikes of 0.5-1.5 x `amplitude`, white
    noise SD, and the spikes (frames x n, in dF/F units); and g."""
    rng = np.random.default_rng(seed)
    g = decay_factor(TAU, RATE)
    spikes = (rng.random((frames, n)) < np.asarray(rate_hz) / RATE) * rng.uniform(0.5, 1.5, (frames, n))
    spikes *= amplitude
    calcium = np.zeros((frames, n))
    for t in range(frames):
        calcium[t] = (g * calcium[t - 1] if t else 0.0) + spikes[t]
    return calcium + offset + SD * rng.standard_normal((frames, n)), spikes, g


def run(deconvolver: OnlineDeconvolver, y: np.ndarray) -> np.ndarray:
    return np.array([deconvolver.update(row) for row in y])


def median_r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.median([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(a.shape[1])]))


def test_online_spikes_follow_oasis_batch_solution() -> None:
    n, frames, warm = 40, 3000, 300
    y, truth, g = simulated(n, frames, np.linspace(0.2, 2.0, n))
    online = run(OnlineDeconvolver(n, g, min_spike_sd=1.0), y)
    batch_ar1 = np.stack([oasis.oasisAR1(y[:, i], g, s_min=SD)[1] for i in range(n)], axis=1)
    batch_l1 = np.stack([oasis.deconvolve(y[:, i], tau_d=TAU, framerate=RATE, penalty=1)[1]
                         for i in range(n)], axis=1)
    r_ar1 = median_r(online[warm:], batch_ar1[warm:])
    r_l1 = median_r(online[warm:], batch_l1[warm:])
    r_truth, r_batch_truth = median_r(online[warm:], truth[warm:]), median_r(batch_ar1[warm:], truth[warm:])
    bins = frames - warm - (frames - warm) % 6  # 1-s bins, as decoders average over windows
    def binned(a: np.ndarray) -> np.ndarray:
        return a[warm:warm + bins].reshape(-1, 6, n).sum(axis=1)
    r_bins = median_r(binned(online), binned(batch_ar1))
    log.info("median r, online vs oasisAR1 (same g and s_min) %.3f, vs deconvolve (L1, b and sn fitted) "
             "%.3f, vs the true spikes %.3f (oasisAR1 vs true %.3f); in 1-s bins vs oasisAR1 %.3f",
             r_ar1, r_l1, r_truth, r_batch_truth, r_bins)
    assert r_ar1 >= 0.75 and r_l1 >= 0.6 and r_bins >= 0.8
    assert r_truth >= 0.85 * r_batch_truth


def test_spikes_are_recovered_at_the_known_rate() -> None:
    n, frames = 20, 3600  # 10 min at 6 Hz, 0.5 Hz of spikes of about 0.9 dF/F (6 noise SDs)
    y, truth, g = simulated(n, frames, 0.5, seed=1, amplitude=0.9, offset=0.05)
    d = OnlineDeconvolver(n, g, min_spike_sd=2.0)
    spikes = run(d, y)[600:]
    truth = truth[600:]
    found, real = spikes > 0.3, truth > 0
    rate = found.sum(axis=0) / (found.shape[0] / RATE)
    hits = (found & real).sum() / real.sum()
    false = (found & ~real).sum() / found.sum()
    log.info("true 0.5 Hz, found %.3f Hz (median over ROIs), %.1f %% of spikes at their frame, %.1f %% false",
             np.median(rate), 100 * hits, 100 * false)
    assert np.median(rate) == pytest.approx(0.5, rel=0.2)
    assert hits >= 0.85 and false <= 0.15
    assert np.median(spikes[found & real] / truth[found & real]) == pytest.approx(1.0, abs=0.25)
    assert np.median(d.noise_sd) == pytest.approx(SD, rel=0.3)
    assert np.median(d.baseline) == pytest.approx(0.05, abs=0.05)


def test_nan_or_inf_costs_that_roi_those_frames_only() -> None:
    n, frames = 6, 1500
    y, _, g = simulated(n, frames, 1.0, seed=2)
    clean = run(OnlineDeconvolver(n, g), y)
    bad = y.copy()
    bad[:12, 0] = np.nan  # from the very first frame
    bad[500:520, 1] = np.nan
    bad[700, 2], bad[701, 2] = np.inf, -np.inf
    out = run(OnlineDeconvolver(n, g), bad)
    assert np.isfinite(out).all() and (out >= 0).all()
    assert (out[:12, 0] == 0).all() and (out[500:520, 1] == 0).all() and (out[700:702, 2] == 0).all()
    np.testing.assert_array_equal(out[:, 3:], clean[:, 3:])  # other ROIs never notice
    for roi, after in ((0, 300), (1, 800), (2, 900)):
        r = np.corrcoef(out[after:, roi], clean[after:, roi])[0, 1]
        assert r >= 0.95, f"ROI {roi} after its bad samples: r {r:.3f} with the clean run"


def test_bad_settings_are_refused_with_the_key_named() -> None:
    with pytest.raises(ValidationError, match="tau_decay_s"):
        DeconvolutionSettings(tau_decay_s=0.0)
    with pytest.raises(ValidationError, match="min_spike_sd"):
        DeconvolutionSettings(min_spike_sd=-1.0)
    with pytest.raises(ValidationError, match="input"):
        DecoderSettings(input="spikes")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="online.decoder.input is 'deconvolved' but "
                                              "online.deconvolution.enabled is false"):
        OnlineSettings(deconvolution=DeconvolutionSettings(enabled=False))
    OnlineSettings(deconvolution=DeconvolutionSettings(enabled=False), decoder=DecoderSettings(input="dff"))
    with pytest.raises(ValueError, match="online.deconvolution.tau_decay_s must be a positive"):
        decay_factor(-1.0, RATE)
    with pytest.raises(ValueError, match="frame rate must be positive"):
        decay_factor(TAU, 0.0)
    with pytest.raises(ValueError, match="online.deconvolution.penalty_sd"):
        OnlineDeconvolver(3, 0.8, penalty_sd=float("nan"))
    with pytest.raises(ValueError, match="decay factor g"):
        OnlineDeconvolver(3, 1.0)
    with pytest.raises(ValueError, match="expected 3 values"):
        OnlineDeconvolver(3, 0.8).update(np.zeros(4))


def test_a_trace_frame_carries_deconvolved_activity_and_reads_without_it() -> None:
    sender = Sender("test")
    dff, spikes = np.arange(4, dtype=np.float32), np.array([0, 0.5, 0, 1], np.float32)
    parts = TraceFrame(3, 1, 0.5, 0.4, 0.1, 0.2, 0.9, dff, spikes).encode(sender)
    back = TraceFrame.from_message(decode_message([bytes(memoryview(p)) for p in parts]))
    np.testing.assert_array_equal(back.deconvolved, spikes)
    np.testing.assert_array_equal(back.dff, dff)
    plain = TraceFrame.from_message(decode_message([bytes(memoryview(p)) for p in TraceFrame(
        3, 1, 0.5, 0.4, 0.1, 0.2, 0.9, dff).encode(sender)]))
    assert plain.deconvolved is None
    fields = {"frame_index": 1, "trial": 1, "timestamp_s": 0.0, "time_in_trial_s": 0.0, "shift_dy": 0.0,
              "shift_dx": 0.0, "correlation": 1.0}
    wrong = sender.message(TOPIC_TRACES, fields, [dff, spikes[:2]])
    with pytest.raises(WireError, match="differ in shape"):
        TraceFrame.from_message(decode_message([bytes(memoryview(p)) for p in wrong]))


def test_deconvolved_file_stays_aligned_with_the_traces(tmp_path: Path) -> None:
    rois = RoiSet.from_masks((16, 16), [{"ypix": [3, 3, 4], "xpix": [3, 4, 3]}, {"ypix": [10], "xpix": [10]}])

    def frame(i: int, deconvolved: bool) -> TraceFrame:
        return TraceFrame(i, 1, i / 6, i / 6, 0.0, 0.0, 1.0, np.array([i, -i], np.float32),
                          np.array([i, 0], np.float32) if deconvolved else None)

    outputs = SessionOutputs(tmp_path)  # a first run without deconvolution
    outputs.write_rois(rois, np.zeros((16, 16)))
    outputs.append_trace(frame(0, False))
    outputs.close()
    assert not (tmp_path / DECONVOLVED_FILE).exists() and read_traces(tmp_path).deconvolved is None
    again = SessionOutputs(tmp_path)  # restarted with it: the earlier frame's row is NaN
    again.write_rois(rois, np.zeros((16, 16)))
    for i in (1, 2):
        again.append_trace(frame(i, True))
    again.close()
    with open(tmp_path / DECONVOLVED_FILE, "ab") as f:
        f.write(b"\x00\x00\x80\x3f\x00")  # a crash after a torn deconvolved row, before its traces row
    with open(tmp_path / TRACES_FILE, "ab") as f:
        f.write(b"\x00")
    table = read_traces(tmp_path)
    assert len(table) == 3 and table.deconvolved is not None
    assert np.isnan(table.deconvolved[0]).all() and table.deconvolved[1:].tolist() == [[1, 0], [2, 0]]
    third = SessionOutputs(tmp_path)
    third.write_rois(rois, np.zeros((16, 16)))
    third.append_trace(frame(3, True))
    third.append_trace(frame(4, False))  # a frame without it: a NaN row keeps the rows aligned
    third.close()
    table = read_traces(tmp_path)
    assert len(table) == 5 and table.meta["deconvolved_file"] == DECONVOLVED_FILE
    assert table.deconvolved is not None and table.deconvolved[3].tolist() == [3, 0]
    assert np.isnan(table.deconvolved[4]).all() and table.dff[4].tolist() == [4, -4]


# -- the pipeline: both published, the decoders see the chosen one ----------------------------------------


def pipeline_run(decoder_input: str, trials: int = 4,
                 ) -> tuple[list[TraceFrame], list[tuple[int, np.ndarray]]]:
    """A few simulated trials through the pipeline; its traces, and what its trial stage was given."""
    period = 4.2
    sim = SimMicroscope(MicroscopeConfig(height=128, width=128, n_neurons=30, frame_rate_hz=RATE, seed=0,
                                         frames_per_acquisition=int(period * RATE)))
    online = OnlineSettings(registration=RegistrationSettings(reference_frames=10),
                            decoder=DecoderSettings(input=decoder_input))  # type: ignore[arg-type]
    pipeline = OnlinePipeline(PipelineConfig(online, frame_rate_hz=RATE),
                              rois=RoiSet.from_masks((128, 128), sim.masks))
    given: list[tuple[int, np.ndarray]] = []
    add_frame = pipeline.trial_stage.add_frame

    def spy(trial: int, time_s: float, activity: np.ndarray) -> bool:
        given.append((trial, np.array(activity)))
        return add_frame(trial, time_s, activity)

    pipeline.trial_stage.add_frame = spy  # type: ignore[method-assign]
    traces: list[TraceFrame] = []
    seq = 0
    for trial in range(1, trials + 1):
        t = 1.0 + (trial - 1) * period
        sim.start_trial(t, "tactile", "left", {"sample": 0.01, "delay": 1.31, "go": 2.61}, trial=trial)
        for f in sim.frames_until(t + period - 1e-9):
            header = FrameHeader(seq, f.frame_index, f.timestamp_s, f.trigger_timestamp_s, trial, 0, 0, 128,
                                 128, "<i2", time.time_ns())
            traces += pipeline.process_frame(header, f.pixels).traces
            seq += 1
    traces += pipeline.flush().traces
    return traces, given


@pytest.mark.parametrize("decoder_input", ["deconvolved", "dff"])
def test_the_pipeline_publishes_both_and_decodes_the_chosen_one(decoder_input: str) -> None:
    traces, given = pipeline_run(decoder_input)
    assert traces and all(t.deconvolved is not None and t.deconvolved.shape == t.dff.shape for t in traces)
    spikes = np.array([t.deconvolved for t in traces])
    assert (spikes >= 0).all() and (spikes > 0).mean() > 0.01
    assert len(given) == len(traces)
    chosen = np.array([t.deconvolved if decoder_input == "deconvolved" else t.dff for t in traces])
    np.testing.assert_array_equal(np.array([a for _, a in given]), chosen)

