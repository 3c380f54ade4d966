"""Session benchmark: a simulated session run as `rig run` runs it, measured from its own data.

Measures
  * dead time between trials from the Bpod's timestamps (start of trial k+1 minus end of trial k),
  * host CPU per trial: the whole process (runner, Bpod reader, emulator and simulated mouse, which
    share the process here) and the runner's own thread (select, build, compile, score, write, fsync),
  * wall time per trial at the chosen emulator speed.

Run: `.venv/bin/python bench/session.py [--trials 200] [--speed 50] [--json]`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import print_report  # noqa: E402
from rig.free_endpoints import free_network_overrides  # noqa: E402
from rig.session import RunOptions, SessionRunner  # noqa: E402
from rig.settings import load_settings  # noqa: E402
from rig.store import read_jsonl  # noqa: E402

CYCLE_S = 1e-4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--speed", type=float, default=50.0, help="emulator speed (times real time)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = load_settings(overrides=free_network_overrides())
    with tempfile.TemporaryDirectory() as data:
        runner = SessionRunner(
            settings,
            RunOptions(
                subject="bench",
                trials=args.trials,
                speed=args.speed,
                data_root=Path(data),
                handle_signals=False,
            ),
        )
        wall0, cpu0, thread0 = time.perf_counter(), time.process_time(), time.thread_time()
        result = runner.run()
        wall, cpu, thread = (
            time.perf_counter() - wall0,
            time.process_time() - cpu0,
            time.thread_time() - thread0,
        )
        records = list(read_jsonl(result.folder / "trials.jsonl"))
    gaps = [
        round((b["bpod"]["trial_start_s"] - a["bpod"]["trial_end_s"]) / CYCLE_S)
        for a, b in zip(records, records[1:], strict=False)
    ]
    durations = [r["bpod"]["trial_end_s"] - r["bpod"]["trial_start_s"] for r in records]
    n = len(records)
    figures = {
        "trials": n,
        "speed": args.speed,
        "dead_time_cycles": max(gaps),
        "dead_time_mean_cycles": round(statistics.fmean(gaps), 3),
        "cpu_ms_per_trial": round(cpu / n * 1e3, 2),
        "runner_thread_cpu_ms_per_trial": round(thread / n * 1e3, 2),
        "wall_ms_per_trial": round(wall / n * 1e3, 1),
        "mean_trial_s_bpod": round(statistics.fmean(durations), 3),
    }
    rows = [
        ("trials", f"{n}"),
        ("emulator speed", f"{args.speed:g}x"),
        ("dead time between trials, max (Bpod clock; the device alone: 1)",
         f"{figures['dead_time_cycles']} cycles"),
        ("dead time between trials, mean", f"{figures['dead_time_mean_cycles']} cycles"),
        ("host CPU per trial, whole process", f"{figures['cpu_ms_per_trial']} ms"),
        ("host CPU per trial, runner thread", f"{figures['runner_thread_cpu_ms_per_trial']} ms"),
        ("wall time per trial", f"{figures['wall_ms_per_trial']} ms"),
        ("mean trial length (Bpod clock)", f"{figures['mean_trial_s_bpod']} s"),
    ]
    print_report(
        "Session on the simulated rig (emulator, simulated mouse, data written and fsynced)",
        rows,
        figures,
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
