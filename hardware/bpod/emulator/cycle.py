"""One firmware cycle: `loop()` and the 100 us timer interrupt `handler()`, as functions of the
`FirmwareState`.

Read beside `StateMachine.ino`: `loop` is the firmware's `loop()` (the state-machine body read,
`startSM`), `handler` is the timer interrupt (one command, one APP byte, one trial cycle, trial
end), `trial_cycle` is its event-detection block in the firmware's order. State entry and the
output lines are in `outputs.py` (`setStateOutputs`), the host's commands in `commands.py`,
global timers in `timers.py`.

A RunASAP machine queued during a trial starts as on the device: `startSM` runs in the cycle the
previous trial ends and the next interrupt (its first loop) writes the start timestamp, so
start_us of the next trial is end_us of the previous one plus one cycle, and that trial's
nCyclesCompleted counts the ending cycle too (one more than its exit cycle).

Deliberate difference from the firmware unless `faithful_quirks` is set: a queued machine whose
transfer completes after the trial ended still starts. The firmware's `startFlag == true` typo
(a comparison where an assignment was meant) leaves it loaded but waiting for `R`.
"""

from __future__ import annotations

import logging

from hardware.bpod.codec import (
    CodecError,
    decode_state_machine_body,
    encode_confirmation,
    encode_events,
    encode_trial_end,
    encode_trial_start_time,
)
from hardware.bpod.emulator.commands import command_length, execute
from hardware.bpod.emulator.machine import LoadedMachine
from hardware.bpod.emulator.outputs import (
    load_serial_messages,
    reset_outputs,
    reset_serial_messages,
    reset_sync_line,
    set_state_outputs,
    sync_write,
    timer_channel_writer,
)
from hardware.bpod.emulator.state import NO_EVENT, FirmwareState
from hardware.bpod.emulator.world import TrialRecord
from hardware.bpod.module_info import (
    MODULE_ACK,
    ModuleRecordError,
    encode_module_records,
    read_module_description,
)

logger = logging.getLogger(__name__)

MODULE_INFO_TIMEOUT = 100  # cycles the firmware waits for modules to describe themselves
SYNC_PERIOD = 1000  # sync mode 2 toggles every 1000 cycles


# ----------------------------------------------------------------------------------------------
# loop(): what the firmware does between timer interrupts


def loop(fw: FirmwareState) -> None:
    """`loop()`: relay module bytes while idle, read a state machine body once it has all arrived, then
    `startSM` if asked."""
    if not fw.running and any(fw.relay_mode):
        for k, port in enumerate(fw.world.module_ports):
            if fw.relay_mode[k]:
                fw.main_out += port.read_all(fw.cycle)
    if fw.sma_pending and len(fw.main_in) >= fw.sma_nbytes:
        body = bytes(fw.main_in[:fw.sma_nbytes])
        del fw.main_in[:fw.sma_nbytes]
        fw.sma_pending = False
        fw.sma_confirmed = True
        machine = decode_body(fw, body)
        fw.sma_ok = machine is not None
        if fw.running:
            fw.queued = machine
        else:
            if machine is not None:
                load_state_matrix(fw, machine)
            if fw.run_asap:
                fw.run_asap = False
                fw.start_flag = True
    if fw.start_flag:
        fw.start_flag = False
        start_sm(fw)


def decode_body(fw: FirmwareState, body: bytes) -> LoadedMachine | None:
    """`loadStateMatrix`: the body as the firmware reads it (no length check, unknown trailer ops
    skipped). One too short for its own counts is refused: the machine is not loaded, and the next
    start reports the transfer as failed (confirmation byte 0)."""
    try:
        return LoadedMachine.from_body(decode_state_machine_body(body, fw.hw, strict=False))
    except (CodecError, IndexError, ValueError) as exc:
        logger.error("state machine body of %d bytes refused: %s", len(body), exc)
        return None


def load_state_matrix(fw: FirmwareState, machine: LoadedMachine) -> None:
    """`loadStateMatrix`: the new machine replaces the old one."""
    for name, n, limit in (("timers", machine.n_timers, fw.hw.n_global_timers),
                           ("counters", machine.n_counters, fw.hw.n_global_counters),
                           ("conditions", machine.n_conditions, fw.hw.n_conditions)):
        if n > limit:
            logger.warning("state machine uses %d global %s; the device has %d", n, name, limit)
    fw.machine = machine
    fw.timers.load(machine)
    for i, (port, messages) in enumerate(machine.serial_message_ops):
        if i == 0:
            reset_serial_messages(fw)  # the first `L` op of a trailer resets the library
        load_serial_messages(fw, port, messages)


def start_sm(fw: FirmwareState) -> None:
    """`startSM`: confirmation byte, then reset the trial; the next handler runs its first loop."""
    if fw.new_sma_started:
        fw.main_out += encode_confirmation(fw.sma_confirmed and fw.sma_ok)
        fw.new_sma_started = False
    fw.current_state = fw.previous_state = 0
    fw.soft_x = fw.soft_z = NO_EVENT
    fw.matrix_finished = False
    for x in range(fw.hw.n_global_counters):
        fw.counter_counts[x] = 0
        fw.counter_handled[x] = False
    pins = fw.world.pins
    for i in fw.sampled:
        level = pins[i] if fw.input_enabled[i] else 1 - fw.logic_high[i]
        fw.input_state[i] = fw.last_input_state[i] = level
        fw.input_override[i] = False
    for i in fw.flex_inputs:
        fw.input_state[i] = fw.last_input_state[i] = 0
    for t in range(fw.hw.n_global_timers):
        fw.input_state[fw.n_inputs + t] = 0
    for port in fw.world.module_ports:  # clearSerialBuffers
        port.clear()
    fw.state_start_time = 0
    fw.current_time = 0
    fw.events = []
    fw.n_cycles_completed = 0
    fw.running = True
    fw.first_loop = True


# ----------------------------------------------------------------------------------------------
# handler(): the 100 us timer interrupt


def handler(fw: FirmwareState) -> None:
    """`handler()`: one command, one APP byte, one trial cycle, then the trial end if due."""
    if fw.run_flag and fw.sma_confirmed:
        fw.run_flag = False
        # The firmware writes `startFlag == true` here, a no-op: the machine waits for `R`.
        fw.start_flag = not fw.faithful_quirks
    if fw.get_module_info:
        fw.module_cycles += 1
        if fw.module_cycles > MODULE_INFO_TIMEOUT:
            fw.get_module_info = False
            for port in fw.world.module_ports:
                fw.main_out += relay_module_info(port.read_all(fw.cycle))
    if fw.main_in and not fw.sma_pending:
        length = command_length(fw)
        if length is not None:
            command = bytes(fw.main_in[:length])
            del fw.main_in[:length]
            execute(fw, command)
    if fw.app_in:
        byte = fw.app_in.pop(0)
        fw.soft_z = byte if fw.running else NO_EVENT
    if fw.running:
        if fw.first_loop:
            run_first_loop(fw)
        else:
            trial_cycle(fw)
    if fw.matrix_finished:
        finish_trial(fw)
    fw.n_cycles_completed += 1


def run_first_loop(fw: FirmwareState) -> None:
    """The handler's first pass of a trial: start timestamp, sync line, state 0 entered."""
    fw.first_loop = False
    fw.trial_counter += 1
    fw.in_trial = True
    fw.main_out += encode_trial_start_time(fw.session_us)
    fw.world.trial_event(TrialRecord("start", fw.cycle, fw.session_us, fw.trial_counter))
    sync_write(fw)
    fw.sync_timer = 0
    set_state_outputs(fw, fw.current_state)


def trial_cycle(fw: FirmwareState) -> None:
    """One running cycle: sample, detect events in the firmware's order, transition."""
    fw.current_time += 1
    fw.sync_timer += 1
    now = fw.current_time
    m, state, hw = fw.machine, fw.current_state, fw.hw
    pins, levels, last = fw.world.pins, fw.input_state, fw.last_input_state
    enabled, override = fw.input_enabled, fw.input_override
    for i in fw.sampled:
        if enabled[i] and not override[i]:
            levels[i] = pins[i]
    for k, i in enumerate(fw.flex_inputs):
        if fw.flex_types[k] == 0 and enabled[i] and not override[i]:
            levels[i] = pins[i]
    events = fw.events  # starts with whatever state entry raised last cycle
    # a. conditions, every cycle while true, if the current state handles them
    for i in range(min(m.n_conditions, hw.n_conditions)):
        if m.target(m.conditions, state, i) != state and condition_true(fw, m, i):
            events.append(fw.condition_pos + i)
    # c. digital edges, channel order, high then low, against the last reported level
    for i, code, hi in fw.edge_channels:
        if enabled[i]:
            level, lo = levels[i], 1 - hi
            if level == hi and last[i] == lo:
                last[i] = hi
                events.append(code)
            elif level == lo and last[i] == hi:
                last[i] = lo
                events.append(code + 1)
    # d. serial channels: one byte per module port (1..allocation; byte 0 gives offset-1, as in the
    # firmware), then the USB and APP soft codes
    ports = fw.world.module_ports
    module_bytes = hw.machine_type > 1 and any(p.available(fw.cycle) for p in ports)
    if module_bytes or fw.soft_x != NO_EVENT or fw.soft_z != NO_EVENT:
        offset = 0
        for k, letter in enumerate(fw.serial_letters):
            if letter == "U":
                byte = ports[k].read(fw.cycle) if module_bytes else None
                if byte is not None and byte <= fw.allocation[k]:
                    events.append((offset + byte - 1) & 0xFF)
            elif letter == "X" and soft_event_ready(fw, fw.soft_x, "X"):
                events.append((offset + fw.soft_x) & 0xFF)
                fw.soft_x = NO_EVENT
            elif letter == "Z" and soft_event_ready(fw, fw.soft_z, "Z"):
                events.append((offset + fw.soft_z) & 0xFF)
                fw.soft_z = NO_EVENT
            offset += fw.allocation[k]
    # e. global timers: ends, then starts
    if fw.timers.n_used:
        fw.timers.detect(now, events, timer_channel_writer(fw))
    # f. global counters: threshold check first, then count this cycle's events
    for x in range(min(m.n_counters, hw.n_global_counters)):
        attached = m.counter_events[x]
        if attached < 254:
            if fw.counter_counts[x] == m.counter_thresholds[x] and not fw.counter_handled[x]:
                events.append(fw.counter_pos + x)
                fw.counter_handled[x] = True
            fw.counter_counts[x] += events.count(attached)
    # g. the state timer
    if fw.meaningful_tup and now - fw.state_start_time >= m.state_timer(state):
        events.append(fw.tup_pos)
    if len(events) > fw.max_events:
        del events[fw.max_events:]
    new_state = first_transition(fw, events)
    if events:
        fw.main_out += encode_events(events, now)
    fw.events = []
    if new_state != state:
        if new_state == m.n_states:
            fw.running = False
            fw.matrix_finished = True
        else:
            if fw.sync_mode == 1:
                sync_write(fw)
            fw.state_start_time = now
            if fw.use_back_signal and new_state == 255:
                fw.current_state, fw.previous_state = fw.previous_state, state
            else:
                fw.previous_state, fw.current_state = state, new_state
            set_state_outputs(fw, fw.current_state)
    if fw.v23 and fw.sync_mode == 2 and fw.sync_timer == SYNC_PERIOD:
        sync_write(fw)
        fw.sync_timer = 0


def relay_module_info(received: bytes) -> bytes:
    """`relayModuleInfo`: a port's `M` record from what its module answered (0 if it did not)."""
    if len(received) < 5 or received[0] != MODULE_ACK:
        return b"\x00"
    pos = 1

    def read_exact(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(received):
            raise ModuleRecordError("module description truncated")
        pos += n
        return received[pos - n:pos]

    try:
        return encode_module_records([read_module_description(read_exact)])
    except ModuleRecordError as exc:
        logger.warning("module answered the probe with %d bytes that do not parse: %s", len(received), exc)
        return b"\x00"


def first_transition(fw: FirmwareState, events: list[int]) -> int:
    """The first event (in list order) whose target differs from the current state wins."""
    m, state = fw.machine, fw.current_state
    for code in events:
        if code < fw.gt_start_pos:
            new = m.target(m.inputs, state, code)
        elif code < fw.gt_end_pos:
            new = m.target(m.timer_starts, state, code - fw.gt_start_pos)
        elif code < fw.counter_pos:
            new = m.target(m.timer_ends, state, code - fw.gt_end_pos)
        elif code < fw.condition_pos:
            new = m.target(m.counters, state, code - fw.counter_pos)
        elif code < fw.tup_pos:
            new = m.target(m.conditions, state, code - fw.condition_pos)
        elif code == fw.tup_pos:
            new = m.tup_target(state)
        else:
            new = state
        if new != state:
            return new
    return state


def condition_true(fw: FirmwareState, m: LoadedMachine, i: int) -> bool:
    channel = m.condition_channels[i]
    return channel < len(fw.input_state) and fw.input_state[channel] == m.condition_values[i]


def soft_event_ready(fw: FirmwareState, code: int, letter: str) -> bool:
    """v23 drops codes at or above the channel's allocation (they stay pending); v22 takes
    any code below 255, even one that spills into the next channel's event codes."""
    if code == NO_EVENT or letter not in fw.serial_letters:
        return False
    if not fw.v23:
        return letter == "X"
    return code < fw.allocation[fw.serial_letters.index(letter)]


def finish_trial(fw: FirmwareState) -> None:
    """Trial end: end record, outputs low, then the queued machine: `startSM` now, so its first
    loop (the start timestamp) is the next cycle."""
    if fw.sync_mode == 0:
        reset_sync_line(fw)
    else:
        sync_write(fw)
    end_us = fw.session_us
    reset_outputs(fw)
    fw.main_out += encode_trial_end(fw.current_time, fw.n_cycles_completed, end_us)
    fw.matrix_finished = False
    if fw.in_trial:
        fw.in_trial = False
        fw.world.trial_event(TrialRecord("end", fw.cycle, end_us, fw.trial_counter))
    if fw.queued is not None:
        load_state_matrix(fw, fw.queued)
        fw.queued = None
    if fw.run_asap:
        fw.run_asap = False
        if fw.new_sma_started and not fw.sma_confirmed:
            fw.run_flag = True  # starts when its transfer completes
        else:
            start_sm(fw)
