"""The simulated mouse: its decision and learning model alone, then on the real Bpod emulator and client.

The emulator sessions run the task's own state machine (`build_trial`) at high speed and are scored with
the task's own scoring (`score_trial`), so what is checked is what the rig would see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from hardware.bpod.client import BpodClient
from hardware.bpod.emulator import EmulatorServer, TrialRecord, World
from hardware.bpod.hardware_description import preset
from hardware.sim.mouse import (
    CUES,
    MIN_REACTION_TIME_S,
    DecisionModel,
    MouseLines,
    MouseParameters,
    SimulatedMouse,
    naive_mapping,
    trained_mapping,
)
from hardware.sim.pole_motor import SimulatedPoleMotor
from protocols.contexts import SIDES, Context, Side, contexts_from_settings
from protocols.directional_licking import build_trial
from protocols.outcome import ScoredTrial, fraction_correct, score_trial
from protocols.selection import TrialSpec
from protocols.settings import TrainingStage
from rig.session import task_parameters
from rig.settings import load_settings

SETTINGS = load_settings()
TASK = task_parameters(SETTINGS)
CONTEXTS = contexts_from_settings(SETTINGS.contexts)
STAGES = {stage.name: stage for stage in SETTINGS.task.stages}
LINES = MouseLines.from_roles(SETTINGS.wiring.model_dump())
PARAMS = MouseParameters.from_settings(SETTINGS.sim.mouse)
FAST = 100.0  # emulator speed: a 5 s trial in 50 ms


def mapping_of(context: Context, confidence: float = 0.95) -> dict[str, float]:
    """P(right | cue) of a mouse trained on `context`."""
    return trained_mapping({context.cue_for(side): side for side in SIDES}, confidence)


def random_sides(n: int, seed: int) -> list[Side]:
    rng = np.random.default_rng(seed)
    return [SIDES[int(i)] for i in rng.integers(2, size=n)]


def perf(outcomes: Sequence[str]) -> float:
    value = fraction_correct(outcomes)
    assert value is not None
    return value


# -- the decision and learning model, without an emulator -------------------------------------------


def simulate(model: DecisionModel, context: Context, n: int, rng: np.random.Generator) -> list[str]:
    """Trials of random side: the outcome the task would score from the model's choice."""
    outcomes = []
    for _ in range(n):
        side = SIDES[int(rng.integers(2))]
        cue = context.cue_for(side)
        choice = model.choose(cue, rng)
        if choice.side is None:
            outcomes.append("no_response")
            continue
        model.learn(cue, choice.side, rewarded=choice.side == side)
        outcomes.append("hit" if choice.side == side else "error")
    return outcomes


def test_mappings_name_every_cue() -> None:
    assert naive_mapping() == dict.fromkeys(CUES, 0.5)
    tactile = mapping_of(CONTEXTS["tactile"])
    assert tactile == {"pole_anterior": pytest.approx(0.05), "pole_posterior": 0.95,
                       "tone_high": 0.5, "tone_low": 0.5}
    assert mapping_of(CONTEXTS["auditory-reversed"])["tone_high"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="unknown cue 'pole_left'"):
        trained_mapping({"pole_left": "left"})
    with pytest.raises(ValueError, match="P\\(right \\| tone_low\\)"):
        DecisionModel(PARAMS, {"tone_low": 1.5})


def test_parameters_come_from_the_settings_and_are_checked() -> None:
    assert (PARAMS.lick_rate_hz, PARAMS.reaction_time_mean_s, PARAMS.reaction_time_sd_s) == (6.0, 0.3, 0.1)
    assert (PARAMS.early_lick_prob, PARAMS.side_bias, PARAMS.learning_rate, PARAMS.lapse) == (
        0.1, 0, 0.02, 0.05)
    assert MouseParameters.from_settings(SETTINGS.sim.mouse, lapse=0.0).lapse == 0.0
    assert LINES.left_lick == SETTINGS.wiring.left_lick and LINES.go_cue == SETTINGS.wiring.go_cue
    with pytest.raises(ValueError, match="no line for go_cue"):  # the mouse's roles are the wiring's
        MouseLines.from_roles({k: v for k, v in SETTINGS.wiring.model_dump().items() if k != "go_cue"})
    with pytest.raises(ValueError, match="lapse must be in \\[0, 1\\].*side_bias"):
        MouseParameters(lapse=2.0, side_bias=3.0)


@pytest.mark.parametrize("seed", range(5))
def test_trained_mouse_performs_then_reversal_drops_below_chance_and_recovers(seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = DecisionModel(PARAMS, mapping_of(CONTEXTS["tactile"]))
    assert perf(simulate(model, CONTEXTS["tactile"], 200, rng)) > 0.85
    reversed_ = simulate(model, CONTEXTS["tactile-reversed"], 600, rng)
    assert perf(reversed_[:50]) < 0.5  # starts from the old mapping
    trials_to_75 = next(i for i in range(100, 601) if perf(reversed_[i - 100:i]) > 0.75)
    assert 120 < trials_to_75 < 400  # relearned over a few hundred trials, not at once
    assert perf(reversed_[-100:]) > 0.85


def test_a_new_modality_starts_at_chance_and_leaves_the_old_mapping_alone() -> None:
    rng = np.random.default_rng(11)
    model = DecisionModel(PARAMS, mapping_of(CONTEXTS["tactile"]))
    before = dict(model.p_right)
    auditory = simulate(model, CONTEXTS["auditory"], 400, rng)
    assert 0.35 < perf(auditory[:60]) < 0.75
    assert perf(auditory[-100:]) > 0.85
    assert {cue: model.p_right[cue] for cue in ("pole_anterior", "pole_posterior")} == {
        cue: before[cue] for cue in ("pole_anterior", "pole_posterior")}


def test_naive_model_learns_from_chance() -> None:
    finals = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        outcomes = simulate(DecisionModel(PARAMS), CONTEXTS["tactile"], 300, rng)
        finals.append(perf(outcomes[-100:]))
        assert perf(outcomes[:30]) < 0.8
    assert np.mean(finals) > 0.85


def test_side_bias_and_lapses() -> None:
    rng = np.random.default_rng(3)
    right_biased = DecisionModel(MouseParameters(side_bias=1.0, lapse=0.0), mapping_of(CONTEXTS["tactile"]))
    assert {right_biased.choose("pole_anterior", rng).side for _ in range(200)} == {"right"}
    half_left = DecisionModel(MouseParameters(side_bias=-0.5, lapse=0.0))
    assert half_left.p_right_biased("tone_high") == pytest.approx(0.25)
    lapsing = DecisionModel(MouseParameters(lapse=0.2, lapse_no_lick_fraction=0.5),
                            mapping_of(CONTEXTS["tactile"]))
    choices = [lapsing.choose("pole_posterior", rng) for _ in range(4000)]
    assert np.mean([c.lapse for c in choices]) == pytest.approx(0.2, abs=0.025)
    assert np.mean([c.side is None for c in choices]) == pytest.approx(0.1, abs=0.02)
    assert lapsing.p_correct("pole_posterior", "right") == pytest.approx((0.8 * 0.95 + 0.1 * 0.5) / 0.9)


def test_pole_motor_records_moves() -> None:
    motor = SimulatedPoleMotor("anterior", move_time_s=1.2)
    assert motor.move_to("anterior").travel_s == 0.0
    assert motor.move_to("posterior").travel_s == 1.2
    assert (motor.position, motor.moves, motor.total_move_time_s) == ("posterior", 1, 1.2)
    with pytest.raises(ValueError, match="anterior, posterior"):
        motor.move_to("lateral")  # type: ignore[arg-type]


def test_a_long_session_leaves_a_bounded_history_in_the_mouse() -> None:
    """The mouse lives in the rig process: thousands of trials (each with its licks) leave only the most
    recent few hundred in memory. Driven through a world without an engine (outputs as the task makes
    them, licks scheduled and taken off the schedule), so 3000 trials take a moment."""
    world = World(preset("r2", 23))
    mouse = SimulatedMouse(world, PARAMS, LINES, SimulatedPoleMotor(), rng_seed=3,
                           mapping=mapping_of(CONTEXTS["tactile"]))
    index = {name: world.output_names.index(name) for name in (LINES.pole, LINES.go_cue, LINES.left_valve,
                                                                 LINES.right_valve)}
    valve = {"left": LINES.left_valve, "right": LINES.right_valve}
    start = 0
    for trial in range(1, 3001):
        world.trial_event(TrialRecord("start", start, start * 100, trial))
        world.output_changed(start + 100, index[LINES.pole], 1)
        world.output_changed(start + 13_100, index[LINES.pole], 0)
        world.output_changed(start + 26_100, index[LINES.go_cue], 255)
        world.output_changed(start + 27_100, index[LINES.go_cue], 0)
        side = mouse.planned_side
        if side is not None:  # rewarded: the mouse drinks
            world.output_changed(start + 30_000, index[valve[side]], 1)
            world.output_changed(start + 30_500, index[valve[side]], 0)
        world.trial_event(TrialRecord("end", start + 60_000, (start + 60_000) * 100, trial))
        world.apply_inputs(start + 60_000)
        start += 60_001
    assert mouse.counters.trials == 3000 and mouse.counters.licks > 3000
    assert len(mouse.history) <= 500
    assert [t.trial for t in mouse.history][-3:] == [2998, 2999, 3000]
    assert sum(len(t.licks) for t in mouse.history) < mouse.counters.licks / 5


# -- on the emulator -----------------------------------------------------------------------------------


@dataclass
class Session:
    mouse: SimulatedMouse
    specs: list[TrialSpec]
    records: list[dict[str, Any]]
    scored: list[ScoredTrial]
    plans: list[tuple[str | None, Side | None]]

    @property
    def outcomes(self) -> list[str]:
        return [t.outcome for t in self.scored]


def run_session(sides: Sequence[Side], context: Context, stage: TrainingStage, *, seed: int,
                mapping: dict[str, float] | None = None, params: MouseParameters = PARAMS,
                speed: float = FAST, free_drops: Callable[[int], bool] = lambda i: False) -> Session:
    """Trials of the given sides, one after the other, on a fresh emulator with a fresh mouse."""
    plans: list[tuple[str | None, Side | None]] = []
    with EmulatorServer(firmware=23, speed=speed) as server, BpodClient(server.port) as client:
        motor = SimulatedPoleMotor()
        mouse = SimulatedMouse(server.world, params, LINES, motor, seed, mapping=mapping,
                               on_plan=lambda cue, side: plans.append((cue, side)))
        session = Session(mouse, [], [], [], plans)
        for i, side in enumerate(sides, start=1):
            spec = TrialSpec(trial_number=i, side=side, context=context, stage=stage, mode="random",
                             free_drop=free_drops(i))
            if spec.cue.startswith("pole_"):
                motor.move_to(spec.cue.removeprefix("pole_"))  # type: ignore[arg-type]
            record = client.run_trial(build_trial(spec, TASK), timeout_s=20).to_dict()
            session.specs.append(spec)
            session.records.append(record)
            session.scored.append(score_trial(record, side=side, context=context.name, wiring=SETTINGS.wiring,
                                              trial_number=i))
        mouse.close()
    return session


@pytest.fixture(scope="module")
def trained() -> Iterator[Session]:
    """100 full-task trials (sample enforcement, 1.3 s delay, 4 s timeout) of a tactile-trained mouse."""
    yield run_session(random_sides(100, seed=1), CONTEXTS["tactile"], STAGES["full"], seed=7,
                      mapping=mapping_of(CONTEXTS["tactile"]))


def test_trained_mouse_performs_in_its_context(trained: Session) -> None:
    assert perf(trained.outcomes) > 0.8
    counters = trained.mouse.counters
    assert counters.trials == 100
    assert counters.rewards == trained.outcomes.count("hit")
    assert counters.errors == trained.outcomes.count("error")
    assert counters.no_licks == trained.outcomes.count("no_response")
    assert counters.choices_left + counters.choices_right == counters.rewards + counters.errors
    for spec, trial in zip(trained.specs, trained.mouse.history, strict=True):
        assert trial.cue == spec.cue  # it felt the pole where the motor put it


def test_the_plan_is_announced_and_kept(trained: Session) -> None:
    assert len(trained.plans) == 100  # once per trial (no free drops here)
    history, scored_trials = trained.mouse.history, trained.scored
    for (cue, planned), trial, scored in zip(trained.plans, history, scored_trials, strict=True):
        assert (cue, planned) == (trial.cue, trial.planned_side)
        assert scored.licked_side == planned  # None for a no-lick lapse


def test_early_licks_land_in_the_early_lick_states(trained: Session) -> None:
    for trial, scored in zip(trained.mouse.history, trained.scored, strict=True):
        assert tuple(trial.early_lick_epochs) == scored.early_lick_epochs
        assert scored.early_licks == len(trial.early_lick_epochs)  # one lick, one restart
    n_sample = sum("sample" in t.early_lick_epochs for t in trained.scored)
    n_delay = sum("delay" in t.early_lick_epochs for t in trained.scored)
    assert 3 <= n_sample <= 20 and 3 <= n_delay <= 20  # p = 0.1 per epoch over 100 trials
    assert trained.mouse.counters.early_licks_sample == n_sample


def test_reaction_times_follow_the_parameters(trained: Session) -> None:
    measured = []
    go_cue_s = 0.1  # settings.task.timing.response_cue: a lick during the go cue is not the answer
    for trial, scored in zip(trained.mouse.history, trained.scored, strict=True):
        if scored.answered:
            if trial.reaction_time_s >= go_cue_s:
                assert scored.reaction_time_s == pytest.approx(trial.reaction_time_s, abs=1.5e-4)
            else:  # the scored reaction is the first lick of the bout that lands in the answer period
                assert go_cue_s <= scored.reaction_time_s < trial.reaction_time_s + 0.5
            measured.append(trial.reaction_time_s)
    assert min(measured) >= MIN_REACTION_TIME_S - 1e-4
    assert np.mean(measured) == pytest.approx(PARAMS.reaction_time_mean_s, abs=0.035)
    assert np.std(measured) == pytest.approx(PARAMS.reaction_time_sd_s, abs=0.03)


def test_the_mouse_stops_licking_so_trials_end(trained: Session) -> None:
    for record, trial in zip(trained.records, trained.mouse.history, strict=True):
        sequence = record["state_sequence"]
        assert sequence[-1] == "TrialEnd"
        assert sequence.count("StopLicking") <= 4
        last_lick = max(lick.cycle for lick in trial.licks) if trial.licks else trial.start_cycle
        assert trial.end_cycle is not None and trial.end_cycle - last_lick >= 10_000  # 1 s of silence
        if trial.outcome == "reward":  # drinks for about a second, at about the lick rate
            drinking = [lick.cycle for lick in trial.licks if lick.kind in ("answer", "drink")]
            assert 0.4 < (drinking[-1] - drinking[0]) * 1e-4 < 2.0
            rate = (len(drinking) - 1) / ((drinking[-1] - drinking[0]) * 1e-4)
            assert rate == pytest.approx(PARAMS.lick_rate_hz, rel=0.2)
        elif trial.outcome == "error":  # a short bout, then nothing
            assert trial.go_cycle is not None
            assert max(lick.cycle for lick in trial.licks) - trial.go_cycle < 10_000


def test_naive_mouse_starts_at_chance_and_improves() -> None:
    stage = STAGES["sample"]  # 0.3 s delay, 1 s timeout: the short trials of early training
    params = MouseParameters.from_settings(SETTINGS.sim.mouse, expected_delay_s=stage.delay_s)
    session = run_session(random_sides(100, seed=2), CONTEXTS["tactile"], stage, seed=5, params=params)
    # 30-40 trials are too few for the observed hit rate to rise reliably at every seed (it does here,
    # 0.50 -> 0.74); what must hold at any seed is that it is chance-like at first, good later, and that
    # the mapping moved from 0.5 toward the context's (pooled learning curves: the model tests above).
    first, last = perf(session.outcomes[:30]), perf(session.outcomes[-40:])
    assert 0.3 < first < 0.85
    assert last > 0.65
    mapping = session.mouse.mapping
    assert mapping["pole_posterior"] > 0.7 and mapping["pole_anterior"] < 0.3  # posterior -> right
    assert session.mouse.model.p_correct("pole_posterior", "right") > 0.7
    assert mapping["tone_high"] == mapping["tone_low"] == 0.5  # never heard a tone


def test_same_seed_same_licks_at_any_speed() -> None:
    params = MouseParameters.from_settings(SETTINGS.sim.mouse, early_lick_prob=0.3)
    sides = random_sides(8, seed=3)

    def licks(session: Session) -> list[list[tuple[int, str, str, int]]]:
        return [[(lick.cycle - t.start_cycle, lick.side, lick.kind, lick.duration_cycles) for lick in t.licks]
                for t in session.mouse.history]

    def port_events(session: Session) -> list[dict[str, list[float]]]:
        return [{k: v for k, v in r["Events"].items() if k.startswith("Port")} for r in session.records]

    slow = run_session(sides, CONTEXTS["tactile"], STAGES["full"], seed=9, params=params, speed=20)
    fast = run_session(sides, CONTEXTS["tactile"], STAGES["full"], seed=9, params=params, speed=FAST)
    assert licks(slow) == licks(fast)
    assert port_events(slow) == port_events(fast)
    assert [r["state_sequence"] for r in slow.records] == [r["state_sequence"] for r in fast.records]
    kinds = {lick[2] for trial in licks(slow) for lick in trial}
    assert {"answer", "drink"} <= kinds and kinds & {"early_sample", "early_delay"}


def test_tones_are_heard_and_a_free_drop_shows_the_way() -> None:
    # A mouse sure of the wrong tone mapping errs, unless a free drop before the go cue shows the side.
    params = MouseParameters.from_settings(SETTINGS.sim.mouse, lapse=0.0, early_lick_prob=0.0)
    wrong = mapping_of(CONTEXTS["auditory-reversed"], confidence=1.0)
    session = run_session(["right", "right", "left"], CONTEXTS["auditory"], STAGES["full"], seed=1,
                          params=params, mapping=wrong, free_drops=lambda i: i == 2)
    assert [t.cue for t in session.mouse.history] == ["tone_high", "tone_high", "tone_low"]
    assert session.outcomes == ["error", "hit", "error"]
    assert session.scored[1].free_drop
    assert session.plans[1:3] == [("tone_high", "left"), ("tone_high", "right")]  # changed its mind
    assert session.mouse.counters.free_drops == 1
