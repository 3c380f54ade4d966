"""The online module survives any frame: bad headers, stray frames of another size, blank (shutter closed)
and NaN frames. Frames go over real ZeroMQ sockets to the real `python -m online` process (as the rig starts
it), or to a real receiver for the header rules, or straight to the pipeline for its setup rules."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from hardware.scanimage.writer import ScanImageWriter
from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from online.config import PipelineConfig
from online.errors import MalformedInput, PipelineError
from online.messages import HealthReport
from online.pipeline import OnlinePipeline
from online.process import replay
from online.rois import RoiSet, detect_rois
from online.settings import OnlineSettings, RegistrationSettings
from online.transport import MAX_STREAMS, LosslessReceiver, LosslessSender, LossySubscriber
from online.wire import (
    MAX_HEADER_BYTES,
    TOPIC_FRAME,
    TOPIC_HEALTH,
    FrameHeader,
    WireError,
    decode_message,
    frame_aux_triggers,
)
from rig.free_endpoints import free_loopback_endpoint
from rig.online_child import OnlineProcess
from tests.test_online_process import PERIOD_S, RATE, SIZE, make_settings

REFERENCE_FRAMES = 10  # make_settings: the module builds its reference from 10 frames
CONFIG = PipelineConfig(OnlineSettings(registration=RegistrationSettings(reference_frames=REFERENCE_FRAMES)),
                        frame_rate_hz=RATE)


def good_header(**changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"v": 1, "seq": 0, "t_ns": time.time_ns(), "src": "scope", "dtype": ["<i2"],
                              "shape": [[4, 4]], "frame_index": 0, "timestamp_s": 0.0,
                              "trigger_timestamp_s": 0.0, "trial": 1, "channel": 0, "plane": 0}
    header.update(changes)
    return {k: v for k, v in header.items() if v is not DROP}


DROP = object()
PIXELS = np.zeros((4, 4), np.int16)

# (header changes or raw header bytes, words the refusal must contain)
BAD_HEADERS: list[tuple[dict[str, Any] | bytes, str]] = [
    ({"src": ["scope"]}, "src"),
    ({"src": {"a": 1}}, "src"),
    ({"src": "s" * 1000}, "src"),
    ({"v": True}, "wire version"),
    ({"v": "1"}, "wire version"),
    ({"seq": "3"}, "seq"),
    ({"seq": True}, "seq"),
    ({"seq": 2**64}, "seq"),
    ({"t_ns": 1.5}, "t_ns"),
    ({"t_ns": None}, "t_ns"),
    ({"t_ns": DROP}, "t_ns"),
    ({"frame_index": "3"}, "frame_index"),
    ({"frame_index": -1}, "frame_index"),
    ({"trial": [1]}, "trial"),
    ({"trial": -2}, "trial"),
    ({"trial": 2**70}, "trial"),
    ({"channel": 1.0}, "channel"),
    ({"plane": False}, "plane"),
    ({"timestamp_s": "now"}, "timestamp_s"),
    ({"timestamp_s": True}, "timestamp_s"),
    ({"trigger_timestamp_s": [0.0]}, "trigger_timestamp_s"),
    ({"shape": [[4]]}, "shape"),
    ({"shape": [[4, 4.0]]}, "shape"),
    ({"shape": [[0, 4]]}, "shape"),
    ({"shape": "4x4"}, "shape"),
    ({"dtype": ["O"]}, "dtype"),
    ({"dtype": ["<c8"], "shape": [[2, 2]]}, "dtype"),
    ({"dtype": ["?"], "shape": [[4, 8]]}, "dtype"),
    ({"dtype": [7]}, "dtype"),
    ({"aux_trigger_s": ["a"]}, "aux_trigger_s"),
    ({"aux_trigger_s": [True]}, "aux_trigger_s"),
    ({"aux_trigger_s": 1.0}, "aux_trigger_s"),
    ({"aux_trigger_s": [0.0] * 5000}, "aux_trigger_s"),
    (json.dumps(good_header()).replace('"timestamp_s": 0.0', '"timestamp_s": NaN').encode(), "NaN"),
    (json.dumps(good_header()).replace('"timestamp_s": 0.0', '"timestamp_s": -Infinity').encode(),
     "Infinity"),
    (json.dumps(good_header(x=1)).replace('"x": 1', '"x": ' + "[" * 5000 + "]" * 5000).encode(), "nest"),
    (json.dumps(good_header(x=1)).replace('"x": 1', '"x": ' + "[" * 40 + "]" * 40).encode(), "nest"),
    (json.dumps(good_header(x="y" * (MAX_HEADER_BYTES + 1))).encode(), "bytes"),
    (json.dumps(good_header(x=1)).replace('"x": 1', '"x": ' + "9" * 5000).encode(), "not UTF-8 JSON"),
]


def parts_of(bad: dict[str, Any] | bytes) -> list[Any]:
    header = bad if isinstance(bad, bytes) else json.dumps(good_header(**bad)).encode()
    return [TOPIC_FRAME, header, PIXELS]


@pytest.fixture
def pull_push() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    context = zmq.Context()
    endpoint = free_loopback_endpoint()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    try:
        for s in (pull, push):
            s.setsockopt(zmq.LINGER, 0)
        pull.bind(endpoint)
        push.connect(endpoint)
        yield pull, push
    finally:
        pull.close()
        push.close()
        context.term()


@pytest.mark.parametrize(("bad", "words"), BAD_HEADERS, ids=[str(i) for i in range(len(BAD_HEADERS))])
def test_every_frame_header_field_is_type_checked(pull_push: Any, bad: dict[str, Any] | bytes,
                                                  words: str) -> None:
    pull, push = pull_push
    push.send_multipart(parts_of(bad))
    assert pull.poll(5000)
    received = pull.recv_multipart(copy=False)
    with pytest.raises(WireError, match=words) as refused:
        message = decode_message(received)
        FrameHeader.from_message(message)
        frame_aux_triggers(message.header)
    assert len(str(refused.value)) < 300  # one sentence, never the whole bad value
    push.send_multipart(parts_of({}))  # a good frame after it is read as usual
    assert pull.poll(5000)
    message = decode_message(pull.recv_multipart(copy=False))
    assert FrameHeader.from_message(message).frame_index == 0 and frame_aux_triggers(message.header) == ()


def test_the_receiver_counts_bad_headers_and_keeps_no_state_for_them() -> None:
    endpoint = free_loopback_endpoint()
    with LosslessReceiver(endpoint) as receiver, LosslessSender(endpoint) as sender:
        for i in range(300):  # a sender that names itself anew in every message
            sender.send_parts([TOPIC_FRAME, json.dumps(good_header(src=[i], seq=i)).encode(), PIXELS])
        sender.send_parts(parts_of({}))
        message = receiver.recv(timeout_s=5)
        assert message is not None and message.source == "scope"
        assert receiver.stats.malformed == 300 and receiver.stats.received == 1


# -- the live module -----------------------------------------------------------------------------------------


class Module:
    """The online module started as the rig starts it, with a frame sender and a results subscriber."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings, _ = make_settings(tmp_path)
        self.session = tmp_path / "session"
        self.sim = SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=12, frame_rate_hz=RATE,
                                                  seed=3, frames_per_acquisition=int(PERIOD_S * RATE)))
        net = self.settings.network
        self.online = OnlineProcess(self.settings, self.session, None)
        self.frames = LosslessSender(net.frames, source="scope", timeout_s=10)
        self.results = LossySubscriber(net.online_results, topics=(TOPIC_HEALTH,), hwm=10_000,
                                       kernel_buffer_bytes=None)
        self.trial = 0
        self.index = 0

    def start(self) -> Module:
        self.online.start()
        time.sleep(0.3)  # our subscription reaches the module's PUB
        return self

    def send(self, pixels: np.ndarray) -> None:
        self.frames.send_frame(pixels, frame_index=self.index, timestamp_s=self.index / RATE,
                               trigger_timestamp_s=0.0, trial=max(1, self.trial))
        self.index += 1

    def real_frames(self, n_trials: int) -> int:
        """Frames of the simulated microscope for `n_trials` trials; returns how many were sent."""
        sent = 0
        for _ in range(n_trials):
            self.trial += 1
            start = 0.5 + self.trial * PERIOD_S
            self.sim.start_trial(start, "tactile", "left", {"sample": 0.01, "delay": 1.01, "go": 2.01},
                                 trial=self.trial)
            for f in self.sim.frames_until(start + PERIOD_S - 1e-9):
                self.frames.send_frame(f.pixels, frame_index=f.frame_index, timestamp_s=f.timestamp_s,
                                       trigger_timestamp_s=f.trigger_timestamp_s, trial=self.trial)
                sent += 1
        return sent

    def health_until(self, done: Any, timeout_s: float = 20) -> HealthReport:
        """Health reports until `done(report)` holds (the module must stay up meanwhile)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            assert self.online.running, self.online.log_tail()
            message = self.results.recv(timeout_s=0.2)
            if message is not None and message.topic == TOPIC_HEALTH:
                last = HealthReport.from_message(message)
                if done(last):
                    return last
        raise AssertionError(f"no such health report; last: {last}\n{self.online.log_tail()}")

    def stop(self) -> dict[str, Any]:
        self.online.stop()
        assert self.online.exit_status == 0, self.online.log_tail()
        return json.loads((self.session / "online_summary.json").read_text())

    def close(self) -> None:
        self.frames.close()
        self.results.close()
        self.online.stop()

    @property
    def log(self) -> str:
        return (self.session / "online.log").read_text()


@pytest.fixture
def module(tmp_path: Path) -> Iterator[Module]:
    m = Module(tmp_path)
    try:
        yield m.start()
    finally:
        m.close()


def test_bad_headers_are_counted_and_skipped_by_the_live_module(module: Module) -> None:
    for bad, _ in BAD_HEADERS:
        module.frames.send_parts(parts_of(bad))
    sent = module.real_frames(2)
    health = module.health_until(lambda h: h.frames == sent)
    assert health.reference_ready and health.malformed == len(BAD_HEADERS)
    summary = module.stop()
    assert summary["counters"]["errors"] == 0
    refused = summary["frames_receiver"]["malformed"] + summary["counters"]["frames_malformed"]
    assert refused == len(BAD_HEADERS)
    log = module.log
    assert "Traceback" not in log and log.count("skipped") < 10  # rate-limited: not a line per bad frame


def test_stray_frames_of_another_size_do_not_fix_the_frame_size(module: Module) -> None:
    rng = np.random.default_rng(5)
    for _ in range(3):  # e.g. a few frames of a preview scan of another size, before the real ones
        module.send(rng.integers(0, 2000, (SIZE // 2, SIZE), dtype=np.int16))
    sent = module.real_frames(2)
    module.send(rng.integers(0, 2000, (SIZE, SIZE // 2), dtype=np.int16))  # and one more, later
    sent += module.real_frames(1)
    health = module.health_until(lambda h: h.frames == sent)
    assert health.reference_ready and health.n_rois > 0 and health.malformed == 4
    summary = module.stop()
    assert summary["pipeline"]["shape"] == [SIZE, SIZE]
    assert summary["pipeline"]["stats"]["frames_processed"] == sent
    assert "Traceback" not in module.log


def test_blank_first_frames_and_nan_frames_wait_for_usable_frames(module: Module) -> None:
    for _ in range(3 * REFERENCE_FRAMES):  # shutter closed
        module.send(np.zeros((SIZE, SIZE), np.int16))
    nan = np.full((SIZE, SIZE), 100.0, np.float32)
    nan[5, 7] = np.nan
    for _ in range(3 * REFERENCE_FRAMES):
        module.send(nan)
    waiting = module.health_until(lambda h: h.setup is not None and "NaN" in h.setup)
    assert not waiting.reference_ready and "blank" in waiting.setup and waiting.frames == 0
    sent = module.real_frames(2)
    for _ in range(50):  # NaN frames once running: each counted and skipped
        module.send(nan)
    sent += module.real_frames(1)
    health = module.health_until(lambda h: h.frames == sent)
    assert health.reference_ready and health.setup is None and health.n_rois > 0
    assert health.malformed == 3 * REFERENCE_FRAMES + 50  # the NaN frames (blank ones are not malformed)
    summary = module.stop()
    stats = summary["pipeline"]["stats"]
    assert stats["frames_blank_at_setup"] == 3 * REFERENCE_FRAMES
    assert stats["frames_nonfinite"] == 3 * REFERENCE_FRAMES + 50 and summary["counters"]["errors"] == 0
    log = module.log
    assert "Traceback" not in log and log.count("NaN") < 10


# -- the pipeline's setup ------------------------------------------------------------------------------------


def sim_frames(n_trials: int, seed: int = 3) -> list[Any]:
    sim = SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=12, frame_rate_hz=RATE,
                                         seed=seed, frames_per_acquisition=int(PERIOD_S * RATE)))
    frames = []
    for trial in range(1, n_trials + 1):
        start = 0.5 + trial * PERIOD_S
        sim.start_trial(start, "tactile", "left", {"sample": 0.01, "delay": 1.01, "go": 2.01}, trial=trial)
        frames += sim.frames_until(start + PERIOD_S - 1e-9)
    return frames


def frame_header(index: int, shape: tuple[int, int] = (SIZE, SIZE), dtype: str = "<i2") -> FrameHeader:
    return FrameHeader(index, index, index / RATE, 0.0, 1, 0, 0, shape[0], shape[1], dtype, time.time_ns())


def test_a_reference_without_cells_waits_for_frames_with_cells() -> None:
    pipeline = OnlinePipeline(CONFIG)
    flat = np.full((SIZE, SIZE), 500, np.int16)
    flat[0, 0] = 501  # not constant, but no cell anywhere (a uniform field: shutter half open, no sample)
    for i in range(3 * REFERENCE_FRAMES):
        assert not pipeline.process_frame(frame_header(i), flat).initialised
    assert not pipeline.ready and "no ROI was found" in (pipeline.setup_status or "")
    outs = [pipeline.process_frame(frame_header(100 + i), f.pixels) for i, f in enumerate(sim_frames(1))]
    assert pipeline.ready and pipeline.setup_status is None and sum(o.initialised for o in outs) == 1
    assert pipeline.stats.frames_processed == len(outs)


def test_setup_holds_a_bounded_number_of_frames_whatever_arrives() -> None:
    pipeline = OnlinePipeline(CONFIG)
    rng = np.random.default_rng(0)
    for i in range(200):  # every frame of a new size: none may be kept for long
        shape = (8 + i, 8)
        pipeline.process_frame(frame_header(i, shape), rng.integers(0, 100, shape, dtype=np.int16))
    assert pipeline.setup_frames_held <= 4 * REFERENCE_FRAMES and not pipeline.ready
    frames = sim_frames(1)
    for i, f in enumerate(frames):
        pipeline.process_frame(frame_header(1000 + i), f.pixels)
    assert pipeline.ready and pipeline.shape == (SIZE, SIZE) and pipeline.setup_frames_held == 0
    assert pipeline.stats.frames_processed == len(frames)


def test_frames_of_another_size_than_the_given_rois_are_skipped_then_refused() -> None:
    sim = SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=12, frame_rate_hz=RATE, seed=3))
    rois = RoiSet.from_masks((SIZE, SIZE), sim.masks)
    pipeline = OnlinePipeline(CONFIG, rois=rois)
    small = np.ones((SIZE // 2, SIZE // 2), np.int16)
    with pytest.raises(MalformedInput, match=f"the ROIs are for {SIZE}x{SIZE}"):
        pipeline.process_frame(frame_header(0, small.shape), small)
    frames = sim_frames(1)
    for i, f in enumerate(frames):
        pipeline.process_frame(frame_header(1 + i), f.pixels)
    assert pipeline.ready and pipeline.stats.frames_processed == len(frames)
    wrong = OnlinePipeline(CONFIG, rois=rois)
    with pytest.raises(PipelineError, match=f"ROIs are for {SIZE}x{SIZE} frames, frames are 32x32"):
        for i in range(1000):  # a whole stream of another size: the wrong ROIs, said in one sentence
            try:
                wrong.process_frame(frame_header(i, small.shape), small)
            except MalformedInput:
                continue


@pytest.mark.parametrize("size", [32, 128])
def test_a_flat_field_has_no_rois(size: int) -> None:
    for level in (0.0, 1.0, 500.0, -3.0):
        for radius in (1.5, 2.0, 5.0):
            assert detect_rois(np.full((size, size), level), 500, radius).n == 0, (level, radius)
    cells = np.mean([f.pixels for f in sim_frames(1)[:REFERENCE_FRAMES]], axis=0)
    assert detect_rois(cells, 500, 2.0).n >= 6  # and cells still count


def test_replay_skips_nan_frames_and_processes_the_rest(tmp_path: Path) -> None:
    frames = sim_frames(2)
    nan_at = {3, 17, 40}
    for trial in (1, 2):
        own = [(k, f) for k, f in enumerate(frames) if f.trial == trial]
        with ScanImageWriter.for_loop_trial(tmp_path / "imaging", "sim", trial, height=SIZE, width=SIZE,
                                            frame_rate_hz=RATE, template="compact", dtype=np.float32,
                                            first_frame_number=own[0][1].frame_number + 1,
                                            acq_trigger_timestamp_s=0.0) as writer:
            for k, f in own:
                pixels = f.pixels.astype(np.float32)
                if k in nan_at:
                    pixels[9, 9] = np.nan
                writer.write_frame(pixels, f.timestamp_s)
    summary = replay(tmp_path / "imaging", out=tmp_path / "out", config=CONFIG)
    assert summary.frames == len(frames) and summary.frames_skipped == len(nan_at)
    stats = json.loads((tmp_path / "out" / "online_summary.json").read_text())["pipeline"]["stats"]
    assert stats["frames_processed"] == len(frames) - len(nan_at) and stats["frames_nonfinite"] == len(nan_at)


def test_a_frame_of_a_far_future_trial_neither_drops_nor_completes_the_running_trials() -> None:
    pipeline = OnlinePipeline(CONFIG)
    frames = sim_frames(3)
    per_trial = {t: [f for f in frames if f.trial == t] for t in (1, 2, 3)}

    def send(f: Any, seq: int, trial: int | None = None) -> list[Any]:
        h = FrameHeader(seq, f.frame_index, f.timestamp_s, f.trigger_timestamp_s, trial or f.trial, 0, 0,
                        SIZE, SIZE, "<i2", time.time_ns())
        return pipeline.process_frame(h, f.pixels).trials

    done = [d for i, f in enumerate(per_trial[1] + per_trial[2][:10]) for d in send(f, i)]
    record = {"trial": 2, "context": "tactile", "side": "left", "outcome": "hit", "licked_side": "left"}
    done += pipeline.on_trial_end(record).trials
    with pytest.raises(MalformedInput, match="trial 1000000000000"):
        send(per_trial[2][10], 100, trial=10**12)  # a corrupt trial number
    done += [d for i, f in enumerate(per_trial[2][10:] + per_trial[3][:1]) for d in send(f, 200 + i)]
    assert [d.result.trial for d in done] == [2] and done[0].record["n_frames"] == len(per_trial[2])


def test_a_receiver_keeps_bounded_state_for_senders_that_rename_themselves() -> None:
    endpoint = free_loopback_endpoint()
    n = 3 * MAX_STREAMS
    with LosslessReceiver(endpoint) as receiver, LosslessSender(endpoint) as sender:
        for i in range(n):  # well-formed, but a new sender name and topic in every message
            topic = b"frame" if i % 2 else f"t{i}".encode()
            sender.send_parts([topic, json.dumps(good_header(src=f"scope-{i}")).encode(), PIXELS])
        for _ in range(n):
            assert receiver.recv(timeout_s=5) is not None
        report = receiver.stats.report()
        assert report["received"] == n and report["streams"] <= MAX_STREAMS
        assert len(report["by_topic"]) <= MAX_STREAMS + 1 and sum(report["by_topic"].values()) == n


def test_state_events_of_far_future_trials_keep_nothing() -> None:
    pipeline = OnlinePipeline(CONFIG)
    for i, f in enumerate(sim_frames(1)):
        pipeline.process_frame(frame_header(i), f.pixels)
    assert pipeline.trials is not None
    kept = len(pipeline.trials)
    for i in range(500):  # each with a trial number no frame will ever reach
        with pytest.raises(MalformedInput, match="past the latest trial"):
            pipeline.on_state({"trial": 10**9 + i, "state": "DelayPeriod", "time_s": 1.0})
    pipeline.on_state({"trial": 2, "state": "DelayPeriod", "time_s": 1.0})  # the next trial's: kept
    assert len(pipeline.trials) == kept + 1
