"""The arc walk (runtime/dpf_arc.py) against the plain per-point walk (dpf.lt_eval), and its AES count.

The oracle is independent of the code under test: ``dpf.lt_eval`` walks every point from the root
(and its own tests check it against ``[x < alpha]`` in the clear); here both parties' shares
must XOR to ``[u - a_j < alpha]`` computed with numpy integers, and equal lt_eval's share by share.
"""
from __future__ import annotations

import numpy as np
import pytest

from fusec.runtime import dpf
from fusec.runtime.dpf_arc import Arc, DpfArc, lt_eval_arc
from fusec.runtime.prg import CpuPrg
from fusec.runtime.rng import DealerRng

ARCS = [
    (14, (0, 8687 - 4096, -4096, -3000, -1000, 0x10, 500, 1200, 2200, 3333, 4000, 4591)),   # GELU-like, wraps
    (14, (0, 76, 136, 206, 336, 495, 3175, 15889, 16047, 16177, 16247, 16307)),             # BERT's: two runs
    (20, (0, 5, 1 << 18, (1 << 18) + 3, 700000, 700001, 700002)),                          # three runs
    (17, (0, 5, 9, 65536 + 6, 131072 - 40, 1 << 16)),
    (9, (0, 1, 2, 3)),                      # shallow tree (2 levels)
    (6, (0, 7, 63, 31)),                    # n <= 7: the root's leaf only
    (20, (0, 1 << 19, (1 << 20) - 1, 12345)),   # span over half the domain: every level full at the top
    (12, (0, 100, 100, 4000)),              # a repeated offset: two equal columns
    (16, (0,)),                             # one point: the plain walk
    (30, tuple(range(0, 16 * 1000, 1000))),     # 16 points, range mode through several levels
    (10, tuple(range(1000, 1016))),         # dense: range mode down to the leaves
]


@pytest.mark.parametrize("n,offsets", ARCS)
def test_arc_walk_matches_plain_walk_and_the_clear_predicate(n, offsets):
    N = 3000
    rng, prg = DealerRng(bytes([n, len(offsets)]) * 16), CpuPrg()
    arc = DpfArc(n, offsets)
    g = np.random.default_rng(n)
    m = (1 << n) - 1
    alpha = g.integers(0, 1 << n, N, dtype=np.uint64)
    u = g.integers(0, 1 << n, N, dtype=np.uint64)
    # force the interesting cases: points at alpha, alpha +- 1, the domain's ends
    a = np.asarray(arc.offsets, np.uint64)
    u[:100] = (alpha[:100] + a[np.arange(100) % len(a)] + np.uint64(1)) & np.uint64(m)
    u[100:200] = (alpha[100:200] + a[np.arange(100) % len(a)]) & np.uint64(m)
    u[200:210] = np.uint64(0)
    u[210:220] = np.uint64(m)
    k0, k1 = dpf.lt_keygen(rng, alpha, n, prg)
    pts = (u[:, None] - a[None, :]) & np.uint64(m)
    clear = (pts < alpha[:, None]).astype(np.uint64)
    shares = []
    for party, key in ((0, k0), (1, k1)):
        before = prg.aes_calls
        got = lt_eval_arc(party, key, u, arc, prg)
        assert prg.aes_calls - before == N * arc.aes_per_eval()
        np.testing.assert_array_equal(got, dpf.lt_eval(party, key, pts, prg))
        shares.append(got)
    np.testing.assert_array_equal(shares[0] ^ shares[1], clear)


def test_arc_costs_are_the_gelu_saving_and_never_above_the_plain_walk():
    gelu = DpfArc(14, (0, *range(-3800, 4560, 760)))
    assert gelu.points == 12 and gelu.aes_per_eval() < gelu.plain_aes_per_eval() * 0.8
    # BERT-base's GELU: the cut between the top and the bottom piece (3175) walks on its own
    bert = DpfArc(14, (0, 76, 136, 206, 336, 495, 3175, 15889, 16047, 16177, 16247, 16307))
    assert [cols for cols, _ in bert.runs] in ([(6,), (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11)],
                                               [(0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11), (6,)])
    assert (bert.aes_per_eval(), bert.plain_aes_per_eval()) == (42, 96)
    for n, offsets in ARCS:
        arc = DpfArc(n, offsets)
        assert arc.aes_per_eval() <= min(arc.plain_aes_per_eval(), Arc(n, offsets).aes_per_eval())
        assert sorted(j for cols, _ in arc.runs for j in cols) == list(range(arc.points))
        for cols, run in arc.runs:
            assert run.offsets == tuple(arc.offsets[j] for j in cols)
            assert 0 <= run.span < 1 << n and all(0 <= d <= run.span for d in run.rel)
