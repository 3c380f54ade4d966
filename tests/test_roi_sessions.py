"""ROIs across simulated sessions of one subject, through the rig: each day the simulated field of view
moves; at each session's end its ROIs are matched to the earlier sessions' (roi_matches.json, the summary);
`rig run --rois` with suite2p output makes those the online module's ROIs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from online.rois import RoiSet
from rig.free_endpoints import free_network_overrides
from rig.roi_matches import ROI_MATCHES_FILE, match_session
from rig.session import RunOptions, SessionRunner
from rig.settings import load_settings
from rig.summary import format_summary, summarize_session
from tests.test_rois import write_suite2p

SIZE = 256


def test_sessions_match_their_rois_to_earlier_days_and_take_suite2p_rois(tmp_path: Path) -> None:
    settings = load_settings(overrides={
        **free_network_overrides(), "imaging.frame_height": SIZE, "imaging.frame_width": SIZE,
        "sim.microscope.day_shift_px": 12.0, "online.registration.reference_frames": 30})

    def run(**options: object) -> Path:
        return SessionRunner(settings, RunOptions(subject="m", trials=5, speed=10, data_root=tmp_path,
                                                  handle_signals=False, **options)).run().folder  # type: ignore[arg-type]

    first = run()
    assert json.loads((first / ROI_MATCHES_FILE).read_text())["matches"] == []  # nothing earlier
    second = run()  # day 1: the field moved
    matches = json.loads((second / ROI_MATCHES_FILE).read_text())
    [match] = matches["matches"]
    assert match["session"] == first.name and match["n_current"] == matches["n_rois"]
    config = MicroscopeConfig.from_settings(settings.sim.microscope, seed=settings.sim.seed, height=SIZE,
                                            width=SIZE)
    truth = np.subtract(*(SimMicroscope(config, day=d).field.day.shift for d in (0, 1)))
    assert np.abs(truth).max() > 1.0
    np.testing.assert_allclose(match["shift_px"], truth, atol=0.5)  # (plane 0's; every plane moves so)
    assert match["n_matched"] >= 0.5 * min(match["n_current"], match["n_previous"])
    text = format_summary(summarize_session(second))
    assert f"ROIs matched to session {first.name}: {match['n_matched']} of {match['n_current']}" in text

    # suite2p output made from the first day's ROIs and mean image of each plane: the third session uses
    # exactly those
    planes = settings.imaging.planes
    assert planes > 1 and len(match["planes"]) == planes  # matched plane by plane, each moved by the day
    for by_plane in match["planes"]:
        np.testing.assert_allclose(by_plane["shift_px"], truth, atol=0.5)
    rois = RoiSet.load(first / "rois.npz")
    for z in range(planes):
        plane_rois = RoiSet.load(first / f"rois_plane{z}.npz")
        stat = [{"ypix": y, "xpix": x, "lam": lam, "med": [int(y.mean()), int(x.mean())]}
                for y, x, lam in (plane_rois.roi(i) for i in range(plane_rois.n))]
        mean = np.load(first / f"reference_plane{z}.npy")
        plane = write_suite2p(tmp_path / "s2p" / "suite2p" / f"plane{z}", stat, np.ones((plane_rois.n, 2)),
                              {"meanImg": mean, "Ly": SIZE, "Lx": SIZE})
    third = run(rois=plane.parent.parent)
    assert json.loads((third / "session.json").read_text())["online"]["rois"] == str(plane.parent.parent)
    used = RoiSet.load(third / "rois.npz")
    assert used.n == rois.n
    np.testing.assert_array_equal(used.ypix, rois.ypix)
    np.testing.assert_array_equal(used.xpix, rois.xpix)
    by_session = {m["session"]: m for m in json.loads((third / ROI_MATCHES_FILE).read_text())["matches"]}
    assert list(by_session) == [second.name, first.name]  # newest first
    same = by_session[first.name]
    assert same["n_matched"] == rois.n and same["pairs"] == [[i, i] for i in range(rois.n)]
    assert max(abs(v) for v in same["shift_px"]) < 0.1

    # the match can be made again later from the files alone, with other settings
    again = match_session(third, settings.online.roi_match.model_copy(update={"previous_sessions": 1}))
    assert again is not None and [m["session"] for m in again["matches"]] == [second.name]


def _session(subject: Path, name: str, rois: RoiSet | None, image: np.ndarray | None) -> Path:
    folder = subject / name
    folder.mkdir(parents=True)
    (folder / "session.json").write_text("{}")
    if rois is not None:
        rois.save(folder / "rois.npz")
    if image is not None:
        np.save(folder / "reference.npy", image)
    return folder


def test_match_session_reads_only_earlier_sessions_with_rois_and_names_what_it_cannot_compare(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((48, 48)).astype(np.float32)
    rois = RoiSet.from_masks((48, 48), [{"ypix": [10, 10, 11, 11], "xpix": [10, 11, 10, 11]},
                                        {"ypix": [30, 30, 31, 31], "xpix": [20, 21, 20, 21]}])
    small = RoiSet.from_masks((32, 32), [{"ypix": [5, 5], "xpix": [5, 6]}])
    subject = tmp_path / "m"
    _session(subject, "2026-01-01_100000", rois, image)
    _session(subject, "2026-01-02_100000", None, None)  # no online processing: skipped
    _session(subject, "2026-01-03_100000", small, np.ones((32, 32), np.float32))
    current = _session(subject, "2026-01-04_100000", rois, image)
    _session(subject, "2026-01-05_100000", rois, image)  # later: never compared
    (subject / "2026-01-03_100000_2").mkdir()  # not a session (no session.json)
    result = match_session(current)
    assert result is not None
    assert [m["session"] for m in result["matches"]] == ["2026-01-03_100000", "2026-01-01_100000"]
    other, same = result["matches"]
    assert "differ in size" in other["error"]
    assert same["n_matched"] == 2 and same["pairs"] == [[0, 0], [1, 1]] and same["shift_px"] == [0, 0]
    assert json.loads((current / ROI_MATCHES_FILE).read_text()) == result
    text = format_summary(summarize_session(current))
    assert "ROIs not matched to session 2026-01-03_100000" in text and "2 of 2" in text
    assert match_session(subject / "2026-01-02_100000") is None
