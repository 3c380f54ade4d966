"""The behaviour of a session as NWB: the trials table, every Bpod state, event and output action with its
time, and the licks of each side.

States, events and actions use ndx-structured-behavior (0.2.0), the NWB extension made for
state-machine tasks (Bpod, BEADL); core NWB has no state or action types. Its `Task` holds the types of
states, events and actions, the task's arguments (timing) and, as the task program, the task and context
settings that the task code turns into each trial's state machine, with the JSON schema of their model;
its `TaskRecording` has one row per state visit, event and action, and its `TrialsTable` points at each
trial's rows. Its actions table stores times as float32 (0.1 ms steps only in the first ~800 s of a
session): an action happens at its state's entry, so the exact time is also that state's entry in the
states table, which keeps float64.

All times are on the Bpod session clock: a trial's states and events are seconds from its start, and
trial start plus that is the session time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hdmf.common import DynamicTableRegion, VectorData, VectorIndex
from ndx_structured_behavior import (
    ActionsTable,
    ActionTypesTable,
    EventTypesTable,
    StatesTable,
    StateTypesTable,
    Task,
    TaskArgumentsTable,
    TaskRecording,
    TaskSchema,
    TrialsTable,
)
from ndx_structured_behavior import TaskProgram as NdxTaskProgram
from pynwb import NWBFile
from pynwb.event import DurationVectorData, EventsTable, TimestampVectorData

from protocols.trial_record import TrialRecord
from rig.water import trial_water_ul

OUTCOMES = {"hit": "hit", "error": "miss", "no_response": "ignore"}
"""The rig's outcomes in the field's words (hit / miss / ignore); aborted trials keep their own."""
SAMPLE_STATE, DELAY_STATE, GO_STATE = "SamplePeriod", "DelayPeriod", "ResponseCue"
RESPONSE_STATES = ("Reward", "TimeOut", "RewardOtherSide")


def exported_trials(trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The trials with a Bpod record (a start on the session clock); a trial queued when the session ended
    and never begun has none and is not a row of the trials table."""
    return [t for t in trials if t.bpod is not None and t.trial_start_s is not None]


def stop_s(trial: TrialRecord) -> float:
    """A trial's end on the session clock; for one cut short without an end, its last state exit or event."""
    assert trial.bpod is not None and trial.trial_start_s is not None
    if trial.trial_end_s is not None:
        return float(trial.trial_end_s)
    times = [float(x) for visits in trial.bpod.states.values() for v in visits for x in v] + \
        [float(x) for times in trial.bpod.events.values() for x in times]
    finite = [x for x in times if math.isfinite(x)]
    return float(trial.trial_start_s) + (max(finite) if finite else 0.0)


@dataclass(frozen=True)
class _Rows:
    """Flat rows of one kind (states, events or actions) and each trial's row count."""

    names: list[str]
    start: list[float]
    stop: list[float]
    value: list[str]
    per_trial: list[int]


def _visits(trial: TrialRecord) -> list[tuple[float, float, str]]:
    """(start, end, state) of every state visit, in time order, from trial start."""
    assert trial.bpod is not None
    out = [(float(a), float(b), name) for name, visits in trial.bpod.states.items() for a, b in visits
           if math.isfinite(float(a))]
    return sorted(out)


def _state_rows(trials: Sequence[TrialRecord]) -> _Rows:
    rows = _Rows([], [], [], [], [])
    for t in trials:
        t0 = float(t.trial_start_s or 0.0)
        visits = _visits(t)
        for a, b, name in visits:
            rows.names.append(name)
            rows.start.append(t0 + a)
            rows.stop.append(t0 + (b if math.isfinite(b) else a))
            rows.value.append("")
        rows.per_trial.append(len(visits))
    return rows


def _event_rows(trials: Sequence[TrialRecord]) -> _Rows:
    rows = _Rows([], [], [], [], [])
    for t in trials:
        assert t.bpod is not None
        t0 = float(t.trial_start_s or 0.0)
        events = sorted((float(time), name) for name, times in t.bpod.events.items() for time in times)
        for time, name in events:
            rows.names.append(name)
            rows.start.append(t0 + time)
            rows.stop.append(t0 + time)
            rows.value.append("")
        rows.per_trial.append(len(events))
    return rows


def _action_rows(trials: Sequence[TrialRecord]) -> _Rows:
    """Each output action of each visited state, at the state's entry, held for the visit (Bpod outputs
    are set on entry and cleared on exit; a serial message is sent once at entry)."""
    rows = _Rows([], [], [], [], [])
    for t in trials:
        t0 = float(t.trial_start_s or 0.0)
        outputs = state_outputs(t)
        n = 0
        for a, b, name in _visits(t):
            for output, value in (outputs.get(name) or {}).items():
                rows.names.append(output)
                rows.start.append(t0 + a)
                rows.stop.append(t0 + (b if math.isfinite(b) else a))
                rows.value.append(str(value))
                n += 1
        rows.per_trial.append(n)
    return rows


def state_outputs(trial: TrialRecord) -> Mapping[str, Mapping[str, Any]]:
    """The trial's state machine outputs per state ({state: {output: value}}), as its record keeps them."""
    outputs = trial.extra.get("outputs") if trial.outputs is None else trial.outputs
    return outputs if isinstance(outputs, Mapping) else {}


def _types_table(cls: type, column: str, names: Sequence[str], description: str) -> Any:
    return cls(description=description, columns=[VectorData(name=column, description=description,
                                                            data=_data(names, str))])


def _region(name: str, description: str, rows: Sequence[int], table: Any) -> DynamicTableRegion:
    return DynamicTableRegion(name=name, description=description, data=_data(rows, np.int64), table=table)


def _ragged(name: str, description: str, per_trial: Sequence[int], table: Any) -> tuple[Any, Any]:
    target = _region(name, description, np.arange(int(sum(per_trial))), table)
    index = VectorIndex(name=f"{name}_index", data=np.cumsum(per_trial, dtype=np.int64),
                        target=target)
    return target, index


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _session_time(trial: TrialRecord, state: str, first: bool = False) -> float:
    """Session-clock time of a state's last (or first) entry; NaN when it was not entered."""
    assert trial.bpod is not None
    visits = [float(v[0]) for v in trial.bpod.states.get(state, ()) if math.isfinite(float(v[0]))]
    if not visits:
        return float("nan")
    return float(trial.trial_start_s or 0.0) + (min(visits) if first else max(visits))


def _response_time(trial: TrialRecord) -> float:
    times = [_session_time(trial, s, first=True) for s in RESPONSE_STATES]
    times = [t for t in times if math.isfinite(t)]
    return min(times) if times else float("nan")


def _task_arguments(timing: Mapping[str, Any]) -> TaskArgumentsTable:
    """The task's timing settings as the task's arguments (name, value as text, type)."""
    names = sorted(timing)
    columns = [
        VectorData(name="argument_name", description="timing setting (task.timing)", data=names),
        VectorData(name="argument_description", description="what it times",
                   data=[f"task.timing.{n} (s)" for n in names]),
        VectorData(name="expression", description="value", data=[str(timing[n]) for n in names]),
        VectorData(name="expression_type", description="type of the value",
                   data=[type(timing[n]).__name__ for n in names]),
        VectorData(name="output_type", description="type used", data=["float"] * len(names)),
    ]
    return TaskArgumentsTable(description="the task's timing settings as the session ran them",
                              columns=columns)


def _data(values: Sequence[Any], dtype: Any = None) -> Any:
    """A column's data: numbers as an array (a list is converted value by value when written), text as a
    list, nothing as an empty array of `dtype` (an empty list has no type to write)."""
    if not len(values):
        return np.zeros(0, dtype or float)
    if dtype is str or isinstance(values[0], str):
        return list(values)
    return np.asarray(values, dtype=dtype)


def _column(name: str, description: str, data: Sequence[Any], dtype: Any = None) -> VectorData:
    return VectorData(name=name, description=description, data=_data(data, dtype))


def _field(trial: TrialRecord, name: str) -> Any:
    """A record's field by name, whether this version of the record has it or keeps it among `extra`."""
    return getattr(trial, name, None) if hasattr(trial, name) else trial.extra.get(name)


def _trial_columns(trials: Sequence[TrialRecord], valves: Mapping[str, Any] | None) -> list[VectorData]:
    """The columns the field uses for this task, one value per trial."""
    def text(values: Sequence[Any]) -> list[str]:
        return ["" if v is None else str(v) for v in values]

    stage = [t.stage for t in trials]
    block = [_field(t, "block") for t in trials]
    return [
        _column("trial_number", "the rig's trial number in the session (1-based)", [t.trial for t in trials]),
        _column("trial_instruction", "side the cue instructs: left or right", text([t.side for t in trials])),
        _column("outcome", "hit, miss (wrong side), ignore (no response), aborted",
                [OUTCOMES.get(t.outcome, t.outcome) for t in trials]),
        _column("licked_side", "side of the answering lick ('' for none)",
                text([t.score.licked_side if t.score else None for t in trials])),
        _column("early_lick", "a lick in the sample or delay epoch (early)",
                [bool(t.score.early_lick) if t.score else False for t in trials]),
        _column("early_licks", "number of early licks",
                [t.score.early_licks if t.score else 0 for t in trials]),
        _column("auto_water", "a free drop on the instructed side before the go cue (auto-reward)",
                [bool(t.free_drop) for t in trials]),
        _column("free_water", "either lick rewarded (both_rewarded selection)",
                [t.mode == "both_rewarded" for t in trials]),
        _column("context", "task context", text([t.context for t in trials])),
        _column("block", "visit to a context (1, 2, ...; 0 when not recorded)",
                [int(b) if isinstance(b, int) else 0 for b in block]),
        _column("block_label", "label of the block (e.g. 1, 2, 1')",
                text([_field(t, "block_label") for t in trials])),
        _column("cue", "sample cue", text([t.cue for t in trials])),
        _column("modality", "cue modality", text([t.modality for t in trials])),
        _column("contingency", "cue-to-side mapping", text([t.contingency for t in trials])),
        _column("selection", "trial selection mode", text([t.mode for t in trials])),
        _column("stage", "training stage", text([s.get("name") for s in stage])),
        _column("delay_duration", "the stage's delay epoch (s)", [_nan(s.get("delay_s")) for s in stage]),
        _column("timeout_duration", "the stage's error timeout (s)",
                [_nan(s.get("timeout_s")) for s in stage]),
        _column("sample_enforcement", "a lick in the sample epoch restarts it",
                [bool(s.get("sample_enforcement")) for s in stage]),
        _column("sample_start_time", "last entry of the sample epoch (s, session clock)",
                [_session_time(t, SAMPLE_STATE) for t in trials]),
        _column("delay_start_time", "last entry of the delay epoch (s, session clock)",
                [_session_time(t, DELAY_STATE) for t in trials]),
        _column("go_cue_time", "go cue onset (s, session clock)",
                [_session_time(t, GO_STATE) for t in trials]),
        _column("response_time", "the answering lick (s, session clock; NaN: none)",
                [_response_time(t) for t in trials]),
        _column("reaction_time", "go cue to answering lick (s; NaN: none)",
                [_nan(t.score.reaction_time_s if t.score else None) for t in trials]),
        _column("rewarded", "the trial was rewarded", [bool(t.score and t.score.rewarded) for t in trials]),
        _column("water_delivered", "water from the valves in this trial (uL, by the calibrated open times)",
                [trial_water_ul(t, valves) for t in trials]),
        _column("closed_loop_gated", "the delay was gated by the online decoder",
                [bool(t.closed_loop and t.closed_loop.get("gated")) for t in trials]),
    ]


@dataclass(frozen=True)
class TaskProgram:
    """What the state machines were built from: the task's settings as the session ran them (text) and the
    JSON schema of their model, which says what each key means."""

    text: str
    language: str
    schema: str
    schema_version: str


def add_behaviour(nwb: NWBFile, trials: Sequence[TrialRecord], timing: Mapping[str, Any],
                  valves: Mapping[str, Any] | None, lick_events: Mapping[str, str],
                  program: TaskProgram | None = None) -> None:
    """The task's types and program, its recording (states, events, actions), the trials table, the
    licks."""
    states, events, actions = _state_rows(trials), _event_rows(trials), _action_rows(trials)
    state_names = sorted(set(states.names))
    event_names = sorted(set(events.names))
    action_names = sorted(set(actions.names))
    state_types = _types_table(StateTypesTable, "state_name", state_names, "Bpod states of the task")
    event_types = _types_table(EventTypesTable, "event_name", event_names, "Bpod events (inputs, timers)")
    action_types = _types_table(ActionTypesTable, "action_name", action_names, "Bpod output actions")
    extra: dict[str, Any] = {}
    if program is not None:
        schema = TaskSchema(name="task_schema", data=program.schema, version=program.schema_version,
                            language="JSON Schema")
        extra = {"task_schema": schema, "task_program": NdxTaskProgram(
            name="task_program", data=program.text, language=program.language, schema=schema)}
    task = Task(event_types=event_types, state_types=state_types, action_types=action_types,
                task_arguments=_task_arguments(timing), **extra)
    nwb.add_lab_meta_data(task)

    state_index = {n: i for i, n in enumerate(state_names)}
    states_table = StatesTable(description="every Bpod state visit (s, session clock)", columns=[
        _column("start_time", "state entry (s)", states.start),
        _column("stop_time", "state exit (s)", states.stop),
        _region("state_type", "the state (row of state_types)", [state_index[n] for n in states.names],
                state_types),
    ], state_types_table=state_types)
    event_index = {n: i for i, n in enumerate(event_names)}
    events_table = EventsTable(name="events", description="every Bpod event (s, session clock)", columns=[
        TimestampVectorData(name="timestamp", description="event time (s)", data=_data(events.start)),
        _region("event_type", "the event (row of event_types)", [event_index[n] for n in events.names],
                event_types),
        _column("value", "event value ('' for Bpod events)", events.value, str),
    ])
    action_index = {n: i for i, n in enumerate(action_names)}
    actions_table = ActionsTable(description="every output action of a visited state (s, session clock)",
                                 columns=[
        _column("timestamp", "entry of the state that set the output (s; float32)", actions.start,
                np.float32),
        _column("duration", "how long the state held it (s)",
                [b - a for a, b in zip(actions.start, actions.stop, strict=True)]),
        _region("action_type", "the output (row of action_types)", [action_index[n] for n in actions.names],
                action_types),
        _column("value", "the value set", actions.value, str),
    ], action_types_table=action_types)
    nwb.add_acquisition(TaskRecording(events=events_table, states=states_table, actions=actions_table))

    columns: list[Any] = [
        _column("start_time", "trial start (s, Bpod session clock)",
                [float(t.trial_start_s) for t in trials]),
        _column("stop_time", "trial end (s, Bpod session clock; a trial cut short: its last state or event)",
                [stop_s(t) for t in trials]),
    ]
    for name, rows, table in (("states", states, states_table), ("events", events, events_table),
                              ("actions", actions, actions_table)):
        columns.extend(_ragged(name, f"the trial's {name} (rows of task_recording/{name})", rows.per_trial,
                               table))
    columns.extend(_trial_columns(trials, valves))
    nwb.trials = TrialsTable(description="trials with a Bpod record, in order", columns=columns,
                             states_table=states_table, events_table=events_table,
                             actions_table=actions_table)
    _add_licks(nwb, trials, lick_events)


def _add_licks(nwb: NWBFile, trials: Sequence[TrialRecord], lick_events: Mapping[str, str]) -> None:
    """One events table per side: each lick's onset (port in) and, when its port-out came, its duration. A
    side never licked has no table (an empty table is a best-practice violation)."""
    for side, event in lick_events.items():
        onsets: list[float] = []
        durations: list[float] = []
        off_event = event[:-2] + "Out" if event.endswith("In") else None
        for t in trials:
            assert t.bpod is not None
            t0 = float(t.trial_start_s or 0.0)
            ins = sorted(float(x) for x in t.bpod.events.get(event, ()))
            outs = sorted(float(x) for x in t.bpod.events.get(off_event, ())) if off_event else []
            for x in ins:
                after = [o for o in outs if o >= x]
                onsets.append(t0 + x)
                durations.append(after[0] - x if after else float("nan"))
        if not onsets:
            continue
        nwb.add_events_table(EventsTable(
            name=f"licks_{side}", description=f"licks on the {side} port ({event}), s on the session clock",
            columns=[TimestampVectorData(name="timestamp", description="lick onset (s)", data=_data(onsets)),
                     DurationVectorData(name="duration", description="lick contact (s; NaN: no release seen)",
                                        data=_data(durations))]))
