"""Per-frame ROI fluorescence (F, neuropil, corrected) and a running dF/F, cheap enough for every frame.

`TraceExtractor` never shifts the frame. Registration gives the shift (dy, dx) that aligns the frame to the
reference, so ROI pixel p (reference coordinates) is read at p - (dy, dx) in the raw frame. Write that
sampling position as p + i + t with i integer and t in [0, 1)^2: the integer part is a constant offset into
the flat frame, and the bilinear blend of the 4 neighbours is folded into the ROI weights, so the whole
extraction is one gather and one segmented weighted sum:

    F_roi = sum over q in support(roi) of frame[q + i] * w_q(t),   w_q(t) = k(t) . L[:, q]

where the support is the ROI's pixels dilated by one pixel towards +y and +x, L holds the 4 bilinear corner
weights per support pixel (precomputed once) and k(t) = ((1-ty)(1-tx), (1-ty)tx, ty(1-tx), ty tx). Per frame
that is a (4 x E) matrix-vector product, a gather, a multiply and `np.add.reduceat`. The gather needs no
per-frame index arithmetic: it reads through a view of the flat frame that starts at the integer offset.
Positions outside the frame read the nearest edge pixel (edge replication, as
`online.registration.apply_shift` does), so extraction with a shift equals extraction from
`apply_shift(frame, dy, dx)` without one. Only pixels within `safe_margin_px` of the edges need clamped
indices; those are computed once per integer offset and cached. ROIs are processed top to bottom so that
consecutive gathers touch frame rows still in cache (measured 15 % faster than arbitrary order).

The neuropil is smooth on the scale of a pixel, so it is read at the nearest whole-pixel position (no
bilinear blend) and, by default, from every 4th annulus pixel in raster order (`neuropil_sample_every`):
~100 of ~400 pixels, which costs 4x less for a ~10 % noisier corrected trace (set 1 for the full annulus).

`DffTracker`: baseline F0 = a low percentile (default 10th) of the trace's 1-s means over the last
`baseline_window_s` (default 30 s), the usual percentile baseline (suite2p/CaImAn use percentile or min-max
filters offline) on 1-s bins: binning does the smoothing (noise would otherwise drag a low percentile down)
and keeps the history tiny (30 values per ROI, in cache). A full percentile over 500 ROIs x 900 frames each
frame would cost milliseconds; here each frame adds F to the current bin and re-sorts the 30 bin means of
only ceil(n / frames_per_bin) ROIs (round-robin), so every baseline is at most one bin old and the cost per
frame is constant (no periodic spike in the p99). Warm-up: until the first bin completes, F0 is the running
mean so far, so the first frames give dF/F ~ 0 instead of noise; after that the percentile of however many
bins exist (with few bins, close to the lowest).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from online.rois import RoiSet

logger = logging.getLogger(__name__)

_CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))
_CACHE_BYTES = 16_000_000
"""Per sampler: clamped index arrays kept for recently seen integer offsets."""


@dataclass(frozen=True)
class FrameTraces:
    """One frame's values per ROI (float32, shape (n,)): F, neuropil F, and F - coefficient * neuropil."""

    f: np.ndarray
    f_neuropil: np.ndarray
    f_corrected: np.ndarray


class _Sampler:
    """Reads a fixed list of pixels (grouped in segments, one per ROI) at an integer offset, edge-clamped.

    Entries at least `safe_px` from the frame edges ("interior") are read through a view of the flat frame
    that starts at the offset, so the per-frame work is one `take` with precomputed indices; the few entries
    near the edges get clamped indices computed per frame. Shifts beyond `safe_px` clamp every entry (slower,
    still correct). Entries are stored interior-first; each segment's sum is its interior part plus its edge
    part (two `reduceat` segments per ROI, empty ones masked)."""

    def __init__(self, seg: np.ndarray, y: np.ndarray, x: np.ndarray, n_segments: int, shape: tuple[int, int],
                 safe_px: int) -> None:
        h, w = shape
        self.shape, self.safe = shape, safe_px
        edge = (y < safe_px) | (y > h - 1 - safe_px) | (x < safe_px) | (x > w - 1 - safe_px)
        self.order = np.concatenate([np.flatnonzero(~edge), np.flatnonzero(edge)])  # stable: by segment
        self.size = int(seg.size)
        self.n_interior = int((~edge).sum())
        self.y = y[self.order].astype(np.intp)
        self.x = x[self.order].astype(np.intp)
        self._base = safe_px * w + safe_px
        self._interior_index = (self.y[:self.n_interior] * w + self.x[:self.n_interior] - self._base)
        seg_sorted = seg[self.order]
        starts = np.concatenate([np.searchsorted(seg_sorted[:self.n_interior], np.arange(n_segments)),
                                 self.n_interior + np.searchsorted(seg_sorted[self.n_interior:],
                                                                   np.arange(n_segments))])
        counts = np.bincount(seg_sorted[:self.n_interior], minlength=n_segments)
        counts_edge = np.bincount(seg_sorted[self.n_interior:], minlength=n_segments)
        self.starts = starts.astype(np.intp)  # may equal size: the buffer carries a zero sentinel there
        self.nonempty = np.concatenate([counts > 0, counts_edge > 0])
        self._mask = {np.dtype(np.float32): self.nonempty.astype(np.float32),
                      np.dtype(np.int32): self.nonempty.astype(np.int32)}
        self._buffers: dict[np.dtype, np.ndarray] = {}
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._cache_bytes = 0

    def read(self, frame: np.ndarray, iy: int, ix: int) -> np.ndarray:
        """Values at (y + iy, x + ix) of every entry (clamped into the frame), interior-first, plus a 0."""
        buf = self._buffers.get(frame.dtype)
        if buf is None:
            buf = self._buffers[frame.dtype] = np.zeros(self.size + 1, frame.dtype)
        flat = frame.reshape(-1)
        near = -self.safe <= iy <= self.safe and -self.safe <= ix <= self.safe
        start = self.n_interior if near else 0
        if near:  # mode="clip" with out=: numpy buffers `out` in the default mode; indices are valid anyway
            view = flat[iy * self.shape[1] + ix + self._base:]
            view.take(self._interior_index, out=buf[:start], mode="clip")
        if start < self.size:
            flat.take(self._clamped_index(iy, ix, start), out=buf[start:self.size], mode="clip")
        return buf

    def _clamped_index(self, iy: int, ix: int, start: int) -> np.ndarray:
        """Flat indices of entries start: at the offset, clamped into the frame; cached per offset (motion
        revisits the same few integer offsets, and small-array arithmetic costs ~5 us per numpy call)."""
        key = (iy, ix)
        index = self._cache.get(key)
        if index is None:
            h, w = self.shape
            yy = np.minimum(np.maximum(self.y[start:] + iy, 0), h - 1)
            xx = np.minimum(np.maximum(self.x[start:] + ix, 0), w - 1)
            index = yy * w + xx
            while self._cache and self._cache_bytes + index.nbytes > _CACHE_BYTES:
                self._cache_bytes -= self._cache.pop(next(iter(self._cache))).nbytes  # oldest first
            self._cache[key] = index
            self._cache_bytes += index.nbytes
        return index

    def segment_sums(self, values: np.ndarray, dtype: type | None = None) -> np.ndarray:
        """Per-segment sums of `values` (as returned by `read`, possibly reweighted)."""
        both = np.add.reduceat(values, self.starts, dtype=dtype)
        mask = self._mask.get(both.dtype)
        both *= self.nonempty.astype(both.dtype) if mask is None else mask  # an empty segment reads 1 value
        half = both.size // 2
        return both[:half] + both[half:]


class TraceExtractor:
    """Weighted ROI means and neuropil means of a frame, sampled at rigidly shifted positions.

    `neuropil_coefficient`: F_corrected = F - coefficient * F_neuropil (settings online.neuropil_coefficient).
    `max_shift_px`: larger shifts are clipped (and counted in `clipped_shifts`), matching registration.
    `neuropil_sample_every`: read every k-th annulus pixel (1 = the exact annulus mean).
    `safe_margin_px`: shifts up to this take the fast path; larger ones clamp every read (correct, slower).
    Not thread-safe (reuses buffers)."""

    def __init__(self, rois: RoiSet, shape: tuple[int, int] | None = None, neuropil_coefficient: float = 0.7,
                 max_shift_px: float = 30.0, neuropil_sample_every: int = 4, safe_margin_px: int = 8) -> None:
        shape = tuple(rois.shape) if shape is None else (int(shape[0]), int(shape[1]))
        if shape != tuple(rois.shape):
            raise ValueError(f"frame shape {shape} does not match the ROIs' frame {tuple(rois.shape)}")
        if rois.n == 0:
            raise ValueError("TraceExtractor needs at least one ROI")
        if neuropil_sample_every < 1:
            raise ValueError(f"neuropil_sample_every must be at least 1, got {neuropil_sample_every}")
        self.rois = rois
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.n = rois.n
        self.neuropil_coefficient = np.float32(neuropil_coefficient)
        self.max_shift_px = float(max_shift_px)
        self.clipped_shifts = 0
        safe = max(1, min(int(safe_margin_px), (min(self.shape) - 1) // 2))
        # Work through the ROIs top to bottom (by centroid row), so consecutive gathers touch nearby frame
        # rows that are still in cache; results are put back into the caller's ROI order at the end.
        self._order = np.argsort(rois.centroids[:, 0], kind="stable")
        self._rank = np.empty(self.n, np.intp)
        self._rank[self._order] = np.arange(self.n)
        self._roi = self._roi_sampler(rois, safe)
        self._neuropil = self._neuropil_sampler(rois, neuropil_sample_every, safe)
        self._k = np.empty(4, np.float32)
        self._weights = np.zeros(self._roi.size + 1, np.float32)  # last: the sentinel's weight, 0
        self._values = np.empty(self._roi.size + 1, np.float32)

    def _roi_sampler(self, rois: RoiSet, safe: int) -> _Sampler:
        """Support pixels (each ROI dilated one px to +y/+x) with their 4 bilinear corner weights."""
        n = rois.n
        sizes = np.diff(rois.roi_offsets)
        ids = np.repeat(self._rank, sizes)  # segment = the ROI's rank in the processing order
        lam = rois.lam.astype(np.float64)
        lam = lam / np.repeat(np.add.reduceat(lam, rois.roi_offsets[:-1]), sizes)  # weights sum to 1
        key_w = rois.shape[1] + 2
        span = (rois.shape[0] + 2) * key_w  # unique key per (roi, y, x), room for the +1 dilation
        ypix = rois.ypix.astype(np.int64)
        keys = [ids * span + (ypix + cy) * key_w + rois.xpix + cx for cy, cx in _CORNERS]
        uniq, inverse = np.unique(np.concatenate(keys), return_inverse=True)  # sorted by roi, then raster
        table = np.zeros((4, uniq.size), np.float64)
        corner = np.repeat(np.arange(4), ids.size)
        np.add.at(table, (corner, inverse), np.tile(lam, 4))
        roi_of, y, x = uniq // span, (uniq % span) // key_w, uniq % key_w
        # Support pixels one past the last row/column are fine: reads are clamped into the frame.
        h, w = rois.shape
        sampler = _Sampler(roi_of, y, x, n, (h, w), safe)
        self._roi_weights = np.ascontiguousarray(table[:, sampler.order], dtype=np.float32)
        return sampler

    def _neuropil_sampler(self, rois: RoiSet, every: int, safe: int) -> _Sampler:
        h, w = rois.shape
        flats, segs = [], []
        for i in self._order:
            flat = rois.neuropil_index[rois.neuropil_offsets[i]:rois.neuropil_offsets[i + 1]]
            if flat.size == 0:  # no annulus: use the ROI's own pixels (neuropil correction then cancels F)
                ry, rx, _ = rois.roi(i)
                flat = ry.astype(np.int64) * w + rx
            flat = flat[::every]
            flats.append(flat)
            segs.append(np.full(flat.size, len(segs)))
        flat = np.concatenate(flats)
        self._np_inv_count = (1.0 / np.array([f.size for f in flats], np.float64)).astype(np.float32)
        return _Sampler(np.concatenate(segs), flat // w, flat % w, rois.n, (h, w), safe)

    def extract(self, frame: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)) -> FrameTraces:
        """F, neuropil and corrected F of every ROI in `frame`, aligned by `shift` = (dy, dx) from
        registration (a `Shift` or any object with .dy/.dx also works)."""
        if frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} does not match the ROIs' frame {self.shape}")
        frame = np.ascontiguousarray(frame)  # no copy for frames as they arrive; the gathers need a flat view
        dy, dx = (shift.dy, shift.dx) if hasattr(shift, "dy") else shift  # type: ignore[union-attr]
        lim = self.max_shift_px
        if not (-lim <= dy <= lim and -lim <= dx <= lim):  # also catches NaN
            if not (math.isfinite(dy) and math.isfinite(dx)):
                dy, dx = 0.0, 0.0
            self.clipped_shifts += 1
            if self.clipped_shifts == 1 or self.clipped_shifts % 1000 == 0:
                logger.warning("shift (%.1f, %.1f) px beyond max_shift_px %.1f, clipped (%d so far)", dy, dx,
                               lim, self.clipped_shifts)
            dy, dx = min(max(dy, -lim), lim), min(max(dx, -lim), lim)
        sy, sx = -float(dy), -float(dx)  # sampling offset in the raw frame
        iy, ix = math.floor(sy), math.floor(sx)
        ty, tx = sy - iy, sx - ix
        k = self._k
        k[0], k[1], k[2], k[3] = (1 - ty) * (1 - tx), (1 - ty) * tx, ty * (1 - tx), ty * tx
        np.dot(k, self._roi_weights, out=self._weights[:-1])
        values = self._values
        np.copyto(values, self._roi.read(frame, iy, ix), casting="unsafe")
        values *= self._weights
        f = self._roi.segment_sums(values)[self._rank]
        neu = self._neuropil.read(frame, round(sy), round(sx))
        exact = np.int32 if neu.dtype.kind in "iu" and neu.dtype.itemsize <= 2 else np.float32
        f_neu = self._neuropil.segment_sums(neu, exact).astype(np.float32)
        f_neu *= self._np_inv_count
        f_neu = f_neu[self._rank]
        return FrameTraces(f, f_neu, f - self.neuropil_coefficient * f_neu)


class DffTracker:
    """Running dF/F = (F - F0) / max(F0, min_baseline), F0 a running low percentile (see module docstring)."""

    def __init__(self, n_rois: int, frame_rate_hz: float, baseline_window_s: float = 30.0,
                 percentile: float = 10.0, block_s: float = 1.0, min_baseline: float = 1.0) -> None:
        if n_rois < 1 or frame_rate_hz <= 0 or baseline_window_s <= 0 or block_s <= 0:
            raise ValueError(f"need n_rois >= 1 and a positive rate, window and block, got n_rois={n_rois}, "
                             f"frame_rate_hz={frame_rate_hz}, baseline_window_s={baseline_window_s}, "
                             f"block_s={block_s}")
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be within [0, 100], got {percentile}")
        self.n = n_rois
        self.percentile = float(percentile)
        self.block_frames = max(1, int(round(block_s * frame_rate_hz)))
        self.n_blocks = max(1, int(round(baseline_window_s / block_s)))
        self.min_baseline = np.float32(min_baseline)
        self._blocks = np.zeros((n_rois, self.n_blocks), np.float32)  # ROI-major block means, a ring
        self._sum = np.zeros(n_rois, np.float64)
        self._in_block = 0
        self.blocks_done = 0
        self._chunk = int(math.ceil(n_rois / self.block_frames))  # every ROI refreshed once per block
        self._next_roi = 0
        self.baseline = np.zeros(n_rois, np.float32)
        self.frames = 0

    def update(self, f: np.ndarray) -> np.ndarray:
        """Add one frame's F (n,) and return its dF/F (float32, n)."""
        f = np.asarray(f, dtype=np.float32)
        if f.shape != (self.n,):
            raise ValueError(f"expected {self.n} values, got shape {f.shape}")
        self._sum += f
        self._in_block += 1
        self.frames += 1
        if self.blocks_done == 0:  # warm-up: the mean so far (dF/F ~ 0 rather than noise over noise)
            self.baseline[:] = self._sum / self._in_block
        if self._in_block == self.block_frames:
            self._blocks[:, self.blocks_done % self.n_blocks] = self._sum / self._in_block
            self.blocks_done += 1
            self._sum[:] = 0.0
            self._in_block = 0
            if self.blocks_done == 1:
                self._refresh(0, self.n)
        elif self.blocks_done:
            a = self._next_roi
            b = min(a + self._chunk, self.n)
            self._refresh(a, b)
            self._next_roi = 0 if b >= self.n else b
        return (f - self.baseline) / np.maximum(self.baseline, self.min_baseline)

    def _refresh(self, a: int, b: int) -> None:
        """Baseline of ROIs a:b = the percentile of their completed block means (sorting ~30 values each)."""
        filled = min(self.blocks_done, self.n_blocks)
        kth = int(round(self.percentile / 100 * (filled - 1)))
        self.baseline[a:b] = np.sort(self._blocks[a:b, :filled], axis=1)[:, kth]
