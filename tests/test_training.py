"""Training progression through the stages, context switches at criterion, and the stored state."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from protocols.contexts import UnknownContextError
from protocols.outcome import ScoredTrial
from protocols.settings import AdvanceCriterion, ContextSwitchSettings, TrainingStage
from protocols.training import (
    StageProgress,
    SubjectTrainingState,
    Training,
    TrainingEvent,
    TrainingStateError,
)
from rig.settings import Settings

SETTINGS = Settings()
STAGES = tuple(SETTINGS.task.stages)
SWITCH = SETTINGS.task.context_switch
CONTEXTS = tuple(SETTINGS.contexts)


def with_criteria(**update: object) -> tuple[TrainingStage, ...]:
    """The default stages with `update` applied to every stage's criterion (the other setting)."""
    return tuple(s.model_copy(update={"advance": s.advance.model_copy(update=update)}) for s in STAGES)


RESET_AT_STAGE_CHANGE = with_criteria(spans_stages=False)
ANSWERED_ONLY = with_criteria(counts="answered")


def new_training(switch: ContextSwitchSettings = SWITCH) -> Training:
    return Training.start(STAGES, switch, CONTEXTS, SETTINGS.task.default_context)


def learned(context: str = "tactile", switch: ContextSwitchSettings = SWITCH) -> Training:
    """A subject that has passed the last stage, at the start of its context."""
    state = SubjectTrainingState(stage=STAGES[-1].name, context=context, task_learned=True)
    return Training(STAGES, switch, CONTEXTS, state)


def outcomes(pattern: str) -> Iterator[str]:
    """'HHHE' repeated forever: H hit, E error, N no response."""
    names = {"H": "hit", "E": "error", "N": "no_response"}
    while True:
        yield from (names[c] for c in pattern)


def run(training: Training, n: int, pattern: str = "H") -> list[TrainingEvent]:
    """`n` trials in the runner's order: next_trial() before each trial, record() after it."""
    events: list[TrainingEvent] = []
    source = outcomes(pattern)
    for _ in range(n):
        _, context, before = training.next_trial()
        events += before
        events += training.record(ScoredTrial(side="left", context=context, outcome=next(source)))  # type: ignore[arg-type]
    return events


# -- stages ----------------------------------------------------------------------------------------


def test_stages_are_data_from_the_settings() -> None:
    assert [s.name for s in STAGES] == ["sample", "sample-antibias", "delay-0.3", "delay-0.5", "delay-0.8",
                                        "delay-1.0", "delay-1.3", "full"]
    assert [s.delay_s for s in STAGES] == [0.3, 0.3, 0.3, 0.5, 0.8, 1.0, 1.3, 1.3]
    assert [s.selection for s in STAGES][:2] == ["autolearn", "antibias"]
    full_advance = AdvanceCriterion(min_trials=500, perf_threshold=0.70, window=100, counts="answered")
    # as in the firmware: rewarded trials of the last 30, over stage changes; the full task at Perf100
    assert [(s.advance.window, s.advance.counts, s.advance.spans_stages) for s in STAGES[1:-1]] == [
        (30, "rewarded", True)] * (len(STAGES) - 2)
    assert STAGES[-1] == TrainingStage(name="full", delay_s=1.3, timeout_s=4.0, selection="antibias",
                                       sample_enforcement=True, advance=full_advance)
    with pytest.raises(ValueError, match=r"selection\n  Input should be 'antibias', 'autolearn'"):
        TrainingStage(name="x", delay_s=1.0, timeout_s=1.0, selection="blocks",  # type: ignore[arg-type]
                      advance=AdvanceCriterion(min_trials=1, perf_threshold=0.5, window=10))


def test_a_perfect_mouse_climbs_the_whole_ramp_to_the_full_task() -> None:
    training = new_training()
    seen: list[tuple[str, float, int]] = []
    while not training.state.task_learned:
        stage, _, _ = training.next_trial()
        before = training.state.trials_in_stage
        training.record(ScoredTrial(side="right", context="tactile", outcome="hit"))
        if training.state.trials_in_stage == 0 or training.state.task_learned:
            seen.append((stage.name, stage.delay_s, before + 1))
        assert training.state.total_trials < 5000
    # each stage is left after exactly min_trials + 1 trials (more than min_trials)
    assert seen == [(s.name, s.delay_s, s.advance.min_trials + 1) for s in STAGES]
    assert training.stage.name == "full" and training.stage.sample_enforcement
    assert training.state.total_trials == sum(s.advance.min_trials + 1 for s in STAGES)


def test_stage_events_name_the_step() -> None:
    events = run(new_training(), 201)
    assert events == [TrainingEvent("stage_advanced", "sample", "sample-antibias", "criterion", 201)]


def test_a_stage_is_not_passed_at_or_below_its_threshold() -> None:
    state = SubjectTrainingState(stage="delay-0.5", context="tactile")
    training = Training(STAGES, SWITCH, CONTEXTS, state)
    run(training, 400, "HHHHHHHEEE")  # exactly 70 % over any 10 -> not above 0.70
    assert training.stage.name == "delay-0.5"
    assert training.progress.performance == pytest.approx(0.7)
    events = run(training, 30, "HHHHE")  # the window of 30 now reads 80 %
    assert training.stage.name == "delay-0.8"
    assert events[0].kind == "stage_advanced"


def test_the_criterion_looks_at_the_stage_window_only_when_reset_at_a_stage_change() -> None:
    training = Training(RESET_AT_STAGE_CHANGE, SWITCH, CONTEXTS,
                        SubjectTrainingState(stage="delay-0.3", context="tactile"))
    run(training, 71, "E")
    assert training.stage.name == "delay-0.3"
    run(training, 29, "H")  # 100 trials: not more than min_trials yet, and the window holds one error
    assert training.stage.name == "delay-0.3"
    run(training, 1, "H")  # 101 trials, last 30 all hits
    assert training.stage.name == "delay-0.5"
    assert training.state.trials_in_stage == 0 and training.state.stage_outcomes == []


def test_no_response_trials_do_not_count_as_errors_among_answered_trials() -> None:
    progress = StageProgress(ANSWERED_ONLY, SubjectTrainingState(stage="delay-1.0", context="tactile"))
    for outcome in ["hit", "no_response"] * 60:
        progress.record(outcome)  # type: ignore[arg-type]
    assert progress.stage.name == "delay-1.3"


def test_no_response_counts_as_a_failure_among_rewarded_trials() -> None:
    progress = StageProgress(STAGES, SubjectTrainingState(stage="delay-1.0", context="tactile"))
    for outcome in ["hit", "no_response"] * 60:
        progress.record(outcome)  # type: ignore[arg-type]
    assert progress.stage.name == "delay-1.0"  # 50 % rewarded: not above 70 %
    assert progress.performance == pytest.approx(0.5)
    for outcome in ["hit", "hit", "hit", "hit", "no_response"] * 6:
        progress.record(outcome)  # type: ignore[arg-type]
    assert progress.stage.name == "delay-1.3"  # 80 % of the last 30 rewarded


def test_the_window_carries_over_a_stage_change() -> None:
    def stages(spans: bool) -> tuple[TrainingStage, ...]:
        def stage(name: str, min_trials: int, threshold: float, window: int) -> TrainingStage:
            advance = AdvanceCriterion(min_trials=min_trials, perf_threshold=threshold, window=window)
            if not spans:
                advance = advance.model_copy(update={"spans_stages": False})
            return TrainingStage(name=name, delay_s=0.3, timeout_s=1.0, selection="antibias", advance=advance)
        return stage("a", 10, 0.5, 10), stage("b", 5, 0.8, 20), stage("c", 5, 0.8, 20)

    for spans, after_b in ((True, "b"), (False, "c")):
        state = SubjectTrainingState(stage="a", context="tactile")
        training = Training(stages(spans), SWITCH, CONTEXTS, state)
        run(training, 5, "E")
        run(training, 6, "H")  # 11 trials, 60 % of the last 10: on to b
        assert training.stage.name == "b"
        run(training, 6, "H")  # 6 hits in b; with a's trials, 12 of the last 17 (71 %)
        assert training.stage.name == after_b, spans


# -- context switches ------------------------------------------------------------------------------


def test_learning_the_task_starts_the_context_count() -> None:
    state = SubjectTrainingState(stage="full", context="tactile", trials_in_context=2000)
    training = Training(STAGES, SWITCH, CONTEXTS, state)
    events = run(training, 501)
    assert [e.kind for e in events] == ["task_learned"]
    assert training.state.trials_in_context == 0 and training.context == "tactile"


def test_context_switches_at_criterion_not_before() -> None:
    training = learned()
    assert run(training, 300) == []  # 300 trials is not more than 300
    events = run(training, 1)
    assert events == [TrainingEvent("context_switched", "tactile", "tactile-reversed", "criterion", 301)]
    assert (training.context, training.state.trials_in_context, training.state.context_switches) == (
        "tactile-reversed", 0, 1)
    # the sequence wraps around: 1 -> 2 -> 1'
    events = run(training, 301, "HHHHE")
    assert [(e.before, e.after) for e in events] == [("tactile-reversed", "tactile")]


def test_no_switch_at_or_below_the_perf100_threshold() -> None:
    training = learned()
    run(training, 1000, "HHHE")  # Perf100 = 75 %, not above 0.75
    assert training.context == "tactile"
    assert training.perf100 == pytest.approx(0.75)


def test_no_switch_when_too_few_of_the_last_100_are_answered() -> None:
    training = learned()
    pattern = "N" * 30 + "H" * 70  # 70 answered in every 100: not more than 70
    run(training, 1000, pattern)
    assert training.context == "tactile"
    run(training, 100, "N" + "H" * 99)  # one unanswered trial fewer in the window: 71 answered
    assert training.context == "tactile-reversed"


def test_no_automatic_switch_before_the_task_is_learned_or_when_disabled() -> None:
    training = Training(STAGES, SWITCH, CONTEXTS, SubjectTrainingState(stage="delay-1.3", context="tactile"))
    run(training, 100)
    assert training.context == "tactile"
    off = ContextSwitchSettings(enabled=False, min_trials=300, perf_threshold=0.75, min_answered_last_100=70,
                                sequence=["tactile", "tactile-reversed"])
    training = learned(switch=off)
    run(training, 2000)
    assert training.context == "tactile"


def test_next_context_from_outside_the_sequence_is_the_first_of_it() -> None:
    assert SWITCH.next_context("tactile") == "tactile-reversed"
    assert SWITCH.next_context("tactile-reversed") == "tactile"
    assert SWITCH.next_context("auditory") == "tactile"


def test_experimenter_switch_applies_at_the_next_trial() -> None:
    training = learned()
    run(training, 10)
    training.request_context_switch("auditory")
    assert training.context == "tactile"  # the running trial keeps its context
    training.record(ScoredTrial(side="left", context="tactile", outcome="hit"))  # it ends
    assert training.context == "tactile"
    stage, context, events = training.next_trial()
    assert (stage.name, context) == ("full", "auditory")
    assert events == [TrainingEvent("context_switched", "tactile", "auditory", "experimenter", 11)]
    assert training.state.trials_in_context == 0 and training.state.pending_context is None
    assert training.next_trial()[2] == []  # applied once


def test_a_trial_of_the_left_context_does_not_count_for_the_new_one() -> None:
    training = learned()
    training.request_context_switch("auditory-reversed")
    training.next_trial()  # the runner may build the next trial before the previous one is recorded
    training.record(ScoredTrial(side="left", context="tactile", outcome="hit"))
    assert training.state.trials_in_context == 0 and training.state.context_outcomes == []
    assert training.state.total_trials == 1


def test_unknown_switch_request_names_the_contexts() -> None:
    with pytest.raises(UnknownContextError, match="did you mean 'auditory'.*contexts: tactile"):
        learned().request_context_switch("auditry")


# -- the stored state ------------------------------------------------------------------------------


def test_state_round_trips_through_json_and_training_continues() -> None:
    training = new_training()
    run(training, 450, "HHHE")
    training.request_context_switch("auditory")
    stored = json.loads(json.dumps(training.state.to_dict()))
    restored = SubjectTrainingState.from_dict(stored)
    assert restored == training.state
    assert restored.pending_context == "auditory"
    again = Training(STAGES, SWITCH, CONTEXTS, restored)
    assert again.stage == training.stage and again.progress.performance == training.progress.performance
    assert again.next_trial()[1] == "auditory"  # the request survives the restart


def test_a_new_subject_starts_at_the_first_stage() -> None:
    state = new_training().state
    assert state.to_dict() == {
        "stage": "sample", "context": "tactile", "trials_in_stage": 0, "trials_in_context": 0,
        "total_trials": 0, "task_learned": False, "context_switches": 0,
        "counts": {"hit": 0, "error": 0, "no_response": 0, "aborted": 0},
        "stage_outcomes": [], "context_outcomes": [], "pending_context": None,
    }
    assert SubjectTrainingState.from_dict({"stage": "sample", "context": "tactile"}) == state


@pytest.mark.parametrize(("data", "message"), [
    ({"stage": "sample", "context": "tactile", "stage_name": "x"}, "unknown key 'stage_name'"),
    ({"stage": "sample"}, "context must be a name"),
    ({"stage": "sample", "context": "tactile", "total_trials": -1}, "total_trials must be a whole number"),
    ({"stage": "sample", "context": "tactile", "stage_outcomes": ["hit", "win"]}, "holds 'win'"),
])
def test_a_bad_stored_state_is_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(TrainingStateError, match=message):
        SubjectTrainingState.from_dict(data)


def test_a_state_that_does_not_fit_the_settings_is_refused() -> None:
    with pytest.raises(TrainingStateError, match=r"'delay-2.0' is not in the settings' stages \(sample, "):
        Training(STAGES, SWITCH, CONTEXTS, SubjectTrainingState(stage="delay-2.0", context="tactile"))
    with pytest.raises(TrainingStateError, match="unknown context 'olfactory'"):
        Training(STAGES, SWITCH, CONTEXTS, SubjectTrainingState(stage="full", context="olfactory"))
