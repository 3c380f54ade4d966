"""Training stages as data, the subject's progress through them, and context switches at criterion.

The home-cage progression (spec, "Training stages"): sample stage -> antibias -> delay ramp
0.3 -> 0.5 -> 0.8 -> 1.0 -> 1.3 s -> full task. A stage is passed after *more than* `min_trials` trials
in it with performance *above* `perf_threshold` over the last `window` trials: by default, as in the
firmware, rewarded trials among them (no answer is a failure), over the subject's last trials whatever
their stage (`AdvanceCriterion.counts`, `spans_stages`). Passing the last stage
marks the task as learned; from then on the context switches, uncued, each time the subject has done
more than `context_switch.min_trials` trials in the context since it was learned or entered, Perf100 is
above threshold and more than `min_answered_last_100` of the last 100 trials were answered (the lab
firmware's criterion). The experimenter can switch at any time; the request applies at the next trial
boundary, i.e. to the first trial whose parameters are asked for after it. The stages and the switch
criterion are the settings models themselves (`protocols.settings`).

Everything here is pure: `Training` updates a `SubjectTrainingState`, which the rig stores in
subject.json so that the next session continues where this one stopped.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from protocols.contexts import UnknownContextError, unknown_context_message
from protocols.outcome import (
    OUTCOMES,
    PERF_WINDOW,
    Outcome,
    ScoredTrial,
    count_answered,
    fraction_correct,
    fraction_rewarded,
)
from protocols.settings import ContextSwitchSettings, TrainingStage


def switch_criterion_met(switch: ContextSwitchSettings, trials_in_context: int,
                         context_outcomes: Sequence[str]) -> bool:
    """The context-switch criterion on the current context's trials (Perf100 and answered trials)."""
    recent = list(context_outcomes)[-PERF_WINDOW:]
    perf = fraction_correct(recent)
    return (switch.enabled and trials_in_context > switch.min_trials and perf is not None
            and perf > switch.perf_threshold and count_answered(recent) > switch.min_answered_last_100)


class TrainingStateError(ValueError):
    """A stored training state that cannot be continued with these settings."""


@dataclass
class SubjectTrainingState:
    """Where a subject is in training; stored in subject.json between sessions."""

    stage: str
    context: str
    trials_in_stage: int = 0
    trials_in_context: int = 0
    """Trials in the current context since it was entered or, for the first context, since learning."""
    total_trials: int = 0
    task_learned: bool = False
    """The last stage's criterion was met once: automatic context switches are allowed."""
    context_switches: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {outcome: 0 for outcome in OUTCOMES})
    """Outcomes over the subject's whole training."""
    stage_outcomes: list[str] = field(default_factory=list)
    """Most recent outcomes for the stage criterion (as many as the longest window); kept across a stage
    change unless the stage entered starts its window empty (`spans_stages: false`)."""
    context_outcomes: list[str] = field(default_factory=list)
    """Most recent outcomes in the current context (up to 100), for Perf100 and the switch criterion."""
    pending_context: str | None = None
    """An experimenter's switch request not yet applied (kept if the session ends first)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "context": self.context, "trials_in_stage": self.trials_in_stage,
            "trials_in_context": self.trials_in_context, "total_trials": self.total_trials,
            "task_learned": self.task_learned, "context_switches": self.context_switches,
            "counts": dict(self.counts), "stage_outcomes": list(self.stage_outcomes),
            "context_outcomes": list(self.context_outcomes), "pending_context": self.pending_context,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubjectTrainingState:
        """Read a stored state; a wrong key, type or outcome is named rather than silently dropped."""
        allowed = tuple(cls.__dataclass_fields__)
        unknown = [key for key in data if key not in allowed]
        if unknown:
            raise TrainingStateError(f"training state: unknown key {unknown[0]!r} "
                                     f"(keys: {', '.join(allowed)})")
        for key in ("stage", "context"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise TrainingStateError(f"training state: {key} must be a name, got {data.get(key)!r}")
        for key in ("trials_in_stage", "trials_in_context", "total_trials", "context_switches"):
            value = data.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TrainingStateError(f"training state: {key} must be a whole number >= 0, got {value!r}")
        for key in ("stage_outcomes", "context_outcomes"):
            bad = [o for o in data.get(key, []) if o not in OUTCOMES]
            if bad:
                raise TrainingStateError(f"training state: {key} holds {bad[0]!r}; outcomes are "
                                         f"{', '.join(OUTCOMES)}")
        counts = {outcome: 0 for outcome in OUTCOMES} | dict(data.get("counts", {}))
        return cls(stage=data["stage"], context=data["context"],
                   trials_in_stage=data.get("trials_in_stage", 0),
                   trials_in_context=data.get("trials_in_context", 0),
                   total_trials=data.get("total_trials", 0),
                   task_learned=bool(data.get("task_learned", False)),
                   context_switches=data.get("context_switches", 0), counts=counts,
                   stage_outcomes=list(data.get("stage_outcomes", [])),
                   context_outcomes=list(data.get("context_outcomes", [])),
                   pending_context=data.get("pending_context"))


@dataclass(frozen=True)
class TrainingEvent:
    """Something that changed between two trials, for the session log and the GUI."""

    kind: Literal["stage_advanced", "task_learned", "context_switched"]
    before: str
    after: str
    reason: Literal["criterion", "experimenter"]
    total_trials: int


class StageProgress:
    """The current stage of a state, its performance, and the step to the next stage at criterion."""

    def __init__(self, stages: Sequence[TrainingStage], state: SubjectTrainingState) -> None:
        if not stages:
            raise ValueError("training needs at least one stage")
        self.stages = tuple(stages)
        self.state = state
        self.kept = max(stage.advance.window for stage in self.stages)
        names = [stage.name for stage in self.stages]
        if state.stage not in names:
            raise TrainingStateError(f"the subject's stage {state.stage!r} is not in the settings' stages "
                                     f"({', '.join(names)})")

    @property
    def index(self) -> int:
        return [stage.name for stage in self.stages].index(self.state.stage)

    @property
    def stage(self) -> TrainingStage:
        return self.stages[self.index]

    @property
    def is_last(self) -> bool:
        return self.index == len(self.stages) - 1

    @property
    def performance(self) -> float | None:
        """The stage's performance over its window: rewarded among all, or correct among answered."""
        advance = self.stage.advance
        window = self.state.stage_outcomes[-advance.window:]
        return fraction_rewarded(window) if advance.counts == "rewarded" else fraction_correct(window)

    def criterion_met(self) -> bool:
        return self.stage.advance.met(self.state.trials_in_stage, self.performance)

    def record(self, outcome: Outcome) -> TrainingEvent | None:
        """Count one trial in the stage; step to the next stage (or mark the task learned) at criterion."""
        state = self.state
        state.trials_in_stage += 1
        state.stage_outcomes = [*state.stage_outcomes, outcome][-self.kept:]
        if not self.criterion_met():
            return None
        if self.is_last:
            if state.task_learned:
                return None
            state.task_learned = True
            return TrainingEvent("task_learned", state.stage, state.stage, "criterion", state.total_trials)
        before = state.stage
        entered = self.stages[self.index + 1]
        state.stage, state.trials_in_stage = entered.name, 0
        if not entered.advance.spans_stages:
            state.stage_outcomes = []
        return TrainingEvent("stage_advanced", before, state.stage, "criterion", state.total_trials)


class Training:
    """A subject's training: record each finished trial, ask for the next trial's stage and context."""

    def __init__(self, stages: Sequence[TrainingStage], switch: ContextSwitchSettings,
                 contexts: Collection[str], state: SubjectTrainingState) -> None:
        self.contexts = tuple(contexts)
        self.switch = switch
        self.state = state
        self.progress = StageProgress(stages, state)
        for name in (state.context, *([state.pending_context] if state.pending_context else [])):
            if name not in self.contexts:
                raise TrainingStateError(f"the subject's {unknown_context_message(name, self.contexts)}")

    @classmethod
    def start(cls, stages: Sequence[TrainingStage], switch: ContextSwitchSettings, contexts: Collection[str],
              context: str) -> Training:
        """A new subject: first stage, the given (default) context."""
        if not stages:
            raise ValueError("training needs at least one stage")
        return cls(stages, switch, contexts, SubjectTrainingState(stage=stages[0].name, context=context))

    @property
    def stage(self) -> TrainingStage:
        return self.progress.stage

    @property
    def context(self) -> str:
        return self.state.context

    @property
    def perf100(self) -> float | None:
        """Perf100 in the current context."""
        return fraction_correct(self.state.context_outcomes[-PERF_WINDOW:])

    def request_context_switch(self, name: str) -> None:
        """The experimenter's switch: it applies to the next trial started (see `next_trial`)."""
        if name not in self.contexts:
            raise UnknownContextError(unknown_context_message(name, self.contexts))
        self.state.pending_context = name

    def next_trial(self) -> tuple[TrainingStage, str, list[TrainingEvent]]:
        """The stage and context of the trial about to be built; applies a pending switch request first."""
        events: list[TrainingEvent] = []
        pending = self.state.pending_context
        if pending is not None:
            self.state.pending_context = None
            if pending != self.state.context:
                events.append(self._switch_to(pending, "experimenter"))
        return self.stage, self.state.context, events

    def record(self, trial: ScoredTrial) -> list[TrainingEvent]:
        """Count one finished trial; advance the stage or switch the context when a criterion is met."""
        state = self.state
        state.total_trials += 1
        state.counts[trial.outcome] = state.counts.get(trial.outcome, 0) + 1
        events: list[TrainingEvent] = []
        stage_event = self.progress.record(trial.outcome)
        if trial.context == state.context:  # a trial of a context already left does not count for the new one
            state.trials_in_context += 1
            state.context_outcomes = [*state.context_outcomes, trial.outcome][-PERF_WINDOW:]
        if stage_event is not None:
            events.append(stage_event)
            if stage_event.kind == "task_learned":  # context counts start when the full task is learned
                state.trials_in_context, state.context_outcomes = 0, []
        if (state.task_learned and stage_event is None
                and switch_criterion_met(self.switch, state.trials_in_context, state.context_outcomes)):
            target = self.switch.next_context(state.context)
            if target != state.context:
                events.append(self._switch_to(target, "criterion"))
        return events

    def _switch_to(self, name: str, reason: Literal["criterion", "experimenter"]) -> TrainingEvent:
        state = self.state
        before = state.context
        state.context, state.trials_in_context, state.context_outcomes = name, 0, []
        state.context_switches += 1
        return TrainingEvent("context_switched", before, name, reason, state.total_trials)
