"""`python -m online` end to end over real ZeroMQ sockets, started as the rig starts it (`OnlineProcess`):
frames on the lossless path and trial/state events on a PUB in, results on online_results out, the session
files; malformed input counted and skipped; the child dies with its parent even after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from online.messages import DecoderResult, HealthReport, RoiSnapshot, TraceFrame
from online.rois import RoiSet
from online.settings import MAX_PROCESS_SETTINGS_BYTES, read_process_settings
from online.store import read_jsonl, read_traces
from online.transport import LosslessSender, LossyPublisher, LossySubscriber
from online.wire import (
    TOPIC_DECODER,
    TOPIC_HEALTH,
    TOPIC_ROIS,
    TOPIC_STATE,
    TOPIC_TRACES,
    TOPIC_TRIAL,
    Message,
)
from rig.free_endpoints import free_network
from rig.online_child import ONLINE_SETTINGS_FILE, OnlineProcess, OnlineProcessError, write_online_settings
from rig.settings import Settings, dump_settings, parse_settings

REPO = Path(__file__).resolve().parents[1]
SIZE, RATE, PERIOD_S = 64, 10.0, 3.0
N_TRIALS = 12


def make_settings(tmp_path: Path) -> tuple[Settings, Path]:
    settings = parse_settings({
        "network": free_network(),
        "imaging": {"frame_height": SIZE, "frame_width": SIZE, "frame_rate_hz": RATE, "planes": 1},
        "online": {"registration": {"reference_frames": 10, "upsample": 1},
                   "decoder": {"min_trials_per_side": 3}},
    })
    path = tmp_path / "settings.yaml"
    path.write_text(dump_settings(settings))
    return settings, path


def states_of(correct: bool) -> dict[str, list[list[float]]]:
    states = {"TrigTrialStart": [[0.0, 0.01]], "SamplePeriod": [[0.01, 1.01]], "DelayPeriod": [[1.01, 2.01]],
              "ResponseCue": [[2.01, 2.11]], "AnswerPeriod": [[2.11, 2.3]]}
    states["Reward" if correct else "TimeOut"] = [[2.3, 2.33]]
    return states


def receive_all(sub: LossySubscriber, until: float) -> list[Message]:
    messages = []
    while time.monotonic() < until:
        message = sub.recv(timeout_s=0.05)
        if message is not None:
            messages.append(message)
    return messages


def test_the_live_module_end_to_end_over_zeromq(tmp_path: Path) -> None:
    settings, _ = make_settings(tmp_path)
    subject = tmp_path / "data" / "sim-mouse"
    session = subject / "2025-01-06_100000"
    net = settings.network
    sim = SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=12, frame_rate_hz=RATE, seed=3,
                                         frames_per_acquisition=int(PERIOD_S * RATE)))
    with LossyPublisher(net.events_pub, hwm=10_000, source="rig") as events, \
            OnlineProcess(settings, session, subject) as online, \
            LosslessSender(net.frames, source="scope") as frames, \
            LossySubscriber(net.online_results, hwm=100_000, kernel_buffer_bytes=None) as results:
        assert online.running and (session / "online.log").exists()
        time.sleep(0.3)  # our subscription reaches the module's PUB
        rng = np.random.default_rng(0)
        sent_frames = 0
        for trial in range(1, N_TRIALS + 2):
            side = "left" if trial % 2 else "right"
            sim.start_trial(0.5 + trial * PERIOD_S, "tactile", side,
                            {"sample": 0.01, "delay": 1.01, "go": 2.01}, trial=trial)
            if trial <= N_TRIALS:
                events.send_event(TOPIC_TRIAL, {"kind": "start", "trial": trial, "context": "tactile"})
                for state, (start, _) in sorted(((s, v[0]) for s, v in states_of(True).items()),
                                                key=lambda kv: kv[1][0]):
                    events.send_event(TOPIC_STATE, {"trial": trial, "state": state, "time_s": start})
            new = sim.frames_until(0.5 + (trial + 1) * PERIOD_S - 1e-9)
            if trial > N_TRIALS:
                new = new[:1]  # one frame of the next trial completes the last one
            for f in new:
                frames.send_frame(f.pixels, frame_index=f.frame_index, timestamp_s=f.timestamp_s,
                                  trigger_timestamp_s=f.trigger_timestamp_s, trial=trial)
                sent_frames += 1
                time.sleep(0.0005)
            if trial == 2:  # malformed input, once the module is initialised: each counted and skipped
                frames.send_parts([b"frame", b"{not json"])
                frames.send_frame(np.zeros((32, 32), np.int16), frame_index=99, timestamp_s=9.9,
                                  trigger_timestamp_s=0.0, trial=2)
                frames.send_event(TOPIC_STATE, {"trial": 2})  # not a frame, on the frame path
                events.send_parts([b"state", b"\xff\xfe"])
                events.send_event(TOPIC_STATE, {"trial": 2, "state": "DelayPeriod", "time_s": "soon"})
                events.send_event(TOPIC_TRIAL, {"kind": "end", "trial": 2})
            if trial <= N_TRIALS:
                correct = bool(rng.random() < 0.9)
                record = {"trial": trial, "context": "tactile", "side": side, "outcome": "hit" if correct
                          else "error", "licked_side": side if correct else ("right" if side == "left" else
                                                                              "left"),
                          "bpod": {"States": states_of(correct), "Events": {"Tup": [0.01]}}}
                events.send_event(TOPIC_TRIAL, {"kind": "end", "trial": trial, "record": record})
        messages = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until every trial's result and a health report of all frames
            messages += receive_all(results, time.monotonic() + 0.1)
            done = sum(m.topic == TOPIC_DECODER for m in messages) == N_TRIALS
            health = [HealthReport.from_message(m) for m in messages if m.topic == TOPIC_HEALTH]
            if done and health and health[-1].frames == sent_frames:
                break
        online.stop()
        assert online.exit_status == 0 and not online.running
        messages += receive_all(results, time.monotonic() + 0.2)

    by_topic: dict[bytes, list[Message]] = {}
    for m in messages:
        by_topic.setdefault(m.topic, []).append(m)
    traces = [TraceFrame.from_message(m) for m in by_topic[TOPIC_TRACES]]
    assert len(traces) == sent_frames and traces[0].dff.shape == traces[-1].dff.shape
    assert [t.frame_index for t in traces[:3]] == [0, 1, 2] and traces[0].trial == 1
    snapshot = RoiSnapshot.from_message(by_topic[TOPIC_ROIS][0])
    assert snapshot.reference.shape == (SIZE, SIZE) and snapshot.n_rois == traces[0].dff.size >= 1
    decoded = [DecoderResult.from_message(m) for m in by_topic[TOPIC_DECODER]]
    assert [d.trial for d in decoded] == list(range(1, N_TRIALS + 1))
    assert any(d.decoded_side is not None for d in decoded) and decoded[-1].accuracy["tactile"] is not None
    health = [HealthReport.from_message(m) for m in by_topic[TOPIC_HEALTH]]
    assert health and health[-1].reference_ready and health[-1].n_rois == snapshot.n_rois
    assert health[-1].malformed >= 6 and health[-1].gaps == 0 and health[-1].frames == sent_frames
    assert health[-1].processing_p50_ms is not None and health[-1].latency_p99_ms is not None

    table = read_traces(session)
    assert len(table) == sent_frames and table.dff.shape[1] == snapshot.n_rois
    # deconvolved activity (on by default) travels beside dF/F and is saved beside it, frame for frame
    assert all(t.deconvolved is not None for t in traces) and table.deconvolved is not None
    np.testing.assert_array_equal(table.deconvolved, np.array([t.deconvolved for t in traces]))
    assert RoiSet.load(session / "rois.npz").n == snapshot.n_rois and (session / "reference.npy").exists()
    lines = read_jsonl(session / "decoder.jsonl")
    assert [line["trial"] for line in lines] == list(range(1, N_TRIALS + 1))
    summary = json.loads((session / "online_summary.json").read_text())
    counters = summary["counters"]
    assert counters["frames_malformed"] == 2 and summary["frames_receiver"]["malformed"] == 1  # shape, topic
    assert counters["events_malformed"] == 2 and summary["events_receiver"]["malformed"] == 1
    assert summary["pipeline"]["stats"]["trial_starts"] == N_TRIALS and counters["errors"] == 0
    stored = json.loads((subject / "coding_directions.json").read_text())
    assert {e["context"] for e in stored["coding_directions"]} == {"tactile"}
    assert "skipped" in (session / "online.log").read_text()


def test_a_module_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    settings, _ = make_settings(tmp_path)
    process = OnlineProcess(settings, tmp_path / "session", None,
                            rois=tmp_path / "no-such-suite2p-folder")
    with pytest.raises(OnlineProcessError, match="(?s)exited with status 2.*no-such-suite2p-folder do not"):
        process.start()
    assert process.exit_status == 2 and not process.running


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1]
    except FileNotFoundError:
        return None
    return None


def test_the_module_dies_with_its_parent_even_after_kill_9(tmp_path: Path) -> None:
    _, settings_path = make_settings(tmp_path)
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from rig.online_child import OnlineProcess
        from rig.settings import load_settings
        settings = load_settings({str(settings_path)!r})
        online = OnlineProcess(settings, {str(tmp_path / 'session')!r}, None)
        online.start()
        print(online.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _state(child) not in (None, "Z")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 10
        while _state(child) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(child) in (None, "Z"), "the online module outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
    summary = tmp_path / "session" / "online_summary.json"
    assert summary.exists()  # PDEATHSIG is SIGTERM: the module still stopped cleanly


def test_the_online_settings_file_is_checked_and_a_bad_one_is_one_sentence(tmp_path: Path) -> None:
    """The module reads the online settings the rig writes; a settings.yaml, a missing, oversized or invalid
    file each end in one line naming the file, exit status 2, before any socket is bound."""
    settings, yaml_path = make_settings(tmp_path)
    good = write_online_settings(settings, tmp_path / ONLINE_SETTINGS_FILE)
    read = read_process_settings(good)
    assert read.online == settings.online and read.network.frames == settings.network.frames
    assert read.frame_rate_hz == settings.imaging.frame_rate_hz / settings.imaging.planes
    wrong_type = tmp_path / "wrong-type.json"
    wrong_type.write_text(good.read_text().replace(f'"frame_rate_hz": {RATE}', '"frame_rate_hz": true'))
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (MAX_PROCESS_SETTINGS_BYTES + 1))
    cases = {yaml_path: "rig online --settings", tmp_path / "absent.json": "No such file",
             wrong_type: "frame_rate_hz", huge: "larger than"}
    for path, words in cases.items():
        proc = subprocess.run([sys.executable, "-m", "online", "--settings", str(path), "--session",
                               str(tmp_path / "s")], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert str(path) in line and words in line, line
    assert not (tmp_path / "s").exists()
