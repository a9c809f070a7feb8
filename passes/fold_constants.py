"""Constant folding: every node whose inputs are all public constants becomes a constant.

Runs the op's reference implementation (``ir/ops.py``), so folding agrees with the
interpreter by construction. Shapes are static, so shape arithmetic folds away too.
"""
from __future__ import annotations

import numpy as np

from fusec.ir.graph import Graph
from fusec.ir.ops import run_node
from fusec.passes.options import CompileOptions


def fold_constants(graph: Graph, opts: CompileOptions) -> Graph:
    for node in graph.nodes():
        if not all(t == "" or graph.is_const(t) for t in node.inputs):
            continue
        outs = run_node(node.op, [graph.const(t) if t else None for t in node.inputs], node.attrs, f" ({node!r})")
        graph.remove_node(node.name)
        for t, v in zip(node.outputs, outs):
            info = graph.tensors.get(t)
            graph.add_const(t, np.asarray(v), dtype=info.dtype if info else None)
    graph.remove_unused()
    return graph
