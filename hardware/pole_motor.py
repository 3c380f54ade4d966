"""The pole motor as the session drives it: the stage that puts the tactile cue in place between trials.

The pole's anterior/posterior position is not a Bpod output: the session moves the motor during the
inter-trial interval, and the Bpod only raises the pole (BNC) during the sample. `PoleMotor` is what the
session needs of it; `hardware.sim.pole_motor.SimulatedPoleMotor` implements it, and so will a driver for
the real (Zaber) stage.
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args

PolePosition = Literal["anterior", "posterior"]
POLE_POSITIONS: tuple[str, ...] = get_args(PolePosition)


class PoleMotor(Protocol):
    """A pole stage with two positions."""

    @property
    def position(self) -> PolePosition:
        """Where the pole is now."""
        ...

    def move_to(self, position: PolePosition) -> float:
        """Put the pole at `position`; returns the travel time in seconds (0 if already there). Raises
        ValueError for a position that is not one of `POLE_POSITIONS`."""
        ...
