"""What the simulated mouse feels of the pole: an instantaneous stand-in motor, or the emulated Zaber stage.

The pole's anterior/posterior position is not a Bpod output: the runner moves the motor during the
inter-trial interval, and the Bpod only raises the pole (BNC) during the sample. The simulated mouse
reads a `PoleSensor`'s `position` when it feels the pole, so in simulation the motor is the only place the
tactile cue lives. The simulated rig gives it `StagePoleSensor`, the emulated stage's carriage read at the
present; `SimulatedPoleMotor` (moves counted, not timed) serves tests that need no pty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hardware.pole_motor import PoleMove, PolePosition, check_position
from hardware.zaber.pole import PolePositions

log = logging.getLogger(__name__)

DEFAULT_MOVE_TIME_S = 1.5
"""Typical stage travel between the two positions (spec: ~1-2 s)."""


class SimulatedPoleMotor:
    """A pole stage with two positions; `move_to` is instantaneous but counts moves and their time."""

    def __init__(self, position: PolePosition = "posterior",
                 move_time_s: float = DEFAULT_MOVE_TIME_S) -> None:
        if move_time_s < 0:
            raise ValueError(f"move_time_s must be >= 0, got {move_time_s}")
        self._position: PolePosition = check_position(position)
        self.move_time_s = move_time_s
        self.moves = 0
        """Moves that changed the position."""
        self.total_move_time_s = 0.0
        """What the moves would have taken on the real stage (s)."""

    @property
    def position(self) -> PolePosition:
        return self._position

    def move_to(self, position: PolePosition) -> PoleMove:
        """Put the pole at `position`; travel_s is what the real stage would take (0 if already there)."""
        target = check_position(position)
        if target == self._position:
            return PoleMove(target, 0.0)
        self._position = target
        self.moves += 1
        self.total_move_time_s += self.move_time_s
        log.debug("pole motor -> %s (move %d)", target, self.moves)
        return PoleMove(target, self.move_time_s)


class StagePoleSensor:
    """The pole as the emulated stage's carriage has it: `carriage()` reads the axis position now (on the
    stage's clock), named when it is within `positions.tolerance` of anterior or posterior."""

    def __init__(self, carriage: Callable[[], float], positions: PolePositions) -> None:
        self.carriage = carriage
        self.positions = positions

    @property
    def position(self) -> PolePosition | None:
        return self.positions.named(self.carriage())
