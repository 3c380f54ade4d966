"""The session's frame source: the simulated microscope coupled to the emulator (frames on the Bpod clock,
both frame paths, ScanImage TIFFs per trial, the plan for the session's speed), and the ScanImage sources
chosen by settings.imaging.source."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zmq

from hardware.bpod.emulator.world import TrialRecord, World
from hardware.bpod.hardware_description import preset
from hardware.frames.lossless import QueuedLosslessPath
from hardware.scanimage.reader import ScanImageFile
from hardware.scanimage.writer import ScanImageWriter
from hardware.sim import scope as sim_scope
from hardware.sim.microscope import MicroscopeConfig, SimMicroscope, measure_frame_cost_s, plan_for_speed
from hardware.sim.scope import MicroscopeStartError, SimScope
from hardware.sim.scope_plan import DEFAULT_CPU_BUDGET, cached_frame_cost
from hardware.sim.world_coupling import CYCLE_S
from online.transport import LosslessReceiver, LossySubscriber
from online.wire import FrameHeader, Message
from rig.free_endpoints import free_loopback_endpoint as free_endpoint
from rig.free_endpoints import free_network_overrides
from rig.imaging import NoImaging, open_imaging
from rig.session import RunOptions, SessionRunner
from rig.settings import Settings, load_settings
from rig.simulated_rig import simulated_microscope_config
from rig.store import read_jsonl
from tests.scanimage_frames import encode_scanimage_frame


class Collector:
    """Receives on the lossless path (and optionally the display path) in background threads."""

    def __init__(self, frames: str, display: str | None = None) -> None:
        self.receiver = LosslessReceiver(frames)
        self.messages: list[Message] = []
        self.display: list[Message] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._pull, daemon=True)]
        self._display_endpoint = display
        if display is not None:
            self._threads.append(threading.Thread(target=self._sub, daemon=True))
        for thread in self._threads:
            thread.start()

    def _pull(self) -> None:
        while not self._stop.is_set():
            message = self.receiver.recv(0.05)
            if message is not None:
                self.messages.append(message)
        while (message := self.receiver.recv(0.3)) is not None:
            self.messages.append(message)

    def _sub(self) -> None:
        assert self._display_endpoint is not None
        with LossySubscriber(self._display_endpoint) as sub:
            while not self._stop.is_set():
                for message in sub.latest(0.05).values():
                    self.display.append(message)

    def close(self) -> list[Message]:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self.receiver.close()
        return self.messages


def by_trial(messages: list[Message]) -> dict[int, list[tuple[FrameHeader, Message]]]:
    trials: dict[int, list[tuple[FrameHeader, Message]]] = defaultdict(list)
    for message in messages:
        header = FrameHeader.from_message(message)
        trials[header.trial].append((header, message))
    return trials


# -- the microscope in the emulator's world, without a session ---------------------------------------------


def drive_trial(world: World, scope: SimScope, trial: int, start: int, length: int, context: str) -> None:
    """One trial as the emulator's listeners see it: trigger, pole in/out, go cue, a planned lick."""
    out = {name: i for i, name in enumerate(world.output_names)}
    scope.set_trial_context(trial, context)
    world.trial_event(TrialRecord("start", start, 0, trial))
    world.output_changed(start, out["BNC1"], 1)
    world.output_changed(start + 10, out["BNC1"], 0)
    world.output_changed(start + 10, out["BNC2"], 1)
    scope.on_plan("pole_posterior", "right")
    world.output_changed(start + 2_000, out["BNC2"], 0)
    world.output_changed(start + 4_000, out["PWM4"], 255)
    scope.on_lick(start + 6_000, "right")
    world.output_changed(start + 4_100, out["PWM4"], 0)
    world.trial_event(TrialRecord("end", start + length, 0, trial))


def test_the_sessions_microscope_keeps_no_ground_truth_of_the_frames_it_rendered() -> None:
    """The rig's simulated microscope renders for hours: thousands of frames leave no per-frame ground
    truth behind in its process (each frame still carries its own)."""
    config = simulated_microscope_config(load_settings())
    sim = SimMicroscope(config, height=32, width=32, n_neurons=20, frame_rate_hz=30.0)
    for trial in range(1, 21):
        sim.start_trial(10.0 * trial, "tactile", "left", epochs={"sample": 0.01, "delay": 1.31, "go": 2.61})
    frames = sim.frames_until(210.0)
    assert len(frames) > 5000 and frames[-1].truth.dff.shape == (20,)
    assert len(sim.truth) == 0


def test_trial_context_and_mouse_plans_reach_the_microscope_as_queued_events() -> None:
    world = World(preset("r2", 23))
    scope = SimScope(MicroscopeConfig(height=16, width=16, n_neurons=5), world, clock=lambda: 0)
    drive_trial(world, scope, 1, 1_000, 8_000, "auditory")
    events = list(scope._queue.events)
    assert events[0] == ("start_trial", 0.1, "auditory", None, None, 1)  # context known at the trigger
    assert ("set_trial_info", "auditory", "right") in events  # the mouse's plan, during the trial
    assert [e[2] for e in events if e[0] == "mark_epoch"] == ["sample", "delay", "go"]
    assert [e[1:] for e in events if e[0] == "lick"] == [(pytest.approx(0.7), "right")]
    scope.close()


def test_simulated_frames_become_one_scanimage_tiff_per_trial_read_back_exactly(tmp_path: Path) -> None:
    world = World(preset("r2", 23))
    clock = [0]
    config = MicroscopeConfig(height=24, width=32, frame_rate_hz=30.0, n_neurons=12, seed=3)
    scope = SimScope(config, world, clock=lambda: clock[0], speed=10.0)
    frames_endpoint = free_endpoint()
    collector = Collector(frames_endpoint)
    folder = tmp_path / "imaging"
    try:
        scope.start(frames=frames_endpoint, frames_display=free_endpoint(), tiff_folder=folder)
        start, length = 5_000, 8_100  # 0.81 s per trial: 25 frames at 30 Hz
        for trial, context in enumerate(["tactile", "tactile", "auditory"], start=1):
            drive_trial(world, scope, trial, start, length, context)
            clock[0] = start + length
            start += length
            time.sleep(0.05)
        scope.stop()
    finally:
        scope.close()
        messages = collector.close()
    health = scope.health()
    assert health["final"] and health["error"] is None and health["frames_made"] == 75
    assert health["lossless"]["sent"] == 75 and health["lossless"]["undeliverable"] == 0
    assert health["tiff"] == {"folder": str(folder), "files": 3, "frames": 75, "error": None}
    assert health["late_events"] == 0 and health["event_errors"] == 0
    assert collector.receiver.stats.gaps == 0
    trials = by_trial(messages)
    assert sorted(trials) == [1, 2, 3]
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"sim_{n:05d}_00001.tif" for n in (1, 2, 3)]
    for trial, path in zip((1, 2, 3), files, strict=True):
        frames = trials[trial]
        assert [h.frame_index for h, _ in frames] == list(range(25))
        sent = np.stack([m.arrays[0] for _, m in frames])
        stamps = np.array([h.timestamp_s for h, _ in frames])
        np.testing.assert_allclose(stamps, np.arange(25) / 30.0, atol=1e-12)
        assert {h.trigger_timestamp_s for h, _ in frames} == {0.0}
        with ScanImageFile(path) as recording:  # our reader
            assert recording.shape == (25, 1, 1, 24, 32) and recording.dtype == np.int16
            np.testing.assert_array_equal(recording.frames()[:, 0, 0], sent)
            np.testing.assert_allclose(recording.timestamps_s, stamps, atol=1e-9)
            assert recording.trigger_times.acquisition == ((trial, 0.0),)
            assert recording.header["SI.hScan2D.logFileCounter"] == trial
            assert recording.header["SI.acqState"] == "loop"
        with tifffile.TiffFile(path) as tif:  # and tifffile
            assert tif.is_scanimage and tif.scanimage_metadata
            np.testing.assert_array_equal(tif.asarray(), sent)
            assert f"frameTimestamps_sec = {stamps[-1]:.9f}" in tif.pages[24].description


def test_a_microscope_that_cannot_bind_its_display_endpoint_says_so() -> None:
    taken = free_endpoint()
    context = zmq.Context()
    holder = context.socket(zmq.PUB)
    holder.bind(taken)
    config = MicroscopeConfig(height=16, width=16, n_neurons=5)
    scope = SimScope(config, World(preset("r2", 23)), clock=lambda: 0)
    try:
        with pytest.raises(MicroscopeStartError, match=f"cannot bind {taken}"):
            scope.start(frames_display=taken)
        assert not scope.running
    finally:
        scope.close()
        holder.close(linger=0)
        context.term()


def test_stop_gets_the_final_counters_from_a_renderer_that_is_far_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A renderer that is behind by more than the stop timeout, as a starved one is (other processes load
    # the cores and it runs niced): the clock jumps by ~3 s of this host's rendering just before the stop.
    # It reports its progress while it catches up, so the stop waits for its final counters.
    monkeypatch.setattr(sim_scope, "STOP_TIMEOUT_S", 2.0)
    config = MicroscopeConfig(height=128, width=128, frame_rate_hz=30.0, n_neurons=60, seed=2)
    backlog = max(60, round(3.0 / measure_frame_cost_s(config, n_frames=10)))
    world = World(preset("r2", 23))
    clock = [0]
    scope = SimScope(config, world, clock=lambda: clock[0])
    try:
        scope.start()
        drive_trial(world, scope, 1, 1_000, 8_000, "tactile")  # the trigger at 0.1 s starts the acquisition
        clock[0] = 1_000 + round((backlog - 0.5) / 30.0 / CYCLE_S)  # frames 0 .. backlog-1 started before it
        scope.stop()
    finally:
        scope.close()
    health = scope.health()
    assert health["final"] and health["error"] is None
    assert health["frames_made"] == backlog and health["trials_imaged"] == 1
    assert health["render_behind_s"] == 0.0  # it caught up before reporting


def frame(index: int, trial: int) -> dict[str, Any]:
    return {"frame_index": index, "timestamp_s": index / 30, "trigger_timestamp_s": 0.0, "trial": trial,
            "channel": 0, "plane": 0}


def test_lossless_queue_counts_what_it_cannot_deliver_and_never_blocks() -> None:
    endpoint = free_endpoint()
    pixels = np.zeros((64, 64), np.int16)  # 8 kB
    path = QueuedLosslessPath(endpoint, max_pending_bytes=20 * pixels.nbytes, send_timeout_s=0.05).start()
    started = time.monotonic()
    accepted = []
    for i in range(200):
        offer_started = time.monotonic()
        accepted.append(path.deliver(pixels, frame(i, 1)))
        assert time.monotonic() - offer_started < 0.05  # offering never waits
        time.sleep(0.001)
    path.close()
    assert time.monotonic() - started < 2.0  # nor does closing a path nobody reads
    report = path.report()
    assert report["offered"] == 200 and report["sent"] + report["undeliverable"] == 200
    assert report["sent"] <= 64  # what ZeroMQ queues for a connection that is not there (high-water mark)
    assert report["undeliverable"] >= 200 - 20 - 64 and report["stalled"] and not all(accepted)

    # With a receiver, everything arrives, in order, numbered without gaps.
    endpoint = free_endpoint()
    with LosslessReceiver(endpoint) as receiver:
        path = QueuedLosslessPath(endpoint).start()
        for i in range(50):
            assert path.deliver(pixels + i, frame(i, 2))
        got = [receiver.recv(2.0) for _ in range(50)]
        path.close()
    assert [m.header["frame_index"] for m in got if m is not None] == list(range(50))
    assert receiver.stats.gaps == 0 and path.report()["undeliverable"] == 0


# -- rig run: the session publishes frames -------------------------------------------------------------------


def hashes(pixels: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16).hexdigest()


def test_session_publishes_frames_aligned_to_bpod_trials_and_records_the_reduced_plan(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # the test stands in for an online module running elsewhere: it takes the lossless frames itself
    overrides = {"imaging.write_tiff": True, "online.start_with_rig": False}
    settings = load_settings(overrides={**free_network_overrides(), **overrides})
    collector = Collector(settings.network.frames, settings.network.frames_display)
    try:
        result = SessionRunner(settings, RunOptions(data_root=tmp_path, speed=50.0, trials=10,
                                                    handle_signals=False)).run()
    finally:
        messages = collector.close()
    info = json.loads((result.folder / "session.json").read_text())
    imaging = info["imaging"]
    plan = imaging["effective"]
    rate = plan["rate_hz"]
    # The plan for 50x from this host's frame costs (measured once per process, so the same ones the session
    # used): recorded, and said when it is a reduction (on most hosts 512x512 at 30 Hz is too much at 50x).
    config = simulated_microscope_config(settings)
    expected = plan_for_speed(50.0, DEFAULT_CPU_BUDGET, config, frame_cost_s=cached_frame_cost(config))
    full = {"height": 512, "width": 512, "rate_hz": 30.0}
    assert imaging["source"] == "simulated" and imaging["speed"] == 50.0 and imaging["configured"] == full
    assert plan == {"height": expected.height, "width": expected.width, "rate_hz": expected.rate_hz}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert imaging["reduced"] == (plan != full) == any("cannot render 512x512" in text for text in warnings)
    assert imaging["final"] and imaging["error"] is None and imaging["late_events"] == 0
    assert imaging["achieved_rate_hz"] == pytest.approx(rate, rel=0.05)

    # Lossless path: every frame, no gaps, on the Bpod trials' clock.
    assert collector.receiver.stats.gaps == 0 and collector.receiver.stats.malformed == 0
    assert len(messages) == imaging["frames_made"] == imaging["lossless"]["sent"] > 0
    assert imaging["lossless"]["undeliverable"] == 0
    records = list(read_jsonl(result.folder / "trials.jsonl"))
    trials = by_trial(messages)
    assert sorted(trials) == [r["trial"] for r in records] == list(range(1, 11))
    for record in records:
        frames = trials[record["trial"]]
        duration = record["bpod"]["trial_end_s"] - record["bpod"]["trial_start_s"]
        planes = settings.imaging.planes  # planes in turn, each volume one time point (frame_index)
        got = [(h.frame_index, h.plane) for h, _ in frames]
        assert got == [divmod(k, planes) for k in range(len(frames))]  # no gaps within a trial
        assert all(h.trigger_timestamp_s == 0.0 for h, _ in frames)  # loop mode: the trigger is t = 0
        stamps = np.array([h.timestamp_s for h, _ in frames])
        np.testing.assert_allclose(stamps, np.arange(len(frames)) / rate, atol=1e-9)
        assert all(h.height == plan["height"] and h.width == plan["width"] for h, _ in frames)
        if record["trial"] < 10:  # frames run until the next trigger; the last trial's until the stop
            # (the next trigger is the next trial's start: its end when it was queued in time, later if not)
            following = records[record["trial"]]["bpod"]["trial_start_s"] - record["bpod"]["trial_start_s"]
            assert abs(len(frames) - following * rate) <= 1.0
            assert stamps[-1] < following
        else:
            assert len(frames) >= duration * rate - 1.0
    assert collector.display and all(FrameHeader.from_message(m).trial in trials for m in collector.display)

    # The same frames, one ScanImage file per trial, in the session's imaging/ folder.
    files = sorted((result.folder / "imaging").glob("*.tif"))
    assert [f.name for f in files] == [f"sim_{n:05d}_00001.tif" for n in range(1, 11)]
    for number, path in zip(range(1, 11), files, strict=True):
        with ScanImageFile(path) as recording:
            n, planes = recording.shape[:2]  # whole volumes (a volume cut by the next trigger is not stored)
            stored = recording.frames()[:, :, 0].reshape(n * planes, *recording.shape[3:])
            sent = trials[number]
            assert [hashes(p) for p in stored] == [hashes(m.arrays[0]) for _, m in sent[:n * planes]]
            assert len(sent) - n * planes < planes


# -- the ScanImage sources, chosen by settings -------------------------------------------------------------


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings(overrides={**free_network_overrides(), **overrides})


def test_folder_source_publishes_new_acquisitions_and_skips_old_files(tmp_path: Path) -> None:
    folder = tmp_path / "scanimage"
    old = ScanImageWriter.for_loop_trial(folder, "old", 1, height=8, width=8, template="compact")
    old.write_frame(np.zeros((8, 8), np.int16), 0.0)
    old.close()
    settings = _settings(tmp_path, **{"imaging.source": "scanimage_folder",
                                      "imaging.scanimage_folder": folder})
    collector = Collector(settings.network.frames)
    source = open_imaging(settings, tmp_path, None)
    try:
        with source:
            for trial in (1, 2):
                writer = ScanImageWriter.for_loop_trial(folder, "acq", trial, height=8, width=8,
                                                        template="compact", acq_trigger_timestamp_s=0.0)
                with writer:
                    for t in range(3):
                        writer.write_frame(np.full((8, 8), 10 * trial + t, np.int16), t / 30)
            deadline = time.monotonic() + 10
            while source.health()["pages"] < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        messages = collector.close()
    got = [(m.header["trial"], m.header["frame_index"], int(m.arrays[0][0, 0])) for m in messages]
    assert got == [(1, 0, 10), (1, 1, 11), (1, 2, 12), (2, 0, 20), (2, 1, 21), (2, 2, 22)]
    health = source.health()
    assert health["source"] == "scanimage_folder" and health["pages"] == 6 and health["files"] == 2
    assert health["lossless_sent"] == 6 and health["error"] is None and not health["running"]


def test_stream_source_republishes_scanimage_frames(tmp_path: Path) -> None:
    stream = free_endpoint()
    settings = _settings(tmp_path, **{"imaging.source": "scanimage_stream",
                                      "imaging.stream_endpoint": stream})
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(stream)
    collector = Collector(settings.network.frames)
    source = open_imaging(settings, tmp_path, None)
    try:
        with source:
            deadline = time.monotonic() + 10
            number = 1
            while not collector.messages:  # until the adapter has subscribed
                assert time.monotonic() < deadline
                pixels = np.full((1, 4, 6), number, np.int16)
                pub.send_multipart(encode_scanimage_frame(pixels, number / 30, number))
                number += 1
                time.sleep(0.02)
            pub.send_multipart([b"garbage"])
            time.sleep(0.1)
    finally:
        messages = collector.close()
        pub.close()
        context.term()
    health = source.health()
    assert health["source"] == "scanimage_stream" and health["malformed"] == 1
    assert health["frames"] == health["lossless_sent"] == len(messages) >= 1
    first, last = (int(m.arrays[0][0, 0]) for m in (messages[0], messages[-1]))
    assert last == first + messages[-1].header["frame_index"]  # frame_index counts from the first seen


def test_simulated_source_needs_the_emulator(tmp_path: Path) -> None:
    settings = _settings(tmp_path, **{"bpod.port": "/dev/ttyACM0"})
    source = open_imaging(settings, tmp_path, None)
    assert isinstance(source, NoImaging)
    with source:
        pass
    assert source.health() == {"source": "simulated", "running": False,
                               "reason": "imaging.source 'simulated' runs inside the simulated rig only "
                                         "(bpod.port: emulator)"}
