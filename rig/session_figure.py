"""The session's summary figure (summary.png in the session folder): performance, outcomes, licks and
decoding on one page, for the lab notebook and for comparing days at a glance.

Drawn from the session's files only (trials.jsonl, and the online module's decoder.jsonl when there is
one), so the monitor at the end of the session and `rig run` without a monitor draw the same figure.
Matplotlib's object API with the Agg canvas: no window, no pyplot state, safe off the GUI thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from online.store import DECODER_FILE, JsonLinesError, read_jsonl
from protocols.directional_licking import GO_CUE_EPOCH
from protocols.outcome import PERF_WINDOW, fraction_correct
from protocols.settings import WiringSettings
from protocols.trial_record import TrialRecord, TrialRecordError
from rig.store import TRIALS_FILE

log = logging.getLogger(__name__)

FIGURE_FILE = "summary.png"
OUTCOME_COLOURS = {"hit": "#46c864", "error": "#eb4646", "no_response": "#969696", "aborted": "#5a5a5a",
                   "not_started": "#3c3c3c"}
SIDE_COLOURS = {"left": "#50a0ff", "right": "#ff5f55"}
LICK_RANGE_S = (-2.0, 3.0)


def _records(folder: Path) -> list[TrialRecord]:
    path = folder / TRIALS_FILE
    records: list[TrialRecord] = []
    if not path.is_file():
        return records
    try:
        for line in read_jsonl(path):
            try:
                records.append(TrialRecord.from_json(line))
            except TrialRecordError as exc:
                log.warning("%s: skipped a line: %s", path, exc)
    except (OSError, JsonLinesError) as exc:
        log.warning("summary figure: cannot read %s: %s", path, exc)
    return records


def _decoder_lines(folder: Path) -> list[Mapping[str, Any]]:
    """The online module's per-trial decoder results (decoder.jsonl in the session folder or below)."""
    lines: list[Mapping[str, Any]] = []
    for path in sorted(folder.glob(f"**/{DECODER_FILE}"))[:1]:
        try:
            lines = [line for line in read_jsonl(path) if isinstance(line, Mapping)]
        except (OSError, JsonLinesError) as exc:
            log.warning("summary figure: cannot read %s: %s", path, exc)
    return lines


def perf_curves(records: Sequence[TrialRecord]) -> dict[str, tuple[list[int], list[float]]]:
    """Perf100 per context over the session: the fraction correct of the context's last PERF_WINDOW
    answered trials, at every trial of it once there is an answered one."""
    windows: dict[str, list[str]] = {}
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        context = record.context or ""
        window = windows.setdefault(context, [])
        window.append(record.outcome)
        perf = fraction_correct(window[-PERF_WINDOW:])
        if perf is not None:
            trials, values = curves.setdefault(context, ([], []))
            trials.append(record.trial)
            values.append(perf)
    return curves


def decoder_curves(lines: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """Cross-validated decoding accuracy per context (or block label) over the trials."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for line in lines:
        trial, accuracy = line.get("trial"), line.get("accuracy")
        if not isinstance(trial, int) or not isinstance(accuracy, Mapping):
            continue
        for key, value in accuracy.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
                trials, values = curves.setdefault(str(key), ([], []))
                trials.append(trial)
                values.append(float(value))
    return curves


def save_session_figure(folder: Path, wiring: WiringSettings, path: Path | None = None) -> Path | None:
    """Draw the summary of the session in `folder` into `path` (default folder/summary.png); None (and a
    warning) if it cannot be written."""
    from matplotlib.figure import Figure  # drawn to a file (Agg), no window and no pyplot state

    folder = Path(folder)
    path = folder / FIGURE_FILE if path is None else Path(path)
    records = _records(folder)
    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    (ax_perf, ax_out), (ax_licks, ax_dec) = fig.subplots(2, 2)
    fig.suptitle(f"{folder.parent.name} · {folder.name} · {len(records)} trials")

    for context, (trials, values) in perf_curves(records).items():
        ax_perf.plot(trials, values, label=context or "–")
    ax_perf.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax_perf.set(title=f"Perf100 per context (last {PERF_WINDOW} answered)", xlabel="trial",
                ylabel="fraction correct", ylim=(0, 1.05))
    if ax_perf.lines[1:]:
        ax_perf.legend(fontsize=8, loc="lower right")

    counts: dict[str, int] = {}
    for record in records:
        counts[record.outcome] = counts.get(record.outcome, 0) + 1
    names = list(counts)
    ax_out.bar(names, [counts[n] for n in names], color=[OUTCOME_COLOURS.get(n, "0.5") for n in names])
    ax_out.set(title="Outcomes", ylabel="trials")

    for side, colour in SIDE_COLOURS.items():
        xs: list[float] = []
        ys: list[int] = []
        for record in records:
            go = record.entry_s(GO_CUE_EPOCH)
            if go is None:
                continue
            licks = np.asarray(record.licks(wiring)[side], dtype=float) - go
            licks = licks[(licks >= LICK_RANGE_S[0]) & (licks <= LICK_RANGE_S[1])]
            xs.extend(licks.tolist())
            ys.extend([record.trial] * len(licks))
        ax_licks.scatter(xs, ys, s=4, marker="|", color=colour, label=f"{side} lick", linewidths=0.8)
    ax_licks.axvline(0, color="0.5", lw=0.8)
    ax_licks.set(title="Licks around the go cue", xlabel="time from go cue (s)", ylabel="trial",
                 xlim=LICK_RANGE_S)
    ax_licks.legend(fontsize=8, loc="upper right", markerscale=3)

    decoding = decoder_curves(_decoder_lines(folder))
    for key, (trials, values) in decoding.items():
        ax_dec.plot(trials, values, label=key)
    ax_dec.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax_dec.set(title="Decoding accuracy (cross-validated)", xlabel="trial", ylabel="accuracy", ylim=(0, 1.05))
    if decoding:
        ax_dec.legend(fontsize=8, loc="lower right")
    else:
        ax_dec.text(0.5, 0.5, "no online decoding in this session", ha="center", va="center",
                    transform=ax_dec.transAxes, color="0.4")
    partial = path.with_name(f".{path.name}.partial")
    try:  # whole or not at all: the rig draws the figure itself when the monitor did not finish it
        fig.savefig(partial, format="png")
        os.replace(partial, path)
    except OSError as exc:
        log.warning("could not save the summary figure to %s: %s", path, exc)
        partial.unlink(missing_ok=True)
        return None
    log.info("summary figure saved to %s", path)
    return path

