"""State entry and the output lines: `setStateOutputs`, `setGlobalTimerChannel`,
`resetOutputs` and the sync line, as the firmware writes them.

A mixin of `Firmware` (state lives there). Every physical write is reported to the `World`;
level channels report changes, message channels (SoftCode, APP_SoftCode, modules) every byte.
An output that a running global timer owns, or that the host overrode with `O`, is skipped by
state entry until it is released.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hardware.bpod.codec import encode_soft_code

if TYPE_CHECKING:
    from hardware.bpod.emulator.engine import Firmware


class OutputStage:
    """State entry and output-channel writes; state lives on the `Firmware` instance."""

    def _set_state_outputs(self: Firmware, state: int) -> None:
        """State entry: cancel timers, trigger timers, write every output, reset a counter."""
        m, now, events = self.machine, self.current_time, self.events
        cancel = m.cancel_mask(state)
        if cancel:
            self.timers.cancel_mask(cancel, events)
        trigger = m.trigger_mask(state)
        if trigger:
            self.timers.trigger_mask(trigger, now, events)
        row = m.output_row(state)
        for i, letter in enumerate(self.output_hw):
            value = row.get(i, 0)
            if letter == "U":
                if value > 0:
                    self._message(i, value)  # serial message `value` to that module (none attached)
            elif letter == "X":
                if value > 0:
                    self._main_out += encode_soft_code(value & 0xFF)
                    self._message(i, value)
            elif letter == "Z":
                if value > 0 and self.hw.machine_type > 2:
                    self._app_out.append(value & 0xFF)
                    self._message(i, value)
            elif letter in "BWDV":
                if self.output_override[i] == 0:
                    self._drive(i, 1 if value else 0)
            elif letter == "P":
                if self.output_override[i] == 0:
                    self._drive(i, value & 0xFF)
            elif letter == "F":
                self._drive_flex(i, value, value)
        reset = m.counter_reset(state)
        if 0 < reset <= self.hw.n_global_counters:
            self.counter_counts[reset - 1] = 0
            self.counter_handled[reset - 1] = False
        self._meaningful_tup = m.tup_target(state) != state

    def _set_timer_channel(self, t: int, op: int) -> None:
        """`setGlobalTimerChannel`: drive timer t's channel on (1) or off (0); while on, the
        channel is locked against state outputs. Channel 254/255 means none."""
        m = self.machine
        channel = m.timer_channels[t] if t < m.n_timers else 255
        message = (m.timer_on_values[t] if op else m.timer_off_values[t]) if t < m.n_timers else 0
        if channel < len(self.output_hw):
            letter = self.output_hw[channel]
            if letter == "U":
                if message < 254:
                    self._message(channel, message)
            elif letter == "X":
                self._main_out += encode_soft_code(message & 0xFF)
                self._message(channel, message)
            elif letter == "Z":
                if self.hw.machine_type > 2:
                    self._app_out.append(message & 0xFF)
                    self._message(channel, message)
            elif letter in "BWDV":
                self._drive(channel, op)
                self.output_override[channel] = op
            elif letter == "P":
                self._drive(channel, (m.timer_on_values[t] & 0xFF) if op else 0)
                self.output_override[channel] = op
            elif letter == "F":
                self._drive_flex(channel, op, message)
                self.output_override[channel] = op
        self.input_state[self.n_inputs + t] = op

    def _reset_outputs(self) -> None:
        """`resetOutputs`: every line low, overrides released, timers and counters cleared."""
        for i, letter in enumerate(self.output_hw):
            if letter in "BWVP":
                self._drive(i, 0)
                self.output_override[i] = 0
            elif letter == "F":
                self._drive_flex(i, 0, 0)
        self.timers.reset()
        for x in range(self.hw.n_global_counters):
            self.counter_counts[x] = 0
            self.counter_handled[x] = False
        self._meaningful_tup = False

    def _drive(self, index: int, value: int) -> None:
        self.world.output_changed(self.cycle, index, value)

    def _message(self, index: int, value: int) -> None:
        self.world.output_changed(self.cycle, index, value, message=True)

    def _drive_flex(self, index: int, digital: int, analog: int) -> None:
        """Flex channels (r2+) output only when configured as digital (1) or analog (3) out."""
        k = self.hw.outputs[:index].count("F")
        if k < self.n_flex and self.flex_types[k] == 1:
            self._drive(index, 1 if digital else 0)
        elif k < self.n_flex and self.flex_types[k] == 3:
            self._drive(index, analog)

    def _sync_write(self) -> None:
        if self._sync_on and self._sync_index is not None:
            self._sync_state ^= 1
            level = self._sync_state * 255 if self._sync_original == "P" else self._sync_state
            self._drive(self._sync_index, level)

    def _reset_sync_line(self) -> None:
        self._sync_state = 0
        if self._sync_index is not None:
            self._drive(self._sync_index, 0)
