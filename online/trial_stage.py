"""The trial stage: each trial's frames and epochs, its record, and at its end the decode and training.

Frames join their trial (`add_frame`); live state entries place the epochs until the record arrives
(`enter_state`); the record (`end`) gives the trial's epochs once, from its `States` when present. A trial
is finalised once its frames are in: when a frame of a later trial arrives, when its frames reach past
the response window, on `flush()`, or `finalize_timeout_s` after the record (`poll`).

Decoders are per block (the record's `block_label`, protocols/blocks.py: 1, 2, 1', ...; a record
without one, written before blocks existed, falls back to its context), so a return to a context starts a
new decoder and 1 vs 1' can be compared; `pooled(context)` gives a context's blocks together.

At finalisation the trial is decoded with its block's current delay CD BEFORE it is added (so every
decode is held out), then, if correct (outcome "hit", not a free-drop trial) and not decoder-gated (its
record's `closed_loop.gated`, or its start message's `gated`: a decoder that chose the trial's delay must
not learn from it), it trains that block's `ContextDecoder` (sample, delay and response windows). Gated
trials are decoded and counted apart (`prospective_gated`). A gated trial of a block whose decoder was not
ready yet does train it: no decoder could end its delay (it ran its full length, as an ungated trial's),
and without it a session gated from its first trial would never get a decoder. Readiness only grows, so
a decoder not ready at finalisation was not ready while the trial ran.

The `TrialOutcome` carries the decode, the balanced cross-validated accuracy of every block's decoder,
the trials per side, the similarity of the block's delay CD with the other blocks of this session and the
stored blocks of earlier sessions (`CodingDirectionStore`, over the same ROI set) from halves of equal
trial counts, each with its split-half ceiling, the block's own split-half ceilings, and the running
held-out ("prospective") balanced accuracy.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from online.alignment import DEFAULT_EPOCH_STATES, AlignedTrials, EpochStates, TrialEpochs, TrialFrames
from online.closed_loop import record_states
from online.decoding import (
    EPOCHS,
    CodingDirection,
    CodingDirectionStore,
    ContextDecoder,
    Decode,
    DecoderConfig,
    DecoderNotReady,
    EpochData,
)
from online.decoding.batch import block_similarity, half_vectors, similarity_to_halves
from online.decoding.store import StoredHalves
from online.stats import PipelineStats

logger = logging.getLogger(__name__)

SIDES = ("left", "right")
CORRECT_OUTCOME = "hit"
MAX_TRIAL_JUMP = 1000
"""How far past the latest trial a frame's trial number may be (more is a corrupt number: it would make
every trial in memory look finished and old)."""
SIMILARITY_EPOCH = "delay"
"""The epoch whose CD is compared between blocks at every trial (the paper's analysis; the sample and
response CDs are stored with their half-CDs, and compared offline)."""
CONTEXTS_KEPT = 64
"""Trial start messages (their contexts) remembered."""
FINALISED_KEPT = 1000
"""Finished trial numbers remembered, so late frames and second records are recognised."""


@dataclass
class Prospective:
    """Held-out decodes of a block's correct trials so far, and how many were right, per side."""

    decoded: int = 0
    correct: int = 0
    by_side: dict[str, list[int]] = field(default_factory=lambda: {s: [0, 0] for s in SIDES})
    """side -> [decoded, correct]."""

    def add(self, side: str, right: bool) -> None:
        self.decoded += 1
        self.correct += right
        counts = self.by_side[side]
        counts[0] += 1
        counts[1] += right

    @property
    def balanced_accuracy(self) -> float | None:
        """Mean of the per-side fractions decoded right (sides without decodes left out)."""
        rates = [c / d for d, c in self.by_side.values() if d]
        return sum(rates) / len(rates) if rates else None

    def copy(self) -> Prospective:
        return Prospective(self.decoded, self.correct, {s: list(v) for s, v in self.by_side.items()})


@dataclass
class _Pending:
    trial: int
    record: dict[str, Any]
    since: float
    epochs: TrialEpochs | None
    """The record's epochs (from its States), computed once; None: the live epochs stand."""


@dataclass
class TrialOutcome:
    """What a trial's end computed: the decode (held out), the training and the decoders' state after it."""

    trial: int
    context: str
    record: dict[str, Any]
    correct: bool
    block: str | None = None
    """The block's label (None for a record without one: the decoder is the context's)."""
    gated: bool = False
    """Decoder-gated (closed loop): decoded, never trained on."""
    n_frames: int = 0
    epochs: TrialEpochs | None = None
    decode: Decode | None = None
    boundary: float | None = None
    decode_skipped: str | None = None
    training_skipped: str | None = None
    trained_epochs: list[str] = field(default_factory=list)
    similarity: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """epoch (the delay: `SIMILARITY_EPOCH`) -> "session/block" -> `BlockSimilarity.to_dict()` (dot,
    ceiling, ceiling_a, ceiling_b, n_right, n_left): this block's CD against another block's, from halves
    of equal trial counts."""
    ceiling: dict[str, float] = field(default_factory=dict)
    """epoch -> this block's split-half ceiling (dot of its two disjoint halves' CDs)."""
    accuracy: dict[str, float | None] = field(default_factory=dict)
    trials_per_side: dict[str, int] = field(default_factory=dict)
    prospective: dict[str, Prospective] = field(default_factory=dict)
    prospective_gated: dict[str, Prospective] = field(default_factory=dict)
    cds_changed: bool = False

    @property
    def key(self) -> str:
        """The decoder the trial belongs to: its block, else its context."""
        return self.block if self.block is not None else self.context


def record_block(record: Mapping[str, Any]) -> str | None:
    """The record's block label (None in records written before blocks existed)."""
    label = record.get("block_label")
    return label if isinstance(label, str) and label else None


def record_gated(record: Mapping[str, Any]) -> bool:
    """Whether the decoder gated the trial (the rig's `closed_loop` part says so)."""
    closed_loop = record.get("closed_loop")
    return isinstance(closed_loop, Mapping) and closed_loop.get("gated") is True


def record_epochs(record: Mapping[str, Any], names: EpochStates) -> TrialEpochs | None:
    """A trial record's epochs from its States, or None when it has none (or they are unusable)."""
    states = record_states(record)
    if states is None:
        return None
    try:
        return TrialEpochs.from_states(states, names)
    except (TypeError, ValueError, IndexError) as exc:
        logger.warning("trial %s: unusable States in the record (%s); live epochs kept", record.get("trial"),
                       exc)
        return None


class TrialStage:
    """Trials in, `TrialOutcome`s out. `start` once the ROIs are known; before that, records and states are
    kept (and trials ended then are finalised without frames). Single-threaded; no I/O."""

    def __init__(self, session: str = "", cd_store: CodingDirectionStore | None = None, *,
                 epoch_states: EpochStates = DEFAULT_EPOCH_STATES, include_free_drop: bool = False,
                 trials_kept: int = 6, stats: PipelineStats | None = None) -> None:
        self.session = session
        self.cd_store = cd_store if cd_store is not None else CodingDirectionStore()
        self.epoch_states = epoch_states
        self.include_free_drop = include_free_drop
        self.trials_kept = trials_kept
        self.stats = stats if stats is not None else PipelineStats()
        self.trials: AlignedTrials | None = None
        self.decoder_config: DecoderConfig | None = None
        self.n_rois = 0
        self.roi_set_id = ""
        self.decoders: dict[str, ContextDecoder] = {}
        """Per block label (or context, for records without a block)."""
        self.accuracy: dict[str, float | None] = {}
        self._prospective: dict[str, Prospective] = {}
        self._prospective_gated: dict[str, Prospective] = {}
        self._similarity: dict[str, tuple[dict[str, dict[str, dict[str, Any]]], dict[str, float]]] = {}
        self._pending_states: list[tuple[int, str, float]] = []
        self._pending_ends: OrderedDict[int, _Pending] = OrderedDict()
        self._finalised: OrderedDict[int, None] = OrderedDict()
        self._contexts: OrderedDict[int, tuple[str, str | None, bool]] = OrderedDict()
        self._last_context: tuple[str, str | None] | None = None
        self.latest_trial = -1

    def start(self, n_rois: int, decoder_config: DecoderConfig, roi_set_id: str) -> None:
        """The ROIs are known: frames can join trials, decoders can be made."""
        self.n_rois, self.decoder_config, self.roi_set_id = n_rois, decoder_config, roi_set_id
        self.trials = AlignedTrials(n_rois, self.epoch_states)
        for trial, state, time_s in self._pending_states:
            self.trials.enter_state(trial, state, time_s)
        self._pending_states.clear()

    # -- trials in ----------------------------------------------------------------------------------

    def far_trial(self, trial: int) -> str | None:
        """Why `trial` is refused, if it is more than MAX_TRIAL_JUMP past the latest trial with frames."""
        if 0 <= self.latest_trial < trial - MAX_TRIAL_JUMP:
            latest = self.latest_trial
            return f"is of trial {trial}, more than {MAX_TRIAL_JUMP} past the latest trial {latest}"
        return None

    def is_finalised(self, trial: int) -> bool:
        return trial in self._finalised

    def enter_state(self, trial: int, state: str, time_s: float) -> bool:
        """A live state entry; False for a trial already finalised (ignored)."""
        if trial in self._finalised:
            return False
        if self.trials is None:
            self._pending_states.append((trial, state, time_s))
            del self._pending_states[:-2000]
        else:
            self.trials.enter_state(trial, state, time_s)
        return True

    def use_epoch_states(self, names: EpochStates) -> None:
        """The state names of the epochs, from now on (the trial-start message says them)."""
        if names != self.epoch_states:
            logger.info("epochs from the trial start: %s", names)
            self.epoch_states = names
            if self.trials is not None:
                self.trials.names = names

    def set_context(self, trial: int, context: str, block: str | None = None, gated: bool = False) -> None:
        """A trial's start message: its context, block and whether it is decoder-gated, before the record
        exists."""
        self._contexts[trial] = (context, block, gated)
        while len(self._contexts) > CONTEXTS_KEPT:
            self._contexts.popitem(last=False)

    def context_for(self, trial: int) -> str | None:
        """The context of a trial: from its start message, else the last finished trial's."""
        found = self._contexts.get(trial)
        last = found[:2] if found is not None else self._last_context
        return last[0] if last is not None else None

    def decoder_key_for(self, trial: int) -> str | None:
        """The decoder of a running trial: its block (or context), from its start message, else the last
        finished trial's."""
        found = self._contexts.get(trial)
        last = found[:2] if found is not None else self._last_context
        if last is None:
            return None
        return last[1] if last[1] is not None else last[0]

    def add_frame(self, trial: int, time_s: float, dff: np.ndarray) -> bool:
        """A frame's dF/F joins its trial; False for a trial already finalised (counted) or a time that is
        not finite."""
        assert self.trials is not None
        if not math.isfinite(time_s):
            return False
        if trial > self.latest_trial:  # also for a trial already finalised: frames running late (behind
            self.latest_trial = trial  # their records by more than the timeout) still move the session on
            self._drop_old_trials()
        if trial in self._finalised:
            self.stats.frames_after_trial_end += 1
            return False
        self.trials.trial(trial).add(time_s, dff)  # = add_frame(AlignedFrame(...)), without the object
        return True

    def frames_of(self, trial: int) -> TrialFrames | None:
        """The trial's frames so far (None before `start` or before its first frame)."""
        if self.trials is None or trial not in self.trials:
            return None
        return self.trials[trial]

    def _drop_old_trials(self) -> None:
        """Trials without a record that fell out of the kept range (no events, or records lost)."""
        assert self.trials is not None
        for number in list(self.trials):
            if number < self.latest_trial - self.trials_kept and number not in self._pending_ends:
                dropped = self.trials.pop(number)
                self.stats.frames_dropped_trials += len(dropped) if dropped is not None else 0

    def is_ended(self, trial: int) -> bool:
        """The trial's record arrived (it may still wait for its frames)."""
        return trial in self._finalised or trial in self._pending_ends

    def end(self, trial: int, context: str, record: Mapping[str, Any], now: float) -> list[TrialOutcome]:
        """A finished trial's record (validated). Returns the trials it finalised (possibly none yet)."""
        self._last_context = (context, record_block(record))
        epochs = record_epochs(record, self.epoch_states)
        self._pending_ends[trial] = _Pending(trial, dict(record), now, epochs)
        return self.finalise_ready()

    # -- finalisation -------------------------------------------------------------------------------

    @property
    def has_pending(self) -> bool:
        return bool(self._pending_ends)

    def finalise_ready(self) -> list[TrialOutcome]:
        """Finalise every ended trial whose frames are in."""
        done = []
        for trial, pending in list(self._pending_ends.items()):
            if self._frames_complete(pending):
                done.append(self._finalise(self._pending_ends.pop(trial)))
        return done

    def poll(self, now: float, timeout_s: float) -> list[TrialOutcome]:
        """Finalise trials whose frames did not come within `timeout_s` of their record."""
        out = []
        for trial, pending in list(self._pending_ends.items()):
            if now - pending.since >= timeout_s:
                self.stats.trials_timed_out += 1
                out.append(self._finalise(self._pending_ends.pop(trial)))
        return out

    def flush(self) -> list[TrialOutcome]:
        """Finalise every ended trial now (end of a replay or of the session)."""
        out = []
        while self._pending_ends:
            _, pending = self._pending_ends.popitem(last=False)
            out.append(self._finalise(pending))
        return out

    def _frames_complete(self, pending: _Pending) -> bool:
        if self.trials is None:
            return False
        if self.latest_trial > pending.trial:
            return True
        frames = self.trials.get(pending.trial)
        if frames is None or not len(frames):
            return False
        epochs = pending.epochs if pending.epochs is not None else frames.epochs
        go = epochs.go_s if epochs.go_s is not None else pending.record.get("go_cue_s")
        if not isinstance(go, int | float) or isinstance(go, bool):
            return False
        assert self.decoder_config is not None
        end = float(go) + self.decoder_config.response_window_s[1]
        return float(frames.times_s[-1]) >= end

    def _decoder(self, context: str, block: str | None) -> ContextDecoder | None:
        if self.decoder_config is None:
            return None
        key = block if block is not None else context
        decoder = self.decoders.get(key)
        if decoder is None:
            decoder = self.decoders[key] = ContextDecoder(context, self.n_rois, self.decoder_config,
                                                          self.roi_set_id, block)
            self.accuracy.setdefault(key, None)
        return decoder

    def pooled(self, context: str, epoch: str = "delay") -> EpochData:
        """Every block of `context` in this session together (the context pooled over its visits)."""
        parts = [d.data(epoch) for d in self.decoders.values() if d.context == context]
        if not parts:
            raise DecoderNotReady(f"no block of context {context!r} in this session")
        return EpochData.concat(parts)

    def _frames_with_epochs(self, pending: _Pending) -> TrialFrames | None:
        """The trial's frames, their epochs those of the record (live ones where it says nothing)."""
        frames = self.trials.pop(pending.trial) if self.trials is not None else None
        if frames is None or len(frames) == 0:
            self.stats.trials_without_frames += 1
            return None
        if pending.epochs is not None:
            frames.epochs = pending.epochs
        go = pending.record.get("go_cue_s")
        if frames.epochs.go_s is None and isinstance(go, int | float) and not isinstance(go, bool):
            frames.epochs.enter(self.epoch_states.go, float(go))
        return frames

    def _finalise(self, pending: _Pending) -> TrialOutcome:
        record = pending.record
        trial, context = pending.trial, str(record["context"])
        side = record.get("side")
        self.stats.trials_finalised += 1
        self._finalised[trial] = None
        while len(self._finalised) > FINALISED_KEPT:
            self._finalised.popitem(last=False)
        frames = self._frames_with_epochs(pending)
        block = record_block(record)
        started = self._contexts.get(trial)
        gated = record_gated(record) or (started is not None and started[2])
        decoder = self._decoder(context, block)
        correct = record.get("outcome") == CORRECT_OUTCOME and side in SIDES and (
            self.include_free_drop or not record.get("free_drop", False))
        out = TrialOutcome(trial, context, record, correct, block, gated,
                           n_frames=len(frames) if frames is not None else 0,
                           epochs=frames.epochs if frames is not None else None)
        if decoder is not None and frames is not None and decoder.ready("delay"):
            try:
                cd = decoder.coding_direction("delay")
                out.decode, out.boundary = decoder.decode_trial(frames, "delay"), float(cd.boundary.value)
            except (DecoderNotReady, ValueError) as exc:
                out.decode_skipped = str(exc)
        if out.decode is not None and correct:
            counts = self._prospective_gated if gated else self._prospective
            counts.setdefault(out.key, Prospective()).add(str(side), out.decode.side == side)
        if gated and correct and decoder is not None and decoder.ready("delay"):
            out.training_skipped = "decoder-gated trial: decoded, not trained on"
        elif correct and decoder is not None and frames is not None:
            try:
                out.trained_epochs = decoder.add_trial(str(side), frames)
            except ValueError as exc:
                out.training_skipped = str(exc)
        if decoder is not None:
            out.cds_changed = self._after_training(decoder, out.trained_epochs)
            out.similarity, out.ceiling = self._similarity.get(decoder.key, ({}, {}))
            out.trials_per_side = {s: decoder.n_trials(s, "delay") for s in SIDES}
        out.accuracy = dict(self.accuracy)
        out.prospective = {c: p.copy() for c, p in self._prospective.items()}
        out.prospective_gated = {c: p.copy() for c, p in self._prospective_gated.items()}
        return out

    def _after_training(self, decoder: ContextDecoder, used: list[str]) -> bool:
        """After a block's decoder took a trial: its accuracy, its CDs stored (with their half-CDs), and
        their similarities with the other blocks (kept until it next trains). True if a CD changed."""
        if not used:
            return False
        self.accuracy[decoder.key] = _accuracy(decoder)
        similarity: dict[str, dict[str, dict[str, Any]]] = {}
        ceiling: dict[str, float] = {}
        changed = False
        for epoch in EPOCHS:
            if epoch not in used or not decoder.ready(epoch):
                continue
            try:
                cd = decoder.coding_direction(epoch)
            except DecoderNotReady:
                continue
            data = decoder.data(epoch)
            sizes = (data.n_right // 2, data.n_left // 2)
            mask = decoder.neuron_mask()
            halves = StoredHalves(*half_vectors(data, sizes, cd.method, mask=mask), *sizes)
            ceiling[epoch] = round(float(halves.first @ halves.second), 4)
            if epoch == SIMILARITY_EPOCH:
                similarity[epoch] = self._similarities(decoder, cd, data)
            self.cd_store.put(self.session, cd, halves)
            changed = True
        if changed:
            self._similarity[decoder.key] = (similarity, ceiling)
        return changed

    def _similarities(self, decoder: ContextDecoder, cd: CodingDirection, data: EpochData,
                      ) -> dict[str, dict[str, Any]]:
        """`cd`'s block against the other ready blocks of this session (from their trials) and the stored
        blocks of other sessions with half-CDs (same epoch, method and ROIs), each at equal trial counts
        with its ceiling, keyed "session/block"."""
        settings = decoder.config.settings
        repeats, mask = settings.split_repeats, decoder.neuron_mask()
        out: dict[str, dict[str, Any]] = {}
        for key, other in self.decoders.items():
            if other is decoder or not other.ready(cd.epoch):
                continue
            with contextlib.suppress(ValueError):
                sim = block_similarity(data, other.data(cd.epoch), cd.method, repeats, mask=mask)
                out[f"{self.session}/{key}"] = sim.to_dict()
        for session, stored in self.cd_store.entries():
            halves = self.cd_store.halves(session, stored)
            if session == self.session or halves is None or stored.epoch != cd.epoch \
                    or stored.method != cd.method or stored.n_neurons != cd.n_neurons \
                    or (stored.roi_set_id is not None and stored.roi_set_id != cd.roi_set_id):
                continue
            with contextlib.suppress(ValueError):
                sim = similarity_to_halves(data, halves.vectors, halves.sizes, cd.method, repeats, mask=mask)
                out[f"{session}/{stored.key}"] = sim.to_dict()
        return out

    # -- for the closed loop and reports ------------------------------------------------------------

    def cd_for_trial(self, trial: int) -> tuple[str, CodingDirection] | None:
        """(context, current delay CD of the trial's block) for a running trial, or None while its block's
        decoder is not ready (the CD names its block)."""
        key = self.decoder_key_for(trial)
        decoder = self.decoders.get(key) if key is not None else None
        if decoder is None or not decoder.ready("delay"):
            return None
        try:
            return decoder.context, decoder.coding_direction("delay")
        except DecoderNotReady:
            return None

    def decoder_status(self) -> dict[str, str]:
        return {k: d.status("delay") for k, d in self.decoders.items()}


def _accuracy(decoder: ContextDecoder) -> float | None:
    if not decoder.ready("delay"):
        return None
    try:
        return round(decoder.accuracy("delay"), 4)
    except (DecoderNotReady, ValueError):
        return None
