"""A session's ROIs matched to the subject's previous sessions, written as `roi_matches.json` in its folder.

The online module leaves each session's ROIs (`rois.npz`) and mean image (`reference.npy`) in the session
folder (online/store.py). After the session, `match_session` registers this session's mean image to each of
the subject's `previous_sessions` most recent earlier sessions that have both files, and matches the masks
one to one by overlap (online/roi_match.py), so that similarity and cross-decoding across days can run over
the same neurons. It reads only those files, so it runs as well long after the session (re-analysis).
A session of several planes is matched plane by plane, each plane's ROIs (`rois_plane<z>.npz`) through its
own mean image (`reference_plane<z>.npy`); the pairs are indices into `rois.npz` (the planes' ROIs one
plane's after another's), and sessions of different plane counts are not compared.

roi_matches.json: {"format", "session", "n_rois", "settings", "matches": [per previous session, newest
first: {"session", "n_previous", "n_current", "n_matched", "shift_px" [dy, dx] (moves this session's field
onto that one's; plane 0's with several planes), "correlation", "pairs" [[previous ROI, this ROI], ...],
"overlap" [Jaccard per pair], with several planes "planes" [per plane: {"shift_px", "correlation",
"n_previous", "n_current", "n_matched"}]} or {"session", "error"} when that session could not be compared]}.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from online.roi_match import RoiMatch, RoiMatchParams, match_rois
from online.rois import RoiSet
from online.settings import RoiMatchSettings
from online.store import PLANE_REFERENCE_FILE, PLANE_ROIS_FILE, REFERENCE_FILE, ROIS_FILE, load_reference
from rig.store import SESSION_FILE, write_json_atomic

log = logging.getLogger(__name__)

ROI_MATCHES_FILE = "roi_matches.json"
ROI_MATCHES_FORMAT = "roi-matches/1"


def _has_rois(folder: Path) -> bool:
    return (folder / SESSION_FILE).is_file() and (folder / ROIS_FILE).is_file() \
        and (folder / REFERENCE_FILE).is_file()


def previous_sessions(session: Path, limit: int) -> list[Path]:
    """The subject's `limit` most recent sessions before `session` that have ROIs and a mean image, newest
    first (session folders are named by their start time, so names sort in time)."""
    session = Path(session).resolve()
    if limit <= 0:
        return []
    earlier = sorted((p for p in session.parent.iterdir() if p.is_dir() and p.name < session.name
                      and _has_rois(p)), key=lambda p: p.name, reverse=True)
    return earlier[:limit]


def _load(folder: Path) -> list[tuple[RoiSet, Any]]:
    """Each plane's ROIs and mean image: the plane files of a session of several planes, else rois.npz and
    reference.npy."""
    planes = []
    while (folder / PLANE_ROIS_FILE.format(z := len(planes))).is_file():
        planes.append((RoiSet.load(folder / PLANE_ROIS_FILE.format(z)),
                       load_reference(folder / PLANE_REFERENCE_FILE.format(z))))
    return planes or [(RoiSet.load(folder / ROIS_FILE), load_reference(folder / REFERENCE_FILE))]


def match_planes(previous: list[tuple[RoiSet, Any]], current: list[tuple[RoiSet, Any]],
                 params: RoiMatchParams) -> dict[str, Any]:
    """The planes matched one by one (see the module docstring), as one entry of roi_matches.json."""
    if len(previous) != len(current):
        raise ValueError(f"that session images {len(previous)} plane(s), this one {len(current)}")
    found: list[RoiMatch] = [match_rois(old, old_image, rois, image, params)
                             for (old, old_image), (rois, image) in zip(previous, current, strict=True)]
    if len(found) == 1:
        return found[0].to_dict()
    before_old = np.cumsum([0] + [m.n_previous for m in found[:-1]])
    before_new = np.cumsum([0] + [m.n_current for m in found[:-1]])
    pairs = np.concatenate([m.pairs + [a, b] for m, a, b in zip(found, before_old, before_new, strict=True)])
    overlap = np.concatenate([m.overlap for m in found])
    first = found[0]
    merged = RoiMatch(first.shift, first.correlation, pairs.astype(np.int64), overlap,
                      sum(m.n_previous for m in found), sum(m.n_current for m in found)).to_dict()
    keep = ("shift_px", "correlation", "n_previous", "n_current", "n_matched")
    merged["planes"] = [{k: m.to_dict()[k] for k in keep} for m in found]
    return merged


def match_session(session: Path, settings: RoiMatchSettings | None = None) -> dict[str, Any] | None:
    """Match `session`'s ROIs to its subject's previous sessions and write roi_matches.json (see the module
    docstring); returns what was written, or None when the session has no ROIs and mean image (no online
    processing). A previous session that cannot be read or compared is an entry with its error."""
    settings = settings or RoiMatchSettings()
    session = Path(session)
    if not ((session / ROIS_FILE).is_file() and (session / REFERENCE_FILE).is_file()):
        log.info("no ROIs in %s (no online processing): not matched to earlier sessions", session)
        return None
    planes = _load(session)
    params = RoiMatchParams(min_overlap=settings.min_overlap, max_shift_px=settings.max_shift_px)
    matches: list[dict[str, Any]] = []
    for previous in previous_sessions(session, settings.previous_sessions):
        try:
            match = match_planes(_load(previous), planes, params)
        except (OSError, ValueError) as exc:
            matches.append({"session": previous.name, "error": str(exc)})
            log.warning("ROIs of %s not matched to %s: %s", session.name, previous.name, exc)
            continue
        matches.append({"session": previous.name, **match})
        log.info("ROIs of %s matched to %s: %d of %d (%d there), field shift (%.2f, %.2f) px", session.name,
                 previous.name, match["n_matched"], match["n_current"], match["n_previous"],
                 *match["shift_px"])
    result = {"format": ROI_MATCHES_FORMAT, "session": session.name, "n_rois": sum(r.n for r, _ in planes),
              "settings": settings.model_dump(), "matches": matches}
    write_json_atomic(session / ROI_MATCHES_FILE, result)
    return result


def match_summary(matches: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per previous session, what a session summary shows: its name, the ROIs matched, the shift, or the
    error (without the pairs)."""
    if not isinstance(matches, dict):
        return []
    keep = ("session", "n_matched", "n_current", "n_previous", "shift_px", "error")
    return [{k: m[k] for k in keep if k in m} for m in matches.get("matches") or [] if isinstance(m, dict)]
