"""suite2p output as the session's ROIs: a plane folder or the folder of plane0..planeN (files written as
suite2p writes them), taken by the online module from --rois or online.rois; bad output is one sentence."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from online.errors import UserInputError
from online.process import LiveOptions, OnlineService, load_roi_planes, load_roi_source
from online.settings import OnlineProcessSettings
from online.suite2p_rois import is_suite2p_output, load_suite2p_output, plane_folders
from rig.cli import build_parser
from rig.free_endpoints import free_network
from rig.online_child import OnlineProcess, online_process_settings
from rig.settings import parse_settings
from tests.test_rois import disk, write_suite2p

REPO = Path(__file__).resolve().parents[1]
SHAPE = (64, 80)


def write_plane(folder: Path, centres: list[tuple[int, int]], shape: tuple[int, int] = SHAPE,
                seed: int = 0) -> Path:
    """A suite2p plane folder: a disk per centre (all cells but the last), meanImg, Ly, Lx."""
    stat = [disk(cy, cx, 4) for cy, cx in centres]
    iscell = np.array([[1.0, 0.9]] * (len(centres) - 1) + [[0.0, 0.2]])
    mean = np.random.default_rng(seed).random(shape).astype(np.float32)
    return write_suite2p(folder, stat, iscell, {"meanImg": mean, "Ly": shape[0], "Lx": shape[1],
                                                "nframes": 500, "nplanes": 2})


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """<tmp>/session/suite2p/plane0 (3 cells) and plane1 (2 cells), as suite2p lays out two planes."""
    root = tmp_path / "session"
    write_plane(root / "suite2p" / "plane0", [(15, 20), (40, 30), (30, 60), (50, 70)], seed=1)
    write_plane(root / "suite2p" / "plane1", [(20, 20), (45, 50), (10, 70)], seed=2)
    return root


def test_every_plane_is_loaded_in_order_from_the_suite2p_folder_or_the_one_above(output: Path) -> None:
    for path in (output, output / "suite2p"):
        planes = load_suite2p_output(path)
        assert [p.plane for p in planes] == [0, 1]
        assert [p.folder.name for p in planes] == ["plane0", "plane1"]
        assert [p.rois.n for p in planes] == [3, 2]  # the last ROI of each plane is not a cell
        assert all(p.rois.shape == SHAPE and p.mean_image.shape == SHAPE for p in planes)
        np.testing.assert_allclose(planes[1].rois.centroids, [[20, 20], [45, 50]], atol=1e-6)
    one = load_suite2p_output(output / "suite2p" / "plane1")
    assert len(one) == 1 and one[0].rois.n == 2
    assert is_suite2p_output(output) and not is_suite2p_output(output / "nothing")


def test_planes_ten_and_up_sort_by_number(tmp_path: Path) -> None:
    for k in range(11):
        write_plane(tmp_path / f"plane{k}", [(15, 20), (40, 30)], seed=k)
    assert [p.name for p in plane_folders(tmp_path)] == [f"plane{k}" for k in range(11)]


def test_the_online_module_takes_the_planes_and_uses_plane0(output: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    planes = load_roi_planes(output)
    assert [r.n for r, _ in planes] == [3, 2]
    with caplog.at_level(logging.WARNING, logger="online"):
        [rois], [reference] = load_roi_source(output)
    assert rois.n == 3 and reference is not None
    np.testing.assert_array_equal(reference, planes[0][1])
    assert "2 planes" in caplog.text


@pytest.mark.parametrize(("damage", "words"), [
    ("missing_stat", "has no stat.npy"),
    ("gap", "are not plane0..plane1"),
    ("out_of_frame", "pixels outside the 64x80 frame"),
    ("not_suite2p", "expected suite2p output"),
    ("absent", "do not exist"),
])
def test_bad_suite2p_output_is_one_sentence_naming_it(output: Path, damage: str, words: str) -> None:
    path = output
    if damage == "missing_stat":
        (output / "suite2p" / "plane1" / "stat.npy").unlink()
    elif damage == "gap":
        (output / "suite2p" / "plane1").rename(output / "suite2p" / "plane2")
    elif damage == "out_of_frame":
        write_plane(output / "suite2p" / "plane1", [(20, 20), (62, 50), (10, 70)])
    elif damage == "not_suite2p":
        path = output / "empty"
        path.mkdir()
    else:
        path = output / "absent"
    with pytest.raises(UserInputError) as info:
        load_roi_planes(path)
    message = str(info.value)
    assert words in message and "\n" not in message
    assert str(path) in message or "plane" in message


def test_run_takes_rois_and_the_child_gets_them(tmp_path: Path, output: Path) -> None:
    args = build_parser().parse_args(["run", "--rois", str(output), "--no-gui"])
    assert args.rois == output
    settings = parse_settings({"network": free_network(), "online": {"rois": str(output)}})
    assert settings.online.rois == output
    child = OnlineProcess(settings, tmp_path / "s", None, rois=output)
    cmd = child.command(tmp_path / "online_settings.json")
    assert cmd[cmd.index("--rois") + 1] == str(output.resolve())


def test_online_rois_in_the_settings_are_the_module_s_rois(tmp_path: Path, output: Path) -> None:
    """`rig online` without --rois: the online section's rois are what the pipeline starts with (one plane
    of ROIs for a session of one plane)."""
    settings = parse_settings({"network": free_network(),
                               "imaging": {"frame_height": 64, "frame_width": 80, "planes": 1},
                               "online": {"rois": str(output / "suite2p" / "plane1")}})
    process = OnlineProcessSettings.model_validate_json(online_process_settings(settings).model_dump_json())
    options = LiveOptions(settings_path=tmp_path / "x.json", session_dir=tmp_path / "s")
    service = OnlineService(process, options)
    try:
        given = service.pipeline.startup.given_rois
        assert given is not None and given.n == 2
        assert service.pipeline.startup.given_reference is not None
    finally:
        service.close()


def test_rig_run_with_rois_of_another_field_size_is_one_sentence(tmp_path: Path) -> None:
    """The frames of the default simulated rig are not 64x80: refused before the session begins."""
    plane = write_plane(tmp_path / "plane0", [(15, 20), (40, 30)])
    proc = subprocess.run([sys.executable, "-m", "rig", "run", "--rois", str(plane), "--no-gui", "--data",
                           str(tmp_path / "data"), "--trials", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "are for 64x80 frames" in line and str(plane) in line and "Traceback" not in proc.stderr
    assert not any((tmp_path / "data").glob("*/*/session.json"))  # no session was started
