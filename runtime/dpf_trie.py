"""One DPF less-than key evaluated at many spread-out points: every tree node on their paths once.

A packed comparison with more points than an arc walk takes (runtime/dpf_arc.py,
``MAX_ARC_POINTS``) used to walk each point from the root: ``M * (depth + 1)`` AES per
element, 21,115 for a layer norm's rsqrt in 515 geometrically spaced pieces. Its points
``y_j = ~u + a_j`` (mod 2^n) are the compile-time offsets ``a_j`` shifted by one per-element
``base = ~u``: in sorted order they share long path prefixes, so the union of their paths
(a trie) has far fewer nodes than M whole paths. Each node costs one AES (a child from its
parent) and each distinct leaf node one more.

**A bound fixed at compile time.** At depth l the node of ``y_j`` is ``floor((base + a_j) /
2^s) mod 2^l`` (s = n - l). Writing ``base = B 2^s + r`` it is ``B + (a_j >> s) + [lo_s(a_j)
+ r >= 2^s]`` mod 2^l: B shifts every node alike, so how many distinct nodes the level has
depends on r only, and changes only where ``r = 2^s - lo_s(a_j)``. :meth:`DpfTrie.counts`
takes the maximum over those M + 1 residues, level by level, so :meth:`DpfTrie.aes_per_eval`
(the gate's ``cost()``) holds for every element. The CPU walk below computes exactly that
many nodes per level (padding a level with copies of its last node), so its AES counter
equals the bound; the GPU kernel (templates/_fss_trie.cu.j2: a block per element, a thread
per point, level by level through shared memory) computes only the nodes the points reach,
at most the bound. Which nodes are
computed depends on ``u``, which both parties hold (the opened masked value): nothing
secret.

The result is bit-identical to :func:`~fusec.runtime.dpf.lt_eval` at the same points
(tests/test_dpf_trie.py checks it against that independent walk). BERT-base s128: a layer
norm's rsqrt 21,115 -> about 8,500 AES per element, the softmax's reciprocal 1,088 -> about
505.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.dpf import DpfKey, leaf_bits, leaf_prefix_parity
from fusec.runtime.dpf_arc import MAX_ARC_POINTS, _leaf, _Offsets, _step
from fusec.runtime.prg import CpuPrg, default_prg
from fusec.runtime.tree import ONE, control_bit
from fusec.runtime.xp import np


#: Most points a trie walk takes: the GPU kernel runs one block per element and one thread per
#: point, each node in shared memory beside the AES tables (48 KB a block). Gates with more
#: points walk every point from the root.
MAX_TRIE_POINTS = 640


@dataclass(frozen=True)
class DpfTrie(_Offsets):
    """The compile-time plan of a walk over the union of the paths of the points ``~u + a_j``."""

    @classmethod
    def plan(cls, n: int, offsets) -> "DpfTrie | None":
        """The plan for more points than an arc walk takes, where it saves AES; else None."""
        trie = cls(n, tuple(offsets))
        if not MAX_ARC_POINTS < trie.points <= MAX_TRIE_POINTS or trie.aes_per_eval() >= trie.plain_aes_per_eval():
            return None
        return trie

    @property
    def order(self) -> tuple[int, ...]:
        """Column indices by ascending offset (the walk's order before the per-element wrap)."""
        return tuple(sorted(range(self.points), key=lambda j: (self.offsets[j], j)))

    @functools.cached_property
    def counts(self) -> tuple[int, ...]:
        """``counts[l - 1]``: the most distinct depth-l nodes the points reach, over every base."""
        return _level_counts(self.n, self.offsets)

    def aes_per_eval(self) -> int:
        """AES blocks per element: one per node computed, one per distinct leaf node."""
        return sum(self.counts) + (self.counts[-1] if self.counts else 1)


@functools.lru_cache(maxsize=64)
def _level_counts(n: int, offsets: tuple[int, ...]) -> tuple[int, ...]:
    a = np.unique(np.asarray(offsets, np.uint64))
    out = []
    for level in range(1, n - leaf_bits(n) + 1):
        s = np.uint64(n - level)
        lo, hi = a & ring.mask(int(s)), a >> s
        # the residues r = base mod 2^s where some point's node changes, and r = 0
        rs = np.unique(np.concatenate([[0], (np.uint64(1) << s) - lo[lo > 0]]).astype(np.uint64))
        nodes = (hi[None, :] + (lo[None, :] + rs[:, None] >= (np.uint64(1) << s))) & ring.mask(level)
        nodes.sort(axis=1)
        distinct = 1 + np.count_nonzero(nodes[:, 1:] != nodes[:, :-1], axis=1)
        out.append(int(distinct.max()))
    return tuple(out)


def lt_eval_trie(party: int, key: DpfKey, u: np.ndarray, trie: DpfTrie, prg: CpuPrg | None = None) -> np.ndarray:
    """XOR shares of ``[u - a_j < alpha]`` for keys from ``dpf.lt_keygen``: (N, M), column j for
    ``trie.offsets[j]`` (equal to ``dpf.lt_eval(party, key, u[:, None] - offsets)``), with
    exactly ``trie.aes_per_eval()`` AES per element."""
    prg = prg or default_prg()
    if key.n != trie.n:
        raise ParameterError(f"DPF trie of {trie.n} bits for a key of {key.n} bits")
    u = np.asarray(u, np.uint64).reshape(-1)
    N, M, n = u.shape[0], trie.points, trie.n
    if N != key.elements:
        raise ParameterError(f"DPF trie eval: {N} inputs for {key.elements} keys")
    y = ((~u)[:, None] + np.asarray(trie.offsets, np.uint64)[None, :]) & ring.mask(n)
    perm = np.argsort(y, axis=1, kind="stable")
    ys = np.take_along_axis(y, perm, axis=1)                # each row ascending
    rows = np.arange(N)[:, None]
    st, par = key.root[:, None, :], np.zeros((N, 1), np.uint64)
    rank = np.zeros((N, M), np.int64)                       # each point's node at the last depth
    for level, count in enumerate(trie.counts, start=1):
        prefix = ys >> np.uint64(n - level)
        new = np.ones((N, M), bool)
        new[:, 1:] = prefix[:, 1:] != prefix[:, :-1]
        nrank = np.cumsum(new, axis=1) - 1
        first = _first_points(new, nrank, count)            # (N, count): a point of each node
        parent = np.take_along_axis(rank, first, axis=1)
        d = np.take_along_axis(prefix, first, axis=1) & ONE
        st, t = _step(key, level, st[rows, parent], d, prg)
        par = par[rows, parent] ^ (d & (t ^ control_bit(st)))
        rank = nrank
    leaf = _leaf(key, st, prg)[rows, rank]                  # (N, M, 2)
    got = par[rows, rank] ^ leaf_prefix_parity(leaf, ys, leaf_bits(n))
    out = np.empty_like(got)
    np.put_along_axis(out, perm, got, axis=1)
    return out


def _first_points(new: np.ndarray, rank: np.ndarray, count: int) -> np.ndarray:
    """(N, count): for each distinct node of a row (by rank), the first point on it; the slots
    past a row's last node repeat its last node (computed again: the AES stays the bound)."""
    N = new.shape[0]
    distinct = rank[:, -1] + 1
    if int(distinct.max()) > count:
        raise AssertionError(f"a DPF trie level reached {int(distinct.max())} nodes, its bound is {count}")
    first = np.empty((N, count), np.int64)
    r, j = np.nonzero(new)
    first[r, rank[r, j]] = j
    slot = np.arange(count)[None, :]
    last = np.take_along_axis(first, (distinct - 1)[:, None], axis=1)
    return np.where(slot < distinct[:, None], first, last)


__all__ = ["DpfTrie", "MAX_TRIE_POINTS", "lt_eval_trie"]
