"""ScanImage frames in the wire format: a followed folder (`follow --publish`) and the frame-stream adapter
(`adapt`), end to end over real sockets and processes; back-pressure and malformed input."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from hardware.frames.publisher import FramePublisher
from hardware.scanimage.publish import StreamAdapter
from online.transport import LosslessReceiver
from online.wire import FrameHeader, Message
from rig.free_endpoints import free_loopback_endpoint as free_endpoint
from tests.scanimage_frames import encode_scanimage_frame

REPO = Path(__file__).resolve().parents[1]

# ScanImage's side of the folder, in its own process: loop mode, one file per trial, two channels.
WRITER_SCRIPT = r"""
import json, sys, time
import numpy as np
from hardware.scanimage.writer import ScanImageWriter

cfg = json.loads(sys.argv[1])
H, W = cfg["height"], cfg["width"]
for trial in range(1, cfg["trials"] + 1):
    common = dict(height=H, width=W, channels=2, frame_rate_hz=30.0, template="compact")
    w = ScanImageWriter.for_loop_trial(cfg["folder"], "acq", trial, acq_trigger_timestamp_s=0.0, **common)
    with w:
        for t in range(cfg["frames"]):
            frame = np.stack([np.full((H, W), trial * 100 + t * 2 + c, np.int16) for c in range(2)])
            frame[0, 0, 0] = -trial  # signed pixels survive
            w.write_frame(frame, t / 30.0)
            time.sleep(0.01)
    time.sleep(0.05)
"""


def receive_all(receiver: LosslessReceiver, done: Callable[[], bool], quiet_s: float = 0.2) -> list[Message]:
    """Everything the receiver gets until `done()` and then `quiet_s` without a message."""
    messages = []
    while True:
        message = receiver.recv(0.05 if not done() else quiet_s)
        if message is not None:
            messages.append(message)
        elif done():
            return messages


def test_follow_publish_sends_every_page_once_in_order(tmp_path: Path) -> None:
    endpoint = free_endpoint()
    cfg = {"folder": str(tmp_path), "height": 8, "width": 12, "trials": 3, "frames": 6}
    with LosslessReceiver(endpoint) as receiver:
        writer = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, json.dumps(cfg)], cwd=REPO,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not any(tmp_path.glob("*.tif")):  # then the follower's idle timeout can be short
            assert time.monotonic() < deadline and writer.poll() is None, "the writer made no file"
            time.sleep(0.01)
        follower = subprocess.Popen(
            [sys.executable, "-m", "hardware.scanimage", "follow", str(tmp_path), "--publish", endpoint,
             "--idle-timeout", "1", "--poll", "0.01"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            messages = receive_all(receiver, lambda: follower.poll() is not None)
            assert writer.wait(timeout=30) == 0, writer.stderr.read() if writer.stderr else ""
            _, report = follower.communicate(timeout=30)
        finally:
            for proc in (follower, writer):
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()
        assert follower.returncode == 0, report
        assert receiver.stats.gaps == 0 and receiver.stats.malformed == 0
    frames = [FrameHeader.from_message(m) for m in messages]
    expected = [(trial, t, c) for trial in (1, 2, 3) for t in range(6) for c in range(2)]
    assert [(f.trial, f.frame_index, f.channel) for f in frames] == expected
    assert [f.seq for f in frames] == list(range(len(expected)))
    for frame, message, (trial, t, c) in zip(frames, messages, expected, strict=True):
        pixels = message.arrays[0]
        assert pixels.dtype == np.int16 and pixels.shape == (8, 12)
        assert pixels[0, 1] == trial * 100 + t * 2 + c
        assert pixels[0, 0] == (-trial if c == 0 else trial * 100 + t * 2 + c)
        assert frame.timestamp_s == pytest.approx(t / 30.0, abs=1e-9)
        assert frame.trigger_timestamp_s == 0.0 and frame.plane == 0
    assert "followed 36 page(s) in 3 file(s)" in report and '"lossless_sent": 36' in report


def test_lossless_publisher_waits_for_a_receiver_and_stopping_never_hangs() -> None:
    endpoint = free_endpoint()  # nobody binds it
    stop = threading.Event()
    pixels = np.zeros((4, 4), np.int16)
    with FramePublisher.open(endpoint, stop=stop, send_timeout_s=0.05) as publisher:
        threading.Timer(0.4, stop.set).start()
        started = time.monotonic()
        results = [publisher.publish(pixels, frame_index=i, timestamp_s=i / 30, trigger_timestamp_s=0.0,
                                     trial=1) for i in range(200)]
        elapsed = time.monotonic() - started
        # ZeroMQ queues up to its high-water mark for a connection that is not there yet; then the
        # publisher waits (nothing dropped) until stop, after which the rest are counted, not waited for.
        delivered = sum(results)
        assert 0 < delivered < 200 and results == [True] * delivered + [False] * (200 - delivered)
        assert publisher.lossless.undelivered == 200 - delivered and publisher.lossless.send_timeouts >= 2
        assert 0.35 < elapsed < 2.0


class _Recorder:
    """Stands in for a FramePublisher: keeps what would be published."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def publish(self, pixels: np.ndarray, **fields: Any) -> bool:
        self.frames.append({"pixels": np.array(pixels), **fields})
        return True


def test_stream_adapter_core_splits_channels_counts_gaps_restarts_and_malformed() -> None:
    recorder = _Recorder()
    adapter = StreamAdapter("tcp://127.0.0.1:1", recorder)  # type: ignore[arg-type]
    two = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 5
    adapter.handle(encode_scanimage_frame(two, 0.10, 11))
    adapter.handle(encode_scanimage_frame(two + 1, 0.20, 12))
    adapter.handle([b"\x00" * 40, b"\x00" * 4])  # zero-size header fields
    adapter.handle(encode_scanimage_frame(two + 2, 0.40, 14))  # frame 13 never came
    adapter.handle([encode_scanimage_frame(two, 0.0, 1)[0]])  # header only: payload missing
    adapter.handle(encode_scanimage_frame(two + 3, 0.0, 1))  # restarted: a new acquisition
    stats = adapter.stats
    assert (stats.messages, stats.malformed, stats.frame_gaps, stats.acquisitions) == (6, 2, 1, 2)
    got = [(f["trial"], f["frame_index"], f["channel"], f["timestamp_s"]) for f in recorder.frames]
    assert got == [(1, 0, 0, 0.1), (1, 0, 1, 0.1), (1, 1, 0, 0.2), (1, 1, 1, 0.2), (1, 3, 0, 0.4),
                   (1, 3, 1, 0.4), (2, 0, 0, 0.0), (2, 0, 1, 0.0)]  # fmt: skip
    np.testing.assert_array_equal(recorder.frames[1]["pixels"], two[1])
    np.testing.assert_array_equal(recorder.frames[4]["pixels"], two[0] + 2)
    assert all(f["trigger_timestamp_s"] is None and f["plane"] == 0 for f in recorder.frames)


def test_adapt_cli_republishes_the_scanimage_stream_and_reports_malformed() -> None:
    source, target = free_endpoint(), free_endpoint()
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(source)
    pixels = np.arange(2 * 6 * 5, dtype=np.int16).reshape(2, 6, 5) - 30
    try:
        with LosslessReceiver(target) as receiver:
            adapter = subprocess.Popen(
                [sys.executable, "-m", "hardware.scanimage", "adapt", "--from", source, "--to", target,
                 "--idle-timeout", "0.5"],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                # Slow joiner: announce frames (acquisition 1) until the adapter has subscribed.
                number, first = 1, None
                deadline = time.monotonic() + 20
                while first is None:
                    assert time.monotonic() < deadline and adapter.poll() is None, "adapter never subscribed"
                    pub.send_multipart(encode_scanimage_frame(pixels[:1], 0.0, number))
                    number += 1
                    first = receiver.recv(0.05)
                # Acquisition 2: frames 1..4 with frame 3 lost upstream, two channels, and malformed messages.
                for parts in [encode_scanimage_frame(pixels, 1 / 30, 1), [b"not a header"],
                              encode_scanimage_frame(pixels + 1, 2 / 30, 2), [b"\x00" * 40, b"\x01\x02"],
                              encode_scanimage_frame(pixels + 3, 4 / 30, 4)]:
                    pub.send_multipart(parts)
                    time.sleep(0.01)
                messages = receive_all(receiver, lambda: adapter.poll() is not None)
                _, report = adapter.communicate(timeout=20)
            finally:
                if adapter.poll() is None:
                    adapter.kill()
                    adapter.communicate()
            assert adapter.returncode == 0, report
            assert receiver.stats.gaps == 0
    finally:
        pub.close()
        context.term()
    second = [m for m in messages if m.header["trial"] == 2]
    frames = [FrameHeader.from_message(m) for m in second]
    assert [(f.frame_index, f.channel) for f in frames] == [(0, 0), (0, 1), (1, 0), (1, 1), (3, 0), (3, 1)]
    assert [f.timestamp_s for f in frames[::2]] == pytest.approx([1 / 30, 2 / 30, 4 / 30])
    np.testing.assert_array_equal(second[5].arrays[0], pixels[1] + 3)
    np.testing.assert_array_equal(second[2].arrays[0], pixels[0] + 1)
    stats = json.loads(report.split("adapted frame stream: ", 1)[1])
    assert stats["malformed"] == 2 and stats["frame_gaps"] == 1 and stats["acquisitions"] == 2
    assert stats["stopped"] == "idle timeout" and stats["lossless_sent"] == len(messages) + 1  # + the first
