"""Blocks: each visit to a context is a block, labelled as the paper labels them.

A subject's contexts come in visits: tactile, then auditory, then tactile again. Each visit is a block,
numbered 1, 2, 3, ... through the subject's whole history (a block continues across sessions while the
context stays the same) and labelled by the context's ordinal of first appearance with one prime per
return: 1, 2, 1', 2', 1'', ... So a return to context 1 is block 1', whose decoder and coding direction
are its own and can be compared with those of block 1.

Pure: `label_blocks` labels a sequence of contexts; `BlockHistory` is the subject's list of visits
(subject.json keeps it) and says which block a trial in a given context belongs to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PRIME = "'"


class BlockHistoryError(ValueError):
    """A stored block history that is not one (the message names the entry)."""


@dataclass(frozen=True)
class Block:
    """One visit to a context: its 1-based index in the subject's history, the context, the paper's label."""

    index: int
    context: str
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"block": self.index, "context": self.context, "label": self.label}


def block_label(ordinal: int, returns: int) -> str:
    """The paper's label: the context's ordinal by first appearance (1-based), one prime per return."""
    if ordinal < 1 or returns < 0:
        raise ValueError(f"a block label needs ordinal >= 1 and returns >= 0, got {ordinal}, {returns}")
    return f"{ordinal}{PRIME * returns}"


def label_blocks(contexts: Iterable[str]) -> list[Block]:
    """The blocks of a sequence of contexts (per trial or per visit): consecutive equal contexts are one
    visit, so ["a", "a", "b", "a"] is blocks 1, 2, 1'."""
    blocks: list[Block] = []
    ordinals: dict[str, int] = {}
    visits: dict[str, int] = {}
    for context in contexts:
        if not isinstance(context, str) or not context:
            raise ValueError(f"a context is a non-empty name, got {context!r}")
        if blocks and blocks[-1].context == context:
            continue
        ordinal = ordinals.setdefault(context, len(ordinals) + 1)
        returns = visits.get(context, 0)
        visits[context] = returns + 1
        blocks.append(Block(len(blocks) + 1, context, block_label(ordinal, returns)))
    return blocks


@dataclass
class BlockHistory:
    """A subject's visits to its contexts, in order (one context per visit)."""

    visits: list[str] = field(default_factory=list)

    def blocks(self) -> list[Block]:
        return label_blocks(self.visits)

    @property
    def current(self) -> Block | None:
        """The block the last trial was in (None before any trial)."""
        blocks = self.blocks()
        return blocks[-1] if blocks else None

    def block_for(self, context: str) -> Block:
        """The block a trial in `context` belongs to now: the current one if the context is unchanged, else
        the next visit (the history is not changed; see `enter`)."""
        return label_blocks([*self.visits, context])[-1]

    def enter(self, context: str) -> Block:
        """A trial in `context`: a new visit when the context changed. Returns the trial's block."""
        if not self.visits or self.visits[-1] != context:
            label_blocks([context])  # checks the name
            self.visits.append(context)
        return self.blocks()[-1]

    def to_list(self) -> list[dict[str, Any]]:
        """For subject.json: one object per block (index, context, label; the labels are for readers)."""
        return [b.to_dict() for b in self.blocks()]

    @classmethod
    def from_list(cls, data: Sequence[Mapping[str, Any]] | None) -> BlockHistory:
        """From subject.json's list (absent in files written before blocks existed: an empty history)."""
        if data is None:
            return cls()
        if not isinstance(data, Sequence) or isinstance(data, str | bytes):
            raise BlockHistoryError(f"blocks must be a list of objects, got {type(data).__name__}")
        visits = []
        for i, entry in enumerate(data):
            context = entry.get("context") if isinstance(entry, Mapping) else None
            if not isinstance(context, str) or not context:
                raise BlockHistoryError(f"blocks[{i}] needs a context name, got {entry!r}")
            visits.append(context)
        history = cls(visits)
        if len(history.blocks()) != len(visits):
            raise BlockHistoryError("blocks: two consecutive entries name the same context (one visit)")
        return history
