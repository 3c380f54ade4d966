"""Subject-wide neuron identities from pairwise ROI matches between sessions: two ROIs matched (directly or
through a chain of sessions) are one neuron, so activity of different days can be compared column by
column."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(self, item: tuple[str, int]) -> tuple[str, int]:
        parent = self.parent.setdefault(item, item)
        while parent != self.parent.setdefault(parent, parent):
            self.parent[item] = parent = self.parent[parent]
        return parent

    def union(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def neuron_ids(n_rois: Mapping[str, int], matches: Iterable[tuple[str, str, Sequence[tuple[int, int]]]]
               ) -> dict[str, np.ndarray]:
    """Per session, an id per ROI. `matches` are (session_a, session_b, [(roi_a, roi_b), ...]). A chain that
    would join two ROIs of one session (a conflict of the pairwise matches) leaves those ROIs as they were:
    the later match is dropped."""
    uf = _UnionFind()
    members: dict[tuple[str, int], set[str]] = {}
    """Per root, the sessions its neuron has a ROI in."""
    for session, n in n_rois.items():
        for roi in range(n):
            members[uf.find((session, roi))] = {session}
    for session_a, session_b, pairs in matches:
        for roi_a, roi_b in pairs:
            a, b = (session_a, int(roi_a)), (session_b, int(roi_b))
            if not (0 <= a[1] < n_rois.get(session_a, 0) and 0 <= b[1] < n_rois.get(session_b, 0)):
                raise ValueError(f"ROI match {session_a}:{roi_a} <-> {session_b}:{roi_b} names a ROI the "
                                 "session does not have")
            ra, rb = uf.find(a), uf.find(b)
            if ra == rb:
                continue
            if members[ra] & members[rb]:
                continue
            uf.union(ra, rb)
            root = uf.find(ra)
            members[root] = members.pop(ra if root != ra else rb) | members[root]
    numbering: dict[tuple[str, int], int] = {}
    ids: dict[str, np.ndarray] = {}
    for session in sorted(n_rois):
        column = []
        for roi in range(n_rois[session]):
            root = uf.find((session, roi))
            column.append(numbering.setdefault(root, len(numbering)))
        ids[session] = np.asarray(column, dtype=np.int64)
    return ids
