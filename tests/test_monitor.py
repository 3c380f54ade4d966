"""The monitor: its model, its panels fed over real ZeroMQ sockets, its controls against a real control
socket, catching up from trials.jsonl, the demo screenshot, and the GUI process that dies with the session."""

from __future__ import annotations

import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported (conftest does it too)

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
import pytest
from pyqtgraph.Qt import QtCore, QtWidgets

from online.messages import DecoderResult, HealthReport, RoiSnapshot, TraceFrame
from online.transport import LossyPublisher
from online.wire import TOPIC_STATE, TOPIC_TRIAL
from protocols.settings import WiringSettings
from protocols.trial_record import TrialRecord
from rig.control import ControlRequestError, ControlServer
from rig.free_endpoints import free_network, free_network_overrides
from rig.monitor import display_available, start_monitor_process, stop_monitor_process
from rig.monitor.model import BehaviourModel, MonitorModel, TraceBuffer, TrialRow
from rig.monitor.panels import closed_outlines
from rig.monitor.panels.header import BACKGROUNDS
from rig.monitor.window import MonitorWindow
from rig.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
ENDPOINTS = ("events_pub", "control", "frames", "frames_display", "online_results")


@pytest.fixture
def settings() -> Settings:
    return load_settings(overrides=free_network_overrides())


@pytest.fixture
def window(qtbot: Any, settings: Settings) -> MonitorWindow:
    w = MonitorWindow(settings, confirm_stop=False, status_poll_s=None)
    qtbot.addWidget(w)
    w.resize(1400, 900)
    w.show()
    return w


# ---------------------------------------------------------------------------------------------- records


def _trial_fields(
    n: int, context: str = "tactile", outcome: str = "hit", side: str = "left", early_lick: bool = False
) -> dict[str, Any]:
    """What the behaviour panels show of a trial: its fields, the go cue and the licks from trial start."""
    licked = side if outcome == "hit" else ("right" if side == "left" else "left")
    licks = [2.9, 3.05, 3.2] if outcome != "no_response" else []
    return {
        "trial": n,
        "context": context,
        "side": side,
        "cue": "pole_anterior",
        "outcome": outcome,
        "licked_side": None if outcome == "no_response" else licked,
        "reaction_time_s": 0.3,
        "early_lick": early_lick,
        "free_drop": False,
        "stage": {"name": "full", "delay_s": 1.3, "timeout_s": 4.0, "selection": "antibias"},
        "training_events": [],
        "trial_start_s": 6.0 * (n - 1),
        "trial_end_s": 6.0 * n,
        "state_sequence": ["TrigTrialStart", "SamplePeriod", "DelayPeriod", "ResponseCue", "AnswerPeriod"],
        "go_cue_s": 2.6,
        "licks": {"left": licks if licked == "left" else [], "right": licks if licked == "right" else []},
    }


def disk_trial(n: int, wiring: WiringSettings, **kwargs: Any) -> dict[str, Any]:
    """The trial as trials.jsonl holds it: raw Bpod events and states, from which licks and go cue come."""
    record = _trial_fields(n, **kwargs)
    licks = record.pop("licks")
    go = record.pop("go_cue_s")
    start, end = record.pop("trial_start_s"), record.pop("trial_end_s")
    record["bpod"] = {
        "Events": {
            wiring.lick("left"): licks["left"],
            wiring.lick("right"): licks["right"],
            "Tup": [0.01],
        },
        "States": {"SamplePeriod": [[1.0, 1.3]], "DelayPeriod": [[1.3, go]], "ResponseCue": [[go, go + 0.1]]},
        "trial_start_s": start,
        "trial_end_s": end,
        "state_sequence": record.pop("state_sequence"),
    }
    return record


def published_trial(n: int, **kwargs: Any) -> dict[str, Any]:
    """The trial as the session publishes it: the same record trials.jsonl holds (default lick ports)."""
    return disk_trial(n, WiringSettings(left_lick="Port1", right_lick="Port2"), **kwargs)


def status(trials: int, context: str = "tactile", session: str | None = None,
           closed_loop: bool = True) -> dict[str, Any]:
    return {
        "subject": "m1",
        "trials": trials,
        "context": context,
        "stage": "full",
        "perf100": 0.8,
        "paused": False,
        "stopping": False,
        "session": session,
        "pending_context": None,
        "closed_loop": closed_loop,
    }


def circle_rois(n: int, size: int = 64) -> RoiSnapshot:
    rng = np.random.default_rng(1)
    centroids = rng.uniform(8, size - 8, (n, 2)).astype(np.float32)
    ring = np.stack([np.sin(np.linspace(0, 6.28, 12)), np.cos(np.linspace(0, 6.28, 12))], axis=1) * 3
    points = (centroids[:, None, :] + ring[None]).reshape(-1, 2).astype(np.float32)
    offsets = np.arange(0, 12 * n + 1, 12, dtype=np.int32)
    return RoiSnapshot(np.ones((size, size), np.float32), centroids, points, offsets, roi_set_id="test")


def wait_for_subscription(qtbot: Any, publish: Any, arrived: Any) -> None:
    """Publish until the monitor has it: subscribers miss what is sent before they join (slow joiner)."""

    def check() -> None:
        publish()
        assert arrived()

    qtbot.waitUntil(check, timeout=5000)


# ---------------------------------------------------------------------------------------------- model


def test_behaviour_model_perf_switches_and_duplicates() -> None:
    model = BehaviourModel()
    outcomes = ["hit", "error", "hit", "no_response", "hit"]
    for n, outcome in enumerate(outcomes, 1):
        assert model.add_record(published_trial(n, outcome=outcome, side="left" if n % 2 else "right"))
    assert not model.add_record(published_trial(3))  # the same trial again (live after catch-up)
    for n in (6, 7):
        model.add_record(published_trial(n, context="tactile-reversed", outcome="error"))
    trials, perf = model.perf["tactile"]
    assert trials == [1, 2, 3, 4, 5] and perf[-1] == pytest.approx(3 / 4)  # no response is not answered
    assert model.perf["tactile-reversed"] == ([6, 7], [0.0, 0.0])
    assert model.switches == [(6, "tactile-reversed")]
    assert model.side_performance("tactile") == {"left": 1.0, "right": 0.0}
    assert not model.missing_before(7)
    model.add_record(published_trial(10))
    assert model.missing_before(10)
    model.add_record(published_trial(8, context="tactile-reversed"))  # out of order: rebuilt
    assert model.perf["tactile-reversed"][0] == [6, 7, 8]
    assert model.switches == [(6, "tactile-reversed"), (10, "tactile")]
    row = model.rows[1]
    assert row.licks_from_go("left") == pytest.approx([0.3, 0.45, 0.6])
    assert not model.add_record({"no": "trial"})


def test_a_new_session_starts_the_behaviour_panels_over() -> None:
    model = BehaviourModel()
    model.set_status(status(1, session="/data/m1/2026-01-01_100000"))
    model.add_record(published_trial(1))
    model.set_status(status(1, session="/data/m1/2026-01-01_100000"))
    assert len(model.rows) == 1
    model.set_status(status(0, session="/data/m1/2026-01-01_120000"))
    assert not model.rows and not model.perf and model.session_folder == Path("/data/m1/2026-01-01_120000")


def test_disk_record_reduces_like_the_published_one(settings: Settings) -> None:
    ports = settings.wiring
    published = published_trial(4, outcome="error", side="right")
    disk = TrialRecord.from_json(disk_trial(4, ports, outcome="error", side="right"))
    assert TrialRow.from_record(disk, ports) == TrialRow.from_record(TrialRecord.from_json(published), ports)


def test_trace_buffer_ring_and_window() -> None:
    buffer = TraceBuffer(capacity=10)
    for i in range(25):
        buffer.append(i * 0.5, np.full(3, i, dtype=np.float32))
    times, dff = buffer.window(seconds=3.0)
    assert len(buffer) == 10 and buffer.latest_time == 12.0
    assert times.tolist() == [-2.5, -2.0, -1.5, -1.0, -0.5, 0.0]
    assert dff[:, 0].tolist() == [19, 20, 21, 22, 23, 24]
    buffer.append(13.0, np.zeros(5, dtype=np.float32))  # a new ROI set: starts over
    assert buffer.n_rois == 5 and len(buffer) == 1


def test_outlines_are_closed_and_disconnected() -> None:
    points = np.array([[0, 0], [0, 1], [1, 1], [5, 5], [5, 6], [6, 6]], dtype=np.float32)
    x, y, connect = closed_outlines(points, np.array([0, 3, 3, 6]))  # ROI 1 has no outline
    assert len(x) == 8
    assert (x[3], y[3]) == (0, 0) and (x[7], y[7]) == (5, 5)  # each outline ends where it began
    assert connect.tolist() == [True, True, True, False, True, True, True, False]


# ---------------------------------------------------------------------------------------------- rendering


def test_render_smoke_catches_a_broken_binding(qtbot: Any) -> None:
    """An ImageItem and a PlotCurveItem drawn offscreen and grabbed: a broken Qt binding fails here."""
    widget = pg.PlotWidget()
    qtbot.addWidget(widget)
    widget.resize(320, 240)
    image = pg.ImageItem(axisOrder="row-major")
    image.setImage(np.add.outer(np.arange(64), np.arange(64)).astype(np.float32), levels=(0, 126))
    widget.addItem(image)
    x = np.linspace(0, 64, 500)
    widget.addItem(pg.PlotCurveItem(x, 32 + 20 * np.sin(x / 5), pen=pg.mkPen("r", width=2)))
    widget.show()
    grabbed = widget.grab().toImage()
    assert not grabbed.isNull() and grabbed.width() >= 320 and grabbed.height() >= 240
    colours = {
        grabbed.pixel(x, y) for x in range(0, grabbed.width(), 8) for y in range(0, grabbed.height(), 8)
    }
    assert len(colours) > 20


def test_window_builds_and_ticks_without_a_session(window: MonitorWindow) -> None:
    window.tick()
    assert window.traces.point_count == 0
    assert window.behaviour.lick_rows == 0
    assert "online module not running" in window.health.online.text()
    assert window.controls.context.count() == len(window.settings.contexts)
    assert window.grab().width() > 0


# ---------------------------------------------------------------------------------------------- live


def test_panels_show_messages_from_real_sockets(
    qtbot: Any, window: MonitorWindow, settings: Settings
) -> None:
    model = window.model
    net = settings.network
    with (
        LossyPublisher(net.events_pub, source="rig", hwm=1000) as rig,
        LossyPublisher(net.frames_display, source="scope") as scope,
        LossyPublisher(net.online_results, source="online", hwm=1000) as online,
    ):
        health = HealthReport(
            frames=100,
            frame_rate_hz=29.9,
            gaps=2,
            duplicates=0,
            out_of_order=0,
            malformed=0,
            latency_p50_ms=1.5,
            latency_p99_ms=4.0,
            processing_p50_ms=2.0,
            processing_p99_ms=3.5,
            n_rois=20,
            reference_ready=True,
            closed_loop=True,
        )
        wait_for_subscription(
            qtbot,
            lambda: rig.send_event(TOPIC_STATE, {"trial": 1, "state": "DelayPeriod", "time_s": 1.0}),
            lambda: model.behaviour.state is not None,
        )
        wait_for_subscription(
            qtbot,
            lambda: online.send_parts(health.encode(online.sender)),
            lambda: model.imaging.health is not None,
        )
        pixels = np.arange(64 * 64, dtype=np.int16).reshape(64, 64)
        wait_for_subscription(
            qtbot,
            lambda: scope.send_frame(
                pixels, frame_index=7, timestamp_s=0.23, trigger_timestamp_s=0.0, trial=1
            ),
            lambda: model.imaging.frame is not None,
        )

        contexts = ["tactile"] * 3 + ["tactile-reversed"] * 2
        for n, context in enumerate(contexts, 1):
            record = published_trial(
                n,
                context=context,
                outcome="error" if n == 2 else "hit",
                side="left" if n % 2 else "right",
                early_lick=n == 3,
            )
            rig.send_event(
                TOPIC_TRIAL, {"kind": "end", "trial": n, "record": record, "status": status(n, context)}
            )
        online.send_parts(circle_rois(20).encode(online.sender))
        rng = np.random.default_rng(0)
        for i in range(60):
            trace = TraceFrame(
                i, 1, i / 30, i / 30, 1.0, -2.0, 0.9, rng.normal(0, 0.1, 20).astype(np.float32)
            )
            online.send_parts(trace.encode(online.sender))
            time.sleep(0.001)
        for n, side in ((1, "left"), (2, "right"), (3, "left")):
            result = DecoderResult(
                trial=n,
                context="tactile",
                actual_side=side,
                licked_side=side,
                outcome="hit",
                decoded_side=side,
                confidence=0.9,
                projection=-1.0 if side == "left" else 1.0,
                boundary=0.0,
                accuracy={"tactile": 0.5 + 0.1 * n},
                trials_per_side={"left": 2, "right": 1},
                cd_similarity={"tactile": 0.9, "tactile-reversed": 0.2},
            )
            online.send_parts(result.encode(online.sender))
        qtbot.waitUntil(
            lambda: (
                len(model.behaviour.rows) == 5
                and len(model.imaging.traces) == 60
                and len(model.imaging.decoder) == 3
                and model.imaging.rois is not None
            ),
            timeout=5000,
        )
    window.refresh()

    behaviour = window.behaviour
    assert behaviour.lick_rows == 5
    assert len(behaviour.outcome_points.data) == 5 and len(behaviour.flag_points.data) == 1  # one early lick
    assert len(behaviour.perf_curves["tactile"].xData) == 3
    assert len(behaviour.perf_curves["tactile-reversed"].xData) == 2
    assert (
        len(behaviour.switch_lines) == 1
        and "tactile-reversed" in behaviour.switch_lines[0].label.toPlainText()
    )
    assert "tactile-reversed" in behaviour.stage.text() and "DelayPeriod" in behaviour.stage.text()
    assert window.traces.point_count == 20 * 60
    assert window.frame.image.image.shape == (64, 64)
    assert window.frame.image.pos() == QtCore.QPointF(-2.0, 1.0)  # the frame moved by its shift (dy 1, dx -2)
    assert len(window.frame.outlines.xData) == 20 * 13
    assert len(window.decoding.points["left"].data) == 2 and len(window.decoding.points["right"].data) == 1
    assert list(window.decoding.accuracy_curves["tactile"].yData) == pytest.approx([0.6, 0.7, 0.8])
    assert window.decoding.bars.opts["height"] == pytest.approx([0.9, 0.2])
    online_text = window.health.online.text()
    assert "29.9 Hz" in online_text and "dropped 2" in online_text and "closed loop on" in online_text
    assert window.controls.closed_loop.isChecked()  # follows the session's status

    # select by clicking a trace: the trace and its ROI outline are highlighted
    traces = window.traces
    point = traces.mapFromScene(traces.plot.vb.mapViewToScene(QtCore.QPointF(-0.5, 7.1)))
    qtbot.mouseClick(traces.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=point)
    qtbot.waitUntil(lambda: model.imaging.selected == 7, timeout=2000)
    assert list(traces.highlight.yData) == [7, 7, 8, 8, 7]  # the heatmap frames the ROI's row
    window.controls.traces_mode.setCurrentText("lines")  # ... the lines draw its trace again on top
    assert traces.mode == "lines" and len(traces.highlight.xData) == 60
    assert len(window.frame.selected_outline.xData) == 13
    # ... and by clicking an ROI on the frame (the frame is drawn shifted by (+1, -2))
    cy, cx = model.imaging.rois.centroids[12]
    window.frame.click_at(float(cy) + 1.0, float(cx) - 2.0)
    assert model.imaging.selected == 12
    assert "ROI 12" in window.frame.caption.text


# ---------------------------------------------------------------------------------------------- controls


class FakeSession:
    """A control server that records what it is asked."""

    def __init__(self, endpoint: str, session: Path | None = None) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.session = session
        self.server = ControlServer(endpoint, self.handle)

    def handle(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        if command == "status":
            return status(0, session=str(self.session) if self.session else None)
        self.commands.append((command, args))
        if command == "closed-loop":
            raise ControlRequestError("closed loop is not available in this session")
        return {"message": f"done: {command}"}


def test_controls_send_commands_and_show_replies(
    qtbot: Any, window: MonitorWindow, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeSession(settings.network.control)
    bar = window.statusBar()
    controls = window.controls
    try:
        controls.context.setCurrentText("auditory")
        for button, command in (
            (controls.switch, "switch-context"),
            (controls.pause, "pause"),
            (controls.resume, "resume"),
            (controls.stop, "stop"),
        ):
            qtbot.mouseClick(button, QtCore.Qt.MouseButton.LeftButton)
            qtbot.waitUntil(lambda c=command: bar.currentMessage() == f"{c}: done: {c}", timeout=3000)
        qtbot.mouseClick(controls.closed_loop, QtCore.Qt.MouseButton.LeftButton)
        qtbot.waitUntil(
            lambda: "closed-loop failed: closed loop is not available" in bar.currentMessage(), timeout=3000
        )
        assert not controls.closed_loop.isChecked()  # refused: the box shows the real state again

        window.confirm_stop = True  # the confirmation dialog, answered "No"
        monkeypatch.setattr(
            QtWidgets.QMessageBox, "question", lambda *a, **k: QtWidgets.QMessageBox.StandardButton.No
        )
        qtbot.mouseClick(controls.stop, QtCore.Qt.MouseButton.LeftButton)
        assert bar.currentMessage() == "stop cancelled"
    finally:
        fake.server.close()
    monitor = {"source": "monitor"}  # the session logs each request with where it came from
    assert fake.commands == [
        ("switch-context", {"context": "auditory", **monitor}),
        ("pause", monitor),
        ("resume", monitor),
        ("stop", monitor),
        ("closed-loop", {"enabled": True, **monitor}),
    ]


def test_control_without_a_session_reports_it(qtbot: Any, settings: Settings) -> None:
    w = MonitorWindow(settings, status_poll_s=None, control_timeout_s=0.3)
    qtbot.addWidget(w)
    w.send_command("pause")
    qtbot.waitUntil(
        lambda: w.statusBar().currentMessage().startswith("pause failed: no session answered"), timeout=3000
    )


# ---------------------------------------------------------------------------------------------- catch up


def test_reopened_monitor_catches_up_from_trials_jsonl(
    qtbot: Any, settings: Settings, tmp_path: Path
) -> None:
    ports = settings.wiring
    lines = [json.dumps(disk_trial(n, ports, outcome="hit" if n % 3 else "error")) for n in range(1, 13)]
    (tmp_path / "trials.jsonl").write_text("\n".join(lines) + "\n" + '{"trial": 13, "torn', encoding="utf-8")
    fake = FakeSession(settings.network.control, session=tmp_path)
    try:
        w = MonitorWindow(settings, status_poll_s=0.2)
        qtbot.addWidget(w)
        qtbot.waitUntil(lambda: w.behaviour.lick_rows == 12, timeout=5000)  # drawn by the display timer
        assert len(w.model.behaviour.rows) == 12
        assert w.model.behaviour.perf["tactile"][0] == list(range(1, 13))
        assert "Session/Bpod</b> running" in w.health.session.text()
        # ... then continues live
        with LossyPublisher(settings.network.events_pub, source="rig") as rig:
            record = {"kind": "end", "trial": 13, "record": published_trial(13), "status": status(13)}
            wait_for_subscription(
                qtbot, lambda: rig.send_event(TOPIC_TRIAL, record), lambda: 13 in w.model.behaviour.rows
            )
        assert len(w.model.behaviour.rows) == 13
    finally:
        fake.server.close()


def test_monitor_model_skips_malformed_messages() -> None:
    from online.wire import Message

    model = MonitorModel()
    model.apply(Message(TOPIC_TRIAL, {"v": 1, "seq": 0, "t_ns": 0, "data": "not a dict"}))
    model.apply(Message(b"traces", {"v": 1, "seq": 0, "t_ns": 0}))
    assert model.malformed == 2 and not model.behaviour.rows


# ---------------------------------------------------------------------------------------------- processes


def test_demo_screenshot(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "rig", "monitor", "--demo", "--screenshot", str(out), "--seconds", "4"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1800, 1050) and len(data) > 20_000


def test_monitor_without_display_needs_a_screenshot() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run(
        [sys.executable, "-m", "rig", "monitor"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 2 and "--screenshot" in result.stderr


def test_display_detection() -> None:
    assert not display_available({})
    assert display_available({"DISPLAY": ":0"}) and display_available({"WAYLAND_DISPLAY": "wayland-0"})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status_line = Path(f"/proc/{pid}/stat").read_text().split()
    return status_line[2] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_gui_process_dies_with_the_session_process() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import sys, time
        from rig.monitor import start_monitor_process
        child = start_monitor_process(None, command=[sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert _alive(child)
        parent.kill()  # as a crash or kill -9 of the session would
        parent.wait(5)
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        parent.kill()


def test_gui_process_is_stopped_at_session_end() -> None:
    child = start_monitor_process(None, command=[sys.executable, "-c", "import time; time.sleep(60)"])
    assert child is not None and child.poll() is None
    stop_monitor_process(child, timeout_s=3)
    assert child.returncode is not None


def test_rig_run_opens_and_closes_the_monitor_when_a_display_is_set(tmp_path: Path) -> None:
    settings_file = tmp_path / "rig.yaml"
    network = free_network()
    settings_file.write_text(json.dumps({"network": network}), encoding="utf-8")  # JSON is YAML
    env = {**os.environ, "DISPLAY": ":monitor-test", "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rig",
            "--log-level",
            "INFO",
            "run",
            "--trials",
            "3",
            "--speed",
            "50",
            "--data",
            str(tmp_path / "data"),
            "--settings",
            str(settings_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "monitor started (pid" in result.stderr
    pid = int(result.stderr.split("monitor started (pid ")[1].split(")")[0])
    deadline = time.monotonic() + 3
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert len(list((tmp_path / "data").glob("*/*/summary.png"))) == 1  # by the monitor, or else the rig


def test_rig_run_without_a_monitor_draws_the_summary_figure(tmp_path: Path) -> None:
    settings_file = tmp_path / "rig.yaml"
    overrides = {"network": free_network(), "online": {"enabled": False}, "imaging": {"source": "none"}}
    settings_file.write_text(json.dumps(overrides), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "rig", "run", "--no-gui", "--trials", "2", "--speed", "50", "--weight", "19.5",
         "--data", str(tmp_path / "data"), "--settings", str(settings_file)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    (folder,) = (p.parent for p in (tmp_path / "data").glob("*/*/session.json"))
    assert (folder / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / "session.json").read_text())["weight_g"] == 19.5


# ---------------------------------------------------------------------------------------------- pixels


def test_frame_panel_draws_a_ramp_as_grey_levels_between_the_fixed_levels(qtbot: Any) -> None:
    """A known int16 ramp with fixed levels, drawn offscreen by the real frame panel and read back pixel by
    pixel: black up to the low level, white from the high level, grey rising linearly in between."""
    from pyqtgraph.Qt import QtGui

    from online.wire import FrameHeader
    from rig.monitor.model import ImagingModel
    from rig.monitor.panels import FramePanel

    height, width, low, high = 16, 64, 1000.0, 5000.0
    values = -1000 + 125 * np.arange(width)  # -1000 .. 6875: the levels are reached at columns 16 and 48
    model = ImagingModel()
    panel = FramePanel(model, frame_shape=(height, width))
    qtbot.addWidget(panel)
    panel.resize(800, 400)
    panel.show()
    header = FrameHeader(seq=0, frame_index=0, timestamp_s=0.0, trigger_timestamp_s=0.0, trial=1, channel=0,
                         plane=0, height=height, width=width, dtype="<i2", t_ns=0)
    now = time.monotonic()
    model.add_frame(header, np.tile(values, (height, 1)).astype(np.int16), now)
    model.levels = (low, high)  # fixed levels: the running percentile estimate is not under test here
    panel.refresh(now)
    grabbed = panel.grab().toImage()
    view = panel.plot.vb

    def drawn(column: int, row: int) -> tuple[int, int, int]:
        point = panel.mapFromScene(view.mapViewToScene(QtCore.QPointF(column + 0.5, row + 0.5)))
        colour = QtGui.QColor(grabbed.pixel(point))
        return colour.red(), colour.green(), colour.blue()

    rows = [drawn(x, height // 2) for x in range(width)]
    assert all(r == g == b for r, g, b in rows)  # grey
    assert rows == [drawn(x, 2) for x in range(width)]  # every row of the ramp is drawn alike
    grey = np.array([r for r, _, _ in rows])
    expected = np.clip((values - low) / (high - low), 0, 1) * 255
    np.testing.assert_allclose(grey, expected, atol=1.0)
    assert set(grey[:17]) == {0} and set(grey[48:]) == {255}
    assert np.all(np.diff(grey[16:49]) > 0)  # strictly brighter with the pixel value


# ---------------------------------------------------------------------------------------------- session view


def _timed_trial(n: int, **kwargs: Any) -> dict[str, Any]:
    """A published trial with a Bpod record whose every state is known (for the timeline)."""
    record = published_trial(n, **kwargs)
    record["bpod"]["States"] = {
        "TrigTrialStart": [[0.0, 0.1]], "SamplePeriod": [[1.0, 1.3]], "DelayPeriod": [[1.3, 2.6]],
        "ResponseCue": [[2.6, 2.7]], "AnswerPeriod": [[2.7, 2.9]], "Reward": [[2.9, 2.93]],
    }
    record["bpod"]["Events"]["BNC1High"] = [0.0]
    record["reward_ul"] = 2.5 if kwargs.get("outcome", "hit") == "hit" else 0.0
    return record


OUTPUTS = {"TrigTrialStart": {"BNC1": 1}, "ResponseCue": {"PWM1": 255}, "Reward": {"Valve1": 1}}


def test_header_timeline_end_criteria_and_summary_figure(qtbot: Any, tmp_path: Path) -> None:
    settings = load_settings(overrides={**free_network_overrides(), "session.end_trials": 4,
                                        "session.end_water_ul": 100.0})
    w = MonitorWindow(settings, confirm_stop=False, status_poll_s=None)
    qtbot.addWidget(w)
    w.resize(1600, 1000)
    w.show()
    ports = settings.wiring
    lines = "".join(json.dumps(disk_trial(n, ports)) + "\n" for n in (1, 2, 3))
    (tmp_path / "trials.jsonl").write_text(lines)

    def session_status(n: int) -> dict[str, Any]:
        return {**status(n, context="tactile-reversed", session=str(tmp_path)), "rig": "box-3",
                "water_ul": 2.5 * n + 2.5, "weight_g": 21.4, "started": "2026-01-01T10:00:00"}

    with LossyPublisher(settings.network.events_pub, source="rig", hwm=1000) as rig:
        def send(n: int) -> None:
            record = _timed_trial(n, context="tactile-reversed")
            rig.send_event(TOPIC_TRIAL, {"kind": "end", "trial": n, "record": record,
                                         "status": session_status(n), "outputs": OUTPUTS})

        wait_for_subscription(qtbot, lambda: send(1), lambda: 1 in w.model.behaviour.rows)
        w.refresh()
        header = w.header
        assert header.subject.text() == "m1"
        details = header.details.text()
        for text in ("box-3", "directional licking", "tactile-reversed", "full", "<b>1</b>", "5 uL",
                     "21.4 g"):
            assert text in details
        assert header.info is not None and header.info.level == "running"
        assert "trials 1/4" in header.criteria.text()

        timeline = w.timeline
        assert timeline.rows == ["states", "BNC1 in", "Port1 in", "BNC1 out", "PWM1 out", "Valve1 out"]
        assert [label.textItem.toPlainText() for label in timeline.labels] == ["DelayPeriod"]  # wide enough
        assert len(timeline.bars.opts["x0"]) == 6 and len(timeline.outputs.opts["x0"]) == 3
        assert timeline.show_state_at(2.0) == "DelayPeriod" and timeline.hover.isVisible()
        assert "DelayPeriod" in timeline.hover.textItem.toPlainText()
        assert timeline.show_state_at(0.5) is None and not timeline.hover.isVisible()

        for n in (2, 3, 4):
            send(n)
        qtbot.waitUntil(lambda: 4 in w.model.behaviour.rows, timeout=5000)
        w.refresh()
        assert header.info.level == "met" and "end criteria met: trials 4/4" in header.criteria.text()
        assert BACKGROUNDS["met"] in header.styleSheet()
        assert "Last trial: 4" in timeline.plot.titleLabel.text

        ended = {**session_status(4), "stopping": True}
        wait_for_subscription(
            qtbot, lambda: rig.send_event(TOPIC_TRIAL, {"kind": "session-end", "session": str(tmp_path),
                                                        "status": ended}),
            lambda: w.model.behaviour.ended_at is not None)
    qtbot.waitUntil(lambda: (tmp_path / "summary.png").is_file(), timeout=15000)  # saved by the monitor
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    w.refresh()
    assert "(ended)" in w.header.details.text()


def _trace_parts(sender: Any, trace: TraceFrame, plane: int, deconvolved: np.ndarray | None = None) -> Any:
    """A traces message as the online module sends it for one plane (dF/F, and deconvolved beside it)."""
    fields = {k: getattr(trace, k) for k in ("frame_index", "trial", "timestamp_s", "time_in_trial_s",
                                             "shift_dy", "shift_dx", "correlation")}
    arrays = [trace.dff] + ([deconvolved] if deconvolved is not None else [])
    return sender.message(b"traces", {**fields, "plane": plane}, arrays)


def test_psth_heatmap_planes_and_registration(qtbot: Any, window: MonitorWindow, settings: Settings) -> None:
    """Two planes of traces over four trials: ROI 3 of plane 0 fires in the late delay of left trials only.
    Its PSTH shows it, the heatmap puts it on top, the plane selector appears, registration is plotted."""
    model = window.model
    n_rois = {0: 12, 1: 5}
    rng = np.random.default_rng(3)
    net = settings.network
    sides = ["left", "right", "left", "right"]
    with (LossyPublisher(net.online_results, source="online", hwm=5000) as online,
          LossyPublisher(net.events_pub, source="rig", hwm=1000) as rig):
        wait_for_subscription(qtbot, lambda: online.send_parts(circle_rois(12).encode(online.sender)),
                              lambda: model.imaging.rois is not None)
        index = 0
        for trial, side in enumerate(sides, 1):
            for k in range(120):  # 4 s at 30 Hz
                t = k / 30
                for plane, n in n_rois.items():
                    dff = rng.normal(0, 0.05, n).astype(np.float32)
                    if plane == 0 and side == "left" and 1.6 <= t < 2.6:
                        dff[3] += 1.0
                    trace = TraceFrame(index, trial, index / 30, t, 0.5 * trial, -0.2, 0.95 - 0.01 * trial,
                                       dff)
                    online.send_parts(_trace_parts(online.sender, trace, plane, deconvolved=np.abs(dff)))
                index += 1
                if k % 40 == 0:
                    time.sleep(0.002)
            qtbot.waitUntil(lambda i=index: len(model.imaging.planes) == 2 and
                            model.imaging.planes[1].traces._count >= min(i, 900) - 5, timeout=5000)
            record = published_trial(trial, side=side, outcome="hit")
            rig.send_event(TOPIC_TRIAL, {"kind": "end", "trial": trial, "record": record,
                                         "status": status(trial)})
        psth = model.imaging.planes[0].psth
        qtbot.waitUntil(lambda: psth.trials("tactile", "left", "hit") == 2, timeout=5000)
        assert model.imaging.planes[0].psth.trials("tactile", "right", "hit") == 1  # trial 4 may go on
        for plane, n in n_rois.items():  # the next trial's first frame: trial 4 is complete
            trace = TraceFrame(index, 5, index / 30, 0.0, 2.0, -0.2, 0.91, np.zeros(n, np.float32))
            online.send_parts(_trace_parts(online.sender, trace, plane))
        qtbot.waitUntil(lambda: model.imaging.planes[0].psth.trials("tactile", "right", "hit") == 2,
                        timeout=5000)
    window.refresh()

    psth = model.imaging.planes[0].psth
    assert psth.trials("tactile", "left", "hit") == 2 and psth.groups == ["tactile"]
    assert psth.epochs() == pytest.approx((0.3, 1.3))  # sample 1.0-1.3 s, delay to the go cue at 2.6 s
    panel = window.psth
    assert panel.group.currentText() == "tactile"
    assert panel.shown_rois[0] == 3  # the most left-selective ROI
    left = panel.curves[("go", "left", "hit")].yData
    right = panel.curves[("go", "right", "hit")].yData
    assert left.max() > 0.5 and right.max() < 0.3
    assert panel.epochs["go"][1].getRegion() == pytest.approx((-1.3, 0.0))
    panel.activity.setCurrentIndex(1)  # the deconvolved activity published beside dF/F
    assert panel.accumulator() is model.imaging.planes[0].deconvolved_psth
    assert panel.curves[("go", "left", "hit")].yData.max() > 0.5

    traces = window.traces
    assert traces.mode == "heatmap" and traces.order[0] == 3
    assert traces.heatmap.image.shape[0] == 12 and traces.heatmap.isVisible()
    assert traces.heatmap.image[0].max() > 0.5  # the top row is ROI 3's
    window.controls.traces_order.setCurrentText("ROI number")
    assert list(traces.order) == list(range(12))
    traces.set_order(custom=np.arange(12)[::-1])  # a chosen order
    assert traces.order[0] == 11
    window.controls.traces_mode.setCurrentText("lines")
    assert not traces.heatmap.isVisible() and traces.point_count > 0

    controls = window.controls
    assert not controls.plane.isHidden() and controls.plane.count() == 2
    registration = window.registration
    registration.refresh(time.monotonic() + 1.0)  # it redraws twice a second at most: the newest points
    assert len(registration.curves["dy"].yData) > 10
    assert registration.curves["dy"].yData.max() == pytest.approx(2.0)  # 0.5 x trial 4
    assert registration.curves["correlation"].yData.min() == pytest.approx(0.91)
    controls.plane.activated.emit(1)  # as choosing plane 1 in the selector does
    assert model.imaging.plane == 1 and model.imaging.traces.n_rois == 5
    window.refresh()
    assert traces.point_count and window.psth.shown_rois.size == 0  # no selective ROI on plane 1
    assert model.imaging.rois is None  # plane 1's ROIs were never sent


def test_controls_follow_a_real_session_and_the_valve_is_logged(
    qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rig.store import read_jsonl
    from tests.test_session import SessionThread

    settings = load_settings(overrides={**free_network_overrides(), "online.enabled": False,
                                        "imaging.source": "none", "session.flush_s": 0.2})
    session = SessionThread(settings, tmp_path, subject="m-monitor", context="tactile-reversed", speed=20.0,
                            trials=500)
    w = MonitorWindow(settings, status_poll_s=0.1)
    qtbot.addWidget(w)
    w.show()
    controls = w.controls
    try:
        qtbot.waitUntil(lambda: w.model.behaviour.status.get("context") == "tactile-reversed", timeout=15000)
        assert controls.context.currentText() == "tactile-reversed"  # what runs, not the first in the list
        qtbot.mouseClick(controls.drop["left"], QtCore.Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "valve: one drop from the left valve" in w.statusBar().currentMessage(),
                        timeout=5000)
        no, yes = QtWidgets.QMessageBox.StandardButton.No, QtWidgets.QMessageBox.StandardButton.Yes
        answers = iter([no, yes, yes])  # flush: no, then yes; stop: yes
        monkeypatch.setattr(QtWidgets.QMessageBox, "question", lambda *a, **k: next(answers))
        qtbot.mouseClick(controls.flush["right"], QtCore.Qt.MouseButton.LeftButton)
        assert w.statusBar().currentMessage() == "flush cancelled"
        qtbot.mouseClick(controls.flush["right"], QtCore.Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "0.2 s flush from the right valve" in w.statusBar().currentMessage(),
                        timeout=5000)
        qtbot.mouseClick(controls.pause, QtCore.Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: controls.resume.isEnabled() and not controls.pause.isEnabled(), timeout=5000)
        controls.context.setCurrentText("auditory")  # a choice being made is not undone by status polls
        qtbot.wait(300)
        assert controls.context.currentText() == "auditory"
        qtbot.mouseClick(controls.switch, QtCore.Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "running tactile-reversed" in controls.pending.text(), timeout=5000)
        assert controls.context.currentText() == "auditory"
        qtbot.mouseClick(controls.resume, QtCore.Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: controls.pause.isEnabled() and not controls.resume.isEnabled(), timeout=5000)
        qtbot.mouseClick(controls.stop, QtCore.Qt.MouseButton.LeftButton)
        folder = session.join().folder
    finally:
        w.shutdown()
        if session.thread.is_alive():
            session.runner.request_stop("test")
            session.join()
    controls_logged = [(line["command"], line.get("action"), line["source"])
                       for line in read_jsonl(folder / "events.jsonl") if line["kind"] == "control"]
    assert controls_logged == [("valve", "drop", "monitor"), ("valve", "flush", "monitor"),
                               ("pause", None, "monitor"), ("switch-context", None, "monitor"),
                               ("resume", None, "monitor"), ("stop", None, "monitor")]


def test_header_levels_and_elapsed_time() -> None:
    from datetime import datetime

    from rig.monitor.header import format_elapsed, header_info
    from rig.settings.schema import SessionSettings

    model = BehaviourModel()
    for n in range(1, 10):
        model.add_record(_timed_trial(n))
    limits = SessionSettings(end_trials=100, end_minutes=30.0, end_water_ul=25.0)
    at = datetime(2026, 1, 1, 10, 20, 0)
    model.set_status({"trials": 9, "started": "2026-01-01T10:00:00"})  # no water in the status: the rewards
    info = header_info(model, limits, at)
    assert info.water_ul == pytest.approx(22.5) and info.level == "near"  # 22.5 of 25 uL
    assert info.criteria[0] == "water 22/25 uL" and format_elapsed(info.elapsed_s) == "20:00"
    model.set_status({"trials": 9, "started": "2026-01-01T10:00:00", "water_ul": 10.0})
    assert header_info(model, limits, at).level == "running"  # 20 of 30 min, 10 of 25 uL, 9 of 100 trials
    assert header_info(model, limits, datetime(2026, 1, 1, 10, 31)).level == "met"
    assert header_info(model, SessionSettings(), at).criteria == ()
    model.end_session({"trials": 9, "started": "2026-01-01T10:00:00"}, at=at)
    assert header_info(model, limits, datetime(2026, 1, 1, 12, 0)).elapsed_s == 1200.0  # stopped at the end


def test_a_trial_end_is_drawn_over_several_ticks(window: MonitorWindow) -> None:
    window.timer.stop()
    window.refresh()
    window.model.behaviour.add_record(published_trial(1))
    behaviour = window.behaviour
    drawn = []
    for _ in range(len(window.slow_panels)):
        window.refresh(spread=True)
        drawn.append(len(behaviour._pending))
    assert max(drawn) == 3 and drawn[-1] == 0  # one plot per turn, all four within one rotation
    assert all(0 <= a - b <= 1 for a, b in zip([4, *drawn], drawn, strict=False))
    assert behaviour.lick_rows == 1 and window.timeline.timeline is not None


def test_psth_accumulator_bins_aligns_and_ranks() -> None:
    from rig.monitor.psth import PENDING_TRIALS, PsthAccumulator, TrialAlignment

    psth = PsthAccumulator(bin_s=0.5, windows={"sample": (0.0, 2.0), "go": (-1.0, 1.0)})
    for trial, side in ((1, "left"), (2, "right")):
        for k in range(40):  # 4 s at 10 Hz; ROI 0 is 2.0 from 0.5 s before the go cue (at 3 s) on left trials
            t = k / 10
            psth.add(trial, t, np.array([2.0 if side == "left" and 2.5 <= t < 3.0 else 0.0, t], np.float32))
        assert psth.finish(TrialAlignment(trial, "blockA", side, "hit", sample_s=1.0, delay_s=1.5, go_s=3.0))
    assert not psth.finish(TrialAlignment(1, "blockA", "left", "hit", 1.0, 1.5, 3.0))  # its samples are used
    go = psth.mean("go", "blockA", "left", "hit")
    assert go is not None and go.shape == (4, 2)
    np.testing.assert_allclose(go[:, 0], [0.0, 2.0, 0.0, 0.0])  # the bin [-0.5, 0) before the go cue
    np.testing.assert_allclose(psth.mean("sample", "blockA", "right", "hit")[:, 1], [1.2, 1.7, 2.2, 2.7])
    assert psth.epochs() == pytest.approx((0.5, 1.5))
    selectivity = psth.selectivity("blockA")
    assert selectivity[0] > 1.0 and selectivity[1] == pytest.approx(0.0)
    assert psth.selectivity("blockB").tolist() == [0.0, 0.0]  # no trials of that group yet
    assert not psth.finish(TrialAlignment(9, "blockA", None, "hit", 1.0, 1.5, 3.0))  # no samples, no side
    for trial in range(10, 11 + PENDING_TRIALS):
        psth.add(trial, 0.1, np.zeros(2, np.float32))
    assert not psth.finish(TrialAlignment(10, "blockA", "left", "hit", 0.0, 0.5, 1.0))  # dropped: too old


def test_psth_waits_for_traces_that_run_behind_the_trials() -> None:
    """The online module runs behind (a backlog): the trials' records come before their traces. Each trial
    is binned whole, when its traces move on to the next trial, and the last one at the session's end."""
    from online.wire import Message, Sender, decode_message

    model = MonitorModel()
    sender = Sender("online")
    for n in (1, 2, 3):
        end = {"kind": "end", "record": published_trial(n, side="left")}
        model.apply(Message(TOPIC_TRIAL, {"v": 1, "seq": n, "t_ns": 0, "data": end}))
    psth = model.imaging.planes[0].psth
    for n in (1, 2, 3):
        for k in range(120):
            trace = TraceFrame(k, n, k / 30, k / 30, 0.0, 0.0, 1.0, np.full(3, float(n), np.float32))
            model.apply(decode_message(_trace_parts(sender, trace, plane=0)))
        assert psth.trials("tactile", "left", "hit") == n - 1  # this trial may still have traces to come
    ended = {"kind": "session-end", "status": {}}
    model.apply(Message(TOPIC_TRIAL, {"v": 1, "seq": 9, "t_ns": 0, "data": ended}))
    assert psth.trials("tactile", "left", "hit") == 3
    go = psth.mean("go", "tactile", "left", "hit")
    assert go is not None and np.nanmax(go[:, 0]) == pytest.approx(2.0)  # the mean of trials 1..3, each whole
    assert model.behaviour.ended_at is not None
