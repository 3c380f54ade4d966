"""The pole motor as the session drives it: the stage that puts the tactile cue in place between trials.

The pole's anterior/posterior position is not a Bpod output: the session moves the motor during the
inter-trial interval, and the Bpod only raises the pole (BNC) during the sample. `PoleMotor` is what the
session needs of it: `hardware.zaber.pole.ZaberPoleMotor` drives a Zaber stage (real or emulated), and
`hardware.sim.pole_motor.SimulatedPoleMotor` is an instantaneous stand-in. `PoleSensor` is what the
simulated mouse feels of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

PolePosition = Literal["anterior", "posterior"]
POLE_POSITIONS: tuple[str, ...] = get_args(PolePosition)


class PoleMotorError(Exception):
    """The pole could not be put in place: the stage is lost, refused the move, or did not finish it.
    The message is one sentence for the user."""


class PoleMotorTimeout(PoleMotorError):
    """The stage did not report idle at its target in time."""


@dataclass(frozen=True)
class PoleMove:
    """One move between trials: the target, the stage positions reached on the way (in order, e.g.
    midpoint then target, in the stage's units) and how long it took on the stage's clock."""

    target: PolePosition
    travel_s: float
    target_position: int | None = None
    reached: tuple[tuple[str, int], ...] = ()

    def to_record(self) -> dict[str, Any]:
        """The trial record's `pole` object."""
        return {"target": self.target, "target_position": self.target_position,
                "reached": [{"at": name, "position": position} for name, position in self.reached],
                "travel_s": round(self.travel_s, 6)}


class PoleSensor(Protocol):
    """Where the pole is, as a mouse would feel it: a named position, or None between positions."""

    @property
    def position(self) -> PolePosition | None:
        ...


class PoleMotor(PoleSensor, Protocol):
    """A pole stage with two positions."""

    def move_to(self, position: PolePosition) -> PoleMove:
        """Put the pole at `position` and return once it is there. Raises ValueError for a position that
        is not one of `POLE_POSITIONS`, PoleMotorError when the stage fails."""
        ...


def check_position(position: object) -> PolePosition:
    if position not in POLE_POSITIONS:
        raise ValueError(f"pole position must be one of {', '.join(POLE_POSITIONS)}, got {position!r}")
    return position  # type: ignore[return-value]
