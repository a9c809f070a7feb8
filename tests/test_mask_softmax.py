"""passes/mask_softmax: a softmax's entries that a constant sets to -inf are left out (exactly 0),
and the max and exp see only the scores' own range. The oracle is numpy's softmax with -inf."""
from __future__ import annotations

import numpy as np
import pytest

from fusec.build import Build, compile_graph, decode_outputs, encode_inputs
from fusec.ir.graph import Graph, TensorInfo
from fusec.passes.options import CompileOptions
from fusec.passes.ranges import proven
from fusec.runtime.gates.compare import MaxTreeNarrow
from tests.harness import run_graph

B, D, K = 5, 4, 8


def T(*shape):
    return [TensorInfo(tuple(shape))]


def masked_model(mask: np.ndarray, seed: int = 0, bias: float = 0.0) -> tuple[Graph, np.ndarray]:
    """y = softmax(x @ W + mask) over rows (x @ W is secure: W is a weight)."""
    W = np.random.default_rng(seed).standard_normal((D, K))
    g = Graph("masked")
    g.add_input("x", (B, D))
    g.add_node("MatMul", ["x", g.add_const("W", W)], ["s"], infos=T(B, K))
    g.add_node("Add", ["s", g.add_const("mask", mask + bias * np.isfinite(mask))], ["sm"], infos=T(B, K))
    g.add_node("Softmax", ["sm"], ["y"], infos=T(B, K), axis=1)
    g.outputs = ["y"]
    return g, W


def causal(neg=-np.inf) -> np.ndarray:
    return np.where(np.tril(np.ones((B, K)), k=2) > 0, 0.0, neg)


def secure(g: Graph, opts: CompileOptions, x: np.ndarray):
    ir, low, steps = compile_graph(g, opts)
    b = Build(None, ir, opts, low, steps, {})
    out, _ = run_graph(low.gates, encode_inputs(b, {"x": x}, 1))
    return decode_outputs(b, out)["y"], ir, low


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("neg", [-np.inf, -3.4e38, np.finfo(np.float32).min])
@pytest.mark.parametrize("bias", [0.0, 0.75])
def test_masked_entries_are_exactly_zero_and_the_rest_is_softmax(neg, bias):
    mask = causal(neg)
    g, W = masked_model(mask, bias=bias)
    x = np.random.default_rng(1).standard_normal((B, D)) * 2
    got, ir, _ = secure(g, CompileOptions(), x)
    keep = np.isfinite(mask) & (mask > -1e15)
    want = softmax(np.where(keep, x @ W + bias, -np.inf))
    assert np.all(got[~keep] == 0.0)
    assert np.abs(got - want).max() < 3e-3, np.abs(got - want).max()
    assert "Where" in ir.ops() and "Gather" in ir.ops()


def test_the_max_and_exp_see_only_the_scores_range():
    """Without the pass the clamped mask (-65536) spans the max tree's view; with it, the max
    compares on the scores' width and the softmax's key shrinks."""
    g1, _ = masked_model(causal())
    g2, _ = masked_model(causal())
    on = off = CompileOptions()
    _, low_on, _ = compile_graph(g1, on)
    from fusec.passes import pipeline
    saved = list(pipeline.PASSES)
    try:
        pipeline.PASSES[:] = [p for p in saved if p.__name__ != "mask_softmax"]
        ir_off, low_off, _ = compile_graph(g2, off)
    finally:
        pipeline.PASSES[:] = saved
    (t_on,), (t_off,) = ([n.gate for n in low.gates.nodes if isinstance(n.gate, MaxTreeNarrow)]
                         for low in (low_on, low_off))
    assert t_on.view_bits + 8 <= t_off.view_bits
    assert low_on.gates.layout().set_nbytes < low_off.gates.layout().set_nbytes
    sub = next(n for n in ir_off.nodes() if n.op == "Sub")
    assert proven(ir_off, sub.outputs[0])[0] < -60000            # the clamped mask in the range


def test_left_alone_when_a_row_is_all_masked_or_for_the_sigma_build():
    mask = causal()
    mask[2] = -np.inf                                            # NaN in the model: keep today's path
    for g, opts in ((masked_model(mask)[0], CompileOptions()), (masked_model(causal())[0], CompileOptions(gates="sigma"))):
        ir, _, _ = compile_graph(g, opts)
        assert "Where" not in ir.ops() and "Gather" not in ir.ops()
