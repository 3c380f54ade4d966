"""A stage move as a trapezoid velocity profile: accelerate at `accel`, cruise at `speed`, decelerate at
`accel` (a triangle when the move is too short to reach `speed`). Pure, so the emulator's position and
the tests' expected durations come from the same formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Trapezoid:
    """A move from `start` to `target` (microsteps) beginning at `t0` (s on the stage's clock);
    `speed` in microsteps/s, `accel` in microsteps/s^2 (0: infinite, the stage starts at full speed)."""

    start: float
    target: float
    speed: float
    accel: float
    t0: float = 0.0

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")
        if self.accel < 0:
            raise ValueError(f"accel must be >= 0, got {self.accel}")

    @property
    def distance(self) -> float:
        return abs(self.target - self.start)

    def _ramp(self) -> tuple[float, float]:
        """(time, distance) of the acceleration ramp, the same for the deceleration."""
        if self.accel == 0:
            return 0.0, 0.0
        peak = min(self.speed, math.sqrt(self.distance * self.accel))
        return peak / self.accel, peak * peak / (2 * self.accel)

    @property
    def duration(self) -> float:
        """Seconds from start to standstill at the target."""
        t_ramp, d_ramp = self._ramp()
        return 2 * t_ramp + (self.distance - 2 * d_ramp) / self.speed

    @property
    def end(self) -> float:
        return self.t0 + self.duration

    def position(self, t: float) -> float:
        """Where the carriage is at stage time `t`."""
        dt = t - self.t0
        if dt <= 0:
            return self.start
        if dt >= self.duration:
            return self.target
        t_ramp, d_ramp = self._ramp()
        cruise = self.duration - 2 * t_ramp
        if dt < t_ramp:
            travelled = 0.5 * self.accel * dt * dt
        elif dt < t_ramp + cruise:
            travelled = d_ramp + self.speed * (dt - t_ramp)
        else:
            left = self.duration - dt
            travelled = self.distance - 0.5 * self.accel * left * left
        return self.start + math.copysign(travelled, self.target - self.start)

    def velocity(self, t: float) -> float:
        """Speed (microsteps/s, unsigned) at stage time `t`."""
        dt = t - self.t0
        if dt <= 0 or dt >= self.duration:
            return 0.0
        t_ramp, _ = self._ramp()
        if not self.accel:
            return self.speed
        return self.accel * min(dt, t_ramp, self.duration - dt)

    def stopped_at(self, t: float) -> Trapezoid:
        """The move after a `stop` at stage time `t`: decelerate at `accel` from the speed reached (the
        same trapezoid formula, run backwards from a standstill at the stopping point)."""
        v, here = self.velocity(t), self.position(t)
        if v == 0 or not self.accel:
            return Trapezoid(here, here, self.speed, self.accel, t)
        braking = v * v / (2 * self.accel)
        stop = here + math.copysign(braking, self.target - self.start)
        # A symmetric triangle from `2*here - stop` to `stop` passes `here` at speed v halfway through.
        mirror = Trapezoid(2 * here - stop, stop, v, self.accel, t - v / self.accel)
        return mirror
