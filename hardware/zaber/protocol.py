"""The Zaber ASCII protocol as text: commands, replies and the units of motion settings.

One pure codec shared by the client and the emulator, so that the emulator is the client's exact inverse.
A command is `/<device> <axis> <text>` ended by a newline; a reply is
`@<device, 2 digits> <axis> <OK|RJ> <BUSY|IDLE> <warning flag> <data>` ended by CR LF, where the warning
flag is `--` when none is active, and the data of a rejected command is the reason (BADCOMMAND, BADDATA,
BADAXIS, ...). Info (`#`) and alert (`!`) messages share the header. Optional in the protocol: a message id
after the axis (`/1 1 07 get pos`, echoed in the reply) and a checksum after a colon (`:2C`, the two's
complement of the byte sum of the text between the start character and the colon); a command whose
checksum does not match is not parsed.

Speed and acceleration settings are in data units: `maxspeed` = microsteps/s x 1.6384, `accel` =
microsteps/s^2 x 1.6384 / 10000 (firmware 6 and 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

REPLY = "@"
INFO = "#"
ALERT = "!"
NO_WARNING = "--"
OK, REJECTED = "OK", "RJ"
BUSY, IDLE = "BUSY", "IDLE"

BADCOMMAND = "BADCOMMAND"
"""The command is not one the device knows."""
BADDATA = "BADDATA"
"""A value is missing, not a number or out of range."""
BADAXIS = "BADAXIS"
"""The axis number does not exist on the device."""

WARNINGS: dict[str, str] = {
    "FS": "stalled and stopped (the carriage met an obstacle)",
    "FD": "driver disabled (overheated or overcurrent)",
    "FQ": "encoder error",
    "FE": "limit error",
    "WR": "no reference position (not homed)",
    "WH": "not homed",
    "WL": "unexpected limit switch",
    "WV": "supply voltage out of range",
    "WT": "controller temperature high",
    "NI": "movement interrupted by a new command",
    "NR": "stream discontinuity",
}
"""The warning flags this project reads (highest priority first on the device, F* are faults)."""
UNHOMED = frozenset({"WR", "WH"})

VELOCITY_DATA_PER_USTEP_S = 1.6384
"""`maxspeed` data per microstep/s."""
ACCEL_DATA_PER_USTEP_S2 = 1.6384 / 10000
"""`accel` data per microstep/s^2."""


class ProtocolError(ValueError):
    """Text that is not a well-formed Zaber ASCII message."""


def is_fault(warning: str) -> bool:
    """True for a warning flag that is a fault (F*): the axis cannot be trusted to move as told."""
    return warning.startswith("F")


def describe_warning(warning: str) -> str:
    return f"{warning} ({WARNINGS.get(warning, 'see the Zaber protocol manual')})"


# -- commands ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """`/<device> <axis> [id] <text>`: device 0 addresses every device, axis 0 the whole device."""

    device: int
    axis: int
    text: str
    message_id: int | None = None

    def encode(self) -> bytes:
        mid = f" {self.message_id:02d}" if self.message_id is not None else ""
        return f"/{self.device} {self.axis}{mid} {self.text}".rstrip().encode("ascii") + b"\n"

    @property
    def words(self) -> list[str]:
        return self.text.split()


def parse_command(line: bytes | str) -> Command:
    """A command line as a device reads it: `/`, then optional device and axis numbers, then the text."""
    text = (line.decode("ascii", "replace") if isinstance(line, bytes) else line).strip()
    if not text.startswith("/"):
        raise ProtocolError(f"a command starts with '/', got {text!r}")
    body = _checked(text)
    words = body.split()
    numbers: list[int] = []
    while words and len(numbers) < 3 and words[0].isdigit():
        numbers.append(int(words.pop(0)))
    device = numbers[0] if numbers else 0
    axis = numbers[1] if len(numbers) > 1 else 0
    message_id = numbers[2] if len(numbers) > 2 else None
    return Command(device, axis, " ".join(words), message_id)


def checksum(body: str) -> str:
    """The protocol's checksum of the text between the start character and the colon."""
    return f"{-sum(body.encode('ascii')) & 0xFF:02X}"


def _checked(text: str) -> str:
    """The message after its start character, without a checksum (verified if present)."""
    body = text[1:]
    if len(body) >= 3 and body[-3] == ":":
        body, given = body[:-3], body[-2:].upper()
        if checksum(body) != given:
            raise ProtocolError(f"checksum {given} does not match {checksum(body)} in {text!r}")
    return body


# -- replies -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One device-to-host message; `kind` is '@' (reply), '#' (info) or '!' (alert)."""

    device: int
    axis: int
    flag: Literal["OK", "RJ"] | None
    status: Literal["BUSY", "IDLE"] | None
    warning: str | None
    data: str
    kind: str = REPLY
    message_id: int | None = None

    @property
    def rejected(self) -> bool:
        return self.flag == REJECTED

    @property
    def busy(self) -> bool:
        return self.status == BUSY

    def encode(self) -> bytes:
        mid = f" {self.message_id:02d}" if self.message_id is not None else ""
        head = f"{self.kind}{self.device:02d} {self.axis}{mid}"
        if self.kind == INFO:
            return f"{head} {self.data}".rstrip().encode("ascii") + b"\r\n"
        parts = [head] + ([self.flag] if self.kind == REPLY and self.flag else []) + [
            self.status or IDLE, self.warning or NO_WARNING, self.data or "0"]
        return " ".join(parts).encode("ascii") + b"\r\n"

    def int_data(self) -> int:
        try:
            return int(self.data.split()[0])
        except (ValueError, IndexError):
            raise ProtocolError(f"expected a whole number in the reply data, got {self.data!r}") from None


def parse_reply(line: bytes | str) -> Reply:
    """A device-to-host line: `@01 1 OK IDLE -- 0`, `#01 1 text`, `!01 1 IDLE --`."""
    text = (line.decode("ascii", "replace") if isinstance(line, bytes) else line).strip()
    if not text or text[0] not in (REPLY, INFO, ALERT):
        raise ProtocolError(f"a reply starts with '@', '#' or '!', got {text!r}")
    kind, words = text[0], _checked(text).split()
    if len(words) < 2 or not words[0].isdigit() or not words[1].isdigit():
        raise ProtocolError(f"a reply names its device and axis, got {text!r}")
    device, axis, rest = int(words[0]), int(words[1]), words[2:]
    message_id = int(rest.pop(0)) if rest and rest[0].isdigit() and kind != ALERT else None
    if kind == INFO:
        return Reply(device, axis, None, None, None, " ".join(rest), kind=INFO, message_id=message_id)
    flag: str | None = None
    if kind == REPLY:
        if not rest or rest[0] not in (OK, REJECTED):
            raise ProtocolError(f"a reply has the flag OK or RJ, got {text!r}")
        flag, rest = rest[0], rest[1:]
    if len(rest) < 2 or rest[0] not in (BUSY, IDLE):
        raise ProtocolError(f"a reply has the status BUSY or IDLE and a warning flag, got {text!r}")
    return Reply(device, axis, flag, rest[0], rest[1], " ".join(rest[2:]),  # type: ignore[arg-type]
                 kind=kind, message_id=message_id)
