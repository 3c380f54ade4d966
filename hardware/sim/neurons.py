"""Simulated ALM population: task-driven firing rates, spikes, GCaMP-like calcium and fluorescence.

The model follows the paper the rig is built around (Kim, Daie & Li 2025): neurons are selective for the
upcoming lick direction in the sample, delay and response epochs, sample-epoch neurons also code the
stimulus itself (pole position, tone pitch; `STIMULUS_CODE`), and the preparatory (delay) pattern is the
one in force: a key the caller defines (`define_pattern`: the simulated subject's latent state, as a
weighted sum of named components, hardware/sim/subject.py) or, for a bare context name, a pattern drawn
from a generator seeded by (seed, context name). Components and context patterns share a fraction
`context_overlap` of their selective neurons (with their weights), so two of them have a cosine of about
`context_overlap`; the same seed gives the same ones in any process.

Selectivity is written as a signed weight w (Hz) per neuron: the preferred side (sign of w) adds |w| to the
rate, the other side adds nothing, an unknown side adds |w|/2. The right-minus-left rate difference is
therefore exactly w, which makes w the ground-truth coding direction in rate space.

Calcium is a difference of exponentials per spike (rise ~50 ms, decay 0.5-1 s, peak 1 per spike), and
fluorescence saturates: dF/F = dff_max * c / (c + dff_max / dff_per_spike).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

Side = Literal["left", "right"]
Epoch = Literal["iti", "pre", "sample", "delay", "response"]
EPOCHS: tuple[str, ...] = ("iti", "pre", "sample", "delay", "response")


def side_sign(side: str | None) -> int:
    """+1 for right, -1 for left, 0 when not known (the convention of the paper's CD: right above left)."""
    if side is None:
        return 0
    if side == "right":
        return 1
    if side == "left":
        return -1
    raise ValueError(f"side must be 'left', 'right' or None, got {side!r}")


def named_rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on (seed, name): Python's hash() is salted per process, sha256 is not."""
    key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed), key])


@dataclass(frozen=True)
class TaskState:
    """What the behaviour is doing at one instant, as far as the neurons are concerned."""

    epoch: str = "iti"
    since_onset_s: float = 0.0
    context: str | None = None
    """The pattern in force: a key given to `Population.define_pattern`, else a context name."""
    side: str | None = None
    cue: str | None = None
    """The sample stimulus sensed (pole_anterior, pole_posterior, tone_high, tone_low), if known."""


STIMULUS_CODE: dict[str, tuple[str, int]] = {
    "pole_posterior": ("pole", 1), "pole_anterior": ("pole", -1),
    "tone_high": ("tone", 1), "tone_low": ("tone", -1),
}
"""Cue -> (modality, sign): sample-epoch neurons code the stimulus itself, so under a reversed mapping their
code is opposite to the planned lick's."""


@dataclass(frozen=True)
class PopulationParams:
    """Population model constants; the first five come from settings (sim.microscope)."""

    n_neurons: int = 200
    selective_fraction: float = 0.3
    """Neurons with lick-direction-selective delay activity, per context."""
    context_overlap: float = 0.2
    """Fraction of a context's delay-selective neurons (with weights) that every context shares."""
    sample_selective_fraction: float = 0.15
    response_selective_fraction: float = 0.3
    baseline_rate_hz: float = 1.5
    """Median spontaneous rate; rates are log-normal across neurons."""
    selectivity_hz: float = 6.0
    """Mean |w| of a selective neuron."""
    tau_rise_s: float = 0.05
    tau_decay_s: tuple[float, float] = (0.5, 1.0)
    dff_per_spike: float = 0.25
    dff_max: float = 5.0
    response_duration_s: float = 1.5
    """How long after the go cue the response epoch lasts before the inter-trial interval."""
    delay_ramp_tau_s: float = 0.5
    sample_preparatory_fraction: float = 0.3
    """Share of the delay pattern already present in the sample epoch (preparatory activity builds up)."""
    stimulus_selective_fraction: float = 0.15
    """Neurons coding the sample stimulus (pole position, tone pitch) in the sample epoch, per modality."""

    def __post_init__(self) -> None:
        if self.n_neurons < 1:
            raise ValueError(f"n_neurons must be at least 1, got {self.n_neurons}")
        for name in ("selective_fraction", "context_overlap", "sample_selective_fraction",
                     "response_selective_fraction", "sample_preparatory_fraction",
                     "stimulus_selective_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")


@dataclass(frozen=True)
class ContextPattern:
    """Signed right-minus-left rate weights (Hz) of one context."""

    context: str
    sample: np.ndarray
    delay: np.ndarray


def _signed_weights(rng: np.random.Generator, k: int, mean_hz: float) -> np.ndarray:
    """k gamma-distributed magnitudes with balanced signs, so population means barely differ by side."""
    signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
    rng.shuffle(signs)
    return signs * rng.gamma(2.0, mean_hz / 2.0, size=k)


@dataclass
class _SharedCore:
    """Neurons and weights shared by every context (the first round(overlap * k) of them are used)."""

    order: np.ndarray
    weights: np.ndarray


def _context_weights(n: int, k: int, overlap: float, core: _SharedCore, rng: np.random.Generator,
                     mean_hz: float) -> np.ndarray:
    k_shared = int(round(overlap * k))
    w = np.zeros(n)
    shared = core.order[:k_shared]
    w[shared] = core.weights[:k_shared]
    others = np.setdiff1d(np.arange(n), shared)
    private = rng.choice(others, size=min(k - k_shared, others.size), replace=False)
    w[private] = _signed_weights(rng, private.size, mean_hz)
    return w


def _sided(w: np.ndarray, abs_w: np.ndarray, sign: int) -> np.ndarray:
    """Rate added by signed weights w for a side: |w| on the preferred side, 0 on the other, |w|/2 unknown."""
    if sign == 0:
        return 0.5 * abs_w
    return 0.5 * (abs_w + sign * w)


@dataclass
class _Calcium:
    d: np.ndarray
    r: np.ndarray


class Population:
    """Neurons of one field of view: rates from the task state, spikes, calcium and dF/F over time."""

    def __init__(self, params: PopulationParams, seed: int) -> None:
        self.params = params
        self.seed = int(seed)
        n = params.n_neurons
        rng = named_rng(self.seed, "population")
        self.baseline_hz = np.clip(rng.lognormal(np.log(params.baseline_rate_hz), 0.6, n), 0.1, 15.0)
        self.tau_rise_s = params.tau_rise_s * rng.uniform(0.8, 1.2, n)
        self.tau_decay_s = rng.uniform(*params.tau_decay_s, n)
        # Non-selective epoch responses: a cue response, a ramp through the delay, a go-cue burst.
        self.cue_response_hz = np.where(rng.random(n) < 0.2, rng.uniform(2.0, 6.0, n), 0.0)
        ramp = np.where(rng.random(n) < 0.2, rng.uniform(1.0, 4.0, n) * rng.choice([-1.0, 1.0], n), 0.0)
        self.delay_ramp_hz = np.maximum(ramp, -0.8 * self.baseline_hz)
        self.go_response_hz = np.where(rng.random(n) < 0.3, rng.uniform(3.0, 10.0, n), 0.0)
        # Lick-direction selectivity after the go cue: the movement, the same in every context.
        k_resp = int(round(params.response_selective_fraction * n))
        self.response_w = np.zeros(n)
        self.response_w[rng.choice(n, k_resp, replace=False)] = _signed_weights(
            rng, k_resp, 1.3 * params.selectivity_hz)
        self._core_delay = _SharedCore(rng.permutation(n), _signed_weights(rng, n, params.selectivity_hz))
        self._core_sample = _SharedCore(rng.permutation(n), _signed_weights(rng, n, params.selectivity_hz))
        # Calcium kernel: peak of exp(-t/td) - exp(-t/tr), so one spike peaks at calcium 1.
        td, tr = self.tau_decay_s, self.tau_rise_s
        t_peak = np.log(td / tr) * td * tr / (td - tr)
        self._kernel_peak = np.exp(-t_peak / td) - np.exp(-t_peak / tr)
        self._half_saturation = params.dff_max / params.dff_per_spike
        self._patterns: dict[str, ContextPattern] = {}
        self._components: dict[str, ContextPattern] = {}
        k_stim = int(round(params.stimulus_selective_fraction * n))
        self.stimulus_w: dict[str, np.ndarray] = {}
        for modality in ("pole", "tone"):
            stim_rng = named_rng(self.seed, f"stimulus:{modality}")
            w = np.zeros(n)
            chosen = stim_rng.choice(n, k_stim, replace=False)
            w[chosen] = _signed_weights(stim_rng, k_stim, params.selectivity_hz)
            self.stimulus_w[modality] = w
        self._decay_dt = -1.0
        self._decay: tuple[np.ndarray, np.ndarray] = (np.ones(n), np.ones(n))
        self._state = self._steady_state(self.baseline_hz)

    # -- patterns ------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        return self.params.n_neurons

    def _draw(self, name: str) -> ContextPattern:
        """A pattern drawn from (seed, name): the shared core plus neurons of its own."""
        p, n = self.params, self.n
        rng = named_rng(self.seed, name)
        delay = _context_weights(n, int(round(p.selective_fraction * n)), p.context_overlap,
                                 self._core_delay, rng, p.selectivity_hz)
        sample = _context_weights(n, int(round(p.sample_selective_fraction * n)), p.context_overlap,
                                  self._core_sample, rng, p.selectivity_hz)
        return ContextPattern(name, sample, delay)

    def pattern(self, context: str) -> ContextPattern:
        """The pattern of a key given to `define_pattern`, else the context's own, drawn once from (seed,
        context name) and cached."""
        cached = self._patterns.get(context)
        if cached is None:
            cached = self._draw(f"context:{context}")
            self._patterns[context] = ContextPattern(context, cached.sample, cached.delay)
            cached = self._patterns[context]
        return cached

    def define_pattern(self, key: str, recipe: Mapping[str, float]) -> ContextPattern:
        """Pattern `key` as a weighted sum of named components (each drawn once from (seed, "pattern:" +
        name)), scaled to the size of one component: a latent state's pattern, its drift and traces."""
        if not recipe:
            raise ValueError(f"pattern {key!r} needs at least one component")
        sample, delay = np.zeros(self.n), np.zeros(self.n)
        for name, weight in recipe.items():
            part = self._components.get(name)
            if part is None:
                part = self._components[name] = self._draw(f"pattern:{name}")
            sample += weight * part.sample
            delay += weight * part.delay
        ref = next(iter(self._components[name] for name in recipe))
        scale = float(np.linalg.norm(ref.delay)) / max(float(np.linalg.norm(delay)), 1e-12)
        pattern = ContextPattern(key, sample * scale, delay * scale)
        self._patterns[key] = pattern
        return pattern

    def stimulus(self, cue: str | None) -> np.ndarray:
        """Rate (Hz) the sample stimulus adds in the sample epoch (nothing for an unknown cue)."""
        code = STIMULUS_CODE.get(cue) if cue is not None else None
        if code is None:
            return np.zeros(self.n)
        w = self.stimulus_w[code[0]]
        return _sided(w, np.abs(w), code[1])

    def selectivity(self, context: str | None, epoch: str) -> np.ndarray:
        """Right-minus-left rate difference (Hz) late in an epoch (the rate-space CD, not normalised)."""
        if epoch == "response":
            return self.response_w.copy()
        if context is None:
            return np.zeros(self.n)
        pat = self.pattern(context)
        if epoch == "delay":
            return pat.delay.copy()
        if epoch == "sample":
            return pat.sample + self.params.sample_preparatory_fraction * pat.delay
        raise ValueError(f"epoch must be 'sample', 'delay' or 'response', got {epoch!r}")

    # -- rates -----------------------------------------------------------------------------------

    def rates(self, state: TaskState) -> np.ndarray:
        """Firing rates (Hz) of every neuron in a task state."""
        p = self.params
        r = self.baseline_hz.copy()
        sign = side_sign(state.side)
        tau = max(state.since_onset_s, 0.0)
        pat = self.pattern(state.context) if state.context is not None else None
        if state.epoch == "sample":
            r += self.cue_response_hz * (0.3 + 0.7 * np.exp(-tau / 0.5))
            if state.cue is not None:
                r += self.stimulus(state.cue)
            if pat is not None:
                r += _sided(pat.sample, np.abs(pat.sample), sign)
                r += p.sample_preparatory_fraction * _sided(pat.delay, np.abs(pat.delay), sign)
        elif state.epoch == "delay":
            ramp = 1.0 - 0.6 * np.exp(-tau / p.delay_ramp_tau_s)
            r += self.delay_ramp_hz * ramp
            if pat is not None:
                r += ramp * _sided(pat.delay, np.abs(pat.delay), sign)
        elif state.epoch == "response":
            r += self.go_response_hz * np.exp(-tau / 0.4)
            r += _sided(self.response_w, np.abs(self.response_w), sign) * np.exp(-tau / 1.0)
            if pat is not None:
                r += np.exp(-tau / 0.3) * _sided(pat.delay, np.abs(pat.delay), sign)
        elif state.epoch not in ("iti", "pre"):
            raise ValueError(f"unknown epoch {state.epoch!r}; valid: {', '.join(EPOCHS)}")
        return np.maximum(r, 0.0, out=r)

    # -- calcium ---------------------------------------------------------------------------------

    def _steady_state(self, rates: np.ndarray) -> _Calcium:
        return _Calcium(rates * self.tau_decay_s, rates * self.tau_rise_s)

    def step(self, dt_s: float, rates: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Advance calcium by dt at constant rates; returns spike counts (expected counts if rng is None).

        Each neuron's spikes in the step share one uniformly drawn time, so sub-frame timing is kept cheaply.
        """
        if dt_s <= 0:
            return np.zeros(self.n, dtype=np.int32 if rng is not None else float)
        if rng is None:
            spikes = rates * dt_s
            remaining = np.full(self.n, 0.5 * dt_s)
        else:
            spikes = rng.poisson(rates * dt_s)
            remaining = rng.random(self.n) * dt_s  # one random time per neuron and step
        td, tr = self.tau_decay_s, self.tau_rise_s
        if self._decay_dt != dt_s:  # the usual step is one frame period: compute its factors once
            self._decay_dt, self._decay = dt_s, (np.exp(-dt_s / td), np.exp(-dt_s / tr))
        s = self._state
        s.d *= self._decay[0]
        s.r *= self._decay[1]
        fired = np.flatnonzero(spikes)
        k, rem = spikes[fired], remaining[fired]
        s.d[fired] += k * np.exp(-rem / td[fired])
        s.r[fired] += k * np.exp(-rem / tr[fired])
        return spikes

    @property
    def calcium(self) -> np.ndarray:
        """Calcium per neuron, in peak-of-one-spike units."""
        return (self._state.d - self._state.r) / self._kernel_peak

    def dff_of(self, calcium: np.ndarray) -> np.ndarray:
        """Saturating indicator: linear (dff_per_spike per unit calcium) when small, dff_max at most."""
        c = np.maximum(calcium, 0.0)
        return self.params.dff_max * c / (c + self._half_saturation)

    @cached_property
    def resting_dff(self) -> np.ndarray:
        """dF/F at the spontaneous rates, used for the noiseless template and the neuropil baseline."""
        s = self._steady_state(self.baseline_hz)
        return self.dff_of((s.d - s.r) / self._kernel_peak)

    # -- ground-truth coding directions ------------------------------------------------------------

    def expected_dff_cd(self, context: str, epoch: str = "delay", sample_s: float = 1.3, delay_s: float = 1.3,
                        window_s: float = 0.6, dt_s: float = 1.0 / 30.0) -> np.ndarray:
        """Unit right-minus-left mean dF/F over the paper's epoch window, from a noiseless mean-field trial.

        Windows: sample = the first 1 s of the sample epoch, delay = the last `window_s` before the go cue,
        response = 0.16-1.5 s after the go cue. Saturation and per-neuron kinetics make this differ slightly
        from the rate-space direction; this is what a decoder trained on dF/F should converge to.
        """
        if epoch == "sample":
            lo, hi = 0.0, min(1.0, sample_s)
        elif epoch == "delay":
            lo, hi = sample_s + delay_s - window_s, sample_s + delay_s
        elif epoch == "response":
            lo, hi = sample_s + delay_s + 0.16, sample_s + delay_s + 1.5
        else:
            raise ValueError(f"epoch must be 'sample', 'delay' or 'response', got {epoch!r}")
        means = []
        saved = self._state
        try:
            for side in ("right", "left"):
                self._state = self._steady_state(self.baseline_hz)
                total, count, t = np.zeros(self.n), 0, 0.0
                while t < hi:
                    mid = t + dt_s / 2
                    if mid < sample_s:
                        state = TaskState("sample", mid, context, side)
                    elif mid < sample_s + delay_s:
                        state = TaskState("delay", mid - sample_s, context, side)
                    else:
                        state = TaskState("response", mid - sample_s - delay_s, context, side)
                    self.step(dt_s, self.rates(state), None)
                    t += dt_s
                    if t > lo:
                        total += self.dff_of(self.calcium)
                        count += 1
                means.append(total / max(count, 1))
        finally:
            self._state = saved
        return unit(means[0] - means[1])


def unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v

