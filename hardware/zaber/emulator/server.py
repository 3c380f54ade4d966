"""The emulated Zaber controller served on a pseudo-terminal, so the unmodified client opens it as a port.

One thread reads command lines from the pty master and writes the device's replies. The stage keeps time
on its own clock, `now_s() = host seconds since start x speed` (or a clock given by the caller), and every
command is answered at that time: a move takes the time its trapezoid says on that clock at any speed.
`unplug()` pulls the cable: the pty closes and the client's next read or write fails, as a USB serial
adapter that is gone does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pty
import select
import threading
import time
import tty
from collections.abc import Callable
from types import TracebackType

from hardware.zaber.emulator.device import Device
from hardware.zaber.protocol import ProtocolError, parse_command

log = logging.getLogger(__name__)

POLL_S = 0.05
"""How often the thread looks at its stop flag while no command comes (host seconds)."""
MAX_LINE = 256


class SpeedClock:
    """Host time since `start()`, times `speed`: the stage's seconds."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = speed
        self._t0 = time.perf_counter()

    def __call__(self) -> float:
        return (time.perf_counter() - self._t0) * self.speed


class ZaberEmulatorServer:
    """A Zaber controller (`Device`) on a pty; `clock` is the stage's clock in seconds."""

    def __init__(self, device: Device | None = None, speed: float = 1.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.device = device or Device()
        self.clock: Callable[[], float] = clock or SpeedClock(speed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master = self._slave = -1
        self._path: str | None = None
        self.commands = 0
        self.unplugged = False

    @property
    def port(self) -> str:
        if self._path is None:
            raise RuntimeError("the Zaber emulator is not started")
        return self._path

    def now_s(self) -> float:
        return self.clock()

    def start(self) -> ZaberEmulatorServer:
        if self._thread is not None:
            raise RuntimeError("the Zaber emulator is already started")
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        self._path = os.ttyname(self._slave)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="zaber-emulator", daemon=True)
        self._thread.start()
        log.info("Zaber emulator (device %d, %d axes) on %s", self.device.address, len(self.device.axes),
                 self._path)
        return self

    def unplug(self) -> None:
        """Pull the cable: stop answering and close the pty, so the client's port fails."""
        self.unplugged = True
        self.stop()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> ZaberEmulatorServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _serve(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], POLL_S)
            if not ready:
                continue
            try:
                buffer += os.read(self._master, 4096)
            except OSError:
                return
            *lines, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
            if len(buffer) > MAX_LINE:
                buffer = b""  # a device discards an overlong incomplete command
            for line in lines:
                if line.strip():
                    self._answer(line)

    def _answer(self, line: bytes) -> None:
        try:
            command = parse_command(line)
        except ProtocolError:
            return  # a device ignores a line that is not a command
        with self._lock:
            self.commands += 1
            replies = self.device.handle(command, self.clock())
        out = b"".join(reply.encode() for reply in replies)
        with contextlib.suppress(OSError):
            os.write(self._master, out)
