"""What a session did, from its files alone: trials, outcomes, Perf100 per context, context switches,
the dead time between trials measured from the Bpod's own timestamps, and the times a child process
(online module, frame source, monitor) died: the online module's gaps with their frames lost and trials
affected, from session.json; and how many of its ROIs were found again in earlier sessions
(roi_matches.json)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from online.store import JsonLinesError, read_jsonl
from protocols.outcome import PerformanceTracker, ScoredTrial
from protocols.trial_record import TrialRecord, TrialRecordError
from rig.roi_matches import ROI_MATCHES_FILE, match_summary
from rig.store import SESSION_FILE, TRIALS_FILE, DataError, read_json

CYCLE_S = 1e-4
QUEUED_START_CYCLES = 1
"""A queued trial starts one cycle after the previous one ends on the device: no host adds that one."""


def format_status(trial: int, context: str, stage: str, performance: PerformanceTracker, outcome: str) -> str:
    """The one-line live status of a running session."""
    def pct(value: float | None) -> str:
        return "  --" if value is None else f"{100 * value:3.0f}%"

    perf = performance.perf100(context=context)
    return (f"trial {trial:5d} | {context:<18} | stage {stage:<10} | Perf100 {pct(perf)}"
            f" (L {pct(performance.perf100(side='left', context=context))}"
            f" R {pct(performance.perf100(side='right', context=context))}) | {outcome}")


def _scored(record: TrialRecord) -> ScoredTrial | None:
    if record.aborted or record.outcome not in ("hit", "error", "no_response") or record.side is None \
            or record.context is None:
        return None
    return ScoredTrial(side=record.side, context=record.context, outcome=record.outcome,  # type: ignore[arg-type]
                       trial_number=record.trial)


def read_trials(path: Path) -> list[TrialRecord]:
    """A session's trials.jsonl as records; a line that is not a trial record is a DataError naming it."""
    records = []
    try:
        lines = read_jsonl(path)
    except JsonLinesError as exc:
        raise DataError(str(exc)) from None
    for number, data in enumerate(lines, 1):
        try:
            records.append(TrialRecord.from_json(data))
        except TrialRecordError as exc:
            raise DataError(f"{path}: record {number}: {exc}") from None
    return records


def summarize_session(folder: Path) -> dict[str, Any]:
    """The summary of one session folder; a folder that is not a session is a DataError naming it."""
    folder = Path(folder)
    trials_path = folder / TRIALS_FILE
    if not (folder / SESSION_FILE).exists():
        raise DataError(f"{folder} is not a session folder (no {SESSION_FILE})")
    info = read_json(folder / SESSION_FILE)
    records = read_trials(trials_path) if trials_path.exists() else []
    outcomes = Counter(r.outcome for r in records)
    tracker = PerformanceTracker()
    contexts: list[str] = []
    blocks: dict[int, dict[str, Any]] = {}
    switches = []
    gaps_cycles: list[int] = []
    previous_end: float | None = None
    for record in records:
        scored = _scored(record)
        if scored is not None:
            tracker.add(scored)
        if record.context and record.context not in contexts:
            contexts.append(record.context)
        if record.block is not None:  # the session's part of each block (a block may span sessions)
            part = blocks.setdefault(record.block, {"block": record.block, "label": record.block_label,
                                                    "context": record.context, "first_trial": record.trial,
                                                    "trials": 0, "correct": 0})
            part["trials"] += 1
            part["correct"] += record.outcome == "hit"
        for event in record.training_events:
            if event.get("kind") == "context_switched":
                switches.append({"trial": record.trial, "from": event.get("before"),
                                 "to": event.get("after"), "reason": event.get("reason")})
        start, end = record.trial_start_s, record.trial_end_s
        if start is not None and previous_end is not None:
            # host-induced: less the one cycle the device takes to start a queued trial (rig/session.py)
            gaps_cycles.append(round((start - previous_end) / CYCLE_S) - QUEUED_START_CYCLES)
        previous_end = end if end is not None else previous_end
    by_context = {c: tracker.perf100(context=c) for c in contexts}
    return {
        "session": str(folder), "subject": info.get("subject"), "started": info.get("started"),
        "ended": info.get("ended"), "end_reason": info.get("end_reason"),
        "trials": len(records), "outcomes": dict(outcomes),
        "perf100_by_context": by_context,
        "performance_by_context": {c: tracker.performance(context=c) for c in contexts},
        "context_switches": switches,
        "blocks": list(blocks.values()),
        "dead_time_cycles": {"max": max(gaps_cycles) if gaps_cycles else None,
                             "mean": sum(gaps_cycles) / len(gaps_cycles) if gaps_cycles else None,
                             "nonzero": sum(1 for g in gaps_cycles if g != 0)},
        "early_lick_trials": sum(1 for r in records if r.score is not None and r.score.early_lick),
        "free_drop_trials": sum(1 for r in records if r.free_drop),
        "online": _online_summary(info.get("online")),
        "weight_g": info.get("weight_g"), "water": dict(info.get("water") or {}),
        "child_events": list((info.get("children") or {}).get("events") or []),
        "roi_matches": match_summary(read_json(folder / ROI_MATCHES_FILE)
                                     if (folder / ROI_MATCHES_FILE).exists() else None),
    }


def _online_summary(online: Any) -> dict[str, Any] | None:
    if not isinstance(online, dict):
        return None
    return {"restarts": int(online.get("restarts") or 0), "exit_status": online.get("exit_status"),
            "gaps": list(online.get("gaps") or [])}


def _clock(stamp: Any) -> str:
    """The time of day of an ISO host time (the date is the session's)."""
    text = str(stamp) if stamp else "?"
    return text.split("T", 1)[1][:12] if "T" in text else text


def _gap_line(gap: dict[str, Any]) -> str:
    trials = gap.get("trials_affected") or []
    span = "unknown" if not trials else (str(trials[0]) if len(trials) == 1 else f"{trials[0]}-{trials[-1]}")
    lost = gap.get("frames_lost")
    seconds = gap.get("seconds")
    line = (f"    gap {_clock(gap.get('started'))} - {_clock(gap.get('ended'))}"
            f"{f' ({seconds:.1f} s)' if isinstance(seconds, int | float) else ''}: "
            f"{'unknown number of' if lost is None else lost} frames lost, trials affected {span}")
    return line + (f"; {gap['note']}" if gap.get("note") else "")


def _child_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    online = summary.get("online")
    if online and (online["restarts"] or online["gaps"]):
        lines.append(f"  online module restarted {online['restarts']} time(s), {len(online['gaps'])} gap(s):")
        lines += [_gap_line(g) for g in online["gaps"]]
    for event in summary.get("child_events", []):
        child = event.get("child")
        name = f"frame source ({event.get('source')})" if child == "imaging" else str(child)
        detail = event.get("error") or (f"status {event['exit_status']}" if "exit_status" in event else "")
        lines.append(f"  {name} {event.get('event')} at {_clock(event.get('host_time'))} "
                     f"(trial {event.get('trial')}){f': {detail}' if detail else ''}")
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "--" if value is None else f"{100 * value:.0f}%"

    lines = [f"session {summary['session']}",
             f"  subject {summary['subject']}, {summary['trials']} trials, ended: {summary['end_reason']}",
             "  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items()))]
    for context, perf in summary["perf100_by_context"].items():
        overall = summary["performance_by_context"][context]
        lines.append(f"  {context:<20} Perf100 {pct(perf):>5}   all trials {pct(overall):>5}")
    for block in summary["blocks"]:
        lines.append(f"  block {block['label']:<4} ({block['context']}) from trial {block['first_trial']}: "
                     f"{block['trials']} trials, {block['correct']} correct")
    for switch in summary["context_switches"]:
        lines.append(f"  context switch before trial {switch['trial']}: {switch['from']} -> {switch['to']}"
                     f" ({switch['reason']})")
    dead = summary["dead_time_cycles"]
    if dead["max"] is not None:
        lines.append(f"  host dead time between trials (Bpod clock, beyond the device's 1 cycle): "
                     f"max {dead['max']} cycles, "
                     f"mean {dead['mean']:.2f}, {dead['nonzero']} gaps not zero")
    water = summary.get("water") or {}
    if water.get("delivered_ul") is not None:
        extra = water.get("supplementary_ul")
        lines.append(f"  water from the valves {water['delivered_ul']:g} uL"
                     + (f", supplementary {extra:g} uL" if extra is not None else "")
                     + (f"; weight {summary['weight_g']:g} g" if summary.get("weight_g") is not None else ""))
    lines += _child_lines(summary)
    for match in summary.get("roi_matches", []):
        if "error" in match:
            lines.append(f"  ROIs not matched to session {match['session']}: {match['error']}")
        else:
            dy, dx = match["shift_px"]
            lines.append(f"  ROIs matched to session {match['session']}: {match['n_matched']} of "
                         f"{match['n_current']} (it had {match['n_previous']}), field shift ({dy:.1f}, "
                         f"{dx:.1f}) px")
    return "\n".join(lines)
