"""A Bpod state machine written in Bpod's own words, kept as plain data.

Task code builds a `StateMachine` the way a MATLAB or pybpod protocol reads (`add_state` with a timer,
transitions and output actions; global timers, counters and conditions numbered from 1), and hands it
to the rig as `to_dict()`. Nothing here knows which Bpod is connected: names of events and outputs are
checked against the device by the compiler in `hardware/bpod/compiler.py`. What *can* be checked
without the device (duplicate states, a transition to a state that does not exist, a negative
duration, a timer that is triggered but never set) is checked here by `validate()`, so a mistake is
reported where the task was written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from online.wire import did_you_mean

EXIT = ">exit"
BACK = ">back"
MAX_STATES = 255  # state numbers are bytes and the exit state is numbered n_states
TIMER_ACTIONS = ("GlobalTimerTrig", "GlobalTimerCancel")
COUNTER_ACTION = "GlobalCounterReset"
_RESERVED_NAMES = (EXIT, BACK, "exit", "back")
_TIMER_EVENT = re.compile(r"GlobalTimer(\d+)_(?:Start|End)")
_COUNTER_EVENT = re.compile(r"GlobalCounter(\d+)_End")
_CONDITION_EVENT = re.compile(r"Condition(\d+)")
_TIMER_CHANNEL = re.compile(r"GlobalTimer(\d+)")

ActionValue = int | list[int]


def input_event(line: str) -> str:
    """The event an input line raises when it goes high: Port1 -> Port1In, BNC1 -> BNC1High."""
    return f"{line}In" if line.startswith("Port") else f"{line}High"


class StateMachineError(ValueError):
    """The state machine is malformed whatever device runs it."""


@dataclass
class State:
    """One state: how long its timer runs (`Tup` when it elapses), where events lead, what it outputs."""

    name: str
    timer_s: float = 0.0
    transitions: dict[str, str] = field(default_factory=dict)
    actions: dict[str, ActionValue] = field(default_factory=dict)


@dataclass
class GlobalTimer:
    """A timer that outlives states: started by `GlobalTimerTrig`, optionally driving an output channel."""

    number: int
    duration_s: float
    onset_delay_s: float = 0.0
    channel: str | None = None
    on_value: int = 1
    off_value: int = 0
    loop: int = 0  # 0 one-shot, 1 loop until cancelled, n > 1 n repetitions
    loop_interval_s: float = 0.0
    send_events: bool = True
    onset_triggers: list[int] = field(default_factory=list)  # timers started when this one turns on


@dataclass
class GlobalCounter:
    """Counts one event across states; `GlobalCounter{n}_End` fires at the threshold."""

    number: int
    event: str
    threshold: int


@dataclass
class Condition:
    """True while an input channel (or `GlobalTimer{t}`) is at a level; `Condition{n}` fires on entry."""

    number: int
    channel: str
    value: int


class StateMachine:
    """States in the order added (the first one runs first), plus numbered timers, counters, conditions."""

    def __init__(self) -> None:
        self._states: dict[str, State] = {}
        self._timers: dict[int, GlobalTimer] = {}
        self._counters: dict[int, GlobalCounter] = {}
        self._conditions: dict[int, Condition] = {}

    # -- building ---------------------------------------------------------------------------------

    def add_state(self, name: str, timer_s: float = 0.0, transitions: Mapping[str, str] | None = None,
                  actions: Mapping[str, int | Sequence[int]] | None = None) -> None:
        """Add a state; its targets may name states added later (checked by `validate`)."""
        if isinstance(name, str) and name in self._states:
            raise StateMachineError(f"state {name!r} is added twice; state names must be unique")
        for what, value in (("transitions", transitions), ("actions", actions)):
            if value is not None and not isinstance(value, Mapping):
                raise StateMachineError(f"state {name!r}: {what} must be a dict, got {type(value).__name__}")
        state = State(
            name=name, timer_s=_as_seconds(timer_s),
            transitions={event: _canonical_target(target) for event, target in (transitions or {}).items()},
            actions={k: list(v) if isinstance(v, (list, tuple)) else v for k, v in (actions or {}).items()},
        )
        problems = _state_problems(state)
        if problems:
            raise StateMachineError(problems[0])
        self._states[name] = state

    def set_global_timer(self, number: int, duration_s: float, onset_delay_s: float = 0.0,
                         channel: str | None = None, on_value: int = 1, off_value: int = 0, loop: int = 0,
                         loop_interval_s: float = 0.0, send_events: bool = True,
                         onset_triggers: Iterable[int] = ()) -> None:
        """Configure global timer `number` (from 1); setting it again replaces it."""
        triggers = list(onset_triggers) if isinstance(onset_triggers, Iterable) else onset_triggers
        timer = GlobalTimer(number, _as_seconds(duration_s), _as_seconds(onset_delay_s), channel, on_value,
                            off_value, loop, _as_seconds(loop_interval_s), send_events, triggers)  # type: ignore[arg-type]
        problems = _timer_problems(timer)
        if problems:
            raise StateMachineError(problems[0])
        self._timers[number] = timer

    def set_global_counter(self, number: int, event: str, threshold: int) -> None:
        """Count `event`; `GlobalCounter{number}_End` fires when the count reaches `threshold`."""
        counter = GlobalCounter(number, event, threshold)
        problems = _counter_problems(counter)
        if problems:
            raise StateMachineError(problems[0])
        self._counters[number] = counter

    def set_condition(self, number: int, channel: str, value: int) -> None:
        """`Condition{number}` holds while `channel` (e.g. `Port2`, `BNC1`, `GlobalTimer1`) equals `value`."""
        condition = Condition(number, channel, value)
        problems = _condition_problems(condition)
        if problems:
            raise StateMachineError(problems[0])
        self._conditions[number] = condition

    # -- reading ----------------------------------------------------------------------------------

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self._states)

    @property
    def states(self) -> tuple[State, ...]:
        return tuple(self._states.values())

    @property
    def global_timers(self) -> tuple[GlobalTimer, ...]:
        return tuple(self._timers[n] for n in sorted(self._timers))

    @property
    def global_counters(self) -> tuple[GlobalCounter, ...]:
        return tuple(self._counters[n] for n in sorted(self._counters))

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return tuple(self._conditions[n] for n in sorted(self._conditions))

    def __len__(self) -> int:
        return len(self._states)

    def __repr__(self) -> str:
        return (f"StateMachine(states={list(self._states)}, timers={sorted(self._timers)}, "
                f"counters={sorted(self._counters)}, conditions={sorted(self._conditions)})")

    # -- checking ---------------------------------------------------------------------------------

    def validate(self) -> StateMachine:
        """Raise `StateMachineError` listing every structural problem; return self when there is none."""
        problems: list[str] = []
        if not self._states:
            problems.append("the state machine has no states; add at least one with add_state()")
        if len(self._states) > MAX_STATES:
            problems.append(f"the state machine has {len(self._states)} states; at most {MAX_STATES} fit")
        for timer in self._timers.values():
            problems += _timer_problems(timer)
            problems += [f"global timer {timer.number}: onset trigger {n} names global timer {n}, which is "
                         f"not set{_set_list(self._timers)}"
                         for n in timer.onset_triggers if _is_number(n) and n not in self._timers]
        for counter in self._counters.values():
            problems += _counter_problems(counter)
            problems += self._reference_problems(f"global counter {counter.number}", counter.event)
        for condition in self._conditions.values():
            problems += _condition_problems(condition)
            channel = condition.channel
            match = _TIMER_CHANNEL.fullmatch(channel) if isinstance(channel, str) else None
            if match and int(match[1]) not in self._timers:
                problems.append(f"condition {condition.number}: channel {channel!r} names global timer "
                                f"{match[1]}, which is not set{_set_list(self._timers)}")
        targets = [*self._states, EXIT, BACK]
        for state in self._states.values():
            problems += _state_problems(state)
            where = f"state {state.name!r}"
            for event, target in state.transitions.items():
                problems += self._reference_problems(where, event)
                if isinstance(target, str) and target not in targets:
                    problems.append(f"{where}: {event} -> {target!r}, but no state is named {target!r}"
                                    f"{_suggestion(target, targets)}")
            for action, value in state.actions.items():
                numbers = value if isinstance(value, list) else [value]
                if action in TIMER_ACTIONS:
                    problems += [f"{where}: {action} {n} names global timer {n}, which is not set"
                                 f"{_set_list(self._timers)}" for n in numbers if _is_number(n) and
                                 n not in self._timers]
                elif action == COUNTER_ACTION and _is_number(value) and value not in self._counters:
                    problems.append(f"{where}: {action} {value} names global counter {value}, which is "
                                    f"not set{_set_list(self._counters)}")
        if len(problems) == 1:
            raise StateMachineError(problems[0])
        if problems:
            listed = "\n  - ".join(problems)
            raise StateMachineError(f"{len(problems)} problems in the state machine:\n  - {listed}")
        return self

    def _reference_problems(self, where: str, event: object) -> list[str]:
        """An event naming a timer, counter or condition that was never set is a mistake, not a no-op."""
        if not isinstance(event, str):
            return []
        for pattern, configured, kind in ((_TIMER_EVENT, self._timers, "global timer"),
                                          (_COUNTER_EVENT, self._counters, "global counter"),
                                          (_CONDITION_EVENT, self._conditions, "condition")):
            match = pattern.fullmatch(event)
            if match and int(match[1]) not in configured:
                return [f"{where}: event {event!r} names {kind} {match[1]}, which is not set"
                        f"{_set_list(configured)}"]
        return []

    # -- data -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: what the rig stores with the trial and the compiler consumes."""
        return {
            "states": [
                {"name": s.name, "timer_s": s.timer_s, "transitions": dict(s.transitions),
                 "actions": {k: list(v) if isinstance(v, list) else v for k, v in s.actions.items()}}
                for s in self._states.values()
            ],
            "global_timers": [
                {"number": t.number, "duration_s": t.duration_s, "onset_delay_s": t.onset_delay_s,
                 "channel": t.channel, "on_value": t.on_value, "off_value": t.off_value, "loop": t.loop,
                 "loop_interval_s": t.loop_interval_s, "send_events": t.send_events,
                 "onset_triggers": list(t.onset_triggers)}
                for t in self.global_timers
            ],
            "global_counters": [{"number": c.number, "event": c.event, "threshold": c.threshold}
                                for c in self.global_counters],
            "conditions": [{"number": c.number, "channel": c.channel, "value": c.value}
                           for c in self.conditions],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StateMachine:
        """Rebuild from `to_dict()` output; unknown keys are refused so that a typo is not silently lost."""
        _check_keys("state machine", data, ("states", "global_timers", "global_counters", "conditions"),
                    required=("states",))
        sm = cls()
        for i, timer in enumerate(data.get("global_timers", [])):
            _check_keys(f"global_timers[{i}]", timer, tuple(GlobalTimer.__dataclass_fields__),
                        required=("number", "duration_s"))
            sm.set_global_timer(**timer)
        for i, counter in enumerate(data.get("global_counters", [])):
            _check_keys(f"global_counters[{i}]", counter, ("number", "event", "threshold"))
            sm.set_global_counter(**counter)
        for i, condition in enumerate(data.get("conditions", [])):
            _check_keys(f"conditions[{i}]", condition, ("number", "channel", "value"))
            sm.set_condition(**condition)
        for i, state in enumerate(data["states"]):
            _check_keys(f"states[{i}]", state, tuple(State.__dataclass_fields__), required=("name",))
            sm.add_state(**state)
        return sm


# -- checks shared by the builder methods and validate() ------------------------------------------


def _canonical_target(target: object) -> object:
    return EXIT if target == "exit" else target


def _as_seconds(value: object) -> float:
    """Numbers become floats; anything else is kept so that the check can name it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value  # type: ignore[return-value]


def _is_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _duration_problem(where: str, what: str, seconds: object) -> list[str]:
    if not isinstance(seconds, float) or math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        return [f"{where}: {what} must be a finite number of seconds >= 0, got {seconds!r}"]
    return []


def _number_problem(where: str, what: str, value: object, low: int = 1, high: int | None = None) -> list[str]:
    if not _is_number(value) or value < low or (high is not None and value > high):  # type: ignore[operator]
        allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        return [f"{where}: {what} must be {allowed}, got {value!r}"]
    return []


def _state_problems(state: State) -> list[str]:
    if not isinstance(state.name, str) or not state.name:
        return [f"state name must be a non-empty string, got {state.name!r}"]
    where = f"state {state.name!r}"
    if state.name in _RESERVED_NAMES:
        return [f"{where}: {state.name!r} is reserved for transitions; choose another state name"]
    problems = _duration_problem(where, "timer_s", state.timer_s)
    if not isinstance(state.transitions, dict):
        problems.append(f"{where}: transitions must map event names to state names, "
                        f"got {state.transitions!r}")
    else:
        for event, target in state.transitions.items():
            if not isinstance(event, str) or not event or not isinstance(target, str) or not target:
                problems.append(f"{where}: transition {event!r} -> {target!r} must map an event name "
                                "to a state name")
    if not isinstance(state.actions, dict):
        return problems + [f"{where}: actions must map output names to values, got {state.actions!r}"]
    for action, value in state.actions.items():
        if not isinstance(action, str) or not action:
            problems.append(f"{where}: output action name must be a non-empty string, got {action!r}")
        elif action in TIMER_ACTIONS and isinstance(value, list):
            if not value:
                problems.append(f"{where}: {action} needs at least one global timer number")
            for n in value:
                problems += _number_problem(where, f"{action} timer number", n)
        elif action in TIMER_ACTIONS or action == COUNTER_ACTION:
            kind = "counter" if action == COUNTER_ACTION else "timer"
            problems += _number_problem(where, f"{action} {kind} number (numbers start at 1)", value)
        elif isinstance(value, list):  # a serial message to a module (`HiFi1: [ord("P"), 0]`)
            if not value:
                problems.append(f"{where}: the message to {action} needs at least one byte")
            for b in value:
                problems += _number_problem(where, f"a byte of the message to {action}", b, low=0, high=255)
        else:
            problems += _number_problem(where, f"the value of {action}", value, low=0)
    return problems


def _timer_problems(timer: GlobalTimer) -> list[str]:
    problems = _number_problem("global timer", "number", timer.number)
    where = f"global timer {timer.number}"
    problems += _duration_problem(where, "duration_s", timer.duration_s)
    problems += _duration_problem(where, "onset_delay_s", timer.onset_delay_s)
    problems += _duration_problem(where, "loop_interval_s", timer.loop_interval_s)
    if timer.channel is not None and (not isinstance(timer.channel, str) or not timer.channel):
        problems.append(f"{where}: channel must be an output name such as 'BNC1' or None, "
                        f"got {timer.channel!r}")
    problems += _number_problem(where, "on_value", timer.on_value, low=0)
    problems += _number_problem(where, "off_value", timer.off_value, low=0)
    problems += _number_problem(where, "loop", timer.loop, low=0, high=255)
    if not isinstance(timer.send_events, bool):
        problems.append(f"{where}: send_events must be True or False, got {timer.send_events!r}")
    if not isinstance(timer.onset_triggers, list):
        problems.append(f"{where}: onset_triggers must be a list of timer numbers, "
                        f"got {timer.onset_triggers!r}")
    else:
        for n in timer.onset_triggers:
            problems += _number_problem(where, "onset trigger timer number", n)
    return problems


def _counter_problems(counter: GlobalCounter) -> list[str]:
    problems = _number_problem("global counter", "number", counter.number)
    where = f"global counter {counter.number}"
    if not isinstance(counter.event, str) or not counter.event:
        problems.append(f"{where}: event must be an event name such as 'Port1In', got {counter.event!r}")
    return problems + _number_problem(where, "threshold", counter.threshold, low=0, high=0xFFFFFFFF)


def _condition_problems(condition: Condition) -> list[str]:
    problems = _number_problem("condition", "number", condition.number)
    where = f"condition {condition.number}"
    if not isinstance(condition.channel, str) or not condition.channel:
        problems.append(f"{where}: channel must be an input channel name such as 'Port2', 'BNC1' or "
                        f"'GlobalTimer1', got {condition.channel!r}")
    return problems + _number_problem(where, "value", condition.value, low=0, high=1)


def _suggestion(name: str, candidates: Sequence[str]) -> str:
    hint = did_you_mean(name, candidates, cutoff=0.5)
    shown = ", ".join(repr(c) for c in candidates[:8]) + (", ..." if len(candidates) > 8 else "")
    return (f"; {hint}" if hint else "") + f" (valid: {shown})"


def _set_list(configured: Mapping[int, object]) -> str:
    return f" (set: {', '.join(str(n) for n in sorted(configured))})" if configured else " (none is set)"


def _check_keys(where: str, data: object, allowed: Sequence[str], required: Sequence[str] = ()) -> None:
    if not isinstance(data, Mapping):
        raise StateMachineError(f"{where} must be a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise StateMachineError(f"{where}: unknown key {key!r}{_suggestion(str(key), list(allowed))}")
    for key in required:
        if key not in data:
            raise StateMachineError(f"{where}: missing key {key!r}")
