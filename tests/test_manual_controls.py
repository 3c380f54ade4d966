"""The manual valve through the control socket of a real (simulated) session, the provenance of every line
of events.jsonl, the water count in the status, and the summary figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rig.control import ControlRequestError, parse_request, send_request
from rig.free_endpoints import free_network_overrides
from rig.session_figure import FIGURE_FILE, decoder_curves, save_session_figure
from rig.settings import Settings, load_settings
from rig.store import read_jsonl
from tests.test_session import SessionThread

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def settings() -> Settings:
    behaviour_only = {"online.enabled": False, "imaging.source": "none"}
    return load_settings(overrides={**free_network_overrides(), **behaviour_only, "session.flush_s": 0.5})


def test_valve_requests_are_checked_before_anything_acts() -> None:
    assert parse_request(b'{"command": "valve", "side": "left", "action": "drop", "source": "monitor"}') == (
        "valve", {"side": "left", "action": "drop", "source": "monitor"})
    for raw, error in (
        (b'{"command": "valve", "side": "up", "action": "drop"}', "'side' must be left or right"),
        (b'{"command": "valve", "side": "left", "action": "pour"}', "'action' must be drop or flush"),
        (b'{"command": "valve", "side": "left"}', "command 'valve' needs 'action'"),
        (b'{"command": "pause", "source": "cat"}', "'source' must be experimenter, monitor, closed loop"),
    ):
        with pytest.raises(ControlRequestError, match=error):
            parse_request(raw)


def test_manual_valve_is_logged_with_its_source_and_counted_as_water(settings: Settings,
                                                                    tmp_path: Path) -> None:
    session = SessionThread(settings, tmp_path, subject="m-valve", trials=500, speed=40.0, weight_g=21.5)
    session.wait_for_trials(2)
    endpoint = settings.network.control
    drop = send_request(endpoint, "valve", side="left", action="drop", source="monitor")
    assert drop["ok"] and drop["volume_ul"] == settings.task.reward_volume_ul
    assert drop["open_s"] == pytest.approx(settings.reward_valve_time_s("left"))
    flush = send_request(endpoint, "valve", side="right", action="flush")
    assert flush["ok"] and flush["open_s"] == 0.5 and flush["volume_ul"] is None
    settings_file = tmp_path / "network.yaml"
    settings_file.write_text(json.dumps({"network": settings.network.model_dump(mode="json")}))
    cli = subprocess.run([sys.executable, "-m", "rig", "valve", "left", "--settings", str(settings_file)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert cli.returncode == 0 and "one drop from the left valve" in cli.stdout, cli.stderr
    assert send_request(endpoint, "pause", source="monitor")["ok"]
    assert send_request(endpoint, "resume")["ok"]
    status = send_request(endpoint, "status")
    assert status["rig"] == settings.rig.name and status["weight_g"] == 21.5 and status["started"]
    assert send_request(endpoint, "stop")["ok"]
    result = session.join()
    records = list(read_jsonl(result.folder / "trials.jsonl"))
    rewards = sum(r["reward_ul"] for r in records)
    info = json.loads((result.folder / "session.json").read_text())
    # the valve states' calibrated volumes (the rewards) and the two manual drops
    expected = rewards + 2 * settings.task.reward_volume_ul
    assert info["water"]["delivered_ul"] == pytest.approx(expected, rel=1e-3)
    assert info["weight_g"] == 21.5

    lines = list(read_jsonl(result.folder / "events.jsonl"))
    assert lines and all(line.get("source") in ("task", "experimenter", "monitor", "closed loop")
                         for line in lines)
    controls = [line for line in lines if line["kind"] == "control"]
    assert [(c["command"], c["source"]) for c in controls] == [
        ("valve", "monitor"), ("valve", "experimenter"), ("valve", "experimenter"), ("pause", "monitor"),
        ("resume", "experimenter"), ("stop", "experimenter")]
    assert controls[0]["side"] == "left" and controls[0]["action"] == "drop"
    assert controls[0]["volume_ul"] == settings.task.reward_volume_ul and controls[1]["open_s"] == 0.5
    states = [line for line in lines if line["kind"] == "state"]
    assert all(isinstance(s["outputs"], dict) for s in states)
    rewards_set = [s["outputs"] for s in states if s["name"] == "Reward"]
    assert rewards_set and all(any(k.startswith("Valve") for k in o) for o in rewards_set)


def test_summary_figure_from_a_session_folder(settings: Settings, tmp_path: Path) -> None:
    session = SessionThread(settings, tmp_path, subject="m-figure", trials=6, speed=60.0)
    folder = session.join().folder
    online = folder / "online"
    online.mkdir(exist_ok=True)
    decoder = [{"trial": n, "accuracy": {"tactile": 0.5 + 0.05 * n, "auditory": None}} for n in range(1, 7)]
    (online / "decoder.jsonl").write_text("".join(json.dumps(d) + "\n" for d in decoder))
    assert decoder_curves(decoder) == {"tactile": ([1, 2, 3, 4, 5, 6], pytest.approx([0.55 + 0.05 * i
                                                                                       for i in range(6)]))}
    path = save_session_figure(folder, settings.wiring)
    assert path == folder / FIGURE_FILE
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert not list(folder.glob(".*partial"))



def test_a_valve_still_open_at_the_end_of_the_session_is_closed(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from hardware.bpod.client import BpodClient

    calls: list[tuple[str, int]] = []
    override = BpodClient.override_output

    def recorded(self: BpodClient, channel: str, value: int) -> None:
        calls.append((channel, value))
        override(self, channel, value)

    monkeypatch.setattr(BpodClient, "override_output", recorded)
    long_flush = load_settings(overrides={**free_network_overrides(), "online.enabled": False,
                                          "imaging.source": "none", "session.flush_s": 30.0})
    session = SessionThread(long_flush, tmp_path, subject="m-flush", trials=500, speed=10.0)
    session.wait_for_trials(1)
    endpoint = long_flush.network.control
    assert send_request(endpoint, "valve", side="right", action="flush")["open_s"] == 30.0
    assert send_request(endpoint, "stop")["ok"]
    session.join()
    right = long_flush.wiring.right_valve
    assert calls == [(right, 1), (right, 0)]  # closed when the session ended, not 3 s later by its timer
    assert not session.runner._valve_timers
