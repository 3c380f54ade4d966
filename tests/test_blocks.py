"""Blocks: each visit to a context, labelled as the paper labels them (1, 2, 1', 2', 1'', ...), kept in
the subject's record and stamped on every trial record."""

from __future__ import annotations

import pytest

from protocols.blocks import Block, BlockHistory, BlockHistoryError, block_label, label_blocks
from protocols.trial_record import TrialRecord


def test_a_context_keeps_its_ordinal_and_gains_a_prime_per_return() -> None:
    contexts = ["tactile"] * 3 + ["auditory"] * 2 + ["tactile", "auditory", "reversed", "tactile"]
    blocks = label_blocks(contexts)
    assert [b.label for b in blocks] == ["1", "2", "1'", "2'", "3", "1''"]
    assert [b.index for b in blocks] == [1, 2, 3, 4, 5, 6]
    assert [b.context for b in blocks] == ["tactile", "auditory", "tactile", "auditory", "reversed",
                                           "tactile"]
    assert label_blocks([]) == [] and block_label(2, 3) == "2'''"
    with pytest.raises(ValueError, match="ordinal"):
        block_label(0, 0)
    with pytest.raises(ValueError, match="non-empty"):
        label_blocks(["tactile", ""])


def test_the_history_continues_a_block_across_sessions_and_starts_one_at_a_switch() -> None:
    history = BlockHistory()
    assert history.current is None and history.block_for("tactile") == Block(1, "tactile", "1")
    assert history.visits == []  # block_for only looks
    assert history.enter("tactile") == history.enter("tactile") == Block(1, "tactile", "1")
    assert history.enter("auditory") == Block(2, "auditory", "2")
    saved = history.to_list()  # subject.json
    assert saved == [{"block": 1, "context": "tactile", "label": "1"},
                     {"block": 2, "context": "auditory", "label": "2"}]
    next_day = BlockHistory.from_list(saved)
    assert next_day.enter("auditory") == Block(2, "auditory", "2")  # same context the next day: same block
    assert next_day.block_for("tactile") == Block(3, "tactile", "1'")
    assert next_day.enter("tactile") == Block(3, "tactile", "1'") == next_day.current
    assert BlockHistory.from_list(None).visits == []  # a subject.json written before blocks existed
    for bad in ([{"block": 1}], [{"context": "a"}, {"context": "a"}], "tactile"):
        with pytest.raises(BlockHistoryError):
            BlockHistory.from_list(bad)  # type: ignore[arg-type]


def test_a_trial_record_carries_its_block_and_old_lines_still_load() -> None:
    record = TrialRecord(trial=7, outcome="hit", context="tactile", block=3, block_label="1'")
    line = record.to_json()
    assert line["block"] == 3 and line["block_label"] == "1'"
    assert TrialRecord.from_json(line) == record
    old = {k: v for k, v in line.items() if k not in ("block", "block_label")}
    back = TrialRecord.from_json(old)
    assert back.block is None and back.block_label is None and "block" not in back.to_json()
