"""The lickport motor on a Zaber stage (a `hardware.lickport_motor.LickportMotor`).

At open the stage is configured, homed if it has no reference, and put at the centre position; each
`step_toward` then moves it one `step` left (lower positions) or right of where it is and returns when
the stage reports IDLE there. A move not finished within `move_timeout_s` on the stage's clock stops the
stage and raises `LickportMotorTimeout` (hardware/zaber/axis.py).
"""

from __future__ import annotations

import logging

from hardware.lickport_motor import (
    LickportMotorError,
    LickportMotorTimeout,
    LickportMove,
    LickportSide,
)
from hardware.settings import LickportMotorSettings
from hardware.zaber.axis import ZaberStage
from hardware.zaber.client import ZaberError, ZaberRejected

log = logging.getLogger(__name__)


class ZaberLickportMotor(ZaberStage):
    """The lickport's left-right axis on a Zaber controller; `clock` is the stage's clock (s)."""

    name = "lickport motor"
    section = "lickport_motor"
    error = LickportMotorError
    timeout_error = LickportMotorTimeout
    settings: LickportMotorSettings
    _position: int
    """Where the stage is (microsteps), from `place` (the centre) on."""

    def place(self, travel: int) -> None:
        s = self.settings
        if s.centre > travel:
            raise LickportMotorError(f"lickport motor: the centre {s.centre} is beyond the stage's travel "
                                     f"(limit.max {travel} microsteps); fix lickport_motor.centre")
        self._position = self._move(s.centre, f"the move to the centre ({s.centre})")

    # -- LickportMotor ------------------------------------------------------------------------------

    @property
    def offset(self) -> int:
        return self._position - self.settings.centre

    def step_toward(self, side: LickportSide) -> LickportMove:
        """One step toward `side` from where the stage is; returns when it is idle there."""
        if side not in ("left", "right"):
            raise ValueError(f"lickport side must be left or right, got {side!r}")
        target = self._position + (self.settings.step if side == "right" else -self.settings.step)
        start = self.clock()
        self._position = self._move(target, f"the step {side} (to {target})")
        move = LickportMove(side, self._position, self.offset, self.clock() - start)
        log.info("lickport motor: one step %s, now %+d microsteps from the centre", side, move.offset)
        return move

    def _move(self, target: int, what: str) -> int:
        try:
            reached = self.axis.move_to(target, self.settings.move_timeout_s, what)
        except ZaberRejected as exc:
            raise LickportMotorError(f"lickport motor: {exc} ({what}: beyond the stage's travel?)") from None
        except ZaberError as exc:
            raise LickportMotorError(f"lickport motor: {exc}") from None
        if reached != target:
            raise LickportMotorError(f"lickport motor: the stage stopped at {reached}, not at {target} "
                                     f"({what})")
        return reached
