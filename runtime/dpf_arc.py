"""One DPF less-than key evaluated at M points that lie on a short arc: shared tree prefixes.

The packed comparison of a scalar gate (runtime/gates/scalar.py, PackedLookup) evaluates one
less-than key (:func:`~fusec.runtime.dpf.lt_keygen`) at ``u - a_j`` for the gate's public
offsets ``a_j`` (0 and every breakpoint). :func:`~fusec.runtime.dpf.lt_eval` walks each point
from the root: ``M * (n - nu + 1)`` AES per element. But ``lt_eval(x) = prefix_parity(~x)``
and ``~(u - a_j) = ~u + a_j``: the walked points are ``base + d_j`` for one per-element
``base`` and compile-time ``d_j`` in ``[0, S]`` (S = the offsets' circular span). At depth l a
tree node covers ``2^(n-l)`` points, so the M paths pass through at most
``c_l = min(floor(S / 2^(n-l)) + 2, 2^l)`` consecutive nodes, and the top levels of the tree
are shared: expand those nodes once (range mode), and walk each point on its own only from
the first depth where ``c_l >= M`` (point mode). A node's prefix parity (the XOR of
``t_parent ^ t_child`` over the right turns above it) travels with the node.

The bound is a function of the offsets only, so the work per element, the AES count
(:meth:`DpfArc.aes_per_eval`, the gate's ``cost()``) and the kernel's shape are fixed at
compile time; which nodes are expanded depends on ``u``, which both parties hold (it is the
opened masked value). The result is bit-identical to :func:`~fusec.runtime.dpf.lt_eval` at
the same points (tests/test_dpf_arc.py checks it against that independent walk).
Where one far point (the cut between the top and the bottom piece) would widen every level's
range of nodes, the points are split into runs, each walked as its own arc (:class:`DpfArc`
picks the split with the fewest AES). BERT-base's GELU (n = 14, 12 points): 42 AES per element
instead of 96.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.dpf import DpfKey, leaf_bits, leaf_prefix_parity
from fusec.runtime.prg import TWEAK_LEAF_VALUE, CpuPrg, default_prg
from fusec.runtime.tree import ONE, clear_t, control_bit, times_bit, with_low_bit
from fusec.runtime.xp import np

#: Most points one element's arc walk handles (the GPU kernel keeps a node per point in registers;
#: gates with more points walk every point from the root).
MAX_ARC_POINTS = 16


#: At most this many runs per plan, ending before one of the CUT_CANDIDATES widest gaps between
#: the sorted offsets (the search over where to split stays a few dozen plans).
MAX_RUNS = 3
CUT_CANDIDATES = 6


@dataclass(frozen=True)
class _Offsets:
    """Domain bits ``n`` and one offset per output column, reduced mod 2^n."""

    n: int
    offsets: tuple[int, ...]

    def __post_init__(self) -> None:
        ring.check_bits(self.n, "DPF domain width")
        if not self.offsets:
            raise ParameterError("a DPF arc needs at least one offset")
        object.__setattr__(self, "offsets", tuple(int(a) & ((1 << self.n) - 1) for a in self.offsets))

    @property
    def points(self) -> int:
        return len(self.offsets)

    @property
    def depth(self) -> int:
        return self.n - leaf_bits(self.n)

    def plain_aes_per_eval(self) -> int:
        """What walking every point from the root costs (``dpf.lt_eval``)."""
        return self.points * (self.depth + 1)


@dataclass(frozen=True)
class DpfArc(_Offsets):
    """The compile-time plan of the walk at all the points: the offsets split into runs (circular
    stretches of the domain), each walked as one :class:`Arc`, where splitting saves AES: a lone
    far-away cut (the one between the top and the bottom piece) otherwise widens the range of
    nodes every level of the cluster expands."""

    @classmethod
    def plan(cls, n: int, offsets) -> "DpfArc | None":
        """The arc walk for these points, or None where it does not apply (more than
        MAX_ARC_POINTS points; or n > 62, where ``base + d`` would overflow a word)."""
        return cls(n, tuple(offsets)) if len(offsets) <= MAX_ARC_POINTS and n <= 62 else None

    @property
    def runs(self) -> tuple[tuple[tuple[int, ...], "Arc"], ...]:
        """(output columns, their arc) per run: the split into at most MAX_RUNS circular runs of
        the sorted distinct offsets, ending before wide gaps, with the fewest AES (ties: fewer runs)."""
        return _best_runs(self.n, self.offsets)

    def aes_per_eval(self) -> int:
        """AES blocks per element, all runs."""
        return sum(arc.aes_per_eval() for _, arc in self.runs)


@functools.lru_cache(maxsize=4096)
def _best_runs(n: int, offsets: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], "Arc"], ...]:
    """:attr:`DpfArc.runs`, computed once per plan (the compiler prices many candidate gates)."""
    values = sorted(set(offsets))
    size = 1 << n
    gaps = [((values[(i + 1) % len(values)] - v) % size) or size for i, v in enumerate(values)]
    # runs end before the widest gaps: splitting inside a tight cluster never pays
    ends = sorted(sorted(range(len(values)), key=lambda i: -gaps[i])[:CUT_CANDIDATES])
    best: tuple[int, list] | None = None
    for k in range(1, min(MAX_RUNS, len(ends)) + 1):
        for cuts in itertools.combinations(ends, k):
            runs = []
            for a, b in zip(cuts, cuts[1:] + (cuts[0] + len(values),)):
                group = {values[i % len(values)] for i in range(a + 1, b + 1)}
                cols = tuple(j for j, v in enumerate(offsets) if v in group)
                runs.append((cols, Arc(n, tuple(offsets[j] for j in cols))))
            aes = sum(arc.aes_per_eval() for _, arc in runs)
            if best is None or aes < best[0]:
                best = (aes, runs)
    return tuple(best[1])


@dataclass(frozen=True)
class Arc(_Offsets):
    """One run's plan: its points lie on a circular stretch of the domain."""

    @functools.cached_property
    def start(self) -> int:
        """The offset after the largest circular gap: the arc's first point relative to ``~u``."""
        offs = sorted(set(self.offsets))
        size = 1 << self.n
        gaps = [((offs[(i + 1) % len(offs)] - a) % size) or size for i, a in enumerate(offs)]
        return offs[(max(range(len(offs)), key=lambda i: gaps[i]) + 1) % len(offs)]

    @functools.cached_property
    def rel(self) -> tuple[int, ...]:
        """Each column's distance along the arc from :attr:`start` (in [0, span])."""
        return tuple((a - self.start) % (1 << self.n) for a in self.offsets)

    @property
    def span(self) -> int:
        return max(self.rel)

    def count(self, level: int) -> int:
        """Nodes at depth ``level`` that the arc's paths can pass through (an upper bound)."""
        return min((self.span >> (self.n - level)) + 2, 1 << level)

    def full(self, level: int) -> bool:
        """Whether the bound covers every node of the level (node indices then wrap mod 2^level)."""
        return self.count(level) == 1 << level

    @functools.cached_property
    def switch(self) -> int:
        """The first depth walked point by point (``depth + 1``: range mode down to the leaves)."""
        return next((lv for lv in range(1, self.depth + 1) if self.count(lv) >= self.points), self.depth + 1)

    @property
    def range_depth(self) -> int:
        """The deepest level expanded node by node (the point walks start below it)."""
        return min(self.switch, self.depth + 1) - 1

    def aes_per_eval(self) -> int:
        """AES blocks per element: one per expanded node, one per leaf block."""
        M, D = self.points, self.depth
        return sum(min(self.count(lv), M) for lv in range(1, D + 1)) + min(self.count(D), M)

    def parents(self, level: int) -> tuple[list[int], list[int]]:
        """For each node of ``level`` (local index i), its parent's local index when the
        level's first node is a left child (``lo`` even) and when it is a right child."""
        c, cp, full = self.count(level), self.count(level - 1), self.full(level - 1)
        even = [(i >> 1) % cp if full else i >> 1 for i in range(c)]
        odd = [((i + 1) >> 1) % cp if full else (i + 1) >> 1 for i in range(c)]
        return even, odd


def lt_eval_arc(party: int, key: DpfKey, u: np.ndarray, arc: DpfArc, prg: CpuPrg | None = None) -> np.ndarray:
    """XOR shares of ``[u - a_j < alpha]`` for keys from ``dpf.lt_keygen``: (N, M), column j for
    ``arc.offsets[j]`` (equal to ``dpf.lt_eval(party, key, u[:, None] - offsets)``)."""
    prg = prg or default_prg()
    if key.n != arc.n:
        raise ParameterError(f"DPF arc of {arc.n} bits for a key of {key.n} bits")
    u = np.asarray(u, np.uint64).reshape(-1)
    if u.shape[0] != key.elements:
        raise ParameterError(f"DPF arc eval: {u.shape[0]} inputs for {key.elements} keys")
    out = np.empty((u.shape[0], arc.points), np.uint64)
    for cols, run in arc.runs:
        out[:, list(cols)] = _walk_run(key, u, run, prg)
    return out


def _walk_run(key: DpfKey, u: np.ndarray, arc: Arc, prg: CpuPrg) -> np.ndarray:
    """One run's walk: (N, points of the run)."""
    n, D, nu = arc.n, arc.depth, leaf_bits(arc.n)
    m = ring.mask(n)
    base = ((~u) + np.uint64(arc.start)) & m
    cur, par = key.root[:, None, :].copy(), np.zeros((u.shape[0], 1), np.uint64)
    for lv in range(1, arc.range_depth + 1):          # range mode: the arc's nodes, shared
        lo = base >> np.uint64(n - lv)
        even, odd = (np.asarray(p, np.int64) for p in arc.parents(lv))
        parent = np.where((lo & ONE).astype(bool)[:, None], odd[None, :], even[None, :])
        d = (lo[:, None] + np.arange(arc.count(lv), dtype=np.uint64)[None, :]) & ONE
        st = np.take_along_axis(cur, parent[..., None], axis=1)
        cur, t = _step(key, lv, st, d, prg)
        par = np.take_along_axis(par, parent, axis=1) ^ (d & (t ^ control_bit(cur)))
    if arc.switch > D:                                # the leaves too: one block per node
        cur = _leaf(key, cur, prg)
    R = arc.range_depth
    Y = base[:, None] + np.asarray(arc.rel, np.uint64)[None, :]   # unwrapped: < 2^(n+1)
    r = (Y >> np.uint64(n - R)) - (base >> np.uint64(n - R))[:, None]
    if arc.full(R):
        r %= np.uint64(arc.count(R))
    r = r.astype(np.int64)
    st, acc = np.take_along_axis(cur, r[..., None], axis=1), np.take_along_axis(par, r, axis=1)
    y = Y & m
    if arc.switch <= D:                               # point mode: each point on its own
        for lv in range(arc.switch, D + 1):
            xi = (y >> np.uint64(n - lv)) & ONE
            st, t = _step(key, lv, st, xi, prg)
            acc ^= xi & (t ^ control_bit(st))
        st = _leaf(key, st, prg)
    return acc ^ leaf_prefix_parity(st, y, nu)


def _step(key: DpfKey, level: int, st: np.ndarray, d: np.ndarray, prg: CpuPrg) -> tuple[np.ndarray, np.ndarray]:
    """Children (direction ``d``) of the states ``st`` (N, K, 2) at depth ``level``; and the parents' t."""
    t = control_bit(st)
    raw = prg.child(clear_t(st), d)
    cws = np.broadcast_to(key.cw_seed[level - 1][:, None, :], st.shape)
    cw_dir = with_low_bit(cws, np.where(d.astype(bool), key.cw_tr[level - 1][:, None], cws[..., 0] & ONE))
    return raw ^ times_bit(t, cw_dir), t


def _leaf(key: DpfKey, st: np.ndarray, prg: CpuPrg) -> np.ndarray:
    """The corrected leaf blocks of the states ``st`` (N, K, 2)."""
    t = control_bit(st)
    return prg.value_blocks(st, 1, TWEAK_LEAF_VALUE)[..., 0, :] ^ times_bit(t, np.broadcast_to(key.cw_leaf[:, None, :], st.shape))


__all__ = ["DpfArc", "MAX_ARC_POINTS", "lt_eval_arc"]
