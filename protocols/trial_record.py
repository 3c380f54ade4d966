"""The trial record: one finished trial, as trials.jsonl holds it, as the rig publishes it, as every
reader reads it back.

The session writes one `TrialRecord` per finished trial (`to_json`, one line of trials.jsonl, fsynced) and
publishes the same JSON object on the events socket (`trial` topic, kind "end"); the monitor, the online
module, replay and the session summary read either with `from_json`. Nobody rebuilds the record by hand:
what a reader needs that is not a field (the go cue, the licks of one side) is a method here.

`bpod` is the device's own record of the trial (`TrialResult.to_dict()` of hardware/bpod/trial.py, MATLAB
RawEvents convention: `States` {name: [[start, end], ...]}, `Events` {name: [times]}, seconds from trial
start; trial start and end on the Bpod session clock). A trial the Bpod never began has none.

This module is a record definition only: it imports no task logic and no hardware, so the online module
may read it. `version` is the record's format; lines written before it existed read as version 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocols.outcome import ScoredTrial
    from protocols.settings import WiringSettings

TRIAL_RECORD_VERSION = 1
VERSION_KEY = "version"
BPOD_KEY = "bpod"
STATES_KEY = "States"
EVENTS_KEY = "Events"


class TrialRecordError(ValueError):
    """A JSON object that is not a trial record; the message names the trial (if known) and the key."""


# -- checks that name what is wrong ------------------------------------------------------------------------


def _where(data: Mapping[str, Any]) -> str:
    trial = data.get("trial")
    return f"trial {trial}" if isinstance(trial, int) and not isinstance(trial, bool) else "trial record"


def _fail(data: Mapping[str, Any], key: str, wanted: str, value: Any) -> TrialRecordError:
    return TrialRecordError(f"{_where(data)}: {key!r} must be {wanted}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int(data: Mapping[str, Any], key: str, *, required: bool = False) -> int | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(data, key, "a whole number", value)
    return value


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise _fail(data, key, "a number", value)
    return value


def _text(data: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise _fail(data, key, "text", value)
    return value


def _flag(data: Mapping[str, Any], key: str, default: bool | None = False) -> bool | None:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _fail(data, key, "true or false", value)
    return value


def _mapping(data: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _fail(data, key, "an object", value)
    return dict(value)


def _objects(data: Mapping[str, Any], key: str) -> tuple[dict[str, Any], ...] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise _fail(data, key, "a list of objects", value)
    return tuple(dict(v) for v in value)


# -- the Bpod's part ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BpodRecord:
    """What the Bpod reported of one trial (times in seconds; `states`/`events` from trial start)."""

    trial_start_s: float | None = None
    trial_end_s: float | None = None
    n_cycles: int | None = None
    state_sequence: tuple[str, ...] = ()
    states: Mapping[str, list[list[float]]] = field(default_factory=dict)
    events: Mapping[str, list[float]] = field(default_factory=dict)
    soft_codes: tuple[int, ...] = ()
    aborted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"trial_start_s": self.trial_start_s, "trial_end_s": self.trial_end_s,
                "n_cycles": self.n_cycles, "state_sequence": list(self.state_sequence),
                STATES_KEY: dict(self.states), EVENTS_KEY: dict(self.events),
                "soft_codes": list(self.soft_codes), "aborted": self.aborted}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], trial: int | None = None) -> BpodRecord:
        """From a record's `bpod` object; errors name the key under `bpod` and the trial."""
        def key(name: str) -> str:
            return f"{BPOD_KEY}.{name}"

        scoped = {**{key(k): v for k, v in data.items()}, "trial": trial}
        sequence = data.get("state_sequence") or []
        if not isinstance(sequence, list) or not all(isinstance(s, str) for s in sequence):
            raise _fail(scoped, key("state_sequence"), "a list of state names", sequence)
        states = data.get(STATES_KEY) or {}
        if not isinstance(states, Mapping) or not all(
                isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 and all(map(_is_number, p))
                                            for p in v) for v in states.values()):
            raise _fail(scoped, key(STATES_KEY), "{state: [[start, end], ...]}", states)
        events = data.get(EVENTS_KEY) or {}
        if not isinstance(events, Mapping) or not all(
                isinstance(v, list) and all(map(_is_number, v)) for v in events.values()):
            raise _fail(scoped, key(EVENTS_KEY), "{event: [times]}", events)
        codes = data.get("soft_codes") or []
        if not isinstance(codes, list) or not all(
                isinstance(c, int) and not isinstance(c, bool) for c in codes):
            raise _fail(scoped, key("soft_codes"), "a list of whole numbers", codes)
        return cls(trial_start_s=_number(scoped, key("trial_start_s")),
                   trial_end_s=_number(scoped, key("trial_end_s")), n_cycles=_int(scoped, key("n_cycles")),
                   state_sequence=tuple(sequence), states=dict(states), events=dict(events),
                   soft_codes=tuple(codes), aborted=bool(_flag(scoped, key("aborted"))))

    def last_entry_s(self, state: str) -> float | None:
        """When `state` was last entered (s from trial start); None if it was not."""
        visits = self.states.get(state)
        if not visits or not math.isfinite(visits[-1][0]):
            return None
        return float(visits[-1][0])

    def event_times(self, name: str) -> list[float]:
        return [float(t) for t in self.events.get(name, ())]


# -- the trial's score --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialScore:
    """What scoring read from the states (protocols/outcome.py `ScoredTrial`); on disk as top-level keys."""

    licked_side: str | None = None
    reaction_time_s: float | None = None
    early_lick: bool = False
    early_lick_epochs: tuple[str, ...] = ()
    early_licks: int = 0
    rewarded: bool = False

    @classmethod
    def from_scored(cls, scored: ScoredTrial) -> TrialScore:
        return cls(licked_side=scored.licked_side, reaction_time_s=scored.reaction_time_s,
                   early_lick=scored.early_lick, early_lick_epochs=tuple(scored.early_lick_epochs),
                   early_licks=scored.early_licks, rewarded=scored.rewarded)

    def to_json(self) -> dict[str, Any]:
        return {"licked_side": self.licked_side, "reaction_time_s": self.reaction_time_s,
                "early_lick": self.early_lick, "early_lick_epochs": list(self.early_lick_epochs),
                "early_licks": self.early_licks, "rewarded": self.rewarded}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialScore | None:
        """From a record's top-level keys; None when the record has none of them (never scored)."""
        if not any(f.name in data for f in fields(cls)):
            return None
        epochs = data.get("early_lick_epochs") or []
        if not isinstance(epochs, list) or not all(isinstance(e, str) for e in epochs):
            raise _fail(data, "early_lick_epochs", "a list of epoch names", epochs)
        return cls(licked_side=_text(data, "licked_side"), reaction_time_s=_number(data, "reaction_time_s"),
                   early_lick=bool(_flag(data, "early_lick")), early_lick_epochs=tuple(epochs),
                   early_licks=_int(data, "early_licks") or 0, rewarded=bool(_flag(data, "rewarded")))


# -- the record ---------------------------------------------------------------------------------------------

_OPTIONAL = ("block", "block_label", "pole", "lickport", "sounds", "outputs", "outcome_before_abort",
             "aborted", "events_received", "states_entered")
"""Keys written only when set: the trial's block (protocols/blocks.py), the pole motor's move before a
pole trial, the lickport motor's step
before a trial, the sounds a sound module
played (sound.device hifi), the output actions of the trial's states, the outcome training counted for
a trial cut short, and what a killed session's journal held of its unfinished trial (recovery,
rig/store.py)."""


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its type and parameters, its outcome and score, the Bpod's record of it."""

    trial: int
    outcome: str
    """hit, error, no_response, aborted (cut short, or killed) or not_started (queued, never begun)."""
    context: str | None = None
    block: int | None = None
    """The visit to the context this trial belongs to: 1-based index in the subject's history, continuing
    across sessions (protocols/blocks.py; None in lines written before blocks existed)."""
    block_label: str | None = None
    """The paper's label of that block: 1, 2, 1', 2', 1'', ..."""
    side: str | None = None
    subject: str | None = None
    trial_number: int | None = None
    cue: str | None = None
    modality: str | None = None
    contingency: str | None = None
    mode: str | None = None
    free_drop: bool = False
    stage: Mapping[str, Any] = field(default_factory=dict)
    score: TrialScore | None = None
    """None for a trial the Bpod never began (and for a killed session's unfinished one)."""
    abort_reason: str | None = None
    stopped: bool | None = None
    dead_time_s: float | None = None
    """Host-induced dead time before this trial: its start less the previous trial's end on the Bpod clock,
    less the one cycle the device takes to start a queued trial (None for a session's first trial)."""
    reward_ul: float | None = None
    valve_time_s: float | None = None
    training_events: tuple[Mapping[str, Any], ...] = ()
    training: Mapping[str, Any] | None = None
    bpod: BpodRecord | None = None
    host_time: str | None = None
    closed_loop: Mapping[str, Any] | None = None
    pole: Mapping[str, Any] | None = None
    """The pole motor's move before the trial (`PoleMove.to_record()` of hardware/pole_motor.py): target,
    target_position, the positions reached (midpoint, then target) and travel_s on the stage's clock."""
    lickport: Mapping[str, Any] | None = None
    """The lickport motor's bias-correction step before the trial (None without one, and in older lines):
    after_trial (the trial whose score asked for it), toward (left or right), position and offset from the
    centre after it (microsteps, + right) and travel_s on the stage's clock (`LickportMove.to_record()`)."""
    sounds: tuple[Mapping[str, Any], ...] | None = None
    """The sounds the sound module played (sound.device hifi; None otherwise, and in older lines), in order:
    sound, the state that played it, onset_s (its entry), ack_s (the module's answer) and cut_s (the stop
    that cut it, or None), in seconds from trial start on the Bpod clock (rig/sound.py)."""
    outputs: Mapping[str, Mapping[str, Any]] | None = None
    """The output actions of the trial's state machine, {state: {output: value}} for each state that sets
    one (None in older lines): with the visits in `bpod.States`, when each output was set and for how long
    (valve open times, hence the water given)."""
    outcome_before_abort: str | None = None
    aborted: bool | None = None
    events_received: tuple[Mapping[str, Any], ...] | None = None
    states_entered: tuple[Mapping[str, Any], ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys this version does not know (from a newer writer), kept so that nothing read is lost."""
    version: int = TRIAL_RECORD_VERSION

    # ---- what readers ask

    @property
    def trial_start_s(self) -> float | None:
        return self.bpod.trial_start_s if self.bpod is not None else None

    @property
    def trial_end_s(self) -> float | None:
        return self.bpod.trial_end_s if self.bpod is not None else None

    def entry_s(self, state: str) -> float | None:
        """When `state` was last entered in this trial (s from trial start), e.g. the go cue."""
        return self.bpod.last_entry_s(state) if self.bpod is not None else None

    def licks(self, wiring: WiringSettings) -> dict[str, list[float]]:
        """Lick times per side (s from trial start)."""
        if self.bpod is None:
            return {"left": [], "right": []}
        return {"left": self.bpod.event_times(wiring.lick("left")),
                "right": self.bpod.event_times(wiring.lick("right"))}

    # ---- JSON

    def to_json(self) -> dict[str, Any]:
        """The trials.jsonl line, and the published `record`."""
        data: dict[str, Any] = {
            VERSION_KEY: self.version, "trial": self.trial, "subject": self.subject,
            "trial_number": self.trial_number, "side": self.side, "cue": self.cue, "context": self.context,
            "modality": self.modality, "contingency": self.contingency, "mode": self.mode,
            "free_drop": self.free_drop, "stage": dict(self.stage),
            **(self.score.to_json() if self.score is not None else {}),
            "outcome": self.outcome, "abort_reason": self.abort_reason, "stopped": self.stopped,
            "dead_time_s": self.dead_time_s, "reward_ul": self.reward_ul, "valve_time_s": self.valve_time_s,
            "training_events": [dict(e) for e in self.training_events],
            "training": dict(self.training) if self.training is not None else None,
            BPOD_KEY: self.bpod.to_json() if self.bpod is not None else None,
            "host_time": self.host_time,
            "closed_loop": dict(self.closed_loop) if self.closed_loop is not None else None,
        }
        for key in _OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                data[key] = [dict(v) for v in value] if isinstance(value, tuple) else value
        return {**self.extra, **data}

    @classmethod
    def from_json(cls, data: Any) -> TrialRecord:
        """A record from its JSON object; anything that is not one is a TrialRecordError saying what."""
        if not isinstance(data, Mapping):
            raise TrialRecordError(f"a trial record must be a JSON object, got {type(data).__name__}")
        version = _int(data, VERSION_KEY) or 1
        if version > TRIAL_RECORD_VERSION:
            raise TrialRecordError(f"{_where(data)}: record version {version} is newer than this rig reads "
                                   f"(up to {TRIAL_RECORD_VERSION})")
        stage = _mapping(data, "stage") or {}
        bpod = data.get(BPOD_KEY)
        if bpod is not None and not isinstance(bpod, Mapping):
            raise _fail(data, BPOD_KEY, "an object", bpod)
        trial = _int(data, "trial", required=True)
        assert trial is not None
        known = {f.name for f in fields(cls)} | {f.name for f in fields(TrialScore)} | {VERSION_KEY}
        return cls(
            trial=trial, outcome=str(_text(data, "outcome", required=True)), context=_text(data, "context"),
            block=_int(data, "block"), block_label=_text(data, "block_label"), side=_text(data, "side"),
            subject=_text(data, "subject"), trial_number=_int(data, "trial_number"),
            cue=_text(data, "cue"), modality=_text(data, "modality"),
            contingency=_text(data, "contingency"), mode=_text(data, "mode"),
            free_drop=bool(_flag(data, "free_drop")), stage=stage, score=TrialScore.from_json(data),
            abort_reason=_text(data, "abort_reason"), stopped=_flag(data, "stopped", None),
            dead_time_s=_number(data, "dead_time_s"), reward_ul=_number(data, "reward_ul"),
            valve_time_s=_number(data, "valve_time_s"),
            training_events=_objects(data, "training_events") or (),
            training=_mapping(data, "training"),
            bpod=BpodRecord.from_json(bpod, trial) if bpod is not None else None,
            host_time=_text(data, "host_time"), closed_loop=_mapping(data, "closed_loop"),
            pole=_mapping(data, "pole"), lickport=_mapping(data, "lickport"), sounds=_objects(data, "sounds"),
            outputs=_mapping(data, "outputs"),
            outcome_before_abort=_text(data, "outcome_before_abort"), aborted=_flag(data, "aborted", None),
            events_received=_objects(data, "events_received"),
            states_entered=_objects(data, "states_entered"),
            extra={k: v for k, v in data.items() if k not in known}, version=version,
        )


def record_part(record: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """`States` or `Events` of a trial record's JSON (under `bpod`), for readers that keep the JSON
    object as it came; None when the record has no Bpod part or no such object."""
    bpod = record.get(BPOD_KEY)
    value = bpod.get(key) if isinstance(bpod, Mapping) else None
    return value if isinstance(value, Mapping) else None


def spec_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The `TrialRecord` fields of a trial's type and parameters (`TrialSpec.to_dict()`)."""
    names = ("trial_number", "side", "cue", "context", "modality", "contingency", "mode", "free_drop",
             "stage")
    return {name: spec[name] for name in names if name in spec}

