"""A truncation read only by a shrinking public matmul opens the product (runtime/gates/truncate_matmul.py,
passes/fuse_truncate_matmul.py).

The oracle is numpy's integers: for X proven inside the view and a mask r, the output must be
``((floor(X / 2^s) + c) @ W) mod 2^w`` with ``c = [lo_s(X) + lo_s(r) >= 2^s]``, the truncation's
carry, computed here from X and r alone. On a compiled BERT the pass must fuse every GELU with
its second MLP matmul, send fewer bytes with the same rounds, and leave the sigma build alone.
"""
from __future__ import annotations

import numpy as np
import pytest

from fusec.build import compile_model
from fusec.passes.options import CompileOptions
from fusec.runtime.gates.linear import MatMulPublic
from fusec.runtime.gates.mul_narrow import View
from fusec.runtime.gates.truncate_matmul import TruncateMatMulPublic
from fusec.runtime.gates.truncation import TruncateNarrow
from tests.harness import measure_gate
from tests.test_device_path import BERT_TINY


def _oracle(X, R, W, s, w):
    lo = (1 << s) - 1
    c = ((X & lo) + (R.reshape(X.shape) & lo)) >= (1 << s)
    y = (X >> s) + c.astype(np.int64)
    return [int(v) % (1 << w) for v in (y.astype(object) @ W.astype(object)).reshape(-1)]


@pytest.mark.parametrize("n, k, s, w", [(37, 30, 12, 33), (50, 44, 25, 43), (64, 60, 20, 62)])
def test_the_fused_gate_is_the_truncation_times_w_under_forced_masks(n, k, s, w):
    rng = np.random.default_rng(n)
    shape, K, N = (2, 3, 16), 16, 4
    h = (1 << (k - 2)) - (1 << s)
    X = rng.integers(-h + 1, h, shape)
    X.reshape(-1)[:4] = [-h + 1, h - 1, 0, -1]                    # the view's edges
    W = rng.integers(-(1 << 6), 1 << 6, (K, N))
    g = TruncateMatMulPublic(shape, W, n, View(k, s), w)
    E = X.size
    for masks in ([0] * E, [(1 << n) - 1] * E, [1 << (n - 1)] * E, [(1 << s) - 1] * E, [1 << (k - 1)] * E, None):
        R = None if masks is None else np.asarray(masks, np.uint64)
        out, cost, logs = measure_gate(g, X.reshape(-1), n, masks=None if R is None else [R])
        got = [int(v) % (1 << w) for v in out]
        if R is not None:
            assert got == _oracle(X, R.astype(np.int64) if n < 64 else R.astype(object), W, s, w)
        else:        # fresh masks: floor(X/2^s) @ W plus c @ W, c in {0, 1} per element
            floor = (X >> s).astype(object) @ W.astype(object)
            lo, hi = np.minimum(W, 0).sum(axis=0), np.maximum(W, 0).sum(axis=0)
            diff = [((gv - int(f)) + (1 << (w - 1))) % (1 << w) - (1 << (w - 1))
                    for gv, f in zip(got, floor.reshape(-1))]
            assert all(lo[i % N] <= d <= hi[i % N] for i, d in enumerate(diff)), diff[:8]
        assert cost == g.cost() and cost.rounds == 1 and cost.aes == 0


def test_it_sends_a_quarter_of_the_truncations_bytes_on_a_four_to_one_matmul():
    n, k, s, w = 50, 44, 25, 43
    x_shape, W = (128, 3072), np.ones((3072, 768), np.int64)
    fused = TruncateMatMulPublic(x_shape, W, n, View(k, s), w).cost()
    trunc = TruncateNarrow(128 * 3072, n, k, s, out_bits=w).cost()
    assert MatMulPublic(x_shape, W, n).cost().open_bits == 0
    assert fused.open_bits * 128 * 768 * 4 == trunc.open_bits * 128 * 3072
    assert fused.key_bits * 128 * 768 < trunc.key_bits * 128 * 3072


@pytest.fixture(scope="module")
def bert_builds(tmp_path_factory):
    out = {}
    for gates in ("fused", "sigma"):
        d = tmp_path_factory.mktemp(f"bert-{gates}")
        out[gates] = compile_model(str(BERT_TINY), str(d), CompileOptions(bits=50, gates=gates), seq=8, batch=1)
    return out


def test_bert_fuses_each_gelu_with_its_second_mlp_matmul(bert_builds):
    kinds = [n.gate.kind for n in bert_builds["fused"].gates.nodes]
    gelus = [n for n in bert_builds["fused"].gates.nodes if n.id.startswith("gelu_")]
    assert gelus and kinds.count("truncate_matmul_public") == len(gelus)
    assert all(type(gl.gate.stages[-1]) is not TruncateNarrow for gl in gelus)
    assert "truncate_matmul_public" not in [n.gate.kind for n in bert_builds["sigma"].gates.nodes]
