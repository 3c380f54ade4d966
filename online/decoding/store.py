"""A subject's coding directions per (session, context, epoch, method), as JSON-able data, compared with
a live CD over the same ROI set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from online.decoding.directions import CodingDirection, cd_similarity


class Similarity(NamedTuple):
    session: str
    context: str
    epoch: str
    method: str
    dot: float


class CodingDirectionStore:
    """A subject's CDs per (session, context, epoch, method), as plain JSON-able data for subject.json.

    Each entry keeps its neuron count and ROI-set id; `compare` dots a live CD with every stored CD over the
    same neurons, so a returning context's re-activated pattern shows as a high dot product."""

    def __init__(self, subject: str | None = None) -> None:
        self.subject = subject
        self._entries: dict[tuple[str, str, str, str], CodingDirection] = {}

    def put(self, session: str, cd: CodingDirection) -> None:
        """Store (or replace) the CD of a session's context."""
        self._entries[(session, cd.context, cd.epoch, cd.method)] = cd

    def get(self, session: str, context: str, epoch: str = "delay", method: str = "classic",
            ) -> CodingDirection | None:
        return self._entries.get((session, context, epoch, method))

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[tuple[str, CodingDirection]]:
        """(session, CD) pairs in insertion order."""
        return [(key[0], cd) for key, cd in self._entries.items()]

    def compare(self, cd: CodingDirection, same_epoch: bool = True) -> list[Similarity]:
        """Dot products of `cd` with every stored CD over the same neurons (and ROI set, when both have one),
        highest first. Stored CDs over other neurons are skipped."""
        out = []
        for (session, context, epoch, method), stored in self._entries.items():
            if same_epoch and epoch != cd.epoch:
                continue
            if stored.n_neurons != cd.n_neurons or (
                    stored.roi_set_id is not None and cd.roi_set_id is not None
                    and stored.roi_set_id != cd.roi_set_id):
                continue
            out.append(Similarity(session, context, epoch, method, cd_similarity(cd, stored)))
        return sorted(out, key=lambda s: s.dot, reverse=True)

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject,
                "coding_directions": [{"session": s, **cd.to_dict()} for s, cd in self.entries()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodingDirectionStore:
        store = cls(data.get("subject"))
        for entry in data.get("coding_directions", []):
            store.put(str(entry["session"]), CodingDirection.from_dict(entry))
        return store
