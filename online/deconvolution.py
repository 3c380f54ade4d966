"""Online spike deconvolution of every ROI's dF/F, one frame at a time, vectorised across ROIs.

The model is OASIS's AR(1) (Friedrich, Zhou & Paninski 2017, the `oasis-deconv` package): calcium
c_t = g c_{t-1} + s_t with s_t = 0 or s_t >= s_min, y_t = b + c_t + noise, and an L1 penalty lam on s.
OASIS solves it exactly in one forward pass over "pools" (runs of frames sharing one spike at their start,
c decaying by g inside): each new sample opens a pool, and while a pool's start value is below what its
predecessor predicts plus s_min, the two merge. That pass is online already; here it runs for all ROIs at
once with numpy, so a frame costs a fixed number of array operations instead of a Python loop over ROIs:

- the newest pool of every ROI (the "head": v, w and g^L) is kept in dense arrays, so the common case (the
  sample joins the head, or opens a new pool) is a few dozen element-wise operations over the n ROIs;
- the earlier pools sit in a per-ROI ring of `max_pools` slots, the bounded window: when it is full the
  oldest pool is overwritten, which only limits how far back a merge can reach (32 pools are seconds to
  minutes of a trace; merges rarely go back more than a few). The end value of each ROI's newest earlier
  pool is cached densely, and only the ROIs whose head falls below it (a merge that reaches back, about a
  tenth of the ROIs a frame) enter the small loop that pops their rings, one round per level merged
  (usually one). bench/online_core.py times it with the rest of the frame path (about 50 array operations
  a frame, whatever the number of ROIs).

What a frame returns is the causal estimate: the spike opened at this frame (the new pool's start value
minus the decayed calcium before it, > s_min), else 0. Later frames can still merge that pool back (the
batch solution then moves or shrinks the spike); a published value is not revised, so the online output
is the batch solution seen with zero lag. tests/test_deconvolution.py reports its correlation with
`oasis.oasisAR1` and `oasis.deconvolve` run on the whole trace.

Per ROI, online: the noise SD, a running median of |y_t - y_{t-1}| / (0.6745 sqrt 2) (multiplicative steps
that shrink to `noise_step`; calcium decays between frames inflate it a little), from which s_min =
`min_spike_sd` x SD and the L1 penalty lam = `penalty_sd` x SD (OASIS's lam, applied as y - lam (1 - g));
and the baseline b, which follows the median of the innovations y - b - g c_{t-1} by `baseline_step_sd` x
SD a frame: dF/F's running-percentile baseline sits a little above the noise floor, and an offset would
otherwise be fitted as a train of small spikes. Both move every `_SLOW_EVERY` frames, by that many steps.
A NaN or infinite sample is replaced by the model's own prediction (no spike; noise and baseline not
updated), so a bad value costs that ROI that frame only.
"""

from __future__ import annotations

import math

import numpy as np

_MAD_TO_SD = 0.6745 * math.sqrt(2.0)
"""Median |difference of two iid normal samples| / their SD: |y_t - y_{t-1}| ~ |N(0, 2 sd^2)|."""
_SLOW_EVERY = 4
"""The noise and baseline estimates move every this many frames (by that many steps): they change slowly,
and this quarters their share of the cost."""
_NO_NOISE_YET = 1e100
"""The noise SD before a ROI's first difference: no sample is a spike yet (finite, so no inf - inf)."""


def decay_factor(tau_decay_s: float, frame_rate_hz: float) -> float:
    """AR(1) coefficient g = exp(-1 / (tau x rate)) of an indicator decaying with `tau_decay_s` (s)."""
    if not (tau_decay_s > 0 and math.isfinite(tau_decay_s)):
        raise ValueError(f"online.deconvolution.tau_decay_s must be a positive number of seconds, got "
                         f"{tau_decay_s}")
    if not (frame_rate_hz > 0 and math.isfinite(frame_rate_hz)):
        raise ValueError(f"the per-plane frame rate must be positive for deconvolution, got {frame_rate_hz}")
    return math.exp(-1.0 / (tau_decay_s * frame_rate_hz))


class OnlineDeconvolver:
    """OASIS AR(1) for n ROIs, one dF/F sample per ROI per `update` (see the module docstring). No I/O;
    not thread-safe."""

    def __init__(self, n_rois: int, g: float, *, min_spike_sd: float = 1.0, penalty_sd: float = 0.0,
                 max_pools: int = 32, noise_step: float = 0.01, baseline_step_sd: float = 0.002,
                 noise_sd: float | np.ndarray | None = None) -> None:
        if n_rois < 1:
            raise ValueError(f"deconvolution needs at least one ROI, got n_rois={n_rois}")
        if not 0 < g < 1:
            raise ValueError(f"the decay factor g must be within (0, 1), got {g}")
        if not (min_spike_sd >= 0 and math.isfinite(min_spike_sd)):
            raise ValueError(f"online.deconvolution.min_spike_sd must be >= 0, got {min_spike_sd}")
        if not (penalty_sd >= 0 and math.isfinite(penalty_sd)):
            raise ValueError(f"online.deconvolution.penalty_sd must be >= 0, got {penalty_sd}")
        if max_pools < 1:
            raise ValueError(f"max_pools must be at least 1, got {max_pools}")
        if not (0 < noise_step <= 1 and 0 <= baseline_step_sd <= 1):
            raise ValueError(f"need 0 < noise_step <= 1 and 0 <= baseline_step_sd <= 1, got {noise_step} "
                             f"and {baseline_step_sd}")
        if noise_sd is not None and not np.all(np.isfinite(noise_sd) & (np.asarray(noise_sd) > 0)):
            raise ValueError(f"a given noise SD must be positive and finite, got {noise_sd}")
        n = n_rois
        self.n, self.g, self.k = n, float(g), int(max_pools)
        self.min_spike_sd, self.penalty_sd = float(min_spike_sd), float(penalty_sd)
        self.noise_step, self.baseline_step_sd = float(noise_step), float(baseline_step_sd)
        # The head pool, dense: OASIS's v = sum g^k y and w = sum g^2k over its frames, and g^L for its
        # length L (kept instead of L: no table look-ups, and it underflows to the right limit, 0). It starts
        # as an endless pool at 0, so the first sample is compared with a prediction of 0.
        self._hv = np.zeros(n)
        self._hw = np.ones(n)
        self._hg = np.zeros(n)
        # Earlier pools: a ring of k per ROI, flat (ROI r's slot j at r * k + j), each with its end value
        # e = g^L v / w (what the next pool's start is compared with); a slot not holding a pool has e = -inf,
        # so a head that has merged every earlier pool stops there.
        self._rv = np.zeros(n * self.k)
        self._rw = np.ones(n * self.k)
        self._rg = np.zeros(n * self.k)
        self._re = np.full(n * self.k, -np.inf)
        self._row0 = np.arange(n, dtype=np.intp) * self.k
        self._slot = np.zeros(n, np.intp)  # ring slot of each ROI's newest earlier pool
        self._top_end = np.full(n, -np.inf)  # e of that pool, dense
        self._last = np.zeros(n)  # previous finite sample (noise estimate)
        self._noise_fixed = noise_sd is not None
        sd = np.broadcast_to(np.asarray(_NO_NOISE_YET if noise_sd is None else noise_sd, np.float64), (n,))
        self._mad = sd * _MAD_TO_SD  # median |y_t - y_{t-1}|; huge until a ROI's second sample
        self._seen = np.zeros(n, np.intp)  # finite samples, counted until every ROI has 2
        self._starting = not self._noise_fixed
        self.baseline = np.zeros(n)
        self.frames = 0

    @property
    def noise_sd(self) -> np.ndarray:
        """The current noise SD estimate per ROI (dF/F units; huge before its second finite sample)."""
        return self._mad / _MAD_TO_SD

    def update(self, y: np.ndarray) -> np.ndarray:
        """Add one dF/F sample per ROI (n,); return this frame's spike estimate per ROI (float32, >= 0)."""
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (self.n,):
            raise ValueError(f"expected {self.n} values, got shape {y.shape}")
        self.frames += 1
        gp = self._hg
        predicted = self._hv / self._hw * gp  # the head's calcium carried one frame on
        finite = None if math.isfinite(float(np.add.reduce(y))) else np.isfinite(y)
        if finite is not None:  # a bad sample is replaced by the prediction: no spike, no updates
            y = np.where(finite, y, predicted + self.baseline)
        slow = self.frames % _SLOW_EVERY == 0
        if slow or self._starting:
            self._update_noise(y, finite, slow)
        self._last = y if finite is None else np.where(finite, y, self._last)
        sd = self._mad * (1.0 / _MAD_TO_SD)
        s_min = sd * self.min_spike_sd
        x = y - self.baseline
        if self.penalty_sd:
            x -= sd * (self.penalty_sd * (1.0 - self.g))
        innovation = x - predicted
        new = innovation > s_min
        if finite is not None:
            new &= finite
        spikes = innovation * new
        # Pools that stay apart move into the ring and the sample opens a new head; the others absorb it.
        rows = np.flatnonzero(new)
        if rows.size:
            self._push(rows, predicted[rows])
        self._hv += x * gp
        self._hw += gp * gp
        self._hg *= self.g
        if rows.size:
            self._hv[rows], self._hw[rows], self._hg[rows] = x[rows], 1.0, self.g
        if self.frames % 256 == 0:  # (long pools: g^L to 0 before it turns denormal, which is slow)
            self._hg[self._hg < 1e-30] = 0.0
        # A head that fell below its predecessor's end value + s_min merges back (few ROIs a frame).
        back = np.flatnonzero(self._hv < (self._top_end + s_min) * self._hw)
        if back.size:
            self._merge_back(back, s_min)
        if self.baseline_step_sd and slow:  # b follows the median of the innovations
            step = np.sign(innovation)
            step *= sd * (self.baseline_step_sd * _SLOW_EVERY)
            if self._starting:
                step *= self._seen >= 2  # (not before a ROI's noise estimate)
            if finite is not None:
                step *= finite  # (not on bad samples)
            self.baseline += step
        return spikes.astype(np.float32)

    def _push(self, rows: np.ndarray, end: np.ndarray) -> None:
        """The heads of `rows` (their end values `end`) become the newest earlier pool."""
        slot = self._slot[rows] + 1
        slot[slot == self.k] = 0  # full: the oldest pool is overwritten
        self._slot[rows] = slot
        flat = self._row0[rows] + slot
        self._rv[flat], self._rw[flat], self._rg[flat], self._re[flat] = \
            self._hv[rows], self._hw[rows], self._hg[rows], end
        self._top_end[rows] = end

    def _merge_back(self, rows: np.ndarray, s_min: np.ndarray) -> None:
        """Merge heads into their predecessor while they violate it (OASIS's backtracking), ROI subset; each
        round works on the ROIs still violating (usually one round)."""
        hv, hw, hg, slot = self._hv[rows], self._hw[rows], self._hg[rows], self._slot[rows]
        s_min, row0 = s_min[rows], self._row0[rows]
        while True:
            flat = row0 + slot
            gp = self._rg[flat]
            hv = self._rv[flat] + hv * gp
            hw = self._rw[flat] + hw * (gp * gp)
            hg = hg * gp
            self._re[flat] = -np.inf  # the slot is free
            slot = np.where(slot == 0, self.k - 1, slot - 1)
            end = self._re[row0 + slot]
            self._hv[rows], self._hw[rows], self._hg[rows], self._slot[rows], self._top_end[rows] = \
                hv, hw, hg, slot, end
            again = hv < (end + s_min) * hw
            if not again.any():
                return
            rows, hv, hw, hg, slot, s_min, row0 = (a[again] for a in (rows, hv, hw, hg, slot, s_min, row0))

    def _update_noise(self, y: np.ndarray, finite: np.ndarray | None, slow: bool) -> None:
        """Running median of |y_t - y_{t-1}|: a ROI's first difference starts it, then, on `slow` frames,
        multiplicative steps exp(+-1/t) shrinking to exp(+-noise_step) (t = frames so far), _SLOW_EVERY at
        once."""
        if self._noise_fixed:
            return
        d = np.abs(y - self._last)
        if self._starting:  # ROIs with fewer than 2 finite samples (the first frames, or NaN so far)
            seen = self._seen + (1 if finite is None else finite)
            fresh = (seen == 2) & (self._seen == 1)
            self._mad[fresh] = np.maximum(d[fresh], 1e-12)
            self._seen = seen
            self._starting = bool((seen < 2).any())
            ok = (seen > 2) if finite is None else (seen > 2) & finite
        else:
            ok = finite
        if not slow:
            return
        step = _SLOW_EVERY * max(1.0 / self.frames, self.noise_step)
        factor = np.where(d > self._mad, math.exp(step), math.exp(-step))
        if ok is not None:
            factor[~ok] = 1.0
        self._mad *= factor
