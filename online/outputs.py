"""What the pipeline hands out: traces per frame, one decoding per finished trial, its counters, and the
records they become (`TraceFrame`, `DecoderResult` and the decoder.jsonl line, `RoiSnapshot`).

The stages compute; this module only shapes their results for publishing and for disk, so a field of
a published record is named in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from online.alignment import TrialEpochs
from online.messages import DecoderResult, RoiSnapshot, TraceFrame
from online.registration import Shift
from online.rois import RoiSet
from online.trial_stage import SIDES, Prospective, TrialOutcome
from online.wire import FrameHeader


@dataclass
class TrialDecoding:
    """What one trial's end produced: the published result, the decoder.jsonl line, whether CDs changed."""

    result: DecoderResult
    record: dict[str, Any]
    cds_changed: bool = False


@dataclass
class PipelineOutput:
    traces: list[TraceFrame] = field(default_factory=list)
    headers: list[FrameHeader] = field(default_factory=list)
    """The frame header of each trace (same order)."""
    trials: list[TrialDecoding] = field(default_factory=list)
    initialised: bool = False
    """True on the call that initialised the pipeline (save the ROIs and reference now)."""

    def extend(self, other: PipelineOutput) -> None:
        self.traces += other.traces
        self.headers += other.headers
        self.trials += other.trials
        self.initialised = self.initialised or other.initialised

    def add_trace(self, header: FrameHeader, time_s: float | None, trial: int, shift: Shift,
                  dff: np.ndarray, deconvolved: np.ndarray | None = None) -> None:
        """One processed frame as its TraceFrame, with the header it came with."""
        self.traces.append(TraceFrame(header.frame_index, trial, header.timestamp_s, time_s, float(shift.dy),
                                      float(shift.dx), float(shift.correlation),
                                      dff.astype(np.float32, copy=False),
                                      None if deconvolved is None else deconvolved.astype(np.float32,
                                                                                            copy=False)))
        self.headers.append(header)


def trial_decoding(outcome: TrialOutcome, session: str, roi_set_id: str,
                   closed_loop: dict[str, Any] | None) -> TrialDecoding:
    """A finished trial's DecoderResult (published) and decoder.jsonl line (the result plus the details)."""
    record = outcome.record
    side, outcome_name, licked = record.get("side"), record.get("outcome"), record.get("licked_side")
    decode = outcome.decode
    delay = outcome.similarity.get("delay", {})
    result = DecoderResult(
        trial=outcome.trial, context=outcome.context, actual_side=side if side in SIDES else None,
        licked_side=licked if licked in SIDES else None,
        outcome=outcome_name if isinstance(outcome_name, str) else None,
        decoded_side=decode.side if decode is not None else None,
        confidence=round(decode.confidence, 6) if decode is not None else None,
        projection=float(decode.projection) if decode is not None else None,
        boundary=outcome.boundary, accuracy=dict(outcome.accuracy), trials_per_side=outcome.trials_per_side,
        cd_similarity={k: v["dot"] for k, v in delay.items()}, closed_loop=closed_loop,
        block=outcome.block, gated=outcome.gated, cd_ceiling=outcome.ceiling.get("delay"),
        cd_similarity_ceiling={k: v["ceiling"] for k, v in delay.items()})
    details: dict[str, Any] = {"n_frames": outcome.n_frames,
                               "epochs": epochs_dict(outcome.epochs) if outcome.epochs is not None else None}
    if outcome.decode_skipped is not None:
        details["decode_skipped"] = outcome.decode_skipped
    if outcome.training_skipped is not None:
        details["training_skipped"] = outcome.training_skipped
    details["trained_epochs"] = outcome.trained_epochs
    line = {**asdict(result), "session": session, "roi_set_id": roi_set_id, "correct": outcome.correct,
            "cd_similarity_by_epoch": outcome.similarity, "cd_ceiling_by_epoch": outcome.ceiling,
            "prospective": _prospective(outcome.prospective),
            "prospective_gated": _prospective(outcome.prospective_gated), **details}
    return TrialDecoding(result, line, outcome.cds_changed)


def _prospective(counts: dict[str, Prospective]) -> dict[str, dict[str, Any]]:
    """Per block: held-out decodes of its correct trials, how many were right, the balanced accuracy."""
    out = {}
    for key, p in counts.items():
        balanced = p.balanced_accuracy
        out[key] = {"decoded": p.decoded, "correct": p.correct,
                    "by_side": {s: list(v) for s, v in p.by_side.items()},
                    "accuracy": round(balanced, 4) if balanced is not None else None}
    return out


def roi_snapshot(reference: np.ndarray, rois: RoiSet, roi_set_id: str) -> RoiSnapshot:
    """The reference and ROI outlines for displays."""
    points, offsets = rois.outline_arrays()
    return RoiSnapshot(reference.astype(np.float32), rois.centroids.astype(np.float32), points, offsets,
                       roi_set_id)


def epochs_dict(epochs: TrialEpochs) -> dict[str, float | None]:
    return {"sample_s": epochs.sample_s, "delay_s": epochs.delay_s, "go_s": epochs.go_s,
            "response_s": epochs.response_s}
