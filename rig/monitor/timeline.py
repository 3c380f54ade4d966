"""The last trial as the Bpod ran it: its states as bars on the trial clock, its input lines (licks, BNC,
soft codes) as ticks at their events, and its output lines (valves, BNC, sounds, the port LED) as the
spans of the states that set them. Plain data from a trial record (and, when the session sent them, the
outputs each state sets), for the timeline panel."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocols.trial_record import TrialRecord

_EDGE = re.compile(r"^(?P<line>.+?)(?:In|Out|High|Low)$")
_IGNORED_EVENTS = ("Tup",)  # every state's timer: the bars show it


@dataclass(frozen=True)
class StateBar:
    name: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class LineMarks:
    """One line's marks: tick times (inputs), or (start, end) spans (outputs, with the value set)."""

    line: str
    times: tuple[float, ...] = ()
    spans: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class TrialTimeline:
    trial: int
    bars: tuple[StateBar, ...]
    inputs: tuple[LineMarks, ...]
    outputs: tuple[LineMarks, ...]

    @property
    def duration_s(self) -> float:
        ends = [b.end_s for b in self.bars] + [t for m in self.inputs for t in m.times]
        return max(ends, default=0.0)

    def state_at(self, t_s: float) -> str | None:
        """The state the trial was in at `t_s` from its start (None outside every state)."""
        for bar in self.bars:
            if bar.start_s <= t_s < bar.end_s:
                return bar.name
        return None


def input_line(event: str) -> str | None:
    """The line an event belongs to: Port1In and Port1Out -> Port1, BNC1High -> BNC1; None for Tup."""
    if event in _IGNORED_EVENTS:
        return None
    match = _EDGE.match(event)
    return match.group("line") if match else event


def trial_timeline(record: TrialRecord, outputs: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> TrialTimeline | None:
    """The timeline of one finished trial; None without its Bpod record. `outputs` (state -> {output:
    value}) come with the session's live trial event; a trial read back from disk has its inputs only."""
    bpod = record.bpod
    if bpod is None:
        return None
    bars = sorted((StateBar(name, float(a), float(b)) for name, visits in bpod.states.items()
                   for a, b in visits if b >= a), key=lambda bar: bar.start_s)
    ticks: dict[str, list[float]] = {}
    for event, times in bpod.events.items():
        line = input_line(event)
        if line is not None and not event.endswith(("Out", "Low")):  # onsets: a lick is its touch
            ticks.setdefault(line, []).extend(float(t) for t in times)
    spans: dict[str, list[tuple[float, float]]] = {}
    for bar in bars:
        for output, value in (outputs or {}).get(bar.name, {}).items():
            if value not in (0, [], None):
                spans.setdefault(str(output), []).append((bar.start_s, bar.end_s))
    return TrialTimeline(
        trial=record.trial, bars=tuple(bars),
        inputs=tuple(LineMarks(line, times=tuple(sorted(t))) for line, t in sorted(ticks.items()) if t),
        outputs=tuple(LineMarks(line, spans=tuple(s)) for line, s in sorted(spans.items())),
    )
