"""Bpod link benchmark: the client against the emulator over a real pseudo-terminal.

Measures
  * short trials per second (one 100 us state, sent and awaited one by one: the host's cost per trial),
  * dead time between queued trials in cycles, from the Bpod's own timestamps (start of trial k+1 minus
    end of k); the goal is exactly 1 cycle every time, the device's own start of a queued trial (its
    start timestamp is written one interrupt after the previous trial ends), so anything above is the host's,
  * host latency from an input edge in the emulator (a world-scheduled lick) to the client's event
    callback, with the emulator at 1x real time, p50 and p99; then again with the emulator's USB model
    (bytes at 1 ms USB frames on the r2), which is what a real link adds (goal: p99 <= 2 ms).
The emulator runs in its own process (as a real Bpod is its own device) at 1x real time.

Run: `.venv/bin/python bench/bpod_link.py [--json] [--firmware 23]`. Prints a table; with --json the
last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import percentile, print_report  # noqa: E402
from hardware.bpod.client import BpodClient  # noqa: E402
from hardware.bpod.emulator import EmulatorServer  # noqa: E402
from hardware.bpod.trial import TrialEvent  # noqa: E402
from protocols.state_machine import StateMachine  # noqa: E402


def one_state(seconds: float, name: str = "Wait") -> StateMachine:
    sm = StateMachine()
    sm.add_state(name, timer_s=seconds, transitions={"Tup": ">exit"})
    return sm


def short_trials_per_s(client: BpodClient, n: int) -> tuple[float, float]:
    sm = one_state(0.0)
    compile_ms = []
    for _ in range(20):
        t = time.perf_counter()
        client.compile(sm)
        compile_ms.append((time.perf_counter() - t) * 1e3)
    started = time.perf_counter()
    for _ in range(n):
        client.run_trial(sm, timeout_s=5)
    return n / (time.perf_counter() - started), statistics.median(compile_ms)


def queued_dead_time_cycles(client: BpodClient, n: int, trial_s: float) -> list[int]:
    results = []
    client.start_trial(one_state(trial_s))
    for _ in range(n - 1):
        client.wait_for_state({"Wait"}, timeout_s=5)
        client.start_trial(one_state(trial_s))
        results.append(client.wait_for_trial(timeout_s=5))
    results.append(client.wait_for_trial(timeout_s=5))
    return [round((b.start_s - a.end_s) * 1e4) for a, b in zip(results, results[1:], strict=False)]


def serve_emulator(conn: Connection, firmware: int, usb_frames: bool = False) -> None:
    """The emulator in its own process, as a real Bpod is its own device: the client's process
    then pays nothing for the emulator's work. Answers requests for scheduled licks."""
    with EmulatorServer(firmware=firmware, speed=1.0, usb_frames=usb_frames) as server:
        conn.send(server.port)
        while True:
            request = conn.recv()
            if request is None:
                return
            n, interval_s = request
            trial_start = server.world.trials[-1].cycle
            first = server.world.now_cycle + 200
            step = round(interval_s * 1e4)
            onsets = [server.world.pulse_input("Port1", 20, at_cycle=first + i * step) for i in range(n)]
            conn.send([(onset - trial_start, server.host_time(onset)) for onset in onsets])


def event_latencies_ms(conn: Connection, client: BpodClient, n: int, interval_s: float) -> list[float]:
    """Licks scheduled on the emulator's clock; time from each lick's cycle to the client's callback.
    perf_counter is CLOCK_MONOTONIC, shared by both processes."""
    arrivals: dict[int, float] = {}
    done = threading.Event()

    def on_event(event: TrialEvent) -> None:
        if event.name == "Port1In":
            arrivals[event.cycle] = time.perf_counter()
            if len(arrivals) >= n:
                done.set()

    client.on_event = on_event
    client.start_trial(one_state(n * interval_s + 5.0, "Listen"))
    client.wait_for_state({"Listen"}, timeout_s=5)
    conn.send((n, interval_s))
    onsets = conn.recv()
    done.wait(timeout=n * interval_s + 10)
    client.stop_trial()
    client.wait_for_trial(timeout_s=5)
    client.on_event = None
    return [(arrivals[cycle] - host_time) * 1e3 for cycle, host_time in onsets if cycle in arrivals]


def usb_event_latencies_ms(firmware: int, n: int, interval_s: float) -> list[float]:
    """`event_latencies_ms` against an emulator with its USB model on (its own process)."""
    parent, child = multiprocessing.Pipe()
    emulator = multiprocessing.get_context("spawn").Process(
        target=serve_emulator, args=(child, firmware, True), daemon=True)
    emulator.start()
    try:
        with BpodClient(parent.recv()) as client:
            return event_latencies_ms(parent, client, n, interval_s)
    finally:
        parent.send(None)
        emulator.join(timeout=10)
        if emulator.is_alive():
            emulator.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    parser.add_argument("--firmware", type=int, default=23, choices=(22, 23))
    parser.add_argument("--trials", type=int, default=300, help="short trials to time")
    parser.add_argument("--queued", type=int, default=100, help="queued trials for the dead-time figure")
    parser.add_argument("--events", type=int, default=400, help="licks for the latency figure")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    parent, child = multiprocessing.Pipe()
    spawn = multiprocessing.get_context("spawn")
    emulator = spawn.Process(target=serve_emulator, args=(child, args.firmware), daemon=True)
    emulator.start()
    try:
        with BpodClient(parent.recv()) as client:
            rate, compile_ms = short_trials_per_s(client, args.trials)
            dead = queued_dead_time_cycles(client, args.queued, trial_s=0.02)
            latencies = event_latencies_ms(parent, client, args.events, interval_s=0.01)
    finally:
        parent.send(None)
        emulator.join(timeout=10)
        if emulator.is_alive():
            emulator.kill()
    usb = usb_event_latencies_ms(args.firmware, args.events, interval_s=0.01)

    figures = {
        "firmware": args.firmware,
        "trials_per_s": round(rate, 1),
        "compile_ms": round(compile_ms, 3),
        "dead_time_cycles": max(dead),
        "dead_time_min_cycles": min(dead),
        "dead_time_mean_cycles": round(statistics.fmean(dead), 3),
        "dead_time_goal_cycles": 1,
        "queued_trials": args.queued,
        "event_latency_p50_ms": round(percentile(latencies, 50), 3),
        "event_latency_p99_ms": round(percentile(latencies, 99), 3),
        "event_latency_max_ms": round(max(latencies), 3),
        "event_latency_usb_p50_ms": round(percentile(usb, 50), 3),
        "event_latency_usb_p99_ms": round(percentile(usb, 99), 3),
        "event_latency_usb_max_ms": round(max(usb), 3),
        "events_received_usb": len(usb),
        "events_received": len(latencies),
        "events_sent": args.events,
    }
    rows = [
        ("short trials per second (100 us trial, send + wait)", f"{figures['trials_per_s']}"),
        ("compile a 1-state machine, median", f"{figures['compile_ms']} ms"),
        (f"dead time between {args.queued} queued trials, max (goal 1)",
         f"{figures['dead_time_cycles']} cycles"),
        ("dead time between queued trials, min / mean",
         f"{figures['dead_time_min_cycles']} / {figures['dead_time_mean_cycles']} cycles"),
        ("input edge -> client callback, p50 (1x)", f"{figures['event_latency_p50_ms']} ms"),
        ("input edge -> client callback, p99 (1x)", f"{figures['event_latency_p99_ms']} ms"),
        ("input edge -> client callback, max (1x)", f"{figures['event_latency_max_ms']} ms"),
        ("events received / sent", f"{len(latencies)} / {args.events}"),
        ("with 1 ms USB frames: p50", f"{figures['event_latency_usb_p50_ms']} ms"),
        ("with 1 ms USB frames: p99 (goal <= 2 ms)", f"{figures['event_latency_usb_p99_ms']} ms"),
        ("with 1 ms USB frames: max", f"{figures['event_latency_usb_max_ms']} ms"),
        ("with 1 ms USB frames: events received / sent", f"{len(usb)} / {args.events}"),
    ]
    print_report(
        f"Bpod link, firmware {args.firmware}, emulator on a pty in its own process, 1x real time",
        rows,
        figures,
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
