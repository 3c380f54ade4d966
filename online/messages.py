"""What the online module publishes on `network.online_results`, as typed records.

The online process builds them, the GUI and the rig's data store read them; both sides go through
these classes so the field names live in one place. Arrays travel as raw buffers (online/wire.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from online.wire import TOPIC_DECODER, TOPIC_HEALTH, TOPIC_ROIS, TOPIC_TRACES, Message, Sender, WireError

Parts = list[Any]


@dataclass(frozen=True)
class TraceFrame:
    """One processed frame: its registration shift, every ROI's dF/F and, when online deconvolution runs,
    every ROI's deconvolved activity (a second array; a message without it reads as None)."""

    frame_index: int
    trial: int
    timestamp_s: float  # imaging clock
    time_in_trial_s: float | None  # relative to the trial-start trigger (None before the first trigger)
    shift_dy: float
    shift_dx: float
    correlation: float
    dff: np.ndarray  # float32 (n_rois,)
    deconvolved: np.ndarray | None = None  # float32 (n_rois,): this frame's spike estimate per ROI

    def encode(self, sender: Sender) -> Parts:
        fields = {k: v for k, v in asdict(self).items() if k not in ("dff", "deconvolved")}
        arrays = [np.ascontiguousarray(self.dff, dtype=np.float32)]
        if self.deconvolved is not None:
            arrays.append(np.ascontiguousarray(self.deconvolved, dtype=np.float32))
        return sender.message(TOPIC_TRACES, fields, arrays)

    @classmethod
    def from_message(cls, message: Message) -> TraceFrame:
        _expect(message, TOPIC_TRACES, 1, 2)
        f = message.fields
        arrays = message.arrays
        if len(arrays) == 2 and arrays[1].shape != arrays[0].shape:
            raise WireError("malformed traces message: deconvolved and dF/F arrays differ in shape")
        try:
            return cls(int(f["frame_index"]), int(f["trial"]), float(f["timestamp_s"]),
                       None if f["time_in_trial_s"] is None else float(f["time_in_trial_s"]),
                       float(f["shift_dy"]), float(f["shift_dx"]), float(f["correlation"]), arrays[0],
                       arrays[1] if len(arrays) == 2 else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed traces message: {exc}") from exc


@dataclass(frozen=True)
class RoiSnapshot:
    """The reference image and ROI outlines, re-sent every few seconds so a display that joins late
    (or reconnects) can draw them."""

    reference: np.ndarray  # float32 (H, W)
    centroids: np.ndarray  # float32 (n, 2) as (y, x)
    outline_points: np.ndarray  # float32 (m, 2) as (y, x), all outlines concatenated
    outline_offsets: np.ndarray  # int32 (n + 1,): ROI i is outline_points[offsets[i]:offsets[i+1]]
    roi_set_id: str = ""

    @property
    def n_rois(self) -> int:
        return int(self.centroids.shape[0])

    def outline(self, i: int) -> np.ndarray:
        return self.outline_points[self.outline_offsets[i]:self.outline_offsets[i + 1]]

    def encode(self, sender: Sender) -> Parts:
        arrays = [np.ascontiguousarray(self.reference, dtype=np.float32),
                  np.ascontiguousarray(self.centroids, dtype=np.float32),
                  np.ascontiguousarray(self.outline_points, dtype=np.float32),
                  np.ascontiguousarray(self.outline_offsets, dtype=np.int32)]
        return sender.message(TOPIC_ROIS, {"n_rois": self.n_rois, "roi_set_id": self.roi_set_id}, arrays)

    @classmethod
    def from_message(cls, message: Message) -> RoiSnapshot:
        _expect(message, TOPIC_ROIS, 4)
        reference, centroids, points, offsets = message.arrays
        if offsets.shape[0] != centroids.shape[0] + 1:
            raise WireError("malformed rois message: outline offsets do not match the ROI count")
        return cls(reference, centroids, points, offsets, str(message.fields.get("roi_set_id", "")))


@dataclass(frozen=True)
class DecoderResult:
    """One trial's preparatory decoding, with the running state of its context's decoder."""

    trial: int
    context: str
    actual_side: str | None  # the correct side of the trial
    licked_side: str | None
    outcome: str | None
    decoded_side: str | None  # None while the decoder is not ready
    confidence: float | None  # 0..1
    projection: float | None  # delay-window activity projected on the delay CD
    boundary: float | None
    accuracy: dict[str, float | None] = field(default_factory=dict)  # balanced, cross-validated, per block
    trials_per_side: dict[str, int] = field(default_factory=dict)
    cd_similarity: dict[str, float] = field(default_factory=dict)
    """"session/block" -> delay-CD similarity of this trial's block with that block, from halves of equal
    trial counts (its ceiling under the same key in `cd_similarity_ceiling`)."""
    closed_loop: dict[str, Any] | None = None  # the decision sent into the trial, if any
    block: str | None = None  # the trial's block (1, 2, 1', ...; None: decoders per context)
    gated: bool = False  # decoder-gated: decoded, not trained on
    cd_ceiling: float | None = None  # this block's delay-CD split-half ceiling
    cd_similarity_ceiling: dict[str, float] = field(default_factory=dict)
    """"session/block" -> sqrt(ceiling of this block x ceiling of that block) at the counts compared."""

    def encode(self, sender: Sender) -> Parts:
        return sender.event(TOPIC_DECODER, asdict(self))

    @classmethod
    def from_message(cls, message: Message) -> DecoderResult:
        _expect(message, TOPIC_DECODER, 0)
        try:
            return cls(**message.fields["data"])
        except (KeyError, TypeError) as exc:
            raise WireError(f"malformed decoder message: {exc}") from exc


@dataclass(frozen=True)
class HealthReport:
    """The online module's view of its input and its own speed, about once a second."""

    frames: int
    frame_rate_hz: float
    gaps: int
    duplicates: int
    out_of_order: int
    malformed: int
    latency_p50_ms: float | None  # frame sent -> processed
    latency_p99_ms: float | None
    processing_p50_ms: float | None  # per-frame compute
    processing_p99_ms: float | None
    n_rois: int
    reference_ready: bool
    closed_loop: bool = False
    setup: str | None = None  # what setup waits for (blank frames, no ROI found, ...); None once ready

    def encode(self, sender: Sender) -> Parts:
        return sender.event(TOPIC_HEALTH, {"kind": "online", **asdict(self)})

    @classmethod
    def from_message(cls, message: Message) -> HealthReport:
        _expect(message, TOPIC_HEALTH, 0)
        data = dict(message.fields.get("data", {}))
        data.pop("kind", None)
        try:
            return cls(**data)
        except TypeError as exc:
            raise WireError(f"malformed health message: {exc}") from exc


def _expect(message: Message, topic: bytes, n_arrays: int, most_arrays: int | None = None) -> None:
    """The message's topic is `topic` and it has n_arrays (up to most_arrays, when given) arrays."""
    if message.topic != topic:
        raise WireError(f"expected a {topic.decode()} message, got {message.topic!r}")
    most = n_arrays if most_arrays is None else most_arrays
    if not n_arrays <= len(message.arrays) <= most:
        expected = str(n_arrays) if most == n_arrays else f"{n_arrays} to {most}"
        raise WireError(f"{topic.decode()} message has {len(message.arrays)} arrays, expected {expected}")
