"""Contracts for what the input owner computes from its masks and ids before sharing.

Interval arithmetic cannot see that a padding mask has at least one real token, so a mean
pooling's ``1 / max(sum(mask), 1e-9)`` is "proven" only up to 1e9, and everything after it
(the L2 normalisation's rsqrt) would be refused or given the full ring. The owner computes
such *plumbing* (tensors derived from integer / boolean inputs without an embedding lookup:
mask biases, pooling weights, 1/count) in plaintext, so it can promise a range and check it
before anything is sent, exactly like the float input contract (``passes/ranges``):

- the range of each shared plumbing tensor is measured by running the owner's prefix on the
  calibration request and on the extreme masks (all ones; only the first token; only the last
  token, for left padding), each end widened by 1/64 of its magnitude and 2^-10;
- it is stored in ``graph.meta["owner_contract"]`` (client tensor -> [lo, hi]) and used by the
  range pass for the ``Share`` that carries it;
- ``fusec run`` refuses a request whose plumbing falls outside (e.g. a mask with no real token:
  1/count would be 1e9), naming the tensor and the inputs it comes from (:func:`check`).

Runs after ``clamp_constants`` (so "minus infinity" is already the safe finite value) and
before ``prove_ranges``.
"""
from __future__ import annotations

import numpy as np

from fusec.errors import FusecError
from fusec.ir.graph import Graph
from fusec.ir.ops import run_node
from fusec.passes.options import CompileOptions


def _plumbing(graph: Graph) -> set[str]:
    """Client tensors computed from integer / boolean inputs without a table lookup."""
    out = {t for t in graph.inputs if graph.info(t).dtype != "float"}
    for n in graph.nodes():
        if n.attrs.get("at") != "client":
            continue
        ins = [t for t in n.inputs if t and not graph.is_const(t)]
        lookup = n.op == "Gather" and graph.is_const(n.inputs[0]) and graph.info(n.inputs[0]).dtype == "float"
        if ins and all(t in out for t in ins) and not lookup:
            out.update(n.outputs)
    return out


def run_owner(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The owner's plaintext prefix on ``feeds`` (every client tensor)."""
    env: dict[str, np.ndarray] = dict(graph.consts)
    for name in graph.inputs:
        v = np.asarray(feeds[name])
        env[name] = v.astype(np.float64) if graph.info(name).dtype == "float" else v
    for n in graph.nodes():
        if n.attrs.get("at") == "client":
            for t, v in zip(n.outputs, run_node(n.op, [env[t] if t else None for t in n.inputs], n.attrs)):
                env[t] = v
    return env


def _probes(graph: Graph, base: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    roles = graph.meta.get("input_roles") or {}
    masks = [t for t in graph.inputs if roles.get(t, {}).get("kind") == "mask"]
    probes = [base]
    for which in ("ones", "first", "last"):
        f = dict(base)
        for t in masks:
            shape = graph.info(t).shape
            m = np.ones(shape, np.int64)
            if which != "ones" and shape:
                m[...] = 0
                m[..., 0 if which == "first" else -1] = 1
            f[t] = m
        if masks:
            probes.append(f)
    return probes


def owner_contract(graph: Graph, opts: CompileOptions) -> Graph:
    from fusec.passes.calibrate import calib_requests  # noqa: PLC0415
    plumbing = _plumbing(graph)
    shared = [n.inputs[0] for n in graph.nodes() if n.op == "Share" and n.inputs[0] in plumbing
              and n.inputs[0] not in graph.inputs]
    if not shared:
        return graph
    base, *more = [{k: np.asarray(v) for k, v in r.items() if k in graph.inputs} for r in calib_requests(graph, opts)]
    lo = {t: np.inf for t in shared}
    hi = {t: -np.inf for t in shared}
    for feeds in _probes(graph, base) + more:       # every calibration request, the extreme masks on the first
        env = run_owner(graph, feeds)
        for t in shared:
            v = np.asarray(env[t], np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    contract = {}
    for t in shared:
        if lo[t] > hi[t]:
            continue
        contract[t] = [lo[t] - abs(lo[t]) / 64 - 2.0 ** -10, hi[t] + abs(hi[t]) / 64 + 2.0 ** -10]
    graph.meta["owner_contract"] = contract
    return graph


def check(graph: Graph, t: str, v: np.ndarray) -> None:
    """Refuse (one line) a shared plumbing value outside its contract, before it is sent."""
    c = (graph.meta.get("owner_contract") or {}).get(t)
    if c is None:
        return
    v = np.asarray(v, np.float64)
    bad = ~np.isfinite(v) | (v < c[0]) | (v > c[1])
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        src = ", ".join(sorted(graph.meta.get("input_roles", {}) or graph.inputs)) or "the inputs"
        raise FusecError(f"{t!r}, which the input owner computes from {src}, is {v[i]:.6g} at index {i}, outside "
                         f"the range [{c[0]:.6g}, {c[1]:.6g}] this build was compiled for",
                         "check the request (e.g. an attention mask with no real token: a mean over zero tokens)")
