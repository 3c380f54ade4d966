"""A subject's study analysed as in the paper, from its session folders: blocks, learning, CD similarity
with ceilings, cross-decoding by block and by session, the memory trace and per-context PSTHs.

Neurons are followed across sessions through the ROI matches each session saved (roi_matches.json); without
matches, sessions compare only when their ROI sets are the same (the same roi_set_id). Only correct trials
that the decoder did not gate train or test a CD; a block or session with fewer than
`min_trials_per_side` of them on a side is reported but not decoded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from protocols.blocks import label_blocks
from rig.analysis.learning import learning_curve, trials_to_criterion
from rig.analysis.neuron_ids import neuron_ids
from rig.analysis.population import (
    BlockActivity,
    cd_similarity_matrix,
    cross_decoding_matrix,
    memory_trace,
)
from rig.analysis.psth import Psth, pooled, psth
from rig.analysis.sessions import (
    SessionActivity,
    frame_rate_hz,
    load_session,
    read_roi_matches,
    session_folders,
)
from rig.progress import Progress
from rig.store import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisOptions:
    method: str = "lda"
    """How a CD is computed (online.decoder.cd_method): the paper's LDA by default."""
    min_trials_per_side: int = 50
    """Correct, ungated trials per side a block or session needs to be decoded (the paper: 50)."""
    n_repeats: int = 10
    """Random halves per comparison."""
    delay_window_s: float = 0.6
    """The delay window: this long before the go cue."""
    criterion: float = 0.75
    criterion_window: int = 100
    source: str = "deconvolved"
    """Activity analysed: deconvolved (falls back to dff where a session has none) or dff."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_trials_per_side < 4:
            raise ValueError(f"min_trials_per_side must be at least 4, got {self.min_trials_per_side}")
        if self.n_repeats < 1:
            raise ValueError(f"n_repeats must be at least 1, got {self.n_repeats}")
        if not 0 < self.delay_window_s <= 5:
            raise ValueError(f"delay_window_s must be in (0, 5] s, got {self.delay_window_s}")

    @property
    def min_half(self) -> int:
        return self.min_trials_per_side // 2


@dataclass(frozen=True)
class Piece:
    """The trials of one block in one session."""

    session: SessionActivity
    block: int
    label: str
    context: str
    rows: np.ndarray


def _subject_neuron_ids(sessions: Sequence[SessionActivity]) -> tuple[dict[str, np.ndarray], int]:
    """Neuron ids per session and the number of pairwise matches they rest on."""
    n_rois = {s.name: s.n_rois for s in sessions}
    matches = [m for s in sessions for m in read_roi_matches(s.folder) if m[1] in n_rois]
    if not matches:
        ids_by_set = {s.name: s.roi_set_id or s.name for s in sessions}
        if len(set(ids_by_set.values())) > 1:
            logger.warning("no ROI matches between sessions: sessions compare only within themselves")
        first_of_set: dict[str, str] = {}
        for s in sessions:
            first_of_set.setdefault(ids_by_set[s.name], s.name)
        matches = [(s.name, first_of_set[ids_by_set[s.name]], [(i, i) for i in range(s.n_rois)])
                   for s in sessions if first_of_set[ids_by_set[s.name]] != s.name]
    return neuron_ids(n_rois, matches), sum(len(m[2]) for m in matches)


def with_blocks(sessions: Sequence[SessionActivity]) -> list[SessionActivity]:
    """Sessions whose trials carry their block; trials recorded without one (older sessions) get the block
    the sequence of contexts gives (`label_blocks`), which is what the rig assigns."""
    if all(t.block for s in sessions for t in s.trials):
        return list(sessions)
    labelled = iter(b for b in label_blocks(t.context for s in sessions for t in s.trials))
    current = next(labelled, None)
    out = []
    for s in sessions:
        trials = []
        for t in s.trials:
            if current is not None and current.context != t.context:
                current = next(labelled)
            assert current is not None
            trials.append(replace(t, block=current.index, block_label=current.label))
        out.append(replace(s, trials=trials))
    return out


def _pieces(sessions: Sequence[SessionActivity]) -> list[Piece]:
    pieces: list[Piece] = []
    for session in sessions:
        blocks: dict[int, list[int]] = {}
        for row, trial in enumerate(session.trials):
            blocks.setdefault(trial.block, []).append(row)
        for block, rows in blocks.items():
            first = session.trials[rows[0]]
            pieces.append(Piece(session, block, first.block_label, first.context, np.asarray(rows)))
    return pieces


def _activity(label: str, pieces: Sequence[Piece], ids: dict[str, np.ndarray],
              options: AnalysisOptions) -> BlockActivity:
    """Correct, ungated trials of the pieces over the neurons all their sessions have, in the delay window;
    trials with an unsampled bin are left out, then neurons still unsampled somewhere."""
    shared = ids[pieces[0].session.name]
    for piece in pieces[1:]:
        shared = np.intersect1d(shared, ids[piece.session.name])
    shared = np.sort(shared)
    sides: dict[str, list[np.ndarray]] = {"right": [], "left": []}
    for piece in pieces:
        column = {int(n): i for i, n in enumerate(ids[piece.session.name])}
        cols = np.array([column[int(n)] for n in shared], dtype=int)
        window = piece.session.window(-options.delay_window_s, 0.0)[:, :, cols]
        for row in piece.rows:
            trial = piece.session.trials[row]
            if trial.outcome == "hit" and not trial.gated and trial.side in sides and window.shape[1]:
                sides[trial.side].append(window[row])
    stacks = {side: np.stack(rows) if rows else np.zeros((0, 1, shared.size)) for side, rows in sides.items()}
    incomplete = 0
    for side, stack in stacks.items():  # a trial whose window lost frames is left out
        complete = ~np.isnan(stack).any(axis=(1, 2))
        incomplete += int(np.count_nonzero(~complete))
        stacks[side] = stack[complete]
    if incomplete:
        logger.info("block %s: %d correct trials left out for frames lost in their delay window", label,
                    incomplete)
    sessions = tuple(dict.fromkeys(p.session.name for p in pieces))
    return BlockActivity(label, pieces[0].context, sessions, stacks["right"].astype(float),
                         stacks["left"].astype(float), shared)


def _context_psths(sessions: Sequence[SessionActivity], options: AnalysisOptions) -> list[Psth]:
    by_context: dict[str, list[Psth]] = {}
    for s in sessions:
        delay = (s.bin_centres_s >= -options.delay_window_s) & (s.bin_centres_s < 0)
        for context in dict.fromkeys(t.context for t in s.trials):
            rows = {side: [i for i, t in enumerate(s.trials) if t.context == context and t.side == side
                           and t.outcome == "hit"] for side in ("right", "left")}
            if min(len(r) for r in rows.values()) < 5:
                continue
            by_context.setdefault(context, []).append(
                psth(context, s.bin_centres_s, s.activity[rows["right"]], s.activity[rows["left"]], delay))
    return [p for p in (pooled(c, parts) for c, parts in by_context.items()) if p is not None]


def analyze_subject(subject_dir: Path, options: AnalysisOptions | None = None,
                    status: TextIO | None = None) -> dict[str, Any]:
    """Everything `rig analyze` reports, as plain JSON-able data."""
    options = options or AnalysisOptions()
    folders = session_folders(subject_dir)
    progress = Progress(len(folders) + 4, "analyse", status, every=5)
    rates = []
    for folder in folders:
        with contextlib.suppress(DataError):
            rates.append(frame_rate_hz(folder))
    # one grid for all: the slowest session's frame period (no session is resampled finer than it imaged)
    bin_s = 1.0 / min(rates) if rates else None
    sessions = []
    for folder in folders:
        try:
            sessions.append(load_session(folder, source=options.source, bin_s=bin_s))
        except DataError as exc:
            logger.warning("%s left out: %s", folder.name, exc)
        progress.step(folder.name)
    if not sessions:
        raise DataError(f"{subject_dir}: no session has trials and traces to analyse")
    sessions = with_blocks(sessions)
    ids, n_matched = _subject_neuron_ids(sessions)
    pieces = _pieces(sessions)
    block_order = list(dict.fromkeys(p.block for p in pieces))
    blocks = []
    for block in block_order:
        members = [p for p in pieces if p.block == block]
        blocks.append(_activity(members[0].label, members, ids, options))
    session_units = [_activity(f"{p.session.name}:{p.label}", [p], ids, options) for p in pieces]
    progress.step("blocks")

    usable = [b for b in blocks if min(b.n_right, b.n_left) >= options.min_trials_per_side]
    similarity = cd_similarity_matrix(usable, options.method, options.n_repeats, options.min_half,
                                      options.seed)
    cross = cross_decoding_matrix(usable, options.method, options.n_repeats, options.min_half, options.seed)
    usable_sessions = [u for u in session_units if min(u.n_right, u.n_left) >= options.min_trials_per_side]
    cross_sessions = cross_decoding_matrix(usable_sessions, options.method, options.n_repeats,
                                           options.min_half, options.seed)
    progress.step("decoding")

    by_label = {b.label: b for b in usable}
    trace = None
    labels = [b.label for b in blocks]
    first_two = [label for label in labels if "'" not in label][:2]
    if len(first_two) == 2 and f"{first_two[0]}'" in by_label and all(x in by_label for x in first_two):
        mt = memory_trace(by_label[first_two[1]], by_label[first_two[0]], by_label[f"{first_two[0]}'"],
                          options.method, seed=options.seed)
        trace = asdict(mt)
    study_trials = [t for s in sessions for t in s.trials]
    curve = learning_curve(study_trials, options.criterion_window)
    criterion = trials_to_criterion(study_trials, options.criterion, options.criterion_window)
    psths = _context_psths(sessions, options)
    progress.step("learning")
    progress.step("done")
    progress.close()
    return {
        "subject": Path(subject_dir).name,
        "options": asdict(options),
        "sessions": [{"session": s.name, "trials": len(s.trials), "rois": s.n_rois, "activity": s.source,
                      "contexts": list(dict.fromkeys(t.context for t in s.trials))} for s in sessions],
        "neurons": {"subject_wide": int(len({int(i) for v in ids.values() for i in v})),
                    "matched_pairs": n_matched},
        "blocks": [{"label": b.label, "context": b.context, "sessions": list(b.sessions),
                    "trials": int(sum(len(p.rows) for p in pieces if p.block == block)),
                    "correct_right": b.n_right, "correct_left": b.n_left, "neurons": int(b.neuron_ids.size),
                    "decoded": b in usable}
                   for block, b in zip(block_order, blocks, strict=True)],
        "trials_to_criterion": [asdict(c) for c in criterion],
        "learning_curve": asdict(curve),
        "cd_similarity": {"labels": similarity.labels, "matrix": similarity.matrix,
                          "ceiling": similarity.ceiling, "neurons": similarity.neurons,
                          "half_trials": similarity.half_trials},
        "cross_decoding": {"labels": cross.labels, "matrix": cross.matrix},
        "cross_decoding_sessions": {"labels": cross_sessions.labels, "matrix": cross_sessions.matrix},
        "memory_trace": trace,
        "psth": [asdict(p) for p in psths],
    }
