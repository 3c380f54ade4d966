"""Online core benchmark: per-frame registration, ROI trace extraction and dF/F on one core.

512x512 int16 frames from the simulated microscope (rendered beforehand and cycled, so rendering is not
timed), 500 ROIs of ~120 px (the simulator's footprints at radius 4.4 px) with their neuropil annuli.
Per frame: `RigidRegistration.register` -> `TraceExtractor.extract` (with that shift) -> `DffTracker.update`
-> `OnlineDeconvolver.update` (OASIS AR(1) on the dF/F, the default settings; `--no-deconvolution` skips it).
Each stage is timed with perf_counter_ns; "total" is the stages together, per frame.

The naive baseline is measured in the same run on the same frames and ROIs: whole-frame phase correlation
(numpy FFT of the full 512x512 float32 frame against the reference spectrum, whitened, integer peak), the
frame rolled by that shift, every ROI and neuropil annulus read as one sparse product (a gather and a
weighted `np.bincount`), then the same `DffTracker` and deconvolver. The speed-up is naive p50 / total p50.

Registration error: the reference is built from the first `--reference-frames` frames (`build_reference`,
as the live module does), and the error (shift + true displacement) is scored only on the other frames;
the built reference's constant offset is the median error over the frames it was built from, so nothing is
fitted on the scored frames. The timed frames are the scored ones, cycled. Also: the one-off setup costs.

BLAS and OpenMP are limited to one thread before numpy loads, as the online process should do.

Run: `.venv/bin/python bench/online_core.py [--frames 3000] [--naive-frames 300] [--rois 500] [--crop 128]
[--json]`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import percentile, print_report  # noqa: E402
from hardware.sim.microscope import SimMicroscope  # noqa: E402
from online.deconvolution import OnlineDeconvolver, decay_factor  # noqa: E402
from online.registration import RegistrationParams, RigidRegistration, build_reference  # noqa: E402
from online.rois import RoiSet  # noqa: E402
from online.settings import DeconvolutionSettings  # noqa: E402
from online.traces import DffTracker, TraceExtractor  # noqa: E402


class NaivePipeline:
    """The straightforward per-frame pipeline the optimised one is compared with (see the docstring)."""

    def __init__(self, reference: np.ndarray, rois: RoiSet, frame_rate_hz: float,
                 neuropil_coefficient: float = 0.7) -> None:
        self.shape = reference.shape
        ref = np.fft.rfft2(reference.astype(np.float32))
        self.ref_conj = np.conj(ref)
        width = self.shape[1]
        sizes = np.diff(rois.roi_offsets)
        self.owner = np.repeat(np.arange(rois.n), sizes)
        self.pixels = rois.ypix.astype(np.int64) * width + rois.xpix
        totals = np.add.reduceat(rois.lam, rois.roi_offsets[:-1])
        self.weights = rois.lam.astype(np.float32) / np.repeat(totals, sizes).astype(np.float32)
        counts = np.diff(rois.neuropil_offsets)
        self.np_owner = np.repeat(np.arange(rois.n), counts)
        self.np_pixels = rois.neuropil_index.astype(np.int64)
        self.np_weights = 1.0 / np.repeat(np.maximum(counts, 1), counts).astype(np.float32)
        self.n = rois.n
        self.coefficient = np.float32(neuropil_coefficient)
        self.dff = DffTracker(rois.n, frame_rate_hz, baseline_window_s=30.0)

    def process(self, frame: np.ndarray) -> np.ndarray:
        f = frame.astype(np.float32)
        cross = np.fft.rfft2(f) * self.ref_conj
        cross /= np.abs(cross) + np.float32(1e-6)
        surface = np.fft.irfft2(cross, s=self.shape)
        iy, ix = np.unravel_index(int(np.argmax(surface)), self.shape)
        h, w = self.shape
        dy, dx = -((iy + h // 2) % h - h // 2), -((ix + w // 2) % w - w // 2)  # the aligning shift
        flat = np.roll(f, (dy, dx), axis=(0, 1)).ravel()
        f_roi = np.bincount(self.owner, weights=self.weights * flat[self.pixels], minlength=self.n)
        f_np = np.bincount(self.np_owner, weights=self.np_weights * flat[self.np_pixels], minlength=self.n)
        return self.dff.update((f_roi - self.coefficient * f_np).astype(np.float32))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames timed")
    parser.add_argument("--naive-frames", type=int, default=300, help="frames timed for the naive baseline")
    parser.add_argument("--reference-frames", type=int, default=50,
                        help="first frames the reference is built from (not scored)")
    parser.add_argument("--rois", type=int, default=500)
    parser.add_argument("--crop", type=int, default=128, help="registration crop (px)")
    parser.add_argument("--upsample", type=int, default=1, help="1: Gaussian peak fit; >1: DFT refinement")
    parser.add_argument("--neuropil-every", type=int, default=4, help="read every k-th annulus pixel")
    parser.add_argument("--distinct", type=int, default=150, help="distinct frames rendered and cycled")
    parser.add_argument("--cold", action="store_true",
                        help="read frames straight from the cycled set (cold in DRAM) instead of copying "
                             "each into a receive buffer first, as the transport does on arrival")
    parser.add_argument("--no-deconvolution", action="store_true", help="time the path without deconvolution")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    sim = SimMicroscope(mode="continuous", n_neurons=args.rois, neuron_radius_px=4.4, motion_px=4.0)
    for k in range(int(args.distinct / 30 / 2.5) + 1):
        sim.start_trial(0.1 + 2.5 * k, "tactile", "left" if k % 2 else "right",
                        {"sample": 0.01, "delay": 0.8, "go": 1.6})
        sim.lick(0.1 + 2.5 * k + 1.7, "right")
    frames = sim.frames_until(args.distinct / sim.frame_rate_hz)
    pixels = [f.pixels for f in frames]
    truth = np.array([f.truth.shift for f in frames])

    t0 = time.perf_counter()
    rois = RoiSet.from_masks((sim.height, sim.width), sim.masks)
    t_rois = time.perf_counter() - t0
    n_ref = args.reference_frames
    if not 0 < n_ref < len(pixels):
        parser.error(f"--reference-frames must be between 1 and {len(pixels) - 1} (with --distinct "
                     f"{args.distinct})")
    t0 = time.perf_counter()
    reference = build_reference(np.stack(pixels[:n_ref]), iterations=3)
    t_reference = time.perf_counter() - t0
    t0 = time.perf_counter()
    registration = RigidRegistration(reference, RegistrationParams(crop_px=args.crop, upsample=args.upsample))
    extractor = TraceExtractor(rois, neuropil_coefficient=0.7, neuropil_sample_every=args.neuropil_every)
    dff = DffTracker(rois.n, sim.frame_rate_hz, baseline_window_s=30.0)
    deconv = DeconvolutionSettings()
    deconvolver = None if args.no_deconvolution else OnlineDeconvolver(
        rois.n, decay_factor(deconv.tau_decay_s, sim.frame_rate_hz), min_spike_sd=deconv.min_spike_sd,
        penalty_sd=deconv.penalty_sd)
    t_setup = time.perf_counter() - t0
    # The reference's own offset, from the frames it was built from (never from the scored ones).
    built_from = np.array([(s.dy + t[0], s.dx + t[1])
                           for p, t in zip(pixels[:n_ref], truth[:n_ref], strict=True)
                           for s in [registration.register(p)]])
    offset = np.median(built_from, axis=0)
    scored, scored_truth = pixels[n_ref:], truth[n_ref:]

    stages: dict[str, list[float]] = {"registration": [], "extraction": [], "dF/F": [], "deconvolution": [],
                                      "total": []}
    cpu_total: list[float] = []
    errors = []
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    received = np.empty_like(pixels[0])
    for i in range(args.frames):
        frame = scored[i % len(scored)]
        if not args.cold:
            np.copyto(received, frame)  # what a receive does: the frame lands in cache, untimed
            frame = received
        cpu0 = cpu()
        a = clock()
        shift = registration.register(frame)
        b = clock()
        traces = extractor.extract(frame, shift)
        c = clock()
        values = dff.update(traces.f_corrected)
        d = clock()
        if deconvolver is not None:
            deconvolver.update(values)
        e = clock()
        cpu_total.append((cpu() - cpu0) / 1e6)
        for name, ns in (("registration", b - a), ("extraction", c - b), ("dF/F", d - c),
                         ("deconvolution", e - d), ("total", e - a)):
            stages[name].append(ns / 1e6)
        if i < len(scored):
            errors.append((shift.dy + scored_truth[i, 0], shift.dx + scored_truth[i, 1]))
    err = np.array(errors) - offset

    naive = NaivePipeline(reference, rois, sim.frame_rate_hz)
    naive_deconvolver = None if deconvolver is None else OnlineDeconvolver(
        rois.n, deconvolver.g, min_spike_sd=deconv.min_spike_sd, penalty_sd=deconv.penalty_sd)
    naive_ms: list[float] = []
    for i in range(args.naive_frames + 10):
        np.copyto(received, scored[i % len(scored)])
        a = clock()
        values = naive.process(received)
        if naive_deconvolver is not None:
            naive_deconvolver.update(values)
        if i >= 10:  # warm-up
            naive_ms.append((clock() - a) / 1e6)

    figures: dict[str, float | int] = {}
    rows = []
    for name, values in stages.items():
        key = name.replace("/", "").lower()
        p50, p99 = percentile(values, 50), percentile(values, 99)
        figures[f"{key}_p50_ms"] = round(p50, 4)
        figures[f"{key}_p99_ms"] = round(p99, 4)
        rows.append((f"{name} p50 / p99 / mean (ms)",
                     f"{p50:.3f} / {p99:.3f} / {statistics.fmean(values):.3f}"))
    figures["total_cpu_p50_ms"] = round(percentile(cpu_total, 50), 4)
    figures["total_cpu_p99_ms"] = round(percentile(cpu_total, 99), 4)
    rows.append(("total, thread CPU time p50 / p99 (ms)",
                 f"{figures['total_cpu_p50_ms']:.3f} / {figures['total_cpu_p99_ms']:.3f}"))
    total_p50 = figures["total_p50_ms"]
    figures.update(
        frames=args.frames, rois=rois.n, roi_px_mean=round(float(np.diff(rois.roi_offsets).mean()), 1),
        neuropil_px_mean=round(float(np.diff(rois.neuropil_offsets).mean()), 1), crop_px=registration.crop_px,
        naive_p50_ms=round(percentile(naive_ms, 50), 4), naive_p99_ms=round(percentile(naive_ms, 99), 4),
        naive_frames=len(naive_ms),
        speedup_vs_naive=round(percentile(naive_ms, 50) / float(total_p50), 2),
        reference_frames=n_ref, scored_frames=len(err),
        reference_offset_px=[round(float(v), 4) for v in offset],
        registration_rms_error_px=round(float(np.sqrt((err**2).sum(axis=1).mean())), 4),
        registration_max_error_px=round(float(np.abs(err).max()), 4),
        motion_range_px=round(float(np.abs(truth).max()), 2),
        setup_rois_s=round(t_rois, 3), setup_reference_s=round(t_reference, 3),
        setup_registration_extractor_s=round(t_setup, 3),
    )
    rows += [
        ("naive baseline p50 / p99 (ms), same frames",
         f"{figures['naive_p50_ms']:.3f} / {figures['naive_p99_ms']:.3f}"),
        ("speed-up of total p50 vs naive p50", f"{figures['speedup_vs_naive']}x"),
        ("ROIs / mean px / neuropil px",
         f"{rois.n} / {figures['roi_px_mean']} / {figures['neuropil_px_mean']}"),
        (f"registration error RMS / max (px), {len(err)} held-out frames",
         f"{figures['registration_rms_error_px']} / {figures['registration_max_error_px']}"),
        ("true motion, largest |shift| (px)", f"{figures['motion_range_px']}"),
        ("setup: RoiSet + annuli (s)", f"{figures['setup_rois_s']}"),
        (f"setup: build_reference, {n_ref} frames (s)", f"{figures['setup_reference_s']}"),
        ("setup: registration + extractor (s)", f"{figures['setup_registration_extractor_s']}"),
    ]
    figures.update(cold_frames=bool(args.cold), upsample=args.upsample, neuropil_every=args.neuropil_every,
                   deconvolution=deconvolver is not None)
    print_report(f"Online core, 512x512 int16, {args.frames} frames, crop {registration.crop_px} px, "
                 f"upsample {args.upsample}, neuropil every {args.neuropil_every} px, one core"
                 f"{', frames cold in DRAM' if args.cold else ''}",
                 rows, figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
