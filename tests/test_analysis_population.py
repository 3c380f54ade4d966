"""The study analysis' cores on synthetic populations whose coding directions are known."""

from __future__ import annotations

import numpy as np
import pytest

from rig.analysis.learning import learning_curve, trials_to_criterion
from rig.analysis.neuron_ids import neuron_ids
from rig.analysis.population import (
    BlockActivity,
    cd_similarity_matrix,
    cross_decoding_matrix,
    memory_trace,
)
from rig.analysis.trials import TrialInfo

N = 60


def _pattern(rng: np.random.Generator, orthogonal_to: np.ndarray | None = None) -> np.ndarray:
    w = rng.normal(0, 1, N)
    if orthogonal_to is not None:
        w -= (w @ orthogonal_to) * orthogonal_to
    return w / np.linalg.norm(w)


def _block(label: str, pattern: np.ndarray, rng: np.random.Generator, n: int = 80, gain: float = 3.0,
           ids: np.ndarray | None = None) -> BlockActivity:
    ids = np.arange(N) if ids is None else ids

    def side(sign: int) -> np.ndarray:
        mean = sign * gain * pattern[ids] / 2
        return mean + rng.normal(0, 1, (n, 4, ids.size))

    return BlockActivity(label, label.rstrip("'"), ("s",), side(+1), side(-1), ids)


def test_same_pattern_is_as_similar_as_its_ceiling_and_a_new_one_is_not():
    rng = np.random.default_rng(1)
    p1 = _pattern(rng)
    p2 = _pattern(rng, orthogonal_to=p1)
    blocks = [_block("1", p1, rng), _block("2", p2, rng), _block("1'", p1, rng)]
    sim = cd_similarity_matrix(blocks, "classic", n_repeats=6, min_half=10)
    assert sim.labels == ["1", "2", "1'"]
    ceiling = sim.ceiling[0]
    assert ceiling is not None and ceiling > 0.6
    assert sim.matrix[0][2] == pytest.approx(ceiling, abs=0.15)
    assert abs(sim.matrix[0][1]) < 0.3 and abs(sim.matrix[1][2]) < 0.3
    assert sim.half_trials[0][1] == 40


def test_cross_decoding_is_high_within_a_pattern_and_at_chance_across():
    rng = np.random.default_rng(2)
    p1 = _pattern(rng)
    p2 = _pattern(rng, orthogonal_to=p1)
    blocks = [_block("1", p1, rng), _block("2", p2, rng), _block("1'", p1, rng)]
    cross = cross_decoding_matrix(blocks, "classic", n_repeats=4, min_half=10)
    m = np.array(cross.matrix, dtype=float)
    assert m[0, 0] > 0.8 and m[0, 2] > 0.8 and m[2, 0] > 0.8
    assert abs(m[0, 1] - 0.5) < 0.15 and abs(m[1, 2] - 0.5) < 0.15


def test_comparisons_run_over_shared_neurons_and_too_few_trials_give_none():
    rng = np.random.default_rng(3)
    p = _pattern(rng)
    a = _block("1", p, rng, ids=np.arange(0, 40))
    b = _block("1'", p, rng, ids=np.arange(20, 60))
    few = _block("2", p, rng, n=6)
    sim = cd_similarity_matrix([a, b, few], "classic", n_repeats=3, min_half=10)
    assert sim.neurons[0][1] == 20
    assert sim.matrix[0][2] is None and sim.ceiling[2] is None
    assert sim.matrix[0][1] is not None and sim.matrix[0][1] > 0.3


def test_memory_trace_finds_a_trace_only_where_there_is_one():
    rng = np.random.default_rng(4)
    p1 = _pattern(rng)
    p2 = _pattern(rng, orthogonal_to=p1)
    cd2 = _block("2", p2, rng, n=120)
    prev = _block("1", p1, rng, n=150)
    ret = _block("1'", unit := (p1 + 0.5 * p2) / np.linalg.norm(p1 + 0.5 * p2), rng, n=150)
    assert unit.shape == (N,)
    trace = memory_trace(cd2, prev, ret, "classic", n_permutations=500)
    assert trace.return_context_accuracy > trace.prev_context_accuracy + 0.05
    assert trace.p_value < 0.05
    none = memory_trace(cd2, prev, _block("1'", p1, rng, n=150), "classic", n_permutations=500)
    assert none.p_value > 0.05


def test_neuron_ids_chain_across_sessions_and_refuse_conflicts():
    ids = neuron_ids({"d1": 3, "d2": 3, "d3": 2},
                     [("d1", "d2", [(0, 1), (2, 2)]), ("d2", "d3", [(1, 0), (2, 0)])])
    assert ids["d1"][0] == ids["d2"][1] == ids["d3"][0]
    assert ids["d2"][2] == ids["d1"][2] != ids["d3"][0]  # d3's ROI 0 is already d1:0, not also d1:2
    assert len(set(ids["d1"]) | set(ids["d2"]) | set(ids["d3"])) == 5
    with pytest.raises(ValueError, match="d2:7"):
        neuron_ids({"d1": 1, "d2": 1}, [("d1", "d2", [(0, 7)])])


def _trials(outcomes: list[str], block: int, label: str) -> list[TrialInfo]:
    return [TrialInfo("s1", i + 1, block, label, label, "left", o) for i, o in enumerate(outcomes)]


def test_trials_to_criterion_per_block():
    learning = ["error"] * 30 + ["hit"] * 90
    expert = ["hit"] * 50
    trials = _trials(learning, 1, "1") + _trials(expert, 2, "2") + _trials(["no_response"] * 5, 3, "1'")
    result = trials_to_criterion(trials, criterion=0.75, window=40)
    assert [(r.block_label, r.trials) for r in result] == [("1", 30 + 30), ("2", 40), ("1'", None)]
    curve = learning_curve(trials, window=40)
    assert [s[1] for s in curve.block_starts] == ["1", "2", "1'"]
    assert curve.performance[0] == 0.0 and curve.performance[120] == 1.0 and curve.performance[-1] is None
    with pytest.raises(ValueError, match="criterion"):
        trials_to_criterion(trials, criterion=1.5)
