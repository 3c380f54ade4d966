"""The pole motor on a Zaber stage (a `hardware.pole_motor.PoleMotor`).

The lab's rule: before every pole trial the stage goes to the midpoint first and then to the trial's
position, even when the pole is already there, so that the motor's sound and travel time never predict
the trial type. `move_to` returns when the stage reports IDLE at the target, and the session starts the
trial only then. The whole move must end within `move_timeout_s` on the stage's clock (the host's for a
real stage, the emulator's for an emulated one); otherwise the stage is stopped and `PoleMotorTimeout`
raised (hardware/zaber/axis.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from hardware.pole_motor import PoleMotorError, PoleMotorTimeout, PoleMove, PolePosition, check_position
from hardware.settings import PoleMotorSettings
from hardware.zaber.axis import POLL_S, ZaberStage
from hardware.zaber.client import ZaberClient, ZaberError

log = logging.getLogger(__name__)

TOLERANCE = 10
"""Microsteps from a named position that still count as being there."""


@dataclass(frozen=True)
class PolePositions:
    """The stage positions (microsteps) of the pole's places."""

    anterior: int
    posterior: int
    midpoint: int
    tolerance: int = TOLERANCE

    @classmethod
    def from_settings(cls, settings: PoleMotorSettings) -> PolePositions:
        return cls(settings.anterior, settings.posterior, settings.midpoint_position)

    def of(self, position: PolePosition) -> int:
        return self.anterior if position == "anterior" else self.posterior

    def named(self, stage_position: float) -> PolePosition | None:
        for name in ("anterior", "posterior"):
            if abs(stage_position - self.of(name)) <= self.tolerance:  # type: ignore[arg-type]
                return name  # type: ignore[return-value]
        return None


class ZaberPoleMotor(ZaberStage):
    """The pole's anterior-posterior axis on a Zaber controller; `clock` is the stage's clock (s)."""

    name = "pole motor"
    section = "pole_motor"
    error = PoleMotorError
    timeout_error = PoleMotorTimeout
    settings: PoleMotorSettings

    def __init__(self, client: ZaberClient, settings: PoleMotorSettings,
                 clock: Callable[[], float] = time.monotonic, poll_s: float = POLL_S) -> None:
        super().__init__(client, settings, clock, poll_s)
        self.positions = PolePositions.from_settings(settings)
        self._position: PolePosition | None = None

    def place(self, travel: int) -> None:
        s = self.settings
        beyond = [f"{name} {value}" for name, value in (("anterior", s.anterior), ("posterior", s.posterior))
                  if value > travel]
        if beyond:
            raise PoleMotorError(f"pole motor: {', '.join(beyond)} is beyond the stage's travel (limit.max "
                                 f"{travel} microsteps); fix pole_motor.anterior/posterior")
        self._position = self.positions.named(self.axis.position())

    # -- PoleMotor ----------------------------------------------------------------------------------

    @property
    def position(self) -> PolePosition | None:
        return self._position

    def move_to(self, position: PolePosition) -> PoleMove:
        """Midpoint, then `position`; returns when the stage is idle there."""
        target = check_position(position)
        start = self.clock()
        self._position = None
        reached: list[tuple[str, int]] = []
        try:
            for leg, where in (("midpoint", self.positions.midpoint), ("target", self.positions.of(target))):
                timeout = self.settings.move_timeout_s
                reached.append((leg, self.axis.move_to(where, timeout, f"the move to the {leg} ({where})")))
        except ZaberError as exc:
            raise PoleMotorError(f"pole motor: {exc}") from None
        self._position = self.positions.named(reached[-1][1])
        if self._position != target:
            raise PoleMotorError(f"pole motor: the stage stopped at {reached[-1][1]}, not at the {target} "
                                 f"position {self.positions.of(target)}")
        move = PoleMove(target, self.clock() - start, self.positions.of(target), tuple(reached))
        log.debug("pole motor -> %s in %.3f s", target, move.travel_s)
        return move
