"""The trial the selection chose: what makes one trial different from the next.

Its own module because the task builds a state machine from it and the selection makes it, while the
selection's scoring reads the task's states: neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols.contexts import Context, Cue, Side, check_side
from protocols.settings import SELECTION_MODES, SelectionMode, TrainingStage


@dataclass(frozen=True)
class TrialSpec:
    """Everything that makes one trial different from the next: what `build_trial` is given."""

    trial_number: int
    side: Side
    """The correct side (the trial type)."""
    context: Context
    stage: TrainingStage
    mode: SelectionMode
    free_drop: bool = False

    def __post_init__(self) -> None:
        check_side(self.side)
        if self.mode not in SELECTION_MODES:
            raise ValueError(f"mode must be one of {', '.join(SELECTION_MODES)}, got {self.mode!r}")

    @property
    def cue(self) -> Cue:
        """The sample cue; for the pole, the position the motor must reach before the trial starts."""
        return self.context.cue_for(self.side)

    @property
    def both_rewarded(self) -> bool:
        return self.mode == "both_rewarded"

    def to_dict(self) -> dict[str, Any]:
        """What the trial record stores about the trial's type and parameters."""
        stage = self.stage
        return {
            "trial_number": self.trial_number, "side": self.side, "cue": self.cue,
            "context": self.context.name, "modality": self.context.modality,
            "contingency": self.context.contingency, "mode": self.mode, "free_drop": self.free_drop,
            "stage": {"name": stage.name, "delay_s": stage.delay_s, "timeout_s": stage.timeout_s,
                      "selection": stage.selection, "sample_enforcement": stage.sample_enforcement},
        }
