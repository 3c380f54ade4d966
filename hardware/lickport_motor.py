"""The lickport motor as the session drives it: the lateral stage that moves the two lick ports.

The home-cage firmware moves the lickport a step toward the side the mouse performs worse on when a bias
develops (`protocols.lickport.LickportBiasCorrection` decides when). `LickportMotor` is what the session
needs of such a stage; `hardware.zaber.lickport.ZaberLickportMotor` drives a Zaber stage (real or
emulated). Positions are the stage's microsteps, increasing toward the mouse's right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

LickportSide = Literal["left", "right"]


class LickportMotorError(Exception):
    """The lickport could not be moved: the stage is lost, refused the move, or did not finish it. The
    message is one sentence for the user."""


class LickportMotorTimeout(LickportMotorError):
    """The stage did not report idle at its target in time."""


@dataclass(frozen=True)
class LickportMove:
    """One step: its side, the stage position reached, the offset from the centre after it (microsteps,
    + right) and how long it took on the stage's clock."""

    toward: LickportSide
    position: int
    offset: int
    travel_s: float

    def to_record(self) -> dict[str, Any]:
        """The trial record's `lickport` object (without the trial it followed, which the session adds)."""
        return {"toward": self.toward, "position": self.position, "offset": self.offset,
                "travel_s": round(self.travel_s, 6)}


class LickportMotor(Protocol):
    """A lateral lickport stage."""

    @property
    def offset(self) -> int:
        """Where the lickport is, from its centre position (microsteps; positive: toward the right)."""
        ...

    def step_toward(self, side: LickportSide) -> LickportMove:
        """Move the lickport one step toward `side` and return once it is there; LickportMotorError when
        the stage fails."""
        ...
