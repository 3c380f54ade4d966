"""Bpod UART modules as the state machine reports them (`M`), and the names they take.

Shared by the client and the emulator, like the codec. A module answers the state machine's probe
(byte 255, twice on firmware 23) with a self-description: 'A', u32 firmware, the name, then optional
[1, tag, ...] records ending with 0 (`#` events requested, `E` event names, `V`/`v` hardware version).
The state machine relays it to the host as 1, u32 firmware, name, records (0 where no module answered).
A module named "HiFi" on the first port with that name becomes "HiFi1": its output channel and the
prefix of its events (`HiFi1_1`, or `HiFi1_<name>` for names it sends), as the MATLAB client names them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MODULE_PROBE = 255
MODULE_ACK = ord("A")
_MORE = 1
_END = 0


class ModuleRecordError(ValueError):
    """Bytes that do not form a module description."""


@dataclass(frozen=True)
class ModuleInfo:
    """What one module says about itself."""

    name: str  # as the module reports it ("HiFi"); the channel name adds its number
    firmware: int
    events_requested: int | None = None  # '#'
    event_names: tuple[str, ...] = ()  # 'E': names replacing 1..n
    hardware_major: int | None = None  # 'V' (firmware 23 probes only)
    hardware_minor: int | None = None  # 'v'


def _records(info: ModuleInfo) -> bytes:
    out = bytearray()
    if info.events_requested is not None:
        out += bytes([_MORE, ord("#"), info.events_requested])
    if info.event_names:
        out += bytes([_MORE, ord("E"), len(info.event_names)])
        for name in info.event_names:
            out += bytes([len(name)]) + name.encode("ascii")
    for tag, value in (("V", info.hardware_major), ("v", info.hardware_minor)):
        if value is not None:
            out += bytes([_MORE, ord(tag), value])
    out.append(_END)
    return bytes(out)


def encode_self_description(info: ModuleInfo) -> bytes:
    """What a module writes to the state machine when probed."""
    name = info.name.encode("ascii")
    return bytes([MODULE_ACK]) + struct.pack("<I", info.firmware) + bytes([len(name)]) + name + _records(info)


def encode_module_records(modules: Sequence[ModuleInfo | None]) -> bytes:
    """The `M` reply: per UART port, 0, or 1 and the module's description without its 'A'."""
    out = bytearray()
    for info in modules:
        out += b"\x00" if info is None else b"\x01" + encode_self_description(info)[1:]
    return bytes(out)


def read_module_description(read_exact: Callable[[int], bytes]) -> ModuleInfo:
    """One module's description after its first byte (1 in the `M` reply, 'A' from the module)."""
    (firmware,) = struct.unpack("<I", read_exact(4))
    name = read_exact(read_exact(1)[0]).decode("ascii", errors="replace")
    fields: dict[str, object] = {}
    while read_exact(1)[0] == _MORE:
        tag = chr(read_exact(1)[0])
        if tag == "#":
            fields["events_requested"] = read_exact(1)[0]
        elif tag == "E":
            count = read_exact(1)[0]
            fields["event_names"] = tuple(
                read_exact(read_exact(1)[0]).decode("ascii", errors="replace") for _ in range(count))
        elif tag == "V":
            fields["hardware_major"] = read_exact(1)[0]
        elif tag == "v":
            fields["hardware_minor"] = read_exact(1)[0]
        else:
            raise ModuleRecordError(f"module {name!r} sent an unknown record tag {tag!r}")
    return ModuleInfo(name, firmware, **fields)  # type: ignore[arg-type]


def read_module_records(read_exact: Callable[[int], bytes], n_ports: int) -> list[ModuleInfo | None]:
    """Parse an `M` reply for `n_ports` UART ports."""
    return [read_module_description(read_exact) if read_exact(1)[0] == 1 else None for _ in range(n_ports)]


def module_names(modules: Sequence[ModuleInfo | None]) -> list[str]:
    """Channel name per UART port: `HiFi1`, `HiFi2` for modules, `Serial{k}` for empty ports."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for k, info in enumerate(modules, start=1):
        if info is None:
            names.append(f"Serial{k}")
        else:
            seen[info.name] = seen.get(info.name, 0) + 1
            names.append(f"{info.name}{seen[info.name]}")
    return names


def module_event_names(channel: str, info: ModuleInfo | None, count: int) -> list[str]:
    """Names of a port's `count` events: the module's own names first, then `{channel}_{j}`."""
    own = info.event_names if info is not None else ()
    return [f"{channel}_{own[j - 1]}" if j <= len(own) else f"{channel}_{j}" for j in range(1, count + 1)]


def allocate_module_events(max_serial_events: int, serial_channels: str,
                           modules: Sequence[ModuleInfo | None]) -> tuple[int, ...]:
    """The `%` allocation the MATLAB client sends: an equal share per serial channel; a module that asks
    for more (`#`) takes it from empty ports, the last first; soft-code channels share what is left."""
    n_ports = serial_channels.count("U")
    n_usb = len(serial_channels) - n_ports
    share = max_serial_events // len(serial_channels)
    ports = [share] * n_ports
    for k, info in enumerate(modules[:n_ports]):
        wanted = info.events_requested if info is not None else None
        if wanted is None or wanted <= ports[k]:
            continue
        missing = wanted - ports[k]
        ports[k] = wanted
        for donor in range(n_ports - 1, -1, -1):
            if missing == 0:
                break
            if modules[donor] is None and donor != k:
                given = min(ports[donor], missing)
                ports[donor] -= given
                missing -= given
        if missing:
            raise ModuleRecordError(
                f"module {info.name} asks for {wanted} events; the state machine has {max_serial_events} "
                f"serial events and no free port left to take them from")
    soft = (max_serial_events - sum(ports)) // n_usb if n_usb else 0
    return tuple(ports + [soft] * n_usb)
