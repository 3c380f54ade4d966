"""One motor axis of a Zaber controller as a stage driver uses it: speed and acceleration set, homed when it
has no reference, and every move waited for until IDLE within a timeout on the stage's clock; and
`ZaberStage`, the base of the drivers on such an axis (open, prepare, close).

The pole and the lickport drivers share them; each names itself (`name`, in every message, and its
settings `section`) and gives the errors its own interface raises. A BUSY reply whose query was sent after
the deadline is the only proof of a timeout, so the verdict does not depend on how fast the host polls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

from hardware.zaber.client import ZaberClient, ZaberError, ZaberRejected
from hardware.zaber.protocol import (
    ACCEL_DATA_PER_USTEP_S2,
    UNHOMED,
    VELOCITY_DATA_PER_USTEP_S,
    describe_warning,
    is_fault,
)

if TYPE_CHECKING:
    from hardware.zaber.emulator.server import ZaberEmulatorServer

log = logging.getLogger(__name__)


@dataclass
class StageAxis:
    """`device`/`axis` on `client`; `clock` is the stage's clock (s), `poll_s` the host pause between two
    status queries. `error` is raised for a fault, `timeout_error` (a subclass of it) for a timeout."""

    client: ZaberClient
    device: int
    axis: int
    name: str
    error: type[Exception]
    timeout_error: type[Exception]
    clock: Callable[[], float] = time.monotonic
    poll_s: float = 0.01

    def configure(self, max_speed: float, accel: float, home_timeout_s: float) -> None:
        """Top speed (microsteps/s) and acceleration (microsteps/s^2); home if the axis has no reference."""
        dev, axis = self.device, self.axis
        self.client.set(dev, axis, "maxspeed", max(1, round(max_speed * VELOCITY_DATA_PER_USTEP_S)))
        self.client.set(dev, axis, "accel", max(1, round(accel * ACCEL_DATA_PER_USTEP_S2)))
        status = self.client.status(dev, axis)
        if status.warning in UNHOMED:
            log.info("%s: homing (%s)", self.name, describe_warning(status.warning))
            self.client.home(dev, axis)
            self.wait_idle(home_timeout_s, "homing")

    def position(self) -> int:
        return self.client.get(self.device, self.axis, "pos")

    def travel(self) -> int:
        """The axis's highest position (limit.max, microsteps)."""
        return self.client.get(self.device, self.axis, "limit.max")

    def move_to(self, position: int, timeout_s: float, what: str) -> int:
        """Move to `position` and wait until IDLE; returns where the axis stopped."""
        self.client.move_abs(self.device, self.axis, position)
        return self.wait_idle(timeout_s, what)

    def wait_idle(self, timeout_s: float, what: str) -> int:
        """Poll until the axis is IDLE; returns its position. A fault flag is an error, and so is a BUSY
        reply to a query sent more than `timeout_s` after the command was acknowledged (the deadline is
        read after the acknowledgement, so a late host never shortens the stage's time)."""
        deadline = self.clock() + timeout_s
        while True:
            asked = self.clock()
            reply = self.client.command(self.device, self.axis, "get pos")
            if is_fault(reply.warning or ""):
                raise self.error(f"{self.name}: the stage reports {describe_warning(reply.warning or '')} "
                                 f"during {what}")
            if not reply.busy:
                return reply.int_data()
            if asked > deadline:
                self.client.stop(self.device, self.axis)
                raise self.timeout_error(f"{self.name}: {what} did not finish within {timeout_s:g} s (the "
                                         f"stage is still busy at {reply.int_data()}); the stage was stopped")
            time.sleep(self.poll_s)


POLL_S = 0.01
"""Host pause between two status queries while a real stage moves (an emulated one at N times real time
is polled N times as often)."""


class AxisSettings(Protocol):
    """What every stage's settings section holds (hardware/settings.py)."""

    port: str | None
    baudrate: int
    device: int
    axis: int
    max_speed: float
    accel: float
    home_timeout_s: float
    timeout_s: float


class ZaberStage:
    """Base of a driver on one axis: `open` connects and prepares it (configure, then the driver's
    `place(travel)`), and any failure is one `error` naming the device. `clock` is the stage's clock (s)."""

    name: ClassVar[str]
    section: ClassVar[str]
    error: ClassVar[type[Exception]]
    timeout_error: ClassVar[type[Exception]]

    def __init__(self, client: ZaberClient, settings: Any, clock: Callable[[], float] = time.monotonic,
                 poll_s: float = POLL_S) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        self.axis = StageAxis(client, settings.device, settings.axis, self.name, self.error,
                              self.timeout_error, clock, poll_s)

    @classmethod
    def open(cls, port: str, settings: AxisSettings, clock: Callable[[], float] = time.monotonic,
             poll_s: float = POLL_S) -> Self:
        """Connect, set speed and acceleration, home if the stage has no reference, then `place`."""
        client = ZaberClient(port, settings.baudrate, settings.timeout_s)
        try:
            client.connect()
            motor = cls(client, settings, clock, poll_s)
            motor.prepare()
        except ZaberError as exc:
            client.close()
            raise cls.error(f"{cls.name}: {exc}") from None
        except cls.error:
            client.close()
            raise
        return motor

    @classmethod
    def open_on(cls, port: str, settings: AxisSettings, emulated: ZaberEmulatorServer | None = None,
                speed: float = 1.0) -> Self:
        """`open` on a real port, or on an emulated stage (`emulated`, for port `emulator`): its pty and its
        clock, polled `speed` times as often as a real stage (it runs `speed` times faster)."""
        if emulated is not None:
            return cls.open(emulated.port, settings, emulated.now_s, POLL_S / speed)
        return cls.open(port, settings)

    def prepare(self) -> None:
        s = self.settings
        try:
            self.axis.configure(s.max_speed, s.accel, s.home_timeout_s)
            travel = self.axis.travel()
        except ZaberRejected as exc:
            raise self.error(f"{self.name}: {exc} (device {s.device}, axis {s.axis}: check "
                             f"{self.section}.device and {self.section}.axis)") from None
        self.place(travel)

    def place(self, travel: int) -> None:
        """After configuring: check the positions against the `travel` (limit.max) and take one."""
        raise NotImplementedError

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
