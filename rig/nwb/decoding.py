"""The online decoding of a session as NWB: a `decoding` processing module with the per-trial decoder
outputs, the coding directions stored for the session, and the closed-loop decisions with their latency.

Times are on the Bpod session clock: the decisions' frame and landing times, which the online module
keeps on the trial clock (seconds from the trial-start trigger), are shifted by their trial's start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from hdmf.common import DynamicTable, VectorData, VectorIndex
from pynwb import NWBFile

DECODER_COLUMNS = (
    ("trial", "trial number", int), ("context", "task context", str),
    ("actual_side", "the side the cue instructed", str), ("licked_side", "the side licked", str),
    ("decoded_side", "side decoded from delay activity ('' when the decoder was not ready)", str),
    ("confidence", "decoder confidence (NaN: none)", float), ("projection", "projection on the CD", float),
    ("boundary", "decision boundary on the CD", float), ("correct", "the trial was a hit", bool),
    ("n_frames", "imaging frames of the trial", int), ("roi_set_id", "ROI set decoded over", str),
    ("block", "visit to a context (0 when not recorded)", int), ("block_label", "label of the block", str),
)
DECISION_COLUMNS = (
    ("trial", "trial number", int), ("context", "task context", str), ("side", "side decided", str),
    ("bpod_event", "the event raised in the trial", str), ("confidence", "decoder confidence", float),
    ("projection", "projection on the CD", float), ("boundary", "decision boundary", float),
    ("frame_index", "the decision frame", int), ("window_frames", "frames in the decoding window", int),
    ("output", "how the decision was sent", str), ("error", "why sending failed ('' when sent)", str),
    ("host_latency_ms", "decision frame's host time to the byte written / request sent (ms)", float),
    ("frame_end_to_landing_ms", "decision frame's end to the event in the trial, trial clock (ms)", float),
)


def _value(value: Any, kind: type) -> Any:
    if kind is float:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if kind is int:
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0
    if kind is bool:
        return bool(value)
    return "" if value is None else str(value)


def _table(name: str, description: str, rows: Sequence[Mapping[str, Any]],
           columns: Sequence[tuple[str, str, type]]) -> DynamicTable:
    return DynamicTable(name=name, description=description, columns=[
        VectorData(name=key, description=what, data=[_value(r.get(key), kind) for r in rows])
        for key, what, kind in columns])


def _trials_region(table: DynamicTable, nwb: NWBFile, trials: Sequence[int]) -> None:
    if nwb.trials is None:
        return
    row_of = {int(n): i for i, n in enumerate(nwb.trials["trial_number"].data)}
    if all(t in row_of for t in trials):
        table.add_column(name="trials_row", description="the trial's row of the trials table",
                         data=[row_of[t] for t in trials], table=nwb.trials)


def add_decoding(nwb: NWBFile, decoder: Sequence[Mapping[str, Any]], decisions: Sequence[Mapping[str, Any]],
                 coding_directions: Sequence[Mapping[str, Any]], trial_starts: Mapping[int, float]) -> None:
    """The module, with the tables the session has (none when the online module did not run)."""
    if not decoder and not decisions and not coding_directions:
        return
    module = nwb.create_processing_module("decoding",
                                          "online preparatory decoding of upcoming lick direction")
    if decoder:
        table = _table("TrialDecoding", "decoder output at each trial's end (online module)", decoder,
                       DECODER_COLUMNS)
        _trials_region(table, nwb, [int(r.get("trial", 0)) for r in decoder])
        module.add(table)
    if coding_directions:
        module.add(_coding_directions(coding_directions))
    sent = [d for d in decisions if d.get("kind") in ("sent", "failed")]
    if sent:
        module.add(_decisions(nwb, sent, decisions, trial_starts))


def _coding_directions(entries: Sequence[Mapping[str, Any]]) -> DynamicTable:
    """One row per stored CD: context, block, epoch, method, counts, boundary and the weights."""
    vectors = [[float(x) for x in e.get("vector", [])] for e in entries]
    boundary = [e.get("boundary") if isinstance(e.get("boundary"), Mapping) else {} for e in entries]
    weights = VectorData(name="vector", description="unit CD weights over the session's ROIs (plane order)",
                         data=[x for v in vectors for x in v])
    columns = [
        VectorData(name="context", description="context", data=[str(e.get("context", "")) for e in entries]),
        VectorData(name="block", description="block (0 when not recorded)",
                   data=[_value(e.get("block"), int) for e in entries]),
        VectorData(name="block_label", description="block label",
                   data=[_value(e.get("block_label"), str) for e in entries]),
        VectorData(name="epoch", description="epoch of the CD",
                   data=[str(e.get("epoch", "")) for e in entries]),
        VectorData(name="method", description="CD method", data=[str(e.get("method", "")) for e in entries]),
        VectorData(name="n_right", description="right trials trained on",
                   data=[_value(e.get("n_right"), int) for e in entries]),
        VectorData(name="n_left", description="left trials trained on",
                   data=[_value(e.get("n_left"), int) for e in entries]),
        VectorData(name="roi_set_id", description="ROI set", data=[_value(e.get("roi_set_id"), str)
                                                                     for e in entries]),
        VectorData(name="boundary", description="decision boundary on the CD",
                   data=[_value(b.get("value"), float) for b in boundary]),
        *[VectorData(name=f"boundary_{key}", description=f"{key} of the boundary's classes (projections)",
                     data=[_value(b.get(key), float) for b in boundary])
          for key in ("mu_right", "mu_left", "var_right", "var_left")],
        weights,
        VectorIndex(name="vector_index", data=np.cumsum([len(v) for v in vectors]).tolist(), target=weights),
    ]
    return DynamicTable(name="CodingDirections", columns=columns,
                        description="coding directions stored for this session (per context / block)")


def _decisions(nwb: NWBFile, sent: Sequence[Mapping[str, Any]], log: Sequence[Mapping[str, Any]],
               trial_starts: Mapping[int, float]) -> DynamicTable:
    landed = {int(d["trial"]): d for d in log
              if d.get("kind") == "landed" and isinstance(d.get("trial"), int)}
    rows = [{**d, **{k: v for k, v in landed.get(int(d.get("trial", 0)), {}).items() if k != "kind"}}
            for d in sent]
    table = _table("ClosedLoopDecisions", "closed-loop decisions sent into trials, with their latency", rows,
                   DECISION_COLUMNS)

    def session_time(row: Mapping[str, Any], key: str) -> float:
        start = trial_starts.get(int(row.get("trial", 0)))
        value = row.get(key)
        return start + float(value) if start is not None and isinstance(value, int | float) else math.nan

    for key, what in (("frame_start_s", "decision frame's start"), ("frame_end_s", "decision frame's end"),
                      ("landed_bpod_s", "the event's arrival in the trial")):
        table.add_column(name=key.replace("_bpod_s", "_time").replace("_s", "_time"),
                         description=f"{what} (s, Bpod session clock; NaN: none)",
                         data=[session_time(r, key) for r in rows])
    _trials_region(table, nwb, [int(r.get("trial", 0)) for r in rows])
    return table


