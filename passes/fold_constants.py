"""Constant folding: every node whose inputs are all public constants becomes a constant.

Runs the op's reference implementation (``ir/ops.py``), so folding agrees with the
interpreter by construction. Shapes are static, so shape arithmetic folds away too.
"""
from __future__ import annotations

import numpy as np

from fusec import limits
from fusec.ir.graph import Graph
from fusec.ir.ops import run_node
from fusec.passes.options import CompileOptions


def fold_constants(graph: Graph, opts: CompileOptions) -> Graph:
    """Fold under ``fusec.limits``: each output's size (known from its shape) is checked before the
    node runs, and all folds together share one time budget."""
    budget = limits.Budget(limits.current().fold_seconds)
    for node in graph.nodes():
        if not all(t == "" or graph.is_const(t) for t in node.inputs):
            continue
        for t in node.outputs:
            info = graph.tensors.get(t)
            if info is not None:
                limits.check_size(info.shape, 8, f"node {node.name!r} ({node.op}): output {t!r}")
        with budget.guard(f"folding node {node.name!r} ({node.op})"):
            outs = run_node(node.op, [graph.const(t) if t else None for t in node.inputs], node.attrs,
                            f" ({node!r})")
        graph.remove_node(node.name)
        for t, v in zip(node.outputs, outs):
            info = graph.tensors.get(t)
            graph.add_const(t, np.asarray(v), dtype=info.dtype if info else None)
    graph.remove_unused()
    return graph
