"""The fused softmax's coarse max (``CompileOptions.softmax_max_grid``, passes/expand_blocks,
passes/lower.coarse_max): the max tree drops low bits for free, its error stays within the
grid the range analysis and the exp fit allow for, and softmax is unchanged (numpy oracle)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fusec.build import Build, compile_graph, decode_outputs, encode_inputs
from fusec.ir.graph import Graph, TensorInfo
from fusec.passes.options import CompileOptions
from fusec.passes.ranges import proven
from fusec.runtime.gates.compare import MaxTreeNarrow
from fusec.runtime.gates.linear import MulPublic
from tests.harness import run_graph

ROWS, COLS = 6, 16


def scores_model(scale: float, rows: int = ROWS, cols: int = COLS) -> Graph:
    """y = softmax(scale * x) over rows: the max reads a rescaled product (the tree's free
    truncation of the unrescaled tensor), as attention scores do."""
    g = Graph("softmax_rows")
    g.add_input("x", (rows, cols))
    g.add_node("Mul", ["x", g.add_const("k", np.asarray(scale))], ["s"], infos=[TensorInfo((rows, cols))])
    g.add_node("Softmax", ["s"], ["y"], infos=[TensorInfo((rows, cols))], axis=1)
    g.outputs = ["y"]
    return g


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def near_ties(rng, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Rows whose largest entries lie within a grid step of each other and of the max, the
    case a coarse max gets wrong if its error were larger than the grid."""
    x = rng.uniform(-4, 4, (rows, cols))
    for i in range(rows):
        top = rng.uniform(-2, 3)
        x[i, :5] = top - rng.uniform(0, 2.0 ** -5, 5)       # five entries within 1/32 of each other
    return x


def trees(low) -> list[MaxTreeNarrow]:
    return [n.gate for n in low.gates.nodes if isinstance(n.gate, MaxTreeNarrow)]


@pytest.mark.parametrize("seed", [0, 1])
def test_coarse_max_softmax_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    x = near_ties(rng)
    g = scores_model(1.0)
    opts = CompileOptions()
    ir, low, steps = compile_graph(g, opts)
    out, _ = run_graph(low.gates, encode_inputs(Build(None, ir, opts, low, steps, {}), {"x": x}, 1))
    got = decode_outputs(Build(None, ir, opts, low, steps, {}), out)["y"]
    want = softmax(x)
    assert np.abs(got - want).max() < 2e-3, np.abs(got - want).max()
    assert np.allclose(got.sum(1), 1.0, atol=5e-3)


def test_coarse_max_drops_bits_within_the_grid():
    """Against the exact max (grid 0): fewer DCF levels per comparison, a local scale-back,
    and an error bound 2^c (+1 for the free truncation) that fits the grid in ulps."""
    g_exact, g_coarse = scores_model(0.7), scores_model(0.7)
    exact = CompileOptions(softmax_max_grid=0.0)
    coarse = CompileOptions()
    ir_e, low_e, _ = compile_graph(g_exact, exact)
    ir_c, low_c, _ = compile_graph(g_coarse, coarse)
    (te,), (tc,) = trees(low_e), trees(low_c)
    tree_id = next(n.id for n in low_c.gates.nodes if n.gate is tc)
    assert tree_id.endswith("/grid")                   # the coarse tree, then its scale-back by 2^c
    back = next(n for n in low_c.gates.nodes if isinstance(n.gate, MulPublic) and n.inputs == [tree_id])
    c = int(back.gate.scalar).bit_length() - 1
    assert c > 0 and int(back.gate.scalar) == 2 ** c
    pre = tc.pre_shift - c                             # > 0: the tree reads the unrescaled tensor
    assert 2 ** c + (1 if pre else 0) <= coarse.softmax_max_grid * 2.0 ** coarse.frac
    assert tc.view_bits <= te.view_bits - c + 1        # c fewer levels (the exact tree's slack is a bit less)
    assert low_c.gates.layout().set_nbytes < low_e.gates.layout().set_nbytes
    # the range analysis and the exp's fit allow for it: x - max <= grid, sum in [e^-g, k e^g]
    hi_e, hi_c = (proven(ir, next(n for n in ir.nodes() if n.op == "Sub").outputs[0])[1] for ir in (ir_e, ir_c))
    assert hi_c - hi_e == pytest.approx(coarse.softmax_max_grid, abs=2.0 ** -9)
    nexp = next(n for n in ir_c.nodes() if n.op == "Scalar" and n.attrs.get("label") == "nexp")
    assert nexp.attrs["domain"][1] == coarse.softmax_max_grid
    rec = next(n for n in ir_c.nodes() if n.op == "Scalar" and n.attrs.get("label") == "reciprocal")
    assert rec.attrs["domain"] == pytest.approx([math.exp(-2 ** -5), COLS * math.exp(2 ** -5)])


def test_sigma_build_and_grid_zero_keep_the_exact_max():
    for opts in (CompileOptions(softmax_max_grid=0.0), CompileOptions(gates="sigma")):
        ir, _, _ = compile_graph(scores_model(0.7), opts)
        m = next(n for n in ir.nodes() if n.op == "ReduceMax")
        assert "grid" not in m.attrs
        nexp = next(n for n in ir.nodes() if n.op == "Scalar" and n.attrs.get("label") == "nexp")
        assert nexp.attrs["domain"] == [None, 0.0]


def test_a_grid_finer_than_one_ulp_keeps_the_max_exact():
    """At frac 4 an ulp (1/16) is coarser than the grid (1/32): no bit may be dropped, and the
    free truncation's own ulp would not fit either, so the tree is the exact one."""
    opts = CompileOptions(frac=4, weight_frac=4)
    _, low, _ = compile_graph(scores_model(0.7), opts)
    assert all(t.pre_shift == 0 for t in trees(low))
