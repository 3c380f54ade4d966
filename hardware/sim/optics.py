"""The imaged field of view: anatomy (cells, neuropil, vessels) and turning activity into int16 frames.

Everything that does not change from frame to frame is built once on a canvas padded by the largest
motion, so a frame costs: one scaled copy of the neuropil map plus the static image, one sparse add of the
cells' fluorescence changes (index arrays times the activity vector, no Python loop), a bilinear crop at the
frame's sub-pixel displacement, shot noise from a pre-generated pool, and the int16 conversion.

Positions and shapes are drawn in units of the reference frame (512 px across by default) from a
generator that does not depend on the frame size, so a smaller frame (chosen to keep up with a fast
session) shows the same neurons at lower resolution.

Across days (`OpticsParams.day`) the same anatomy is imaged again, as when a mouse is put back under the
objective: the whole field is displaced rigidly by a few pixels, and a few cells are out of view (out of
the focal plane, or no longer expressing). Both are drawn from a generator of their own per (seed, day), so
a day's field is reproducible and day 0 is the undisplaced field with every cell in view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NOISE_POOL_FRAMES = 4
"""Pre-generated normal noise, in frames; each frame reads it from a random offset with a random sign."""


@dataclass(frozen=True)
class RoiMask:
    """Ground-truth footprint of one neuron in frame pixels, like suite2p's stat: ypix, xpix, lam, med."""

    ypix: np.ndarray
    xpix: np.ndarray
    lam: np.ndarray
    med: tuple[float, float]


@dataclass(frozen=True)
class OpticsParams:
    """Frame geometry and photometry."""

    height: int = 512
    width: int = 512
    reference_size_px: int = 512
    """Frame size at which neuron_radius_px and motion_px are given."""
    neuron_radius_px: float = 5.0
    motion_px: float = 2.0
    noise: float = 0.1
    """Shot-noise sd at a resting cell pixel, as a fraction of its brightness."""
    brightness: float = 400.0
    """Counts of a resting cell pixel (footprint weight 1) before the PMT offset."""
    pmt_offset: float = 80.0
    """Subtracted from every pixel, so dark pixels (vessels) read negative like real int16 data."""
    neuropil_coupling: float = 0.5
    """Neuropil dF/F per unit of mean cell dF/F."""
    dtype: str = "int16"
    day: int = 0
    """Imaging day (the subject's earlier sessions): selects the day's displacement and cells in view."""
    day_shift_px: float = 3.0
    """Largest rigid displacement of the field on a day other than day 0, per axis (reference px)."""
    day_turnover: float = 0.05
    """Fraction of cells out of view on a day other than day 0 (drawn independently per day)."""

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(f"frame must be at least 8x8 pixels, got {self.height}x{self.width}")
        if self.dtype not in ("int16", "uint16"):
            raise ValueError(f"dtype must be 'int16' or 'uint16', got {self.dtype!r}")
        if self.day < 0 or self.day_shift_px < 0 or not 0 <= self.day_turnover < 1:
            raise ValueError(f"need day >= 0, day_shift_px >= 0 and 0 <= day_turnover < 1, got {self.day}, "
                             f"{self.day_shift_px}, {self.day_turnover}")

    @property
    def scale(self) -> tuple[float, float]:
        """Frame pixels per reference pixel, per axis."""
        return self.height / self.reference_size_px, self.width / self.reference_size_px

    @property
    def motion_max_px(self) -> tuple[float, float]:
        sy, sx = self.scale
        return self.motion_px * sy, self.motion_px * sx


@dataclass(frozen=True)
class DayView:
    """How one day's field differs from day 0's: its rigid displacement and which cells are in view."""

    shift: tuple[float, float]
    """(dy, dx) frame px: the day's content is displaced by this much relative to day 0's."""
    visible: np.ndarray
    """(n_neurons,) bool: cells in view on this day."""


def day_view(params: OpticsParams, n_neurons: int, rng: np.random.Generator,
             shift: tuple[float, float] | None = None) -> DayView:
    """The day's displacement (uniform within +/- day_shift_px per axis, or `shift`: another plane's, the
    volume moves as a whole) and cells in view (each out of view with probability day_turnover), from the
    day's own generator; day 0 is undisplaced with every cell."""
    if params.day == 0:
        return DayView((0.0, 0.0), np.ones(n_neurons, bool))
    if shift is None:
        sy, sx = params.scale
        dy, dx = rng.uniform(-params.day_shift_px, params.day_shift_px, 2)
        shift = (float(dy * sy), float(dx * sx))
    visible = rng.random(n_neurons) >= params.day_turnover
    return DayView(shift, visible)


def gaussian_blur(image: np.ndarray, sigma_px: tuple[float, float]) -> np.ndarray:
    """Periodic Gaussian blur by FFT (construction-time only)."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.rfftfreq(image.shape[1])[None, :]
    gain = np.exp(-2 * math.pi**2 * ((sigma_px[0] * fy) ** 2 + (sigma_px[1] * fx) ** 2))
    return np.fft.irfft2(np.fft.rfft2(image) * gain, s=image.shape)


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-12)


def place_neurons(n: int, radius_norm: float, rng: np.random.Generator) -> np.ndarray:
    """Centres in [0, 1) frame units, kept off the edges and mostly not touching (a soft Poisson disc)."""
    margin = 3.0 * radius_norm
    min_dist = 2.2 * radius_norm
    centres = np.empty((n, 2))
    for i in range(n):
        for _ in range(50):
            c = rng.uniform(margin, 1 - margin, 2)
            if i == 0 or np.min(np.hypot(*(centres[:i] - c).T)) >= min_dist:
                break
        centres[i] = c
    return centres


class FieldOfView:
    """Static anatomy plus the per-frame renderer; masks are in frame pixels at zero displacement.

    `day_rng` draws the day's `DayView` (`day_view`; `day_shift` gives its displacement instead, that of
    another plane of the same volume); the anatomy is drawn from `rng` alone, so every day shows the same
    cells and background. `masks` are the footprints where the day shows them (displaced by `day.shift`; all
    cells, also those out of view: see `day.visible`)."""

    def __init__(self, params: OpticsParams, n_neurons: int, rng: np.random.Generator,
                 resting_dff: np.ndarray, day_rng: np.random.Generator | None = None,
                 day_shift: tuple[float, float] | None = None) -> None:
        self.params = params
        self.day = day_view(params, n_neurons, day_rng if day_rng is not None else np.random.default_rng(0),
                            day_shift)
        h, w = params.height, params.width
        sy, sx = params.scale
        my, mx = params.motion_max_px
        p = int(math.ceil(max(my, mx))) + 2
        hp, wp = h + 2 * p, w + 2 * p
        ref = params.reference_size_px
        radius_norm = params.neuron_radius_px / ref
        # Cells: drawn in reference units first (independent of the frame size), then rasterised.
        centres = place_neurons(n_neurons, radius_norm, rng)
        axes = params.neuron_radius_px * np.clip(1 + 0.15 * rng.standard_normal((n_neurons, 2)), 0.7, 1.4)
        angles = rng.uniform(0, math.pi, n_neurons)
        self.resting_brightness = params.brightness * np.exp(0.3 * rng.standard_normal(n_neurons))
        anatomy = [self._footprint(c, a, t) for c, a, t in zip(centres, axes, angles, strict=True)]
        shift = np.array([self.day.shift[0] / h, self.day.shift[1] / w])
        self.masks = anatomy if not shift.any() else [
            self._footprint(c + shift, a, t) for c, a, t in zip(centres, axes, angles, strict=True)]
        # Neuropil: smooth background with fine texture, darkened by vessels.
        coarse = _standardise(gaussian_blur(rng.standard_normal((hp, wp)), (12 * sy, 12 * sx)))
        fine = _standardise(gaussian_blur(rng.standard_normal((hp, wp)), (1.5 * sy, 1.5 * sx)))
        background = params.brightness * 0.4 * np.clip(1 + 0.25 * coarse + 0.1 * fine, 0.2, None)
        background *= 1 - 0.85 * self._vessels(hp, wp, rng)
        # The day's displacement needs a wider margin: the same canvas, extended by reflection (the few
        # pixels of new tissue at an edge are not drawn from the anatomy's generator: it stays as on day 0).
        extra = int(math.ceil(max(abs(self.day.shift[0]), abs(self.day.shift[1]))))
        if extra:
            background = np.pad(background, extra, mode="reflect")
        self.pad = p = p + extra
        hp, wp = h + 2 * p, w + 2 * p
        # Sparse render structure: unique padded pixels, and per (neuron, pixel) entry its slot and weight.
        flat = [((m.ypix + p) * wp + (m.xpix + p)) for m in anatomy]
        entry_flat = np.concatenate(flat)
        self._entry_neuron = np.concatenate([np.full(f.size, i) for i, f in enumerate(flat)])
        self._unique, self._entry_slot = np.unique(entry_flat, return_inverse=True)
        lam = np.concatenate([m.lam for m in anatomy])
        in_view = self.day.visible[self._entry_neuron]
        self._entry_weight = lam * self.resting_brightness[self._entry_neuron] * in_view
        self._neuropil_map = (params.neuropil_coupling * background).astype(np.float32)
        cells = np.zeros(hp * wp)
        np.add.at(cells, entry_flat, self._entry_weight)
        self._static = (background + cells.reshape(hp, wp)).astype(np.float32)
        self._resting_mean_dff = float(np.mean(resting_dff))
        self._resting_dff = resting_dff
        # Per-frame work buffers and the noise pool (pre-scaled: sd = noise * sqrt(brightness * F + read^2)).
        self._canvas = np.empty((hp, wp), np.float32)
        self._canvas_flat = self._canvas.reshape(-1)
        self._rows = np.empty((h, w + 1), np.float32)
        self._rows2 = np.empty((h, w + 1), np.float32)
        self._out = np.empty((h, w), np.float32)
        self._sd = np.empty((h, w), np.float32)
        self._read_var = np.float32((0.3 * params.brightness) ** 2 / params.brightness)
        scale = np.float32(params.noise * math.sqrt(params.brightness))
        self._noise_pool = rng.standard_normal(NOISE_POOL_FRAMES * h * w, dtype=np.float32) * scale
        limits = np.iinfo(params.dtype)
        self._limits = (np.float32(limits.min), np.float32(limits.max))

    # -- construction helpers --------------------------------------------------------------------

    def _footprint(self, centre: np.ndarray, axes_ref: np.ndarray, angle: float) -> RoiMask:
        """Soft ellipse with a dimmer nucleus (GCaMP is cytosolic), sampled at pixel centres."""
        prm = self.params
        h, w, ref = prm.height, prm.width, prm.reference_size_px
        cy, cx = centre[0] * h, centre[1] * w
        reach_y = 1.8 * axes_ref.max() * h / ref + 1
        reach_x = 1.8 * axes_ref.max() * w / ref + 1
        ys = np.arange(max(int(cy - reach_y), 0), min(int(cy + reach_y) + 2, h))
        xs = np.arange(max(int(cx - reach_x), 0), min(int(cx + reach_x) + 2, w))
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        dy = ((yy + 0.5) / h - centre[0]) * ref
        dx = ((xx + 0.5) / w - centre[1]) * ref
        cos, sin = math.cos(angle), math.sin(angle)
        u = (dy * cos + dx * sin) / axes_ref[0]
        v = (-dy * sin + dx * cos) / axes_ref[1]
        rho = np.sqrt(u * u + v * v)
        lam = (1 / (1 + np.exp((rho - 1) / 0.12))) * (1 - 0.35 * np.exp(-((rho / 0.45) ** 2)))
        keep = lam >= 0.03
        if not keep.any():
            keep = lam == lam.max()
        return RoiMask(yy[keep].astype(np.int32), xx[keep].astype(np.int32), lam[keep].astype(np.float32),
                       (float(cy - 0.5), float(cx - 0.5)))

    def _vessels(self, hp: int, wp: int, rng: np.random.Generator) -> np.ndarray:
        """A few meandering dark vessels: rasterised random paths, blurred to their width."""
        sy, sx = self.params.scale
        out = np.zeros((hp, wp))
        for _ in range(int(rng.integers(3, 7))):
            trace = np.zeros((hp, wp))
            pos = rng.uniform(0, 1, 2) * (hp, wp)
            heading = rng.uniform(0, 2 * math.pi)
            step = 0.5 * min(sy, sx) + 0.25
            for _ in range(int(1.5 * max(hp, wp) / step)):
                heading += 0.03 * rng.standard_normal()
                pos = pos + step * np.array([math.sin(heading), math.cos(heading)])
                iy, ix = int(pos[0]), int(pos[1])
                if not (0 <= iy < hp and 0 <= ix < wp):
                    break
                trace[iy, ix] = 1.0
            width = rng.uniform(2.0, 6.0)
            blurred = gaussian_blur(trace, (width * sy / 2, width * sx / 2))
            peak = blurred.max()
            if peak > 0:
                out = np.maximum(out, np.clip(blurred / (0.6 * peak), 0, 1))
        return out

    # -- frames ----------------------------------------------------------------------------------

    def template(self) -> np.ndarray:
        """Noiseless image at rest, zero displacement (the day's field), no PMT offset (float32): the
        registration target."""
        self._sample(self._compose(self._resting_dff, 0.0), (0.0, 0.0), 1.0)
        return self._out.copy()

    def _compose(self, dff: np.ndarray, neuropil_level: float) -> np.ndarray:
        c = self._canvas
        np.multiply(self._neuropil_map, np.float32(neuropil_level), out=c)
        np.add(c, self._static, out=c)
        values = np.bincount(self._entry_slot, weights=self._entry_weight * dff[self._entry_neuron],
                             minlength=self._unique.size)
        self._canvas_flat[self._unique] += values.astype(np.float32)
        return c

    def _sample(self, canvas: np.ndarray, shift: tuple[float, float], gain: float) -> None:
        """Into `_out`: the canvas bilinearly cropped with its content displaced by `shift` plus the day's
        displacement, times gain. Output pixel (y, x) samples canvas (y + pad - dy, x + pad - dx)."""
        h, w, p = self.params.height, self.params.width, self.pad
        oy, ox = p - shift[0] - self.day.shift[0], p - shift[1] - self.day.shift[1]
        y0, x0 = int(math.floor(oy)), int(math.floor(ox))
        ty, tx = np.float32(oy - y0), np.float32(ox - x0)
        g = np.float32(gain)
        rows, rows2, out = self._rows, self._rows2, self._out
        np.multiply(canvas[y0:y0 + h, x0:x0 + w + 1], (1 - ty) * g, out=rows)
        np.multiply(canvas[y0 + 1:y0 + 1 + h, x0:x0 + w + 1], ty * g, out=rows2)
        np.add(rows, rows2, out=rows)
        np.multiply(rows[:, :w], 1 - tx, out=out)
        np.multiply(rows[:, 1:], tx, out=rows2[:, :w])
        np.add(out, rows2[:, :w], out=out)

    def neuropil_level(self, dff: np.ndarray) -> float:
        """Neuropil modulation: mean cell activity relative to rest (the neuropil is the cells' neurites)."""
        return float(np.mean(dff)) - self._resting_mean_dff

    def render(self, dff: np.ndarray, shift: tuple[float, float], gain: float,
               rng: np.random.Generator) -> np.ndarray:
        """One frame: cells at `dff`, content displaced by `shift` (dy, dx) px, brightness x gain, noise."""
        prm = self.params
        h, w = prm.height, prm.width
        out, sd = self._out, self._sd
        self._sample(self._compose(dff, self.neuropil_level(dff)), shift, gain)
        # Shot noise (variance proportional to intensity) plus a read-noise floor; pool at a random offset.
        if prm.noise > 0:
            start = int(rng.integers(0, self._noise_pool.size - h * w + 1))
            z = self._noise_pool[start:start + h * w].reshape(h, w)
            np.maximum(out, 0, out=sd)
            np.add(sd, self._read_var, out=sd)
            np.sqrt(sd, out=sd)
            np.multiply(sd, z, out=sd)
            if rng.random() < 0.5:
                np.add(out, sd, out=out)
            else:
                np.subtract(out, sd, out=out)
        np.subtract(out, np.float32(prm.pmt_offset), out=out)
        np.clip(out, *self._limits, out=out)
        return out.astype(prm.dtype)
