"""Fit an OperatorSpec to every ``Scalar`` node, to a stated error bound.

For each node the pass decides the interval the function must be right on (from its
label: GELU on [-4, 4] with exact tails 0 and x; exp of a non-positive input down to where
it rounds to 0; reciprocal / rsqrt on their positive domain with geometric pieces; an
unknown function on its calibrated range plus a margin, tails held constant) and then
searches degree x pieces for the cheapest gate (key bytes + online AES) that meets ``--max-error-ulps`` (in ulps of
the activation scale f). The input is taken at the scale it arrives (the rescale before
the gate is fused into the spec); when no fit at that scale fits the ring, or a rescale
first gives a cheaper gate, a ``Rescale`` is inserted in front. Specs are cached per
(function, range, scales), so BERT's twelve GELUs are fitted once.

Compile time (BERT-base has 25 layer norms, each a different proven range): a search drops
shapes that cannot be chosen (priced from their plan; erring, on a few pieces, more than
the bound and a finer shape fitted early), the scale pass's probes only ask whether some
shape meets the bound (``any_within``), and fits remember their pieces across output
scales (``ir.spec``). Every shortcut leaves the chosen spec as the full search chooses it.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass

import numpy as np

from fusec.errors import CompileError, ParameterError
from fusec.ir import scalar_fn
from fusec.ir.graph import Graph, Node, TensorInfo
from fusec.ir.nonlinear import SIGMA_LABELS, Domain, fit_domain  # noqa: F401  (Domain: re-export)
from fusec.ir.spec import FitPlan, FitRequest, OperatorSpec, error_floor, finish, plan, relu_spec
from fusec.passes.options import CompileOptions
from fusec.passes.pricing import price
from fusec.passes.ranges import proven as proven_range


CANDIDATES = [(d, p) for d in (1, 2, 3) for p in (4, 8, 16, 32, 64, 128)] + [(1, 256), (1, 512), (2, 256)]
#: shapes also tried with equidistributed cuts (pieces between the powers of two above)
SPREAD_CANDIDATES = [(d, p) for d in (1, 2) for p in (6, 8, 10, 12, 16, 24, 32, 48, 64)]


def _domain(node: Node, opts: CompileOptions, rng: tuple[float, float], f_out: int, proven=None) -> Domain:
    """The fitting domain of a Scalar node: ``ir.nonlinear.fit_domain`` (the table of nonlinearities)."""
    attrs = {**node.attrs, "bound_ulps": opts.max_error_ulps * 2.0 ** (f_out - opts.frac), "ring_bits": opts.bits}
    return fit_domain(node.attrs.get("label", "custom"), node.attrs["fn"], opts.frac, rng, f_out, proven, attrs)


def _equidistributed(fn, lo: float, hi: float, degree: int, pieces: int, f_in: int) -> list[float] | None:
    """Interior cuts that spread a degree-d fit's error evenly: a piece of width h errs by about
    ``h^(d+1) |f^(d+1)|``, so cuts at equal steps of the integral of ``|f^(d+1)|^(1/(d+1))``
    (GELU: narrow pieces around its bend, wide ones towards its linear tails; 10 pieces then
    reach the error of 16 uniform ones). Snapped to the input grid; None when degenerate."""
    xs = np.linspace(lo, hi, 8193)
    with np.errstate(all="ignore"):
        y = np.asarray(fn(xs), np.float64)
    if not np.all(np.isfinite(y)):
        return None
    d = y
    for _ in range(degree + 1):
        d = np.gradient(d, xs)
    dens = np.abs(d) ** (1.0 / (degree + 1))
    if not np.all(np.isfinite(dens)) or dens.max() <= 0:
        return None
    dens = dens + 1e-3 * dens.max()            # every piece stays finite where f is (almost) polynomial
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2)])
    cuts = np.interp(np.linspace(0.0, cdf[-1], pieces + 1)[1:-1], cdf, xs)
    grid = np.unique(np.round(cuts * 2.0 ** f_in)) / 2.0 ** f_in
    grid = [float(c) for c in grid if lo < c < hi]
    return grid if len(grid) == pieces - 1 else None


def _plan_one(name: str, fn, dom: Domain, degree: int, pieces: int, n: int, f_in: int, f_out: int,
              valid: tuple[float, float] = (-math.inf, math.inf), spread: bool = False) -> FitPlan:
    """One shape's fit up to its coefficients (``ir.spec.plan``): geometric cuts on a geometric
    domain; else uniform cuts, or with ``spread`` the equidistributed ones (``_equidistributed``)."""
    bps, flags = None, {}
    if dom.geometric:   # geometric cuts, snapped to the input grid, no empty piece
        grid = np.unique(np.ceil(np.geomspace(dom.lo, dom.hi, pieces + 1) * 2.0 ** f_in))
        bps = [float(c) / 2.0 ** f_in for c in grid if dom.lo * 2.0 ** f_in < c < dom.hi * 2.0 ** f_in]
    elif spread:
        bps = _equidistributed(fn, dom.lo, dom.hi, degree, pieces, f_in)
        if bps is None:
            raise ParameterError(f"fit {name}: no equidistributed cuts for {pieces} pieces")
        flags = {"cap_scale": False, "relative": False}     # as for uniform cuts: only the cut places differ
    return plan(FitRequest(name, fn, dom.lo, dom.hi, pieces=pieces, degree=degree, n_in=n, f_in=f_in,
                           f_out=f_out, left=dom.left, right=dom.right, breakpoints=bps, valid=valid, **flags))


def _fit_one(name: str, fn, dom: Domain, degree: int, pieces: int, n: int, f_in: int, f_out: int,
             valid: tuple[float, float] = (-math.inf, math.inf), spread: bool = False) -> OperatorSpec:
    """One fit of one shape (``_plan_one``, then the coefficients and the measured error)."""
    return finish(_plan_one(name, fn, dom, degree, pieces, n, f_in, f_out, valid, spread))


def _price(spec: OperatorSpec) -> float:
    """What a spec costs per element (passes/pricing.py)."""
    from fusec.runtime.gates.scalar import ScalarGate  # noqa: PLC0415
    return price(ScalarGate(1, spec).cost())


def _price_floor(degree: int, pieces: int, n: int) -> float:
    """A lower bound on ``_price`` of any spec of this shape (its per-piece coefficient
    correlations alone: at least pieces - 1 pieces times degree + 1 words of n bits), so the
    search can stop once the best spec found is cheaper than every shape left."""
    return max(pieces - 1, 0) * (degree + 1) * n / 8


def _rescale_price(n: int, shift: int) -> float:
    from fusec.runtime.gates.truncation import TruncateSlack  # noqa: PLC0415
    return price(TruncateSlack(1, n, max(shift, 1)).cost())


def _shapes(dom: Domain, n: int) -> list[tuple[int, int, bool]]:
    """The candidate (degree, pieces, spread) shapes, cheapest price floor first."""
    shapes = [(d, p, False) for d, p in CANDIDATES]
    if not dom.geometric:        # the same shapes with cuts placed by the function's curvature
        shapes += [(d, p, True) for d, p in SPREAD_CANDIDATES]
    return sorted(shapes, key=lambda s: _price_floor(s[0], s[1], n))


#: a first fit this many times over the bound means a long search: fit its last (most
#: accurate) shape first, so the shapes in between can be dropped on a few pieces' error
SEED_OVER_BOUND = 128.0


def search(name: str, fn, dom: Domain, n: int, f_in: int, f_out: int, bound_ulps: float,
           valid: tuple[float, float] = (-math.inf, math.inf)) -> tuple[OperatorSpec | None, OperatorSpec | None]:
    """(cheapest spec meeting the bound, most accurate spec) over the candidate grid; the
    second is the most accurate of all shapes when none meets the bound (when one does, of
    those fitted).

    Shapes go cheapest-floor first and every shortcut only drops shapes that could not be
    chosen: once a spec meets the bound, a shape whose gate costs at least as much (priced
    from its plan, before any least squares) is skipped; shapes whose plans coincide
    (capped degrees) are fitted once (``memo``); and when the first fit is far over the bound
    the last shape (the finest) is fitted early, its error becomes a ceiling, and a shape
    whose few pieces around the ceiling spec's worst input already err more than both the
    ceiling and the bound (``error_floor``) is skipped: it could be neither the cheapest
    spec meeting the bound nor the most accurate."""
    best = accurate = None
    best_price = math.inf
    memo: dict = {}
    ceiling, worst_at = math.inf, None
    shapes = _shapes(dom, n)
    for i, (d, p, spread) in enumerate(shapes):
        if best is not None and _price_floor(d, p, n) >= best_price:
            break               # every later shape costs at least as much as the best found
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                planned = _plan_one(name, fn, dom, d, p, n, f_in, f_out, valid, spread)
                if best is not None and _price(planned.skeleton()) >= best_price:
                    continue    # cannot be cheaper than the best found
                if best is None and worst_at is not None and i < len(shapes) - 1:
                    floor = error_floor(planned, worst_at)
                    if floor > bound_ulps and floor > ceiling:
                        continue    # neither within the bound nor more accurate than the ceiling spec
                spec = finish(planned, memo)
        except (ParameterError, TypeError, OverflowError, np.linalg.LinAlgError):
            continue        # a shape that cannot be fitted here (e.g. coefficients past any ring): skip it
        if accurate is None or spec.max_error_ulps < accurate.max_error_ulps:
            accurate = spec
        if spec.max_error_ulps <= bound_ulps and _price(spec) < best_price:
            best, best_price = spec, _price(spec)
        if i == 0 and best is None and spec.max_error_ulps > SEED_OVER_BOUND * bound_ulps:
            ceiling, worst_at = _ceiling(name, fn, dom, shapes[-1], n, f_in, f_out, valid, memo)
    return best, accurate


def _ceiling(name: str, fn, dom: Domain, shape: tuple, n: int, f_in: int, f_out: int,
             valid: tuple[float, float], memo: dict) -> tuple[float, int | None]:
    """(error, input where it is largest) of the search's last shape, fitted now into the
    search's memo (so the search reaches it at no cost); (inf, None) where it cannot be fitted."""
    d, p, spread = shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            planned = _plan_one(name, fn, dom, d, p, n, f_in, f_out, valid, spread)
            spec = finish(planned, memo)
    except (ParameterError, TypeError, OverflowError, np.linalg.LinAlgError):
        return math.inf, None
    return spec.max_error_ulps, planned.worst_at


_CACHE: dict[tuple, tuple] = {}


def _pow2_hull(proven):
    """The proven interval widened outwards to 3 significant bits at both ends (a superset,
    so still sound, at most 25% wider): gates whose proven ranges differ a little (BERT's 25
    layer norms) share one fitted spec instead of 25 searches."""
    if proven is None:
        return None

    def out(v: float, up: bool) -> float:
        if v == 0 or not math.isfinite(v):
            return v
        q = 2.0 ** (math.floor(math.log2(abs(v))) - 2)
        return (math.ceil(v / q) if up else math.floor(v / q)) * q
    lo, hi = proven
    return (out(lo, False), out(hi, True))


def _valid(node: Node, proven, frac: int) -> tuple[float, float]:
    """Where the gate's input can be: its proven range, cut by the block's own domain fact
    (softmax's ``x - max`` is <= 0; a truncation in front adds up to 2 ulps)."""
    lo, hi = proven if proven is not None else (-math.inf, math.inf)
    dom = node.attrs.get("domain") or [None, None]
    slack = 2.0 ** (1 - frac)
    if dom[0] is not None:
        lo = max(lo, dom[0] - slack)
    if dom[1] is not None:
        hi = min(hi, dom[1] + slack)
    return (float(lo), float(hi))


@dataclass
class _Fit:
    """What a Scalar node's spec is searched for: its function, domain, bound and valid range."""
    label: str
    fn: object
    dom: Domain
    bound: float
    valid: tuple[float, float]
    key: str              # everything the searches depend on but f_in (cache key with it)


_FNS: dict[str, object] = {}


def _callable(fnj: dict):
    """One Python function per distinct fused function: the fits remember pieces by it
    (``ir.spec._PIECES``), across the gates and output scales that share it."""
    text = json.dumps(fnj, sort_keys=True, default=str)
    if text not in _FNS:
        frozen = copy.deepcopy(fnj)     # the node's attrs may change later; this function may not
        _FNS[text] = lambda v: scalar_fn.evaluate(frozen, v)
    return _FNS[text]


def _fit_for(node: Node, rng: tuple[float, float], f_out: int, opts: CompileOptions, proven) -> _Fit:
    fnj = node.attrs["fn"]
    fn = _callable(fnj)
    proven = _pow2_hull(proven)
    dom = _domain(node, opts, rng, f_out, proven)
    bound = opts.max_error_ulps * 2.0 ** (f_out - opts.frac)
    if dom.geometric:   # steep positive-domain functions: the bound is relative to their largest value
        bound *= max(1.0, abs(dom.left.offset))
    valid = _valid(node, proven, opts.frac)
    key = json.dumps([fnj, dom.lo, dom.hi, dom.geometric, f_out, opts.bits, opts.frac, bound, valid],
                     sort_keys=True, default=str)
    return _Fit(node.attrs.get("label", "custom"), fn, dom, bound, valid, key)


def choose(node: Node, rng: tuple[float, float], f_in: int, f_out: int,
           opts: CompileOptions, proven=None, elements: int = 0) -> tuple[OperatorSpec | None, bool, Domain, float]:
    """(spec, whether to rescale the input to f first, domain, bound) for a Scalar node."""
    q = _fit_for(node, rng, f_out, opts, proven)
    key = (q.key, f_in)
    if key not in _CACHE:
        at_in = search(q.label, q.fn, q.dom, opts.bits, f_in, f_out, q.bound, q.valid)
        at_f = search(q.label, q.fn, q.dom, opts.bits, opts.frac, f_out, q.bound, q.valid) \
            if f_in > opts.frac else (None, None)
        _CACHE[key] = (at_in, at_f)
    (best_in, acc_in), (best_f, acc_f) = _CACHE[key]
    if best_in is None:
        use_rescale = best_f is not None or acc_in is None
    else:
        # a rescale in front costs a round (unless lowering folds it into the gate's first round,
        # which it cannot promise here): take it only where it saves more key than a round is worth
        saved = (_price(best_in) - _price(best_f) - _rescale_price(opts.bits, f_in - opts.frac)) * elements \
            if best_f is not None else 0.0
        use_rescale = saved > opts.round_worth_bytes
    spec = (best_f or acc_f) if use_rescale else (best_in or acc_in)
    return spec, use_rescale, q.dom, q.bound


_FEASIBLE: dict[tuple, bool] = {}


def feasible(node: Node, rng: tuple[float, float], f_in: int, f_out: int, opts: CompileOptions,
             proven=None) -> bool:
    """Whether some spec at these scales fits the ring and meets the bound, i.e. whether
    ``choose`` (same proven range) would give a spec within it: one shape within the bound at
    f_in, or at f after a rescale. The scale pass asks this of several output scales per
    gate, so it is answered without searching for the cheapest spec (``any_within``)."""
    q = _fit_for(node, rng, f_out, opts, proven)
    key = (q.key, f_in)
    if key in _CACHE:
        (best_in, _), (best_f, _) = _CACHE[key]
        return best_in is not None or best_f is not None
    if key not in _FEASIBLE:
        _FEASIBLE[key] = any_within(q.label, q.fn, q.dom, opts.bits, f_in, f_out, q.bound, q.valid) or (
            f_in > opts.frac and any_within(q.label, q.fn, q.dom, opts.bits, opts.frac, f_out, q.bound, q.valid))
    return _FEASIBLE[key]


def any_within(name: str, fn, dom: Domain, n: int, f_in: int, f_out: int, bound_ulps: float,
               valid: tuple[float, float] = (-math.inf, math.inf)) -> bool:
    """Whether ``search`` would find a spec within the bound (some shape's is): the finest
    shape first (the likeliest), then the others, each skipped when the pieces around the
    first fit's worst input already err more than the bound (``error_floor``)."""
    memo: dict = {}
    worst_at = None
    shapes = _shapes(dom, n)
    for d, p, spread in [shapes[-1]] + shapes[:-1]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                planned = _plan_one(name, fn, dom, d, p, n, f_in, f_out, valid, spread)
                if worst_at is not None and error_floor(planned, worst_at) > bound_ulps:
                    continue
                spec = finish(planned, memo)
        except (ParameterError, TypeError, OverflowError, np.linalg.LinAlgError):
            continue
        if spec.max_error_ulps <= bound_ulps:
            return True
        worst_at = worst_at if worst_at is not None else planned.worst_at
    return False


def _deepen_rescale_before_sum(graph: Graph, x: str, delta: int) -> bool:
    """``x = ReduceSum(Rescale(y))`` read only here (layer norm's sum of squares): cut ``delta``
    more bits in that rescale instead of a second truncation after the sum (one round, not
    two; the k truncations' stochastic rounding errors are unbiased, so the sum is off by
    about sqrt(k)/2 ulps, not k)."""
    red = graph.producer(x)
    if red is None or red.op != "ReduceSum" or len(graph.consumers(x)) != 1 or x in graph.outputs:
        return False
    mid = red.inputs[0]
    resc = graph.producer(mid)
    if resc is None or resc.op != "Rescale" or resc.attrs["shift"] <= 0 or len(graph.consumers(mid)) != 1 \
            or mid in graph.outputs:
        return False
    resc.attrs["shift"] += delta
    graph.info(mid).scale -= delta
    graph.info(x).scale -= delta
    return True


def fit_specs(graph: Graph, opts: CompileOptions) -> Graph:
    ranges = graph.meta.get("ranges", {})
    for node in graph.nodes():
        if node.op != "Scalar":
            continue
        lab = node.attrs.get("label")
        if opts.gates == "sigma" and lab in SIGMA_LABELS:
            node.attrs["impl"] = "sigma"
            continue
        x, y = node.inputs[0], node.outputs[0]
        f_in, f_out = graph.info(x).scale, graph.info(y).scale
        if lab == "relu":
            node.attrs["spec"] = relu_spec(opts.bits, f_in).to_dict()
            graph.info(y).scale = f_in
            node.attrs["impl"] = "fused"
            continue
        fnj = node.attrs["fn"]
        spec, use_rescale, dom, bound = choose(node, tuple(ranges.get(x, (-1.0, 1.0))), f_in, f_out, opts,
                                               proven_range(graph, x), int(np.prod(graph.info(x).shape)))
        if spec is None:
            raise CompileError(f"cannot fit {lab} ({scalar_fn.describe(fnj)}) of {node!r} on [{dom.lo:g}, {dom.hi:g}] "
                               f"in a {opts.bits}-bit ring", "use a wider ring (--bits) or a smaller --frac")
        if use_rescale and _deepen_rescale_before_sum(graph, x, f_in - opts.frac):
            pass        # the truncation in front of the sum now drops the bits: no extra round
        elif use_rescale:
            new = graph.fresh(f"{x}_s{opts.frac}")
            graph.add_node("Rescale", [x], [new], name=graph.fresh(f"rescale_{x}"),
                           infos=[TensorInfo(graph.info(x).shape, "float", "secret", scale=opts.frac, bits=opts.bits)],
                           shift=f_in - opts.frac)
            graph.rename_input(node.name, x, new)
        if spec.max_error_ulps > bound:
            opts.notes.append(f"{node!r}: best fit of {lab} has {spec.max_error_ulps:.1f} ulps > bound {bound:g}")
        if dom.note:
            opts.notes.append(f"{node!r}: {dom.note}")
        node.attrs["spec"] = spec.to_dict()
        node.attrs["impl"] = "fused"
    return graph
