"""The lickport motor as the session would drive it: the lateral stage that moves the two lick ports.

The home-cage firmware moves the lickport a step toward the side the mouse performs worse on when a bias
develops (`protocols.lickport.LickportBiasCorrection` decides when). `LickportMotor` is what the session
needs of such a stage; a driver for a real (Zaber) stage implements it. None is built yet.
"""

from __future__ import annotations

from typing import Literal, Protocol

LickportSide = Literal["left", "right"]


class LickportMotor(Protocol):
    """A lateral lickport stage."""

    @property
    def offset_mm(self) -> float:
        """Where the lickport is, from its starting position (positive: toward the right)."""
        ...

    def step_toward(self, side: LickportSide, mm: float) -> float:
        """Move the lickport `mm` toward `side`; returns the travel time in seconds."""
        ...
