"""The Bpod state machine firmware (v22 / v23), cycle by cycle, on a virtual clock.

No I/O, no threads, no host clock: bytes go in with `receive_main`/`receive_app`, time moves
with `advance_to(cycle)`, bytes come out with `take_main_output`/`take_app_output`. The engine
clock counts 100 us cycles since the engine was built and never resets; the session clock the
host sees (`6` and `*` reset it) is derived from it, so every timestamp is an exact multiple of
the cycle period.

The code follows the firmware's structure so the two can be read side by side:
`_loop_phase` is `loop()` (the state-machine body read, `startSM`), `_handler` is the 100 us
timer interrupt (one command, one APP byte, one trial cycle, trial end), `_trial_cycle` is the
event-detection block in the firmware's order. State entry and the output lines are in
`outputs.py` (`setStateOutputs`), the host's commands in `commands.py`, global timers in
`timers.py`.
Idle cycles are skipped: `next_wakeup_cycle` names the next cycle at which anything can happen,
and the cycles in between only advance counters.

Deliberate differences from the firmware (each is noted where it happens): a RunASAP machine
queued during a trial starts in the very cycle the previous trial ends (the firmware writes its
start timestamp one cycle later), so start_us of the next trial == end_us of the previous one;
a command whose payload has not fully arrived waits while the clock runs on (the firmware blocks
inside its interrupt); a queued machine whose transfer completes after the trial ended still
starts (the firmware's `startFlag == true` typo would leave it waiting forever); the 100 ms
stall after `6` is not modelled.
"""

from __future__ import annotations

import logging
import struct

from hardware.bpod.codec import (
    CodecError,
    decode_state_machine_body,
    encode_events,
    encode_trial_end,
)
from hardware.bpod.emulator.commands import NO_EVENT, CommandSet
from hardware.bpod.emulator.machine import LoadedMachine
from hardware.bpod.emulator.outputs import OutputStage
from hardware.bpod.emulator.timers import GlobalTimers
from hardware.bpod.emulator.world import TrialRecord, World
from hardware.bpod.hardware_description import HardwareDescription

logger = logging.getLogger(__name__)

DISCOVERY_BYTE = 0xDE
MODULE_INFO_TIMEOUT = 100  # cycles the firmware waits for modules to describe themselves
SYNC_PERIOD = 1000  # sync mode 2 toggles every 1000 cycles


class Firmware(CommandSet, OutputStage):
    """One emulated state machine: the firmware's variables and its loop."""

    def __init__(self, hw: HardwareDescription, world: World | None = None) -> None:
        self.hw = hw
        self.v23 = hw.firmware_major >= 23
        self.world = world if world is not None else World(hw)
        self.world.attach(self)
        n_in, n_out = len(hw.inputs), len(hw.outputs)
        self.n_inputs = n_in
        self.max_events = 10 if hw.machine_type <= 2 else 100
        self.n_modules = hw.inputs.count("U")
        self.n_flex = hw.inputs.count("F")
        first_non_serial = next(i for i, c in enumerate(hw.inputs) if c not in "UXZ")
        self._digital_pos = first_non_serial  # first channel of the edge-detection loop
        self._sampled = [i for i, c in enumerate(hw.inputs) if c in "BWP"]  # read from pins each cycle
        self._flex_inputs = [i for i, c in enumerate(hw.inputs) if c == "F"]
        # (input, rising-edge event code, raw level meaning High) for the edge-detection loop
        self._edge_channels = [(i, hw.max_serial_events + 2 * k, self.world.logic_high[i])
                               for k, i in enumerate(range(first_non_serial, n_in))]
        self._serial_letters = hw.serial_channels
        # Event code layout (fixed by the firmware; see spec 1.4).
        self.gt_start_pos = hw.max_serial_events + 2 * (n_in - first_non_serial)
        self.gt_end_pos = self.gt_start_pos + hw.n_global_timers
        self.counter_pos = self.gt_end_pos + hw.n_global_timers
        self.condition_pos = self.counter_pos + hw.n_global_counters
        self.tup_pos = self.condition_pos + hw.n_conditions
        self._payload_sizes = self._build_payload_sizes()

        self.cycle = 0  # last processed engine cycle
        self.busy = False  # True while advancing (listeners run inside)
        self._main_in = bytearray()
        self._app_in = bytearray()
        self._main_out = bytearray()
        self._app_out = bytearray()
        # Connection and configuration
        self.connected = False
        self._clock_zero = 0  # engine cycle at the last session-clock reset
        self.trial_counter = 0
        n_serial = len(self._serial_letters)
        self.allocation = [0] * n_serial if self.v23 else [10] + [0] * (n_serial - 1)
        self.input_enabled = [1 if c in "BWDF" else 0 for c in hw.inputs]  # ports need `E`
        self.logic_high = self.world.logic_high
        initial = [1 if (c in "BW" and hw.machine_type > 1) else 0 for c in hw.inputs]
        self.input_state = initial + [0] * hw.n_global_timers  # raw levels, then timer lines
        self.last_input_state = list(self.input_state)
        self.input_override = [False] * n_in
        self.output_hw = list(hw.outputs)  # the sync channel becomes 'Y'
        self.output_override = [0] * n_out
        self.flex_types = [4] * self.n_flex  # 4 = tri-state (off) until `Q`
        self.sync_channel = 255
        self.sync_mode = 0
        self._sync_on = False
        self._sync_index: int | None = None
        self._sync_original = ""
        self._sync_state = 0
        self.sync_timer = 0
        self._get_module_info = False
        self._module_cycles = 0
        # State machine transfer
        self.machine = LoadedMachine()
        self._queued: LoadedMachine | None = None  # smaReady2Load
        self._sma_pending = False
        self._sma_nbytes = 0
        self._sma_confirmed = False
        self._sma_ok = False
        self._new_sma_started = False
        self.run_asap = False
        self.use_back_signal = False
        self._start_flag = False
        self._run_flag = False
        # Trial
        self.running = False
        self._first_loop = False
        self._matrix_finished = False
        self._in_trial = False
        self.current_state = 0
        self.previous_state = 0
        self.state_start_time = 0
        self._meaningful_tup = False
        self.current_time = 0
        self.n_cycles_completed = 0
        self.events: list[int] = []  # CurrentEvent; entries raised at state entry carry over
        self._soft_x = NO_EVENT
        self._soft_z = NO_EVENT
        self.counter_counts = [0] * hw.n_global_counters
        self.counter_handled = [False] * hw.n_global_counters
        self.timers = GlobalTimers(hw.n_global_timers, self.gt_start_pos, self.gt_end_pos,
                                   self._set_timer_channel)

    # ------------------------------------------------------------------------------------------
    # Public interface

    @property
    def session_us(self) -> int:
        return (self.cycle - self._clock_zero) * self.hw.cycle_us

    @property
    def main_input_pending(self) -> bool:
        """Host bytes not yet consumed by a command."""
        return bool(self._main_in)

    def receive_main(self, data: bytes) -> None:
        """Bytes from the host on the main port; the firmware sees them from the next cycle."""
        self._main_in += data

    def receive_app(self, data: bytes) -> None:
        """Bytes on the APP port (v23); dropped on boards without one."""
        if self.hw.has_app_port:
            self._app_in += data

    def take_main_output(self) -> bytes:
        out = bytes(self._main_out)
        self._main_out.clear()
        return out

    def take_app_output(self) -> bytes:
        out = bytes(self._app_out)
        self._app_out.clear()
        return out

    def advance_to(self, cycle: int) -> None:
        """Run every cycle up to and including `cycle`, jumping over cycles where nothing can happen."""
        if cycle <= self.cycle:
            return
        self.busy = True
        try:
            while True:
                nxt = self.next_wakeup_cycle()
                if nxt is None or nxt > cycle:
                    break
                self._skip_to(nxt - 1)
                self.cycle = nxt
                self._run_cycle()
            self._skip_to(cycle)
        finally:
            self.busy = False

    def next_wakeup_cycle(self) -> int | None:
        """The next cycle at which something can happen, or None if nothing ever will on its own."""
        now = self.cycle + 1
        if self._work_pending():
            return now
        best = self.world.next_input_cycle()
        candidates: list[int] = []
        if self._get_module_info:
            candidates.append(self.cycle + max(MODULE_INFO_TIMEOUT + 1 - self._module_cycles, 1))
        if self.running:
            ct = self.current_time
            if self._meaningful_tup:
                due = self.state_start_time + self.machine.state_timer(self.current_state)
                candidates.append(self.cycle + max(due - ct, 1))
            due = self.timers.next_due()
            if due is not None:
                candidates.append(self.cycle + max(due - ct, 1))
            if self.v23 and self.sync_mode == 2 and self.sync_timer < SYNC_PERIOD:
                candidates.append(self.cycle + SYNC_PERIOD - self.sync_timer)
        for c in candidates:
            if best is None or c < best:
                best = c
        return best

    # ------------------------------------------------------------------------------------------
    # The clock

    def _skip_to(self, cycle: int) -> None:
        """Account for idle cycles: each one still ticks the trial clock and the cycle counters."""
        elapsed = cycle - self.cycle
        if elapsed <= 0:
            return
        if self.running and not self._first_loop:
            self.current_time += elapsed
            self.sync_timer += elapsed
        self.n_cycles_completed += elapsed
        if self._get_module_info:
            self._module_cycles += elapsed
        self.cycle = cycle

    def _run_cycle(self) -> None:
        self.world.apply_inputs(self.cycle)
        self._loop_phase()
        self._handler()

    def _work_pending(self) -> bool:
        """Is there something the very next cycle must do?"""
        if self._start_flag or (self._run_flag and self._sma_confirmed) or self._app_in:
            return True
        if self._sma_pending:
            if len(self._main_in) >= self._sma_nbytes:
                return True
        elif self._main_in and self._command_length() is not None:
            return True
        if not self.running:
            return False
        if self._first_loop or self.events:
            return True
        if self._soft_event_ready(self._soft_x, "X") or self._soft_event_ready(self._soft_z, "Z"):
            return True
        state, m = self.current_state, self.machine
        for i in range(min(m.n_conditions, self.hw.n_conditions)):
            if m.target(m.conditions, state, i) != state and self._condition_true(m, i):
                return True
        for x in range(min(m.n_counters, self.hw.n_global_counters)):
            if (m.counter_events[x] < 254 and not self.counter_handled[x]
                    and self.counter_counts[x] == m.counter_thresholds[x]):
                return True
        pins, last = self.world.pins, self.last_input_state
        for i, _, hi in self._edge_channels:
            if self.input_enabled[i]:
                level = pins[i] if self._is_sampled(i) else self.input_state[i]
                if (level == hi and last[i] == 1 - hi) or (level == 1 - hi and last[i] == hi):
                    return True
        return False

    def _is_sampled(self, i: int) -> bool:
        """Is input i read from its pin this cycle (enabled, not overridden, a digital input)?"""
        if not self.input_enabled[i] or self.input_override[i]:
            return False
        if self.hw.inputs[i] == "F":
            return self.flex_types[self._flex_inputs.index(i)] == 0
        return True

    # ------------------------------------------------------------------------------------------
    # loop(): what the firmware does between timer interrupts

    def _loop_phase(self) -> None:
        if self._sma_pending and len(self._main_in) >= self._sma_nbytes:
            body = bytes(self._main_in[:self._sma_nbytes])
            del self._main_in[:self._sma_nbytes]
            self._sma_pending = False
            self._sma_confirmed = True
            machine = self._decode(body)
            self._sma_ok = machine is not None
            if self.running:
                self._queued = machine
            else:
                if machine is not None:
                    self._load(machine)
                if self.run_asap:
                    self.run_asap = False
                    self._start_flag = True
        if self._start_flag:
            self._start_flag = False
            self._start_sm()

    def _decode(self, body: bytes) -> LoadedMachine | None:
        """A body that does not decode is refused: the machine is not loaded, and the next start
        reports the transfer as failed (confirmation byte 0)."""
        try:
            return LoadedMachine.from_body(decode_state_machine_body(body, self.hw))
        except (CodecError, IndexError, ValueError) as exc:
            logger.error("state machine body of %d bytes refused: %s", len(body), exc)
            return None

    def _load(self, machine: LoadedMachine) -> None:
        """`loadStateMatrix`: the new machine replaces the old one."""
        for name, n, limit in (("timers", machine.n_timers, self.hw.n_global_timers),
                               ("counters", machine.n_counters, self.hw.n_global_counters),
                               ("conditions", machine.n_conditions, self.hw.n_conditions)):
            if n > limit:
                logger.warning("state machine uses %d global %s; the device has %d", n, name, limit)
        self.machine = machine
        self.timers.load(machine)

    def _start_sm(self) -> None:
        """`startSM`: confirmation byte, then reset the trial; the next handler runs its first loop."""
        if self._new_sma_started:
            self._main_out.append(1 if (self._sma_confirmed and self._sma_ok) else 0)
            self._new_sma_started = False
        self.current_state = self.previous_state = 0
        self._soft_x = self._soft_z = NO_EVENT
        self._matrix_finished = False
        for x in range(self.hw.n_global_counters):
            self.counter_counts[x] = 0
            self.counter_handled[x] = False
        pins = self.world.pins
        for i in self._sampled:
            level = pins[i] if self.input_enabled[i] else 1 - self.logic_high[i]
            self.input_state[i] = self.last_input_state[i] = level
            self.input_override[i] = False
        for i in self._flex_inputs:
            self.input_state[i] = self.last_input_state[i] = 0
        for t in range(self.hw.n_global_timers):
            self.input_state[self.n_inputs + t] = 0
        self.state_start_time = 0
        self.current_time = 0
        self.events = []
        self.n_cycles_completed = 0
        self.running = True
        self._first_loop = True

    # ------------------------------------------------------------------------------------------
    # handler(): the 100 us timer interrupt

    def _handler(self) -> None:
        if self._run_flag and self._sma_confirmed:
            # The firmware writes `startFlag == true` here (a no-op); the intent is to start.
            self._run_flag = False
            self._start_flag = True
        if self._get_module_info:
            self._module_cycles += 1
            if self._module_cycles > MODULE_INFO_TIMEOUT:
                self._get_module_info = False
                self._main_out += bytes(self.n_modules)  # 0 = no module on that port
        if self._main_in and not self._sma_pending:
            length = self._command_length()
            if length is not None:
                command = bytes(self._main_in[:length])
                del self._main_in[:length]
                self._execute(command)
        if self._app_in:
            byte = self._app_in.pop(0)
            self._soft_z = byte if self.running else NO_EVENT
        if self.running:
            if self._first_loop:
                self._run_first_loop()
            else:
                self._trial_cycle()
        if self._matrix_finished:
            self._finish_trial()
        self.n_cycles_completed += 1

    def _run_first_loop(self) -> None:
        self._first_loop = False
        self.trial_counter += 1
        self._in_trial = True
        self._main_out += struct.pack("<Q", self.session_us)
        self.world.trial_event(TrialRecord("start", self.cycle, self.session_us, self.trial_counter))
        self._sync_write()
        self.sync_timer = 0
        self._set_state_outputs(self.current_state)

    def _trial_cycle(self) -> None:
        """One running cycle: sample, detect events in the firmware's order, transition."""
        self.current_time += 1
        self.sync_timer += 1
        now = self.current_time
        m, state, hw = self.machine, self.current_state, self.hw
        pins, levels, last = self.world.pins, self.input_state, self.last_input_state
        enabled, override = self.input_enabled, self.input_override
        for i in self._sampled:
            if enabled[i] and not override[i]:
                levels[i] = pins[i]
        for k, i in enumerate(self._flex_inputs):
            if self.flex_types[k] == 0 and enabled[i] and not override[i]:
                levels[i] = pins[i]
        events = self.events  # starts with whatever state entry raised last cycle
        # a. conditions, every cycle while true, if the current state handles them
        for i in range(min(m.n_conditions, hw.n_conditions)):
            if m.target(m.conditions, state, i) != state and self._condition_true(m, i):
                events.append(self.condition_pos + i)
        # c. digital edges, channel order, high then low, against the last reported level
        for i, code, hi in self._edge_channels:
            if enabled[i]:
                level, lo = levels[i], 1 - hi
                if level == hi and last[i] == lo:
                    last[i] = hi
                    events.append(code)
                elif level == lo and last[i] == hi:
                    last[i] = lo
                    events.append(code + 1)
        # d. serial channels: modules (none attached), then the USB and APP soft codes
        if self._soft_x != NO_EVENT or self._soft_z != NO_EVENT:
            offset = 0
            for k, letter in enumerate(self._serial_letters):
                if letter == "X" and self._soft_event_ready(self._soft_x, "X"):
                    events.append((offset + self._soft_x) & 0xFF)
                    self._soft_x = NO_EVENT
                elif letter == "Z" and self._soft_event_ready(self._soft_z, "Z"):
                    events.append((offset + self._soft_z) & 0xFF)
                    self._soft_z = NO_EVENT
                offset += self.allocation[k]
        # e. global timers: ends, then starts
        if self.timers.n_used:
            self.timers.detect(now, events)
        # f. global counters: threshold check first, then count this cycle's events
        for x in range(min(m.n_counters, hw.n_global_counters)):
            attached = m.counter_events[x]
            if attached < 254:
                if self.counter_counts[x] == m.counter_thresholds[x] and not self.counter_handled[x]:
                    events.append(self.counter_pos + x)
                    self.counter_handled[x] = True
                self.counter_counts[x] += events.count(attached)
        # g. the state timer
        if self._meaningful_tup and now - self.state_start_time >= m.state_timer(state):
            events.append(self.tup_pos)
        if len(events) > self.max_events:
            del events[self.max_events:]
        new_state = self._first_transition(events)
        if events:
            self._main_out += encode_events(events, now)
        self.events = []
        if new_state != state:
            if new_state == m.n_states:
                self.running = False
                self._matrix_finished = True
            else:
                if self.sync_mode == 1:
                    self._sync_write()
                self.state_start_time = now
                if self.use_back_signal and new_state == 255:
                    self.current_state, self.previous_state = self.previous_state, state
                else:
                    self.previous_state, self.current_state = state, new_state
                self._set_state_outputs(self.current_state)
        if self.v23 and self.sync_mode == 2 and self.sync_timer == SYNC_PERIOD:
            self._sync_write()
            self.sync_timer = 0

    def _first_transition(self, events: list[int]) -> int:
        """The first event (in list order) whose target differs from the current state wins."""
        m, state = self.machine, self.current_state
        for code in events:
            if code < self.gt_start_pos:
                new = m.target(m.inputs, state, code)
            elif code < self.gt_end_pos:
                new = m.target(m.timer_starts, state, code - self.gt_start_pos)
            elif code < self.counter_pos:
                new = m.target(m.timer_ends, state, code - self.gt_end_pos)
            elif code < self.condition_pos:
                new = m.target(m.counters, state, code - self.counter_pos)
            elif code < self.tup_pos:
                new = m.target(m.conditions, state, code - self.condition_pos)
            elif code == self.tup_pos:
                new = m.tup_target(state)
            else:
                new = state
            if new != state:
                return new
        return state

    def _condition_true(self, m: LoadedMachine, i: int) -> bool:
        channel = m.condition_channels[i]
        return channel < len(self.input_state) and self.input_state[channel] == m.condition_values[i]

    def _soft_event_ready(self, code: int, letter: str) -> bool:
        """v23 drops codes at or above the channel's allocation (they stay pending); v22 takes
        any code below 255, even one that spills into the next channel's event codes."""
        if code == NO_EVENT or letter not in self._serial_letters:
            return False
        if not self.v23:
            return letter == "X"
        return code < self.allocation[self._serial_letters.index(letter)]

    def _finish_trial(self) -> None:
        """Trial end: end record, outputs low, then the queued machine, started in this cycle."""
        if self.sync_mode == 0:
            self._reset_sync_line()
        else:
            self._sync_write()
        end_us = self.session_us
        self._reset_outputs()
        self._main_out += encode_trial_end(self.current_time, self.n_cycles_completed, end_us)
        self._matrix_finished = False
        if self._in_trial:
            self._in_trial = False
            self.world.trial_event(TrialRecord("end", self.cycle, end_us, self.trial_counter))
        if self._queued is not None:
            self._load(self._queued)
            self._queued = None
        if self.run_asap:
            self.run_asap = False
            if self._new_sma_started and not self._sma_confirmed:
                self._run_flag = True  # starts when its transfer completes
            else:
                # The firmware writes this start timestamp one cycle later; here the next trial
                # begins in the cycle the previous one ended (zero dead time).
                self._start_sm()
                self._run_first_loop()
