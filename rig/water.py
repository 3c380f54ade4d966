"""Water delivered, from the valves' open times and their calibration curves.

A valve output held open for t seconds gives the volume its calibration curve has at t (linear between
the measured points, the end segments extended beyond them, never below zero). The open times are the
Bpod's own: the visits of the states whose outputs open a valve, as the trial record holds them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from protocols.trial_record import TrialRecord

ValveCurves = Mapping[str, Sequence[tuple[float, float]]]
"""Output line (Valve1, ...) -> calibration points (valve_time_s, volume_ul)."""


def valve_curves(settings: Any) -> dict[str, list[tuple[float, float]]]:
    """The calibration curve of each reward valve's output line, from a `Settings`."""
    calibration, wiring = settings.bpod.valve_calibration, settings.wiring
    return {getattr(wiring, f"{side}_valve"): [(p.valve_time_s, p.volume_ul)
                                              for p in getattr(calibration, side).root]
            for side in ("left", "right")}


def volume_ul(points: Sequence[tuple[float, float]], open_s: float) -> float:
    """Volume (uL) a valve gives when held open for `open_s` seconds."""
    pts = sorted(points)
    times = np.array([p[0] for p in pts], float)
    volumes = np.array([p[1] for p in pts], float)
    if open_s <= 0 or len(pts) < 2:
        return 0.0
    if open_s < times[0]:
        i = 0
    elif open_s > times[-1]:
        i = len(pts) - 2
    else:
        return float(np.interp(open_s, times, volumes))
    slope = (volumes[i + 1] - volumes[i]) / (times[i + 1] - times[i])
    return max(0.0, float(volumes[i] + slope * (open_s - times[i])))


def trial_water_ul(trial: TrialRecord, valves: ValveCurves | None) -> float:
    """Water the valves gave in one trial: every visit of a state that opens a valve, at its calibrated
    volume. Records without their states' outputs (written before they were kept) count `reward_ul`."""
    outputs = trial.outputs if trial.outputs is not None else trial.extra.get("outputs")
    if trial.bpod is None:
        return 0.0
    if not isinstance(outputs, Mapping) or valves is None:
        return float(trial.reward_ul or 0.0)
    total = 0.0
    for state, actions in outputs.items():
        lines = [line for line, value in (actions or {}).items() if line in valves and value]
        for start, end in trial.bpod.states.get(state, ()):
            if lines and math.isfinite(float(start)) and math.isfinite(float(end)):
                total += sum(volume_ul(valves[line], float(end) - float(start)) for line in lines)
    return round(total, 4)


def session_water_ul(trials: Sequence[TrialRecord], valves: ValveCurves | None) -> float:
    """Water the valves gave over a session's trials (uL)."""
    return round(sum(trial_water_ul(t, valves) for t in trials), 3)
