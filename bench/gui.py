"""Monitor refresh benchmark: what one display tick costs when a new frame and a new trace sample arrive.

The monitor window is built as `rig monitor` builds it (offscreen Qt), its model holds a 512x512 int16 frame,
200 ROI outlines and 200 dF/F traces of 900 samples (30 s at 30 Hz; calcium-like: sparse transients on noise).
Each refresh then adds one frame and one trace sample to the model, lets the panels redraw what changed (the
frame as one ImageItem with fixed levels, all traces as one PlotCurveItem with a connect array) and paints the
frame and trace views synchronously. The traces are binned (at most one bin per pixel column) and the bins
that lie on the line through their neighbours are dropped: `trace_bins` counts the bins,
`trace_vertices_drawn` the vertices the curve is given and strokes (median over the refreshes). Reported: p50
and p99 over the refreshes (goal p99 <= 15 ms, i.e. a 25 Hz timer keeps more than half of every tick free),
and for reference a full-window paint (`grab()`).

Run: `.venv/bin/python bench/gui.py [--refreshes 300] [--rois 200] [--json]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.report import percentile, print_report  # noqa: E402
from online.messages import RoiSnapshot, TraceFrame  # noqa: E402
from online.wire import FrameHeader  # noqa: E402
from rig.free_endpoints import free_network_overrides  # noqa: E402
from rig.settings import load_settings  # noqa: E402

FRAME_RATE_HZ = 30.0


def circle_rois(n: int, size: int, rng: np.random.Generator, radius: float = 6.0) -> RoiSnapshot:
    centroids = rng.uniform(radius + 2, size - radius - 2, (n, 2)).astype(np.float32)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    ring = np.stack([np.sin(angles), np.cos(angles)], axis=1) * radius
    points = (centroids[:, None, :] + ring[None]).reshape(-1, 2).astype(np.float32)
    offsets = np.arange(0, 16 * n + 1, 16, dtype=np.int32)
    reference = rng.normal(1000, 50, (size, size)).astype(np.float32)
    return RoiSnapshot(reference, centroids, points, offsets, roi_set_id="bench")


def calcium_traces(n_samples: int, n_rois: int, rng: np.random.Generator) -> np.ndarray:
    """dF/F-like traces: Poisson events (0.3 Hz) decaying with tau 1 s, amplitude 0.3-1.5, noise sd 0.05."""
    events = rng.poisson(0.3 / FRAME_RATE_HZ, (n_samples, n_rois)) * rng.uniform(
        0.3, 1.5, (n_samples, n_rois)
    )
    decay = np.exp(-1 / FRAME_RATE_HZ)
    dff = np.zeros((n_samples, n_rois), dtype=np.float32)
    level = np.zeros(n_rois)
    for i in range(n_samples):
        level = level * decay + events[i]
        dff[i] = level
    return dff + rng.normal(0, 0.05, dff.shape).astype(np.float32)


def frame_header(index: int, size: int) -> FrameHeader:
    return FrameHeader(
        seq=index,
        frame_index=index,
        timestamp_s=index / FRAME_RATE_HZ,
        trigger_timestamp_s=0.0,
        trial=1,
        channel=0,
        plane=0,
        height=size,
        width=size,
        dtype="<i2",
        t_ns=time.time_ns(),
    )


def trace_frame(index: int, dff: np.ndarray) -> TraceFrame:
    return TraceFrame(index, 1, index / FRAME_RATE_HZ, index / FRAME_RATE_HZ, 0.6, -0.4, 0.9, dff)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=300, help="refreshes measured")
    parser.add_argument("--rois", type=int, default=200, help="ROIs (traces)")
    parser.add_argument("--size", type=int, default=512, help="frame height and width (px)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from rig.monitor.window import WINDOW_SIZE, MonitorWindow, application

    settings = load_settings(overrides=free_network_overrides())
    app = application()
    window = MonitorWindow(settings, start=False, status_poll_s=None)
    window.resize(*WINDOW_SIZE)
    window.show()
    app.processEvents()
    rng = np.random.default_rng(0)
    imaging = window.model.imaging
    samples = round(imaging.trace_seconds * FRAME_RATE_HZ)
    frames = [rng.normal(1000, 200, (args.size, args.size)).astype(np.int16) for _ in range(8)]
    imaging.set_rois(circle_rois(args.rois, args.size, rng), time.monotonic())
    dff = calcium_traces(samples + args.refreshes + 20, args.rois, rng)
    t0 = time.time()
    for i in range(samples):
        imaging.traces.append(t0 + i / FRAME_RATE_HZ, dff[i])
    window.refresh()
    app.processEvents()

    views = (window.frame.viewport(), window.traces.viewport())
    refresh_ms: list[float] = []
    vertices: list[int] = []  # vertices the trace curve strokes after each refresh (after simplification)
    cpu_ms: list[float] = []  # this thread's CPU time: the same work without other processes' interference
    for k in range(args.refreshes + 20):
        i = samples + k
        now = time.monotonic()
        start, cpu_start = time.perf_counter(), time.thread_time()
        imaging.add_frame(frame_header(i, args.size), frames[k % len(frames)], now)
        imaging.add_traces(trace_frame(i, dff[i]), t0 + i / FRAME_RATE_HZ, now)
        window.refresh(now)
        for view in views:
            view.repaint()
        elapsed, cpu = (time.perf_counter() - start) * 1000, (time.thread_time() - cpu_start) * 1000
        if k >= 20:  # warm-up: first paints build caches
            refresh_ms.append(elapsed)
            cpu_ms.append(cpu)
            vertices.append(window.traces.vertex_count)
        app.processEvents()
    bins = window.traces.point_count
    grab_ms = []
    for _ in range(20):
        start = time.perf_counter()
        window.grab()
        grab_ms.append((time.perf_counter() - start) * 1000)
    window.shutdown()

    samples_in = imaging.traces.window(imaging.trace_seconds)[0].shape[0]
    figures = {
        "refreshes": len(refresh_ms),
        "rois": args.rois,
        "frame_px": args.size,
        "trace_samples": samples_in,
        "trace_bins": bins,
        "trace_vertices_drawn": int(np.median(vertices)),
        "trace_vertices_drawn_max": max(vertices),
        "refresh_p50_ms": round(percentile(refresh_ms, 50), 2),
        "refresh_p99_ms": round(percentile(refresh_ms, 99), 2),
        "refresh_max_ms": round(max(refresh_ms), 2),
        "refresh_cpu_p50_ms": round(percentile(cpu_ms, 50), 2),
        "refresh_cpu_p99_ms": round(percentile(cpu_ms, 99), 2),
        "full_window_paint_p50_ms": round(percentile(grab_ms, 50), 2),
        "goal_p99_ms": 15.0,
    }
    rows = [
        ("frame", f"{args.size}x{args.size} int16"),
        ("traces in the model", f"{args.rois} x {samples_in} samples"),
        ("trace bin averages", f"{args.rois} x {bins // max(args.rois, 1)}"),
        ("trace vertices drawn, median / max", f"{figures['trace_vertices_drawn']} / "
                                               f"{figures['trace_vertices_drawn_max']}"),
        ("refreshes measured", str(len(refresh_ms))),
        ("refresh p50 (wall)", f"{figures['refresh_p50_ms']:.2f} ms"),
        ("refresh p99 (wall)", f"{figures['refresh_p99_ms']:.2f} ms"),
        ("refresh max (wall)", f"{figures['refresh_max_ms']:.2f} ms"),
        ("refresh p50 (thread CPU)", f"{figures['refresh_cpu_p50_ms']:.2f} ms"),
        ("refresh p99 (thread CPU)", f"{figures['refresh_cpu_p99_ms']:.2f} ms"),
        ("full window paint p50", f"{figures['full_window_paint_p50_ms']:.2f} ms"),
        ("goal p99", "<= 15 ms"),
    ]
    print_report(
        "Monitor refresh (offscreen): new frame + new trace sample -> panels redrawn and painted",
        rows,
        figures,
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
