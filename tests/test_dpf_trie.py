"""The trie walk of a DPF less-than key at many points (runtime/dpf_trie.py).

Oracles, each independent of the code under test:

* the values: ``dpf.lt_eval`` walking every point from the root (the same key), and the
  two parties' XOR equal to ``[u - a_j < alpha]`` computed on Python integers;
* the AES: the CPU's counter equals ``N * aes_per_eval()``;
* the bound: for a small domain, every base ``~u`` in it enumerated, the most distinct
  depth-l prefixes the points reach, counted with Python sets, equals ``counts`` exactly.
"""
from __future__ import annotations

import numpy as np
import pytest

from fusec.runtime import dpf, ring
from fusec.runtime.dpf_arc import MAX_ARC_POINTS, DpfArc
from fusec.runtime.dpf_trie import DpfTrie, lt_eval_trie
from fusec.runtime.prg import CpuPrg
from fusec.runtime.rng import DealerRng


def _geometric(n: int, per_octave: int, top: int) -> tuple[int, ...]:
    """Offsets like a layer norm's rsqrt breakpoints: 0 and a geometric series."""
    return (0, *sorted({int(2 ** (i / per_octave)) for i in range(per_octave * top)}))


TRIES = [DpfTrie(47, _geometric(47, 12, 40)),                                      # rsqrt-like, 481 points
         DpfTrie(22, (0, *np.random.default_rng(1).integers(1, 1 << 22, 67).tolist())),   # reciprocal-like
         DpfTrie(12, tuple(range(0, 4000, 97))),
         DpfTrie(40, (0, 5, (1 << 40) - 3, *range(100, 100 + 40 * 1000, 1000))),     # wrapping
         DpfTrie(20, (0, 0, 7, 7, *range(3, 60, 3))),                                # repeated offsets
         DpfTrie(64, _geometric(64, 4, 60)),
         DpfTrie(9, tuple(range(0, 500, 17)))]


@pytest.mark.parametrize("trie", TRIES, ids=lambda t: f"n{t.n}-M{t.points}")
def test_the_trie_walk_equals_the_plain_walks_at_the_plans_aes(trie):
    n, N = trie.n, 257
    rng = DealerRng(b"trie-%d-%d" % (n, trie.points))
    alpha, u = rng.ring(N, n), rng.ring(N, n)
    a = np.asarray(trie.offsets, np.uint64)
    j = np.arange(60) % len(a)
    u[:30] = (alpha[:30] + a[j[:30]] + np.uint64(1)) & ring.mask(n)      # a point at alpha
    u[30:60] = (alpha[30:60] + a[j[30:]]) & ring.mask(n)                 # ... and one just past it
    u[60:64] = [0, ring.mask(n), 1, ring.mask(n) - np.uint64(1)]
    pts = (u[:, None] - a[None, :]) & ring.mask(n)
    shares = []
    for party, key in enumerate(dpf.lt_keygen(rng, alpha, n)):
        prg = CpuPrg()
        got = lt_eval_trie(party, key, u, trie, prg)
        assert prg.aes_calls == N * trie.aes_per_eval()
        np.testing.assert_array_equal(got, dpf.lt_eval(party, key, pts))
        shares.append(got)
    want = [[int(int(p) < int(al)) for p in row] for row, al in zip(pts, alpha)]
    assert (shares[0] ^ shares[1]).tolist() == want


@pytest.mark.parametrize("offsets", [tuple(range(0, 4000, 97)), (0, 1, 2, 3, 2048, 2049, 4095, 100, 1000, 3000),
                                     (0, *np.random.default_rng(3).integers(0, 1 << 12, 40).tolist())])
def test_the_bound_is_the_most_nodes_any_base_reaches(offsets):
    n = 12
    trie = DpfTrie(n, offsets)
    most = [max(len({((b + a) % (1 << n)) >> (n - level) for a in offsets}) for b in range(1 << n))
            for level in range(1, trie.depth + 1)]
    assert list(trie.counts) == most


def test_plans_past_the_arc_walks_points_only_and_only_where_cheaper():
    few = tuple(range(0, 16 * 100, 100))
    assert len(few) == MAX_ARC_POINTS and DpfTrie.plan(30, few) is None and DpfArc.plan(30, few) is not None
    rsqrt = DpfTrie.plan(47, _geometric(47, 12, 40))
    assert rsqrt is not None and rsqrt.aes_per_eval() * 3 < rsqrt.plain_aes_per_eval()
    spread = DpfTrie(8, tuple(range(0, 256, 8)))          # 32 points, one per level-5 node: no sharing to gain
    assert DpfTrie.plan(8, spread.offsets) is None or spread.aes_per_eval() < spread.plain_aes_per_eval()


@pytest.mark.parametrize("alpha", [0, (1 << 10) - 1, 1 << 9, 1, 333])
def test_every_input_at_ten_bits_against_the_integers(alpha):
    """n = 10 (three tree levels above the leaf), 24 points wrapping past 2^n: every u, with
    alpha forced to 0, 2^n - 1, 2^(n-1) and two more; both parties' XOR against Python ints."""
    n = 10
    trie = DpfTrie(n, (0, 1, 2, 5, 64, 65, 127, 128, 129, 300, 301, 511, 512, 513, 700, 701, 900, 1000,
                       1020, 1021, 1022, 1023, 7, 8))
    u = np.arange(1 << n, dtype=np.uint64)
    rng = DealerRng(b"trie-ten-%d" % alpha)
    k0, k1 = dpf.lt_keygen(rng, np.full(u.size, alpha, np.uint64), n)
    got = lt_eval_trie(0, k0, u, trie) ^ lt_eval_trie(1, k1, u, trie)
    want = [[int((int(x) - a) % (1 << n) < alpha) for a in trie.offsets] for x in u]
    assert got.tolist() == want
