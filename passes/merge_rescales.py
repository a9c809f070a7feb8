"""Merge chains of truncations: ``Rescale(Rescale(x, a), b)`` -> ``Rescale(x, a + b)``.

The scale pass inserts rescales lazily, one decision at a time, so a value can be cut
twice in a row (softmax's shifted scores 36 -> 24 -> 12 bits). With the free truncation
(``TruncateNarrow``) one cut by ``a + b`` costs one round and one ulp, two cost two of
each. Only an inner rescale nobody else reads is folded away.
"""
from __future__ import annotations

from fusec.ir.graph import Graph
from fusec.passes.options import CompileOptions


def merge_rescales(graph: Graph, opts: CompileOptions) -> Graph:
    for node in graph.nodes():
        if node.op != "Rescale" or node.attrs["shift"] <= 0:
            continue
        inner = graph.producer(node.inputs[0])
        if inner is None or inner.op != "Rescale" or inner.attrs["shift"] <= 0:
            continue
        mid = inner.outputs[0]
        if mid in graph.outputs or len(graph.consumers(mid)) != 1:
            continue
        node.attrs["shift"] = inner.attrs["shift"] + node.attrs["shift"]
        graph.rename_input(node.name, mid, inner.inputs[0])
    graph.remove_unused()
    return graph
