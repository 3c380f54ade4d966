"""Batch replay benchmark: frames per second of one session on one Dask worker, and the speed-up of 8 sessions
on 2 workers over the same 8 on 1.

The sessions are loop-mode ScanImage files written with hardware/scanimage/writer.py from simulated frames
(bench/online.py's `write_replay_files`: 512x512 int16, 500 neurons, their footprints as the ROIs), the
settings' default online pipeline. One session is written; the other seven are hard links of its files (the
same pixels, so every session costs the same, and writing is quick), so the files are read from the page
cache: the figures are the pipeline with file reading (memory-mapped pages, copied out) but not a disk.
Each figure is the wall time of `online.batch_replay.run_batch` on a local cluster of that many worker
processes (one thread, one BLAS thread each), started and warmed (one untimed replay of a session on each
worker) before the clock runs: task dispatch and result collection are included, cluster start-up is not
(`..._in_task`: the replay's own clock inside the worker, without them).

Goals: >= 2,000 frames/s per worker (file reading included); speed-up >= 1.8 on 2 cores.

Run: `.venv/bin/python bench/replay.py [--files 4] [--frames-per-file 300] [--size 512] [--json]`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.online import DEFAULTS, FULL_SIZE, write_replay_files  # noqa: E402
from bench.report import print_report  # noqa: E402
from online.batch_replay import SessionTask, find_sessions, open_client, replay_session, run_batch  # noqa: E402
from online.config import PipelineConfig  # noqa: E402

SESSIONS = 8


def write_sessions(subject: Path, files: int, frames_per_file: int, size: int) -> Path:
    """`SESSIONS` session folders under `subject` (the first written, the others hard links of it);
    returns the ROIs' file."""
    neurons = max(20, round(FULL_SIZE.n_neurons * (size / FULL_SIZE.height) ** 2))
    microscope = dataclasses.replace(FULL_SIZE, height=size, width=size, n_neurons=neurons)
    first = subject / "s0"
    paths, _ = write_replay_files(first, files, frames_per_file, microscope)
    for k in range(1, SESSIONS):
        imaging = subject / f"s{k}" / "imaging"
        imaging.mkdir(parents=True)
        for path in paths:
            os.link(path, imaging / path.name)
    return first / "rois.npz"


def timed_batch(tasks: list[SessionTask], workers: int, rois: Path, config: PipelineConfig,
                warm: Path) -> dict[str, Any]:
    """Wall time and frames of the tasks on a local cluster of `workers` processes, each warmed by one
    untimed replay of the first session (outputs in `warm`), so no timed run pays the one-off costs."""
    with open_client(None, workers) as client:
        warm_up = [client.submit(replay_session, dataclasses.replace(tasks[0], out=warm / f"{k}"), rois,
                                 config, workers=[address], pure=False)
                   for k, address in enumerate(client.nthreads())]
        client.gather(warm_up)
        t0 = time.perf_counter()
        results = run_batch(client, tasks, rois, config)
        seconds = time.perf_counter() - t0
    failed = [f"{r.name}: {r.reason()}" for r in results if r.failed]
    if failed:
        raise RuntimeError("; ".join(failed))
    frames = sum(r.frames for r in results)
    return {"seconds": seconds, "frames": frames, "frames_per_s": frames / seconds,
            "in_task_frames_per_s": frames / sum(r.seconds for r in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4, help="loop-mode files (trials) per session")
    parser.add_argument("--frames-per-file", type=int, default=300)
    parser.add_argument("--size", type=int, default=FULL_SIZE.height, help="frame height and width (px)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = PipelineConfig(DEFAULTS.online, frame_rate_hz=DEFAULTS.imaging.frame_rate_hz)
    with tempfile.TemporaryDirectory() as tmp:
        subject = Path(tmp) / "subject"
        rois = write_sessions(subject, args.files, args.frames_per_file, args.size)
        out = Path(tmp) / "out"
        runs = {}
        for key, workers, n in (("one", 1, 1), ("eight_1", 1, SESSIONS), ("eight_2", 2, SESSIONS)):
            tasks = find_sessions([subject], out=out / key)[:n]
            runs[key] = timed_batch(tasks, workers, rois, config, out / f"warm-{key}")
    figures = {
        "frame_size": args.size, "frames_per_session": args.files * args.frames_per_file,
        "sessions": SESSIONS,
        "frames_per_s_one_worker": round(runs["one"]["frames_per_s"], 1),
        "frames_per_s_one_worker_in_task": round(runs["one"]["in_task_frames_per_s"], 1),
        "frames_per_s_8_sessions_1_worker": round(runs["eight_1"]["frames_per_s"], 1),
        "frames_per_s_8_sessions_2_workers": round(runs["eight_2"]["frames_per_s"], 1),
        "seconds_8_sessions_1_worker": round(runs["eight_1"]["seconds"], 3),
        "seconds_8_sessions_2_workers": round(runs["eight_2"]["seconds"], 3),
        "speedup_2_workers": round(runs["eight_1"]["seconds"] / runs["eight_2"]["seconds"], 3),
        "cores": len(os.sched_getaffinity(0)),
    }
    rows = [("one session, one worker (frames/s; goal >= 2000)", figures["frames_per_s_one_worker"]),
            ("  the same, inside the task (replay's own clock)", figures["frames_per_s_one_worker_in_task"]),
            (f"{SESSIONS} sessions, 1 worker (frames/s)", figures["frames_per_s_8_sessions_1_worker"]),
            (f"{SESSIONS} sessions, 2 workers (frames/s)", figures["frames_per_s_8_sessions_2_workers"]),
            ("speed-up, 2 workers over 1 (goal >= 1.8)", figures["speedup_2_workers"])]
    print_report(f"Batch replay: {args.size}x{args.size} int16, {figures['frames_per_session']} frames per "
                 f"session, {figures['cores']} cores", [(name, f"{value:.2f}") for name, value in rows],
                 figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
