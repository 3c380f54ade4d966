"""An emulated Zaber controller: its axes, their settings and moves, and its answer to each command.

Pure: `Device.handle(command, now_s)` returns the replies the device sends, with `now_s` the stage's own
clock, so positions and BUSY/IDLE follow the trapezoid of every move exactly at any emulator speed. The
commands are the subset a pole stage needs: `home`, `move abs|rel|min|max`, `stop`, `get`/`set` of a
setting, the empty command (status), `warnings [clear]`; anything else is `RJ ... BADCOMMAND`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from dataclasses import dataclass, field

from hardware.zaber.motion import Trapezoid
from hardware.zaber.protocol import (
    ACCEL_DATA_PER_USTEP_S2,
    BADAXIS,
    BADCOMMAND,
    BADDATA,
    BUSY,
    IDLE,
    NO_WARNING,
    OK,
    REJECTED,
    VELOCITY_DATA_PER_USTEP_S,
    Command,
    Reply,
)

log = logging.getLogger(__name__)

DEFAULT_MAXSPEED = 153_600
"""`maxspeed` data of a new axis (93 750 microsteps/s)."""
DEFAULT_ACCEL = 205
"""`accel` data of a new axis (~1.25e6 microsteps/s^2)."""
DEFAULT_LIMIT_MAX = 305_381
"""Travel of a new axis (microsteps), e.g. a 150 mm LSM stage at 0.49 um per microstep."""
FIRMWARE_VERSION = "7.38"
"""What `get version` answers."""
DEVICE_SCOPE = frozenset({"deviceid", "version", "system.serial", "system.axiscount"})
HOME_SPEED_FRACTION = 0.5
"""Homing runs at half `maxspeed` (the home speed setting of a real stage is lower than its top speed)."""


MOVES_KEPT = 256
"""Moves an axis remembers for inspection (two per pole trial: the midpoint, then the target)."""

@dataclass
class Axis:
    """One motor axis: settings in data units, as the device stores them."""

    number: int
    maxspeed: int = DEFAULT_MAXSPEED
    accel: int = DEFAULT_ACCEL
    limit_min: int = 0
    limit_max: int = DEFAULT_LIMIT_MAX
    resolution: int = 64
    """Microsteps per full step."""
    homed: bool = False
    move: Trapezoid | None = None
    interrupted: bool = False
    stuck: bool = False
    """A fault for tests: the carriage does not move but the axis stays BUSY (never reaches a target)."""
    moves: deque[Trapezoid] = field(default_factory=lambda: deque(maxlen=MOVES_KEPT))
    """The last MOVES_KEPT moves started, in order (stage-clock times), so tests read durations on the
    stage's clock; a session of thousands of trials keeps no more."""
    _position: float = 0.0
    _homing: bool = False

    @property
    def speed(self) -> float:
        return self.maxspeed / VELOCITY_DATA_PER_USTEP_S

    @property
    def acceleration(self) -> float:
        return self.accel / ACCEL_DATA_PER_USTEP_S2

    def position(self, now: float) -> float:
        if self.move is None or self.stuck:
            return self._position
        return self.move.position(now)

    def busy(self, now: float) -> bool:
        return self.stuck or (self.move is not None and now < self.move.end)

    def settle(self, now: float) -> None:
        """Finish a move that has ended by `now`."""
        if self.move is not None and not self.stuck and now >= self.move.end:
            self._position, self.move = self.move.target, None
            self.homed = self.homed or self._homing
            self._homing = False

    def start(self, target: float, now: float, speed: float | None = None, homing: bool = False) -> None:
        self.settle(now)
        self.interrupted = self.busy(now)
        here = self.position(now)
        if self.stuck:
            return
        self.move = Trapezoid(here, target, speed or self.speed, self.acceleration, now)
        self._position, self._homing = here, homing
        self.moves.append(self.move)

    def stop(self, now: float) -> None:
        self.settle(now)
        if self.move is not None:
            self.interrupted = True
            self.move = self.move.stopped_at(now)
            self._homing = False

    def warning(self, now: float) -> str:
        if not self.homed and not (self._homing and self.busy(now)):
            return "WR"
        return "NI" if self.interrupted else NO_WARNING


class Device:
    """A controller at `address` with `axes` motor axes."""

    def __init__(self, address: int = 1, axes: int = 1, device_id: int = 50081, serial: int = 1) -> None:
        self.address = address
        self.device_id = device_id
        self.serial = serial
        self.axes = {n: Axis(n) for n in range(1, axes + 1)}

    def axis(self, number: int) -> Axis:
        return self.axes[number]

    def handle(self, command: Command, now: float) -> list[Reply]:
        """The replies to `command` at stage time `now` (none when it is for another device)."""
        if command.device not in (0, self.address):
            return []
        for axis in self.axes.values():
            axis.settle(now)
        if command.axis != 0 and command.axis not in self.axes:
            replies = [self._reply(command.axis, now, REJECTED, BADAXIS)]
        elif not command.words:
            replies = [self._reply(command.axis, now, OK, "0")]
        else:
            try:
                replies = self._dispatch(command, command.words, now)
            except _Rejected as exc:
                replies = [self._reply(command.axis, now, REJECTED, exc.reason)]
        return [dataclasses.replace(r, message_id=command.message_id) for r in replies]

    # -- commands -----------------------------------------------------------------------------------

    def _dispatch(self, command: Command, words: list[str], now: float) -> list[Reply]:
        verb, args = words[0], words[1:]
        targets = [self.axes[command.axis]] if command.axis else list(self.axes.values())
        if verb == "home" and not args:
            for axis in targets:
                axis.start(axis.limit_min, now, axis.speed * HOME_SPEED_FRACTION, homing=True)
            return [self._reply(command.axis, now, OK, "0")]
        if verb == "move":
            if command.axis == 0 and len(self.axes) > 1:
                raise _Rejected(BADAXIS)  # a move needs an axis on a multi-axis device
            axis = targets[0]
            axis.start(self._move_target(axis, args, now), now)
            return [self._reply(command.axis, now, OK, "0")]
        if verb in ("stop", "estop") and not args:
            for axis in targets:
                axis.stop(now)
            return [self._reply(command.axis, now, OK, "0")]
        if verb == "get" and len(args) == 1:
            scope = targets[:1] if args[0] in DEVICE_SCOPE else targets  # one value for the whole device
            values = [self._get(axis, args[0], now) for axis in scope]
            return [self._reply(command.axis, now, OK, " ".join(values))]
        if verb == "set" and len(args) == 2:
            for axis in targets:
                self._set(axis, args[0], args[1])
            return [self._reply(command.axis, now, OK, "0")]
        if verb == "warnings" and args in ([], ["clear"]):
            flags = sorted({a.warning(now) for a in targets} - {NO_WARNING})
            if args:
                for axis in targets:
                    axis.interrupted = False
            return [self._reply(command.axis, now, OK, " ".join([f"{len(flags):02d}", *flags]))]
        raise _Rejected(BADCOMMAND)

    def _move_target(self, axis: Axis, args: list[str], now: float) -> float:
        if args == ["min"]:
            return axis.limit_min
        if args == ["max"]:
            return axis.limit_max
        if len(args) != 2 or args[0] not in ("abs", "rel"):
            raise _Rejected(BADCOMMAND)
        value = _whole(args[1])
        target = value if args[0] == "abs" else axis.position(now) + value
        if not axis.limit_min <= target <= axis.limit_max:
            raise _Rejected(BADDATA)
        return target

    def _get(self, axis: Axis, name: str, now: float) -> str:
        values = {"pos": round(axis.position(now)), "maxspeed": axis.maxspeed, "accel": axis.accel,
                  "limit.min": axis.limit_min, "limit.max": axis.limit_max, "deviceid": self.device_id,
                  "system.axiscount": len(self.axes), "version": FIRMWARE_VERSION,
                  "system.serial": self.serial, "resolution": axis.resolution}
        if name not in values:
            raise _Rejected(BADCOMMAND)
        return str(values[name])

    def _set(self, axis: Axis, name: str, text: str) -> None:
        if name not in ("maxspeed", "accel"):
            raise _Rejected(BADCOMMAND)
        value = _whole(text)
        if value < (1 if name == "maxspeed" else 0):
            raise _Rejected(BADDATA)
        setattr(axis, name, value)

    def _reply(self, axis_number: int, now: float, flag: str, data: str) -> Reply:
        axes = [self.axes[axis_number]] if axis_number in self.axes else list(self.axes.values())
        busy = any(a.busy(now) for a in axes)
        warning = next((w for a in axes if (w := a.warning(now)) != NO_WARNING), NO_WARNING)
        return Reply(self.address, axis_number, flag, BUSY if busy else IDLE, warning, data)  # type: ignore[arg-type]


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Rejected(BADDATA) from None
