"""One trial as the study analysis groups it: what the rig ran and scored, read from trials.jsonl."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrialInfo:
    """One trial of one session, in the order the subject did them."""

    session: str
    trial: int
    block: int
    block_label: str
    context: str
    side: str
    outcome: str
    """hit, error, no_response or aborted."""
    gated: bool = False
    """The decoder's decision fed back into this trial: never used to train (selection bias)."""
    go_s: float | None = None
    """Go cue in trial time (s from the trial trigger), from the Bpod's states."""
