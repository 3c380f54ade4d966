"""Soak benchmark: a long simulated session as `rig run` runs it, watching every process's memory.

Runs the simulated rig (Bpod emulator and simulated mouse in this process, the simulated microscope's
rendering process, the online module) for `--hours` of Bpod time at `--speed` times real time, and samples
each process's resident memory (VmRSS from /proc/<pid>/status) every `--interval` host seconds, with the
trials done so far. Per process it prints RSS at the first and last sample and the growth per 1,000 trials
after `--warmup-trials` (the slope of a least-squares line through the samples after warm-up: what is
kept per trial shows as a slope, bounded buffers filling during warm-up do not). It also reports frames
the microscope could not deliver to the online module and the online module's restarts, from the session's
own session.json. Goal: under 100 KB per 1,000 trials for every process, 0 undeliverable frames.

A status line shows progress (stderr). Ctrl-C ends the session early and reports what was measured.

Run: `.venv/bin/python bench/soak.py [--hours 8] [--speed 50] [--interval 2] [--warmup-trials 1000] [--json]`
(the default, 8 simulated hours at 50x, takes about 10 minutes of wall time; `--hours 0.5` about 40 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import print_report  # noqa: E402
from rig.free_endpoints import free_network_overrides  # noqa: E402
from rig.session import RunOptions, SessionResult, SessionRunner  # noqa: E402
from rig.settings import load_settings  # noqa: E402

GOAL_KB_PER_1000_TRIALS = 100.0


# -- /proc readers (no dependency beyond Linux) ---------------------------------------------------------


def rss_kb(pid: int) -> int | None:
    """Resident memory of a process in KB (VmRSS), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(text.rsplit(")", 1)[1].split()[1])  # after "(comm)": state, then ppid


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def descendants(root: int) -> dict[int, int]:
    """pid -> parent pid of every living descendant of `root`."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent(int(entry))
            if parent is not None:
                parents[int(entry)] = parent
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = parent
                frontier.append(child)
    return found


def session_processes(root: int) -> dict[str, int]:
    """role -> pid of the session's processes: this one (the rig), the online module, the microscope's
    forkserver and the microscope process (forked by it)."""
    roles = {"rig": root}
    tree = descendants(root)
    servers = [pid for pid in tree if any("forkserver" in part for part in _cmdline(pid))
               and tree[pid] == root]
    for pid, parent in tree.items():
        command = _cmdline(pid)
        if "-m" in command and "online" in command:
            roles["online"] = pid
        elif parent in servers:
            roles["microscope"] = pid
        elif pid in servers:
            roles["forkserver"] = pid
    return roles


# -- samples and growth -------------------------------------------------------------------------------------


@dataclass
class Series:
    """One process role's samples: (trials done, RSS KB), per pid (a restarted module is a new pid)."""

    pids: list[int] = field(default_factory=list)
    samples: list[tuple[int, int, int]] = field(default_factory=list)
    """(pid, trials, rss_kb)"""

    def add(self, pid: int, trials: int, rss: int) -> None:
        if not self.pids or self.pids[-1] != pid:
            self.pids.append(pid)
        self.samples.append((pid, trials, rss))

    def growth_kb_per_1000(self, warmup_trials: int) -> float | None:
        """Least-squares slope of RSS over trials after warm-up, for the last pid; None with too little."""
        points = [(t, r) for pid, t, r in self.samples if pid == self.pids[-1] and t >= warmup_trials]
        if len(points) < 3 or points[-1][0] - points[0][0] < 10:
            return None
        n = len(points)
        mean_t = sum(t for t, _ in points) / n
        mean_r = sum(r for _, r in points) / n
        var = sum((t - mean_t) ** 2 for t, _ in points)
        if var == 0:
            return None
        slope = sum((t - mean_t) * (r - mean_r) for t, r in points) / var
        return round(1000 * slope, 1)


class SessionInThread:
    """The session in a thread of this process, as `rig run` runs it in its main thread."""

    def __init__(self, runner: SessionRunner) -> None:
        self.runner = runner
        self.result: SessionResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="soak-session", daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.runner.run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def _status_line(hours: float, elapsed_s: float, speed: float, trials: int, latest: dict[str, int],
                 restarts: int) -> str:
    """Progress in host time against the session's length at speed (a loaded host runs behind it)."""
    planned_s = hours * 3600 / speed
    memory = ", ".join(f"{role} {kb / 1024:.0f} MB" for role, kb in latest.items())
    return (f"soak {elapsed_s:5.0f} s of ~{planned_s:.0f} s | trials {trials:6d} | {memory} | "
            f"restarts {restarts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=8.0, help="simulated hours (Bpod clock)")
    parser.add_argument("--speed", type=float, default=50.0, help="emulator speed (times real time)")
    parser.add_argument("--interval", type=float, default=2.0, help="host seconds between samples")
    parser.add_argument("--warmup-trials", type=int, default=1000,
                        help="trials before the growth is measured (bounded buffers fill meanwhile)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    args = parser.parse_args()
    if not (args.hours > 0 and args.speed > 0 and args.interval > 0 and args.warmup_trials >= 0):
        parser.error("--hours, --speed and --interval must be positive, --warmup-trials at least 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings(overrides=free_network_overrides())
    series: dict[str, Series] = {}
    tty = sys.stderr.isatty()
    with tempfile.TemporaryDirectory() as data:
        runner = SessionRunner(settings, RunOptions(subject="soak", minutes=args.hours * 60, speed=args.speed,
                                                    data_root=Path(data), handle_signals=False))
        session = SessionInThread(runner)
        t0 = time.monotonic()
        session.thread.start()
        samples = 0
        try:
            while session.thread.is_alive():
                status = runner.status()
                trials = int(status.get("trials", 0))
                latest = {}
                for role, pid in session_processes(os.getpid()).items():
                    rss = rss_kb(pid)
                    if rss is not None:
                        series.setdefault(role, Series()).add(pid, trials, rss)
                        latest[role] = rss
                samples += 1
                online = (status.get("children") or {}).get("online") or {}
                line = _status_line(args.hours, time.monotonic() - t0, args.speed, trials, latest,
                                    int(online.get("restarts") or 0))
                if tty:
                    sys.stderr.write("\r" + line.ljust(120))
                elif samples % 15 == 1:
                    sys.stderr.write(line + "\n")
                sys.stderr.flush()
                session.thread.join(args.interval)
        except KeyboardInterrupt:
            sys.stderr.write("\ninterrupted: stopping the session after the current trial\n")
            runner.request_stop("Ctrl-C")
            session.thread.join()
        if tty:
            sys.stderr.write("\n")
        wall_s = time.monotonic() - t0
        if session.error is not None:
            raise session.error
        assert session.result is not None
        info = json.loads((session.result.folder / "session.json").read_text())
    trials = session.result.trials
    imaging = info.get("imaging") or {}
    lossless = imaging.get("lossless") or {}
    online = info.get("online") or {}
    processes: dict[str, Any] = {}
    for role, s in series.items():
        processes[role] = {"pids": s.pids, "rss_start_kb": s.samples[0][2], "rss_end_kb": s.samples[-1][2],
                           "rss_peak_kb": max(r for _, _, r in s.samples),
                           "growth_kb_per_1000_trials": s.growth_kb_per_1000(args.warmup_trials)}
    growths = {role: p["growth_kb_per_1000_trials"] for role, p in processes.items()
               if p["growth_kb_per_1000_trials"] is not None}
    worst = max(growths, key=lambda role: growths[role]) if growths else None
    figures = {
        "trials": trials, "hours": args.hours, "speed": args.speed, "warmup_trials": args.warmup_trials,
        "wall_s": round(wall_s, 1), "samples": samples, "end_reason": session.result.end_reason,
        "rss_growth_kb_per_1000_trials": growths[worst] if worst is not None else None,
        "worst_process": worst, "goal_kb_per_1000_trials": GOAL_KB_PER_1000_TRIALS,
        "undeliverable_frames": lossless.get("undeliverable"), "frames_made": imaging.get("frames_made"),
        "restarts": online.get("restarts", 0), "online_gaps": len(online.get("gaps") or []),
        "processes": processes,
    }
    rows = [("trials", f"{trials}"), ("simulated hours at speed", f"{args.hours:g} h at {args.speed:g}x"),
            ("wall time", f"{wall_s:.0f} s")]
    for role, p in processes.items():
        growth = p["growth_kb_per_1000_trials"]
        rows.append((f"{role}: RSS start -> end (peak)",
                     f"{p['rss_start_kb'] / 1024:.1f} -> {p['rss_end_kb'] / 1024:.1f} MB "
                     f"({p['rss_peak_kb'] / 1024:.1f})"))
        rows.append((f"{role}: growth after {args.warmup_trials} trials",
                     "too few trials after warm-up" if growth is None else f"{growth:g} KB / 1000 trials"))
    rows += [("undeliverable frames (microscope -> online)", f"{figures['undeliverable_frames']}"),
             ("online module restarts", f"{figures['restarts']}")]
    print_report(f"Soak: {args.hours:g} simulated hours at {args.speed:g}x, RSS of every process "
                 f"(goal: < {GOAL_KB_PER_1000_TRIALS:g} KB per 1000 trials, 0 undeliverable frames)",
                 rows, figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
