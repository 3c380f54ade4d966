"""Regions of interest: weighted pixel masks (suite2p's ypix, xpix, lam), their neuropil annuli, outlines.

A `RoiSet` is built once per session (from suite2p output, from our own `rois.npz`, or by `detect_rois` on
the reference image) and is then read-only: `TraceExtractor` turns it into flat index arrays, the GUI draws
`outlines`. Coordinates are (y, x) = (row, column) in frame pixels, matching ypix/xpix.

Neuropil (`NeuropilParams`): for each ROI, the pixels within `outer_px` of its centroid, farther than
`inner_px` from any of its own pixels, and belonging to no ROI at all (suite2p's rule, so other cells'
signals do not leak into the neuropil estimate). In crowded fields the outer radius grows in 2 px steps (up
to 3x) until at least `min_pixels` are found.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ROIS_FORMAT = "rig-rois/1"
"""Format tag stored in rois.npz, so a future layout can be recognised."""


@dataclass(frozen=True)
class NeuropilParams:
    """Shape of the neuropil annulus around each ROI (px)."""

    inner_px: float = 2.0
    """Gap between the ROI's own pixels and its annulus."""
    outer_px: float = 15.0
    """Outer radius, from the ROI centroid."""
    min_pixels: int = 100
    """Grow the outer radius (up to 3x) until the annulus has this many pixels."""

    def __post_init__(self) -> None:
        if self.inner_px < 0 or self.outer_px <= self.inner_px:
            raise ValueError(f"neuropil radii must satisfy 0 <= inner_px < outer_px, got inner_px="
                             f"{self.inner_px}, outer_px={self.outer_px}")
        if self.min_pixels < 0:
            raise ValueError(f"min_pixels must be non-negative, got {self.min_pixels}")


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def _field(mask: Any, name: str) -> Any:
    return mask[name] if isinstance(mask, Mapping) else getattr(mask, name)


@dataclass(frozen=True, eq=False)
class RoiSet:
    """n ROIs as concatenated pixel lists with per-ROI offsets, plus their neuropil annuli.

    ROI i owns entries roi_offsets[i]:roi_offsets[i+1] of ypix/xpix/lam, and neuropil entries
    neuropil_offsets[i]:neuropil_offsets[i+1] of neuropil_index (flat index y * width + x)."""

    shape: tuple[int, int]
    ypix: np.ndarray
    xpix: np.ndarray
    lam: np.ndarray
    roi_offsets: np.ndarray
    neuropil_index: np.ndarray
    neuropil_offsets: np.ndarray
    neuropil: NeuropilParams = field(default_factory=NeuropilParams)

    def __post_init__(self) -> None:
        for name in ("ypix", "xpix", "lam", "roi_offsets", "neuropil_index", "neuropil_offsets"):
            getattr(self, name).flags.writeable = False  # a RoiSet is shared read-only once built

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_masks(cls, shape: tuple[int, int], masks: Iterable[Any],
                   neuropil: NeuropilParams | None = None) -> RoiSet:
        """From per-ROI masks: objects or mappings with ypix, xpix and (optional) lam, e.g. suite2p stat
        entries or the simulator's `RoiMask`. Validates every mask and builds the neuropil annuli."""
        h, w = int(shape[0]), int(shape[1])
        if h < 1 or w < 1:
            raise ValueError(f"shape must be positive, got {shape}")
        ys, xs, lams = [], [], []
        for i, mask in enumerate(masks):
            try:
                y = np.asarray(_field(mask, "ypix")).astype(np.int64).ravel()
                x = np.asarray(_field(mask, "xpix")).astype(np.int64).ravel()
            except (KeyError, AttributeError) as exc:
                raise ValueError(f"ROI {i}: needs ypix and xpix ({exc})") from None
            try:
                lam = np.asarray(_field(mask, "lam"), dtype=np.float64).ravel()
            except (KeyError, AttributeError):
                lam = np.ones(y.size)
            if y.size == 0 or y.size != x.size or lam.size != y.size:
                raise ValueError(f"ROI {i}: ypix, xpix and lam must be non-empty and of equal length, got "
                                 f"{y.size}, {x.size}, {lam.size}")
            if y.min() < 0 or x.min() < 0 or y.max() >= h or x.max() >= w:
                raise ValueError(f"ROI {i}: pixels outside the {h}x{w} frame (y {y.min()}..{y.max()}, "
                                 f"x {x.min()}..{x.max()})")
            if not np.all(np.isfinite(lam)) or lam.min() < 0 or lam.sum() <= 0:
                raise ValueError(f"ROI {i}: lam must be finite, non-negative and not all zero")
            ys.append(y)
            xs.append(x)
            lams.append(lam)
        return cls._assemble((h, w), ys, xs, lams, neuropil or NeuropilParams())

    @classmethod
    def _assemble(cls, shape: tuple[int, int], ys: list[np.ndarray], xs: list[np.ndarray],
                  lams: list[np.ndarray], neuropil: NeuropilParams) -> RoiSet:
        sizes = [y.size for y in ys]
        offsets = np.zeros(len(ys) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        ypix, xpix, lam = _concat(ys, np.int32), _concat(xs, np.int32), _concat(lams, np.float32)
        np_index, np_offsets = _neuropil_annuli(shape, ypix, xpix, lam, offsets, neuropil)
        return cls(shape, ypix, xpix, lam, offsets, np_index, np_offsets, neuropil)

    @classmethod
    def concatenate(cls, sets: Sequence[RoiSet]) -> RoiSet:
        """The ROIs of several sets of one frame size, in order (one plane's after another's): the neuron
        index of a multi-plane session, saved as one rois.npz. Each ROI keeps its own neuropil annulus."""
        if not sets:
            raise ValueError("no ROI set to concatenate")
        shape = sets[0].shape
        if any(tuple(s.shape) != tuple(shape) for s in sets):
            raise ValueError("ROI sets of different frame sizes cannot be concatenated: "
                             + ", ".join(f"{s.shape[0]}x{s.shape[1]}" for s in sets))
        if len(sets) == 1:
            return sets[0]

        def offsets(name: str, lengths: str) -> np.ndarray:
            parts, base = [np.zeros(1, np.int64)], 0
            for s in sets:
                parts.append(getattr(s, name)[1:] + base)
                base += getattr(s, lengths).size
            return np.concatenate(parts).astype(np.int64)

        return cls(shape, _concat([s.ypix for s in sets], np.int32),
                   _concat([s.xpix for s in sets], np.int32),
                   _concat([s.lam for s in sets], np.float32), offsets("roi_offsets", "ypix"),
                   _concat([s.neuropil_index for s in sets], np.int64),
                   offsets("neuropil_offsets", "neuropil_index"), sets[0].neuropil)

    # -- what callers use ------------------------------------------------------------------------

    @property
    def n(self) -> int:
        return int(self.roi_offsets.size - 1)

    def __len__(self) -> int:
        return self.n

    def roi(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ypix, xpix, lam) of ROI i."""
        a, b = self.roi_offsets[i], self.roi_offsets[i + 1]
        return self.ypix[a:b], self.xpix[a:b], self.lam[a:b]

    def neuropil_pixels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(ypix, xpix) of ROI i's neuropil annulus."""
        flat = self.neuropil_index[self.neuropil_offsets[i]:self.neuropil_offsets[i + 1]]
        return flat // self.shape[1], flat % self.shape[1]

    @cached_property
    def centroids(self) -> np.ndarray:
        """(n, 2) lam-weighted centres (y, x)."""
        ids = np.repeat(np.arange(self.n), np.diff(self.roi_offsets))
        total = np.bincount(ids, weights=self.lam, minlength=self.n)
        cy = np.bincount(ids, weights=self.lam * self.ypix, minlength=self.n) / total
        cx = np.bincount(ids, weights=self.lam * self.xpix, minlength=self.n) / total
        return np.stack([cy, cx], axis=1)

    @cached_property
    def outlines(self) -> list[np.ndarray]:
        """Per ROI, a polygon (k, 2) of (y, x) vertices along the pixel edges of the ROI's main body (pixels
        with lam >= 20 % of its maximum), implicitly closed (the last vertex joins the first), in pixel-centre
        coordinates: pixel (r, c) spans r +/- 0.5, c +/- 0.5 (add 0.5 for pyqtgraph's ImageItem, whose
        pixels span [c, c + 1))."""
        out = []
        for i in range(self.n):
            y, x, lam = self.roi(i)
            keep = lam >= 0.2 * lam.max()
            out.append(pixel_outline(y[keep], x[keep]))
        return out

    def outline_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All outlines concatenated for the wire: points float32 (m, 2) as (y, x) and offsets int32 (n + 1,),
        ROI i being points[offsets[i]:offsets[i + 1]]."""
        outlines = self.outlines
        offsets = np.zeros(self.n + 1, np.int32)
        np.cumsum([len(o) for o in outlines], out=offsets[1:])
        points = np.concatenate(outlines).astype(np.float32) if outlines else np.zeros((0, 2), np.float32)
        return points, offsets

    # -- our own file format -------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write rois.npz (plain arrays, no pickle)."""
        path = Path(path)
        with open(path, "wb") as fh:
            np.savez(fh, format=np.array(ROIS_FORMAT), shape=np.array(self.shape, np.int64),
                     ypix=self.ypix, xpix=self.xpix, lam=self.lam, roi_offsets=self.roi_offsets,
                     neuropil_index=self.neuropil_index, neuropil_offsets=self.neuropil_offsets,
                     neuropil=np.array([self.neuropil.inner_px, self.neuropil.outer_px,
                                        self.neuropil.min_pixels], np.float64))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RoiSet:
        """Read a rois.npz written by `save`; a missing, foreign or damaged file is named in the error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ROI file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:  # zipfile/pickle/format errors all mean "not a readable rois.npz"
            raise ValueError(f"ROI file {path} is not a readable .npz file: {exc}") from exc
        required = ("format", "shape", "ypix", "xpix", "lam", "roi_offsets", "neuropil_index",
                    "neuropil_offsets", "neuropil")
        missing = [k for k in required if k not in arrays]
        if missing:
            raise ValueError(f"ROI file {path} lacks {', '.join(missing)} (not written by RoiSet.save?)")
        if str(arrays["format"]) != ROIS_FORMAT:
            raise ValueError(f"ROI file {path} has format {str(arrays['format'])!r}, "
                             f"expected {ROIS_FORMAT!r}")
        try:
            inner, outer, min_px = (float(v) for v in arrays["neuropil"])
            shape = (int(arrays["shape"][0]), int(arrays["shape"][1]))
            rois = cls(shape, arrays["ypix"].astype(np.int32), arrays["xpix"].astype(np.int32),
                       arrays["lam"].astype(np.float32), arrays["roi_offsets"].astype(np.int64),
                       arrays["neuropil_index"].astype(np.int64), arrays["neuropil_offsets"].astype(np.int64),
                       NeuropilParams(inner, outer, int(min_px)))
        except (ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"ROI file {path} is inconsistent: {exc}") from exc
        problem = rois._consistency_problem()
        if problem:
            raise ValueError(f"ROI file {path} is inconsistent: {problem}")
        return rois

    def _consistency_problem(self) -> str | None:
        h, w = self.shape
        off, noff = self.roi_offsets, self.neuropil_offsets
        if off.size < 1 or off[0] != 0 or off[-1] != self.ypix.size or np.any(np.diff(off) < 1):
            return "roi_offsets do not partition the pixel lists into non-empty ROIs"
        if not (self.ypix.size == self.xpix.size == self.lam.size):
            return "ypix, xpix and lam differ in length"
        if self.ypix.size and (self.ypix.min() < 0 or self.ypix.max() >= h or self.xpix.min() < 0
                               or self.xpix.max() >= w):
            return f"pixels outside the {h}x{w} frame"
        if noff.size != off.size or noff[0] != 0 or noff[-1] != self.neuropil_index.size or np.any(
                np.diff(noff) < 0):
            return "neuropil_offsets do not match the ROIs"
        if self.neuropil_index.size and (self.neuropil_index.min() < 0 or self.neuropil_index.max() >= h * w):
            return "neuropil pixels outside the frame"
        return None


# -- neuropil ---------------------------------------------------------------------------------------


def _disk_offsets(radius: float) -> list[tuple[int, int]]:
    r = int(math.floor(radius))
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius**2]


def _neuropil_annuli(shape: tuple[int, int], ypix: np.ndarray, xpix: np.ndarray, lam: np.ndarray,
                     offsets: np.ndarray, params: NeuropilParams) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices of every ROI's annulus (see the module docstring), concatenated, and offsets."""
    h, w = shape
    n = offsets.size - 1
    occupied = np.zeros((h, w), bool)
    occupied[ypix, xpix] = True
    gap = _disk_offsets(params.inner_px)
    g = int(math.floor(params.inner_px))
    parts: list[np.ndarray] = []
    short = 0
    for i in range(n):
        a, b = offsets[i], offsets[i + 1]
        y, x, wt = ypix[a:b], xpix[a:b], lam[a:b].astype(np.float64)
        cy, cx = float(np.dot(wt, y) / wt.sum()), float(np.dot(wt, x) / wt.sum())
        radius = params.outer_px
        while True:
            r = int(math.ceil(radius))
            y0, y1 = max(int(cy) - r - 1, 0), min(int(cy) + r + 2, h)
            x0, x1 = max(int(cx) - r - 1, 0), min(int(cx) + r + 2, w)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            own = np.zeros((y1 - y0 + 2 * g, x1 - x0 + 2 * g), bool)  # own pixels, padded by the gap
            sel = (y >= y0) & (y < y1) & (x >= x0) & (x < x1)
            own[y[sel] - y0 + g, x[sel] - x0 + g] = True
            near = np.zeros((y1 - y0, x1 - x0), bool)  # within the gap of an own pixel
            for dy, dx in gap:
                near |= own[g - dy:g - dy + y1 - y0, g - dx:g - dx + x1 - x0]
            ring = inside & ~near & ~occupied[y0:y1, x0:x1]
            if ring.sum() >= params.min_pixels or radius >= 3 * params.outer_px:
                break
            radius += 2.0
        if ring.sum() < params.min_pixels:
            short += 1
        parts.append(((yy[ring]) * w + xx[ring]).astype(np.int64))
    if short:
        logger.warning("%d of %d ROIs have fewer than %d neuropil pixels even at 3x the outer radius", short,
                       n, params.min_pixels)
    np_offsets = np.zeros(n + 1, np.int64)
    np.cumsum([p.size for p in parts], out=np_offsets[1:])
    index = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return index, np_offsets


# -- outlines -----------------------------------------------------------------------------------------


def pixel_outline(ypix: np.ndarray, xpix: np.ndarray) -> np.ndarray:
    """The longest closed loop of pixel edges around a set of pixels, as (k, 2) (y, x) vertices.

    Edges are walked with the region on the left, so the loop is the outer boundary of the largest
    component in the common case; vertices sit at pixel corners (centre +/- 0.5)."""
    if ypix.size == 0:
        return np.zeros((0, 2), np.float32)
    y0, x0 = int(ypix.min()) - 1, int(xpix.min()) - 1
    m = np.zeros((int(ypix.max()) - y0 + 2, int(xpix.max()) - x0 + 2), bool)
    m[ypix - y0, xpix - x0] = True
    nxt: dict[tuple[int, int], list[tuple[int, int]]] = {}
    iy, ix = np.nonzero(m)
    # Corner (r, c) is the top-left corner of pixel (r, c). Directed edges keep the pixel on the left
    # when (y down, x right) is drawn with x to the right: top edge right-to-left, etc.
    for r, c in zip(iy.tolist(), ix.tolist(), strict=True):
        if not m[r - 1, c]:
            nxt.setdefault((r, c + 1), []).append((r, c))
        if not m[r + 1, c]:
            nxt.setdefault((r + 1, c), []).append((r + 1, c + 1))
        if not m[r, c - 1]:
            nxt.setdefault((r, c), []).append((r + 1, c))
        if not m[r, c + 1]:
            nxt.setdefault((r + 1, c + 1), []).append((r, c + 1))
    best: list[tuple[int, int]] = []
    while nxt:
        start = next(iter(nxt))
        loop = [start]
        cur = start
        while True:
            targets = nxt.get(cur)
            if not targets:
                break
            step = targets.pop()
            if not targets:
                del nxt[cur]
            if step == start:
                break
            loop.append(step)
            cur = step
        if len(loop) > len(best):
            best = loop
    pts = np.array(best, np.float64)
    turn = np.any(np.roll(pts, -1, axis=0) - pts != pts - np.roll(pts, 1, axis=0), axis=1)
    pts = pts[turn] if turn.any() else pts  # drop vertices in the middle of straight runs
    return (pts + np.array([y0, x0]) - 0.5).astype(np.float32)


# -- suite2p ------------------------------------------------------------------------------------------


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"suite2p file {path} does not exist")
    try:
        return np.load(path, allow_pickle=True)
    except Exception as exc:
        raise ValueError(f"suite2p file {path} is not a readable .npy file: {exc}") from exc


def load_suite2p(plane_dir: str | Path, neuropil: NeuropilParams | None = None) -> tuple[RoiSet, np.ndarray]:
    """ROIs classified as cells and the mean image from a suite2p plane folder (suite2p/plane0).

    Reads stat.npy (object array of dicts with ypix, xpix, lam, med), iscell.npy ((n, 2), column 0 is the
    cell flag) and ops.npy (0-d object array holding a dict with meanImg, Ly, Lx). These files are pickles:
    load only folders you trust. Errors name the file and what is wrong with it."""
    plane = Path(plane_dir)
    if not plane.is_dir():
        raise FileNotFoundError(f"suite2p plane folder {plane} does not exist")
    stat_path, iscell_path, ops_path = plane / "stat.npy", plane / "iscell.npy", plane / "ops.npy"
    ops_arr = _load_npy(ops_path)
    ops = ops_arr.item() if ops_arr.dtype == object and ops_arr.size == 1 else None
    if not isinstance(ops, dict):
        raise ValueError(f"suite2p file {ops_path} should hold a dict (a 0-d object array), got "
                         f"{ops_arr.dtype} array of shape {ops_arr.shape}")
    missing = [k for k in ("meanImg", "Ly", "Lx") if k not in ops]
    if missing:
        raise ValueError(f"suite2p file {ops_path} lacks {', '.join(missing)}")
    shape = (int(ops["Ly"]), int(ops["Lx"]))
    mean_image = np.asarray(ops["meanImg"], dtype=np.float32)
    if mean_image.shape != shape:
        raise ValueError(f"suite2p file {ops_path}: meanImg has shape {mean_image.shape} but (Ly, Lx) = "
                         f"{shape}")
    stat = _load_npy(stat_path)
    if stat.dtype != object or stat.ndim != 1:
        raise ValueError(f"suite2p file {stat_path} should be a 1-D object array of dicts, got {stat.dtype} "
                         f"array of shape {stat.shape}")
    iscell = _load_npy(iscell_path)
    if iscell.dtype == object or iscell.ndim != 2 or iscell.shape[1] < 1:
        raise ValueError(f"suite2p file {iscell_path} should be a numeric (n, 2) array, got {iscell.dtype} "
                         f"array of shape {iscell.shape}")
    if iscell.shape[0] != stat.shape[0]:
        raise ValueError(f"suite2p files disagree: {stat_path} has {stat.shape[0]} ROIs but {iscell_path} "
                         f"has {iscell.shape[0]} rows")
    cells = np.flatnonzero(iscell[:, 0] > 0.5)
    masks = []
    for i in cells:
        entry = stat[i]
        if not isinstance(entry, Mapping):
            raise ValueError(f"suite2p file {stat_path}: entry {i} is a {type(entry).__name__}, not a dict")
        missing = [k for k in ("ypix", "xpix", "lam") if k not in entry]
        if missing:
            raise ValueError(f"suite2p file {stat_path}: entry {i} lacks {', '.join(missing)}")
        masks.append(entry)
    try:
        rois = RoiSet.from_masks(shape, masks, neuropil)
    except ValueError as exc:  # name the file; the index in the message counts cells only
        raise ValueError(f"suite2p file {stat_path}: {exc} (counting cells only)") from None
    logger.info("suite2p %s: %d of %d ROIs are cells", plane, cells.size, stat.shape[0])
    return rois, mean_image


# -- detection ----------------------------------------------------------------------------------------


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur by FFT on a reflect-padded copy (no wrap-around at the edges)."""
    pad = int(math.ceil(3 * sigma))
    padded = np.pad(image, pad, mode="reflect")
    fy = np.fft.fftfreq(padded.shape[0])[:, None]
    fx = np.fft.rfftfreq(padded.shape[1])[None, :]
    gain = np.exp(-2 * math.pi**2 * sigma**2 * (fy**2 + fx**2))
    out = np.fft.irfft2(np.fft.rfft2(padded) * gain, s=padded.shape)
    return out[pad:pad + image.shape[0], pad:pad + image.shape[1]]


def _max_filter(image: np.ndarray, size: int) -> np.ndarray:
    """Separable running maximum over a size x size square (edges padded with -inf)."""
    r = size // 2
    padded = np.pad(image, r, mode="constant", constant_values=-np.inf)
    view = np.lib.stride_tricks.sliding_window_view
    rows = view(padded, size, axis=0).max(axis=-1)
    return view(rows, size, axis=1).max(axis=-1)


def detect_rois(reference: np.ndarray, max_rois: int, radius_px: float, threshold: float = 2.0,
                neuropil: NeuropilParams | None = None) -> RoiSet:
    """Disk-shaped ROIs at the blob-like local maxima of a band-passed reference image.

    For when no segmentation is given: the reference is band-passed with a difference of Gaussians
    matched to a cell of radius `radius_px` (centre sigma r/2, surround sigma 2r), divided by a local
    contrast (so dim and bright regions count alike), and every local maximum over a (2r+1)^2 window that
    stands `threshold` robust SDs above the median becomes a candidate; the strongest `max_rois` are kept.
    Each ROI is the disk of radius r around its peak, weighted by the positive band-passed signal. Cheap and
    correlation-free, so it works on one reference image; it misses cells that are dark at rest."""
    img = np.asarray(reference, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"reference must be a 2-D image, got shape {img.shape}")
    if radius_px < 1 or max_rois < 1:
        raise ValueError(f"radius_px must be >= 1 and max_rois >= 1, got {radius_px}, {max_rois}")
    r = float(radius_px)
    surround = _blur(img, 2 * r)
    band = _blur(img, r / 2) - surround
    contrast = np.sqrt(np.maximum(_blur((img - surround) ** 2, 4 * r), 0.0)) + 1e-9  # (FFT rounding: >= 0)
    score = band / contrast
    med = float(np.median(score))
    sd = 1.4826 * float(np.median(np.abs(score - med))) + 1e-12
    z = (score - med) / sd
    size = 2 * int(math.ceil(r)) + 1
    # A flat field's band-pass is FFT rounding noise, which the contrast division would blow up into
    # "cells": a peak must stand out of the image by more than rounding.
    rounding = 1e-6 * float(np.abs(img).max())
    peaks = (score == _max_filter(score, size)) & (z > threshold) & (band > rounding)
    ri = int(math.ceil(r))
    h, w = img.shape
    peaks[:ri, :] = peaks[-ri:, :] = False
    peaks[:, :ri] = peaks[:, -ri:] = False
    py, px = np.nonzero(peaks)
    order = np.argsort(score[py, px])[::-1][:max_rois]
    disk = np.array(_disk_offsets(r))
    masks = []
    for k in order:
        y, x = py[k] + disk[:, 0], px[k] + disk[:, 1]
        ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        y, x = y[ok], x[ok]
        weight = np.clip(band[y, x], 0, None)
        if weight.max() <= 0:
            weight = np.ones(y.size)
        weight = weight / weight.max()
        body = weight >= 0.1
        if body.sum() < 3:
            body = np.ones(y.size, bool)
            weight = np.ones(y.size)
        masks.append({"ypix": y[body], "xpix": x[body], "lam": weight[body]})
    logger.info("detect_rois: %d candidates above %.1f SD, kept %d", py.size, threshold, len(masks))
    return RoiSet.from_masks((h, w), masks, neuropil)


def roi_set_id(rois: RoiSet) -> str:
    """A short id of the ROI masks (same masks -> same id), so CDs compare only over the same neurons."""
    h = hashlib.sha1()
    h.update(np.asarray(rois.shape, np.int64).tobytes())
    for array in (rois.roi_offsets, rois.ypix, rois.xpix):
        h.update(np.ascontiguousarray(array).astype(np.int64).tobytes())
    h.update(np.round(np.asarray(rois.lam, np.float64), 4).tobytes())
    return f"rois-{h.hexdigest()[:12]}"
