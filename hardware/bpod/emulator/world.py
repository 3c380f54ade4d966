"""The physical world around the emulated state machine: input lines and observed outputs.

Simulations and tests drive input lines here and watch outputs, all on the engine's virtual
clock (engine cycles of 100 us, monotonic since the engine was built; the session clock that
`6` and `*` reset is separate). Levels are LOGICAL: 1 = Port In / BNC High. The pin level the
firmware reads is derived here, because BNC and Wire inputs are inverted at the pin on every
board after r0.5 (raw 0 = logical High).

Scheduled inputs take effect exactly at their cycle. Listeners are called synchronously by the
engine at the cycle an output changes, so a listener that schedules a future input (a simulated
mouse licking 180 ms after the go cue) is deterministic, whatever the host's speed.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from hardware.bpod.emulator.modules import BpodTime, ModuleLink, ModulePort, UartModule
from hardware.bpod.hardware_description import HardwareDescription, input_channel_names, output_channel_names

OUTPUT_LOG_LENGTH = 2048
"""Output changes kept for inspection (`outputs`, `iter_outputs`): the task makes ~7 per trial, so this is
the last ~300 trials; a session of thousands of trials must not keep every one in the rig process."""
TRIAL_LOG_LENGTH = 512
"""Trial start and end records kept for inspection (`trials`): the last 256 trials."""


@dataclass(frozen=True)
class OutputRecord:
    """One output change. Level channels (BNC, Wire, Valve, PWM, Flex) report changes of level;
    message channels (SoftCode, APP_SoftCode, Serial modules) report every byte sent."""

    cycle: int
    channel: str
    value: int


@dataclass(frozen=True)
class TrialRecord:
    """A trial started or ended, at an engine cycle; `session_us` is what the host is told."""

    kind: Literal["start", "end"]
    cycle: int
    session_us: int
    trial: int


def input_logic_high(hw: HardwareDescription) -> list[int]:
    """Raw pin level that means logical High, per input (0 for BNC/Wire on MT >= 2: inverted)."""
    inverted = hw.machine_type >= 2
    return [0 if (c in "BW" and inverted) else 1 for c in hw.inputs]


class World:
    """Input lines and output observers of one emulated state machine."""

    def __init__(self, hw: HardwareDescription) -> None:
        self.hw = hw
        self.input_names = input_channel_names(hw)
        self.output_names = output_channel_names(hw)
        self._input_index = {n: i for i, (n, c) in enumerate(zip(self.input_names, hw.inputs, strict=True))
                             if c not in "UXZ"}
        self._output_index = {n: i for i, n in enumerate(self.output_names)}
        self.logic_high = input_logic_high(hw)
        # Raw pin levels; every line idles at logical low (BNC/Wire idle raw high: the firmware's
        # own initial value on r0.7+).
        self.pins = [1 - h for h in self.logic_high]
        self.outputs: deque[OutputRecord] = deque(maxlen=OUTPUT_LOG_LENGTH)
        self.trials: deque[TrialRecord] = deque(maxlen=TRIAL_LOG_LENGTH)
        self._levels = [0] * len(self.output_names)
        self._schedule: list[tuple[int, int, int, int]] = []  # (cycle, seq, input index, raw level)
        self._seq = itertools.count()
        self._calls: list[tuple[int, int, Callable[[int], None]]] = []  # (cycle, seq, fn)
        self._output_listeners: list[Callable[[OutputRecord], None]] = []
        self._trial_listeners: list[Callable[[TrialRecord], None]] = []
        self._engine_cycle: Callable[[], int] = lambda: 0  # the attached engine's last processed cycle
        self.module_ports = [ModulePort(k) for k in range(1, hw.inputs.count("U") + 1)]
        # Replaced by the pty server: take its lock and bring the engine up to host time first.
        self.external_access: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext

    # -- used by simulations and tests ------------------------------------------------------

    @property
    def now_cycle(self) -> int:
        """The last cycle the engine has processed (engine clock)."""
        with self.external_access():
            return self._engine_cycle()

    def set_input(self, name: str, level: int, at_cycle: int | None = None) -> int:
        """Set a physical input line to a logical level at a cycle (None = the next cycle).
        Returns the cycle at which it takes effect."""
        index = self._input(name)
        if level not in (0, 1):
            raise ValueError(f"input level must be 0 or 1, got {level!r}")
        with self.external_access():
            cycle = self._resolve_cycle(at_cycle)
            raw = self.logic_high[index] if level else 1 - self.logic_high[index]
            heapq.heappush(self._schedule, (cycle, next(self._seq), index, raw))
            return cycle

    def pulse_input(self, name: str, duration_cycles: int, at_cycle: int | None = None) -> int:
        """Logical high for `duration_cycles`, then low (a lick, a TTL). Returns the onset cycle."""
        if duration_cycles < 1:
            raise ValueError(f"a pulse lasts at least 1 cycle, got {duration_cycles}")
        with self.external_access():
            onset = self.set_input(name, 1, at_cycle)
            self.set_input(name, 0, onset + duration_cycles)
            return onset

    def call_at(self, cycle: int, fn: Callable[[int], None]) -> None:
        """Call `fn(cycle)` from the engine at `cycle`, before that cycle's events are read: how a
        simulation acts when nothing on the Bpod changes (a sound that ends by itself)."""
        with self.external_access():
            heapq.heappush(self._calls, (self._resolve_cycle(cycle), next(self._seq), fn))

    def input_level(self, name: str) -> int:
        """Current logical level of a physical input line."""
        index = self._input(name)
        with self.external_access():
            return int(self.pins[index] == self.logic_high[index])

    def output_level(self, name: str) -> int:
        """Current level of a physical output (last value for message channels)."""
        index = self._output(name)
        with self.external_access():
            return self._levels[index]

    def attach_module(self, port: int, module: UartModule) -> ModuleLink:
        """Plug a module emulator into UART port `port` (1-based); it sees what the state machine
        writes there and answers through the returned link."""
        if not 1 <= port <= len(self.module_ports):
            raise ValueError(
                f"module port {port} does not exist; this board has ports 1..{len(self.module_ports)}")
        slot = self.module_ports[port - 1]
        if slot.module is not None:
            raise ValueError(f"module port {port} already has a module")
        slot.module = module
        link = ModuleLink(slot, self._engine_cycle, lambda: self.external_access())
        module.plugged_in(link)
        return link

    def add_output_listener(self, fn: Callable[[OutputRecord], None]) -> None:
        self._output_listeners.append(fn)

    def remove_output_listener(self, fn: Callable[[OutputRecord], None]) -> None:
        self._output_listeners.remove(fn)

    def add_trial_listener(self, fn: Callable[[TrialRecord], None]) -> None:
        self._trial_listeners.append(fn)

    def remove_trial_listener(self, fn: Callable[[TrialRecord], None]) -> None:
        self._trial_listeners.remove(fn)

    # -- used by the engine -----------------------------------------------------------------

    def attach(self, engine_cycle: Callable[[], int]) -> None:
        """Read the engine's clock through `engine_cycle` (the last cycle it processed)."""
        self._engine_cycle = engine_cycle

    def next_input_cycle(self) -> int | None:
        """The first cycle with a scheduled input change or call."""
        cycles = [queue[0][0] for queue in (self._schedule, self._calls) if queue]
        return min(cycles, default=None)

    def apply_inputs(self, cycle: int) -> None:
        """Run the calls due at or before `cycle`, then apply every scheduled change due by then (each in
        scheduling order; a call may schedule inputs from the next cycle on)."""
        while self._calls and self._calls[0][0] <= cycle:
            _, _, fn = heapq.heappop(self._calls)
            fn(cycle)
        schedule = self._schedule
        while schedule and schedule[0][0] <= cycle:
            _, _, index, raw = heapq.heappop(schedule)
            self.pins[index] = raw

    def output_changed(self, cycle: int, index: int, value: int, message: bool = False) -> None:
        """Called by the engine for every physical write; reports level changes and messages."""
        if not message and self._levels[index] == value:
            return
        self._levels[index] = value
        record = OutputRecord(cycle, self.output_names[index], value)
        self.outputs.append(record)
        for fn in list(self._output_listeners):
            fn(record)

    def module_write(self, port: int, data: bytes, at: BpodTime) -> None:
        """Bytes the state machine writes to UART port `port` (0-based); on an empty port nobody hears."""
        module = self.module_ports[port].module
        if module is not None and data:
            module.receive(data, at)

    def next_module_cycle(self) -> int | None:
        """The first cycle at which a module byte waits to be read."""
        cycles = [c for p in self.module_ports if (c := p.next_cycle()) is not None]
        return min(cycles, default=None)

    def trial_event(self, record: TrialRecord) -> None:
        self.trials.append(record)
        for fn in list(self._trial_listeners):
            fn(record)

    # -- helpers ----------------------------------------------------------------------------

    def _resolve_cycle(self, at_cycle: int | None) -> int:
        now = self._engine_cycle()
        if at_cycle is None:
            return now + 1
        if at_cycle <= now:
            raise ValueError(f"cycle {at_cycle} has already been processed (engine is at cycle {now})")
        return at_cycle

    def _input(self, name: str) -> int:
        try:
            return self._input_index[name]
        except KeyError:
            valid = ", ".join(self._input_index)
            raise ValueError(f"unknown input {name!r}; valid inputs: {valid}") from None

    def _output(self, name: str) -> int:
        try:
            return self._output_index[name]
        except KeyError:
            valid = ", ".join(self.output_names)
            raise ValueError(f"unknown output {name!r}; valid outputs: {valid}") from None

    def iter_outputs(self, channel: str | None = None) -> Iterator[OutputRecord]:
        """Recorded output changes, optionally of one channel."""
        if channel is not None:
            self._output(channel)
        return (r for r in list(self.outputs) if channel is None or r.channel == channel)
