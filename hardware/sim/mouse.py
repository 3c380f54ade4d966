"""A simulated mouse doing the directional-licking task on the Bpod emulator.

The mouse lives in the emulator's world: it senses the Bpod's outputs (pole raised, sample tones, go
cue, valves; the tones either from the tone lines or, given a `Hearing`, from the emulated HiFi module's
plays) and answers with licks, scheduled as input pulses at future engine cycles. Everything it
does is timed from the cycles of the output records and drawn from one seeded generator inside the
engine's listeners, so a given seed gives the same licks (relative to each trial's start) at any
emulator speed.

What it knows is only cues and rewards, never the context: a probability P(right | cue) per cue
(pole_anterior, pole_posterior, tone_high, tone_low), chosen from when the cue is sensed (so the planned
lick is known during the delay, for the simulated microscope's preparatory activity) and updated after
each trial it answered: a reward moves P toward the licked side, an error (no water before the trial
ended) away from it, by `learning_rate` of the remaining distance. A contingency reversal therefore
starts from the old mapping and is relearned over a few hundred trials, and a new modality starts at
chance for its cues. That is `DecisionModel`, one mapping; the simulated rig's mouse is a `Subject`
(hardware/sim/subject.py): latent task states, each a mapping and a population pattern, with drifting
bias, win-stay / lose-shift and satiety.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

import numpy as np

from hardware.pole_motor import PoleSensor
from hardware.settings import MouseSimSettings

if TYPE_CHECKING:
    from hardware.bpod.emulator.world import OutputRecord, TrialRecord, World
    from hardware.sim.hearing import Hearing

log = logging.getLogger(__name__)

Side = Literal["left", "right"]
SIDES: tuple[Side, Side] = ("left", "right")
Cue = Literal["pole_anterior", "pole_posterior", "tone_high", "tone_low"]
CUES: tuple[str, ...] = get_args(Cue)
LickKind = Literal["early_sample", "early_delay", "answer", "drink"]
TrialOutcome = Literal["reward", "error", "no_lick"]

MIN_REACTION_TIME_S = 0.08
"""Reaction times are clipped here: faster 'reactions' would be anticipation, not a response."""
MIN_LICK_GAP_CYCLES = 20
"""A lick port must read low for a while between two licks, or the second lick is not an edge."""
EARLY_LICK_WINDOW = (0.1, 0.85)
"""Early licks land in this fraction of the expected epoch, so a slightly wrong estimate stays inside."""
DRINKING_JITTER = (0.7, 1.3)
"""Drinking lasts `drinking_s` times a factor from this range: sometimes into StopLicking, mostly not."""
LICK_INTERVAL_JITTER = (0.85, 1.15)
HISTORY_LENGTH = 200
"""Trials kept for inspection (`history`, each with its licks): the mouse runs inside the rig process, so a
session of thousands of trials keeps only the most recent."""


@dataclass(frozen=True)
class MouseParameters:
    """How the mouse licks, errs and learns (`settings.sim.mouse` plus behaviour constants)."""

    lick_rate_hz: float = 6.0
    reaction_time_mean_s: float = 0.3
    reaction_time_sd_s: float = 0.1
    early_lick_prob: float = 0.1
    """Probability of one early lick, per sample and per delay epoch."""
    side_bias: float = 0.0
    """-1 always left, +1 always right, 0 none (applied on top of the learned mapping)."""
    learning_rate: float = 0.02
    """Fraction of the way to the target probability moved after each answered trial."""
    lapse: float = 0.05
    """Probability of ignoring the mapping: a random side or no lick at all."""
    lapse_no_lick_fraction: float = 0.5
    """Of the lapses, the fraction that are no lick (-> NoResponse) rather than a random side."""
    max_confidence: float = 0.95
    """Learning saturates here: even a trained mouse picks the wrong side sometimes."""
    lick_duration_s: tuple[float, float] = (0.02, 0.04)
    """Tongue contact on the port, drawn uniformly in this range."""
    answer_bout_licks: tuple[int, int] = (2, 4)
    """Licks after the go cue before the mouse knows whether water came (inclusive range); at least 2,
    so the bout reaches the answer period even when the first lick falls inside the go cue."""
    drinking_s: float = 1.0
    """After a reward the mouse keeps licking for about this long, then stops."""
    expected_sample_s: float = 1.3
    """Sample and delay lengths the mouse expects until it has timed them itself (early-lick timing)."""
    expected_delay_s: float = 1.3
    follows_free_drop: bool = True
    """A free drop before the go cue makes the mouse lick that side (it finds the water)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.lick_rate_hz > 0:
            problems.append(f"lick_rate_hz must be > 0, got {self.lick_rate_hz}")
        if not self.reaction_time_mean_s > 0 or self.reaction_time_sd_s < 0:
            problems.append("reaction time needs mean > 0 and sd >= 0")
        for name in ("early_lick_prob", "learning_rate", "lapse", "lapse_no_lick_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not -1 <= self.side_bias <= 1:
            problems.append(f"side_bias must be in [-1, 1], got {self.side_bias}")
        if not 0.5 <= self.max_confidence <= 1:
            problems.append(f"max_confidence must be in [0.5, 1], got {self.max_confidence}")
        lo, hi = self.lick_duration_s
        if not 0 < lo <= hi:
            problems.append(f"lick_duration_s must be 0 < low <= high, got {self.lick_duration_s}")
        if not 2 <= self.answer_bout_licks[0] <= self.answer_bout_licks[1]:
            problems.append(f"answer_bout_licks must be 2 <= low <= high, got {self.answer_bout_licks}")
        if self.drinking_s < 0 or self.expected_sample_s <= 0 or self.expected_delay_s <= 0:
            problems.append("drinking_s must be >= 0 and the expected epoch lengths > 0")
        if problems:
            raise ValueError("bad mouse parameters: " + "; ".join(problems))

    @classmethod
    def from_settings(cls, mouse: MouseSimSettings, **overrides: Any) -> MouseParameters:
        """From `settings.sim.mouse`, with the behaviour constants (or `overrides`)."""
        values: dict[str, Any] = {
            "lick_rate_hz": mouse.lick_rate_hz, "reaction_time_mean_s": mouse.reaction_time_s.mean,
            "reaction_time_sd_s": mouse.reaction_time_s.sd, "early_lick_prob": mouse.early_lick_prob,
            "side_bias": mouse.side_bias, "learning_rate": mouse.learning_rate, "lapse": mouse.lapse,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def lick_interval_s(self) -> float:
        return 1.0 / self.lick_rate_hz


@dataclass(frozen=True)
class MouseLines:
    """The Bpod lines the mouse touches, by role: the roles and lines of `settings.wiring`, which declares
    them (protocols/settings.py); the mouse only names the roles it uses."""

    left_lick: str
    right_lick: str
    left_valve: str
    right_valve: str
    pole: str
    sample_tone_high: str
    sample_tone_low: str
    go_cue: str

    @classmethod
    def from_roles(cls, roles: Mapping[str, str]) -> MouseLines:
        """From role -> line (`settings.wiring.model_dump()`; hardware does not import protocols)."""
        missing = [role for role in cls.__dataclass_fields__ if role not in roles]
        if missing:
            raise ValueError(f"the wiring has no line for {', '.join(missing)}")
        return cls(**{role: roles[role] for role in cls.__dataclass_fields__})


def naive_mapping() -> dict[str, float]:
    """P(right | cue) of a mouse that has learned nothing: chance for every cue."""
    return dict.fromkeys(CUES, 0.5)


def trained_mapping(rewarded_sides: Mapping[str, Side], confidence: float = 0.95,
                    base: Mapping[str, float] | None = None) -> dict[str, float]:
    """P(right | cue) of a mouse trained on a context, given as {cue: rewarded side} (e.g. from
    `Context.rewarded_side`); cues not named keep `base` (default: chance)."""
    mapping = dict(base) if base is not None else naive_mapping()
    for cue, side in rewarded_sides.items():
        _check_cue(cue)
        if side not in SIDES:
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        mapping[cue] = confidence if side == "right" else 1.0 - confidence
    return mapping


@dataclass(frozen=True)
class Choice:
    """What the mouse means to do this trial: a side, or None for no lick."""

    side: Side | None
    lapse: bool


class DecisionModel:
    """P(right | cue) per cue, learned from reward: all the mouse knows of the task.

    Pure (the random source is passed in), so learning curves can be tested without an emulator.
    """

    def __init__(self, params: MouseParameters, mapping: Mapping[str, float] | None = None) -> None:
        self.params = params
        self.p_right: dict[str, float] = naive_mapping()
        for cue, p in (mapping or {}).items():
            _check_cue(cue)
            if not 0 <= p <= 1:
                raise ValueError(f"P(right | {cue}) must be in [0, 1], got {p}")
            self.p_right[cue] = float(p)

    def p_right_biased(self, cue: str | None) -> float:
        """P(right) for a cue (chance for an unknown cue), pulled toward a side by `side_bias`."""
        p = 0.5 if cue is None else self.p_right[cue]
        bias = self.params.side_bias
        return p + bias * (1.0 - p) if bias >= 0 else p * (1.0 + bias)

    def choose(self, cue: str | None, rng: np.random.Generator) -> Choice:
        """Draw this trial's intent (always three draws, so the random stream does not depend on it)."""
        u_lapse, u_kind, u_side = rng.random(3)
        if u_lapse < self.params.lapse:
            if u_kind < self.params.lapse_no_lick_fraction:
                return Choice(None, lapse=True)
            return Choice("right" if u_side < 0.5 else "left", lapse=True)
        return Choice("right" if u_side < self.p_right_biased(cue) else "left", lapse=False)

    def learn(self, cue: str | None, side: Side, rewarded: bool) -> None:
        """Reward strengthens the licked side for this cue; an error shifts toward the other side."""
        if cue is None:
            return
        toward_right = (side == "right") == rewarded
        confidence = self.params.max_confidence
        target = confidence if toward_right else 1.0 - confidence
        p = self.p_right[cue]
        self.p_right[cue] = p + self.params.learning_rate * (target - p)

    def p_correct(self, cue: str, rewarded_side: Side) -> float:
        """Expected fraction correct among answered trials of `cue` (lapses and bias included)."""
        p = self.p_right_biased(cue)
        p_side = p if rewarded_side == "right" else 1.0 - p
        engaged = 1.0 - self.params.lapse
        guessing = self.params.lapse * (1.0 - self.params.lapse_no_lick_fraction)
        return (engaged * p_side + guessing * 0.5) / (engaged + guessing)


class Learner(Protocol):
    """What decides and learns for the mouse: `DecisionModel`, or `hardware.sim.subject.Subject`."""

    @property
    def p_right(self) -> dict[str, float]: ...

    def choose(self, cue: str | None, rng: np.random.Generator) -> Choice: ...

    def learn(self, cue: str | None, side: Side, rewarded: bool) -> object: ...


@dataclass(frozen=True)
class Lick:
    """One lick: onset on the engine clock, side, why it happened, and how long the port read high."""

    cycle: int
    side: Side
    kind: LickKind
    duration_cycles: int


@dataclass
class MouseTrial:
    """What the mouse did and experienced in one Bpod trial (cycles on the engine clock)."""

    trial: int | None
    start_cycle: int
    cue: str | None = None
    cue_cycle: int | None = None
    cue_off_cycle: int | None = None
    delay_end_cycle: int | None = None
    planned_side: Side | None = None
    lapse: bool = False
    free_drop_side: Side | None = None
    go_cycle: int | None = None
    answer_side: Side | None = None
    reaction_time_s: float | None = None
    rewarded: bool = False
    outcome: TrialOutcome | None = None
    early_lick_epochs: list[str] = field(default_factory=list)
    licks: list[Lick] = field(default_factory=list)
    end_cycle: int | None = None


@dataclass
class MouseCounters:
    """Running totals, for tests and the session summary."""

    trials: int = 0
    """Trials that ended."""
    cues: int = 0
    choices_left: int = 0
    """Answer bouts started on the left (after the go cue)."""
    choices_right: int = 0
    no_licks: int = 0
    """Go cues the mouse did not answer."""
    lapses: int = 0
    rewards: int = 0
    errors: int = 0
    early_licks_sample: int = 0
    early_licks_delay: int = 0
    free_drops: int = 0
    licks: int = 0


class SimulatedMouse:
    """Licks in the emulator's world in response to its outputs, and learns from the water it gets.

    `on_plan(cue, side)` is called when the mouse has decided (side None = it will not lick), and again
    if a free drop changes its mind; `on_lick(cycle, side)` for every lick when it is scheduled (the
    cycle may be in the future). Both run in the engine thread; the simulated microscope uses them.
    """

    def __init__(self, world: World, params: MouseParameters, lines: MouseLines,
                 motor: PoleSensor | None = None, rng_seed: int | None = None, *,
                 mapping: Mapping[str, float] | None = None,
                 on_plan: Callable[[str | None, Side | None], None] | None = None,
                 on_lick: Callable[[int, Side], None] | None = None,
                 hearing: Hearing | None = None, model: Learner | None = None,
                 on_trial_end: Callable[[MouseTrial], None] | None = None) -> None:
        self.world = world
        self.params = params
        self.lines = lines
        self.motor = motor
        self.model: Learner = model if model is not None else DecisionModel(params, mapping)
        self.on_plan = on_plan
        self.on_trial_end = on_trial_end
        self.on_lick = on_lick
        self.counters = MouseCounters()
        self.history: deque[MouseTrial] = deque(maxlen=HISTORY_LENGTH)
        self._rng = np.random.default_rng(rng_seed)
        self._cycles_per_s = 1e6 / world.hw.cycle_us
        self._lick_line: dict[Side, str] = {"left": lines.left_lick, "right": lines.right_lick}
        self._valve_side: dict[str, Side] = {lines.left_valve: "left", lines.right_valve: "right"}
        self._cue_lines = {lines.pole, lines.sample_tone_high, lines.sample_tone_low}
        self._cue_levels: dict[str, int] = dict.fromkeys(self._cue_lines, 0)
        self._sample_estimate_s = params.expected_sample_s
        self._delay_estimate_s = params.expected_delay_s
        self._trial: MouseTrial | None = None
        self._now = 0
        self._free_cycle = 0  # earliest onset of the next lick (one tongue, no overlapping pulses)
        self._last_onset: int | None = None
        self._closed = False
        world.add_output_listener(self._on_output)
        world.add_trial_listener(self._on_trial)
        if hearing is not None:
            hearing.add_listener(self._on_sound, self._on_sound_end)

    # -- what others read ---------------------------------------------------------------------------

    @property
    def planned_side(self) -> Side | None:
        """The side the mouse means to lick in the current trial (None: undecided or no lick)."""
        return self._trial.planned_side if self._trial is not None else None

    @property
    def current_trial(self) -> MouseTrial | None:
        return self._trial

    @property
    def mapping(self) -> dict[str, float]:
        """P(right | cue), as learned so far (a copy)."""
        return dict(self.model.p_right)

    @property
    def expected_epochs_s(self) -> tuple[float, float]:
        """The sample and delay lengths the mouse expects (timed on its last clean trial)."""
        return self._sample_estimate_s, self._delay_estimate_s

    def close(self) -> None:
        """Stop listening to the world (licks already scheduled still happen)."""
        self._closed = True
        self.world.remove_output_listener(self._on_output)
        self.world.remove_trial_listener(self._on_trial)

    # -- listeners (engine thread) -----------------------------------------------------------------

    def _on_trial(self, record: TrialRecord) -> None:
        self._now = record.cycle
        if record.kind == "start":
            if self._trial is not None:  # a trial whose end we never saw
                self._finish(record.cycle)
            self._trial = MouseTrial(trial=record.trial, start_cycle=record.cycle)
        elif self._trial is not None:
            self._finish(record.cycle)

    def _on_sound(self, name: str, cycle: int) -> None:
        """A sound the mouse hears start (`Hearing`): a sample tone or the go cue."""
        if self._closed:
            return
        self._now = cycle
        if name == "go_cue":
            self._go(cycle)
        elif name in CUES:
            self._cue_on(name, cycle)

    def _on_sound_end(self, name: str, cycle: int) -> None:
        if not self._closed and name in CUES:
            self._now = cycle
            self._cue_off(cycle)

    def _on_output(self, record: OutputRecord) -> None:
        self._now = record.cycle
        channel, on = record.channel, record.value != 0
        if channel in self._cue_lines:
            was_on = any(self._cue_levels.values())
            self._cue_levels[channel] = int(on)
            if on and not was_on:
                self._cue_on(self._sensed_cue(channel), record.cycle)
            elif was_on and not any(self._cue_levels.values()):
                self._cue_off(record.cycle)
        elif channel == self.lines.go_cue and on:
            self._go(record.cycle)
        elif channel in self._valve_side and on:
            self._valve(self._valve_side[channel], record.cycle)

    # -- the trial, as the mouse lives it -----------------------------------------------------------

    def _current(self, cycle: int) -> MouseTrial:
        if self._trial is None:  # outputs outside a trial we saw start: treat them as one
            self._trial = MouseTrial(trial=None, start_cycle=cycle)
        return self._trial

    def _cue_on(self, cue: str | None, cycle: int) -> None:
        trial = self._current(cycle)
        if trial.cue_cycle is not None:
            return  # the sample restarted (cue stays on, or the tone again) or a second cue: already decided
        trial.cue, trial.cue_cycle = cue, cycle
        self.counters.cues += 1
        self._plan(trial)
        if self._rng.random() < self.params.early_lick_prob:
            self._early_lick(trial, "early_sample", cycle, self._sample_estimate_s)

    def _sensed_cue(self, line: str) -> str | None:
        if line == self.lines.pole:
            felt = self.motor.position if self.motor is not None else None
            return f"pole_{felt}" if felt is not None else None
        return "tone_high" if line == self.lines.sample_tone_high else "tone_low"

    def _plan(self, trial: MouseTrial) -> None:
        choice = self.model.choose(trial.cue, self._rng)
        trial.planned_side, trial.lapse = choice.side, choice.lapse
        self.counters.lapses += choice.lapse
        if self.on_plan is not None:
            self.on_plan(trial.cue, choice.side)

    def _cue_off(self, cycle: int) -> None:
        trial = self._current(cycle)
        if trial.go_cycle is not None or trial.cue_off_cycle is not None:
            return
        trial.cue_off_cycle = cycle
        if self._rng.random() < self.params.early_lick_prob:
            self._early_lick(trial, "early_delay", cycle, self._delay_estimate_s)

    def _early_lick(self, trial: MouseTrial, kind: LickKind, epoch_start: int, expected_s: float) -> None:
        low, high = EARLY_LICK_WINDOW
        at = epoch_start + self._cycles(self._rng.uniform(low, high) * expected_s)
        side = trial.planned_side or SIDES[int(self._rng.integers(2))]
        self._lick(trial, at, side, kind)
        trial.early_lick_epochs.append("sample" if kind == "early_sample" else "delay")
        if kind == "early_sample":
            self.counters.early_licks_sample += 1
        else:
            self.counters.early_licks_delay += 1

    def _go(self, cycle: int) -> None:
        trial = self._current(cycle)
        if trial.go_cycle is not None:
            return
        trial.go_cycle = cycle
        if trial.cue_off_cycle is not None and trial.delay_end_cycle is None:
            trial.delay_end_cycle = cycle
        if trial.cue_cycle is None:  # no cue sensed (not this task's machine): guess now
            self._plan(trial)
        side = trial.planned_side
        if side is None:
            self.counters.no_licks += 1
            return
        trial.answer_side = side
        if side == "left":
            self.counters.choices_left += 1
        else:
            self.counters.choices_right += 1
        p = self.params
        drawn = float(self._rng.normal(p.reaction_time_mean_s, p.reaction_time_sd_s))
        reaction = max(MIN_REACTION_TIME_S, drawn)
        n_licks = int(self._rng.integers(p.answer_bout_licks[0], p.answer_bout_licks[1] + 1))
        at = self._lick(trial, cycle + self._cycles(reaction), side, "answer")
        trial.reaction_time_s = (at - cycle) / self._cycles_per_s
        for _ in range(n_licks - 1):
            at = self._lick(trial, at + self._interval(), side, "answer")

    def _valve(self, side: Side, cycle: int) -> None:
        trial = self._current(cycle)
        if trial.go_cycle is None:  # a free drop before the go cue
            self.counters.free_drops += 1
            trial.free_drop_side = side
            if trial.cue_off_cycle is not None and trial.delay_end_cycle is None:
                trial.delay_end_cycle = cycle
            if self.params.follows_free_drop and trial.planned_side not in (None, side):
                trial.planned_side = side
                if self.on_plan is not None:
                    self.on_plan(trial.cue, side)
            return
        if trial.answer_side != side or trial.rewarded:
            return
        trial.rewarded = True
        end = cycle + self._cycles(self.params.drinking_s * self._rng.uniform(*DRINKING_JITTER))
        last = self._last_onset if self._last_onset is not None else cycle
        at = max(cycle + 1, last + self._interval())
        while at <= end:
            at = self._lick(trial, at, side, "drink") + self._interval()

    def _finish(self, cycle: int) -> None:
        trial = self._trial
        assert trial is not None
        self._trial = None
        trial.end_cycle = cycle
        self.counters.trials += 1
        if trial.answer_side is None:
            trial.outcome = "no_lick"
        else:
            trial.outcome = "reward" if trial.rewarded else "error"
            if trial.rewarded:
                self.counters.rewards += 1
            else:
                self.counters.errors += 1
            self.model.learn(trial.cue, trial.answer_side, trial.rewarded)
        self._time_epochs(trial)
        self.history.append(trial)
        if self.on_trial_end is not None:
            self.on_trial_end(trial)
        log.debug("trial %s: cue %s, planned %s, answered %s -> %s; P(right|cue) now %s", trial.trial,
                  trial.cue, trial.planned_side, trial.answer_side, trial.outcome,
                  f"{self.model.p_right[trial.cue]:.3f}" if trial.cue else "-")

    def _time_epochs(self, trial: MouseTrial) -> None:
        """Learn the epoch lengths from a trial without early licks (an early lick restarts the epoch)."""
        if trial.cue_cycle is not None and trial.cue_off_cycle is not None and "sample" not in \
                trial.early_lick_epochs:
            self._sample_estimate_s = (trial.cue_off_cycle - trial.cue_cycle) / self._cycles_per_s
        if trial.cue_off_cycle is not None and trial.delay_end_cycle is not None and "delay" not in \
                trial.early_lick_epochs:
            self._delay_estimate_s = (trial.delay_end_cycle - trial.cue_off_cycle) / self._cycles_per_s

    # -- licking ------------------------------------------------------------------------------------

    def _lick(self, trial: MouseTrial, at: int, side: Side, kind: LickKind) -> int:
        """Schedule one lick at `at` or, if the tongue is still busy, as soon as it is free."""
        at = max(at, self._free_cycle, self._now + 1)
        low, high = self.params.lick_duration_s
        duration = max(1, self._cycles(self._rng.uniform(low, high)))
        duration = min(duration, max(1, self._cycles(self.params.lick_interval_s) // 2))
        self.world.pulse_input(self._lick_line[side], duration, at_cycle=at)
        self._free_cycle = at + duration + MIN_LICK_GAP_CYCLES
        self._last_onset = at
        lick = Lick(at, side, kind, duration)
        trial.licks.append(lick)
        self.counters.licks += 1
        if self.on_lick is not None:
            self.on_lick(at, side)
        return at

    def _interval(self) -> int:
        return self._cycles(self.params.lick_interval_s * self._rng.uniform(*LICK_INTERVAL_JITTER))

    def _cycles(self, seconds: float) -> int:
        return round(seconds * self._cycles_per_s)


def _check_cue(cue: object) -> None:
    if cue not in CUES:
        raise ValueError(f"unknown cue {cue!r}; cues: {', '.join(CUES)}")
