"""The Bpod byte codec: state-machine payloads (`C`), the version replies and the device-to-host
trial stream.

Pure functions and a small incremental parser, shared by the client and the emulator so that
the emulator is the client's exact inverse. Layouts follow the firmware (spec sections 3 and 4).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hardware.bpod.hardware_description import TRIAL_END_CODE, HardwareDescription

Pairs = list[tuple[int, int]]
MAX_BODY_BYTES = 50_000
OP_EVENTS = 0x01
OP_SOFT_CODE = 0x02
STATE_MACHINE_OP = b"C"
CONFIRMED = 1  # `startSM`'s byte after a new state machine: 1 loaded, 0 refused
_FIRMWARE_VERSION = struct.Struct("<HH")  # `F`: major, machine type
_FIRMWARE_MINOR = struct.Struct("<H")  # `f` (v23)
_START_TIME = struct.Struct("<Q")  # trial start, session microseconds


class CodecError(ValueError):
    """Bytes that do not decode as the layout requires."""


@dataclass
class StateMachineBody:
    """The numeric state machine, field for field as in the `C` body (states are indices,
    nS means exit, 255 means back)."""

    n_states: int
    n_global_timers: int = 0
    n_global_counters: int = 0
    n_conditions: int = 0
    tup_targets: list[int] = field(default_factory=list)
    input_matrix: list[Pairs] = field(default_factory=list)
    output_matrix: list[Pairs] = field(default_factory=list)
    timer_start_matrix: list[Pairs] = field(default_factory=list)
    timer_end_matrix: list[Pairs] = field(default_factory=list)
    counter_matrix: list[Pairs] = field(default_factory=list)
    condition_matrix: list[Pairs] = field(default_factory=list)
    timer_channels: list[int] = field(default_factory=list)
    timer_on_values: list[int] = field(default_factory=list)
    timer_off_values: list[int] = field(default_factory=list)
    timer_loop_modes: list[int] = field(default_factory=list)
    timer_send_events: list[int] = field(default_factory=list)
    counter_events: list[int] = field(default_factory=list)
    condition_channels: list[int] = field(default_factory=list)
    condition_values: list[int] = field(default_factory=list)
    counter_resets: list[int] = field(default_factory=list)  # per state: counter index + 1, 0 = none
    timers_trigger: list[int] = field(default_factory=list)  # per state bitmask
    timers_cancel: list[int] = field(default_factory=list)  # per state bitmask
    timer_onset_triggers: list[int] = field(default_factory=list)  # per timer bitmask
    state_timers: list[int] = field(default_factory=list)  # cycles
    timer_durations: list[int] = field(default_factory=list)  # cycles
    timer_onset_delays: list[int] = field(default_factory=list)
    timer_loop_intervals: list[int] = field(default_factory=list)
    counter_thresholds: list[int] = field(default_factory=list)
    analog_thresh_enable: Pairs = field(default_factory=list)  # MT4: (state, channel bitmask)
    analog_thresh_disable: Pairs = field(default_factory=list)
    serial_message_ops: list[tuple[int, list[tuple[int, bytes]]]] = field(default_factory=list)  # v23 trailer

    @classmethod
    def empty(
        cls, n_states: int, n_timers: int = 0, n_counters: int = 0, n_conditions: int = 0
    ) -> StateMachineBody:
        """A body with every per-state and per-item list sized and neutral (states stay put)."""
        return cls(
            n_states=n_states,
            n_global_timers=n_timers,
            n_global_counters=n_counters,
            n_conditions=n_conditions,
            tup_targets=list(range(n_states)),
            input_matrix=[[] for _ in range(n_states)],
            output_matrix=[[] for _ in range(n_states)],
            timer_start_matrix=[[] for _ in range(n_states)],
            timer_end_matrix=[[] for _ in range(n_states)],
            counter_matrix=[[] for _ in range(n_states)],
            condition_matrix=[[] for _ in range(n_states)],
            timer_channels=[254] * n_timers,
            timer_on_values=[0] * n_timers,
            timer_off_values=[0] * n_timers,
            timer_loop_modes=[0] * n_timers,
            timer_send_events=[1] * n_timers,
            counter_events=[254] * n_counters,
            condition_channels=[0] * n_conditions,
            condition_values=[0] * n_conditions,
            counter_resets=[0] * n_states,
            timers_trigger=[0] * n_states,
            timers_cancel=[0] * n_states,
            timer_onset_triggers=[0] * n_timers,
            state_timers=[0] * n_states,
            timer_durations=[0] * n_timers,
            timer_onset_delays=[0] * n_timers,
            timer_loop_intervals=[0] * n_timers,
            counter_thresholds=[0] * n_counters,
        )


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, *values: int) -> None:
        for v in values:
            if not 0 <= v <= 0xFF:
                raise CodecError(f"value {v} does not fit in one byte")
        self.parts.append(bytes(values))

    def u8s(self, values: list[int]) -> None:
        self.u8(*values)

    def uint(self, fmt: str, values: list[int]) -> None:
        try:
            self.parts.append(struct.pack(f"<{len(values)}{fmt}", *values))
        except struct.error as exc:
            raise CodecError(f"value out of range for '{fmt}': {values}") from exc

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CodecError(
                f"state machine body truncated: needed {n} bytes at offset {self.pos} of {len(self.data)}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u8s(self, n: int) -> list[int]:
        return list(self.take(n))

    def uint(self, fmt: str, n: int) -> list[int]:
        size = struct.calcsize(f"<{fmt}")
        return list(struct.unpack(f"<{n}{fmt}", self.take(n * size)))


def _mask_format(hw: HardwareDescription) -> str:
    return {1: "B", 2: "H", 4: "I"}[hw.timer_mask_bytes]


def _check_lengths(body: StateMachineBody) -> None:
    per_state = {
        "tup_targets": body.tup_targets,
        "input_matrix": body.input_matrix,
        "output_matrix": body.output_matrix,
        "timer_start_matrix": body.timer_start_matrix,
        "timer_end_matrix": body.timer_end_matrix,
        "counter_matrix": body.counter_matrix,
        "condition_matrix": body.condition_matrix,
        "counter_resets": body.counter_resets,
        "timers_trigger": body.timers_trigger,
        "timers_cancel": body.timers_cancel,
        "state_timers": body.state_timers,
    }
    per_timer = {
        "timer_channels": body.timer_channels,
        "timer_on_values": body.timer_on_values,
        "timer_off_values": body.timer_off_values,
        "timer_loop_modes": body.timer_loop_modes,
        "timer_send_events": body.timer_send_events,
        "timer_onset_triggers": body.timer_onset_triggers,
        "timer_durations": body.timer_durations,
        "timer_onset_delays": body.timer_onset_delays,
        "timer_loop_intervals": body.timer_loop_intervals,
    }
    per_counter = {"counter_events": body.counter_events, "counter_thresholds": body.counter_thresholds}
    per_condition = {"condition_channels": body.condition_channels, "condition_values": body.condition_values}
    for group, expected in (
        (per_state, body.n_states),
        (per_timer, body.n_global_timers),
        (per_counter, body.n_global_counters),
        (per_condition, body.n_conditions),
    ):
        for name, values in group.items():
            if len(values) != expected:
                raise CodecError(f"{name} has {len(values)} entries, expected {expected}")


def encode_state_machine_body(body: StateMachineBody, hw: HardwareDescription) -> bytes:
    """The `C` body for this device's firmware and machine type."""
    _check_lengths(body)
    wide = hw.machine_type >= 4
    w = _Writer()
    w.u8(body.n_states, body.n_global_timers, body.n_global_counters, body.n_conditions)
    w.u8s(body.tup_targets)
    for matrix in (
        body.input_matrix,
        body.output_matrix,
        body.timer_start_matrix,
        body.timer_end_matrix,
        body.counter_matrix,
        body.condition_matrix,
    ):
        for row in matrix:
            if wide and matrix is body.output_matrix:
                w.uint("H", [len(row)] + [v for pair in row for v in pair])
            else:
                w.u8(len(row))
                for a, b in row:
                    w.u8(a, b)
    if body.n_global_timers:
        w.u8s(body.timer_channels)
        if wide:
            w.uint("H", body.timer_on_values)
            w.uint("H", body.timer_off_values)
        else:
            w.u8s(body.timer_on_values)
            w.u8s(body.timer_off_values)
        w.u8s(body.timer_loop_modes)
        w.u8s(body.timer_send_events)
    if body.n_global_counters:
        w.u8s(body.counter_events)
    if body.n_conditions:
        w.u8s(body.condition_channels)
        w.u8s(body.condition_values)
    if hw.firmware_major >= 23:
        resets = [(s, r) for s, r in enumerate(body.counter_resets) if r]
        w.u8(len(resets))
        for s, r in resets:
            w.u8(s, r)
    else:
        w.u8s(body.counter_resets)
    if wide:
        for pairs in (body.analog_thresh_enable, body.analog_thresh_disable):
            w.u8(len(pairs))
            for a, b in pairs:
                w.u8(a, b)
    mask = _mask_format(hw)
    w.uint(mask, body.timers_trigger)
    w.uint(mask, body.timers_cancel)
    w.uint(mask, body.timer_onset_triggers)
    w.uint("I", body.state_timers)
    if body.n_global_timers:
        w.uint("I", body.timer_durations)
        w.uint("I", body.timer_onset_delays)
        w.uint("I", body.timer_loop_intervals)
    if body.n_global_counters:
        w.uint("I", body.counter_thresholds)
    if hw.firmware_major >= 23:
        for module, messages in body.serial_message_ops:
            w.u8(1, ord("L"), module, len(messages))
            for idx, message in messages:
                w.u8(idx, len(message))
                w.parts.append(bytes(message))
        w.u8(0)
    return w.getvalue()


def encode_state_machine(
    body: StateMachineBody, hw: HardwareDescription, *, run_asap: bool, use_back_signal: bool = True
) -> bytes:
    """The whole `C` command: op, flags, length and body."""
    payload = encode_state_machine_body(body, hw)
    if len(payload) >= MAX_BODY_BYTES:
        raise CodecError(
            f"state machine body is {len(payload)} bytes; the device accepts fewer than {MAX_BODY_BYTES}"
        )
    return STATE_MACHINE_OP + struct.pack("<BBH", int(run_asap), int(use_back_signal), len(payload)) + payload


def _read_pairs(r: _Reader, wide: bool = False) -> Pairs:
    if wide:
        (count,) = r.uint("H", 1)
        flat = r.uint("H", 2 * count)
    else:
        count = r.u8()
        flat = r.u8s(2 * count)
    return list(zip(flat[0::2], flat[1::2], strict=True))


def decode_state_machine_body(
    data: bytes, hw: HardwareDescription, *, strict: bool = True
) -> StateMachineBody:
    """Parse a `C` body. Strict (the codec's own check): every byte used, nothing the encoder would not
    write. With strict=False, what the firmware's `loadStateMatrix` loads: it never checks the length
    (bytes after the body are ignored), skips trailer ops it does not know, takes a machine of no states
    and writes counter resets of states the machine does not have into rows it never reads. Only a body
    too short for its own counts is refused (the firmware would read stale bytes of its buffer)."""
    wide = hw.machine_type >= 4
    r = _Reader(data)
    n_states, n_gt, n_gc, n_cond = r.u8s(4)
    if n_states == 0 and strict:
        raise CodecError("state machine has no states")
    body = StateMachineBody(
        n_states=n_states, n_global_timers=n_gt, n_global_counters=n_gc, n_conditions=n_cond
    )
    body.tup_targets = r.u8s(n_states)
    body.input_matrix = [_read_pairs(r) for _ in range(n_states)]
    body.output_matrix = [_read_pairs(r, wide) for _ in range(n_states)]
    body.timer_start_matrix = [_read_pairs(r) for _ in range(n_states)]
    body.timer_end_matrix = [_read_pairs(r) for _ in range(n_states)]
    body.counter_matrix = [_read_pairs(r) for _ in range(n_states)]
    body.condition_matrix = [_read_pairs(r) for _ in range(n_states)]
    if n_gt:
        body.timer_channels = r.u8s(n_gt)
        if wide:
            body.timer_on_values = r.uint("H", n_gt)
            body.timer_off_values = r.uint("H", n_gt)
        else:
            body.timer_on_values = r.u8s(n_gt)
            body.timer_off_values = r.u8s(n_gt)
        body.timer_loop_modes = r.u8s(n_gt)
        body.timer_send_events = r.u8s(n_gt)
    if n_gc:
        body.counter_events = r.u8s(n_gc)
    if n_cond:
        body.condition_channels = r.u8s(n_cond)
        body.condition_values = r.u8s(n_cond)
    if hw.firmware_major >= 23:
        body.counter_resets = [0] * n_states
        for state, counter in _read_pairs(r):
            if state < n_states:
                body.counter_resets[state] = counter
            elif strict:
                raise CodecError(f"counter reset names state {state}, the machine has {n_states}")
    else:
        body.counter_resets = r.u8s(n_states)
    if wide:
        body.analog_thresh_enable = _read_pairs(r)
        body.analog_thresh_disable = _read_pairs(r)
    mask = _mask_format(hw)
    body.timers_trigger = r.uint(mask, n_states)
    body.timers_cancel = r.uint(mask, n_states)
    body.timer_onset_triggers = r.uint(mask, n_gt)
    body.state_timers = r.uint("I", n_states)
    if n_gt:
        body.timer_durations = r.uint("I", n_gt)
        body.timer_onset_delays = r.uint("I", n_gt)
        body.timer_loop_intervals = r.uint("I", n_gt)
    if n_gc:
        body.counter_thresholds = r.uint("I", n_gc)
    if hw.firmware_major >= 23:
        while r.u8():
            op = r.u8()
            if op != ord("L"):
                if strict:
                    raise CodecError(f"unknown additional op {op!r} in the state machine trailer")
                continue  # the firmware's switch has no case for it: on to the next flag
            module, n_messages = r.u8(), r.u8()
            messages = []
            for _ in range(n_messages):
                idx, length = r.u8(), r.u8()
                messages.append((idx, r.take(length)))
            body.serial_message_ops.append((module, messages))
    if strict and r.pos != len(data):
        raise CodecError(f"{len(data) - r.pos} bytes left over after the state machine body")
    return body


# ----------------------------------------------------------------------------------------------
# Version replies (`F`, `f`)


def encode_firmware_version(major: int, machine_type: int) -> bytes:
    return _FIRMWARE_VERSION.pack(major, machine_type)


def decode_firmware_version(data: bytes) -> tuple[int, int]:
    """`F`'s reply: (firmware major version, machine type)."""
    major, machine_type = _FIRMWARE_VERSION.unpack(data)
    return major, machine_type


def encode_firmware_minor(minor: int) -> bytes:
    return _FIRMWARE_MINOR.pack(minor)


def decode_firmware_minor(data: bytes) -> int:
    (minor,) = _FIRMWARE_MINOR.unpack(data)
    return minor


# ----------------------------------------------------------------------------------------------
# Device-to-host trial stream


@dataclass(frozen=True)
class TrialStarted:
    start_us: int
    confirmed: bool | None  # None when no new state machine preceded this start


@dataclass(frozen=True)
class EventsReceived:
    codes: tuple[int, ...]
    cycle: int  # cycles since trial start


@dataclass(frozen=True)
class SoftCodeReceived:
    code: int


@dataclass(frozen=True)
class TrialEnded:
    cycle: int  # CurrentTime of the exit packet
    n_cycles: int  # nCyclesCompleted
    end_us: int


StreamMessage = TrialStarted | EventsReceived | SoftCodeReceived | TrialEnded
TRIAL_END_RECORD_SIZE = 19


def encode_confirmation(loaded: bool) -> bytes:
    """The byte `startSM` sends first when a new state machine starts: was it loaded?"""
    return bytes([CONFIRMED if loaded else 0])


def encode_trial_start_time(start_us: int) -> bytes:
    """The start timestamp the first cycle of a trial sends."""
    return _START_TIME.pack(start_us)


def encode_events(codes: list[int] | tuple[int, ...], cycle: int) -> bytes:
    return bytes([OP_EVENTS, len(codes), *codes]) + struct.pack("<I", cycle & 0xFFFFFFFF)


def encode_soft_code(code: int) -> bytes:
    return bytes([OP_SOFT_CODE, code])


def encode_trial_end(cycle: int, n_cycles: int, end_us: int) -> bytes:
    return bytes([OP_EVENTS, 1, TRIAL_END_CODE]) + struct.pack(
        "<IIQ", cycle & 0xFFFFFFFF, n_cycles & 0xFFFFFFFF, end_us
    )


class TrialStreamParser:
    """Incremental parser of what the device sends once trials run.

    Whether a trial start carries the confirmation byte depends on what the host sent, so the
    host calls `state_machine_sent()` before each `C` it sends with RunASAP (one start each; a
    counter, because the host may queue the next `C` before the reader has parsed the current
    start), and the parser leaves unparsed bytes buffered until it has a whole message.
    Leftover bytes after a trial end (the next queued trial's start) stay buffered across trials."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._in_trial = False
        self._starts_with_confirmation = 0

    @property
    def in_trial(self) -> bool:
        return self._in_trial

    def state_machine_sent(self) -> None:
        self._starts_with_confirmation += 1

    def expect_idle_end_record(self) -> None:
        """An `X` while idle makes the device send an end record outside any trial."""
        self._in_trial = True

    def feed(self, data: bytes) -> list[StreamMessage]:
        self._buffer += data
        messages: list[StreamMessage] = []
        while True:
            message = self._next()
            if message is None:
                return messages
            messages.append(message)

    def _next(self) -> StreamMessage | None:
        buf = self._buffer
        if not self._in_trial:
            confirming = self._starts_with_confirmation > 0
            need = 9 if confirming else 8
            if len(buf) < need:
                return None
            confirmed = None
            if confirming:
                confirmed = buf[0] == CONFIRMED
                self._starts_with_confirmation -= 1
            (start_us,) = _START_TIME.unpack_from(buf, need - _START_TIME.size)
            del buf[:need]
            self._in_trial = True
            return TrialStarted(start_us, confirmed)
        if not buf:
            return None
        op = buf[0]
        if op == OP_SOFT_CODE:
            if len(buf) < 2:
                return None
            code = buf[1]
            del buf[:2]
            return SoftCodeReceived(code)
        if op != OP_EVENTS:
            bad = bytes(buf[:16])
            buf.clear()
            raise CodecError(f"unexpected op code 0x{op:02x} in the trial stream (next bytes {bad.hex(' ')})")
        if len(buf) < 2:
            return None
        n = buf[1]
        if len(buf) < 2 + n + 4:
            return None
        codes = tuple(buf[2 : 2 + n])
        (cycle,) = struct.unpack_from("<I", buf, 2 + n)
        if TRIAL_END_CODE in codes:
            if len(buf) < 2 + n + 16:
                return None
            n_cycles, end_us = struct.unpack_from("<IQ", buf, 2 + n + 4)
            del buf[: 2 + n + 16]
            self._in_trial = False
            return TrialEnded(cycle, n_cycles, end_us)
        del buf[: 2 + n + 4]
        return EventsReceived(codes, cycle)
