"""The UART module ports of the emulated state machine: where module emulators plug in.

A module emulator implements `UartModule`: it is told every byte the state machine writes to its port,
with the Bpod time of the cycle that wrote it, and answers through the `ModuleLink` it is given when
plugged in. Bytes a module sends reach the state machine's receive buffer from the next cycle on (the
firmware reads its UART ports in the following cycle); during a trial the firmware takes one byte per
port per cycle, and a byte b from 1 to the port's allocation becomes event `{module}_{b}`.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class BpodTime:
    """A cycle of the state machine: the engine cycle and the session clock the host is told."""

    cycle: int
    session_us: int


class UartModule(Protocol):
    """A module emulator on one UART port."""

    def plugged_in(self, link: ModuleLink) -> None:
        """Called once, when attached; `link` is how the module sends bytes to the state machine."""
        ...

    def receive(self, data: bytes, at: BpodTime) -> None:
        """Bytes the state machine wrote to this port in the cycle `at`."""
        ...


class ModulePort:
    """One UART port: the module plugged into it and the bytes waiting in the state machine's buffer."""

    def __init__(self, number: int) -> None:
        self.number = number  # 1-based, as in `T` and the channel names
        self.module: UartModule | None = None
        self.received: deque[tuple[int, int]] = deque()  # (first cycle it can be read, byte)

    def available(self, cycle: int) -> bool:
        return bool(self.received) and self.received[0][0] <= cycle

    def read(self, cycle: int) -> int | None:
        """The next byte if it has arrived by `cycle`."""
        return self.received.popleft()[1] if self.available(cycle) else None

    def read_all(self, cycle: int) -> bytes:
        out = bytearray()
        while self.available(cycle):
            out.append(self.received.popleft()[1])
        return bytes(out)

    def clear(self) -> None:
        self.received.clear()

    def next_cycle(self) -> int | None:
        return self.received[0][0] if self.received else None


class ModuleLink:
    """The module's end of a port: what it sends to the state machine."""

    def __init__(self, port: ModulePort, now: Callable[[], int],
                 access: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        self._port = port
        self._now = now
        self._access = access

    @property
    def port(self) -> int:
        return self._port.number

    def send(self, data: bytes, at_cycle: int | None = None) -> None:
        """Bytes to the state machine, readable from `at_cycle` (default: the next cycle)."""
        with self._access():
            cycle = self._now() + 1 if at_cycle is None else at_cycle
            last = self._port.received[-1][0] if self._port.received else cycle
            self._port.received.extend((max(cycle, last), b) for b in data)
