"""A layer norm's affine tail folded into the public matmuls that read it:
``(gamma * z + beta) @ W = z @ (diag(gamma) W) + beta @ W``.

``passes/expand_blocks`` writes a layer norm as ``z = d * rsqrt(var)`` (at 2f fractional bits,
one product of two f-bit tensors), then ``y = gamma * z + beta`` (public: 3f). A matmul with
public weights that reads y would land at 4f, so ``passes/scales`` truncates y first: a round
on the path from every layer norm to the next products (attention's Q, K, V; the MLP's first
layer and its activation). Reading z with gamma folded into the weights lands at 3f instead,
where the truncation that follows anyway (Q, K and V before their product; the rescale that
GELU's lookup folds in for free) is the only one: one round less per layer norm that feeds
matmuls. The layer norm's own output stays for its other readers (the residual connection),
whose truncation is then off the critical path.

Exact in real arithmetic; the folded weights are rounded to the weights' fixed-point grid as
the originals were. Applied to ``--gates fused`` only: the SIGMA baseline keeps SIGMA's order.
"""
from __future__ import annotations

import numpy as np

from fusec.ir.graph import Graph, Node, TensorInfo
from fusec.passes.options import CompileOptions


def _const_input(graph: Graph, node: Node) -> tuple[str, str] | None:
    """(secret input, public constant) of a two-input node with exactly one constant."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if graph.is_const(b) and not graph.is_const(a):
        return a, b
    if graph.is_const(a) and not graph.is_const(b):
        return b, a
    return None


def _vector(v: np.ndarray, k: int) -> np.ndarray | None:
    """A per-channel constant as a vector over the last axis (a scalar repeated), or None
    where it varies along another axis (then it is not gamma or beta of a norm over the last)."""
    if v.size == 1:
        return np.full(k, float(v.reshape(-1)[0]))
    return v.reshape(k) if v.size == k and v.shape[-1] == k else None


def _affine_tail(graph: Graph, out: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(z, gamma, beta) as vectors over the last axis when ``out`` is a layer norm's
    ``gamma * z + beta`` (either term may be absent, not both), else None."""
    k = graph.info(out).shape[-1]
    node, beta, gamma = graph.producer(out), np.zeros(k), np.ones(k)
    if node is None or node.attrs.get("block") != "layernorm":
        return None
    if node.op == "Add":
        pair = _const_input(graph, node)
        if pair is None:
            return None
        beta = graph.const(pair[1]).astype(np.float64)
        node = graph.producer(pair[0])
        if node is None or node.attrs.get("block") != "layernorm":
            return None
    if node.op == "Mul":
        pair = _const_input(graph, node)
        if pair is not None:
            gamma = graph.const(pair[1]).astype(np.float64)
            node = graph.producer(pair[0])
    # z itself is the normalising product d * Expand(rsqrt): two secret inputs (and not out itself)
    if node is None or node.outputs[0] == out or node.op != "Mul" or node.attrs.get("block") != "layernorm" or _const_input(graph, node):
        return None
    gamma, beta = _vector(gamma, k), _vector(beta, k)
    if gamma is None or beta is None:
        return None
    return node.outputs[0], gamma, beta


def _through_reshapes(graph: Graph, x: str) -> tuple[str, list[Node]]:
    """(the tensor before them, the reshapes in order) for reshapes that keep the last axis
    (GPT-2's Gemm flattens [batch, seq, d] to [batch * seq, d]): gamma and beta, vectors over
    that axis, commute with them."""
    chain: list[Node] = []
    p = graph.producer(x)
    while p is not None and p.op == "Reshape" and len(p.inputs) == 1 \
            and graph.info(p.inputs[0]).shape[-1:] == graph.info(x).shape[-1:]:
        chain.insert(0, p)
        x = p.inputs[0]
        p = graph.producer(x)
    return x, chain


def _reshaped(graph: Graph, z: str, reshapes: list[Node]) -> str:
    """z through copies of ``reshapes`` (the same target shapes)."""
    for r in reshapes:
        out = graph.fresh(f"{z}_reshaped")
        info = graph.info(r.outputs[0])
        graph.add_node("Reshape", [z], [out], name=graph.fresh(f"{r.name}/normed"),
                       infos=[TensorInfo(info.shape, info.dtype, info.visibility)], **r.attrs)
        z = out
    return z


def _fold(graph: Graph, mm: Node, z: str, gamma: np.ndarray, beta: np.ndarray) -> None:
    """``mm`` (y @ W) rewritten to read z: ``z @ (diag(gamma) W) + beta @ W``."""
    w = graph.const(mm.inputs[1])
    w = w if np.issubdtype(w.dtype, np.floating) else w.astype(np.float64)      # gamma W is not an integer matrix
    out = mm.outputs[0]
    info = graph.info(out)
    graph.remove_node(mm.name)
    folded = graph.add_const(graph.fresh(f"{mm.inputs[1]}_gamma"), (gamma[:, None] * w).astype(w.dtype))
    if not np.any(beta):
        graph.add_node("MatMul", [z, folded], [out], name=mm.name, infos=[info], **mm.attrs)
        return
    mid = graph.fresh(f"{out}_normed")
    graph.add_node("MatMul", [z, folded], [mid], name=mm.name, infos=[TensorInfo(info.shape, info.dtype,
                                                                                   info.visibility)], **mm.attrs)
    shift = graph.add_const(graph.fresh(f"{mm.inputs[1]}_beta"), (beta @ w).astype(w.dtype))
    graph.add_node("Add", [mid, shift], [out], name=graph.fresh(f"{mm.name}/beta"), infos=[info])


def fold_norm_affine(graph: Graph, opts: CompileOptions) -> Graph:
    if opts.gates != "fused":
        return graph
    for node in graph.nodes():
        if node.op != "MatMul" or len(node.inputs) != 2 or not graph.is_const(node.inputs[1]) \
                or graph.is_const(node.inputs[0]):
            continue
        y, reshapes = _through_reshapes(graph, node.inputs[0])
        w = graph.const(node.inputs[1])
        tail = _affine_tail(graph, y) if w.ndim == 2 else None
        if tail is not None and w.shape[0] == tail[1].shape[0]:
            z, gamma, beta = tail
            _fold(graph, node, _reshaped(graph, z, reshapes), gamma, beta)
            # what still reads the norm's output (the residual sum) reads it truncated early (passes/scales)
            graph.producer(y).attrs["truncate_early"] = True
    graph.remove_unused()
    return graph
