"""The simulated subject: what one mouse carries from trial to trial and from day to day.

The mouse never knows the rig's context. It holds latent task states, each a cue-to-side mapping
(P(right | cue), learned from reward) and a population pattern, and believes one of them is in force:

- Behaviour follows the mapping of the state in force, with a side bias that drifts (an Ornstein-Uhlenbeck
  walk around `side_bias`), win-stay / lose-shift after the last answered trial, lapses, and satiety: the
  more water drunk in a session, the more trials it ignores.
- After each answered trial the outcome tells which side was rewarded; the mouse weighs how well each
  stored mapping, and a new one (chance), predicted it against the mapping in force (a leaky, floored sum
  of log-likelihood ratios). Past `switch_evidence` nats it switches: to a stored state (a return) or to a
  new state starting at chance. A cue of a modality the state in force rarely met (a pole state hearing
  tones) counts as evidence for a new state. Hence after an uncued switch the old state, its pattern and
  its mapping persist for a few trials, and a new state is then learned over hundreds of trials.
- The pattern expressed is the state's pattern blended with the one in force before it, weighted by how
  well the state's mapping has been learned in this visit (its best, so errors before a switch do not
  bring the old pattern back): a new pattern emerges as the mouse learns, and a return
  (its mapping kept at `retention` of its confidence) re-activates the stored pattern as it relearns.
- A return changes the stored pattern a little (`pattern_drift` of its variance is new) and adds a trace
  of the state learned in between (`pattern_trace`), the paper's memory trace; each switch makes learning
  faster (`savings`). With `new_patterns` false every state expresses the first state's pattern.

Patterns are recipes, {component name: weight}, resolved into neuron weights by the simulated population
(`hardware.sim.neurons.Population.define_pattern`), so they are small, independent of the number of
neurons, and the same in the microscope's process. Pure: the random source is passed in; `to_dict` /
`from_dict` carry the subject across sessions (hardware/sim/subject_file.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hardware.settings import SimSettings
from hardware.sim.mouse import CUES, Choice, MouseParameters, Side, naive_mapping

STATE_FORMAT = 1
"""Version of `Subject.to_dict`; another version is refused, not guessed."""
BLEND_STEPS = 20
"""The blend of two patterns is expressed in steps of 1/20, so a learning curve defines few patterns."""
LIKELIHOOD_FLOOR = 1e-3
"""A mapping never predicts an outcome with certainty: one surprise is strong evidence, not infinite."""
MAX_BIAS = 0.9
MODALITIES = tuple(sorted({cue.split("_")[0] for cue in CUES}))
"""pole, tone: a cue's modality is its name's first word."""
TRAINED_CUE_TRIALS = 250
"""Trials per cue a subject that starts trained is credited with (it has met its cues, its modality)."""


@dataclass(frozen=True)
class SubjectParameters:
    """Latent states and the behaviour around the mapping (`settings.sim.subject` and `sim.mouse`)."""

    bias_drift_sd: float = 0.15
    """Standard deviation of the side bias's walk around `side_bias` (same scale, -1 .. 1)."""
    bias_drift_trials: float = 300.0
    """Trials over which the walk forgets where it was (its time constant)."""
    win_stay: float = 0.15
    """Pull toward the last answered side after a reward (fraction of the way to certainty)."""
    lose_shift: float = 0.15
    """Pull toward the other side after an error."""
    satiety_rewards: float = 400.0
    """Rewards in a session at which half the trials are ignored."""
    satiety_width: float = 40.0
    """Rewards over which engagement falls (logistic width)."""
    new_patterns: bool = True
    """False: every latent state expresses one pattern (the 'no new pattern' subject)."""
    switch_evidence: float = 12.0
    """Evidence (nats) the mouse needs to believe another mapping is in force."""
    novel_cue_evidence: float = 1.0
    """Evidence (nats) for a new state per trial with a cue of a modality the state in force met less."""
    evidence_leak: float = 0.02
    """Fraction of the accumulated evidence forgotten per answered trial."""
    retention: float = 0.3
    """Fraction of a mapping's confidence kept while another state is in force."""
    savings: float = 0.5
    """Learning-rate gain per switch the mouse has made (relearning gets faster)."""
    max_learning_gain: float = 4.0
    """Savings saturate at this multiple of the learning rate."""
    pattern_drift: float = 0.1
    """Fraction of a stored pattern's variance that is new at each return."""
    pattern_trace: float = 0.05
    """Weight of the pattern in force before a return added to the returning pattern (memory trace).
    Calibrated on the default population (200 neurons, `context_overlap` 0): a delay CD trained on context
    2's late-delay spike counts decodes 1' at ~59 % and 1 at ~49 % (the paper: 58.66 % and 52.75 %);
    tests/test_sim_subject.py checks it."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("win_stay", "lose_shift", "retention", "pattern_drift", "evidence_leak"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("bias_drift_trials", "satiety_width", "switch_evidence", "max_learning_gain"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("bias_drift_sd", "satiety_rewards", "novel_cue_evidence", "savings", "pattern_trace"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ValueError("bad subject parameters: " + "; ".join(problems))

    @classmethod
    def from_settings(cls, sim: SimSettings) -> SubjectParameters:
        """From `settings.sim` (its mouse and subject sections); the rest are the defaults."""
        mouse, subject = sim.mouse, sim.subject
        return cls(bias_drift_sd=mouse.side_bias_drift, win_stay=mouse.win_stay, lose_shift=mouse.lose_shift,
                   satiety_rewards=mouse.satiety_rewards, new_patterns=subject.new_patterns,
                   switch_evidence=subject.switch_evidence, retention=subject.retention,
                   savings=subject.savings, pattern_drift=subject.pattern_drift,
                   pattern_trace=subject.pattern_trace)


@dataclass
class LatentState:
    """One task state the mouse believes in: its mapping and its pattern."""

    id: int
    mapping: dict[str, float] = field(default_factory=naive_mapping)
    """P(right | cue)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Answered trials per cue in this state (the cues it has met)."""
    visits: int = 1
    pattern: dict[str, float] = field(default_factory=dict)
    """Recipe: component name -> weight (unit norm over orthogonal components)."""
    expressed: float = 0.0
    """Share of its own pattern in what the population expresses: the highest confidence reached in this
    visit (errors that unlearn the mapping before a switch do not bring the old pattern back)."""

    @property
    def pattern_key(self) -> str:
        """Pattern id: s<id> on the first visit, s<id>r<visit> after returns (drift and trace change it)."""
        return f"s{self.id}" if self.visits == 1 else f"s{self.id}r{self.visits}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "mapping": dict(self.mapping), "counts": dict(self.counts),
                "visits": self.visits, "pattern": dict(self.pattern), "expressed": self.expressed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatentState:
        mapping = {str(k): float(v) for k, v in data["mapping"].items()}
        if set(mapping) != set(CUES) or not all(0 <= p <= 1 for p in mapping.values()):
            raise ValueError(f"state {data.get('id')}: mapping must give P(right) in [0, 1] for {CUES}")
        pattern = {str(k): float(v) for k, v in data["pattern"].items()}
        if not pattern:
            raise ValueError(f"state {data.get('id')}: empty pattern")
        return cls(int(data["id"]), mapping, {str(k): int(v) for k, v in data["counts"].items()},
                   int(data["visits"]), pattern, float(data["expressed"]))


@dataclass(frozen=True)
class Expression:
    """The pattern the population expresses this trial."""

    key: str
    recipe: dict[str, float]
    weight: float
    """How much of the state in force's own pattern (the rest is the previous state's)."""


@dataclass(frozen=True)
class Switch:
    """A change of the state in force after a trial: to a new state or back to a stored one."""

    kind: str
    """'new' or 'return'."""
    from_state: int
    to_state: int


def _normalised(recipe: Mapping[str, float]) -> dict[str, float]:
    norm = math.sqrt(sum(w * w for w in recipe.values()))
    return {k: w / norm for k, w in recipe.items()}


def _pull(p: float, toward: float) -> float:
    """P(right) pulled by `toward` in [-1, 1] (+ toward right) of the remaining way."""
    return p + toward * (1.0 - p) if toward >= 0 else p * (1.0 + toward)


class Subject:
    """A simulated mouse's latent states, beliefs and behavioural drifts (see the module docstring).

    Duck-types `DecisionModel` for `SimulatedMouse` (`choose`, `learn`, `p_right`)."""

    def __init__(self, mouse: MouseParameters, params: SubjectParameters | None = None,
                 mapping: Mapping[str, float] | None = None) -> None:
        self.mouse = mouse
        self.params = params or SubjectParameters()
        first = LatentState(1, pattern={"s1": 1.0})
        for cue, p in (mapping or {}).items():
            if cue not in CUES or not 0 <= p <= 1:
                raise ValueError(f"bad starting mapping: P(right | {cue}) = {p}")
            first.mapping[cue] = float(p)
            if p != 0.5:
                first.counts[cue] = TRAINED_CUE_TRIALS
        first.expressed = self.confidence(first)
        self.states: dict[int, LatentState] = {1: first}
        self.active = 1
        self.previous: int | None = None
        self.evidence: dict[str, float] = {}
        self.bias = mouse.side_bias
        self.last: tuple[Side, bool] | None = None
        self.day = 0
        self.trials = 0
        self.switches = 0
        self.session_rewards = 0
        self.last_switch: Switch | None = None

    # -- what others read ---------------------------------------------------------------------------

    @property
    def state(self) -> LatentState:
        """The latent state in force."""
        return self.states[self.active]

    @property
    def p_right(self) -> dict[str, float]:
        """P(right | cue) of the state in force."""
        return self.state.mapping

    @property
    def learning_rate(self) -> float:
        gain = min(self.params.max_learning_gain, (1.0 + self.params.savings) ** self.switches)
        return min(1.0, self.mouse.learning_rate * gain)

    def confidence(self, state: LatentState) -> float:
        """How well a state's mapping is learned, 0 (chance) .. 1 (max_confidence), over the cues it met."""
        met = [c for c in CUES if state.counts.get(c, 0) > 0]
        if not met:
            return 0.0
        full = 2.0 * self.mouse.max_confidence - 1.0
        mean = float(np.mean([abs(2.0 * state.mapping[c] - 1.0) for c in met]))
        return min(1.0, mean / full) if full > 0 else 1.0

    @property
    def engagement(self) -> float:
        """Probability of attending to a trial, falling with the water drunk this session."""
        p = self.params
        return 1.0 / (1.0 + math.exp((self.session_rewards - p.satiety_rewards) / p.satiety_width))

    def expression(self) -> Expression:
        """The pattern expressed now: the state's own, blended with the previous state's while learning."""
        state = self.state
        if not self.params.new_patterns:
            return Expression("s1", {"s1": 1.0}, 1.0)
        own = round(state.expressed * BLEND_STEPS) / BLEND_STEPS
        if self.previous is None or own >= 1.0:
            return Expression(state.pattern_key, dict(state.pattern), 1.0)
        before = self.states[self.previous]
        if own <= 0.0:
            return Expression(before.pattern_key, dict(before.pattern), 0.0)
        recipe: dict[str, float] = {}
        for weight, part in ((own, state.pattern), (1.0 - own, before.pattern)):
            for name, w in part.items():
                recipe[name] = recipe.get(name, 0.0) + weight * w
        key = f"{state.pattern_key}+{before.pattern_key}@{round(100 * own)}"
        return Expression(key, recipe, own)

    # -- a day ----------------------------------------------------------------------------------------

    def new_day(self) -> None:
        """A new session: thirsty again, and yesterday's last outcome no longer steers the choice."""
        self.day += 1
        self.session_rewards = 0
        self.last = None

    # -- a trial --------------------------------------------------------------------------------------

    def choose(self, cue: str | None, rng: np.random.Generator) -> Choice:
        """This trial's intent; always the same draws, so the random stream does not depend on it."""
        u_engage, u_lapse, u_kind, u_side = rng.random(4)
        z = float(rng.standard_normal())
        p, m = self.params, self.mouse
        tau = p.bias_drift_trials
        self.bias += (m.side_bias - self.bias) / tau + p.bias_drift_sd * math.sqrt(2.0 / tau) * z
        self.bias = float(np.clip(self.bias, -MAX_BIAS, MAX_BIAS))
        self.trials += 1
        if u_engage >= self.engagement:
            return Choice(None, lapse=True)
        if u_lapse < m.lapse:
            if u_kind < m.lapse_no_lick_fraction:
                return Choice(None, lapse=True)
            return Choice("right" if u_side < 0.5 else "left", lapse=True)
        return Choice("right" if u_side < self.p_choose_right(cue) else "left", lapse=False)

    def p_choose_right(self, cue: str | None) -> float:
        """P(right) of an engaged, non-lapsing choice: mapping, drifting bias, win-stay / lose-shift."""
        prob = 0.5 if cue is None else self.state.mapping.get(cue, 0.5)
        prob = _pull(prob, self.bias)
        if self.last is not None:
            side, rewarded = self.last
            toward = side if rewarded else ("left" if side == "right" else "right")
            amount = self.params.win_stay if rewarded else self.params.lose_shift
            prob = _pull(prob, amount if toward == "right" else -amount)
        return prob

    def learn(self, cue: str | None, side: Side, rewarded: bool) -> Switch | None:
        """After an answered trial: weigh the evidence, learn the mapping, maybe switch state."""
        self.last = (side, rewarded)
        self.session_rewards += rewarded
        self.last_switch = None
        if cue is None:
            return None
        rewarded_side = side if rewarded else ("left" if side == "right" else "right")
        self._weigh(cue, rewarded_side)
        state = self.state
        target = self.mouse.max_confidence if rewarded_side == "right" else 1.0 - self.mouse.max_confidence
        state.mapping[cue] += self.learning_rate * (target - state.mapping[cue])
        state.counts[cue] = state.counts.get(cue, 0) + 1
        state.expressed = max(state.expressed, self.confidence(state))
        best = max(self.evidence, key=self.evidence.__getitem__, default=None)
        if best is not None and self.evidence[best] >= self.params.switch_evidence:
            self.last_switch = self._switch(None if best == "new" else int(best))
        return self.last_switch

    def _weigh(self, cue: str, rewarded_side: str) -> None:
        def likelihood(state: LatentState | None) -> float:
            p_right = 0.5 if state is None else state.mapping[cue]
            p = p_right if rewarded_side == "right" else 1.0 - p_right
            return min(max(p, LIKELIHOOD_FLOOR), 1.0 - LIKELIHOOD_FLOOR)

        def met(state: LatentState, modality: str) -> int:
            return sum(n for c, n in state.counts.items() if c.split("_")[0] == modality)

        here = math.log(likelihood(self.state))
        keep = 1.0 - self.params.evidence_leak
        modality = cue.split("_")[0]
        active = self.state
        # a cue of a modality the state in force met less than its own: a new state, or one that knows it
        novel = met(active, modality) < max(met(active, m) for m in MODALITIES)
        for key, state in [("new", None), *((str(i), s) for i, s in self.states.items() if i != self.active)]:
            gain = math.log(likelihood(state)) - here
            if novel and (state is None or met(state, modality) > met(active, modality)):
                gain += self.params.novel_cue_evidence
            self.evidence[key] = max(0.0, keep * self.evidence.get(key, 0.0) + gain)

    def _switch(self, to: int | None) -> Switch:
        p = self.params
        leaving = self.state
        for cue in CUES:  # what is kept of the mapping while another state is in force
            leaving.mapping[cue] = 0.5 + p.retention * (leaving.mapping[cue] - 0.5)
        if to is None:
            to = max(self.states) + 1
            pattern = {f"s{to}": 1.0} if p.new_patterns else dict(self.states[1].pattern)
            self.states[to] = LatentState(to, pattern=pattern)
            kind = "new"
        else:
            back = self.states[to]
            back.visits += 1
            if p.new_patterns:
                recipe = {k: math.sqrt(1.0 - p.pattern_drift) * w for k, w in back.pattern.items()}
                if p.pattern_drift > 0:
                    recipe[f"s{to}d{back.visits}"] = math.sqrt(p.pattern_drift)
                for k, w in leaving.pattern.items():
                    recipe[k] = recipe.get(k, 0.0) + p.pattern_trace * w
                back.pattern = _normalised(recipe)
            kind = "return"
        arriving = self.states[to]
        arriving.expressed = self.confidence(arriving)
        switch = Switch(kind, leaving.id, to)
        self.previous, self.active = leaving.id, to
        self.switches += 1
        self.evidence = {}
        return switch

    # -- across sessions ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything the subject carries to the next session (small: a few numbers per state)."""
        return {"format": STATE_FORMAT, "day": self.day, "trials": self.trials, "switches": self.switches,
                "bias": self.bias, "active": self.active, "previous": self.previous,
                "evidence": dict(self.evidence), "states": [s.to_dict() for s in self.states.values()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], mouse: MouseParameters,
                  params: SubjectParameters | None = None) -> Subject:
        """The subject `to_dict` saved; ValueError (saying what is wrong) for anything else."""
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {STATE_FORMAT}")
        try:
            subject = cls(mouse, params)
            subject.states = {s.id: s for s in (LatentState.from_dict(x) for x in data["states"])}
            subject.active = int(data["active"])
            previous = data["previous"]
            subject.previous = None if previous is None else int(previous)
            subject.evidence = {str(k): float(v) for k, v in data["evidence"].items()}
            subject.bias = float(data["bias"])
            subject.day, subject.trials = int(data["day"]), int(data["trials"])
            subject.switches = int(data["switches"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"missing or malformed {exc}") from None
        known = set(subject.states)
        if subject.active not in known or (subject.previous is not None and subject.previous not in known):
            raise ValueError("the state in force (or the one before it) is not among the states")
        return subject
