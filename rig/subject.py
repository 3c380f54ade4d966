"""A subject's persistent state (`<root>/<subject>/subject.json`), carried from session to session.

It holds the training state (stage, context, counts), the subject's blocks (each visit to a context,
protocols/blocks.py), the recent scored trials that trial selection looks back on (antibias, auto-reward),
so that the next session continues exactly where this one stopped. A simulated subject's mouse keeps its
own state beside it, in the subject's sim/ folder (hardware/sim/subject_file.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from protocols.blocks import BlockHistory, BlockHistoryError
from protocols.outcome import ScoredTrial
from protocols.training import SubjectTrainingState, TrainingStateError
from rig.store import SUBJECT_FILE, DataError, check_subject_id, read_json, write_json_atomic

HISTORY_KEPT = 200
FORMAT_VERSION = 1


@dataclass
class SubjectRecord:
    subject: str
    training: SubjectTrainingState
    history: list[ScoredTrial] = field(default_factory=list)
    sessions: int = 0
    coding_directions: dict[str, Any] = field(default_factory=dict)
    blocks: BlockHistory = field(default_factory=BlockHistory)
    """Every visit to a context so far, so a block continues into the next session while its context does."""
    info: dict[str, Any] | None = None
    """Species, sex, date of birth or age, genotype (`rig.subject_info.SubjectInfo` as JSON); None until
    given."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION, "subject": self.subject, "training": self.training.to_dict(),
            "history": [t.to_dict() for t in self.history[-HISTORY_KEPT:]], "sessions": self.sessions,
            "coding_directions": self.coding_directions, "blocks": self.blocks.to_list(), "info": self.info,
            "updated": datetime.now().isoformat(timespec="seconds"),
        }


def subject_path(root: Path, subject: str) -> Path:
    return Path(root) / check_subject_id(subject) / SUBJECT_FILE


def load_subject(root: Path, subject: str) -> SubjectRecord | None:
    """The stored record, or None for a new subject; a damaged file is a DataError naming it."""
    path = subject_path(root, subject)
    if not path.exists():
        return None
    data = read_json(path)
    try:
        return SubjectRecord(
            subject=data.get("subject", subject),
            training=SubjectTrainingState.from_dict(data["training"]),
            history=[ScoredTrial.from_dict(t) for t in data.get("history", [])],
            sessions=int(data.get("sessions", 0)),
            coding_directions=dict(data.get("coding_directions", {})),
            blocks=BlockHistory.from_list(data.get("blocks")),
            info=data.get("info"),
        )
    except (KeyError, TypeError, ValueError, TrainingStateError, BlockHistoryError) as exc:
        raise DataError(f"{path}: cannot read the subject's state ({exc}); fix or move the file") from exc


def save_subject(root: Path, record: SubjectRecord) -> None:
    write_json_atomic(subject_path(root, record.subject), record.to_dict())
