"""The online module's result records survive the wire and refuse malformed messages."""

from __future__ import annotations

import numpy as np
import pytest

from online.messages import DecoderResult, HealthReport, RoiSnapshot, TraceFrame
from online.wire import TOPIC_TRACES, Sender, WireError, decode_message


def roundtrip(parts: list) -> object:
    return decode_message([bytes(memoryview(p)) if not isinstance(p, bytes) else p for p in parts])


def test_trace_frame_round_trip() -> None:
    sender = Sender("test")
    dff = np.arange(5, dtype=np.float32) / 10
    frame = TraceFrame(12, 3, 0.4, 0.35, -1.25, 0.5, 0.93, dff)
    back = TraceFrame.from_message(roundtrip(frame.encode(sender)))
    assert back.frame_index == 12 and back.time_in_trial_s == 0.35 and back.shift_dy == -1.25
    np.testing.assert_array_equal(back.dff, dff)


def test_roi_snapshot_round_trip_and_outlines() -> None:
    sender = Sender("test")
    outlines = [np.array([[0, 0], [0, 1], [1, 1]], np.float32), np.array([[5, 5], [6, 6]], np.float32)]
    snapshot = RoiSnapshot(np.ones((4, 6), np.float32), np.array([[0.5, 0.5], [5.5, 5.5]], np.float32),
                           np.concatenate(outlines), np.array([0, 3, 5], np.int32), "s2p-plane0")
    back = RoiSnapshot.from_message(roundtrip(snapshot.encode(sender)))
    assert back.n_rois == 2 and back.roi_set_id == "s2p-plane0" and back.reference.shape == (4, 6)
    np.testing.assert_array_equal(back.outline(1), outlines[1])


def test_decoder_and_health_round_trip() -> None:
    sender = Sender("test")
    result = DecoderResult(7, "tactile", "left", "left", "hit", "left", 0.97, -1.3, 0.1,
                           {"tactile": 0.92}, {"left": 12, "right": 11}, {"tactile@2026-11-01": 0.95})
    assert DecoderResult.from_message(roundtrip(result.encode(sender))) == result
    health = HealthReport(300, 30.0, 0, 0, 0, 1, 0.6, 1.4, 0.8, 1.1, 200, True)
    assert HealthReport.from_message(roundtrip(health.encode(sender))) == health


def test_malformed_results_are_refused() -> None:
    sender = Sender("test")
    with pytest.raises(WireError, match="traces message has 0 arrays"):
        TraceFrame.from_message(roundtrip(sender.message(TOPIC_TRACES, {"frame_index": 1})))
    with pytest.raises(WireError, match="malformed traces message"):
        TraceFrame.from_message(roundtrip(sender.message(TOPIC_TRACES, {"frame_index": 1},
                                                         [np.zeros(3, np.float32)])))
    with pytest.raises(WireError, match="expected a decoder message"):
        DecoderResult.from_message(roundtrip(sender.event(b"health", {})))
