"""The pass pipeline on hand-built IR graphs: fusion, split, scales, specs, two-party results.

Oracles are plain numpy formulas written here (not the IR interpreter), and the secure
results come from the real gate graph run by two parties in threads with real keys.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from fusec.build import Build, compile_graph, decode_outputs, encode_inputs
from fusec.errors import CompileError
from fusec.ir.graph import Graph, TensorInfo
from fusec.passes.options import CompileOptions
from tests.harness import run_graph

erf = np.vectorize(math.erf)


def T(*shape):
    return [TensorInfo(shape)]


def gelu_chain(g: Graph, x: str, shape, out: str, form: str = "erf") -> None:
    """GELU written the way exporters write it (several elementwise nodes)."""
    c = lambda v: g.add_const(g.fresh("c"), np.asarray(v))  # noqa: E731
    if form == "erf":
        g.add_node("Div", [x, c(math.sqrt(2))], [out + "_a"], infos=T(*shape))
        g.add_node("Erf", [out + "_a"], [out + "_b"], infos=T(*shape))
        g.add_node("Add", [out + "_b", c(1.0)], [out + "_c"], infos=T(*shape))
        g.add_node("Mul", [x, out + "_c"], [out + "_d"], infos=T(*shape))
        g.add_node("Mul", [out + "_d", c(0.5)], [out], infos=T(*shape))
    else:  # gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        g.add_node("Pow", [x, c(3.0)], [out + "_p"], infos=T(*shape))
        g.add_node("Mul", [out + "_p", c(0.044715)], [out + "_q"], infos=T(*shape))
        g.add_node("Add", [x, out + "_q"], [out + "_r"], infos=T(*shape))
        g.add_node("Mul", [out + "_r", c(math.sqrt(2 / math.pi))], [out + "_s"], infos=T(*shape))
        g.add_node("Tanh", [out + "_s"], [out + "_t"], infos=T(*shape))
        g.add_node("Add", [out + "_t", c(1.0)], [out + "_u"], infos=T(*shape))
        g.add_node("Mul", [c(0.5), x], [out + "_v"], infos=T(*shape))
        g.add_node("Mul", [out + "_v", out + "_u"], [out], infos=T(*shape))


def block_model(seed: int = 0, form: str = "erf"):
    """x -> Linear -> GELU -> LayerNorm -> Linear -> Softmax, with numpy reference."""
    rng = np.random.default_rng(seed)
    B, D, H, O = 3, 8, 16, 5
    W1, b1 = rng.standard_normal((D, H)) * 0.5, rng.standard_normal(H) * 0.2
    gam, bet = 1 + 0.2 * rng.standard_normal(H), 0.2 * rng.standard_normal(H)
    W2 = rng.standard_normal((H, O)) * 0.5
    g = Graph("block")
    g.add_input("x", (B, D))
    g.add_node("MatMul", ["x", g.add_const("W1", W1)], ["h"], infos=T(B, H))
    g.add_node("Add", ["h", g.add_const("b1", b1)], ["hb"], infos=T(B, H))
    gelu_chain(g, "hb", (B, H), "act", form)
    g.add_node("LayerNorm", ["act", g.add_const("gamma", gam), g.add_const("beta", bet)], ["ln"], infos=T(B, H),
               axis=1, epsilon=1e-5)
    g.add_node("MatMul", ["ln", g.add_const("W2", W2)], ["o"], infos=T(B, O))
    g.add_node("Softmax", ["o"], ["y"], infos=T(B, O), axis=1)
    g.outputs = ["y"]

    def ref(x):
        h = x @ W1 + b1
        a = 0.5 * h * (1 + erf(h / math.sqrt(2))) if form == "erf" else \
            0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
        mu = a.mean(1, keepdims=True)
        v = ((a - mu) ** 2).mean(1, keepdims=True)
        ln = (a - mu) / np.sqrt(v + 1e-5) * gam + bet
        o = ln @ W2
        e = np.exp(o - o.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return g, ref, rng.standard_normal((B, D))


def secure(graph: Graph, opts: CompileOptions, feeds: dict):
    ir, low, steps = compile_graph(graph, opts)
    b = Build(None, ir, opts, low, steps, {})
    out, logs = run_graph(low.gates, encode_inputs(b, feeds, 1))
    return decode_outputs(b, out), ir, low, steps, logs


@pytest.mark.parametrize("gates", ["fused", "sigma"])
@pytest.mark.parametrize("form", ["erf", "tanh"])
def test_block_two_party_matches_numpy(gates, form):
    g, ref, x = block_model(form=form)
    got, ir, low, steps, logs = secure(g, CompileOptions(gates=gates), {"x": x})
    err = np.abs(got["y"] - ref(x)).max()
    # fused: specs within 8 ulps + rescales; SIGMA-style: 8-bit LUTs (coarser)
    assert err < (3e-3 if gates == "fused" else 3e-2), err
    assert logs[1].rounds == max(s.end for s in steps)


def test_gelu_chains_fuse_into_one_scalar():
    for form, label in (("erf", "gelu"), ("tanh", "gelu_tanh")):
        g, _, _ = block_model(form=form)
        ir, _, _ = compile_graph(g, CompileOptions())
        labels = [n.attrs["label"] for n in ir.nodes() if n.op == "Scalar"]
        assert labels.count(label) == 1, labels
        assert not [n for n in ir.nodes() if n.op in ("Erf", "Tanh", "Pow", "Div")]


def test_chains_are_labelled_and_whole_univariate_chains_fuse():
    g = Graph("chains")
    g.add_input("x", (4,))
    g.add_input("v", (4,))
    g.add_node("Sigmoid", ["x"], ["s"], infos=T(4))
    g.add_node("Mul", ["x", "s"], ["silu"], infos=T(4))
    g.add_node("Add", ["v", g.add_const("eps", np.asarray(1e-3))], ["ve"], infos=T(4))
    g.add_node("Sqrt", ["ve"], ["r"], infos=T(4))
    g.add_node("Div", ["silu", "r"], ["y"], infos=T(4))        # Div by a secret -> Mul(., Reciprocal)
    g.add_node("Mul", ["y", "y"], ["sq"], infos=T(4))
    g.add_node("Exp", ["sq"], ["z"], infos=T(4))              # exp(y*y): one custom univariate function of y
    g.outputs = ["z"]
    rng = np.random.default_rng(0)
    calib = {"x": rng.standard_normal(4), "v": rng.uniform(0.1, 4.0, 4)}    # v is a variance: positive
    with pytest.raises(CompileError, match="proven range reaches"):      # ...but nothing says so
        compile_graph(g.copy(), CompileOptions(calib=calib))
    ir, _, _ = compile_graph(g, CompileOptions(calib=calib, input_ranges={"v": (0.0, 4.0)}))
    scalars = {n.inputs[0]: n.attrs["label"] for n in ir.nodes() if n.op == "Scalar"}
    assert sorted(scalars.values()) == ["custom", "rsqrt", "silu"], scalars
    assert [n.op for n in ir.nodes() if n.op == "Mul" and n.attrs.get("const_scale") is None] == ["Mul"]


def _embedding_model(vocab=50, L=6, H=8):
    rng = np.random.default_rng(1)
    E, P = rng.standard_normal((vocab, H)), rng.standard_normal((L, H))
    W = rng.standard_normal((H, 3))
    g = Graph("emb")
    g.add_input("ids", (1, L), "int", "client", 1)
    g.add_node("Gather", [g.add_const("E", E), "ids"], ["e"], infos=T(1, L, H), axis=0)
    g.add_node("Add", ["e", g.add_const("P", P)], ["ep"], infos=T(1, L, H))
    g.add_node("Relu", ["ep"], ["r"], infos=T(1, L, H))
    g.add_node("MatMul", ["r", g.add_const("W", W)], ["y"], infos=T(1, L, 3))
    g.outputs = ["y"]
    return g, lambda ids: np.maximum(E[ids] + P, 0) @ W


def test_client_prefix_runs_at_the_input_owner():
    g, ref = _embedding_model()
    ids = np.array([[1, 7, 3, 49, 0, 2]])
    got, ir, low, _, _ = secure(g, CompileOptions(), {"ids": ids})
    client = [n.op for n in ir.nodes() if n.attrs.get("at") == "client"]
    assert client == ["Gather", "Add"]
    assert [n.op for n in ir.nodes() if n.op == "Share"] == ["Share"]
    assert np.abs(got["y"] - ref(ids)).max() < 2e-3


def test_private_weights_with_token_ids_is_an_error_that_says_why():
    g, _ = _embedding_model()
    with pytest.raises(CompileError, match="embedding table"):
        compile_graph(g, CompileOptions(weights="private"))


def test_huge_mask_constants_are_clamped_and_noted():
    g = Graph("mask")
    g.add_input("x", (2, 3))
    mask = np.array([[0.0, -3.4e38, 0.0], [0.0, 0.0, -3.4e38]])
    g.add_node("Add", ["x", g.add_const("mask", mask)], ["s"], infos=T(2, 3))
    g.add_node("Softmax", ["s"], ["y"], infos=T(2, 3), axis=1)
    g.outputs = ["y"]
    opts = CompileOptions()
    x = np.array([[0.5, 1.0, -0.25], [2.0, -1.0, 0.0]])
    got, ir, _, _, _ = secure(g, opts, {"x": x})
    assert any("clamped" in n for n in ir.meta["notes"])
    want = np.exp(x + np.where(mask < 0, -np.inf, 0))
    want /= want.sum(1, keepdims=True)
    assert np.abs(got["y"] - want).max() < 2e-3
    assert np.all(got["y"][mask < 0] == 0)


def test_overflow_risk_is_warned_with_the_tensor_name():
    g = Graph("big")
    g.add_input("x", (4,))
    g.add_node("Mul", ["x", g.add_const("k", np.asarray(3e6))], ["huge"], infos=T(4))
    g.add_node("Relu", ["huge"], ["y"], infos=T(4))
    g.outputs = ["y"]
    ir, _, _ = compile_graph(g, CompileOptions(bits=37, frac=12, weight_frac=12))
    assert any("huge" in n and "overflow" in n for n in ir.meta["notes"]), ir.meta["notes"]


def test_padding_ablation_flag_is_loud_and_marks_the_build():
    g, _, _ = block_model()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ir, low, _ = compile_graph(g, CompileOptions(insecure_mask_dependent_shapes=True))
    assert any("INSECURE" in str(x.message) for x in w)
    assert ir.meta["insecure"] and any("INSECURE" in n for n in ir.meta["notes"])
    assert low.gates.layout().insecure       # another layout digest: padded keys are refused


def test_compiled_ir_round_trips_to_the_same_key_layout():
    g, _, _ = block_model()
    opts = CompileOptions()
    ir, low, _ = compile_graph(g, opts)
    again = Graph.from_json(ir.to_json(include_consts=True))
    from fusec.passes.pipeline import build_gates
    low2, _ = build_gates(again, opts)
    assert low2.gates.layout().digest() == low.gates.layout().digest()
    assert again.to_json() == ir.to_json()


def test_key_order_is_topological_and_by_round():
    g, _, _ = block_model()
    _, low, steps = compile_graph(g, CompileOptions())
    pos = {n.id: i for i, n in enumerate(low.gates.nodes)}
    for n in low.gates.nodes:
        assert all(pos[w] < pos[n.id] for w in n.inputs)
    starts = [s.start for s in steps]
    assert starts == sorted(starts)


def test_fused_gates_use_fewer_rounds_than_sigma():
    g, _, x = block_model()
    fused = compile_graph(g.copy(), CompileOptions(gates="fused"))[2]
    sigma = compile_graph(g.copy(), CompileOptions(gates="sigma"))[2]
    assert max(s.end for s in fused) < max(s.end for s in sigma)


@pytest.mark.parametrize("gates", ["fused", "sigma"])
@pytest.mark.parametrize("k", [3, 768])
def test_reduce_mean_is_the_mean(gates, k):
    """A secure ReduceMean against numpy: 1/k must not be rounded to the weights' 12 bits
    (1/768 at 12 bits is 5/4096, 6% low, which a cosine check cannot see)."""
    g = Graph("mean")
    g.add_input("x", (2, k))
    g.add_node("Mul", ["x", g.add_const("w", np.full((k,), 1.5))], ["y"], infos=T(2, k))
    g.add_node("ReduceMean", ["y"], ["m"], infos=T(2, 1), axes=[1], keepdims=True)
    g.outputs = ["m"]
    x = np.random.default_rng(k).uniform(0.5, 2.0, (2, k))
    got, *_ = secure(g, CompileOptions(gates=gates, input_ranges={"x": (-4.0, 4.0)}), {"x": x})
    want = (1.5 * x).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(got["m"], want, rtol=2e-3, atol=2e-3)
