"""Turning the device's trial stream into a typed trial record.

The device reports events, never states: the client replays the state machine's transition
rule (first event whose target differs from the current state wins) to know which states
were visited and when, exactly as the MATLAB client does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hardware.bpod.codec import EventsReceived, SoftCodeReceived, StreamMessage, TrialEnded, TrialStarted
from hardware.bpod.compiler import CompiledStateMachine
from hardware.bpod.hardware_description import EventTable

BACK_TARGET = 255
MISSED_CYCLES_TOLERANCE_S = 1e-3


@dataclass(frozen=True)
class StateVisit:
    """One visit of a state; times in seconds from trial start, on the device clock."""

    name: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TrialEvent:
    name: str
    code: int
    cycle: int
    time_s: float


@dataclass(frozen=True)
class TrialResult:
    """A finished trial: states with entry/exit times, every event with its Bpod time, and the
    trial's start and end on the session clock."""

    start_s: float
    end_s: float
    n_cycles: int
    exit_cycle: int
    states: tuple[StateVisit, ...]
    events: tuple[TrialEvent, ...]
    soft_codes: tuple[int, ...]
    confirmed: bool | None
    cycle_s: float = 1e-4
    aborted: bool = False

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def missed_cycles(self) -> bool:
        """True when the device's own cycle count disagrees with its clock (spec 4.4)."""
        return abs(self.duration_s - self.exit_cycle * self.cycle_s) > MISSED_CYCLES_TOLERANCE_S

    def visited(self, state: str) -> bool:
        return any(v.name == state for v in self.states)

    def visits(self, state: str) -> list[StateVisit]:
        return [v for v in self.states if v.name == state]

    def event_times(self, name: str) -> list[float]:
        return [e.time_s for e in self.events if e.name == name]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record; `States` and `Events` follow the MATLAB RawEvents convention."""
        states: dict[str, list[list[float]]] = {}
        for v in self.states:
            states.setdefault(v.name, []).append([round(v.start_s, 6), round(v.end_s, 6)])
        events: dict[str, list[float]] = {}
        for e in self.events:
            events.setdefault(e.name, []).append(round(e.time_s, 6))
        return {
            "trial_start_s": self.start_s,
            "trial_end_s": self.end_s,
            "n_cycles": self.n_cycles,
            "state_sequence": [v.name for v in self.states],
            "States": states,
            "Events": events,
            "soft_codes": list(self.soft_codes),
            "aborted": self.aborted,
        }


@dataclass
class TrialRecorder:
    """Replays one trial's stream on its compiled state machine (pure; fed by the client)."""

    machine: CompiledStateMachine
    events_table: EventTable
    start_us: int | None = None
    confirmed: bool | None = None
    current: int = 0
    previous: int = 0
    entered_cycle: int = 0
    states: list[StateVisit] = field(default_factory=list)
    events: list[TrialEvent] = field(default_factory=list)
    soft_codes: list[int] = field(default_factory=list)
    last_cycle: int = 0
    result: TrialResult | None = None

    @property
    def cycle_s(self) -> float:
        return self.events_table.hw.cycle_us * 1e-6

    @property
    def current_state(self) -> str:
        return self.machine.state_name(self.current)

    def feed(self, message: StreamMessage) -> list[tuple[str, TrialEvent | None]]:
        """Apply one message; returns what happened as (kind, event) pairs for callbacks:
        ('event', e), ('state', None) after a transition, ('end', None)."""
        if isinstance(message, TrialStarted):
            self.start_us, self.confirmed = message.start_us, message.confirmed
            return [("state", None)]
        if isinstance(message, SoftCodeReceived):
            self.soft_codes.append(message.code)
            return []
        if isinstance(message, EventsReceived):
            return self._on_events(message)
        if isinstance(message, TrialEnded):
            self._finish(message)
            return [("end", None)]
        raise TypeError(f"unexpected stream message {message!r}")

    def _target(self, code: int) -> int:
        body = self.machine.body
        t = self.events_table
        state = self.current
        if code == t.tup_code:
            return body.tup_targets[state]
        if code < t.timer_start_offset:
            matrix, index = body.input_matrix, code
        elif code < t.timer_end_offset:
            matrix, index = body.timer_start_matrix, code - t.timer_start_offset
        elif code < t.counter_offset:
            matrix, index = body.timer_end_matrix, code - t.timer_end_offset
        elif code < t.condition_offset:
            matrix, index = body.counter_matrix, code - t.counter_offset
        else:
            matrix, index = body.condition_matrix, code - t.condition_offset
        for event, target in matrix[state]:
            if event == index:
                return target
        return state

    def _on_events(self, message: EventsReceived) -> list[tuple[str, TrialEvent | None]]:
        happened: list[tuple[str, TrialEvent | None]] = []
        time_s = message.cycle * self.cycle_s
        self.last_cycle = message.cycle
        transition: int | None = None
        for code in message.codes:
            event = TrialEvent(self.events_table.name(code), code, message.cycle, time_s)
            self.events.append(event)
            happened.append(("event", event))
            if transition is None:
                target = self._target(code)
                if target != self.current:
                    transition = target
        if transition is not None:
            if transition == BACK_TARGET and self.machine.uses_back:
                transition = self.previous
            self.states.append(StateVisit(self.current_state, self.entered_cycle * self.cycle_s, time_s))
            self.previous, self.current, self.entered_cycle = self.current, transition, message.cycle
            if transition < self.machine.body.n_states:
                happened.append(("state", None))
        return happened

    def _finish(self, message: TrialEnded) -> None:
        exit_s = message.cycle * self.cycle_s
        if self.current < self.machine.body.n_states:  # ended by X (stop), not by an exit transition
            self.states.append(StateVisit(self.current_state, self.entered_cycle * self.cycle_s, exit_s))
        start_us = (
            self.start_us
            if self.start_us is not None
            else message.end_us - message.cycle * self.events_table.hw.cycle_us
        )
        self.result = TrialResult(
            start_s=start_us / 1e6,
            end_s=message.end_us / 1e6,
            n_cycles=message.n_cycles,
            exit_cycle=message.cycle,
            states=tuple(self.states),
            events=tuple(self.events),
            soft_codes=tuple(self.soft_codes),
            confirmed=self.confirmed,
            cycle_s=self.cycle_s,
        )

    def partial(self) -> TrialResult:
        """What is known so far: for a trial that never ended (device lost, process killed)."""
        now_s = self.last_cycle * self.cycle_s
        states = [*self.states, StateVisit(self.current_state, self.entered_cycle * self.cycle_s, now_s)]
        start_s = (self.start_us or 0) / 1e6
        return TrialResult(
            start_s=start_s,
            end_s=start_s + now_s,
            n_cycles=self.last_cycle,
            exit_cycle=self.last_cycle,
            states=tuple(states),
            events=tuple(self.events),
            soft_codes=tuple(self.soft_codes),
            confirmed=self.confirmed,
            cycle_s=self.cycle_s,
            aborted=True,
        )
