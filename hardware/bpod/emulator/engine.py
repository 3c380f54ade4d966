"""The Bpod state machine firmware (v22 / v23), cycle by cycle, on a virtual clock.

No I/O, no threads, no host clock: bytes go in with `receive_main`/`receive_app`, time moves
with `advance_to(cycle)`, bytes come out with `take_main_output`/`take_app_output` (and
`take_analog_output` on the r2+). The engine clock counts 100 us cycles since the engine was
built and never resets; the session clock the host sees (`6` and `*` reset it) is derived from
it, so every timestamp is an exact multiple of the cycle period.

`Firmware` owns the firmware's variables (`state.FirmwareState`) and runs each cycle as the
firmware does (`cycle.loop`, then `cycle.handler`). Idle cycles are skipped:
`next_wakeup_cycle` names the next cycle at which anything can happen, and the cycles in
between only advance counters.

Deliberate differences from the firmware besides those in `cycle.py`: a command whose payload
has not fully arrived waits while the clock runs on (the firmware blocks inside its
interrupt); the 100 ms stall after `6` is not modelled.
"""

from __future__ import annotations

from collections import deque

from hardware.bpod.emulator.commands import command_length, payload_sizes
from hardware.bpod.emulator.cycle import (
    MODULE_INFO_TIMEOUT,
    SYNC_PERIOD,
    condition_true,
    handler,
    loop,
    soft_event_ready,
)
from hardware.bpod.emulator.machine import LoadedMachine
from hardware.bpod.emulator.state import FirmwareState
from hardware.bpod.emulator.world import World
from hardware.bpod.hardware_description import HardwareDescription

DISCOVERY_BYTE = 0xDE


class Firmware:
    """One emulated state machine: the firmware's variables and the clock that runs its loop."""

    def __init__(self, hw: HardwareDescription, world: World | None = None, *,
                 faithful_quirks: bool = False) -> None:
        """`faithful_quirks` reproduces firmware bugs a client must survive (`cycle.py`)."""
        self.hw = hw
        self.world = world if world is not None else World(hw)
        self.state = FirmwareState.power_on(hw, self.world, payload_sizes(hw))
        self.state.faithful_quirks = faithful_quirks
        self._inbox: deque[tuple[int, bytearray, bytes]] = deque()  # (arrival cycle, port buffer, bytes)
        self.world.attach(lambda: self.state.cycle)
        self.busy = False  # True while advancing (listeners run inside)

    # ------------------------------------------------------------------------------------------
    # Public interface

    @property
    def cycle(self) -> int:
        """The last processed engine cycle."""
        return self.state.cycle

    @property
    def connected(self) -> bool:
        return self.state.connected

    @property
    def machine(self) -> LoadedMachine:
        """The state machine the next trial runs."""
        return self.state.machine

    @property
    def session_us(self) -> int:
        return self.state.session_us

    @property
    def main_input_pending(self) -> bool:
        """Host bytes not yet consumed by a command (or not yet delivered)."""
        return bool(self.state.main_in) or any(buf is self.state.main_in for _, buf, _ in self._inbox)

    def receive_main(self, data: bytes, at_cycle: int | None = None) -> None:
        """Bytes from the host on the main port. They arrive at the end of `at_cycle` (default: the
        present), so the firmware sees them from the cycle after; bytes keep their order."""
        self._deliver(self.state.main_in, data, at_cycle)

    def receive_app(self, data: bytes, at_cycle: int | None = None) -> None:
        """Bytes on the APP port (v23), as `receive_main`; dropped on boards without one."""
        if self.hw.has_app_port:
            self._deliver(self.state.app_in, data, at_cycle)

    def _deliver(self, buffer: bytearray, data: bytes, at_cycle: int | None) -> None:
        """Into the port's buffer now, or into the inbox until `at_cycle` has passed (a USB link
        delivers at frame boundaries); never ahead of bytes still in the inbox."""
        at = self.state.cycle if at_cycle is None else at_cycle
        if self._inbox:
            at = max(at, self._inbox[-1][0])
        if at <= self.state.cycle:
            buffer += data
        else:
            self._inbox.append((at, buffer, data))

    def take_main_output(self) -> bytes:
        out = bytes(self.state.main_out)
        self.state.main_out.clear()
        return out

    def take_app_output(self) -> bytes:
        out = bytes(self.state.app_out)
        self.state.app_out.clear()
        return out

    def take_analog_output(self) -> bytes:
        """r2+: what the firmware wrote on its FlexIO analog port (the `}` handshake byte)."""
        out = bytes(self.state.analog_out)
        self.state.analog_out.clear()
        return out

    def advance_to(self, cycle: int) -> None:
        """Run every cycle up to and including `cycle`, jumping over cycles where nothing can happen."""
        fw = self.state
        if cycle <= fw.cycle:
            return
        self.busy = True
        try:
            while True:
                nxt = self.next_wakeup_cycle()
                if nxt is None or nxt > cycle:
                    break
                self._skip_to(nxt - 1)
                fw.cycle = nxt
                self._run_cycle()
            self._skip_to(cycle)
        finally:
            self.busy = False

    def next_wakeup_cycle(self) -> int | None:
        """The next cycle at which something can happen, or None if nothing ever will on its own."""
        fw = self.state
        now = fw.cycle + 1
        if self._work_pending():
            return now
        best = self.world.next_input_cycle()
        candidates: list[int] = [self._inbox[0][0] + 1] if self._inbox else []
        if fw.get_module_info:
            candidates.append(fw.cycle + max(MODULE_INFO_TIMEOUT + 1 - fw.module_cycles, 1))
        if fw.running or any(fw.relay_mode):
            module_byte = self.world.next_module_cycle()
            if module_byte is not None:
                candidates.append(max(module_byte, now))
        if fw.running:
            ct = fw.current_time
            if fw.meaningful_tup:
                due = fw.state_start_time + fw.machine.state_timer(fw.current_state)
                candidates.append(fw.cycle + max(due - ct, 1))
            due = fw.timers.next_due()
            if due is not None:
                candidates.append(fw.cycle + max(due - ct, 1))
            if fw.v23 and fw.sync_mode == 2 and fw.sync_timer < SYNC_PERIOD:
                candidates.append(fw.cycle + SYNC_PERIOD - fw.sync_timer)
        for c in candidates:
            if best is None or c < best:
                best = c
        return best

    # ------------------------------------------------------------------------------------------
    # The clock

    def _skip_to(self, cycle: int) -> None:
        """Account for idle cycles: each one still ticks the trial clock and the cycle counters."""
        fw = self.state
        elapsed = cycle - fw.cycle
        if elapsed <= 0:
            return
        if fw.running and not fw.first_loop:
            fw.current_time += elapsed
            fw.sync_timer += elapsed
        fw.n_cycles_completed += elapsed
        if fw.get_module_info:
            fw.module_cycles += elapsed
        fw.cycle = cycle

    def _run_cycle(self) -> None:
        inbox = self._inbox
        while inbox and inbox[0][0] < self.state.cycle:
            _, buffer, data = inbox.popleft()
            buffer += data
        self.world.apply_inputs(self.state.cycle)
        loop(self.state)
        handler(self.state)

    def _work_pending(self) -> bool:
        """Is there something the very next cycle must do?"""
        fw = self.state
        if fw.start_flag or (fw.run_flag and fw.sma_confirmed) or fw.app_in:
            return True
        if fw.sma_pending:
            if len(fw.main_in) >= fw.sma_nbytes:
                return True
        elif fw.main_in and command_length(fw) is not None:
            return True
        if not fw.running:
            return False
        if fw.first_loop or fw.events:
            return True
        if soft_event_ready(fw, fw.soft_x, "X") or soft_event_ready(fw, fw.soft_z, "Z"):
            return True
        state, m = fw.current_state, fw.machine
        for i in range(min(m.n_conditions, fw.hw.n_conditions)):
            if m.target(m.conditions, state, i) != state and condition_true(fw, m, i):
                return True
        for x in range(min(m.n_counters, fw.hw.n_global_counters)):
            if (m.counter_events[x] < 254 and not fw.counter_handled[x]
                    and fw.counter_counts[x] == m.counter_thresholds[x]):
                return True
        pins, last = fw.world.pins, fw.last_input_state
        for i, _, hi in fw.edge_channels:
            if fw.input_enabled[i]:
                level = pins[i] if self._is_sampled(i) else fw.input_state[i]
                if (level == hi and last[i] == 1 - hi) or (level == 1 - hi and last[i] == hi):
                    return True
        return False

    def _is_sampled(self, i: int) -> bool:
        """Is input i read from its pin this cycle (enabled, not overridden, a digital input)?"""
        fw = self.state
        if not fw.input_enabled[i] or fw.input_override[i]:
            return False
        if fw.hw.inputs[i] == "F":
            return fw.flex_types[fw.flex_inputs.index(i)] == 0
        return True
