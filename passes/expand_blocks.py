"""Expand vector blocks (Softmax, LayerNorm) into explicit reductions and scalar gates.

DESIGN §3: blocks are built from IR nodes so their reductions stay explicit. The scalar
parts become ``Scalar`` nodes whose label and ``domain`` say what they compute, so the
spec-fitting pass (fused gates) and the SIGMA lowering (``--gates sigma``) treat them
alike and the comparison between the two is about the gates only:

- Softmax: ``m = max(x)``; ``e = exp(x - m)`` (label ``nexp``, domain x <= 0);
  ``s = sum(e)``; ``y = e * (1/s)`` (label ``reciprocal``, domain [1, k]). The fused build
  lets the max be off by up to g = ``softmax_max_grid`` (the ReduceMax's ``grid``): softmax
  does not depend on the shift, and a max on a grid of g compares on fewer bits (its tree is
  a third of BERT-base's key). Then x - m <= g, the row sum lies in [e^-g, k e^g], and exp is
  fitted up to +g. A softmax with a public pattern of kept entries (its second input, from
  passes/mask_softmax) takes max and exp over rows whose masked entries repeat a kept one,
  and ``e = Where(keep, exp(x - m), 0)``: masked entries are exactly 0.
- LayerNorm: ``d = x - mean(x)``; ``r = 1/sqrt(sum(d*d)/k + eps)`` (label ``rsqrt``, the
  1/k and eps folded into the scalar function, so the sum feeds the gate directly);
  ``y = d * r * gamma + beta``. The fused build centres without the mean's truncation:
  ``d = (k x - sum x) 2^-p`` = c (x - mean), and the rsqrt absorbs c (``_centre_fused``).

The ``domain`` is a structural fact the fitting uses together with the proven range
(``ir/nonlinear.fit_domain``): the row sum's [1, k] is widened by the errors of the k exp
specs that feed it; the layer norm's sum of squares is fitted over [0, proven max] with
geometric pieces (only below one input ulp is a value held, and the note says so).
"""
from __future__ import annotations

import math

import numpy as np

from fusec.ir import scalar_fn
from fusec.ir.graph import Graph, Node, TensorInfo
from fusec.passes.options import CompileOptions


class _Builder:
    def __init__(self, graph: Graph, node: Node):
        self.g, self.base = graph, node.name
        self.vis = "secret"

    def op(self, op: str, inputs: list[str], out_shape, out: str | None = None, **attrs) -> str:
        out = out or self.g.fresh(f"{self.base}_{op.lower()}")
        self.g.add_node(op, inputs, [out], name=self.g.fresh(f"{self.base}/{op.lower()}"),
                        infos=[TensorInfo(tuple(out_shape), "float", self.vis)], **attrs)
        return out

    def const(self, name: str, value) -> str:
        return self.g.add_const(self.g.fresh(f"{self.base}_{name}"), np.asarray(value, np.float64))

    def index(self, name: str, value) -> str:
        """An integer constant (shapes, gather indices)."""
        return self.g.add_const(self.g.fresh(f"{self.base}_{name}"), np.asarray(value, np.int64))


def _reduced(shape, axes) -> tuple[int, ...]:
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def _softmax(graph: Graph, node: Node, grid: float = 0.0) -> None:
    b = _Builder(graph, node)
    x, out = node.inputs[0], node.outputs[0]
    shape = graph.info(x).shape
    axis = node.attrs["axis"] % len(shape)
    red = _reduced(shape, {axis})
    k = shape[axis]
    keep = node.attrs.get("keep")
    graph.remove_node(node.name)
    if keep is not None:        # passes/mask_softmax: masked entries repeat a kept one, exp is masked
        x = _fill_masked(b, x, np.broadcast_to(graph.const(keep).astype(bool), shape), axis)
    m = b.op("ReduceMax", [x], red, axes=[axis], keepdims=True, **({"grid": grid} if grid else {}))
    mb = b.op("Expand", [m], shape, shape=list(shape))
    d = b.op("Sub", [x, mb], shape)
    e = b.op("Scalar", [d], shape, fn=scalar_fn.unary("Exp", label="nexp"), label="nexp",
             domain=[None, grid], block="softmax")
    if keep is not None:
        e = b.op("Where", [keep, e, b.const("zero", 0.0)], shape)
    s = b.op("ReduceSum", [e], red, axes=[axis], keepdims=True)
    r = b.op("Scalar", [s], red, fn=scalar_fn.unary("Reciprocal", label="reciprocal"), label="reciprocal",
             domain=[math.exp(-grid), k * math.exp(grid)], block="softmax")
    rb = b.op("Expand", [r], shape, shape=list(shape))
    b.op("Mul", [e, rb], shape, out=out, block="softmax")


def _fill_masked(b: "_Builder", x: str, keep: np.ndarray, axis: int) -> str:
    """``x`` with every masked entry replaced by the first kept entry of its row (a public
    gather over the flattened tensor): the row's max is unchanged, and the proven range is
    that of the kept entries."""
    shape = keep.shape
    n = int(np.prod(shape))
    idx = np.arange(n, dtype=np.int64).reshape(shape)
    first = np.expand_dims(np.argmax(keep, axis=axis), axis)         # a kept entry per row
    flat = np.where(keep, idx, np.take_along_axis(idx, first, axis=axis)).reshape(-1)
    v = b.op("Reshape", [x], (n,), shape=[n])
    g = b.op("Gather", [v, b.index("fill", flat)], (n,), axis=0)
    return b.op("Reshape", [g], shape, shape=list(shape))


def _rsqrt_fn(scale: float, eps: float, out_mul: float = 1.0) -> dict:
    """``out_mul / sqrt(scale * x + eps)`` as a scalar function (label ``rsqrt``)."""
    nodes = [{"op": "Mul", "inputs": ["x", "k"], "outputs": ["v"], "attrs": {}},
             {"op": "Add", "inputs": ["v", "eps"], "outputs": ["ve"], "attrs": {}},
             {"op": "Pow", "inputs": ["ve", "h"], "outputs": ["y" if out_mul == 1.0 else "p"], "attrs": {}}]
    consts = {"k": scale, "eps": eps, "h": -0.5}
    if out_mul != 1.0:
        nodes.append({"op": "Mul", "inputs": ["p", "c"], "outputs": ["y"], "attrs": {}})
        consts["c"] = out_mul
    return {"input": "x", "output": "y", "label": "rsqrt", "consts": consts, "nodes": nodes}


def _centre_fused(b: "_Builder", x: str, shape, axes, k: int, max_shift: int) -> tuple[str, float]:
    """(``c (x - mean x)``, c) without a truncation: ``Centre`` (``k x - sum x``) is exact at
    x's scale (the mean's 1/k would add fractional bits that must be cut before the square,
    a round), then a public power of two ``2^-p`` (``p = floor(log2 k)``, so ``c = k / 2^p``
    in [1, 2)) brings it back to x's magnitude; the products that read it truncate it
    inside their own round (``MulNarrow``), and the rsqrt absorbs c."""
    p = min(int(math.floor(math.log2(k))), max_shift)     # 2^-p must be exact at the weights' scale
    dk = b.op("Centre", [x], shape, axes=list(axes))
    return b.op("Mul", [dk, b.const("pow2", 2.0 ** -p)], shape), k / 2.0 ** p


def _layernorm(graph: Graph, node: Node, fused: bool, weight_frac: int = 12) -> None:
    b = _Builder(graph, node)
    x, out = node.inputs[0], node.outputs[0]
    gamma = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] else None
    beta = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    shape = graph.info(x).shape
    axes = list(range(node.attrs["axis"] % len(shape), len(shape)))
    red = _reduced(shape, set(axes))
    k = int(np.prod([shape[a] for a in axes]))
    eps = float(node.attrs.get("epsilon", 1e-5))
    graph.remove_node(node.name)
    if fused:
        d, c = _centre_fused(b, x, shape, axes, k, weight_frac)
    else:
        mean = b.op("ReduceMean", [x], red, axes=axes, keepdims=True)
        d, c = b.op("Sub", [x, b.op("Expand", [mean], shape, shape=list(shape))], shape), 1.0
    sq = b.op("Mul", [d, d], shape)
    ssum = b.op("ReduceSum", [sq], red, axes=axes, keepdims=True)
    # d = c (x - mean): var = sum(d^2) / (c^2 k), and y = d * rsqrt(var + eps) / c
    scale = 1.0 / (c * c * k)
    r = b.op("Scalar", [ssum], red, fn=_rsqrt_fn(scale, eps, 1.0 / c), label="rsqrt", domain=[0.0, None],
             block="layernorm", rsqrt_scale=scale, rsqrt_eps=eps)
    y = b.op("Mul", [d, b.op("Expand", [r], shape, shape=list(shape))], shape, block="layernorm")
    if gamma is not None:
        y = b.op("Mul", [y, gamma], shape, block="layernorm")
    if beta is not None:
        y = b.op("Add", [y, beta], shape, block="layernorm")
    # give the block's last tensor the block's output name
    last = graph.producer(y)
    info = graph.info(y)
    graph.remove_node(last.name)
    graph.add_node(last.op, last.inputs, [out], name=last.name, infos=[info], **last.attrs)
    graph.tensors.pop(y, None)


def expand_blocks(graph: Graph, opts: CompileOptions) -> Graph:
    for node in graph.nodes():
        if graph.info(node.inputs[0]).visibility != "secret" if node.inputs else True:
            continue
        if node.op == "Softmax":
            _softmax(graph, node, opts.softmax_max_grid if opts.gates == "fused" else 0.0)
        elif node.op == "LayerNorm":
            _layernorm(graph, node, fused=opts.gates == "fused", weight_frac=opts.weight_frac)
    graph.remove_unused()
    return graph
