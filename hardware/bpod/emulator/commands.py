"""The host's commands (spec 2.2), as the firmware's `switch (CommandByte)` handles them.

A mixin of `Firmware`: the engine parses one complete command per cycle and calls `_execute`.
A command whose payload has not all arrived waits at the head of the input (the firmware would
block inside its interrupt until it had); unknown op codes are one byte, consumed and ignored.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from hardware.bpod.codec import MAX_BODY_BYTES, encode_soft_code
from hardware.bpod.hardware_description import encode_hardware_description

if TYPE_CHECKING:
    from hardware.bpod.emulator.engine import Firmware

logger = logging.getLogger(__name__)

APP_HANDSHAKE_BYTE = 222
NO_EVENT = 255  # an empty soft-code slot


class CommandSet:
    """Command parsing and the command handlers; state lives on the `Firmware` instance."""

    def _build_payload_sizes(self: Firmware) -> dict[int, int]:
        hw = self.hw
        sizes = {"6": 0, "F": 0, "*": 0, "$": 1, "G": 0, "H": 0, "M": 0, "%": len(hw.serial_channels),
                 "E": len(hw.inputs), "J": 2, "K": 2, "O": 2, "I": 1, "Z": 0, "S": 1, "U": 2, ">": 0,
                 "V": 2, "~": 1, "C": 4, "R": 0, "X": 0}
        if self.v23:
            sizes.update({"f": 0, "v": 0, "{": 0, "}": 0, ":": 1, "Q": 0, "q": 0})
            if hw.machine_type == 4:
                n = self.n_flex
                sizes.update({"Q": n, "^": 4, "o": 1, ".": 0, "t": 4 * n, "p": 2 * n, "m": n, "_": 0})
        return {ord(k): v for k, v in sizes.items()}

    def _command_length(self) -> int | None:
        """Bytes of the complete command at the head of the main input, or None if incomplete.
        Unknown op codes are one byte (consumed and ignored)."""
        buf = self._main_in
        op = buf[0]
        fixed = self._payload_sizes.get(op)
        if fixed is not None:
            n = 1 + fixed
        elif op == ord("T"):
            if len(buf) < 3:
                return None
            module = (buf[1] - 1) & 0xFF
            n = 3 + (buf[2] if module < self.n_modules else 0)  # unknown module: payload left unread
        elif op == ord("L"):
            if len(buf) < 3:
                return None
            n = 3
            for _ in range(buf[2]):
                if len(buf) < n + 2:
                    return None
                n += 2 + buf[n + 1]
        elif op == ord("e") and self.v23 and self.hw.machine_type == 4:
            if len(buf) < 3:
                return None
            n = 4 if (buf[1] < self.n_flex and buf[2] in (0, 1)) else 3
        else:
            n = 1
        return n if len(buf) >= n else None

    def _execute(self, command: bytes) -> None:
        op, payload = chr(command[0]), command[1:]
        handler = _COMMANDS.get(op)
        if (handler is None or (op in _V23_ONLY and not self.v23)
                or (op in _MT4_ONLY and self.hw.machine_type != 4)):
            logger.debug("ignored op code 0x%02x", command[0])
            return
        handler(self, payload)

    def _reply(self, data: bytes | int) -> None:
        if isinstance(data, int):
            self._main_out.append(data)
        else:
            self._main_out += data

    def _cmd_handshake(self, _: bytes) -> None:
        self.connected = True
        self._reply(ord("5"))
        self._clock_zero = self.cycle

    def _cmd_disconnect(self, _: bytes) -> None:
        self.connected = False
        self._reply(ord("1"))

    def _cmd_firmware(self, _: bytes) -> None:
        self._reply(struct.pack("<HH", self.hw.firmware_major, self.hw.machine_type))

    def _cmd_minor(self, _: bytes) -> None:
        self._reply(struct.pack("<H", self.hw.firmware_minor))

    def _cmd_pcb(self, _: bytes) -> None:
        self._reply(self.hw.pcb_revision)

    def _cmd_app_handshake(self, _: bytes) -> None:
        if self.hw.machine_type > 2:
            self._app_out.append(APP_HANDSHAKE_BYTE)

    def _cmd_reset_clock(self, _: bytes) -> None:
        self._clock_zero = self.cycle
        if self.v23:
            self.trial_counter = 0
        self._reply(1)

    def _cmd_ack_byte(self, _: bytes) -> None:
        self._reply(1)  # `:` status LED, `>` message-library reset, `L` message library: nothing to do

    def _cmd_pause(self, payload: bytes) -> None:
        self.running = bool(payload[0])

    def _cmd_live_timestamps(self, _: bytes) -> None:
        self._reply(1)

    def _cmd_hardware(self, _: bytes) -> None:
        self._reply(encode_hardware_description(self.hw))

    def _cmd_modules(self, _: bytes) -> None:
        self._module_cycles = 0
        self._get_module_info = True

    def _cmd_allocation(self, payload: bytes) -> None:
        self.allocation = list(payload)
        self._reply(1)

    def _cmd_enable(self, payload: bytes) -> None:
        self.input_enabled = list(payload)
        self._reply(1)

    def _cmd_nothing(self, _: bytes) -> None:
        """`J`, `T`, `U`, `}` (and `Q`/`q` off r2+): payload consumed, nothing attached to act on."""

    def _cmd_sync(self, payload: bytes) -> None:
        new, self.sync_mode = payload[0], payload[1]
        if new != self.sync_channel:
            if new == 255:
                if self.sync_channel < len(self.output_hw):
                    self.output_hw[self.sync_channel] = self._sync_original
                self._sync_on = False
            elif new < len(self.output_hw):
                if self.sync_channel < len(self.output_hw) and self.output_hw[self.sync_channel] == "Y":
                    self.output_hw[self.sync_channel] = self._sync_original
                self._sync_original = self.output_hw[new]
                self.output_hw[new] = "Y"
                self._sync_on = True
                self._sync_index = new
            self.sync_channel = new
        self._reply(1)

    def _cmd_override(self, payload: bytes) -> None:
        channel, value = payload[0], payload[1]
        if channel >= len(self.output_hw):
            return
        letter = self.output_hw[channel]
        if letter in "BWDV":
            self._drive(channel, 1 if value else 0)
            self.output_override[channel] = value
        elif letter == "P":
            self._drive(channel, value)
            self.output_override[channel] = 1 if value > 0 else 0

    def _cmd_read_input(self, payload: bytes) -> None:
        i = payload[0]
        level = 0
        if i < self.n_inputs and self.hw.inputs[i] not in "UXZ":
            level = int(self.world.pins[i] == self.logic_high[i])
        self._reply(level)

    def _cmd_echo_soft_code(self, payload: bytes) -> None:
        self._reply(encode_soft_code(payload[0]))

    def _cmd_virtual_input(self, payload: bytes) -> None:
        channel, level = payload[0], payload[1]
        if self.running and channel < self.n_inputs:
            self.input_state[channel] = level
            self.input_override[channel] = True

    def _cmd_soft_code(self, payload: bytes) -> None:
        self._soft_x = payload[0] if self.running else NO_EVENT

    def _cmd_state_machine(self, payload: bytes) -> None:
        """`C` header. The body is read once it has all arrived (`_loop_phase`)."""
        self._new_sma_started = True
        self._sma_confirmed = False
        self.run_asap = bool(payload[0])
        self.use_back_signal = bool(payload[1])
        n_bytes = payload[2] | payload[3] << 8
        if n_bytes < MAX_BODY_BYTES:
            self._sma_nbytes = n_bytes
            self._sma_pending = True
        else:
            logger.error("state machine of %d bytes refused (limit %d); its bytes will be read as commands",
                         n_bytes, MAX_BODY_BYTES)

    def _cmd_run(self, _: bytes) -> None:
        self._start_flag = True

    def _cmd_stop(self, _: bytes) -> None:
        self._matrix_finished = True
        self.running = False
        self._reset_outputs()

    def _cmd_flex_types(self, payload: bytes) -> None:
        if self.hw.machine_type == 4:
            self.flex_types = list(payload)
            self._reply(1)

    def _cmd_flex_query(self, _: bytes) -> None:
        if self.hw.machine_type == 4:
            self._reply(bytes(self.flex_types))

    def _cmd_flex_threshold_enable(self, payload: bytes) -> None:
        if len(payload) == 3:
            self._reply(1)

    def _cmd_flex_oversampling(self, _: bytes) -> None:
        self._reply(3)

    def _cmd_psram_test(self, _: bytes) -> None:
        self._reply(bytes([16, 1]))  # 16 MB, memory OK


_COMMANDS = {
    "6": CommandSet._cmd_handshake,
    "Z": CommandSet._cmd_disconnect,
    "F": CommandSet._cmd_firmware,
    "f": CommandSet._cmd_minor,
    "v": CommandSet._cmd_pcb,
    "{": CommandSet._cmd_app_handshake,
    "}": CommandSet._cmd_nothing,  # 223 on the analog port (r2+): not emulated
    "*": CommandSet._cmd_reset_clock,
    ":": CommandSet._cmd_ack_byte,
    "$": CommandSet._cmd_pause,
    "G": CommandSet._cmd_live_timestamps,
    "H": CommandSet._cmd_hardware,
    "M": CommandSet._cmd_modules,
    "%": CommandSet._cmd_allocation,
    "E": CommandSet._cmd_enable,
    "J": CommandSet._cmd_nothing,
    "K": CommandSet._cmd_sync,
    "O": CommandSet._cmd_override,
    "I": CommandSet._cmd_read_input,
    "S": CommandSet._cmd_echo_soft_code,
    "T": CommandSet._cmd_nothing,
    "U": CommandSet._cmd_nothing,
    "L": CommandSet._cmd_ack_byte,
    ">": CommandSet._cmd_ack_byte,
    "V": CommandSet._cmd_virtual_input,
    "~": CommandSet._cmd_soft_code,
    "C": CommandSet._cmd_state_machine,
    "R": CommandSet._cmd_run,
    "X": CommandSet._cmd_stop,
    "Q": CommandSet._cmd_flex_types,
    "q": CommandSet._cmd_flex_query,
    "^": CommandSet._cmd_ack_byte,
    "o": CommandSet._cmd_ack_byte,
    ".": CommandSet._cmd_flex_oversampling,
    "t": CommandSet._cmd_ack_byte,
    "p": CommandSet._cmd_ack_byte,
    "m": CommandSet._cmd_ack_byte,
    "e": CommandSet._cmd_flex_threshold_enable,
    "_": CommandSet._cmd_psram_test,
}
_V23_ONLY = set("fv{}:Qq^o.tpme_")
_MT4_ONLY = set("^o.tpme_")
