"""Scoring a finished trial from the states it visited, and performance over trials (Perf100).

A trial's outcome is read from the states of the directional-licking task, as in the lab's analysis:
`hit` if Reward was visited, `error` if TimeOut was, `no_response` if NoResponse was. Early licks are a
flag (EarlyLickSample or EarlyLickDelay visited), not an outcome. The input is the plain trial record
the Bpod client writes (`TrialResult.to_dict()`: `state_sequence`, `States` {name: [[start, end], ..]},
`Events` {name: [times]}, times in seconds from trial start), so scoring needs no hardware module and
works the same on a stored `trials.jsonl` line.

Performance is the fraction correct among answered trials (hits / (hits + errors)); no-response trials
are left out of it and counted separately, because a sated mouse that stops licking has not forgotten
the task. Perf100 is that fraction over the last 100 trials.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from protocols.contexts import Side, check_side, other_side
from protocols.directional_licking import (
    ANSWER_EPOCH,
    BOTH_REWARDED_STATE,
    EARLY_LICK_STATES,
    FREE_DROP_STATES,
    GO_CUE_EPOCH,
    NO_RESPONSE,
    REWARD,
    TIMEOUT,
)
from protocols.settings import WiringSettings

Outcome = Literal["hit", "error", "no_response", "aborted"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)
ANSWERED: tuple[str, ...] = ("hit", "error")
PERF_WINDOW = 100
"""Perf100: the number of recent trials the paper's running performance is computed over."""



@dataclass(frozen=True)
class ScoredTrial:
    """What a finished trial means for the task: the record selection, training and plots work from."""

    side: Side
    """The correct side (the trial type)."""
    context: str
    outcome: Outcome
    licked_side: Side | None = None
    """The side of the lick that answered (None without an answer)."""
    reaction_time_s: float | None = None
    """First lick after go-cue onset, up to the end of the answer period (s)."""
    early_lick: bool = False
    early_lick_epochs: tuple[str, ...] = ()
    """Epochs ('sample', 'delay') with at least one early lick, in the order first seen."""
    early_licks: int = 0
    """Number of early-lick restarts (visits to EarlyLickSample + EarlyLickDelay)."""
    free_drop: bool = False
    rewarded: bool = False
    """Water was given for the answer (Reward, or RewardOtherSide when both ports are rewarded)."""
    trial_number: int | None = None

    def __post_init__(self) -> None:
        check_side(self.side)
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {self.outcome!r}")

    @property
    def answered(self) -> bool:
        return self.outcome in ANSWERED

    @property
    def correct(self) -> bool:
        return self.outcome == "hit"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["early_lick_epochs"] = list(self.early_lick_epochs)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoredTrial:
        fields = dict(data)
        fields["early_lick_epochs"] = tuple(fields.get("early_lick_epochs", ()))
        return cls(**fields)


def score_trial(result: Mapping[str, Any], *, side: Side, context: str, wiring: WiringSettings,
                trial_number: int | None = None) -> ScoredTrial:
    """Score one finished trial from its record (`state_sequence`, `States`, `Events`)."""
    check_side(side)
    visited = visited_states(result)
    if REWARD in visited:
        outcome: Outcome = "hit"
        licked: Side | None = side
    elif TIMEOUT in visited or BOTH_REWARDED_STATE in visited:
        outcome, licked = "error", other_side(side)
    elif NO_RESPONSE in visited:
        outcome, licked = "no_response", None
    else:
        outcome, licked = "aborted", None
    states: Mapping[str, Any] = result.get("States", {})
    epochs = tuple(epoch for state, epoch in EARLY_LICK_STATES.items() if state in visited)
    early_licks = sum(len(_intervals(states, state)) for state in EARLY_LICK_STATES)
    return ScoredTrial(
        side=side, context=context, outcome=outcome, licked_side=licked,
        reaction_time_s=reaction_time(result, wiring) if outcome in ANSWERED else None,
        early_lick=bool(epochs), early_lick_epochs=epochs, early_licks=early_licks,
        free_drop=any(state in visited for state in FREE_DROP_STATES),
        rewarded=REWARD in visited or BOTH_REWARDED_STATE in visited, trial_number=trial_number,
    )


def visited_states(result: Mapping[str, Any]) -> set[str]:
    """Names of the states entered; MATLAB-style records list unvisited states with NaN times."""
    if "state_sequence" in result:
        return set(result["state_sequence"])
    states: Mapping[str, Any] = result.get("States", {})
    return {name for name in states if _intervals(states, name)}


def reaction_time(result: Mapping[str, Any], wiring: WiringSettings) -> float | None:
    """Time from go-cue onset to the lick that answered: the first lick in the answer period (s).
    Licks during the go cue itself are ignored by the task, so they are not the answer."""
    states: Mapping[str, Any] = result.get("States", {})
    cues = _intervals(states, GO_CUE_EPOCH)
    answers = _intervals(states, ANSWER_EPOCH)
    if not cues or not answers:
        return None
    go = cues[0][0]
    start, end = answers[0]
    events: Mapping[str, Sequence[float]] = result.get("Events", {})
    licks = [t for name in (wiring.lick("left"), wiring.lick("right")) for t in events.get(name, ())
             if start <= t <= end]
    return min(licks) - go if licks else None


def _intervals(states: Mapping[str, Any], name: str) -> list[tuple[float, float]]:
    """Finite [start, end] visits of a state (a single [start, end] pair is accepted too)."""
    raw = states.get(name)
    if not raw:
        return []
    pairs = [raw] if isinstance(raw[0], (int, float)) else raw
    return [(float(a), float(b)) for a, b in pairs if not (math.isnan(float(a)) or math.isnan(float(b)))]


# -- performance --------------------------------------------------------------------------------------


def fraction_correct(outcomes: Iterable[str]) -> float | None:
    """Hits / (hits + errors); None when nothing was answered (so 'no data' is never read as 0 %)."""
    hits = errors = 0
    for outcome in outcomes:
        hits += outcome == "hit"
        errors += outcome == "error"
    return hits / (hits + errors) if hits + errors else None


def fraction_rewarded(outcomes: Iterable[str]) -> float | None:
    """Hits among all trials, a trial without an answer counting as a failure (the firmware's stage
    performance); None for no trials."""
    done = [outcome for outcome in outcomes if outcome != "aborted"]
    return sum(outcome == "hit" for outcome in done) / len(done) if done else None


def count_answered(outcomes: Iterable[str]) -> int:
    return sum(outcome in ANSWERED for outcome in outcomes)


class PerformanceTracker:
    """Running performance of a session, updated trial by trial: overall, per side, per context.

    A window of `n` trials with a side or context filter means the last `n` trials *of that side or
    context*, so a context's Perf100 after a switch never mixes in the previous context. A live session
    keeps only the last `keep` trials (its windows are far shorter), so months of trials do not pile up
    in memory; a summary of a whole session keeps all (`keep=None`).
    """

    def __init__(self, trials: Iterable[ScoredTrial] = (), *, keep: int | None = None) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1 trial, got {keep}")
        self._trials: deque[ScoredTrial] = deque(trials, maxlen=keep)

    def add(self, trial: ScoredTrial) -> None:
        self._trials.append(trial)

    def __len__(self) -> int:
        return len(self._trials)

    @property
    def trials(self) -> tuple[ScoredTrial, ...]:
        return tuple(self._trials)

    def last(self, n: int | None = None, *, side: Side | None = None,
             context: str | None = None) -> list[ScoredTrial]:
        """The last `n` trials (all when None) matching the filters, oldest first."""
        if n is not None and n < 1:
            raise ValueError(f"a window must be at least 1 trial, got {n}")
        picked: list[ScoredTrial] = []
        for trial in reversed(self._trials):
            if (side is None or trial.side == side) and (context is None or trial.context == context):
                picked.append(trial)
                if n is not None and len(picked) == n:
                    break
        picked.reverse()
        return picked

    def performance(self, last: int | None = None, *, side: Side | None = None,
                    context: str | None = None) -> float | None:
        """Fraction correct among answered trials of the last `last` trials (all trials when None)."""
        return fraction_correct(t.outcome for t in self.last(last, side=side, context=context))

    def perf100(self, *, side: Side | None = None, context: str | None = None) -> float | None:
        """Perf100: fraction correct among answered trials of the last 100."""
        return self.performance(PERF_WINDOW, side=side, context=context)

    def answered_last(self, n: int, *, side: Side | None = None, context: str | None = None) -> int:
        """How many of the last `n` trials were answered (hit or error)."""
        return count_answered(t.outcome for t in self.last(n, side=side, context=context))

    def counts(self, *, side: Side | None = None, context: str | None = None) -> dict[str, int]:
        """Trials per outcome, plus early-lick and free-drop trials."""
        trials = self.last(None, side=side, context=context)
        counts = {outcome: 0 for outcome in OUTCOMES}
        for trial in trials:
            counts[trial.outcome] += 1
        counts["early_lick"] = sum(t.early_lick for t in trials)
        counts["free_drop"] = sum(t.free_drop for t in trials)
        return counts
