"""Divide attention's values after the product: ``softmax(S) @ V = diag(1/s) (E @ V)``.

``passes/expand_blocks`` writes softmax as ``e = exp(x - max)``, ``s = sum(e)``,
``P = e * (1/s)``; attention then multiplies ``P @ V``. Moving the division after the
product (``(e @ V) * (1/s)``, the row scaling commutes with a product on the right):

- ``e @ V`` no longer waits for the reciprocal: it runs in the reciprocal's rounds, and the
  truncation between the two products folds into the final elementwise product
  (``MulNarrow``), so attention's tail is two rounds shorter and one round is saved overall;
- the elementwise product is over ``seq x head_dim`` instead of ``seq x seq`` entries.

The result is a convex combination of V's rows, which ``passes/ranges`` proves
(``_weighted_average``), so the output keeps V's range. Applied to ``--gates fused`` only:
the SIGMA baseline keeps SIGMA's order (normalise, truncate, multiply).
"""
from __future__ import annotations

from fusec.ir.graph import Graph, Node, TensorInfo
from fusec.passes.options import CompileOptions


def _softmax_product(graph: Graph, node: Node) -> tuple[str, str, Node] | None:
    """(e, r, the MatMul reading P) when ``node`` is softmax's ``P = e * Expand(r)`` and P's only
    reader multiplies it from the left."""
    if node.op != "Mul" or node.attrs.get("block") != "softmax":
        return None
    p = node.outputs[0]
    readers = graph.consumers(p)
    if p in graph.outputs or len(readers) != 1 or readers[0].op != "MatMul" or readers[0].inputs[0] != p:
        return None
    e, rb = node.inputs
    exp = graph.producer(rb)
    if exp is None or exp.op != "Expand":
        return None
    r = exp.inputs[0]
    rec = graph.producer(r)
    if rec is None or rec.op != "Scalar" or rec.attrs.get("label") != "reciprocal":
        return None
    shape = graph.info(e).shape
    if graph.info(r).shape != shape[:-1] + (1,):       # one sum per row of e (softmax on the last axis)
        return None
    return e, r, readers[0]


def defer_softmax_division(graph: Graph, opts: CompileOptions) -> Graph:
    if opts.gates != "fused":
        return graph
    for node in graph.nodes():
        found = _softmax_product(graph, node)
        if found is None:
            continue
        e, r, mm = found
        v, out = mm.inputs[1], mm.outputs[0]
        out_info = graph.info(out)
        ev = graph.fresh(f"{out}_unnormalised")
        graph.remove_node(mm.name)
        graph.add_node("MatMul", [e, v], [ev], name=graph.fresh(f"{mm.name}/unnormalised"),
                       infos=[TensorInfo(out_info.shape, "float", out_info.visibility)])
        rb = graph.fresh(f"{r}_rows")
        graph.add_node("Expand", [r], [rb], name=graph.fresh(f"{node.name}/rows"),
                       infos=[TensorInfo(out_info.shape, "float", "secret")], shape=list(out_info.shape))
        graph.add_node("Mul", [ev, rb], [out], name=mm.name, infos=[out_info], block="softmax")
        graph.remove_node(node.name)
    graph.remove_unused()
    return graph
