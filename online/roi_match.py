"""The same neurons in two sessions: register the mean images, shift the masks, match masks by overlap.

Across days the field of view moves by a few pixels and a few cells come and go, so ROI i of one session is
not ROI i of another. As CellReg does (Sheintuch et al. 2017) for the rigid case: the current session's mean
image is registered to the previous one's (whitened phase correlation on the whole image, subpixel;
`online.registration`), the current masks are moved by that shift (rounded to whole pixels: the masks are
pixel sets), and every pair of masks is scored by the Jaccard index (intersection over union) of their
main bodies (pixels with lam at least `body_fraction` of the ROI's maximum, as the outlines are drawn). A
one-to-one assignment (Hungarian, `scipy.optimize.linear_sum_assignment`) maximises the total overlap; pairs
below `min_overlap` are not matches. roicat's learned matching needs torch, which this module does not
bring in; on rigidly shifted fields overlap after registration is what tells two cells apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from online.registration import RegistrationParams, RigidRegistration
from online.rois import RoiSet


@dataclass(frozen=True)
class RoiMatchParams:
    """How masks are matched; `min_overlap` and `max_shift_px` mirror settings online.roi_match."""

    min_overlap: float = 0.5
    """Smallest Jaccard index (intersection over union of the masks' bodies) of a match."""
    max_shift_px: float = 40.0
    """Largest field-of-view displacement between the sessions searched, per axis (px)."""
    body_fraction: float = 0.2
    """A mask's body: its pixels with lam at least this fraction of its maximum."""

    def __post_init__(self) -> None:
        if not 0 < self.min_overlap <= 1:
            raise ValueError(f"min_overlap must be in (0, 1], got {self.min_overlap}")
        if self.max_shift_px < 0:
            raise ValueError(f"max_shift_px must be non-negative, got {self.max_shift_px}")
        if not 0 <= self.body_fraction < 1:
            raise ValueError(f"body_fraction must be in [0, 1), got {self.body_fraction}")


@dataclass(frozen=True, eq=False)
class RoiMatch:
    """ROIs of a current session matched to a previous session's."""

    shift: tuple[float, float]
    """(dy, dx) px that moves the current session's field onto the previous one's."""
    correlation: float
    """Phase-correlation peak of the mean images (1 = identical up to the shift, ~0 = no common field)."""
    pairs: np.ndarray
    """(k, 2) int: (previous ROI index, current ROI index), by previous index."""
    overlap: np.ndarray
    """(k,) Jaccard index of each pair."""
    n_previous: int
    n_current: int

    @property
    def n_matched(self) -> int:
        return int(self.pairs.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {"shift_px": [round(self.shift[0], 3), round(self.shift[1], 3)],
                "correlation": round(self.correlation, 4), "n_previous": self.n_previous,
                "n_current": self.n_current, "n_matched": self.n_matched,
                "pairs": self.pairs.tolist(), "overlap": [round(float(v), 4) for v in self.overlap]}


def register_fields(previous: np.ndarray, current: np.ndarray,
                    max_shift_px: float) -> tuple[float, float, float]:
    """(dy, dx, correlation): the shift that moves `current` onto `previous` (same-size mean images)."""
    previous = np.asarray(previous, np.float32)
    current = np.asarray(current, np.float32)
    if previous.shape != current.shape or previous.ndim != 2:
        raise ValueError(f"mean images of {previous.shape} and {current.shape} px: the fields differ in size")
    crop = min(previous.shape) // 2 * 2
    reach = min(float(max_shift_px), crop / 2 - 2)
    reg = RigidRegistration(previous, RegistrationParams(crop_px=max(crop, 16), max_shift_px=max(reach, 0.0),
                                                         taper_px=min(16.0, crop / 8)))
    shift = reg.register(current)
    return shift.dy, shift.dx, shift.correlation


def _bodies(rois: RoiSet, fraction: float, dy: int = 0, dx: int = 0) -> sparse.csr_matrix:
    """(n, h*w) 0/1 matrix of the masks' bodies moved by (dy, dx) px; pixels moved out of frame drop."""
    h, w = rois.shape
    rows, cols = [], []
    for i in range(rois.n):
        y, x, lam = rois.roi(i)
        keep = lam >= fraction * lam.max()
        yy, xx = y[keep].astype(np.int64) + dy, x[keep].astype(np.int64) + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        flat = np.unique(yy[inside] * w + xx[inside])
        rows.append(np.full(flat.size, i, np.int64))
        cols.append(flat)
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return sparse.csr_matrix((np.ones(row.size, np.float64), (row, col)), shape=(rois.n, h * w))


def overlap_matrix(previous: sparse.csr_matrix, current: sparse.csr_matrix) -> np.ndarray:
    """(n_previous, n_current) Jaccard index of every pair of 0/1 mask rows (dense: a few hundred ROIs)."""
    inter = (previous @ current.T).toarray()
    size_p = np.asarray(previous.sum(axis=1)).ravel()
    size_c = np.asarray(current.sum(axis=1)).ravel()
    union = size_p[:, None] + size_c[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def assign(overlap: np.ndarray, min_overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs maximising the total overlap, only among pairs of at least `min_overlap`:
    ((k, 2) int pairs sorted by the first index, (k,) their overlaps)."""
    candidate = overlap >= min_overlap
    rows = np.flatnonzero(candidate.any(axis=1))
    cols = np.flatnonzero(candidate.any(axis=0))
    if rows.size == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    sub = np.where(candidate[np.ix_(rows, cols)], overlap[np.ix_(rows, cols)], 0.0)
    r, c = linear_sum_assignment(sub, maximize=True)
    ok = sub[r, c] >= min_overlap
    pairs = np.stack([rows[r[ok]], cols[c[ok]]], axis=1).astype(np.int64)
    order = np.argsort(pairs[:, 0], kind="stable")
    return pairs[order], sub[r[ok], c[ok]][order]


def match_rois(previous: RoiSet, previous_image: np.ndarray, current: RoiSet, current_image: np.ndarray,
               params: RoiMatchParams | None = None) -> RoiMatch:
    """Match the current session's ROIs to a previous session's through their mean images (see the module
    docstring). ROIs and images must be of one frame size; a mismatch is a ValueError naming both."""
    params = params or RoiMatchParams()
    for rois, image, which in ((previous, previous_image, "previous"), (current, current_image, "current")):
        if tuple(rois.shape) != tuple(np.shape(image)):
            raise ValueError(f"the {which} session's ROIs are for {rois.shape[0]}x{rois.shape[1]} frames but "
                             f"its mean image is {np.shape(image)[0]}x{np.shape(image)[1]}")
    dy, dx, corr = register_fields(previous_image, current_image, params.max_shift_px)
    moved = _bodies(current, params.body_fraction, int(math.floor(dy + 0.5)), int(math.floor(dx + 0.5)))
    overlap = overlap_matrix(_bodies(previous, params.body_fraction), moved)
    pairs, values = assign(overlap, params.min_overlap)
    return RoiMatch((float(dy), float(dx)), float(corr), pairs, values, previous.n, current.n)
