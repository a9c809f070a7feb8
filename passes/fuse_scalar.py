"""Fuse chains of elementwise ops on one secret tensor into one ``Scalar`` node.

A region grows from a secret tensor ``x`` through elementwise ops whose other operands
are scalar constants or tensors already in the region: ``x*0.5*(1+erf(x/sqrt2))``,
``0.5x(1+tanh(c(x+0.044715x^3)))``, ``x*sigmoid(x)``, ``1/clip(sqrt(s), eps)``... It is
fused when exactly one of its tensors is read outside and it contains a nonlinearity;
the region becomes ``Scalar(x)`` carrying the sub-graph as its function (``ir/scalar_fn``)
and a label when it matches a known function (gelu, silu, exp, rsqrt, ...). The spec
fitting pass turns each Scalar into an OperatorSpec, so the whole chain costs one
packed comparison, one interval lookup and one open, whatever its length (DESIGN §5.6).
"""
from __future__ import annotations

import heapq

import numpy as np

from fusec.ir import scalar_fn
from fusec.passes import compare_select
from fusec.ir.graph import Graph, Node
from fusec.ir.nonlinear import identify
from fusec.ir.ops import ELEMENTWISE_BINARY, OPS, is_fusable  # noqa: F401  (ELEMENTWISE_BINARY: re-export)

#: ops that never join a chain (kept importable; the data is ``OPS[op].fusable``)
NOT_FUSED = frozenset(op for op, d in OPS.items() if not d.fusable)


def label(fn: dict) -> str:
    """Name of the known function ``fn`` equals on test grids (``ir/nonlinear``), else 'custom'."""
    return identify(lambda x: scalar_fn.evaluate(fn, x))[0]


def _eligible(graph: Graph, node: Node, shape) -> bool:
    if not is_fusable(node.op) or node.attrs.get("at") == "client":
        return False
    return graph.info(node.outputs[0]).shape == shape and graph.info(node.outputs[0]).dtype == "float"


def _scalar_const(graph: Graph, t: str) -> bool:
    return graph.is_const(t) and graph.const(t).size == 1


def _grow(graph: Graph, x: str, order: dict[str, int]) -> list[Node]:
    shape = graph.info(x).shape
    inside = {x}
    region: list[Node] = []
    heap = [(order[n.name], n.name) for n in graph.consumers(x)]
    heapq.heapify(heap)
    seen = set()
    while heap:
        _, name = heapq.heappop(heap)
        if name in seen:
            continue
        seen.add(name)
        node = graph.node(name)
        if not _eligible(graph, node, shape):
            continue
        if not all(t in inside or _scalar_const(graph, t) for t in node.inputs):
            continue
        region.append(node)
        inside.update(node.outputs)
        for t in node.outputs:
            for c in graph.consumers(t):
                heapq.heappush(heap, (order[c.name], c.name))
    return region


def _valid_cut(graph: Graph, x: str, region: list[Node]) -> tuple[list[Node], str] | None:
    names = {n.name for n in region}
    external = [t for n in region for t in n.outputs
                if t in graph.outputs or any(c.name not in names for c in graph.consumers(t))]
    # the last tensor read outside whose sub-chain is self-contained (a comparison read by a
    # select and by a Not: the comparison alone); earlier ones are fused on the next round
    for out in reversed(external):
        cut = _cut_at(graph, x, region, out)
        if cut is not None:
            return cut
    return None


def _cut_at(graph: Graph, x: str, region: list[Node], out: str) -> tuple[list[Node], str] | None:
    need, keep = {out}, []                 # keep only the nodes out depends on
    for n in reversed(region):
        if set(n.outputs) & need:
            keep.append(n)
            need.update(t for t in n.inputs if t != x)
    keep.reverse()
    kept = {n.name for n in keep}
    for n in keep:
        for t in n.outputs:
            if t != out and (t in graph.outputs or any(c.name not in kept for c in graph.consumers(t))):
                return None
    if not any(OPS[n.op].nonlinear for n in keep) or graph.info(out).dtype != "float":
        return None
    return keep, out


def _to_fn(graph: Graph, x: str, nodes: list[Node], out: str) -> dict:
    local = {x: "x"}
    consts: dict[str, float] = {}
    body = []
    for n in nodes:
        ins = []
        for t in n.inputs:
            if t not in local:
                c = f"c{len(consts)}"
                consts[c] = float(np.asarray(graph.const(t), np.float64).reshape(-1)[0])
                local[t] = c
            ins.append(local[t])
        outs = []
        for t in n.outputs:
            local[t] = f"t{len(local)}"
            outs.append(local[t])
        body.append({"op": n.op, "inputs": ins, "outputs": outs, "attrs": dict(n.attrs)})
    fn = {"input": "x", "output": local[out], "consts": consts, "nodes": body}
    fn["label"], params = identify(lambda v: scalar_fn.evaluate(fn, v))
    if params:
        fn["params"] = params
    return fn


def fuse_scalar(graph: Graph, opts: CompileOptions) -> Graph:
    compare_select.rewrite(graph, opts.frac)      # comparisons / Where / Not / And / Or on secrets -> 0/1 arithmetic
    tried: set[str] = set()
    changed = True
    while changed:
        changed = False
        nodes = graph.nodes()
        order = {n.name: i for i, n in enumerate(nodes)}
        roots = [t for t in graph.inputs] + [t for n in nodes for t in n.outputs]
        for x in roots:
            info = graph.tensors.get(x)
            if x in tried or info is None or info.visibility != "secret" or info.dtype != "float":
                continue
            region = _grow(graph, x, order)
            cut = _valid_cut(graph, x, region) if region else None
            if cut is None:
                tried.add(x)        # (after a cut, x is tried again: other chains may read it too)
                continue
            keep, out = cut
            fn = _to_fn(graph, x, keep, out)
            info_out = graph.info(out)
            first = keep[0].name
            for n in keep:
                graph.remove_node(n.name)
            extra = {}
            if fn["label"] == "rsqrt" and fn.get("params"):     # 1/sqrt(x*k + eps) written out (RMSNorm)
                extra = {"rsqrt_scale": fn["params"]["scale"], "rsqrt_eps": fn["params"]["eps"]}
            graph.add_node("Scalar", [x], [out], name=graph.fresh(f"{fn['label']}_{first}"), infos=[info_out],
                           fn=fn, label=fn["label"], **extra)
            changed = True
            break
    graph.remove_unused()
    return graph



