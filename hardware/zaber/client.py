"""A client of Zaber controllers over a serial port (pyserial), ASCII protocol.

Each call sends one command and reads lines until the addressed device's reply; info and alert messages
between are logged and skipped. A rejected command raises `ZaberRejected` with the device's reason; a
port that fails or a device that does not answer within the timeout raises `ZaberConnectionError` with
one sentence that names the port.

Why not the official `zaber-motion` library: it drives the device through a bundled native library and
identifies every device against Zaber's device database, fetched from Zaber's web service or from a file
that must be downloaded beforehand; a rig without internet, and the emulator (whose device id is in no
database), get no identified axis. Without identification it offers raw commands only, which is what
this small client does over pyserial, already a dependency of the Bpod client.
"""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType

import serial

from hardware.zaber.protocol import (
    INFO,
    REPLY,
    Command,
    ProtocolError,
    Reply,
    parse_reply,
)

log = logging.getLogger(__name__)

DEFAULT_BAUD = 115_200
"""The ASCII protocol's default rate (firmware 6 and 7)."""


class ZaberError(Exception):
    """A Zaber controller did not do what it was asked."""


class ZaberConnectionError(ZaberError):
    """The port failed or the device is silent: unplugged, powered off, or another port."""


class ZaberRejected(ZaberError):
    """The device answered RJ; `reason` is its data (BADCOMMAND, BADDATA, BADAXIS, ...)."""

    def __init__(self, command: Command, reply: Reply) -> None:
        super().__init__(f"the Zaber device rejected '{command.text}' on axis {command.axis}: {reply.data}")
        self.reason = reply.data
        self.reply = reply


class ZaberClient:
    """Commands to the devices on one serial port; `timeout_s` bounds each reply (host seconds)."""

    def __init__(self, port: str, baudrate: int = DEFAULT_BAUD, timeout_s: float = 1.0) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self._serial: serial.Serial | None = None

    def connect(self) -> ZaberClient:
        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=self.timeout_s)
        except (serial.SerialException, OSError) as exc:
            raise ZaberConnectionError(f"cannot open the Zaber stage's port {self.port}: {exc}") from None
        self._serial.reset_input_buffer()
        return self

    def close(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self._serial.close()
            self._serial = None

    def __enter__(self) -> ZaberClient:
        return self.connect()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- one command, one reply ---------------------------------------------------------------------

    def command(self, device: int, axis: int, text: str) -> Reply:
        """Send `text` to `device`/`axis` and return its reply; RJ raises `ZaberRejected`."""
        command = Command(device, axis, text)
        link = self._link()
        try:
            link.write(command.encode())
            link.flush()
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None
        reply = self._read_reply(command)
        if reply.rejected:
            raise ZaberRejected(command, reply)
        return reply

    def _read_reply(self, command: Command) -> Reply:
        link = self._link()
        while True:
            try:
                line = link.readline()
            except (serial.SerialException, OSError) as exc:
                raise self._lost(exc) from None
            if not line.endswith(b"\n"):
                raise ZaberConnectionError(
                    f"the Zaber stage on {self.port} did not answer '{command.text}' within "
                    f"{self.timeout_s:g} s; is it powered, connected and at {self.baudrate} baud?")
            try:
                reply = parse_reply(line)
            except ProtocolError as exc:
                log.warning("Zaber %s: skipped a malformed line: %s", self.port, exc)
                continue
            if reply.kind != REPLY:
                log.log(logging.DEBUG if reply.kind == INFO else logging.INFO, "Zaber %s: %s", self.port,
                        line.decode("ascii", "replace").strip())
                continue
            if reply.device == command.device or command.device == 0:
                return reply

    def _link(self) -> serial.Serial:
        if self._serial is None:
            raise ZaberConnectionError(f"the Zaber stage on {self.port} is not connected")
        return self._serial

    def _lost(self, exc: BaseException) -> ZaberConnectionError:
        return ZaberConnectionError(f"lost the Zaber stage on {self.port} (unplugged?): {exc}")

    # -- what a stage is asked ----------------------------------------------------------------------

    def get(self, device: int, axis: int, setting: str) -> int:
        return self.command(device, axis, f"get {setting}").int_data()

    def set(self, device: int, axis: int, setting: str, value: int) -> Reply:
        return self.command(device, axis, f"set {setting} {value}")

    def status(self, device: int, axis: int) -> Reply:
        """The empty command: the reply's status (BUSY/IDLE) and warning flag."""
        return self.command(device, axis, "")

    def move_abs(self, device: int, axis: int, position: int) -> Reply:
        return self.command(device, axis, f"move abs {position}")

    def home(self, device: int, axis: int) -> Reply:
        return self.command(device, axis, "home")

    def stop(self, device: int, axis: int) -> Reply:
        return self.command(device, axis, "stop")
