"""ROI sets: suite2p loading (files in suite2p's formats), neuropil annuli, outlines, rois.npz, detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardware.sim.microscope import SimMicroscope
from online.rois import NeuropilParams, RoiSet, detect_rois, load_suite2p, pixel_outline

SHAPE = (64, 80)


def disk(cy: int, cx: int, r: float) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[-int(r):int(r) + 1, -int(r):int(r) + 1]
    keep = yy**2 + xx**2 <= r * r
    lam = np.exp(-(yy[keep] ** 2 + xx[keep] ** 2) / (r * r)).astype(np.float32)
    return {"ypix": (cy + yy[keep]).astype(np.int32), "xpix": (cx + xx[keep]).astype(np.int32), "lam": lam,
            "med": [cy, cx], "npix": int(keep.sum())}


def write_suite2p(folder: Path, stat: list[dict], iscell: np.ndarray, ops: dict) -> Path:
    """The three files as suite2p writes them: np.save of an object array, of a float (n, 2) array, and of
    a dict (which np.save stores as a 0-d object array)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "stat.npy", np.array(stat, dtype=object), allow_pickle=True)
    np.save(folder / "iscell.npy", iscell)
    np.save(folder / "ops.npy", ops, allow_pickle=True)
    return folder


@pytest.fixture
def plane(tmp_path: Path) -> Path:
    stat = [disk(15, 20, 4), disk(40, 30, 5), disk(30, 60, 4)]
    iscell = np.array([[1.0, 0.93], [0.0, 0.12], [1.0, 0.71]])
    mean = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    ops = {"meanImg": mean, "Ly": SHAPE[0], "Lx": SHAPE[1], "refImg": mean, "nframes": 100}
    return write_suite2p(tmp_path / "suite2p" / "plane0", stat, iscell, ops)


def test_load_suite2p_keeps_only_cells_and_returns_the_mean_image(plane: Path) -> None:
    rois, mean = load_suite2p(plane)
    assert rois.n == 2 and rois.shape == SHAPE
    expected = [disk(15, 20, 4), disk(30, 60, 4)]
    for i, e in enumerate(expected):
        y, x, lam = rois.roi(i)
        np.testing.assert_array_equal(y, e["ypix"])
        np.testing.assert_array_equal(x, e["xpix"])
        np.testing.assert_allclose(lam, e["lam"])
    np.testing.assert_allclose(rois.centroids, [[15, 20], [30, 60]], atol=1e-6)
    assert mean.shape == SHAPE and mean.dtype == np.float32
    np.testing.assert_array_equal(mean, np.load(plane / "ops.npy", allow_pickle=True).item()["meanImg"])


@pytest.mark.parametrize("name", ["stat.npy", "iscell.npy", "ops.npy"])
def test_a_missing_suite2p_file_is_named(plane: Path, name: str) -> None:
    (plane / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        load_suite2p(plane)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="plane7"):
        load_suite2p(tmp_path / "plane7")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("stat.npy", np.zeros((3, 4)), "stat.npy should be a 1-D object array"),
    ("iscell.npy", np.ones(3), r"iscell.npy should be a numeric \(n, 2\) array"),
    ("iscell.npy", np.ones((5, 2)), "stat.npy has 3 ROIs but .*iscell.npy has 5 rows"),
    ("ops.npy", np.zeros(4), "ops.npy should hold a dict"),
    ("ops.npy", {"Ly": 64, "Lx": 80}, "ops.npy lacks meanImg"),
    ("ops.npy", {"meanImg": np.zeros((10, 10)), "Ly": 64, "Lx": 80}, "meanImg has shape"),
    ("stat.npy", np.array([{"ypix": [1], "xpix": [1]}] * 3, dtype=object), "entry 0 lacks lam"),
    ("stat.npy", np.array([disk(15, 20, 4), disk(40, 30, 5), disk(62, 60, 4)], dtype=object),
     "stat.npy: ROI 1: pixels outside the 64x80 frame"),
])
def test_invalid_suite2p_files_name_the_file_and_the_problem(plane: Path, name: str, content: object,
                                                             message: str) -> None:
    np.save(plane / name, content, allow_pickle=True)
    with pytest.raises(ValueError, match=message):
        load_suite2p(plane)


def test_an_unreadable_file_is_named(plane: Path) -> None:
    (plane / "iscell.npy").write_bytes(b"this is not numpy")
    with pytest.raises(ValueError, match="iscell.npy is not a readable .npy file"):
        load_suite2p(plane)


def test_annuli_exclude_every_roi_pixel_and_the_gap_and_stay_within_the_radius() -> None:
    sim = SimMicroscope(n_neurons=80, height=128, width=128, reference_size_px=512, neuron_radius_px=16)
    params = NeuropilParams(inner_px=2.0, outer_px=12.0, min_pixels=0)
    rois = RoiSet.from_masks((128, 128), sim.masks, params)
    occupied = np.zeros(128 * 128, bool)
    occupied[rois.ypix.astype(np.int64) * 128 + rois.xpix] = True
    assert rois.neuropil_index.size > 0
    assert not occupied[rois.neuropil_index].any()
    for i in range(rois.n):
        ny, nx = rois.neuropil_pixels(i)
        ry, rx, _ = rois.roi(i)
        cy, cx = rois.centroids[i]
        assert np.all(np.hypot(ny - cy, nx - cx) <= params.outer_px + 1e-9)
        if ny.size:
            gap = np.hypot(ny[:, None] - ry[None, :], nx[:, None] - rx[None, :]).min()
            assert gap > params.inner_px


def test_crowded_rois_grow_their_annulus_to_the_minimum() -> None:
    masks = [disk(cy, cx, 3) for cy in range(6, 60, 8) for cx in range(6, 76, 8)]
    rois = RoiSet.from_masks(SHAPE, masks, NeuropilParams(outer_px=8.0, min_pixels=60))
    counts = np.diff(rois.neuropil_offsets)
    assert counts.min() >= 60


def test_outlines_trace_the_pixel_edges() -> None:
    square = pixel_outline(np.repeat(np.arange(3, 6), 3), np.tile(np.arange(10, 13), 3))
    assert sorted(map(tuple, square.tolist())) == [(2.5, 9.5), (2.5, 12.5), (5.5, 9.5), (5.5, 12.5)]
    d = disk(30, 30, 6)
    poly = pixel_outline(d["ypix"], d["xpix"])
    y, x = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(np.dot(y, np.roll(x, 1)) - np.dot(x, np.roll(y, 1)))
    assert area == pytest.approx(d["npix"])
    rois = RoiSet.from_masks(SHAPE, [disk(15, 20, 4), disk(40, 30, 5)])
    assert len(rois.outlines) == 2 and all(o.ndim == 2 and o.shape[1] == 2 for o in rois.outlines)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    rois = RoiSet.from_masks(SHAPE, [disk(15, 20, 4), disk(40, 30, 5)], NeuropilParams(3.0, 10.0, 20))
    back = RoiSet.load(rois.save(tmp_path / "rois.npz"))
    assert back.shape == rois.shape and back.neuropil == rois.neuropil
    for name in ("ypix", "xpix", "lam", "roi_offsets", "neuropil_index", "neuropil_offsets"):
        np.testing.assert_array_equal(getattr(back, name), getattr(rois, name))


def test_loading_a_bad_rois_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        RoiSet.load(tmp_path / "nothere.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz is not a readable"):
        RoiSet.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", ypix=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz lacks"):
        RoiSet.load(tmp_path / "other.npz")
    rois = RoiSet.from_masks(SHAPE, [disk(15, 20, 4)])
    path = rois.save(tmp_path / "rois.npz")
    with np.load(path) as data:
        arrays = dict(data)
    arrays["roi_offsets"] = np.array([0, 5])
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(ValueError, match="broken.npz is inconsistent"):
        RoiSet.load(tmp_path / "broken.npz")


def test_masks_are_validated() -> None:
    with pytest.raises(ValueError, match="ROI 0: pixels outside"):
        RoiSet.from_masks(SHAPE, [{"ypix": [70], "xpix": [3], "lam": [1.0]}])
    with pytest.raises(ValueError, match="equal length"):
        RoiSet.from_masks(SHAPE, [{"ypix": [1, 2], "xpix": [3], "lam": [1.0]}])
    with pytest.raises(ValueError, match="lam must be"):
        RoiSet.from_masks(SHAPE, [{"ypix": [1], "xpix": [3], "lam": [-1.0]}])
    assert RoiSet.from_masks(SHAPE, [{"ypix": [1, 2], "xpix": [3, 3]}]).lam.tolist() == [1.0, 1.0]


def test_detect_rois_finds_most_simulated_neurons() -> None:
    sim = SimMicroscope()
    rois = detect_rois(sim.template(), max_rois=300, radius_px=sim.config.neuron_radius_px)
    truth = np.array([m.med for m in sim.masks])
    dist = np.hypot(*(truth[:, None, :] - rois.centroids[None, :, :]).transpose(2, 0, 1))
    recall = float((dist.min(axis=1) < sim.config.neuron_radius_px).mean())
    precision = float((dist.min(axis=0) < sim.config.neuron_radius_px).mean())
    assert recall >= 0.8, recall
    assert precision >= 0.7, precision
    assert rois.n <= 300 and np.diff(rois.neuropil_offsets).min() > 0
