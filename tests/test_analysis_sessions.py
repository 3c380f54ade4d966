"""Reading a session back for the study analysis: activity binned on the go-cue grid from the trace files the
online module writes, per plane, with unsampled bins left empty; bad folders named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from online.messages import TraceFrame
from online.store import TraceWriter
from rig.analysis.sessions import load_session, session_folders
from rig.store import DataError

RATE = 10.0
GO_S = 4.0


def _session(folder, trials: int = 3, planes: int = 1, n_rois: int = 4, drop_trial_frames: int | None = None):
    folder.mkdir(parents=True)
    (folder / "session.json").write_text("{}")
    records = [{"trial": t, "outcome": "hit", "context": "tactile", "side": "right" if t % 2 else "left",
                "block": 1, "block_label": "1",
                "bpod": {"States": {"ResponseCue": [[GO_S, GO_S + 0.1]]}, "Events": {}}}
               for t in range(1, trials + 1)]
    (folder / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    writer = TraceWriter(folder, n_rois, roi_set_id="r1", frame_rate_hz=RATE,
                         plane_rois=[n_rois // planes] * planes)
    plane_of_roi = np.repeat(np.arange(planes), n_rois // planes)
    frame = 0
    for t in range(1, trials + 1):
        for k in range(int(6 * RATE)):
            for plane in range(planes):
                time_s = k / RATE + plane / (RATE * planes)
                if t == drop_trial_frames and abs(time_s - (GO_S - 0.25)) < 0.051:
                    continue
                # each ROI reads 100 * trial + its index on its own plane's frames, -1 on others'
                row = np.where(plane_of_roi == plane, 100 * t + np.arange(n_rois), -1.0).astype(np.float32)
                writer.append(TraceFrame(frame, t, 0.0, time_s, 0.0, 0.0, 1.0, row), plane=plane)
            frame += 1
    writer.close()
    return folder


def test_activity_is_binned_on_the_go_cue_grid(tmp_path):
    session = load_session(_session(tmp_path / "s1"), source="dff")
    assert session.bin_s == pytest.approx(0.1)
    assert session.activity.shape[0] == 3 and session.n_rois == 4
    delay = session.window(-0.6, 0.0)
    assert delay.shape[1] == 6
    assert np.allclose(delay[1], 200 + np.arange(4))
    assert [t.side for t in session.trials] == ["right", "left", "right"]
    assert session.trials[0].go_s == GO_S and session.trials[0].block_label == "1"


def test_each_roi_is_read_on_its_own_planes_frames(tmp_path):
    session = load_session(_session(tmp_path / "s1", planes=2), source="dff")
    delay = session.window(-0.6, 0.0)
    assert not np.any(delay == -1), "a ROI's value on another plane's frame leaked into its bins"
    assert np.allclose(delay[2], 300 + np.arange(4))


def test_an_unsampled_bin_stays_empty_and_deconvolved_falls_back_to_dff(tmp_path, caplog):
    session = load_session(_session(tmp_path / "s1", drop_trial_frames=2), source="deconvolved")
    assert session.source == "dff" and "no deconvolved.f32" in caplog.text
    gap = session.window(-0.3, -0.2)[1]
    assert np.isnan(gap).all()
    assert not np.isnan(session.window(-0.3, -0.2)[0]).any()


def test_folders_that_are_not_sessions_are_named(tmp_path):
    with pytest.raises(DataError, match="no session folders"):
        session_folders(tmp_path)
    folder = tmp_path / "s1"
    folder.mkdir()
    (folder / "session.json").write_text("{}")
    (folder / "trials.jsonl").write_text('{"trial": 1}\n')
    with pytest.raises(DataError, match="record 1"):
        load_session(folder)
    (folder / "trials.jsonl").write_text("")
    with pytest.raises(DataError, match="no traces"):
        load_session(folder)


def test_the_index_record_before_the_first_is_none(tmp_path):
    """The rig reads the record before an online restart's first one; before the first there is none (a
    module that died before writing a frame), not an error."""
    from online.store import read_index

    folder = _session(tmp_path / "s1", trials=1)
    assert len(read_index(folder, -1, 0)) == 0
    assert len(read_index(folder, 0, 1)) == 1 and len(read_index(folder, -1, 1)) == 1
