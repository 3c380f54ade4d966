"""The session watches the processes it starts: a killed online module is restarted (a bounded number of
times) and the gap is recorded in session.json, `rig status` and `rig summary`; a killed simulated
microscope or monitor is detected and recorded while the session goes on. Real sessions, real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from online.store import read_jsonl, read_traces
from rig.control import send_request
from rig.free_endpoints import free_network_overrides
from rig.settings import load_settings
from rig.store import read_jsonl as read_trials
from rig.summary import format_summary, summarize_session
from tests.test_session import SessionThread


def wait_until(what: str, condition: Callable[[], bool], session: SessionThread,
               timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert session.error is None, session.error
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def online_status(session: SessionThread) -> dict[str, Any]:
    return session.runner.status()["children"]["online"]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in monitor process (the real one needs a display): watched the same way."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_killed_online_module_is_restarted_once_then_the_gap_is_in_status_session_json_and_summary(
        tmp_path: Path) -> None:
    settings = load_settings(overrides={**free_network_overrides(), "online.decoder.min_trials_per_side": 3,
                                        "online.max_restarts": 1})
    session = SessionThread(settings, tmp_path, subject="c1", trials=70, speed=20.0)
    try:
        session.wait_for_trials(8, timeout_s=120)
        first = online_status(session)
        assert first["running"] and first["restarts"] == 0
        os.kill(first["pid"], signal.SIGKILL)
        wait_until("the restart", lambda: online_status(session)["restarts"] == 1
                   and online_status(session)["running"], session)
        status = online_status(session)
        assert status["pid"] != first["pid"] and status["gaps"] == 1
        gap = status["last_gap"]
        assert gap["exit_status"] == -signal.SIGKILL and gap["restarted"] and gap["ended"] is not None
        # `rig status` answers over the control socket with the same record
        reply = send_request(settings.network.control, "status")
        assert reply["ok"] and reply["children"]["online"]["restarts"] == 1
        wait_until("the restarted module's first frames", lambda: online_status(session)["last_gap"][
            "frames_lost"] is not None, session)
        last_affected = online_status(session)["last_gap"]["trials_affected"][-1]
        folder = Path(session.runner.status()["session"])
        wait_until("a decoded trial after the gap", lambda: any(
            d["trial"] > last_affected for d in read_jsonl(folder / "decoder.jsonl")), session)
        at_second_kill = session.runner.status()["trials"]
        os.kill(online_status(session)["pid"], signal.SIGKILL)
        wait_until("giving up", lambda: online_status(session)["gave_up"], session)
        assert online_status(session)["restarts"] == 1 and not online_status(session)["running"]
        result = session.join(timeout_s=240)
    finally:
        if session.thread.is_alive():
            send_request(settings.network.control, "stop")
            session.join(timeout_s=120)
    assert result.trials == 70  # the session never stopped for its online module
    info = json.loads((result.folder / "session.json").read_text())
    online = info["online"]
    assert online["restarts"] == 1 and len(online["gaps"]) == 2 and len(set(online["pids"])) == 2
    restarted, given_up = online["gaps"]
    assert restarted["restarted"] and restarted["frames_lost"] >= 0 and restarted["seconds"] > 0
    assert restarted["trials_affected"] and restarted["trials_affected"][0] >= 1
    assert restarted["trials_affected"][-1] < at_second_kill + 2
    assert not given_up["restarted"] and "max_restarts" in given_up["note"]
    assert given_up["trial_at_death"] >= at_second_kill
    # the restarted module continued the same files over the same ROIs, and decoded trials after the gap
    traces = read_traces(result.folder)
    assert len(traces) > 0 and len(set(traces.index["seq"].tolist())) == len(traces)
    decoded = [d["trial"] for d in read_jsonl(result.folder / "decoder.jsonl")]
    assert any(t > restarted["trials_affected"][-1] for t in decoded)
    assert len(list(read_trials(result.folder / "trials.jsonl"))) == 70
    assert "the rig restarts the online module" in (result.folder / "online.log").read_text()
    summary = summarize_session(result.folder)
    assert summary["online"]["restarts"] == 1 and len(summary["online"]["gaps"]) == 2
    text = format_summary(summary)
    assert "online module restarted 1 time" in text and "not restarted" in text
    assert f"{restarted['frames_lost']} frames lost" in text


def test_a_killed_microscope_and_monitor_are_recorded_and_the_session_goes_on(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    settings = load_settings(overrides={**free_network_overrides(), "online.enabled": False})
    session = SessionThread(settings, tmp_path, subject="c2", trials=30, speed=20.0, monitor=sleeper)
    try:
        session.wait_for_trials(4, timeout_s=120)
        sleeper.kill()
        scope = session.runner._sim.scope  # type: ignore[union-attr]  # the microscope's own process
        os.kill(scope._process.pid, signal.SIGKILL)
        wait_until("both deaths", lambda: session.runner.status()["children"]["events"] == 2, session)
        status = session.runner.status()["children"]
        assert status["monitor"] == {"running": False, "exit_status": -signal.SIGKILL}
        assert "simulated microscope process" in status["imaging"]["error"]
        result = session.join(timeout_s=180)
    finally:
        if session.thread.is_alive():
            send_request(settings.network.control, "stop")
            session.join(timeout_s=120)
    assert result.trials == 30
    info = json.loads((result.folder / "session.json").read_text())
    events = {e["child"]: e for e in info["children"]["events"]}
    assert events["monitor"]["event"] == "died" and events["monitor"]["exit_status"] == -signal.SIGKILL
    assert events["imaging"]["event"] == "died" and events["imaging"]["source"] == "simulated"
    assert events["imaging"]["trial"] >= 4
    text = format_summary(summarize_session(result.folder))
    assert "monitor died" in text and "frame source (simulated) died" in text


def _status_with(online: dict[str, Any]) -> dict[str, Any]:
    return {"subject": "c3", "trials": 12, "children": {"online": online, "imaging": None, "monitor": None}}


def test_the_monitor_health_line_shows_the_online_module_down_and_its_restarts(qtbot: Any) -> None:
    from rig.monitor.model import MonitorModel
    from rig.monitor.panels import HealthPanel

    model = MonitorModel()
    panel = HealthPanel(model)
    qtbot.addWidget(panel)
    down = {"running": False, "restarts": 1, "gaps": 1, "frames_lost": 0, "gave_up": False,
            "down_since": "2025-01-06T10:00:01.250"}
    model.behaviour.set_status(_status_with(down), now=100.0)
    panel.refresh(100.5)
    assert "down since 10:00:01 · restarting" in panel.online.text()
    back = {**down, "running": True, "down_since": None, "frames_lost": 7}
    model.behaviour.set_status(_status_with(back), now=101.0)
    panel.refresh(101.5)
    text = panel.online.text()
    assert "down since" not in text and "restarted 1× · 7 frames lost in 1 gap" in text
    gave_up = {**back, "running": False, "restarts": 3, "gaps": 4, "gave_up": True,
               "down_since": "2025-01-06T10:05:00.000"}
    model.behaviour.set_status(_status_with(gave_up), now=102.0)
    panel.refresh(102.5)
    assert "not restarted (online.max_restarts reached)" in panel.online.text()
    model.behaviour.set_status(_status_with({"restarts": "x", "gaps": True, "down_since": 5}), now=103.0)
    panel.refresh(103.5)  # a malformed status from the network changes nothing and raises nothing
    assert "restarted" not in panel.online.text()
