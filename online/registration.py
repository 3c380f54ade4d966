"""Rigid, subpixel registration of two-photon frames against a reference image, within a 1 ms frame budget.

Method: whitened phase correlation (suite2p's rigid step) on a centre crop only (FIOLA's trick). The
reference crop's spectrum is computed once, whitened and multiplied by a Gaussian low-pass (which both
suppresses the high-frequency noise that whitening amplifies and makes the correlation peak Gaussian-shaped).
Per frame: crop (default 128 x 128), remove the mean, taper the edges, `rfft2`, whiten, multiply by the
stored reference spectrum, `irfft2`, take the integer peak within +/- `max_shift_px`, then refine it with a
3-point Gaussian fit per axis (exact for a Gaussian peak, ~10 us). Optionally (`upsample` > 1) the peak is
refined instead by a matrix-multiply DFT of the cross-power spectrum on a grid 1/upsample px fine around
the integer peak (Guizar-Sicairos et al. 2008), followed by the same 3-point fit on that fine grid.

Everything is float32 and single-threaded: numpy's FFT (pocketfft) uses one thread. BLAS (used by the trace
extractor's weight product, the `upsample` refinement and `build_reference`) must be limited to one thread
in the online process: set `OMP_NUM_THREADS=1` and `OPENBLAS_NUM_THREADS=1` before numpy is imported (the
process entry point's job). Otherwise OpenBLAS spins threads that fight acquisition and display for the
cores (CaImAn users' lesson; measured here: p99 of the DFT refinement 24 ms instead of 1.6 ms).

Sign convention (tested): `Shift(dy, dx)` is the shift that, applied to the frame, aligns it to the
reference: `apply_shift(frame, dy, dx)` ~ reference. If the frame's content is displaced by (+2, -1) px
relative to the reference (e.g. `SimFrame.truth.shift == (2, -1)`), registration reports (-2, +1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

_EPS = np.float32(1e-6)


@dataclass(frozen=True)
class RegistrationParams:
    """How to register. `max_shift_px` and `upsample` mirror settings online.registration."""

    crop_px: int = 128
    """Side of the centre crop used for phase correlation (FFT cost ~ crop^2); clipped to the frame size."""
    max_shift_px: float = 30.0
    """Largest shift searched, per axis; larger motion is reported clipped to this bound."""
    smooth_sigma_px: float = 1.15
    """Gaussian low-pass (px) applied to the whitened cross-power spectrum (suite2p's smooth_sigma)."""
    taper_px: float = 16.0
    """Width of the cosine edge taper on the crop, so the crop's hard edges do not correlate at zero shift."""
    upsample: int = 1
    """1: 3-point Gaussian peak fit (fastest, as accurate in the tests). > 1: matrix-DFT refinement on a
    1/upsample px grid around the integer peak (+~0.15 ms)."""

    def __post_init__(self) -> None:
        if self.crop_px < 16:
            raise ValueError(f"crop_px must be at least 16, got {self.crop_px}")
        if self.max_shift_px < 0:
            raise ValueError(f"max_shift_px must be non-negative, got {self.max_shift_px}")
        if self.smooth_sigma_px < 0 or self.taper_px < 0:
            raise ValueError("smooth_sigma_px and taper_px must be non-negative")
        if self.upsample < 1:
            raise ValueError(f"upsample must be at least 1, got {self.upsample}")


@dataclass(frozen=True)
class Shift:
    """Result of registering one frame: the shift to apply to the frame (px), and the match quality."""

    dy: float
    dx: float
    correlation: float
    """Phase-correlation peak relative to a perfect match (1 = identical up to the shift, ~0 = no match)."""
    clipped: bool = False
    """True when the peak sat on the +/- max_shift_px bound (the real motion may be larger)."""


def _cosine_taper(n: int, width: float) -> np.ndarray:
    """1 in the middle, raised-cosine ramps of `width` px at both ends."""
    w = np.ones(n, dtype=np.float64)
    k = int(min(round(width), n // 2))
    if k > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k)
        w[:k] = ramp
        w[n - k :] = ramp[::-1]
    return w


def _subpixel_offset(left: float, centre: float, right: float) -> float:
    """Peak offset in [-0.5, 0.5] from three samples: Gaussian (log-parabola) fit; parabola if any <= 0."""
    if left > 0 and centre > 0 and right > 0:
        a, b, c = math.log(left), math.log(centre), math.log(right)
    else:
        a, b, c = left, centre, right
    denom = a - 2.0 * b + c
    if denom >= 0:  # not a maximum (flat or noisy): stay on the sample
        return 0.0
    return min(max(0.5 * (a - c) / denom, -0.5), 0.5)


class RigidRegistration:
    """Registers frames to one reference image; all reference-side work is done once, here."""

    def __init__(self, reference: np.ndarray, params: RegistrationParams | None = None) -> None:
        params = params or RegistrationParams()
        reference = np.asarray(reference)
        if reference.ndim != 2:
            raise ValueError(f"reference must be a 2-D image, got shape {reference.shape}")
        if not np.all(np.isfinite(reference)):
            raise ValueError("reference image contains NaN or infinite values")
        self.params = params
        self.bad_frames = 0
        self.reference = reference.astype(np.float32)
        self.shape: tuple[int, int] = (int(reference.shape[0]), int(reference.shape[1]))
        h, w = self.shape
        c = int(min(params.crop_px, h, w)) // 2 * 2  # even: the half spectrum then has a Nyquist column
        self.crop_px = c
        self._y0, self._x0 = (h - c) // 2, (w - c) // 2
        self.max_shift = min(float(params.max_shift_px), c / 2 - 2)
        if self.max_shift < params.max_shift_px:
            logger.warning(
                "max_shift_px %.1f does not fit a %d px crop; searching +/- %.1f px",
                params.max_shift_px,
                c,
                self.max_shift,
            )
        taper = np.outer(_cosine_taper(c, params.taper_px), _cosine_taper(c, params.taper_px))
        self._taper = taper.astype(np.float32)
        fy = np.fft.fftfreq(c)[:, None]
        fx = np.fft.rfftfreq(c)[None, :]
        lowpass = np.exp(-2 * math.pi**2 * params.smooth_sigma_px**2 * (fy**2 + fx**2))
        # Per-frame work buffers (so a frame allocates nothing large; an instance is not thread-safe).
        self._crop = np.empty((c, c), np.float32)
        self._spec = np.empty((c, c // 2 + 1), np.complex64)
        self._spec_pairs = self._spec.view(np.float32).reshape(c, c // 2 + 1, 2)
        self._mag = np.empty((c, c // 2 + 1), np.float32)
        self._surface = np.empty((c, c), np.float32)
        self._spec_tmp = np.empty((c, c // 2 + 1), np.complex64)
        ref_spec = np.fft.rfft2(self._prepare(self.reference).astype(np.float64))
        ref_conj = np.conj(ref_spec) / (np.abs(ref_spec) + 1e-6) * lowpass
        self._ref_conj = ref_conj.astype(np.complex64)
        # A frame identical to the reference gives a cross-power spectrum equal to `lowpass`: that peak is 1.
        self._perfect = float(np.fft.irfft2(lowpass, s=(c, c))[0, 0])
        # The search window as flat indices into the (wrapped) correlation surface.
        m = int(math.floor(self.max_shift))
        lags = np.arange(-m, m + 1)
        self._lags = lags
        self._window = ((lags[:, None] % c) * c + (lags[None, :] % c)).ravel()
        self._m = m
        if params.upsample > 1:
            self._setup_upsampling(params.upsample)

    # -- per frame -----------------------------------------------------------------------------

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        """Centre crop as float32 (in a reused buffer), mean removed, edges tapered."""
        c, y0, x0 = self.crop_px, self._y0, self._x0
        crop = self._crop
        np.copyto(crop, frame[y0:y0 + c, x0:x0 + c], casting="unsafe")
        crop -= np.add.reduce(crop, axis=None, dtype=np.float32) / crop.size  # = crop.mean(dtype=float32)
        crop *= self._taper
        return crop

    def _cross_power(self, frame: np.ndarray) -> np.ndarray:
        """Whitened, low-passed cross-power spectrum of the frame's crop with the reference's (half plane).

        norm="forward" is not about scale (whitening removes it): numpy 2's pocketfft runs the forward
        transform ~2x faster with it than with the default unit factor (measured, 128 px: 0.08 vs 0.16 ms)."""
        if frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} does not match the reference {self.shape}")
        # = np.fft.rfft2(crop, norm="forward", out=...), the same two 1-D passes minus its argument handling
        c = self.crop_px
        spec = np.fft.fft(np.fft.rfft(self._prepare(frame), c, 1, "forward", out=self._spec), c, 0, "forward",
                          out=self._spec)
        mag = np.abs(spec, out=self._mag)
        mag += _EPS
        np.reciprocal(mag, out=mag)
        spec *= self._ref_conj
        self._spec_pairs *= mag[..., None]  # real and imaginary parts times 1/|F|: no complex division
        return spec

    def register(self, frame: np.ndarray) -> Shift:
        """The shift (dy, dx) that aligns `frame` to the reference, with its correlation."""
        spec = self._cross_power(frame)
        c = self.crop_px
        # = np.fft.irfft2(spec, s=(c, c), out=...), the same two 1-D passes (into reused buffers)
        half = np.fft.ifft(spec, c, 0, None, out=self._spec_tmp)
        surface = np.fft.irfft(half, c, 1, None, out=self._surface)
        window = surface.take(self._window)
        best = int(np.argmax(window))
        n = self._lags.size
        iy, ix = int(self._lags[best // n]), int(self._lags[best % n])
        peak = float(window[best])
        if not peak > 0:  # blank (shutter closed: no structure) or NaN pixels: nothing to align to
            self.bad_frames += 1
            if self.bad_frames == 1 or self.bad_frames % 1000 == 0:
                logger.warning("frame without a correlation peak (blank or non-finite): shift (0, 0) "
                               "reported (%d so far)", self.bad_frames)
            return Shift(0.0, 0.0, 0.0, False)
        if self.params.upsample > 1:
            fy, fx, peak = self._refine_dft(spec, iy, ix)
        else:
            ry, rx = iy % c, ix % c
            fy = _subpixel_offset(float(surface[(ry - 1) % c, rx]), peak, float(surface[(ry + 1) % c, rx]))
            fx = _subpixel_offset(float(surface[ry, (rx - 1) % c]), peak, float(surface[ry, (rx + 1) % c]))
        # The surface peaks at the frame's displacement relative to the reference; the aligning shift is
        # its negative.
        m = self.max_shift
        clipped = abs(iy) >= self._m or abs(ix) >= self._m
        dy = min(max(-(iy + fy), -m), m)
        dx = min(max(-(ix + fx), -m), m)
        return Shift(dy + 0.0, dx + 0.0, peak / self._perfect, clipped)

    # -- optional DFT refinement ---------------------------------------------------------------

    def _setup_upsampling(self, up: int) -> None:
        c = self.crop_px
        half = int(math.ceil(1.5 * up))
        self._fine = (np.arange(-half, half + 1) / up).astype(np.float64)  # px offsets around the peak
        ky = np.fft.fftfreq(c) * c  # signed integer frequencies along y
        kx = np.arange(c // 2 + 1, dtype=np.float64)
        self._ky, self._kx = ky, kx
        weight = np.full(kx.size, 2.0)  # the half spectrum stands for both halves of a real signal ...
        weight[0] = 1.0
        weight[-1] = 1.0  # ... except the zero and Nyquist columns
        # exp(2 pi i k d / c) for the fine offsets d: fixed; the integer peak adds a per-frame phase vector.
        self._ey_fine = np.exp(2j * np.pi * np.outer(self._fine, ky) / c).astype(np.complex64)
        self._ex_fine = (np.exp(2j * np.pi * np.outer(kx, self._fine) / c) * weight[:, None]).astype(
            np.complex64
        )

    def _refine_dft(self, spec: np.ndarray, iy: int, ix: int) -> tuple[float, float, float]:
        """Correlation on a fine grid around (iy, ix) by two small matrix products; returns (fy, fx, peak)."""
        c = self.crop_px
        py = np.exp(2j * np.pi * self._ky * iy / c).astype(np.complex64)
        px = np.exp(2j * np.pi * self._kx * ix / c).astype(np.complex64)
        fine = ((self._ey_fine * py) @ spec @ (self._ex_fine * px[:, None])).real / (c * c)
        k = int(np.argmax(fine))
        n = self._fine.size
        i, j = k // n, k % n
        step = float(self._fine[1] - self._fine[0])
        fy = float(self._fine[i])
        fx = float(self._fine[j])
        if 0 < i < n - 1:
            fy += step * _subpixel_offset(float(fine[i - 1, j]), float(fine[i, j]), float(fine[i + 1, j]))
        if 0 < j < n - 1:
            fx += step * _subpixel_offset(float(fine[i, j - 1]), float(fine[i, j]), float(fine[i, j + 1]))
        return fy, fx, float(fine[i, j])


# -- shifting images (display, saving, tests) -----------------------------------------------------


def apply_shift(frame: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """The frame moved by (dy, dx) px, bilinear, edges replicated: out(y, x) = frame(y - dy, x - dx).

    This is exactly the sampling `TraceExtractor` does for ROI pixels, so extraction from the raw frame with
    a shift equals extraction from `apply_shift(frame, *shift)`. Returns float32."""
    img = np.asarray(frame, dtype=np.float32)
    h, w = img.shape
    sy, sx = -float(dy), -float(dx)
    iy, ix = math.floor(sy), math.floor(sx)
    ty, tx = np.float32(sy - iy), np.float32(sx - ix)
    rows = np.clip(np.arange(h) + iy, 0, h - 1)
    rows1 = np.clip(np.arange(h) + iy + 1, 0, h - 1)
    cols = np.clip(np.arange(w) + ix, 0, w - 1)
    cols1 = np.clip(np.arange(w) + ix + 1, 0, w - 1)
    top = img[rows] * (1 - ty) + img[rows1] * ty
    return (top[:, cols] * (1 - tx) + top[:, cols1] * tx).astype(np.float32)


def fourier_shift(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """The image moved by (dy, dx) px by a Fourier phase ramp (exact for band-limited images, wraps around).

    Sharper than `apply_shift` (no bilinear blur); used to build references and to make test data.
    float32 throughout (relative error ~1e-6)."""
    img = np.asarray(image, dtype=np.float32)
    return _shift_spectrum(_forward_spectrum(img), img.shape, dy, dx)


def _forward_spectrum(img: np.ndarray) -> np.ndarray:
    """The float32 image's half spectrum as `_shift_spectrum` takes it (norm="forward": see
    RigidRegistration._cross_power, the fast forward path)."""
    return np.fft.rfft2(img, norm="forward")


def _shift_spectrum(spec: np.ndarray, shape: tuple[int, int], dy: float, dx: float) -> np.ndarray:
    """`fourier_shift` from the image's `_forward_spectrum` (left unchanged: build_reference reuses it)."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    ramp_y = np.exp(-2j * np.pi * fy * dy)
    ramp_x = np.exp(-2j * np.pi * fx * dx) * (h * w)  # h*w undoes norm="forward"
    if h % 2 == 0:  # a Nyquist component can only be scaled, not phase-shifted, and stay real
        ramp_y[h // 2, 0] = ramp_y[h // 2, 0].real
    if w % 2 == 0:
        ramp_x[0, -1] = ramp_x[0, -1].real
    ramp = ramp_y * ramp_x
    shifted = spec.copy()
    shifted *= ramp.astype(np.complex64)  # in place, as numpy's in-place loop rounds (bit-identical results)
    return np.fft.irfft2(shifted, s=(h, w)).astype(np.float32, copy=False)


# -- building a reference -----------------------------------------------------------------------


def _as_stack(frames: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    stack = frames if isinstance(frames, np.ndarray) else np.stack([np.asarray(f) for f in frames])
    if stack.ndim != 3 or stack.shape[0] < 1:
        raise ValueError(f"frames must be a non-empty stack of 2-D images, got shape {stack.shape}")
    return stack.astype(np.float32)


def _seed_frames(stack: np.ndarray, n_seed: int) -> np.ndarray:
    """Indices of the frames most alike (suite2p's initial reference): the frame with the highest mean
    correlation to its n_seed best partners, and those partners. Correlation on 4x-binned frames."""
    n, h, w = stack.shape
    b = 4 if min(h, w) >= 64 else 1
    small = stack[:, : h // b * b, : w // b * b].reshape(n, h // b, b, w // b, b).mean(axis=(2, 4))
    flat = small.reshape(n, -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True) + 1e-12
    corr = flat @ flat.T
    k = min(n_seed, n)
    best = np.sort(corr, axis=1)[:, ::-1][:, :k]  # includes the frame itself (corr 1)
    centre = int(np.argmax(best.mean(axis=1)))
    return np.argsort(corr[centre])[::-1][:k]


def _aligned_mean(stack: np.ndarray, shifts: np.ndarray, keep: np.ndarray,
                  spectra: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Mean of the kept frames shifted into place, each pixel averaged only over frames that really saw it
    (a Fourier shift wraps content around the edges; the wrapped band is left out). `spectra` caches each
    frame's forward spectrum across calls (the frames do not change between iterations)."""
    _, h, w = stack.shape
    spectra = {} if spectra is None else spectra
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    plain = np.zeros((h, w))
    for i in keep:
        dy, dx = float(shifts[i, 0]), float(shifts[i, 1])
        spec = spectra.get(int(i))
        if spec is None:
            spec = spectra[int(i)] = _forward_spectrum(np.asarray(stack[i], dtype=np.float32))
        moved = _shift_spectrum(spec, (h, w), dy, dx)
        plain += moved
        y0, y1 = max(0, math.ceil(dy)), min(h, h + math.floor(dy))
        x0, x1 = max(0, math.ceil(dx)), min(w, w + math.floor(dx))
        total[y0:y1, x0:x1] += moved[y0:y1, x0:x1]
        count[y0:y1, x0:x1] += 1
    return np.where(count > 0, total / np.maximum(count, 1), plain / len(keep)).astype(np.float32)


def build_reference(
    frames: np.ndarray | Sequence[np.ndarray],
    iterations: int = 3,
    params: RegistrationParams | None = None,
    keep_fraction: float = 0.8,
    n_seed: int = 10,
) -> np.ndarray:
    """A reference image from frames with motion: mean after aligning to a running template.

    Start from the mean of the `n_seed` most mutually correlated frames; then `iterations` times register
    every frame to the current template (phase correlation on a 256 px crop, twice the online one),
    Fourier-shift it into place and average the best-matching `keep_fraction` of them. Finally the
    template is moved to the median position of the frames, so typical shifts are near zero and the
    +/- max_shift search is centred. Returns float32 (frame units)."""
    stack = _as_stack(frames)
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    n, h, w = stack.shape
    base = params or RegistrationParams()
    crop = min(h, w, 256) // 2 * 2
    whole = RegistrationParams(
        crop_px=crop,
        max_shift_px=min(base.max_shift_px, crop / 2 - 2),
        smooth_sigma_px=base.smooth_sigma_px,
        taper_px=base.taper_px,
    )
    template = stack[_seed_frames(stack, n_seed)].mean(axis=0)
    shifts = np.zeros((n, 2))
    spectra: dict[int, np.ndarray] = {}
    for it in range(iterations):
        reg = RigidRegistration(template, whole)
        results = [reg.register(f) for f in stack]
        shifts = np.array([(r.dy, r.dx) for r in results])
        corr = np.array([r.correlation for r in results])
        keep = np.argsort(corr)[::-1][: max(1, int(round(keep_fraction * n)))]
        template = _aligned_mean(stack, shifts, keep, spectra)
        logger.debug(
            "reference iteration %d: median correlation %.3f, shift sd (%.2f, %.2f) px",
            it,
            float(np.median(corr)),
            *shifts.std(axis=0),
        )
    centre = np.median(-shifts, axis=0)  # median displacement of the frames relative to the template
    return fourier_shift(template, float(centre[0]), float(centre[1]))
