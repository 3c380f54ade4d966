"""The host's commands (spec 2.2), as the firmware's `switch (CommandByte)` handles them.

Functions of the `FirmwareState`: the cycle (`cycle.handler`) parses one complete command per
cycle (`command_length`) and calls `execute`, which dispatches to the `cmd_*` handler the
firmware's switch would reach for that op code. A command whose payload has not all arrived
waits at the head of the input (the firmware would block inside its interrupt until it had);
unknown op codes are one byte, consumed and ignored.
"""

from __future__ import annotations

import logging

from hardware.bpod.codec import (
    MAX_BODY_BYTES,
    encode_firmware_minor,
    encode_firmware_version,
    encode_soft_code,
)
from hardware.bpod.emulator.outputs import (
    drive,
    load_serial_messages,
    reset_outputs,
    reset_serial_messages,
    send_serial_message,
)
from hardware.bpod.emulator.state import NO_EVENT, FirmwareState
from hardware.bpod.hardware_description import HardwareDescription, encode_hardware_description
from hardware.bpod.module_info import MODULE_PROBE

logger = logging.getLogger(__name__)

APP_HANDSHAKE_BYTE = 222
ANALOG_HANDSHAKE_BYTE = 223


def payload_sizes(hw: HardwareDescription) -> dict[int, int]:
    """Op code -> bytes of payload, for the commands whose payload has a fixed size on this board."""
    sizes = {"6": 0, "F": 0, "*": 0, "$": 1, "G": 0, "H": 0, "M": 0, "%": len(hw.serial_channels),
             "E": len(hw.inputs), "J": 2, "K": 2, "O": 2, "I": 1, "Z": 0, "S": 1, "U": 2, ">": 0,
             "V": 2, "~": 1, "C": 4, "R": 0, "X": 0}
    if hw.firmware_major >= 23:
        sizes.update({"f": 0, "v": 0, "{": 0, "}": 0, ":": 1, "Q": 0, "q": 0})
        if hw.machine_type == 4:
            n = hw.inputs.count("F")
            sizes.update({"Q": n, "^": 4, "o": 1, ".": 0, "t": 4 * n, "p": 2 * n, "m": n, "_": 0})
    return {ord(k): v for k, v in sizes.items()}


def command_length(fw: FirmwareState) -> int | None:
    """Bytes of the complete command at the head of the main input, or None if incomplete.
    Unknown op codes are one byte (consumed and ignored)."""
    buf = fw.main_in
    op = buf[0]
    fixed = fw.payload_sizes.get(op)
    if fixed is not None:
        n = 1 + fixed
    elif op == ord("T"):
        if len(buf) < 3:
            return None
        module = (buf[1] - 1) & 0xFF
        n = 3 + (buf[2] if module < fw.n_modules else 0)  # unknown module: payload left unread
    elif op == ord("L"):
        if len(buf) < 3:
            return None
        n = 3
        for _ in range(buf[2]):
            if len(buf) < n + 2:
                return None
            n += 2 + buf[n + 1]
    elif op == ord("e") and fw.v23 and fw.hw.machine_type == 4:
        if len(buf) < 3:
            return None
        n = 4 if (buf[1] < fw.n_flex and buf[2] in (0, 1)) else 3
    else:
        n = 1
    return n if len(buf) >= n else None


def execute(fw: FirmwareState, command: bytes) -> None:
    op, payload = chr(command[0]), command[1:]
    handler = _COMMANDS.get(op)
    if (handler is None or (op in _V23_ONLY and not fw.v23)
            or (op in _MT4_ONLY and fw.hw.machine_type != 4)):
        logger.debug("ignored op code 0x%02x", command[0])
        return
    handler(fw, payload)


def _reply(fw: FirmwareState, data: bytes | int) -> None:
    if isinstance(data, int):
        fw.main_out.append(data)
    else:
        fw.main_out += data


def cmd_handshake(fw: FirmwareState, _: bytes) -> None:
    fw.connected = True
    _reply(fw, ord("5"))
    fw.clock_zero = fw.cycle
    reset_serial_messages(fw)
    disable_module_relays(fw)


def cmd_disconnect(fw: FirmwareState, _: bytes) -> None:
    disable_module_relays(fw)
    fw.connected = False
    _reply(fw, ord("1"))


def cmd_firmware(fw: FirmwareState, _: bytes) -> None:
    _reply(fw, encode_firmware_version(fw.hw.firmware_major, fw.hw.machine_type))


def cmd_minor(fw: FirmwareState, _: bytes) -> None:
    _reply(fw, encode_firmware_minor(fw.hw.firmware_minor))


def cmd_pcb(fw: FirmwareState, _: bytes) -> None:
    _reply(fw, fw.hw.pcb_revision)


def cmd_app_handshake(fw: FirmwareState, _: bytes) -> None:
    if fw.hw.machine_type > 2:
        fw.app_out.append(APP_HANDSHAKE_BYTE)


def cmd_analog_handshake(fw: FirmwareState, _: bytes) -> None:
    if fw.hw.has_analog_port:
        fw.analog_out.append(ANALOG_HANDSHAKE_BYTE)


def cmd_reset_clock(fw: FirmwareState, _: bytes) -> None:
    fw.clock_zero = fw.cycle
    if fw.v23:
        fw.trial_counter = 0
    _reply(fw, 1)


def cmd_ack_byte(fw: FirmwareState, _: bytes) -> None:
    _reply(fw, 1)  # `:` status LED and FlexIO settings: nothing to do


def cmd_pause(fw: FirmwareState, payload: bytes) -> None:
    fw.running = bool(payload[0])


def cmd_live_timestamps(fw: FirmwareState, _: bytes) -> None:
    _reply(fw, 1)


def cmd_hardware(fw: FirmwareState, _: bytes) -> None:
    _reply(fw, encode_hardware_description(fw.hw))


def cmd_modules(fw: FirmwareState, _: bytes) -> None:
    """`M`: flush what modules sent, probe each with byte 255 (twice on firmware 23: the second says
    the state machine takes hardware-version records); the answers are relayed 100 cycles later."""
    probe = bytes([MODULE_PROBE] * (2 if fw.v23 else 1))
    for k, port in enumerate(fw.world.module_ports):
        port.clear()
        fw.world.module_write(k, probe, fw.now)
    fw.module_cycles = 0
    fw.get_module_info = True


def cmd_module_bytes(fw: FirmwareState, payload: bytes) -> None:
    """`T`: bytes from the host to a module (port numbered from 1)."""
    port = (payload[0] - 1) & 0xFF
    if port < fw.n_modules:
        fw.world.module_write(port, payload[2:2 + payload[1]], fw.now)


def cmd_module_message(fw: FirmwareState, payload: bytes) -> None:
    """`U`: a message of the library to a module (port numbered from 1)."""
    send_serial_message(fw, (payload[0] - 1) & 0xFF, payload[1])


def cmd_load_messages(fw: FirmwareState, payload: bytes) -> None:
    """`L`: port (from 0), count, then (index, length, bytes) per message."""
    messages, pos = [], 2
    for _ in range(payload[1]):
        index, length = payload[pos], payload[pos + 1]
        messages.append((index, payload[pos + 2:pos + 2 + length]))
        pos += 2 + length
    load_serial_messages(fw, payload[0], messages)
    _reply(fw, 1)


def cmd_reset_messages(fw: FirmwareState, _: bytes) -> None:
    reset_serial_messages(fw)
    _reply(fw, 1)


def cmd_module_relay(fw: FirmwareState, payload: bytes) -> None:
    """`J`: relay one port's bytes to the host while idle (all others off, buffers cleared)."""
    disable_module_relays(fw)
    for port in fw.world.module_ports:
        port.clear()
    if payload[0] < fw.n_modules:
        fw.relay_mode[payload[0]] = bool(payload[1])


def disable_module_relays(fw: FirmwareState) -> None:
    fw.relay_mode = [False] * fw.n_modules


def cmd_allocation(fw: FirmwareState, payload: bytes) -> None:
    fw.allocation = list(payload)
    _reply(fw, 1)


def cmd_enable(fw: FirmwareState, payload: bytes) -> None:
    fw.input_enabled = list(payload)
    _reply(fw, 1)


def cmd_sync(fw: FirmwareState, payload: bytes) -> None:
    new, fw.sync_mode = payload[0], payload[1]
    if new != fw.sync_channel:
        if new == 255:
            if fw.sync_channel < len(fw.output_hw):
                fw.output_hw[fw.sync_channel] = fw.sync_original
            fw.sync_on = False
        elif new < len(fw.output_hw):
            if fw.sync_channel < len(fw.output_hw) and fw.output_hw[fw.sync_channel] == "Y":
                fw.output_hw[fw.sync_channel] = fw.sync_original
            fw.sync_original = fw.output_hw[new]
            fw.output_hw[new] = "Y"
            fw.sync_on = True
            fw.sync_index = new
        fw.sync_channel = new
    _reply(fw, 1)


def cmd_override(fw: FirmwareState, payload: bytes) -> None:
    channel, value = payload[0], payload[1]
    if channel >= len(fw.output_hw):
        return
    letter = fw.output_hw[channel]
    if letter in "BWDV":
        drive(fw, channel, 1 if value else 0)
        fw.output_override[channel] = value
    elif letter == "P":
        drive(fw, channel, value)
        fw.output_override[channel] = 1 if value > 0 else 0


def cmd_read_input(fw: FirmwareState, payload: bytes) -> None:
    i = payload[0]
    level = 0
    if i < fw.n_inputs and fw.hw.inputs[i] not in "UXZ":
        level = int(fw.world.pins[i] == fw.logic_high[i])
    _reply(fw, level)


def cmd_echo_soft_code(fw: FirmwareState, payload: bytes) -> None:
    _reply(fw, encode_soft_code(payload[0]))


def cmd_virtual_input(fw: FirmwareState, payload: bytes) -> None:
    channel, level = payload[0], payload[1]
    if fw.running and channel < fw.n_inputs:
        fw.input_state[channel] = level
        fw.input_override[channel] = True


def cmd_soft_code(fw: FirmwareState, payload: bytes) -> None:
    fw.soft_x = payload[0] if fw.running else NO_EVENT


def cmd_state_machine(fw: FirmwareState, payload: bytes) -> None:
    """`C` header. The body is read once it has all arrived (`cycle.loop`)."""
    fw.new_sma_started = True
    fw.sma_confirmed = False
    fw.run_asap = bool(payload[0])
    fw.use_back_signal = bool(payload[1])
    n_bytes = payload[2] | payload[3] << 8
    if n_bytes < MAX_BODY_BYTES:
        fw.sma_nbytes = n_bytes
        fw.sma_pending = True
    else:
        logger.error("state machine of %d bytes refused (limit %d); its bytes will be read as commands",
                     n_bytes, MAX_BODY_BYTES)


def cmd_run(fw: FirmwareState, _: bytes) -> None:
    fw.start_flag = True


def cmd_stop(fw: FirmwareState, _: bytes) -> None:
    fw.matrix_finished = True
    fw.running = False
    reset_outputs(fw)


def cmd_flex_types(fw: FirmwareState, payload: bytes) -> None:
    if fw.hw.machine_type == 4:
        fw.flex_types = list(payload)
        _reply(fw, 1)


def cmd_flex_query(fw: FirmwareState, _: bytes) -> None:
    if fw.hw.machine_type == 4:
        _reply(fw, bytes(fw.flex_types))


def cmd_flex_threshold_enable(fw: FirmwareState, payload: bytes) -> None:
    if len(payload) == 3:
        _reply(fw, 1)


def cmd_flex_oversampling(fw: FirmwareState, _: bytes) -> None:
    _reply(fw, 3)


def cmd_psram_test(fw: FirmwareState, _: bytes) -> None:
    _reply(fw, bytes([16, 1]))  # 16 MB, memory OK


_COMMANDS = {
    "6": cmd_handshake,
    "Z": cmd_disconnect,
    "F": cmd_firmware,
    "f": cmd_minor,
    "v": cmd_pcb,
    "{": cmd_app_handshake,
    "}": cmd_analog_handshake,
    "*": cmd_reset_clock,
    ":": cmd_ack_byte,
    "$": cmd_pause,
    "G": cmd_live_timestamps,
    "H": cmd_hardware,
    "M": cmd_modules,
    "%": cmd_allocation,
    "E": cmd_enable,
    "J": cmd_module_relay,
    "K": cmd_sync,
    "O": cmd_override,
    "I": cmd_read_input,
    "S": cmd_echo_soft_code,
    "T": cmd_module_bytes,
    "U": cmd_module_message,
    "L": cmd_load_messages,
    ">": cmd_reset_messages,
    "V": cmd_virtual_input,
    "~": cmd_soft_code,
    "C": cmd_state_machine,
    "R": cmd_run,
    "X": cmd_stop,
    "Q": cmd_flex_types,
    "q": cmd_flex_query,
    "^": cmd_ack_byte,
    "o": cmd_ack_byte,
    ".": cmd_flex_oversampling,
    "t": cmd_ack_byte,
    "p": cmd_ack_byte,
    "m": cmd_ack_byte,
    "e": cmd_flex_threshold_enable,
    "_": cmd_psram_test,
}
_V23_ONLY = set("fv{}:Qq^o.tpme_")
_MT4_ONLY = set("^o.tpme_")
