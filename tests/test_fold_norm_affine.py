"""A layer norm's affine tail folded into the public matmuls that read it (passes/fold_norm_affine):
the same function (numpy oracle, in float and through both parties), matmuls that read the
normalising product, the residual's copy truncated off the critical path, fewer rounds."""
from __future__ import annotations

import numpy as np
import pytest

from fusec.build import Build, compile_graph, decode_outputs, encode_inputs
from fusec.ir.graph import Graph, TensorInfo
from fusec.ir.ops import interpret
from fusec.passes import pipeline
from fusec.passes.fold_norm_affine import fold_norm_affine
from fusec.passes.options import CompileOptions
from tests.harness import run_graph

T, D, H = 8, 16, 32
EPS = 1e-5


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"g1": rng.uniform(0.5, 1.5, D), "b1": rng.normal(0, 0.3, D), "w1": rng.normal(0, 0.25, (D, H)),
            "c1": rng.normal(0, 0.1, H), "w2": rng.normal(0, 0.2, (H, D)), "g2": rng.uniform(0.5, 1.5, D),
            "b2": rng.normal(0, 0.3, D), "w3": rng.normal(0, 0.25, (D, D))}


def post_norm_block(w: dict[str, np.ndarray]) -> Graph:
    """BERT's shape: y = LN(x); s = y + ReLU(y W1 + c1) W2; z = LN(s); out = reshape(z) W3
    (GPT-2's Gemm reads its layer norm through a reshape that keeps the last axis)."""
    g = Graph("post_norm")
    g.add_input("x", (1, T, D))
    c = {k: g.add_const(k, v) for k, v in w.items()}
    t = TensorInfo
    g.add_node("LayerNorm", ["x", c["g1"], c["b1"]], ["y"], infos=[t((1, T, D))], axis=-1, epsilon=EPS)
    g.add_node("MatMul", ["y", c["w1"]], ["h0"], infos=[t((1, T, H))])
    g.add_node("Add", ["h0", c["c1"]], ["h1"], infos=[t((1, T, H))])
    g.add_node("Relu", ["h1"], ["h"], infos=[t((1, T, H))])
    g.add_node("MatMul", ["h", c["w2"]], ["f"], infos=[t((1, T, D))])
    g.add_node("Add", ["y", "f"], ["s"], infos=[t((1, T, D))])
    g.add_node("LayerNorm", ["s", c["g2"], c["b2"]], ["z"], infos=[t((1, T, D))], axis=-1, epsilon=EPS)
    g.add_node("Reshape", ["z"], ["z2"], infos=[t((T, D))], shape=[T, D])
    g.add_node("MatMul", ["z2", c["w3"]], ["out"], infos=[t((T, D))])
    g.outputs = ["out"]
    return g


def layer_norm(x, gamma, beta):
    mu = x.mean(-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + EPS) + beta


def reference(x, w):
    y = layer_norm(x, w["g1"], w["b1"])
    s = y + np.maximum(y @ w["w1"] + w["c1"], 0) @ w["w2"]
    return layer_norm(s, w["g2"], w["b2"]).reshape(T, D) @ w["w3"]


def without_fold(monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "PASSES", [p for p in pipeline.PASSES if p is not fold_norm_affine])


def test_the_folded_graph_computes_the_same_function_in_float():
    w = weights()
    x = np.random.default_rng(1).normal(0, 2, (1, T, D))
    g = pipeline.run_passes(post_norm_block(w), CompileOptions())
    assert np.allclose(interpret(g, {"x": x})["out"], reference(x, w), rtol=1e-9, atol=1e-9)


def test_matmuls_read_the_normalising_product_and_the_residual_reads_a_truncated_norm():
    g = pipeline.run_passes(post_norm_block(weights()), CompileOptions())
    for mm in (n for n in g.nodes() if n.op == "MatMul" and g.is_const(n.inputs[1])):
        src = g.producer(mm.inputs[0])
        while src.op in ("Reshape", "Rescale"):
            src = g.producer(src.inputs[0])
        if src.op == "Relu" or src.op == "Scalar":     # W2 reads the activation
            continue
        # the product d * rsqrt, not gamma * (...) + beta
        assert src.op == "Mul" and not any(g.is_const(i) for i in src.inputs), (mm.name, src.op, src.name)
    residual = next(n for n in g.nodes() if n.op == "Add" and not any(g.is_const(i) for i in n.inputs))
    norm_in = next(i for i in residual.inputs if g.producer(i).op == "Rescale")
    assert g.producer(g.producer(norm_in).inputs[0]).attrs.get("truncate_early")


def test_sigma_gates_keep_their_order():
    g = pipeline.run_passes(post_norm_block(weights()), CompileOptions(gates="sigma"))
    assert not any(n.attrs.get("truncate_early") for n in g.nodes())
    mm = next(n for n in g.nodes() if n.op == "MatMul" and n.inputs[1] == "w1")
    src = mm.inputs[0]
    while g.producer(src).op == "Rescale":
        src = g.producer(src).inputs[0]
    assert src == "y"           # the layer norm's output, gamma and beta applied


@pytest.mark.parametrize("seed", [0, 1])
def test_secure_block_matches_numpy_with_fewer_rounds(seed, monkeypatch):
    w = weights(seed)
    x = np.random.default_rng(10 + seed).normal(0, 2, (1, T, D))
    opts = CompileOptions()
    ir, low, steps = compile_graph(post_norm_block(w), opts)
    b = Build(None, ir, opts, low, steps, {})
    out, _ = run_graph(low.gates, encode_inputs(b, {"x": x}, 1))
    got, want = decode_outputs(b, out)["out"], reference(x, w)
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max(), np.abs(got - want).max()
    without_fold(monkeypatch)
    _, low0, steps0 = compile_graph(post_norm_block(w), opts)
    rounds = lambda st: max(s.end for s in st)        # noqa: E731
    assert rounds(steps) < rounds(steps0), (rounds(steps), rounds(steps0))
