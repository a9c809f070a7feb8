"""Range analysis by calibration: one plaintext float run records every tensor's range.

Fixed point needs to know how large values get: to pick where products are rescaled,
to fit scalar functions on the interval they really see, and to warn (naming the tensor)
when a value would overflow the ring. The default calibration input is random (token ids
uniform over the embedding table, floats standard normal); ``fusec compile --calib x.npz``
gives representative data instead, and ``opts.calib`` may hold many requests (a file with
more rows than the batch, or a folder: ``fusec/calib_set.py``). Each request is one float
run; a tensor's range is the hull over all of them. Ranges are stored in ``graph.meta["ranges"]``.

The first request also feeds the input-contract edge runs; the others run while the
``--calib-seconds`` budget lasts, and a note says how many were used when it runs out.
"""
from __future__ import annotations

import math
import time

import numpy as np

from fusec import limits
from fusec.errors import CompileError
from fusec.ir.graph import Graph
from fusec.ir.ops import run_node
from fusec.passes.options import CompileOptions


def default_feeds(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    roles = graph.meta.get("input_roles") or {}
    for name in graph.inputs:
        info = graph.info(name)
        if roles.get(name, {}).get("kind") == "mask":    # 0/1, padded: a random true length per row
            feeds[name] = _padding_mask(rng, info.shape)
        elif info.dtype == "float":
            feeds[name] = rng.standard_normal(info.shape)
        else:
            hi = 100
            for n in graph.consumers(name):
                if n.op == "Gather" and n.inputs[1] == name and graph.is_const(n.inputs[0]):
                    hi = graph.const(n.inputs[0]).shape[n.attrs.get("axis", 0)]
            feeds[name] = rng.integers(0, hi, size=info.shape)
    return feeds


def _padding_mask(rng, shape: tuple[int, ...]) -> np.ndarray:
    """Ones then zeros along the last axis, at least one real token per row."""
    if not shape:
        return np.ones((), np.int64)
    L = shape[-1]
    lengths = rng.integers(1, L + 1, size=shape[:-1])
    return (np.arange(L) < lengths[..., None]).astype(np.int64)


def calib_requests(graph: Graph, opts: CompileOptions) -> list[dict[str, np.ndarray]]:
    """The calibration requests: ``opts.calib`` (one dict, or a list of them), else one default draw."""
    c = opts.calib
    if c is None:
        return [default_feeds(graph, opts.calib_seed)]
    reqs = [c] if isinstance(c, dict) else list(c)
    if not reqs:
        raise CompileError("the calibration data holds no request", "give at least one input")
    return reqs


def calib_values(graph: Graph, opts: CompileOptions) -> dict[str, np.ndarray]:
    """Every value each input takes over all calibration requests, flattened (for the input contract,
    ``passes/ranges``: max |x| over every sample, so no calibration sample lies outside it)."""
    reqs = calib_requests(graph, opts)
    names = {k for r in reqs for k in r}
    return {k: np.concatenate([np.ravel(np.asarray(r[k], np.float64)) for r in reqs if k in r]) for k in names}


def calibrate(graph: Graph, opts: CompileOptions, feeds: dict[str, np.ndarray] | None = None) -> Graph:
    reqs = [feeds] if feeds is not None else calib_requests(graph, opts)
    for i, r in enumerate(reqs):
        _check_request(graph, r, f" (request {i + 1} of {len(reqs)})" if len(reqs) > 1 else "")
    _check_weights(graph, opts)
    budget = limits.Budget(limits.current().calib_seconds, "--calib-seconds")
    t0 = time.monotonic()
    ranges = _run(graph, reqs[0], opts, budget)
    _check_ring(graph, opts, ranges, "in calibration")
    per_request = time.monotonic() - t0
    for what, edge in _edge_feeds(graph, reqs[0]):
        _check_ring(graph, opts, _run(graph, edge, opts, budget, notes=False), f"on {what}")
    used = 1
    for r in reqs[1:]:
        if budget.left() < per_request:          # would not finish: stop before starting it
            break
        try:
            more = _run(graph, r, opts, budget)
        except CompileError:
            if budget.left() <= 0:
                break
            raise
        ranges = _hull(ranges, more)
        used += 1
    if used < len(reqs):
        opts.notes.append(f"calibration used {used} of {len(reqs)} requests: the --calib-seconds budget of "
                          f"{budget.seconds:g} s ran out (ranges cover those {used}; raise --calib-seconds to use all)")
    if used > 1:
        _check_ring(graph, opts, ranges, "in calibration")
    graph.meta["ranges"] = ranges
    return graph


def _check_request(graph: Graph, feeds: dict[str, np.ndarray], which: str) -> None:
    missing = [t for t in graph.inputs if t not in feeds]
    if missing:
        raise CompileError(f"the calibration data{which} lacks input(s) {', '.join(missing)}",
                           f"give every model input: {', '.join(graph.inputs)}")
    for t in graph.inputs:
        want = graph.info(t).shape
        if tuple(np.shape(feeds[t])) != want:
            raise CompileError(f"calibration input {t!r}{which} has shape {tuple(np.shape(feeds[t]))}, the model "
                               f"was compiled for {want}", "pass --batch/--seq matching the calibration data")


def _hull(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, list[float]]:
    """Tensor by tensor, the smallest range holding both."""
    out = dict(a)
    for t, (lo, hi) in b.items():
        out[t] = [min(out[t][0], lo), max(out[t][1], hi)] if t in out else [lo, hi]
    return out


def _edge_feeds(graph: Graph, feeds: dict[str, np.ndarray]):
    """Inputs at the edges of the input contract (``passes/ranges``), which ``fusec run`` accepts:
    every float input at its upper end, at its lower end, and the calibration input stretched to
    fill the range. A tensor past the ring on one of them is a wrong output the build would give."""
    contract = graph.meta.get("input_contract") or {}
    names = [t for t in graph.inputs if t in contract and graph.info(t).dtype == "float"]
    if not names:
        return
    desc = ", ".join(f"{t} in [{contract[t][0]:g}, {contract[t][1]:g}]" for t in names)

    def fill(pick) -> dict[str, np.ndarray]:
        out = dict(feeds)
        for t in names:
            lo, hi = contract[t]
            out[t] = np.clip(pick(np.asarray(feeds[t], np.float64), lo, hi), lo, hi)
        return out

    def stretch(v, lo, hi):
        m = float(np.max(np.abs(v))) if v.size else 0.0
        return v * (max(abs(lo), abs(hi)) / m) if m > 0 else v

    yield f"an input at the top of the input contract ({desc})", fill(lambda v, lo, hi: np.full(v.shape, hi))
    yield f"an input at the bottom of the input contract ({desc})", fill(lambda v, lo, hi: np.full(v.shape, lo))
    yield f"the calibration input stretched to the input contract ({desc})", fill(stretch)


def _run(graph: Graph, feeds: dict[str, np.ndarray], opts: CompileOptions, budget: limits.Budget,
         notes: bool = True) -> dict[str, list[float]]:
    """The float run, recording each secret tensor's range as it is computed and dropping every
    value after its last reader (memory: the live tensors, not all of them), under the
    calibration time budget (``fusec.limits``)."""
    env: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in graph.consts.items()}
    for name in graph.inputs:
        v = np.asarray(feeds[name])
        env[name] = v.astype(np.float64) if graph.info(name).dtype == "float" else v
    nodes = list(graph.nodes())
    last: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for t in n.inputs:
            last[t] = i
    keep = set(graph.outputs) | set(graph.consts)
    ranges: dict[str, list[float]] = {}

    def record(t: str) -> None:
        info = graph.tensors.get(t)
        if info is None or info.visibility != "secret" or t in ranges or t not in env:
            return
        v = np.asarray(env[t], np.float64)
        finite = v[np.isfinite(v)]
        note = f"calibration: tensor {t!r} has non-finite values in the float run"
        if finite.size != v.size and notes and note not in opts.notes:
            opts.notes.append(note)
        ranges[t] = [float(finite.min()), float(finite.max())] if finite.size else [0.0, 0.0]

    for t in graph.inputs:
        record(t)
    for i, n in enumerate(nodes):
        budget.check(f"calibration (at node {n.name!r})")
        outs = run_node(n.op, [env[t] if t else None for t in n.inputs], n.attrs, f" ({n!r})")
        for t, v in zip(n.outputs, outs):
            env[t] = v
            record(t)
        for t in n.inputs:
            if t and last.get(t) == i and t not in keep:
                env.pop(t, None)
    for t in graph.tensors:                 # secret constants (none today) keep their range too
        record(t)
    return ranges


def _ring_limit(opts: CompileOptions, frac: int) -> float:
    """The largest magnitude a value at ``frac`` fractional bits has on the signed n-bit ring."""
    return 2.0 ** (opts.bits - 1 - frac)


def _check_weights(graph: Graph, opts: CompileOptions) -> None:
    """A constant that a secret computation reads must have a fixed-point encoding: |w| * 2^wf under
    2^(n-1) (values past it would wrap; "infinite" mask values were clamped before this pass)."""
    lim = _ring_limit(opts, opts.weight_frac)
    for n in graph.nodes():
        if not any(graph.tensors[o].visibility == "secret" for o in n.outputs if o in graph.tensors):
            continue
        for t in n.inputs:
            if not t or not graph.is_const(t) or graph.info(t).dtype != "float":
                continue
            v = np.asarray(graph.const(t), np.float64)
            m = float(np.max(np.abs(v))) if v.size else 0.0
            if m >= lim:
                raise CompileError(
                    f"weight {t!r} (read by node {n.name!r}, {n.op}) has |w| = {m:.4g}, beyond what fixed point "
                    f"n={opts.bits}, f={opts.weight_frac} holds ({lim:.4g}): its secure result would wrap around",
                    f"{_hint(m, opts, opts.weight_frac)}; or check the model's weights")


#: products: their output comes out at the sum of the operands' scales (``passes/scales``), and no
#: operand goes below f, so |y| must fit at f per secret operand plus the constant's scale
_PRODUCTS = ("Mul", "MatMul")


def _min_scale(graph: Graph, opts: CompileOptions, node, scaler) -> tuple[int, str | None]:
    """The smallest scale ``node``'s output can have, and the weight that sets it (if any)."""
    if node.op not in _PRODUCTS:
        return opts.frac, None
    secret = [t for t in node.inputs[:2] if t and graph.info(t).visibility == "secret"]
    consts = [t for t in node.inputs[:2] if t and graph.is_const(t) and graph.info(t).dtype == "float"]
    if len(secret) == 1 and consts:
        return opts.frac + int(node.attrs.get("const_scale", scaler.const_scale(graph.const(consts[0])))), consts[0]
    return opts.frac * max(len(secret), 1), None


def _check_ring(graph: Graph, opts: CompileOptions, ranges: dict[str, list[float]], where: str) -> None:
    """A secret tensor the calibration run sees past what the ring holds at the smallest scale it can
    have (f; a product with a weight: f plus the weight's scale) wraps around on this very input:
    the secure output would be silently wrong. The first such tensor (in program order) is refused,
    naming the weight its node reads."""
    from fusec.passes.scales import _Scaler  # noqa: PLC0415  (the one definition of a constant's scale)

    scaler = _Scaler(graph, opts)
    for n in graph.nodes():
        for t in n.outputs:
            lo, hi = ranges.get(t, (0.0, 0.0))
            m = max(abs(lo), abs(hi))
            scale, weight = _min_scale(graph, opts, n, scaler)
            lim = _ring_limit(opts, scale)
            if m < lim:
                continue
            if weight is None:
                weights = [(float(np.max(np.abs(graph.const(w)))), w) for w in n.inputs
                           if w and graph.is_const(w) and graph.info(w).dtype == "float" and graph.const(w).size]
                weight = max(weights)[1] if weights else None
            why = ""
            if weight is not None:
                why = (f" (node {n.name!r}, {n.op}, reads weight {weight!r} with |w| up to "
                       f"{float(np.max(np.abs(graph.const(weight)))):.4g})")
            raise CompileError(
                f"tensor {t!r}{why} reaches |x| = {m:.4g} {where}, beyond what fixed point n={opts.bits} holds "
                f"at scale 2^-{scale} ({lim:.4g}): the secure result would wrap around",
                f"{_hint(m, opts, scale)}; or check the model's weights"
                + ("" if where == "in calibration" else "; or promise a narrower range with --input-range"))


def _hint(m: float, opts: CompileOptions, scale: int) -> str:
    """--bits that holds ``m`` at ``scale``, or the --frac that does on this ring (a product's
    scale is k*f plus a weight's scale c; a constant's own encoding is at weight_frac = f)."""
    need = math.floor(math.log2(m)) + 2          # integer bits plus the sign, at least
    bits = need + scale
    k = max(1, round(scale / opts.frac)) if scale >= opts.frac else 1
    c = max(scale - k * opts.frac, 0)
    fewer = (opts.bits - need - c) // k
    parts = []
    if bits <= 64:
        parts.append(f"use --bits {bits} or more")
    if fewer >= 1:
        parts.append(f"--frac {fewer} or less")
    return ", or ".join(parts) if parts else "the value cannot be held by any ring up to 64 bits"
