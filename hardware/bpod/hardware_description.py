"""The Bpod hardware description (the `H` reply) and the names of its channels and events.

Event codes, input indices and output indices all follow from the description and from the
event allocation sent with `%`; this module is the one place that turns them into the names
protocols use (MATLAB / pybpod convention: `Port1In`, `BNC1High`, `SoftCode1`, `GlobalTimer1_End`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hardware.bpod.module_info import ModuleInfo, module_event_names, module_names

SERIAL_LETTERS = "UXZ"
TRIAL_END_CODE = 255
VIRTUAL_OUTPUTS = ("GlobalTimerTrig", "GlobalTimerCancel", "GlobalCounterReset")
SUPPORTED_FIRMWARE = (22, 23)


class HardwareDescriptionError(ValueError):
    """The bytes or the values do not form a valid hardware description."""


@dataclass(frozen=True)
class HardwareDescription:
    """What a connected state machine reports about itself (`F`, `f`, `v` and `H`)."""

    firmware_major: int
    machine_type: int
    max_states: int
    cycle_us: int
    max_serial_events: int
    n_global_timers: int
    n_global_counters: int
    n_conditions: int
    inputs: str
    outputs: str
    serial_message_max_bytes: int = 3
    firmware_minor: int = 0
    pcb_revision: int = 0

    @property
    def cycle_hz(self) -> float:
        return 1e6 / self.cycle_us

    @property
    def serial_channels(self) -> str:
        """Serial/USB channel letters in order (U..., X, Z): one `%` allocation byte each."""
        return "".join(c for c in self.inputs if c in SERIAL_LETTERS)

    @property
    def timer_mask_bytes(self) -> int:
        """Byte width of a global-timer bitmask in the `C` body."""
        if self.n_global_timers <= 8:
            return 1
        if self.n_global_timers <= 16:
            return 2
        return 4

    @property
    def has_app_port(self) -> bool:
        return "Z" in self.inputs

    @property
    def has_analog_port(self) -> bool:
        """The Bpod 2+ streams FlexIO analog samples on a third USB serial port."""
        return self.machine_type == 4 and self.firmware_major >= 23

    def default_allocation(self) -> tuple[int, ...]:
        """Events per serial channel as every client allocates them: an equal share."""
        n = len(self.serial_channels)
        return tuple([self.max_serial_events // n] * n)


def preset(model: str = "r2", firmware: int = 23) -> HardwareDescription:
    """The description a real board reports, per model and firmware (spec table 1.3)."""
    if firmware not in SUPPORTED_FIRMWARE:
        raise HardwareDescriptionError(f"firmware {firmware} is not supported (supported: 22, 23)")
    if model in ("r2", "r2.5"):
        if firmware == 22:
            return HardwareDescription(22, 3, 256, 100, 90, 16, 8, 16, "UUUUUXBBPPPP", "UUUUUXBBPPPPVVVV")
        return HardwareDescription(
            23,
            3,
            256,
            100,
            105,
            16,
            8,
            16,
            "UUUUUXZBBPPPP",
            "UUUUUXZBBPPPPVVVV",
            serial_message_max_bytes=5,
            firmware_minor=10,
            pcb_revision=5 if model == "r2.5" else 4,
        )
    if model == "r2plus":
        if firmware != 23:
            raise HardwareDescriptionError("the Bpod 2+ (r2plus) runs firmware 23 only")
        return HardwareDescription(
            23,
            4,
            256,
            100,
            75,
            16,
            8,
            16,
            "UUUXZFFFFBBPPPPP",
            "UUUXZFFFFBBPPPPPVVVVV",
            serial_message_max_bytes=5,
            firmware_minor=10,
            pcb_revision=1,
        )
    if model == "r1":
        return HardwareDescription(
            firmware,
            2,
            256,
            100,
            60,
            5,
            5,
            5,
            "UUUXBBWWPPPPPPPP",
            "UUUXBBWWWPPPPPPPPVVVVVVVV",
            serial_message_max_bytes=3,
        )
    raise HardwareDescriptionError(f"unknown Bpod model {model!r} (known: r1, r2, r2.5, r2plus)")


def encode_hardware_description(hw: HardwareDescription) -> bytes:
    """The `H` reply as the firmware writes it."""
    out = struct.pack("<HHB", hw.max_states, hw.cycle_us, hw.max_serial_events)
    if hw.firmware_major >= 23:
        out += bytes([hw.serial_message_max_bytes])
    out += bytes([hw.n_global_timers, hw.n_global_counters, hw.n_conditions])
    out += bytes([len(hw.inputs)]) + hw.inputs.encode("ascii")
    out += bytes([len(hw.outputs)]) + hw.outputs.encode("ascii")
    return out


def read_hardware_description(
    read_exact: Callable[[int], bytes],
    firmware_major: int,
    machine_type: int,
    firmware_minor: int = 0,
    pcb_revision: int = 0,
) -> HardwareDescription:
    """Parse an `H` reply from a reader that returns exactly n bytes (or raises)."""
    max_states, cycle_us, max_serial_events = struct.unpack("<HHB", read_exact(5))
    msg_max = read_exact(1)[0] if firmware_major >= 23 else 3
    n_gt, n_gc, n_cond = read_exact(3)
    inputs = read_exact(read_exact(1)[0]).decode("ascii", errors="replace")
    outputs = read_exact(read_exact(1)[0]).decode("ascii", errors="replace")
    if cycle_us == 0:
        raise HardwareDescriptionError("hardware description reports a timer period of 0 us")
    return HardwareDescription(
        firmware_major,
        machine_type,
        max_states,
        cycle_us,
        max_serial_events,
        n_gt,
        n_gc,
        n_cond,
        inputs,
        outputs,
        serial_message_max_bytes=msg_max,
        firmware_minor=firmware_minor,
        pcb_revision=pcb_revision,
    )


def decode_hardware_description(data: bytes, firmware_major: int, machine_type: int) -> HardwareDescription:
    """Parse a complete `H` reply held in memory; every byte must be used."""
    pos = 0

    def read_exact(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise HardwareDescriptionError(f"hardware description truncated at byte {pos} of {len(data)}")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    hw = read_hardware_description(read_exact, firmware_major, machine_type)
    if pos != len(data):
        raise HardwareDescriptionError(f"{len(data) - pos} unexpected bytes after the hardware description")
    return hw


def _numbered(letters: str, letter: str) -> list[int]:
    """1-based number of each channel of the given letter, by position (0 elsewhere)."""
    count = 0
    numbers = []
    for c in letters:
        if c == letter:
            count += 1
            numbers.append(count)
        else:
            numbers.append(0)
    return numbers


_INPUT_CHANNEL_PREFIX = {
    "U": "Serial",
    "X": "USB",
    "Z": "APP",
    "F": "Flex",
    "B": "BNC",
    "W": "Wire",
    "P": "Port",
}
_OUTPUT_CHANNEL_PREFIX = {"U": "Serial", "F": "Flex", "B": "BNC", "W": "Wire", "P": "PWM", "V": "Valve"}
_EDGE_NAMES = {"F": ("High", "Low"), "B": ("High", "Low"), "W": ("High", "Low"), "P": ("In", "Out")}


def _port_names(hw: HardwareDescription, modules: Sequence[ModuleInfo | None]) -> list[str]:
    n_ports = hw.inputs.count("U")
    return module_names([*modules[:n_ports], *[None] * (n_ports - len(modules))])


def input_channel_names(hw: HardwareDescription, modules: Sequence[ModuleInfo | None] = ()) -> list[str]:
    """Names of input channels by input index (`Port1`, `BNC2`, `Serial1` or a module's `HiFi1`, `USB`,
    `APP`)."""
    ports = iter(_port_names(hw, modules))
    names = []
    for letter, number in zip(hw.inputs, _numbered_all(hw.inputs), strict=True):
        prefix = _INPUT_CHANNEL_PREFIX.get(letter, f"Input{letter}")
        if letter == "U":
            names.append(next(ports))
        else:
            names.append(prefix if letter in "XZ" else f"{prefix}{number}")
    return names


def output_channel_names(hw: HardwareDescription, modules: Sequence[ModuleInfo | None] = ()) -> list[str]:
    """Names of physical outputs by output index (`Valve1`, `BNC1`, `PWM1`, `SoftCode`, `APP_SoftCode`,
    `Serial1` or a module's `HiFi1`)."""
    ports = iter(_port_names(hw, modules))
    names = []
    for letter, number in zip(hw.outputs, _numbered_all(hw.outputs), strict=True):
        if letter == "U":
            names.append(next(ports))
        elif letter == "X":
            names.append("SoftCode")
        elif letter == "Z":
            names.append("APP_SoftCode")
        else:
            names.append(f"{_OUTPUT_CHANNEL_PREFIX.get(letter, 'Output' + letter)}{number}")
    return names


def _numbered_all(letters: str) -> list[int]:
    per_letter = {c: _numbered(letters, c) for c in set(letters)}
    return [per_letter[c][i] for i, c in enumerate(letters)]


@dataclass(frozen=True)
class EventTable:
    """Event code <-> name for one hardware description, one serial-event allocation and the modules
    found on its UART ports (their events are named after them: `HiFi1_1`)."""

    hw: HardwareDescription
    allocation: tuple[int, ...]
    modules: tuple[ModuleInfo | None, ...] = ()
    names: tuple[str, ...] = field(init=False)
    serial_offsets: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        channels = self.hw.serial_channels
        if len(self.allocation) != len(channels):
            raise HardwareDescriptionError(
                f"event allocation has {len(self.allocation)} entries, "
                f"the device has {len(channels)} serial channels"
            )
        if sum(self.allocation) > self.hw.max_serial_events:
            raise HardwareDescriptionError(
                f"event allocation {list(self.allocation)} exceeds "
                f"the device's {self.hw.max_serial_events} serial events"
            )
        names: list[str] = []
        offsets: list[int] = []
        ports = _port_names(self.hw, self.modules)
        module = 0
        for letter, count in zip(channels, self.allocation, strict=True):
            offsets.append(len(names))
            if letter == "U":
                info = self.modules[module] if module < len(self.modules) else None
                names += module_event_names(ports[module], info, count)
                module += 1
            elif letter == "X":
                names += [f"SoftCode{j}" for j in range(1, count + 1)]
            else:
                names += [f"APP_SoftCode{j}" for j in range(count)]
        names += [f"_Unallocated{i}" for i in range(len(names), self.hw.max_serial_events)]
        for letter, number in zip(self.hw.inputs, _numbered_all(self.hw.inputs), strict=True):
            if letter in SERIAL_LETTERS:
                continue
            high, low = _EDGE_NAMES.get(letter, ("High", "Low"))
            prefix = _INPUT_CHANNEL_PREFIX.get(letter, f"Input{letter}")
            names += [f"{prefix}{number}{high}", f"{prefix}{number}{low}"]
        names += [f"GlobalTimer{i}_Start" for i in range(1, self.hw.n_global_timers + 1)]
        names += [f"GlobalTimer{i}_End" for i in range(1, self.hw.n_global_timers + 1)]
        names += [f"GlobalCounter{i}_End" for i in range(1, self.hw.n_global_counters + 1)]
        names += [f"Condition{i}" for i in range(1, self.hw.n_conditions + 1)]
        names.append("Tup")
        if len(names) > TRIAL_END_CODE:
            raise HardwareDescriptionError(
                f"the description needs {len(names)} event codes; at most 255 exist"
            )
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "serial_offsets", tuple(offsets))

    @classmethod
    def default(cls, hw: HardwareDescription) -> EventTable:
        return cls(hw, hw.default_allocation())

    @property
    def digital_offset(self) -> int:
        return self.hw.max_serial_events

    @property
    def timer_start_offset(self) -> int:
        return self.digital_offset + 2 * sum(1 for c in self.hw.inputs if c not in SERIAL_LETTERS)

    @property
    def timer_end_offset(self) -> int:
        return self.timer_start_offset + self.hw.n_global_timers

    @property
    def counter_offset(self) -> int:
        return self.timer_end_offset + self.hw.n_global_timers

    @property
    def condition_offset(self) -> int:
        return self.counter_offset + self.hw.n_global_counters

    @property
    def tup_code(self) -> int:
        return len(self.names) - 1

    def offset_of_channel(self, letter: str) -> int:
        """First event code of the X (soft code) or Z (APP) channel."""
        return self.serial_offsets[self.hw.serial_channels.index(letter)]

    def allocated(self, letter: str) -> int:
        return self.allocation[self.hw.serial_channels.index(letter)]

    def name(self, code: int) -> str:
        if 0 <= code < len(self.names):
            return self.names[code]
        return f"_Event{code}"

    def code(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(name) from None

    @property
    def _index(self) -> dict[str, int]:
        index = self.__dict__.get("_index_cache")
        if index is None:
            index = {n: i for i, n in enumerate(self.names) if not n.startswith("_")}
            object.__setattr__(self, "_index_cache", index)
        return index

    def digital_input_of_code(self, code: int) -> tuple[int, bool] | None:
        """(input index, rising) for a digital edge code, else None."""
        if not self.digital_offset <= code < self.timer_start_offset:
            return None
        k, low = divmod(code - self.digital_offset, 2)
        digital_inputs = [i for i, c in enumerate(self.hw.inputs) if c not in SERIAL_LETTERS]
        return digital_inputs[k], not low


def valid_names(names: Sequence[str]) -> list[str]:
    """Names a user may type (hidden placeholders removed)."""
    return [n for n in names if not n.startswith("_")]
