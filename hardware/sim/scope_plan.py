"""How big and how fast the simulated microscope images at a session speed: the CPU budget it may use and
frame costs measured once per process, for `plan_for_speed` (`hardware/sim/microscope.py`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hardware.sim.microscope import ImagingPlan, MicroscopeConfig, measure_frame_cost_s

DEFAULT_CPU_BUDGET = 0.3
"""Fraction of one core the microscope's rendering may use (`plan_for_speed`); it measures an idle core,
and in a session rendering costs ~1.5-2x that (contention), so ~half a core in practice."""

_frame_costs: dict[MicroscopeConfig, float] = {}
_frame_costs_lock = threading.Lock()


def cached_frame_cost(config: MicroscopeConfig) -> Callable[[int, int], float]:
    """A `frame_cost_s(height, width)` for `plan_for_speed` that measures each size once per process."""

    def cost(height: int, width: int) -> float:
        key = replace(config, height=height, width=width, seed=0)
        with _frame_costs_lock:
            if key not in _frame_costs:
                _frame_costs[key] = measure_frame_cost_s(key, n_frames=30)
            return _frame_costs[key]

    return cost


def plan_dict(plan: ImagingPlan) -> dict[str, Any]:
    """A plan as plain JSON, for session.json."""
    return {"height": plan.height, "width": plan.width, "rate_hz": plan.rate_hz}
