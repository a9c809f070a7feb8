"""Proven ranges: an interval for every secret tensor that holds for EVERY admissible input.

Calibration (``passes/calibrate``) says what values one sample reaches; this pass says what
values *any* input can reach, so that the compiler may narrow a ring, a comparison or a
lookup to the bits a value really needs and stay correct off the calibration distribution
(DESIGN §4 "widths from proven ranges"). Public weights are known, so the analysis is
interval arithmetic plus two facts interval arithmetic alone would miss:

- **Row norms.** A bound on the L2 norm of the vectors along an axis (``Bound.l2``). A
  normalisation ``d * rsqrt(sum(d*d) * c + eps)`` has every row of norm at most
  ``1/sqrt(c)`` whatever d is; a public matmul maps a row of norm R to entries
  ``|y_j| <= ||W[:, j]||_2 R`` and to a row of norm ``||W||_2 R`` (spectral norm); a product
  of two secret matrices is bounded entry-wise by Cauchy-Schwarz, ``|a . b| <= R_a R_b``.
  Worst-case sums ``sum |W| * bound`` are 10-20x looser on transformer layers.
- **Block facts.** ``x - max(x)`` is non-positive; a ``Scalar`` carrying a ``domain``
  (set by ``passes/expand_blocks`` from the block's construction: softmax's row sum lies in
  ``[1, k]``) has its input clipped to it.

Where the input owner computes in plaintext (``at == "client"``), ranges follow the same
rules from the build's input contract: token ids range over the embedding table; a float
input over ``graph.meta["input_contract"][name]`` (``--input-range``, else the calibration
data widened, see :func:`input_contract`), which ``fusec run`` enforces before sharing.

Results: ``graph.meta["proven"][tensor] = [lo, hi]`` (floats; ``inf`` where nothing can be
proven, e.g. private weights, with a note naming the tensor), and :func:`width_bits` for
the ring bits a value needs at its scale. The bounds are of the real-valued computation;
the fixed-point program deviates from it by the specs' stated errors, so every bound is
widened by :data:`MARGIN` (relative) and :data:`ABS_MARGIN` (absolute) before use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fusec.ir import scalar_fn
from fusec.ir.graph import Graph, Node
from fusec.ir.nonlinear import CONTRACTIONS  # labels with |f(x)| <= |x|: row norms pass through
from fusec.ir.ops import is_movement, run_node
from fusec.passes.options import CompileOptions

INF = math.inf
MARGIN = 2.0 ** -5        # relative widening of every bound (approximation errors of the specs)
ABS_MARGIN = 2.0 ** -6    # absolute widening (a few ulps at any useful scale)
CONTRACT_WIDEN = 4.0      # default float input contract: calibrated max |x| times this

#: ops that move (or only rescale) values: data movement by its op category, plus these
PASS_THROUGH = frozenset({"Rescale", "Share", "Cast"})


@dataclass
class Bound:
    lo: float
    hi: float
    l2: dict[int, float] = field(default_factory=dict)   # axis -> bound on the L2 norm of vectors along it
    l1: dict[int, float] = field(default_factory=dict)   # axis -> bound on the L1 norm (softmax rows: 1)

    @property
    def mag(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    @staticmethod
    def unbounded() -> "Bound":
        return Bound(-INF, INF)


def width_bits(lo: float, hi: float, scale: int, slack: int = 1) -> int | None:
    """Bits of a signed ring that holds every value of [lo, hi] at ``scale`` fractional
    bits, plus ``slack`` extra bits (1 = the sign bit is never reached by |x|): None when
    the interval is unbounded."""
    m = max(abs(lo), abs(hi))
    if not math.isfinite(m):
        return None
    q = math.ceil(m * 2.0 ** scale) + 1
    return max(1, q.bit_length()) + 1 + slack


def proven(graph: Graph, t: str) -> tuple[float, float]:
    """The proven interval of tensor ``t`` (through Rescales the later passes insert);
    (-inf, inf) when the analysis has not seen it."""
    pr = graph.meta.get("proven", {})
    while t not in pr:
        p = graph.producer(t)
        if p is None or p.op not in ("Rescale", "Identity"):
            return (-INF, INF)
        t = p.inputs[0]
    lo, hi = pr[t]
    return (float(lo), float(hi))


def tensor_bits(graph: Graph, t: str, scale: int | None = None, slack: int = 1) -> int | None:
    """Ring bits tensor ``t`` needs at ``scale`` (default: its own) by its proven range."""
    lo, hi = proven(graph, t)
    s = graph.info(t).scale if scale is None else scale
    return width_bits(lo, hi, s, slack) if s is not None else None


def narrow_bits(graph: Graph, t: str, shift: int, scale: int | None = None) -> int | None:
    """The view width k for a free truncation of ``t`` by ``shift`` (``TruncateNarrow``):
    its proven values at its scale (or ``scale``) satisfy ``-2^(k-2) <= x < 2^(k-2) - 2^shift``."""
    lo, hi = proven(graph, t)
    s = graph.info(t).scale if scale is None else scale
    m = max(abs(lo), abs(hi))
    if s is None or not math.isfinite(m):
        return None
    q = math.ceil(m * 2.0 ** s) + (1 << shift) + 1
    return q.bit_length() + 2


def input_contract(graph: Graph, opts: CompileOptions, calib: dict | None) -> dict[str, list[float]]:
    """The range each float graph input is promised to lie in (refused outside it at run time).

    ``--input-range NAME=LO:HI`` wins; otherwise the calibration data's max |x| times
    :data:`CONTRACT_WIDEN`, rounded up to a power of two, symmetric. Integer inputs (token
    ids) need no contract here: the vocabulary bounds them and ``fusec run`` checks it.
    """
    given = dict(getattr(opts, "input_ranges", None) or {})
    out = {}
    for name in graph.inputs:
        if graph.info(name).dtype != "float":
            continue
        if name in given:
            lo, hi = given[name]
        else:
            v = np.asarray((calib or {}).get(name, np.ones(1)), np.float64)
            m = float(np.max(np.abs(v[np.isfinite(v)]))) if v.size else 1.0
            m = 2.0 ** math.ceil(math.log2(max(m * CONTRACT_WIDEN, 2.0 ** -8)))
            lo, hi = -m, m
        out[name] = [float(lo), float(hi)]
    return out


# ------------------------------------------------------------------------------ helpers
def _const_bound(c: np.ndarray) -> Bound:
    c = np.asarray(c, np.float64)
    if c.size == 0:
        return Bound(0.0, 0.0)
    return Bound(float(np.min(c)), float(np.max(c)))


def _mul_iv(a: Bound, b: Bound) -> tuple[float, float]:
    with np.errstate(invalid="ignore"):
        corners = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi]
    corners = [0.0 if math.isnan(c) else c for c in corners]
    return min(corners), max(corners)


def _spectral_norm(W: np.ndarray) -> float:
    """Largest singular value (an upper bound: exact eigenvalue of the smaller Gram, padded)."""
    W = np.asarray(W, np.float64)
    G = W.T @ W if W.shape[0] >= W.shape[1] else W @ W.T
    return math.sqrt(max(float(np.linalg.eigvalsh(G)[-1]), 0.0)) * (1 + 1e-9) + 1e-12


def _movement_l2(node: Node, in_shape: tuple[int, ...], l2: dict[int, float]) -> list[dict[int, float]]:
    """Per output: the axes along which every vector is a duplicate-free subset of one input
    vector along an axis with a known L2 bound (the op is run on indices, as the lowering
    does, so this is exact for every movement op)."""
    if node.op in ("Rescale", "Identity", "Cast", "Share"):
        return [dict(l2)]
    size = int(np.prod(in_shape))
    if not l2 or size == 0 or size > 1 << 24 or len([t for t in node.inputs if t]) != 1:
        return [{} for _ in node.outputs]
    try:
        outs = run_node(node.op, [np.arange(size, dtype=np.int64).reshape(in_shape)], node.attrs)
    except Exception:  # noqa: BLE001  (an op we cannot replay on indices keeps no norm)
        return [{} for _ in node.outputs]
    multi = np.array(np.unravel_index(np.arange(size), in_shape)).T    # (size, ndim)
    result: list[dict[int, float]] = []
    for o in outs:
        o = np.asarray(o)
        got: dict[int, float] = {}
        for a_in, R in l2.items():
            rest = tuple(d for i, d in enumerate(in_shape) if i != a_in)
            row_id = np.ravel_multi_index(np.delete(multi, a_in, axis=1).T, rest) if rest else np.zeros(size, np.int64)
            rid = row_id[o]
            for b in range(o.ndim):
                if o.shape[b] == 0:
                    continue
                r = np.moveaxis(rid, b, -1).reshape(-1, o.shape[b])
                e = np.sort(np.moveaxis(o, b, -1).reshape(-1, o.shape[b]), axis=1)
                if (r == r[:, :1]).all() and (e[:, 1:] != e[:, :-1]).all():
                    got[b] = min(got.get(b, INF), R)
        result.append(got)
    return result


# ------------------------------------------------------------------------------ the analysis
class _Ranges:
    def __init__(self, graph: Graph, opts: CompileOptions):
        self.g, self.o = graph, opts
        self.b: dict[str, Bound] = {}
        self.notes: list[str] = []

    def get(self, t: str) -> Bound:
        if t in self.b:
            return self.b[t]
        if self.g.is_const(t):
            return _const_bound(self.g.const(t))
        return Bound.unbounded()

    def shape(self, t: str) -> tuple[int, ...]:
        return self.g.info(t).shape

    # -------------------------------------------------------------- rules
    def visit(self, n: Node) -> None:
        rule = RULES.get(n.op)
        if is_movement(n.op) or n.op in PASS_THROUGH:
            out = self.movement(n)
        elif rule is not None:
            out = rule(self, n)
        else:
            out = None
        if out is None:
            out = Bound.unbounded()
            if any(self.g.info(t).visibility == "secret" for t in n.outputs):
                self.notes.append(f"ranges: no proven bound for {n!r} ({n.op}); its output uses the full ring")
        outs = out if isinstance(out, list) else [out] * len(n.outputs)
        for t, b in zip(n.outputs, outs):
            self.b[t] = Bound.unbounded() if math.isnan(b.lo) or math.isnan(b.hi) else b   # nan: inf * 0

    def movement(self, n: Node) -> Bound:
        ins = [t for t in n.inputs if t]
        if n.op == "Gather":            # data from a table (const) or a secret, indices public
            src = self.get(ins[0])
            if self.g.is_const(ins[0]) and self.g.is_const(ins[1]):
                return _const_bound(run_node("Gather", [self.g.const(ins[0]), self.g.const(ins[1])], n.attrs)[0])
            return Bound(src.lo, src.hi)
        if n.op == "Concat":
            bs = [self.get(t) for t in ins]
            return Bound(min(b.lo for b in bs), max(b.hi for b in bs))
        src = self.get(ins[0])
        lo, hi = src.lo, src.hi
        if n.op == "Cast" and n.attrs.get("to", "float") != "float":   # int: toward 0; bool: 0 or 1
            return Bound(min(lo, 0.0), max(hi, 1.0)) if n.attrs["to"] == "bool" else \
                Bound(min(lo, 0.0), max(hi, 0.0), dict(src.l2))
        if n.op in ("Pad", "Im2Col"):
            v = float(n.attrs.get("value", 0.0) or 0.0)
            lo, hi = min(lo, v), max(hi, v)
        l2s = _movement_l2(n, self.shape(ins[0]), src.l2) if n.op not in ("Pad", "Im2Col") else [{}]
        return [Bound(lo, hi, l2) for l2 in l2s] if len(n.outputs) > 1 else Bound(lo, hi, l2s[0])

    def add_sub(self, n: Node) -> Bound:
        a, b = (self.get(t) for t in n.inputs)
        grid = self._minus_max_grid(n) if n.op == "Sub" else None
        if grid is not None:        # the max may be off by its grid (softmax's coarse max)
            return Bound(min(a.lo - a.hi, 0.0) - grid, grid)
        centred = self._centred(n, a) if n.op == "Sub" else None
        if centred is not None:
            return centred
        lo, hi = (a.lo + b.lo, a.hi + b.hi) if n.op == "Add" else (a.lo - b.hi, a.hi - b.lo)
        out_shape = self.shape(n.outputs[0])
        l2 = {}
        for axis in set(a.l2) | set(b.l2):
            ra = self._vec_norm(n.inputs[0], a, axis, out_shape)
            rb = self._vec_norm(n.inputs[1], b, axis, out_shape)
            if math.isfinite(ra + rb):
                l2[axis] = ra + rb
        return Bound(lo, hi, l2)

    def _vec_norm(self, t: str, b: Bound, axis: int, out_shape) -> float:
        """Bound on the norm of t's vectors along ``axis`` of the (broadcast) output."""
        if axis in b.l2 and self.shape(t) == tuple(out_shape):
            return b.l2[axis]
        if self.g.is_const(t):
            c = np.broadcast_to(np.asarray(self.g.const(t), np.float64), out_shape)
            return float(np.sqrt(np.max(np.sum(np.moveaxis(c, axis, -1) ** 2, axis=-1)))) if c.size else 0.0
        if b.mag == 0:
            return 0.0
        return b.mag * math.sqrt(out_shape[axis])

    def _aligned(self, r: str, red: Node, x: str) -> bool:
        """Every tensor from ``red``'s output to ``r`` has ``x``'s keepdims-reduced shape or
        ``x``'s shape, so ``r`` broadcasts each row's reduction back onto that row (keepdims=0
        or a Reshape could pair a row with another row's reduction)."""
        shape = self.shape(x)
        axes = red.attrs.get("axes")
        axes = range(len(shape)) if axes is None else [a % len(shape) for a in axes]
        ok = (tuple(1 if i in axes else d for i, d in enumerate(shape)), tuple(shape))
        t = r
        while True:
            if self.shape(t) not in ok:
                return False
            p = self.g.producer(t)
            if p is None:
                return False
            if p is red:
                return True
            t = p.inputs[0]

    def _centred(self, n: Node, a: Bound) -> Bound | None:
        """``x - Expand(ReduceMean(x))`` over one axis (layer norm's centring) is the projection
        of each row onto the mean-free subspace, so its row norm is at most x's, and so is each
        entry: ``|d_i| <= ||d|| <= ||x||`` (the interval rule gives twice x's magnitude)."""
        x, m = n.inputs
        p = self.g.producer(m)
        while p is not None and p.op in ("Expand", "Reshape", "Identity"):
            p = self.g.producer(p.inputs[0])
        if p is None or p.op != "ReduceMean" or p.inputs[0] != x or not self._aligned(m, p, x):
            return None
        axes = p.attrs.get("axes")
        shape = self.shape(x)
        if axes is None or len(axes) != 1 or self.shape(n.outputs[0]) != shape:
            return None
        axis = axes[0] % len(shape)
        R = a.l2.get(axis)
        if R is None or not math.isfinite(R):
            return None
        lo, hi = a.lo - a.hi, a.hi - a.lo
        return Bound(max(lo, -R), min(hi, R), {axis: R})

    def centre(self, n: Node) -> Bound:
        """``k x - sum x`` = k (x - mean x): entries within k times x's spread, and k times x's
        row norm where that is known (the projection onto the mean-free subspace)."""
        x = self.get(n.inputs[0])
        shape = self.shape(n.inputs[0])
        axes = [a % len(shape) for a in n.attrs["axes"]]
        k = int(np.prod([shape[a] for a in axes]))
        m = k * (x.hi - x.lo)
        l2 = {}
        if len(axes) == 1 and math.isfinite(x.l2.get(axes[0], INF)):
            R = k * x.l2[axes[0]]
            m, l2 = min(m, R), {axes[0]: R}
        return Bound(-m, m, l2)

    def _minus_max_grid(self, n: Node) -> float | None:
        """For ``x - Expand(ReduceMax(x))`` (softmax's shift) the ReduceMax's ``grid``: the
        difference is at most that (0: non-positive by construction); None otherwise."""
        x, m = n.inputs
        p = self.g.producer(m)
        while p is not None and p.op in ("Expand", "Reshape", "Identity"):
            p = self.g.producer(p.inputs[0])
        if p is not None and p.op == "ReduceMax" and p.inputs[0] == x and self._aligned(m, p, x):
            return float(p.attrs.get("grid", 0.0))
        return None

    def mul(self, n: Node) -> Bound:
        a_t, b_t = n.inputs
        norm = self._normalised(n)
        if norm is not None:
            return norm
        a, b = self.get(a_t), self.get(b_t)
        if a_t == b_t:                                   # a square is never negative
            lo_sq = 0.0 if a.lo <= 0 <= a.hi else min(a.lo ** 2, a.hi ** 2)
            return Bound(lo_sq, max(a.lo ** 2, a.hi ** 2))
        rows = self._stochastic(n)
        if rows is not None:
            return rows
        avg = self._weighted_average(n)
        if avg is not None:
            return avg
        lo, hi = _mul_iv(a, b)
        l2 = {}
        for x_t, xb, c_t, cb in ((a_t, a, b_t, b), (b_t, b, a_t, a)):
            if self.g.is_const(c_t) or self.shape(c_t) != self.shape(n.outputs[0]):
                for axis, R in xb.l2.items():
                    if self.shape(x_t) == self.shape(n.outputs[0]):
                        l2[axis] = min(l2.get(axis, INF), R * cb.mag)
        return Bound(lo, hi, l2)

    def _normalised(self, n: Node) -> Bound | None:
        """``d * rsqrt-like(sum or mean of d*d)`` (LayerNorm, RMSNorm): |entries| and row norms
        are bounded by ``sqrt(m) * sup_s sqrt(s) f(s)`` (m = 1 for a sum, the row length for
        a mean), whatever d is, because ``d_i^2 <= sum_j d_j^2``."""
        for d, r in (n.inputs, n.inputs[::-1]):
            p = self.g.producer(r)
            while p is not None and p.op in ("Expand", "Reshape", "Identity"):
                p = self.g.producer(p.inputs[0])
            if p is None or p.op != "Scalar":
                continue
            red = self.g.producer(p.inputs[0])
            while red is not None and red.op in ("Rescale", "Identity"):
                red = self.g.producer(red.inputs[0])
            if red is None or red.op not in ("ReduceSum", "ReduceMean"):
                continue
            sq = self.g.producer(red.inputs[0])
            while sq is not None and sq.op in ("Rescale", "Identity"):
                sq = self.g.producer(sq.inputs[0])
            if sq is None or sq.op != "Mul" or sq.inputs[0] != sq.inputs[1] or sq.inputs[0] != d:
                continue
            if not self._aligned(r, red, d):
                continue
            shape = self.shape(d)
            axes = red.attrs.get("axes")
            axes = list(range(len(shape))) if axes is None else [a % len(shape) for a in axes]
            k = int(np.prod([shape[a] for a in axes]))
            m = k if red.op == "ReduceMean" else 1
            s = np.geomspace(1e-12, 1e18, 4001)
            with np.errstate(all="ignore"):
                f = scalar_fn.evaluate(p.attrs["fn"], s)
            g = np.sqrt(s) * np.abs(f)
            if not np.all(np.isfinite(g)) or np.any(np.diff(g) < -1e-12 * g[1:]):
                continue            # not of the rsqrt shape: no structural bound
            if g[-1] > g[-134] * (1 + 1e-6):
                continue            # still growing over the last decade: sup sqrt(s) f(s) may be infinite
            R = math.sqrt(m) * float(g[-1])
            return Bound(-R, R, {axes[-1]: R})
        return None

    def _stochastic(self, n: Node) -> Bound | None:
        """``e * Expand(reciprocal(ReduceSum(e)))`` with e >= 0 (softmax): rows in [0, 1] with
        L1 norm 1 (widened by the reciprocal's stated domain, which starts at 1)."""
        for e, r in (n.inputs, n.inputs[::-1]):
            p = self.g.producer(r)
            while p is not None and p.op in ("Expand", "Reshape", "Identity"):
                p = self.g.producer(p.inputs[0])
            if p is None or p.op != "Scalar" or p.attrs.get("label") != "reciprocal":
                continue
            red = self.g.producer(p.inputs[0])
            if red is None or red.op != "ReduceSum" or red.inputs[0] != e or self.get(e).lo < -ABS_MARGIN:
                continue
            if self.get(e).lo < 0 and not self._nonneg(e):
                continue            # e may be negative: e / sum(e) is not in [0, 1]
            if not self._aligned(r, red, e):
                continue
            axes = red.attrs.get("axes") or []
            if len(axes) != 1:
                continue
            return Bound(0.0, 1.0, l1={axes[0] % len(self.shape(e)): 1.0})
        return None

    def _nonneg(self, e: str) -> bool:
        """``e >= 0`` by construction: a function that is >= 0 everywhere (its sampled range may
        dip below 0), or a public mask of one, ``Where(C, f(x), 0)`` (passes/mask_softmax)."""
        p = self.g.producer(e)
        if p is not None and p.op == "Where" and self.g.is_const(p.inputs[0]) and self.g.is_const(p.inputs[2]) \
                and not np.asarray(self.g.const(p.inputs[2])).any():
            p = self.g.producer(p.inputs[1])
        return p is not None and p.op == "Scalar" and p.attrs.get("label") in NONNEG

    def _weighted_average(self, n: Node) -> Bound | None:
        """``MatMul(e, V) * Expand(reciprocal(ReduceSum(e)))`` with e >= 0 over e's last axis
        (softmax with its division after the product, ``passes/defer_softmax_division``): each
        output is a convex combination of a column of V, so it lies in V's hull."""
        for ev, r in (n.inputs, n.inputs[::-1]):
            mm = self.g.producer(ev)
            if mm is None or mm.op != "MatMul":
                continue
            e, v = mm.inputs
            p = self.g.producer(r)
            if p is not None and p.op == "Expand":
                if self.shape(r) != self.shape(ev):
                    continue
                r0 = p.inputs[0]
                p = self.g.producer(r0)
            else:
                r0 = r
            if p is None or p.op != "Scalar" or p.attrs.get("label") != "reciprocal":
                continue
            red = self.g.producer(p.inputs[0])
            if red is None or red.op != "ReduceSum" or red.inputs[0] != e:
                continue
            shape_e = self.shape(e)
            axes = [a % len(shape_e) for a in (red.attrs.get("axes") or [])]
            if axes != [len(shape_e) - 1] or self.shape(r0) != shape_e[:-1] + (1,) \
                    or self.shape(p.inputs[0]) != shape_e[:-1] + (1,):
                continue
            if self.get(e).lo < -ABS_MARGIN or (self.get(e).lo < 0 and not self._nonneg(e)):
                continue
            V = self.get(v)
            return Bound(min(V.lo, 0.0), max(V.hi, 0.0))
        return None

    def matmul(self, n: Node) -> Bound:
        a_t, b_t = n.inputs
        A, B = self.get(a_t), self.get(b_t)
        if self.g.is_const(b_t) or self.g.is_const(a_t):
            x_t, W = (a_t, self.g.const(b_t)) if self.g.is_const(b_t) else (b_t, self.g.const(a_t))
            X = self.get(x_t)
            W = np.asarray(W, np.float64)
            if W.ndim != 2:
                return None
            left = self.g.is_const(a_t)
            Wc = W.T if left else W                      # contraction over Wc's rows
            pos, neg = np.maximum(Wc, 0).sum(axis=0), np.minimum(Wc, 0).sum(axis=0)
            hi_c = X.hi * pos + X.lo * neg
            lo_c = X.lo * pos + X.hi * neg
            x_axis = len(self.shape(x_t)) - (2 if left else 1)
            l2 = {}
            if x_axis in X.l2:
                R = X.l2[x_axis]
                cn = np.sqrt((Wc ** 2).sum(axis=0)) * R
                hi_c, lo_c = np.minimum(hi_c, cn), np.maximum(lo_c, -cn)
                out_axis = len(self.shape(n.outputs[0])) - (2 if left else 1)
                l2[out_axis] = _spectral_norm(Wc) * R
            return Bound(float(lo_c.min()), float(hi_c.max()), l2)
        ka = len(self.shape(a_t)) - 1
        kb = len(self.shape(b_t)) - 2
        k = self.shape(a_t)[-1]
        lo, hi = _mul_iv(A, B)
        lo, hi = k * lo, k * hi
        if ka in A.l2 and kb in B.l2:                       # Cauchy-Schwarz
            c = A.l2[ka] * B.l2[kb]
            lo, hi = max(lo, -c), min(hi, c)
        if ka in A.l1:                                      # a convex-like combination of B's entries
            c = A.l1[ka] * B.mag
            lo, hi = max(lo, -c), min(hi, c)
        return Bound(lo, hi)

    def reduce(self, n: Node) -> Bound:
        x = self.get(n.inputs[0])
        shape = self.shape(n.inputs[0])
        axes = n.attrs.get("axes")
        axes = list(range(len(shape))) if axes is None else [a % len(shape) for a in axes]
        k = int(np.prod([shape[a] for a in axes]))
        if n.op == "ReduceSum":
            lo, hi = k * x.lo, k * x.hi
            if len(axes) == 1 and axes[0] in x.l2:     # |sum| <= sqrt(k) * norm
                c = math.sqrt(k) * x.l2[axes[0]]
                lo, hi = max(lo, -c), min(hi, c)
            return Bound(lo, hi)
        g = float(n.attrs.get("grid", 0.0))         # a coarse max: within its grid of the true one
        return Bound(x.lo - g, x.hi + g)

    def scalar(self, n: Node) -> Bound:
        x = self.get(n.inputs[0])
        lo, hi = x.lo, x.hi
        dom = n.attrs.get("domain")
        if dom:
            lo = lo if dom[0] is None else max(lo, dom[0])
            hi = hi if dom[1] is None else min(hi, dom[1])
            if lo > hi:
                lo = hi = dom[0] if dom[0] is not None else dom[1]
        out = _function_range(n.attrs["fn"], lo, hi)
        if out is None:
            return None
        l2 = {}
        if n.attrs.get("label") in CONTRACTIONS:        # |f(x)| <= |x|: row norms carry over
            l2 = dict(x.l2)
        return Bound(out[0], out[1], l2)

    def neg(self, n: Node) -> Bound:
        x = self.get(n.inputs[0])
        return Bound(-x.hi, -x.lo, dict(x.l2))

    def where(self, n: Node) -> Bound:
        a, b = self.get(n.inputs[1]), self.get(n.inputs[2])
        return Bound(min(a.lo, b.lo), max(a.hi, b.hi))

    def clip(self, n: Node) -> Bound:
        x = self.get(n.inputs[0])
        lo = x.lo if n.attrs.get("min") is None else max(x.lo, n.attrs["min"])
        hi = x.hi if n.attrs.get("max") is None else min(x.hi, n.attrs["max"])
        lo = lo if n.attrs.get("max") is None else min(lo, n.attrs["max"])     # a bound outside [x.lo, x.hi]
        hi = hi if n.attrs.get("min") is None else max(hi, n.attrs["min"])     # is the value itself
        return Bound(lo, hi)


#: labels of functions that are >= 0 everywhere (their sampled range is padded below 0)
NONNEG = {"nexp", "exp", "sigmoid", "relu"}

RULES = {
    "Add": _Ranges.add_sub, "Sub": _Ranges.add_sub, "Mul": _Ranges.mul, "MatMul": _Ranges.matmul,
    "Centre": _Ranges.centre,
    "ReduceSum": _Ranges.reduce, "ReduceMean": _Ranges.reduce, "ReduceMax": _Ranges.reduce,
    "ReduceMin": _Ranges.reduce, "Scalar": _Ranges.scalar, "Neg": _Ranges.neg, "Where": _Ranges.where,
    "Clip": _Ranges.clip,
}


def _function_range(fn: dict, lo: float, hi: float) -> tuple[float, float] | None:
    """Range of a fused scalar function over [lo, hi]: a dense grid plus the ends, widened.

    The functions here are smooth with at most a few turning points in [-8, 8] and
    monotone (or asymptotically linear) outside it, so a grid that is dense in the core
    and geometric in the tails, plus the end points, brackets the range; the margin covers
    what the grid could miss between samples."""
    if not (lo <= hi):
        return None
    pts = [np.linspace(max(lo, -16.0), min(hi, 16.0), 8193)] if max(lo, -16.0) <= min(hi, 16.0) else []
    for a, b in ((lo, min(hi, -16.0)), (max(lo, 16.0), hi)):
        if a < b:
            fa, fb = (max(a, -1e300), min(b, 1e300))
            if fa < 0 and fb <= 0:
                pts.append(-np.geomspace(-fb if fb < 0 else 1e-300, -fa, 2049))
            elif fa >= 0:
                pts.append(np.geomspace(max(fa, 1e-300), fb, 2049))
    ends = [v for v in (lo, hi) if math.isfinite(v)]
    xs = np.concatenate(pts + [np.asarray(ends, np.float64)]) if (pts or ends) else np.zeros(1)
    with np.errstate(all="ignore"):
        ys = scalar_fn.evaluate(fn, xs)
    if not np.all(np.isfinite(ys)):
        return None                     # a pole, or outside the function's domain: nothing proven
    xs_s, ys_s = xs[np.argsort(xs)], ys[np.argsort(xs)]
    for i in {int(np.argmax(ys_s)), int(np.argmin(ys_s))}:     # refine around the extremes: a pole
        sub = np.linspace(xs_s[max(i - 1, 0)], xs_s[min(i + 1, xs_s.size - 1)], 1025)    # between samples
        with np.errstate(all="ignore"):
            ysub = scalar_fn.evaluate(fn, sub)
        slack = (float(ys.max()) - float(ys.min())) * 2.0 ** -11
        if not np.all(np.isfinite(ysub)) or ysub.max() > ys.max() + slack or ysub.min() < ys.min() - slack:
            return None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        # an unbounded input: the function must be bounded where it was sampled far out
        far = [v for v in (lo, hi) if not math.isfinite(v)]
        with np.errstate(all="ignore"):
            probe = scalar_fn.evaluate(fn, np.asarray([math.copysign(1e300, v) for v in far]))
        if not np.all(np.isfinite(probe)):
            return None
        ys = np.concatenate([ys, probe])
    a, b = float(ys.min()), float(ys.max())
    pad = (b - a) * 2.0 ** -10
    return a - pad, b + pad


def analyse(graph: Graph, opts: CompileOptions, calib: dict | None = None) -> dict[str, Bound]:
    """Bounds of every tensor (client and secret) of ``graph``."""
    r = _Ranges(graph, opts)
    contract = graph.meta.get("input_contract")
    if contract is None:
        contract = input_contract(graph, opts, calib)
    for name in graph.inputs:
        info = graph.info(name)
        if name in contract:
            r.b[name] = Bound(*contract[name])
        elif info.dtype != "float":
            hi = 0.0
            for n in graph.consumers(name):     # token ids: the table bounds them
                if n.op == "Gather" and n.inputs[1] == name and graph.is_const(n.inputs[0]):
                    hi = max(hi, graph.const(n.inputs[0]).shape[n.attrs.get("axis", 0)] - 1.0)
            r.b[name] = Bound(0.0, hi) if hi else Bound.unbounded()
        else:
            r.b[name] = Bound.unbounded()
    owner = graph.meta.get("owner_contract") or {}
    for n in graph.nodes():
        if n.op == "Gather" and n.attrs.get("at") == "client" and graph.is_const(n.inputs[0]):
            r.b[n.outputs[0]] = _const_bound(graph.const(n.inputs[0]))   # any row of the table
            continue
        if n.op == "Share" and n.inputs[0] in owner:     # checked by the owner at run time
            r.b[n.outputs[0]] = Bound(*owner[n.inputs[0]])
            continue
        r.visit(n)
    return r.b, r.notes, contract


def prove_ranges(graph: Graph, opts: CompileOptions) -> Graph:
    """The pass: ``graph.meta["proven"]`` for every secret tensor, notes where unbounded."""
    from fusec.passes.calibrate import calib_values  # noqa: PLC0415
    # the contract covers what calibration will run on (every --calib request, else default_feeds)
    calib = calib_values(graph, opts)
    bounds, notes, contract = analyse(graph, opts, calib)
    graph.meta["input_contract"] = contract
    out = {}
    for t, b in bounds.items():
        info = graph.tensors.get(t)
        if info is None or info.visibility != "secret":
            continue
        m = b.mag
        lo = b.lo - abs(b.lo) * MARGIN - ABS_MARGIN
        hi = b.hi + abs(b.hi) * MARGIN + ABS_MARGIN
        out[t] = [lo if math.isfinite(m) else -INF, hi if math.isfinite(m) else INF]
    graph.meta["proven"] = out
    opts.notes.extend(notes)
    return graph
