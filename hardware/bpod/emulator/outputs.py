"""State entry and the output lines: `setStateOutputs`, `setGlobalTimerChannel`,
`resetOutputs` and the sync line, as the firmware writes them.

Functions of the `FirmwareState`, named after the firmware's. Every physical write is reported
to the `World`; level channels report changes, message channels (SoftCode, APP_SoftCode,
modules) every byte. An output that a running global timer owns, or that the host overrode
with `O`, is skipped by state entry until it is released.
"""

from __future__ import annotations

from functools import partial

from hardware.bpod.codec import encode_soft_code
from hardware.bpod.emulator.state import FirmwareState
from hardware.bpod.emulator.timers import SetChannel


def timer_channel_writer(fw: FirmwareState) -> SetChannel:
    """`setGlobalTimerChannel` bound to this firmware, as the global timers call it."""
    return partial(set_global_timer_channel, fw)


def set_state_outputs(fw: FirmwareState, state: int) -> None:
    """`setStateOutputs`: cancel timers, trigger timers, write every output, reset a counter."""
    m, now, events = fw.machine, fw.current_time, fw.events
    cancel = m.cancel_mask(state)
    if cancel:
        fw.timers.cancel_mask(cancel, events, timer_channel_writer(fw))
    trigger = m.trigger_mask(state)
    if trigger:
        fw.timers.trigger_mask(trigger, now, events, timer_channel_writer(fw))
    row = m.output_row(state)
    for i, letter in enumerate(fw.output_hw):
        value = row.get(i, 0)
        if letter == "U":
            if value > 0:
                send_serial_message(fw, fw.module_of_output[i], value)
                message(fw, i, value)
        elif letter == "X":
            if value > 0:
                fw.main_out += encode_soft_code(value & 0xFF)
                message(fw, i, value)
        elif letter == "Z":
            if value > 0 and fw.hw.machine_type > 2:
                fw.app_out.append(value & 0xFF)
                message(fw, i, value)
        elif letter in "BWDV":
            if fw.output_override[i] == 0:
                drive(fw, i, 1 if value else 0)
        elif letter == "P":
            if fw.output_override[i] == 0:
                drive(fw, i, value & 0xFF)
        elif letter == "F":
            drive_flex(fw, i, value, value)
    reset = m.counter_reset(state)
    if 0 < reset <= fw.hw.n_global_counters:
        fw.counter_counts[reset - 1] = 0
        fw.counter_handled[reset - 1] = False
    fw.meaningful_tup = m.tup_target(state) != state


def set_global_timer_channel(fw: FirmwareState, t: int, op: int) -> None:
    """`setGlobalTimerChannel`: drive timer t's channel on (1) or off (0); while on, the
    channel is locked against state outputs. Channel 254/255 means none."""
    m = fw.machine
    channel = m.timer_channels[t] if t < m.n_timers else 255
    value = (m.timer_on_values[t] if op else m.timer_off_values[t]) if t < m.n_timers else 0
    if channel < len(fw.output_hw):
        letter = fw.output_hw[channel]
        if letter == "U":
            if value < 254:
                send_serial_message(fw, fw.module_of_output[channel], value)
                message(fw, channel, value)
        elif letter == "X":
            fw.main_out += encode_soft_code(value & 0xFF)
            message(fw, channel, value)
        elif letter == "Z":
            if fw.hw.machine_type > 2:
                fw.app_out.append(value & 0xFF)
                message(fw, channel, value)
        elif letter in "BWDV":
            drive(fw, channel, op)
            fw.output_override[channel] = op
        elif letter == "P":
            drive(fw, channel, (m.timer_on_values[t] & 0xFF) if op else 0)
            fw.output_override[channel] = op
        elif letter == "F":
            drive_flex(fw, channel, op, value)
            fw.output_override[channel] = op
    fw.input_state[fw.n_inputs + t] = op


def reset_outputs(fw: FirmwareState) -> None:
    """`resetOutputs`: every line low, overrides released, timers and counters cleared."""
    for i, letter in enumerate(fw.output_hw):
        if letter in "BWVP":
            drive(fw, i, 0)
            fw.output_override[i] = 0
        elif letter == "F":
            drive_flex(fw, i, 0, 0)
    fw.timers.reset()
    for x in range(fw.hw.n_global_counters):
        fw.counter_counts[x] = 0
        fw.counter_handled[x] = False
    fw.meaningful_tup = False


def send_serial_message(fw: FirmwareState, port: int, index: int) -> None:
    """Message `index` of the serial message library to UART port `port` (0-based): the bytes loaded
    with `L`, or the single byte `index`."""
    if port < len(fw.serial_messages):
        data = fw.serial_messages[port].get(index, bytes([index & 0xFF]))
        fw.world.module_write(port, data, fw.now)


def load_serial_messages(fw: FirmwareState, port: int, messages: list[tuple[int, bytes]]) -> None:
    """`L` for one port; entries for a port the board does not have are dropped."""
    if port < len(fw.serial_messages):
        fw.serial_messages[port].update(messages)


def reset_serial_messages(fw: FirmwareState) -> None:
    """`resetSerialMessages`: message i is the single byte i again on every port."""
    for library in fw.serial_messages:
        library.clear()


def drive(fw: FirmwareState, index: int, value: int) -> None:
    """A level write on a physical output line."""
    fw.world.output_changed(fw.cycle, index, value)


def message(fw: FirmwareState, index: int, value: int) -> None:
    """A byte sent on a message channel (serial module, SoftCode, APP_SoftCode)."""
    fw.world.output_changed(fw.cycle, index, value, message=True)


def drive_flex(fw: FirmwareState, index: int, digital: int, analog: int) -> None:
    """Flex channels (r2+) output only when configured as digital (1) or analog (3) out."""
    k = fw.hw.outputs[:index].count("F")
    if k < fw.n_flex and fw.flex_types[k] == 1:
        drive(fw, index, 1 if digital else 0)
    elif k < fw.n_flex and fw.flex_types[k] == 3:
        drive(fw, index, analog)


def sync_write(fw: FirmwareState) -> None:
    """The firmware's sync-line toggle (state changes, trial start and end, or every 100 ms)."""
    if fw.sync_on and fw.sync_index is not None:
        fw.sync_state ^= 1
        level = fw.sync_state * 255 if fw.sync_original == "P" else fw.sync_state
        drive(fw, fw.sync_index, level)


def reset_sync_line(fw: FirmwareState) -> None:
    fw.sync_state = 0
    if fw.sync_index is not None:
        drive(fw, fw.sync_index, 0)
