"""Slow random processes of the preparation: rigid brain motion (with lick jitter) and brightness drift.

Both advance on the Bpod clock in whatever steps the microscope takes, so the statistics do not depend on
the frame rate: an Ornstein-Uhlenbeck process is updated exactly for any step length.
"""

from __future__ import annotations

import heapq
import math

import numpy as np


class OrnsteinUhlenbeck:
    """Mean-reverting random walk with stationary standard deviation `sd` and correlation time `tau_s`."""

    def __init__(self, sd: np.ndarray, tau_s: float, rng: np.random.Generator) -> None:
        self.sd = np.asarray(sd, dtype=float)
        self.tau_s = tau_s
        self._rng = rng
        self.value = self.sd * rng.standard_normal(self.sd.shape)

    def advance(self, dt_s: float) -> np.ndarray:
        if dt_s > 0:
            keep = math.exp(-dt_s / self.tau_s)
            self.value = self.value * keep + self.sd * math.sqrt(1 - keep * keep) * self._rng.standard_normal(
                self.sd.shape)
        return self.value


class BrainMotion:
    """Rigid displacement (dy, dx) in pixels of the current frame: a bounded slow walk plus lick jitter.

    Licks jolt the preparation mostly along y and the jolt decays in ~150 ms, like the brief motion artefacts
    of licking mice; the total is clipped to +/- max_px per axis (the setting is the largest motion).
    """

    def __init__(self, max_px: tuple[float, float], rng: np.random.Generator, walk_tau_s: float = 3.0,
                 jitter_tau_s: float = 0.15) -> None:
        self.max_px = np.asarray(max_px, dtype=float)
        self._rng = rng
        self._walk = OrnsteinUhlenbeck(self.max_px * np.array([0.3, 0.2]), walk_tau_s, rng)
        self._jitter = np.zeros(2)
        self._jitter_tau_s = jitter_tau_s
        self._licks: list[float] = []
        self._time_s: float | None = None

    def lick(self, time_s: float) -> None:
        """A lick at a Bpod time; it moves the field from the first step that passes it."""
        heapq.heappush(self._licks, time_s)

    def advance(self, time_s: float) -> tuple[float, float]:
        """The displacement at `time_s` (steps backwards in time leave it unchanged)."""
        dt = 0.0 if self._time_s is None else max(time_s - self._time_s, 0.0)
        self._time_s = time_s if self._time_s is None else max(self._time_s, time_s)
        walk = self._walk.advance(dt)
        self._jitter *= math.exp(-dt / self._jitter_tau_s)
        while self._licks and self._licks[0] <= self._time_s:
            age = self._time_s - heapq.heappop(self._licks)
            kick = self.max_px * np.array([self._rng.uniform(0.3, 0.6), 0.15 * self._rng.standard_normal()])
            self._jitter += kick * math.exp(-age / self._jitter_tau_s)
        total = np.clip(walk + self._jitter, -self.max_px, self.max_px)
        return float(total[0]), float(total[1])
