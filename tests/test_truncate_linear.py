"""A truncation read only by a shrinking public linear map opens the map's output
(runtime/gates/truncate_linear.py, passes/fuse_truncate_linear.py).

The oracle is numpy's integers: for X proven inside the view and a mask r, the output must be
``L((X >> s) + c) mod 2^w`` with ``c = [lo_s(X) + lo_s(r) >= 2^s]``, the truncation's carry,
computed here from X and r alone, for L a public matmul and a sum over an axis. On a compiled
BERT the pass must fuse every GELU with its second MLP matmul and every layer norm's squares
with their sum, keep the rounds, send fewer bytes, and leave the sigma build alone.
"""
from __future__ import annotations

import numpy as np
import pytest

from fusec.build import compile_model
from fusec.passes.fuse_truncate_linear import fuse_truncate_linear
from fusec.passes.options import CompileOptions
from fusec.runtime import ring
from fusec.runtime.gates.linear import Add, MatMulPublic
from fusec.runtime.gates.movement import SumAxis
from fusec.runtime.gates.mul_narrow import View
from fusec.runtime.gates.truncate_linear import TruncateLinear
from fusec.runtime.gates.truncation import TruncateNarrow
from fusec.runtime.graph import GateGraph
from tests.harness import measure_gate, run_graph
from tests.test_device_path import BERT_TINY

SHAPE, K, N = (2, 3, 16), 16, 4
WEIGHT = np.random.default_rng(5).integers(-(1 << 6), 1 << 6, (K, N))


def _maps(n):
    """(gate, numpy oracle on signed object arrays) for each linear map."""
    return {"matmul": (MatMulPublic(SHAPE, WEIGHT, n), lambda y: y @ WEIGHT.astype(object)),
            "sum": (SumAxis(SHAPE, (2,), n), lambda y: y.sum(axis=2, keepdims=True))}


def _oracle(X, R, L, s, w):
    lo = (1 << s) - 1
    c = (X & lo) + (R.reshape(X.shape) & lo) >= (1 << s)
    return [int(v) % (1 << w) for v in np.asarray(L((X >> s) + c.astype(object))).reshape(-1)]


@pytest.mark.parametrize("linear", ["matmul", "sum"])
@pytest.mark.parametrize("n, k, s, w", [(37, 30, 12, 33), (50, 44, 25, 43), (64, 60, 20, 62)])
def test_the_fused_gate_is_the_map_of_the_truncation_under_forced_masks(linear, n, k, s, w):
    rng = np.random.default_rng(n)
    h = (1 << (k - 2)) - (1 << s)
    X = rng.integers(-h + 1, h, SHAPE).astype(object)
    X.reshape(-1)[:4] = [-h + 1, h - 1, 0, -1]                    # the view's edges
    lin, L = _maps(n)[linear]
    g = TruncateLinear(lin, X.size, n, View(k, s), w)
    E = X.size
    for mask in (0, (1 << n) - 1, 1 << (n - 1), (1 << s) - 1, 1 << (k - 1), None):
        R = None if mask is None else np.full(E, mask, np.uint64)
        out, cost, _ = measure_gate(g, np.asarray(X.reshape(-1), np.int64), n, masks=None if R is None else [R])
        got = [int(v) % (1 << w) for v in out]
        if R is not None:
            assert got == _oracle(X, np.asarray([mask] * E, object), L, s, w)
        else:        # fresh masks: L(X >> s) plus L(c), c in {0, 1} per element
            base = np.asarray(L(X >> s)).reshape(-1)
            ones = [np.asarray(L((np.arange(E) == i).reshape(SHAPE).astype(object))).reshape(-1) for i in range(E)]
            lo_c = sum(np.minimum(o, 0) for o in ones)
            hi_c = sum(np.maximum(o, 0) for o in ones)
            diff = [((gv - int(b)) + (1 << (w - 1))) % (1 << w) - (1 << (w - 1)) for gv, b in zip(got, base)]
            assert all(lo_c[i] <= d <= hi_c[i] for i, d in enumerate(diff)), diff[:8]
        want = g.cost()       # key per output element, rounded up when the inputs do not divide evenly
        assert want.key_bits - 1 < cost.key_bits <= want.key_bits                   # and the open to whole bytes
        assert want.open_bits <= cost.open_bits < want.open_bits + 8 / g.elements
        assert cost.rounds == want.rounds == 1 and cost.aes == want.aes == 0


def test_it_sends_a_quarter_of_the_truncations_bytes_on_a_four_to_one_matmul():
    n, k, s, w = 50, 44, 25, 43
    x_shape, W = (128, 3072), np.ones((3072, 768), np.int64)
    fused = TruncateLinear(MatMulPublic(x_shape, W, n), 128 * 3072, n, View(k, s), w).cost()
    trunc = TruncateNarrow(128 * 3072, n, k, s, out_bits=w).cost()
    assert fused.open_bits * 128 * 768 * 4 == trunc.open_bits * 128 * 3072
    assert fused.key_bits * 128 * 768 < trunc.key_bits * 128 * 3072


@pytest.fixture(scope="module")
def bert_builds(tmp_path_factory):
    out = {}
    for gates in ("fused", "sigma"):
        d = tmp_path_factory.mktemp(f"bert-{gates}")
        out[gates] = compile_model(str(BERT_TINY), str(d), CompileOptions(bits=50, gates=gates), seq=8, batch=1)
    return out


def _squares_summed(fuse: bool) -> GateGraph:
    """x -> a truncation of its own (as a layer norm's squares in BERT-base) -> its sum over
    the last axis -> doubled (the output reads the whole ring)."""
    g = GateGraph()
    g.input("x", 4 * 32, 50)
    g.add("t", TruncateNarrow(4 * 32, 50, 40, 12, out_bits=46), ["x"])
    g.add("s", SumAxis((4, 32), (1,), 50), ["t"])
    g.add("y", Add(4, 50), ["s", "s"])
    g.output("out", "y")
    return fuse_truncate_linear(g, CompileOptions(bits=50)) if fuse else g


def test_a_truncation_node_of_its_own_goes_into_its_sum():
    """The sum reads the truncation's input through its view; the truncation node is dropped;
    the sum of floor(x / 2^12) + c comes out, with fewer bytes (numpy integers)."""
    g = _squares_summed(fuse=True)
    assert [n.id for n in g.nodes] == ["x", "s", "y", "out"] and g.node("s").inputs == ["x"]
    assert type(g.node("s").gate) is TruncateLinear
    x = np.random.default_rng(3).integers(-(1 << 37), 1 << 37, (4, 32))
    floor = (x >> 12).sum(axis=1)
    sent = {}
    for fuse in (False, True):
        out, logs = run_graph(_squares_summed(fuse), {"x": ring.from_signed(x.reshape(-1), 50)}, seed=b"sq")
        y = ring.to_signed(np.asarray(out["out"]).reshape(-1), 50)
        assert np.all(y % 2 == 0) and np.all((y // 2 >= floor) & (y // 2 <= floor + 32)), (fuse, y // 2 - floor)
        sent[fuse] = sum(sum(log.bytes_sent.values()) for log in logs)
    assert sent[False] - sent[True] >= 128 * 46 // 8 - 4 * 46 // 8 - 8     # 128 words opened become 4


def test_bert_fuses_each_gelu_with_its_second_mlp_matmul(bert_builds):
    nodes = bert_builds["fused"].gates.nodes
    fused = [n.gate for n in nodes if n.gate.kind == "truncate_linear"]
    gelus = [n for n in nodes if n.id.startswith("gelu_")]
    assert gelus and [type(g.linear) for g in fused].count(MatMulPublic) == len(gelus)
    assert all(type(gl.gate.stages[-1]) is not TruncateNarrow for gl in gelus)
    ids = {n.id for n in nodes}
    assert all(w in ids for n in nodes for w in n.inputs)        # nothing reads a dropped truncation
    assert "truncate_linear" not in [n.gate.kind for n in bert_builds["sigma"].gates.nodes]


def test_every_input_under_every_mask_at_ten_bits():
    """n = 10, view 9 bits, shift 2, output 9 bits, L = 3 x (a 1 x 1 matmul): every admissible
    X under every mask, against numpy's (3 ((X >> 2) + c)) mod 2^9."""
    n, k, s, w = 10, 9, 2, 9
    h = (1 << (k - 2)) - (1 << s)
    xs = np.arange(-h + 1, h)
    X = np.repeat(xs, 1 << n)
    R = np.tile(np.arange(1 << n), xs.size)
    g = TruncateLinear(MatMulPublic((X.size, 1), np.array([[3]]), n), X.size, n, View(k, s), w)
    out, cost, _ = measure_gate(g, X, n, masks=[R.astype(np.uint64)])
    c = ((X & ((1 << s) - 1)) + (R & ((1 << s) - 1))) >= (1 << s)
    want = (3 * ((X >> s) + c)) % (1 << w)
    assert np.array_equal(np.asarray(out, np.int64) % (1 << w), want)
    assert cost.rounds == 1 and cost.aes == 0
