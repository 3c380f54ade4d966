"""suite2p output as the session's ROIs, one `RoiSet` and mean image per plane.

suite2p writes `<save_path>/suite2p/plane0 .. planeN/` (stat.npy, iscell.npy, ops.npy;
online.rois.load_suite2p reads one). A user may point at a plane folder or at the folder holding the planes
(`suite2p/`, or the one above it); planes are ordered by their number, so plane k of the files is plane k of
the microscope. A folder that is neither, a plane folder without its stat.npy, masks outside the frame, or
fields of another size than the frames are each one sentence naming the file or the folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from online.rois import NeuropilParams, RoiSet, load_suite2p

_PLANE = re.compile(r"plane(\d+)")
SUITE2P_FILES = ("stat.npy", "iscell.npy", "ops.npy")


@dataclass(frozen=True, eq=False)
class Suite2pPlane:
    """One plane of suite2p output: its cells as ROIs and its mean image (the registration reference)."""

    plane: int
    folder: Path
    rois: RoiSet
    mean_image: np.ndarray


def _plane_number(folder: Path) -> int | None:
    match = _PLANE.fullmatch(folder.name)
    return int(match.group(1)) if match else None


def is_suite2p_output(path: str | Path) -> bool:
    """Whether `path` looks like suite2p output: a folder with one of suite2p's files, or with planeN folders
    (directly or under suite2p/)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if any((path / name).exists() for name in SUITE2P_FILES):
        return True
    return bool(plane_folders_in(path) or plane_folders_in(path / "suite2p"))


def plane_folders_in(folder: Path) -> list[Path]:
    """The planeN sub-folders of `folder`, by plane number (none when it is not a folder)."""
    if not folder.is_dir():
        return []
    found = [(n, p) for p in folder.iterdir() if p.is_dir() and (n := _plane_number(p)) is not None]
    return [p for _, p in sorted(found)]


def plane_folders(path: str | Path) -> list[Path]:
    """The plane folders of suite2p output at `path` (a plane folder, suite2p/, or the folder above it)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"suite2p output {path} does not exist (or is not a folder)")
    if any((path / name).exists() for name in SUITE2P_FILES):
        return [path]
    planes = plane_folders_in(path) or plane_folders_in(path / "suite2p")
    if not planes:
        raise ValueError(f"{path} is not suite2p output: it has no stat.npy and no plane0..planeN folders")
    numbers = [_plane_number(p) for p in planes]
    if numbers != list(range(len(planes))):
        raise ValueError(f"suite2p output {path}: plane folders {', '.join(p.name for p in planes)} are not "
                         f"plane0..plane{len(planes) - 1}")
    return planes


def load_suite2p_output(path: str | Path, neuropil: NeuropilParams | None = None) -> list[Suite2pPlane]:
    """Every plane's cells and mean image from suite2p output at `path` (see the module docstring).
    Raises FileNotFoundError or ValueError with one sentence naming the file."""
    planes = []
    for number, folder in enumerate(plane_folders(path)):
        if not (folder / "stat.npy").is_file():
            raise FileNotFoundError(f"suite2p plane folder {folder} has no stat.npy (the ROI masks)")
        rois, mean_image = load_suite2p(folder, neuropil)
        planes.append(Suite2pPlane(number, folder, rois, mean_image))
    return planes

