"""Compile a state-machine description (plain data) into the numeric `C` body for one device.

The description comes from `protocols` as a dict (`StateMachine.to_dict()`), so this module imports
nothing from there; it checks every name and number against the connected device *before* anything
is sent, and answers a wrong name with the nearest valid one. It runs once per trial, so it only does
dictionary look-ups and list appends; the slow parts (difflib, name summaries) run only on errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hardware.bpod.codec import StateMachineBody, encode_state_machine
from hardware.bpod.hardware_description import (
    VIRTUAL_OUTPUTS,
    EventTable,
    HardwareDescription,
    input_channel_names,
    output_channel_names,
    valid_names,
)
from hardware.bpod.module_info import ModuleInfo
from online.wire import did_you_mean

EXIT_STATE_NAME = "exit"
BACK_STATE = 255
NO_CHANNEL = 254
NO_EVENT = 254
_MAX_U32 = 0xFFFFFFFF
_TOP_KEYS = ("states", "global_timers", "global_counters", "conditions")
_STATE_KEYS = ("name", "timer_s", "transitions", "actions")
_TIMER_KEYS = ("number", "duration_s", "onset_delay_s", "channel", "on_value", "off_value", "loop",
               "loop_interval_s", "send_events", "onset_triggers")
_COUNTER_KEYS = ("number", "event", "threshold")
_CONDITION_KEYS = ("number", "channel", "value")
_TIMER_TRIG, _TIMER_CANCEL, _COUNTER_RESET = VIRTUAL_OUTPUTS
_TIMER_CHANNEL = re.compile(r"GlobalTimer(\d+)")
_NUMBERED = re.compile(r"(.*?)(\d+)(\D*)")


class StateMachineCompileError(ValueError):
    """The description cannot run on this device; the message names the state, the name and a fix."""


@dataclass(frozen=True)
class CompiledStateMachine:
    """The numeric body plus what is needed to read trial results back in state names."""

    body: StateMachineBody
    state_names: tuple[str, ...]
    uses_back: bool

    @property
    def n_states(self) -> int:
        return len(self.state_names)

    def state_name(self, index: int) -> str:
        """Name of a state number as the device reports it; `n_states` is the exit."""
        if 0 <= index < len(self.state_names):
            return self.state_names[index]
        if index == len(self.state_names):
            return EXIT_STATE_NAME
        n = len(self.state_names)
        raise IndexError(f"state number {index} is outside 0..{n} ({n} = exit)")

    def state_index(self, name: str) -> int:
        """State number of a name (`exit` gives `n_states`)."""
        if name in (EXIT_STATE_NAME, ">exit"):
            return len(self.state_names)
        try:
            return self.state_names.index(name)
        except ValueError:
            raise KeyError(name) from None

    def command(self, hw: HardwareDescription, *, run_asap: bool) -> bytes:
        """The whole `C` command, with the back-signal flag this machine needs."""
        return encode_state_machine(self.body, hw, run_asap=run_asap, use_back_signal=self.uses_back)


@dataclass(frozen=True)
class _Device:
    """Name look-ups for one hardware description, built once and cached."""

    outputs: dict[str, int]  # physical output name -> output index
    output_max: tuple[int, ...]  # largest value per output index
    output_choices: tuple[str, ...]  # physical and virtual output names, for messages
    channel_choices: tuple[str, ...]  # physical output names, for messages
    inputs: dict[str, int]  # input channel name -> input index
    module_port: dict[int, int]  # output index of a UART port -> its 0-based port number


def _output_max(letter: str, wide: bool) -> int:
    """Largest value an output accepts: a level for valves/BNC/wire, a byte for PWM and serial,
    a soft code below 255 (255 is the trial-end marker), a 12-bit level on FlexIO."""
    if letter in "VBW":
        return 1
    if letter in "XZ":
        return 254
    if letter == "F":
        return 4095 if wide else 255
    return 255


@lru_cache(maxsize=16)
def _device(hw: HardwareDescription, modules: tuple[ModuleInfo | None, ...] = ()) -> _Device:
    names = output_channel_names(hw, modules)
    wide = hw.machine_type >= 4
    # messages list serial (module) outputs last: they are rarely the name that was meant
    serial = [n for n, c in zip(names, hw.outputs, strict=True) if c == "U"]
    others = [n for n, c in zip(names, hw.outputs, strict=True) if c != "U"]
    return _Device(
        outputs={n: i for i, n in enumerate(names)},
        output_max=tuple(_output_max(c, wide) for c in hw.outputs),
        output_choices=(*others, *VIRTUAL_OUTPUTS, *serial),
        channel_choices=(*others, *serial),
        inputs={n: i for i, n in enumerate(input_channel_names(hw, modules))},
        module_port={i: k for k, i in enumerate(i for i, c in enumerate(hw.outputs) if c == "U")},
    )


def compile_state_machine(description: Mapping[str, Any] | Any, hw: HardwareDescription,
                          events: EventTable) -> CompiledStateMachine:
    """Turn a description (a `StateMachine.to_dict()` mapping, or an object with `to_dict()`) into
    the numeric body; raise `StateMachineCompileError` for anything the device would not run."""
    data = description if isinstance(description, Mapping) else _to_dict(description)
    if events.hw is not hw and events.hw != hw:
        raise StateMachineCompileError("the event table was built for another hardware description")
    _check_keys("state machine", data, _TOP_KEYS)
    device = _device(hw, events.modules)
    messages = _SerialMessages(hw)

    states = _list(data, "states", "state machine")
    if not states:
        raise StateMachineCompileError("the state machine has no states")
    names: list[str] = []
    for i, state in enumerate(states):
        _check_keys(f"states[{i}]", state, _STATE_KEYS)
        name = state.get("name")
        if not isinstance(name, str) or not name:
            raise StateMachineCompileError(f"states[{i}]: name must be a non-empty string, got {name!r}")
        if name in names:
            raise StateMachineCompileError(f"state {name!r} is defined twice")
        names.append(name)
    n_states = len(names)
    reserved = [n for n in names if n in (">exit", "exit", ">back", "back")]
    if reserved:
        raise StateMachineCompileError(f"state {reserved[0]!r}: this name is reserved for transitions")
    targets: dict[str, int] = {n: i for i, n in enumerate(names)}
    targets.update({">exit": n_states, "exit": n_states, ">back": BACK_STATE})

    timers = _numbered_items(data, "global_timers", _TIMER_KEYS, hw.n_global_timers)
    counters = _numbered_items(data, "global_counters", _COUNTER_KEYS, hw.n_global_counters)
    conditions = _numbered_items(data, "conditions", _CONDITION_KEYS, hw.n_conditions)
    n_gt = max(timers, default=0)
    n_gc = max(counters, default=0)
    n_cond = max(conditions, default=0)
    body = StateMachineBody.empty(n_states, n_gt, n_gc, n_cond)

    tso = events.timer_start_offset
    teo = events.timer_end_offset
    gco = events.counter_offset
    cco = events.condition_offset
    tup = events.tup_code
    uses_back = False
    for i, state in enumerate(states):
        where = f"state {names[i]!r}"
        body.state_timers[i] = _cycles(state.get("timer_s", 0.0), hw, where, "timer_s")
        transitions = _mapping(state, "transitions", where)
        rows: tuple[list[tuple[int, int]], ...] = ([], [], [], [], [])
        for event, target_name in transitions.items():
            target = targets.get(target_name) if isinstance(target_name, str) else None
            if target is None:
                raise StateMachineCompileError(
                    f"{where}: {event} -> {target_name!r}, but no state is named {target_name!r}"
                    f"{_hint(str(target_name), [*names, '>exit', '>back'])}")
            if target_name == ">back":
                uses_back = True
            code = _event_code(events, event, where)
            if code == tup:
                body.tup_targets[i] = target
            elif code < tso:
                rows[0].append((code, target))
            elif code < teo:
                rows[1].append((_used(code - tso, timers, where, event, "global timer"), target))
            elif code < gco:
                rows[2].append((_used(code - teo, timers, where, event, "global timer"), target))
            elif code < cco:
                rows[3].append((_used(code - gco, counters, where, event, "global counter"), target))
            else:
                rows[4].append((_used(code - cco, conditions, where, event, "condition"), target))
        body.input_matrix[i] = sorted(rows[0])
        body.timer_start_matrix[i] = sorted(rows[1])
        body.timer_end_matrix[i] = sorted(rows[2])
        body.counter_matrix[i] = sorted(rows[3])
        body.condition_matrix[i] = sorted(rows[4])

        outputs: list[tuple[int, int]] = []
        for action, value in _mapping(state, "actions", where).items():
            if action in (_TIMER_TRIG, _TIMER_CANCEL):
                mask = _timer_mask(value, timers, hw, where, action)
                if action == _TIMER_TRIG:
                    body.timers_trigger[i] = mask
                else:
                    body.timers_cancel[i] = mask
            elif action == _COUNTER_RESET:
                body.counter_resets[i] = _reference(value, counters, hw.n_global_counters, where, action,
                                                    "global counter")
            else:
                index = device.outputs.get(action)
                if index is None:
                    raise StateMachineCompileError(
                        f"{where}: unknown output {action!r}{_hint(str(action), device.output_choices)}")
                port = device.module_port.get(index)
                if port is not None and isinstance(value, (list, tuple, bytes)):
                    value = messages.index(port, value, where, action)
                else:
                    value = _integer(value, 0, device.output_max[index], where, action)
                    if port is not None:
                        messages.plain(port, value, where, action)
                if value:
                    outputs.append((index, value))
        outputs.sort()
        body.output_matrix[i] = outputs

    limit = min(hw.max_states, 254 if uses_back else 255)
    if n_states > limit:
        reason = " (with '>back', state number 255 means back)" if uses_back else ""
        raise StateMachineCompileError(f"the state machine has {n_states} states; this device runs at most "
                                       f"{limit}{reason}")

    _fill_timers(body, timers, hw, device)
    body.serial_message_ops = messages.library()
    _fill_counters_and_conditions(body, counters, conditions, timers, hw, events, device)
    return CompiledStateMachine(body=body, state_names=tuple(names), uses_back=uses_back)


class _SerialMessages:
    """The serial message library a machine needs, as MATLAB's implicit messages build it: each distinct
    byte string sent to a module (`HiFi1: [80, 0]`) gets the next message index from 1. Firmware 23 loads
    it with the machine (the `L` ops of the trailer; the first resets every port to message i = byte i),
    so a machine that sends single bytes to a module still carries an empty `L` op: the library a
    previous machine loaded must not change what its bytes mean."""

    def __init__(self, hw: HardwareDescription) -> None:
        self.hw = hw
        self.by_port: dict[int, dict[bytes, int]] = {}
        self.plain_values: dict[int, dict[int, str]] = {}

    def index(self, port: int, value: object, where: str, action: str) -> int:
        data = list(value) if isinstance(value, (list, tuple, bytes)) else []
        if not data or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255
                                for b in data):
            raise StateMachineCompileError(
                f"{where}: {action} must be a byte (a message index) or a list of 1 to "
                f"{self.hw.serial_message_max_bytes} bytes (0 to 255), got {value!r}")
        if len(data) > self.hw.serial_message_max_bytes:
            raise StateMachineCompileError(
                f"{where}: {action} = {data} is {len(data)} bytes; this device sends serial messages of at "
                f"most {self.hw.serial_message_max_bytes} bytes")
        if self.hw.firmware_major < 23:
            raise StateMachineCompileError(
                f"{where}: {action} = {data} needs a serial message library, which firmware 22 cannot load "
                "with the state machine; use firmware 23, or send one byte")
        library = self.by_port.setdefault(port, {})
        message = bytes(data)
        if message not in library:
            library[message] = len(library) + 1
        return library[message]

    def plain(self, port: int, value: int, where: str, action: str) -> None:
        if value:
            self.plain_values.setdefault(port, {}).setdefault(value, where)
        self.by_port.setdefault(port, {})

    def library(self) -> list[tuple[int, list[tuple[int, bytes]]]]:
        if self.hw.firmware_major < 23:
            return []
        ops = []
        for port, library in sorted(self.by_port.items()):
            for value, where in self.plain_values.get(port, {}).items():
                if value <= len(library):
                    raise StateMachineCompileError(
                        f"{where}: the single byte {value} to module port {port + 1} would send serial "
                        f"message {value}, which this machine defines as "
                        f"{list(next(m for m, i in library.items() if i == value))}; send it as a list "
                        f"([{value}]) instead")
            ops.append((port, [(i, m) for m, i in library.items()]))
        return ops


def _fill_timers(body: StateMachineBody, timers: Mapping[int, Mapping[str, Any]], hw: HardwareDescription,
                 device: _Device) -> None:
    """Per-timer fields; a timer without a channel sends on/off values of 0 (they would drive nothing)."""
    for number, timer in timers.items():
        t = number - 1
        where = f"global timer {number}"
        body.timer_durations[t] = _cycles(timer.get("duration_s"), hw, where, "duration_s")
        body.timer_onset_delays[t] = _cycles(timer.get("onset_delay_s", 0.0), hw, where, "onset_delay_s")
        body.timer_loop_intervals[t] = _cycles(timer.get("loop_interval_s", 0.0), hw, where,
                                               "loop_interval_s")
        body.timer_loop_modes[t] = _integer(timer.get("loop", 0), 0, 255, where, "loop")
        send = timer.get("send_events", True)
        if not isinstance(send, (bool, int)) or send not in (0, 1):
            raise StateMachineCompileError(f"{where}: send_events must be True or False, got {send!r}")
        body.timer_send_events[t] = int(send)
        body.timer_onset_triggers[t] = _timer_mask(timer.get("onset_triggers", []), timers, hw, where,
                                                   "onset trigger", allow_empty=True)
        channel = timer.get("channel")
        if channel is not None:
            index = device.outputs.get(channel) if isinstance(channel, str) else None
            if index is None:
                raise StateMachineCompileError(
                    f"{where}: unknown output channel {channel!r}"
                    f"{_hint(str(channel), device.channel_choices)}")
            body.timer_channels[t] = index
            high = device.output_max[index]
            on, off = timer.get("on_value", 1), timer.get("off_value", 0)
            body.timer_on_values[t] = _integer(on, 0, high, where, f"on_value for {channel}")
            body.timer_off_values[t] = _integer(off, 0, high, where, f"off_value for {channel}")


def _fill_counters_and_conditions(body: StateMachineBody, counters: Mapping[int, Mapping[str, Any]],
                                  conditions: Mapping[int, Mapping[str, Any]],
                                  timers: Mapping[int, Mapping[str, Any]], hw: HardwareDescription,
                                  events: EventTable, device: _Device) -> None:
    """The event each counter counts and its threshold; each condition's channel and level."""
    for number, counter in counters.items():
        where = f"global counter {number}"
        event = counter.get("event")
        body.counter_events[number - 1] = NO_EVENT if event is None else _event_code(events, event, where)
        threshold = counter.get("threshold")
        body.counter_thresholds[number - 1] = _integer(threshold, 0, _MAX_U32, where, "threshold")

    for number, condition in conditions.items():
        where = f"condition {number}"
        channel = condition.get("channel")
        body.condition_channels[number - 1] = _condition_channel(channel, device, hw, timers, where)
        body.condition_values[number - 1] = _integer(condition.get("value"), 0, 1, where, "value")


# -- look-ups that raise with a teaching message ----------------------------------------------------


def _to_dict(description: Any) -> Mapping[str, Any]:
    to_dict = getattr(description, "to_dict", None)
    if not callable(to_dict):
        raise StateMachineCompileError(
            f"expected a state-machine description (a mapping or an object with to_dict()), got "
            f"{type(description).__name__}")
    data = to_dict()
    if not isinstance(data, Mapping):
        raise StateMachineCompileError(f"to_dict() returned {type(data).__name__}, not a mapping")
    return data


def _event_code(events: EventTable, event: object, where: str) -> int:
    try:
        return events.code(event)  # type: ignore[arg-type]
    except (KeyError, TypeError):
        pass
    raise StateMachineCompileError(
        f"{where}: unknown event {event!r}{_hint(str(event), _event_choices(events))}")


def _event_choices(events: EventTable) -> list[str]:
    """Valid event names for messages, the serial-module block last (rarely what was meant)."""
    split = events.digital_offset
    return valid_names([*events.names[split:], *events.names[:split]])


def _used(index: int, configured: Mapping[int, Any], where: str, event: str, kind: str) -> int:
    """The 0-based index of a timer/counter/condition event, which must have been set."""
    if index + 1 not in configured:
        raise StateMachineCompileError(
            f"{where}: event {event!r} names {kind} {index + 1}, which is not set{_set_list(configured)}")
    return index


def _reference(value: object, configured: Mapping[int, Any], device_count: int, where: str, what: str,
               kind: str) -> int:
    """A 1-based timer/counter number given as an action value."""
    number = _integer(value, 1, device_count, where, f"{what} ({kind} numbers)")
    if number not in configured:
        raise StateMachineCompileError(
            f"{where}: {what} {number} names {kind} {number}, which is not set{_set_list(configured)}")
    return number


def _timer_mask(value: object, timers: Mapping[int, Any], hw: HardwareDescription, where: str, what: str,
                allow_empty: bool = False) -> int:
    numbers = list(value) if isinstance(value, (list, tuple)) else [value]
    if not numbers and not allow_empty:
        raise StateMachineCompileError(f"{where}: {what} needs at least one global timer number")
    mask = 0
    for n in numbers:
        mask |= 1 << (_reference(n, timers, hw.n_global_timers, where, what, "global timer") - 1)
    return mask


def _condition_channel(channel: object, device: _Device, hw: HardwareDescription, timers: Mapping[int, Any],
                       where: str) -> int:
    """Input index of a channel name, or nInputs + t for the level of global timer t+1."""
    if isinstance(channel, str):
        if channel in device.inputs:
            return device.inputs[channel]
        match = _TIMER_CHANNEL.fullmatch(channel)
        if match:
            number = _reference(int(match[1]), timers, hw.n_global_timers, where, "channel", "global timer")
            return len(hw.inputs) + number - 1
    inputs = sorted(device.inputs, key=lambda n: n.startswith("Serial"))  # module ports last
    choices = [*inputs, *(f"GlobalTimer{t}" for t in sorted(timers))]
    raise StateMachineCompileError(
        f"{where}: unknown input channel {channel!r}{_hint(str(channel), choices)}")


def _integer(value: object, low: int, high: int, where: str, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not low <= value <= high:
        raise StateMachineCompileError(
            f"{where}: {what} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def _cycles(seconds: object, hw: HardwareDescription, where: str, what: str) -> int:
    """Seconds to device cycles, rounded to the nearest cycle (truncating would turn 0.57 s into 5699)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds < 0:
        raise StateMachineCompileError(
            f"{where}: {what} must be a finite number of seconds >= 0, got {seconds!r}")
    cycles = round(seconds * 1e6 / hw.cycle_us)
    if cycles > _MAX_U32:
        raise StateMachineCompileError(f"{where}: {what} = {seconds} s is longer than the device can time")
    return cycles


# -- shape of the description -----------------------------------------------------------------------


def _check_keys(where: str, data: object, allowed: Sequence[str]) -> None:
    if not isinstance(data, Mapping):
        raise StateMachineCompileError(f"{where} must be a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise StateMachineCompileError(f"{where}: unknown key {key!r}{_hint(str(key), allowed)}")


def _list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, (list, tuple)):
        raise StateMachineCompileError(f"{where}: {key} must be a list, got {type(value).__name__}")
    return list(value)


def _mapping(state: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = state.get(key) or {}
    if not isinstance(value, Mapping):
        raise StateMachineCompileError(f"{where}: {key} must be a mapping, got {type(value).__name__}")
    return value


def _numbered_items(data: Mapping[str, Any], key: str, allowed: Sequence[str],
                    device_count: int) -> dict[int, Mapping[str, Any]]:
    """Timers/counters/conditions by their 1-based number, each within the device's count."""
    items: dict[int, Mapping[str, Any]] = {}
    for j, item in enumerate(_list(data, key, "state machine")):
        _check_keys(f"{key}[{j}]", item, allowed)
        number = item.get("number")
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise StateMachineCompileError(f"{key}[{j}]: number must be an integer >= 1, got {number!r}")
        if number > device_count:
            raise StateMachineCompileError(
                f"{key}[{j}]: number {number} is beyond this device's {device_count} {key.replace('_', ' ')} "
                f"(numbers 1..{device_count})")
        if number in items:
            raise StateMachineCompileError(f"{key}[{j}]: number {number} is set twice")
        items[number] = item
    return items


# -- messages ---------------------------------------------------------------------------------------


def _set_list(configured: Mapping[int, Any]) -> str:
    return f" (set: {', '.join(str(n) for n in sorted(configured))})" if configured else " (none is set)"


def _hint(name: str, choices: Sequence[str]) -> str:
    """'; did you mean X? (valid: A1..A4, B1..B2, ...)', with the groups most like `name` first."""
    hint = did_you_mean(name, choices, cutoff=0.5)
    suggestion = f"; {hint}" if hint else ""
    return f"{suggestion} (valid: {summarise_names(choices, like=name)})"


def summarise_names(names: Sequence[str], like: str = "", limit: int = 6) -> str:
    """A short list of names with numbered runs folded (`Port1In..Port4In`), those resembling `like` first."""
    groups: dict[tuple[str, str], list[int]] = {}  # (prefix, suffix) -> numbers; unnumbered: (name, "") -> []
    for name in names:
        match = _NUMBERED.fullmatch(name)
        if match:
            groups.setdefault((match[1], match[3]), []).append(int(match[2]))
        else:
            groups.setdefault((name, ""), [])
    stem = like[:4]
    shown = sorted(groups, key=lambda key: not (stem and key[0].startswith(stem)))
    parts = []
    for prefix, suffix in shown[:limit]:
        numbers = groups[(prefix, suffix)]
        if not numbers:
            parts.append(prefix)
        elif len(numbers) == 1:
            parts.append(f"{prefix}{numbers[0]}{suffix}")
        else:
            parts.append(f"{prefix}{min(numbers)}{suffix}..{prefix}{max(numbers)}{suffix}")
    return ", ".join(parts) + (", ..." if len(shown) > limit else "")

