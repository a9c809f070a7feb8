"""Products and truncations opened on the bits their readers use (passes/narrow_opens.py).

The oracle is numpy integer arithmetic: a secret matmul read only by a free truncation, run
by both parties after the pass narrowed it, must reveal ``floor(X @ W / 2^s)`` (+1 at most:
the truncation's stochastic rounding), with fewer bytes than the whole-ring program. On a
compiled transformer the pass must narrow attention's products and leave the faithful
SIGMA build alone.
"""
from __future__ import annotations

import numpy as np
import pytest

from fusec.build import compile_model, load_build
from fusec.passes.narrow_opens import narrow_opens
from fusec.passes.options import CompileOptions
from fusec.runtime import ring
from fusec.runtime.gates.arith import MatMulPrivate, Mul
from fusec.runtime.gates.base import Chain
from fusec.runtime.gates.compare import MaxTreeNarrow
from fusec.runtime.gates.linear import Add, AddPublic, MatMulPublic, MulPublic
from fusec.runtime.gates.movement import Rearrange, SumAxis
from fusec.runtime.gates.scalar import PackedLookup
from fusec.runtime.gates.mul_narrow import MulNarrow, View
from fusec.runtime.gates.truncate_linear import TruncateLinear
from fusec.runtime.gates.truncation import TruncateNarrow
from fusec.runtime.graph import GateGraph
from tests.harness import run_graph
from tests.test_device_path import BERT_TINY

N_BITS, K, S = 50, 30, 12


def _attention_like(narrow: bool) -> GateGraph:
    """x, w (secret) -> t = trunc(x) read through nothing but the matmul -> z = t @ w ->
    trunc(z) on its proven K bits -> output (the whole ring)."""
    g = GateGraph()
    g.input("x", 4 * 8, N_BITS)
    g.input("w", 8 * 3, N_BITS)
    g.add("tx", TruncateNarrow(32, N_BITS, 24, 4), ["x"])
    g.add("xw", MatMulPrivate((4, 8), (8, 3), N_BITS), ["tx", "w"])
    g.add("z", TruncateNarrow(12, N_BITS, K, S), ["xw"])
    g.add("zz", Add(12, N_BITS), ["z", "z"])
    g.output("y", "zz")
    return narrow_opens(g, CompileOptions(bits=N_BITS)) if narrow else g


def test_a_matmul_read_by_a_truncation_runs_on_the_truncations_view():
    g = _attention_like(narrow=True)
    assert g.node("xw").gate.bits == K                      # the truncation reads K bits of it
    assert g.node("tx").gate.out_bits == K                  # and the matmul reads K bits of tx
    assert g.node("z").gate.out_bits == N_BITS              # read (through an add) by the output
    plain = _attention_like(narrow=False)
    assert plain.node("xw").gate.bits == N_BITS


def test_the_narrowed_program_computes_what_numpy_does_with_fewer_bytes():
    """y = 2 z, z = trunc(trunc(x) @ w): each truncation is floor + {0, 1}, so
    |z - x @ w / 2^16| <= sum |w| / 2^12 + 1 per column (numpy integers, both programs)."""
    rng = np.random.default_rng(7)
    x = rng.integers(-2 ** 18, 2 ** 18, (4, 8))             # |x| < 2^(24-2) - 2^4: tx's proof
    w = rng.integers(-2 ** 6, 2 ** 6, (8, 3))
    inputs = {"x": ring.from_signed(x.reshape(-1), N_BITS), "w": ring.from_signed(w.reshape(-1), N_BITS)}
    exact = (x @ w) / 2.0 ** (4 + S)
    bound = np.abs(w).sum(axis=0) / 2.0 ** S + 1
    sent = {}
    for narrow in (False, True):
        out, logs = run_graph(_attention_like(narrow), inputs, seed=b"narrow-opens")
        y = ring.to_signed(np.asarray(out["y"]).reshape(4, 3), N_BITS)
        assert np.all(y % 2 == 0) and np.all(np.abs(y / 2 - exact) <= bound), (narrow, y / 2 - exact)
        sent[narrow] = sum(sum(log.bytes_sent.values()) for log in logs)
    assert sent[True] < sent[False]


@pytest.mark.parametrize("gates, narrowed", [("fused", True), ("sigma", False)])
def test_attention_products_are_narrowed_in_the_fused_build_only(tmp_path, gates, narrowed):
    compile_model(BERT_TINY, tmp_path, CompileOptions(bits=37, gates=gates), batch=1, seq=8)
    nodes = load_build(tmp_path).gates.nodes
    mats = [n for n in nodes if isinstance(n.gate, MatMulPrivate)]
    assert mats
    assert any(n.gate.bits < 37 for n in mats) == narrowed
    chains = [n.gate for n in nodes if isinstance(n.gate, Chain) and isinstance(n.gate.stages[-1], TruncateNarrow)]
    assert any(g.stages[-1].out_bits < 37 for g in chains) == narrowed      # e.g. GELU's output truncation
    assert all(g.out_bits == g.stages[-1].out_bits for g in chains)
    # no output is narrower than what any reader takes of it, through ring-linear gates too
    readers = {}
    for n in nodes:
        for w in n.inputs:
            readers.setdefault(w, []).append(n)

    def takes(node) -> int:         # the most of its input a reader reads (this test's own table)
        g = node.gate
        if isinstance(g, TruncateNarrow):
            return g.view_bits
        if isinstance(g, TruncateLinear):       # a truncation moved into the linear map that reads it
            return g.view.bits
        if isinstance(g, MulNarrow):
            return max(v.bits if v else g.bits for v in g.views)
        if isinstance(g, (MatMulPrivate, Mul)):
            return g.bits
        if isinstance(g, (Add, AddPublic, MulPublic, MatMulPublic, Rearrange, SumAxis)):
            return max((takes(r) for r in readers.get(node.id, [])), default=37)
        if isinstance(g, Chain) and isinstance(g.stages[0], PackedLookup):
            return max(g.stages[0].view_bits, g.stages[0].vbits)
        if isinstance(g, MaxTreeNarrow):
            return g.in_view
        return 37

    width = {n.id: getattr(n.gate, "out_bits", None) or getattr(n.gate, "bits", None) for n in nodes}
    for n in nodes if narrowed else []:       # (SIGMA's gates have narrow wires of their own design)
        if width[n.id] and width[n.id] < 37 and readers.get(n.id):
            assert all(takes(r) <= width[n.id] for r in readers[n.id]), n.id


def test_a_product_read_through_a_view_keeps_the_views_width():
    g = GateGraph()
    g.input("a", 16, N_BITS)
    g.input("b", 16, N_BITS)
    g.add("p", MulNarrow(16, N_BITS, View(40, 10), None), ["a", "b"])
    g.add("t", TruncateNarrow(16, N_BITS, 36, 12), ["p"])
    g.output("y", "t")
    narrow_opens(g, CompileOptions(bits=N_BITS))
    assert g.node("p").gate.bits == 40                      # not 36: the product's own view of a needs 40


@pytest.mark.parametrize("n", [37, 50, 64])
@pytest.mark.parametrize("d", [20, 33])
def test_a_narrowed_product_reads_whole_ring_wires_under_forced_masks(n, d):
    """What the pass builds: a product on d < n bits whose inputs are n-bit wires. Under the
    masks 0, 2^n - 1, 2^(n-1) (and fresh ones) it must give (X @ W) mod 2^d and (x * y) mod 2^d
    exactly (numpy integers)."""
    from tests.harness import forced_masks, run_gate

    rng = np.random.default_rng(n + d)
    x = rng.integers(0, 1 << min(n, 62), (3, 5), dtype=np.uint64) & ring.mask(n)
    w = rng.integers(0, 1 << min(n, 62), (5, 2), dtype=np.uint64) & ring.mask(n)
    want_mm = (x @ w) & ring.mask(d)                          # uint64 arithmetic is mod 2^64, d < 64
    want_mul = (x * x[::-1]) & ring.mask(d)
    for masks in [None] + [[m, m] for m in forced_masks((15,), n)]:
        mm = MatMulPrivate((3, 5), (5, 2), d)
        got, _, _ = run_gate(mm, [x.reshape(-1), w.reshape(-1)], [n, n],
                             in_masks=None if masks is None else [masks[0], masks[1][:10]])
        assert np.array_equal(np.asarray(got).reshape(3, 2), want_mm)
        got, _, _ = run_gate(Mul(15, d), [x.reshape(-1), x[::-1].reshape(-1)], [n, n], in_masks=masks)
        assert np.array_equal(np.asarray(got).reshape(3, 5), want_mul)


def _truncation_then_folded_gelu(narrow: bool, n: int = 50):
    """x -> tx = trunc_4(x) -> GELU with a folded rescale by 12 (a lookup lifted from its view)
    -> output. The lookup reads only its k-bit view of tx, so the pass leaves tx on k bits."""
    from fusec.runtime.gates.catalog import gelu_spec

    spec = gelu_spec(n, 12)
    k = (int(8 * 2 ** 24) + (1 << (12 + spec.view_shift)) + 1).bit_length() + 2     # |x| < 8 at 24 bits
    g = GateGraph()
    g.input("x", 64, n)
    g.add("tx", TruncateNarrow(64, n, k + 4, 4), ["x"])
    g.add("gelu", Chain([PackedLookup(64, spec, view_bits=k, pre_shift=12)]), ["tx"])
    g.output("y", "gelu")
    return (narrow_opens(g, CompileOptions(bits=n)) if narrow else g), spec, k


def test_a_lookup_lifted_from_its_view_demands_only_the_view():
    """The truncation in front of a folded-rescale lookup opens k bits, not the lookup's value
    ring; both programs give GELU of the input (float oracle, the spec's error plus a couple of
    ulps of the two free truncations)."""
    from math import erf, sqrt

    narrowed, spec, k = _truncation_then_folded_gelu(True)
    plain, _, _ = _truncation_then_folded_gelu(False)
    assert plain.node("tx").gate.out_bits == N_BITS
    tx = narrowed.node("tx").gate
    assert tx.out_bits == max(k, tx.mid_bits + 1) < N_BITS        # the view (a truncation keeps a bit more)
    xs = np.linspace(-6.0, 6.0, 64)
    X = np.round(xs * 2.0 ** 28).astype(np.int64)           # 12 + 12 + 4 fractional bits
    want = np.array([0.5 * v * (1 + erf(v / sqrt(2))) for v in xs])
    sent = {}
    for name, g in (("plain", plain), ("narrowed", narrowed)):
        out, logs = run_graph(g, {"x": ring.from_signed(X, N_BITS)}, seed=b"lifted-view")
        got = ring.to_signed(np.asarray(out["y"]) & ring.mask(g.node("gelu").gate.out_bits),
                             g.node("gelu").gate.out_bits) / 2.0 ** spec.poly_scale
        assert np.abs(got - want).max() < 4e-3, (name, np.abs(got - want).max())
        sent[name] = sum(sum(log.bytes_sent.values()) for log in logs)
    assert sent["narrowed"] < sent["plain"]
