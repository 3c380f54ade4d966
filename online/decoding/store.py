"""A subject's coding directions per (session, block, epoch, method), as JSON-able data, compared with a
live CD over the same ROI set.

Each entry may keep two half-CDs (from disjoint halves of equal trial counts, `StoredHalves`), so a later
block compares with it at equal counts and with a ceiling (`online.decoding.batch.similarity_to_halves`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from online.decoding.directions import CodingDirection, cd_similarity


class Similarity(NamedTuple):
    session: str
    context: str
    epoch: str
    method: str
    dot: float
    block: str | None = None


@dataclass(frozen=True, eq=False)
class StoredHalves:
    """Two unit CDs of a block from disjoint halves of `n_right` + `n_left` trials each."""

    first: np.ndarray
    second: np.ndarray
    n_right: int
    n_left: int

    @property
    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.first, self.second

    @property
    def sizes(self) -> tuple[int, int]:
        return self.n_right, self.n_left

    def to_dict(self) -> dict[str, Any]:
        return {"vectors": [[float(x) for x in self.first], [float(x) for x in self.second]],
                "n_right": self.n_right, "n_left": self.n_left}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoredHalves:
        first, second = (np.asarray(v, dtype=float) for v in data["vectors"])
        return cls(first, second, int(data["n_right"]), int(data["n_left"]))


def _key(cd: CodingDirection) -> str:
    return cd.key


class CodingDirectionStore:
    """A subject's CDs per (session, block, epoch, method), as plain JSON-able data for subject.json.

    Each entry keeps its neuron count and ROI-set id; `compare` dots a live CD with every stored CD over the
    same neurons, so a returning context's re-activated pattern shows as a high dot product. CDs without a
    block (stored before blocks existed) are keyed by their context."""

    def __init__(self, subject: str | None = None) -> None:
        self.subject = subject
        self._entries: dict[tuple[str, str, str, str], CodingDirection] = {}
        self._halves: dict[tuple[str, str, str, str], StoredHalves] = {}

    def put(self, session: str, cd: CodingDirection, halves: StoredHalves | None = None) -> None:
        """Store (or replace) the CD of a session's block, with its half-CDs when known."""
        key = (session, _key(cd), cd.epoch, cd.method)
        self._entries[key] = cd
        if halves is not None:
            self._halves[key] = halves
        else:
            self._halves.pop(key, None)

    def get(self, session: str, block: str, epoch: str = "delay", method: str = "lda",
            ) -> CodingDirection | None:
        """The CD of a session's block (or context, for a CD without a block)."""
        return self._entries.get((session, block, epoch, method))

    def halves(self, session: str, cd: CodingDirection) -> StoredHalves | None:
        return self._halves.get((session, _key(cd), cd.epoch, cd.method))

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[tuple[str, CodingDirection]]:
        """(session, CD) pairs in insertion order."""
        return [(key[0], cd) for key, cd in self._entries.items()]

    def compare(self, cd: CodingDirection, same_epoch: bool = True) -> list[Similarity]:
        """Dot products of `cd` with every stored CD over the same neurons (and ROI set, when both have one),
        highest first. Stored CDs over other neurons are skipped."""
        out = []
        for (session, _, epoch, method), stored in self._entries.items():
            if same_epoch and epoch != cd.epoch:
                continue
            if stored.n_neurons != cd.n_neurons or (
                    stored.roi_set_id is not None and cd.roi_set_id is not None
                    and stored.roi_set_id != cd.roi_set_id):
                continue
            out.append(Similarity(session, stored.context, epoch, method, cd_similarity(cd, stored),
                                  stored.block))
        return sorted(out, key=lambda s: s.dot, reverse=True)

    def to_dict(self) -> dict[str, Any]:
        entries = []
        for key, cd in self._entries.items():
            entry = {"session": key[0], **cd.to_dict()}
            if key in self._halves:
                entry["halves"] = self._halves[key].to_dict()
            entries.append(entry)
        return {"subject": self.subject, "coding_directions": entries}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodingDirectionStore:
        store = cls(data.get("subject"))
        for entry in data.get("coding_directions", []):
            halves = entry.get("halves")
            store.put(str(entry["session"]), CodingDirection.from_dict(entry),
                      StoredHalves.from_dict(halves) if halves is not None else None)
        return store
