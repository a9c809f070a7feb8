"""Softmax's max tree without its widening round (passes/lift_max_tree.py): exp's packed lookup
lifts the tree's k-bit result from its view. The secure softmax still matches numpy (rows
whose top entries lie within a grid step: the case a wrong max would show), with one round
fewer than with the pass removed; a round priced at nothing, or a reader that is not a
lifting lookup, keeps the widening."""
from __future__ import annotations

import numpy as np
import pytest

from fusec.build import Build, compile_graph, decode_outputs, encode_inputs
from fusec.ir.graph import Graph, TensorInfo
from fusec.passes import pipeline
from fusec.passes.options import CompileOptions
from fusec.runtime.gates.compare import MaxTreeNarrow
from fusec.runtime.gates.scalar import PackedLookup
from tests.harness import run_graph
from tests.test_softmax_grid import near_ties, scores_model

ROWS, COLS = 16, 128        # exp takes the packed lookup here (the one that can lift)


def scores() -> Graph:
    return scores_model(1.0, ROWS, COLS)


def trees(low) -> list[MaxTreeNarrow]:
    return [n.gate for n in low.gates.nodes if isinstance(n.gate, MaxTreeNarrow)]


def lifted(low) -> list[PackedLookup]:
    return [n.gate.stages[0] for n in low.gates.nodes
            if n.gate.kind == "scalar" and getattr(n.gate.stages[0], "lifted", False)]


def rounds(steps) -> int:
    return max(s.end for s in steps)


@pytest.mark.parametrize("seed", [0, 1])
def test_unwidened_tree_softmax_matches_numpy_one_round_sooner(seed, monkeypatch):
    x = near_ties(np.random.default_rng(seed), ROWS, COLS)
    opts = CompileOptions()
    ir, low, steps = compile_graph(scores(), opts)
    assert [t.widen for t in trees(low)] == [False] and len(lifted(low)) == 1
    b = Build(None, ir, opts, low, steps, {})
    out, logs = run_graph(low.gates, encode_inputs(b, {"x": x}, 1))
    got = decode_outputs(b, out)["y"]
    e = np.exp(x - x.max(1, keepdims=True))
    want = e / e.sum(1, keepdims=True)
    assert np.abs(got - want).max() < 2e-3, np.abs(got - want).max()
    assert logs[1].rounds == rounds(steps)
    monkeypatch.setattr(pipeline, "lift_max_tree", lambda gates, o: gates)
    _, low0, steps0 = compile_graph(scores(), opts)
    assert [t.widen for t in trees(low0)] == [True] and not lifted(low0)
    assert rounds(steps) == rounds(steps0) - 1


def test_a_free_round_keeps_the_widening():
    """At --round-worth 0 a round costs nothing, so the lift's extra key is not paid."""
    _, low, _ = compile_graph(scores(), CompileOptions(round_worth_mib=0.0))
    assert [t.widen for t in trees(low)] == [True] and not lifted(low)


def test_a_max_read_by_anything_else_is_widened():
    g = Graph("row_max")
    g.add_input("x", (ROWS, COLS))
    g.add_node("ReduceMax", ["x"], ["m"], infos=[TensorInfo((ROWS, 1))], axes=[1], keepdims=True)
    g.outputs = ["m"]
    _, low, _ = compile_graph(g, CompileOptions())
    assert trees(low) and all(t.widen for t in trees(low))
