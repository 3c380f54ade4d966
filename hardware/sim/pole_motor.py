"""The motorised stage that moves the pole between trials, simulated (a `hardware.pole_motor.PoleMotor`).

The pole's anterior/posterior position is not a Bpod output: the runner moves the motor during the
inter-trial interval, and the Bpod only raises the pole (BNC) during the sample. The simulated mouse
reads `position` when it feels the pole, so in simulation the motor is the only place the tactile cue
lives. The move time is recorded, not simulated: the emulator's inter-trial interval does not wait for it.
"""

from __future__ import annotations

import logging

from hardware.pole_motor import POLE_POSITIONS, PolePosition

log = logging.getLogger(__name__)

DEFAULT_MOVE_TIME_S = 1.5
"""Typical stage travel between the two positions (spec: ~1-2 s)."""


class SimulatedPoleMotor:
    """A pole stage with two positions; `move_to` is instantaneous but counts moves and their time."""

    def __init__(self, position: PolePosition = "posterior",
                 move_time_s: float = DEFAULT_MOVE_TIME_S) -> None:
        if move_time_s < 0:
            raise ValueError(f"move_time_s must be >= 0, got {move_time_s}")
        self._position: PolePosition = _check_position(position)
        self.move_time_s = move_time_s
        self.moves = 0
        """Moves that changed the position."""
        self.total_move_time_s = 0.0
        """What the moves would have taken on the real stage (s)."""

    @property
    def position(self) -> PolePosition:
        return self._position

    def move_to(self, position: PolePosition) -> float:
        """Put the pole at `position`; returns the time the real stage would take (0 if already there)."""
        target = _check_position(position)
        if target == self._position:
            return 0.0
        self._position = target
        self.moves += 1
        self.total_move_time_s += self.move_time_s
        log.debug("pole motor -> %s (move %d)", target, self.moves)
        return self.move_time_s


def _check_position(position: object) -> PolePosition:
    if position not in POLE_POSITIONS:
        raise ValueError(f"pole position must be one of {', '.join(POLE_POSITIONS)}, got {position!r}")
    return position  # type: ignore[return-value]
