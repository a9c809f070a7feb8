"""Rewrite ops into the few forms the later passes know, without changing meaning.

- ``Div(x, c)`` -> ``Mul(x, 1/c)``; ``Div(x, y)`` with secret y -> ``Mul(x, Reciprocal(y))``
  (the reciprocal then fuses with whatever produced y: sqrt, clip, ...);
- ``Neg(x)`` -> ``Mul(x, -1)``; ``Pow(x, 2)`` -> ``Mul(x, x)``; ``Sub(c, x)`` stays;
- ``ReduceL2(x)`` -> ``Sqrt(ReduceSum(x*x))``, ``ReduceSumSquare(x)`` -> ``ReduceSum(x*x)``;
- unary elementwise ops move in front of single-input data movement (``Expand``,
  ``Reshape``, ``Transpose``...) whose result only they read, so a nonlinearity runs on the
  un-broadcast tensor (fewer keys) and chains like ``1/clip(sqrt(s))`` become adjacent.
"""
from __future__ import annotations

import numpy as np

from fusec.ir.graph import Graph, Node, TensorInfo
from fusec.ir.ops import OPS
from fusec.passes.options import CompileOptions

MOVABLE = {"Reshape", "Transpose", "Expand", "Slice"}


def _secret(graph: Graph, t: str) -> bool:
    return graph.info(t).visibility != "public"


def _replace(graph: Graph, node: Node, op: str, inputs: list[str], **attrs) -> None:
    out = node.outputs[0]
    info = graph.info(out)
    graph.remove_node(node.name)
    graph.add_node(op, inputs, [out], name=node.name, infos=[info], **attrs)


def _scalar_const(graph: Graph, base: str, value: float) -> str:
    return graph.add_const(graph.fresh(base), np.asarray(value, np.float64))


def _rewrite_arith(graph: Graph) -> None:
    for node in graph.nodes():
        op, ins = node.op, node.inputs
        if node.attrs.get("at") == "client":   # plaintext at the input owner: nothing to rewrite
            continue
        if op == "Div" and graph.info(ins[0]).dtype == "float":
            if graph.is_const(ins[1]):
                with np.errstate(divide="ignore"):
                    inv = graph.add_const(graph.fresh(ins[1] + "_inv"), 1.0 / graph.const(ins[1]).astype(np.float64))
                _replace(graph, node, "Mul", [ins[0], inv])
            elif _secret(graph, ins[1]):
                rec = graph.fresh(ins[1] + "_recip")
                graph.add_node("Reciprocal", [ins[1]], [rec], name=graph.fresh(node.name + "_recip"),
                               infos=[TensorInfo(graph.info(ins[1]).shape, "float", graph.info(ins[1]).visibility)])
                _replace(graph, node, "Mul", [ins[0], rec])
        elif op == "Neg":
            _replace(graph, node, "Mul", [ins[0], _scalar_const(graph, "minus_one", -1.0)])
        elif op == "Pow" and graph.is_const(ins[1]) and graph.const(ins[1]).size == 1 \
                and float(graph.const(ins[1]).reshape(-1)[0]) == 2.0 and _secret(graph, ins[0]):
            _replace(graph, node, "Mul", [ins[0], ins[0]])
        elif op in ("Max", "Min") and len(ins) >= 2 and all(_secret(graph, t) for t in ins):
            _minmax(graph, node)
        elif op in ("ReduceL2", "ReduceSumSquare"):
            x = ins[0]
            sq = graph.fresh(x + "_sq")
            graph.add_node("Mul", [x, x], [sq], name=graph.fresh(node.name + "_sq"),
                           infos=[TensorInfo(graph.info(x).shape, "float", graph.info(x).visibility)])
            if op == "ReduceSumSquare":
                _replace(graph, node, "ReduceSum", [sq], **node.attrs)
            else:
                s = graph.fresh(x + "_sumsq")
                out_info = graph.info(node.outputs[0])
                graph.add_node("ReduceSum", [sq], [s], name=graph.fresh(node.name + "_sum"),
                               infos=[TensorInfo(out_info.shape, "float", out_info.visibility)], **node.attrs)
                _replace(graph, node, "Sqrt", [s])


def _minmax(graph: Graph, node: Node) -> None:
    """max(a, b) = relu(a - b) + b and min(a, b) = a - relu(a - b), chained for more inputs."""
    out = node.outputs[0]
    info = graph.info(out)
    graph.remove_node(node.name)
    acc = node.inputs[0]
    for i, b in enumerate(node.inputs[1:]):
        last = i == len(node.inputs) - 2
        mk = lambda tag: graph.fresh(f"{out}_{tag}{i}")  # noqa: E731
        d, r = mk("diff"), mk("relu")
        graph.add_node("Sub", [acc, b], [d], name=graph.fresh(f"{node.name}/sub{i}"),
                       infos=[TensorInfo(info.shape, "float", info.visibility)])
        graph.add_node("Relu", [d], [r], name=graph.fresh(f"{node.name}/relu{i}"),
                       infos=[TensorInfo(info.shape, "float", info.visibility)])
        res = out if last else mk("acc")
        if node.op == "Max":
            graph.add_node("Add", [r, b], [res], name=graph.fresh(f"{node.name}/add{i}"),
                           infos=[TensorInfo(info.shape, "float", info.visibility)])
        else:
            graph.add_node("Sub", [acc, r], [res], name=graph.fresh(f"{node.name}/sub_relu{i}"),
                           infos=[TensorInfo(info.shape, "float", info.visibility)])
        acc = res


def _sink_movement(graph: Graph) -> bool:
    changed = False
    for node in graph.nodes():
        d = OPS.get(node.op)
        if d is None or d.kind != "unary" or len(node.inputs) != 1 or node.attrs.get("at") == "client":
            continue
        mv = graph.producer(node.inputs[0])
        if mv is None or mv.op not in MOVABLE or len(graph.consumers(node.inputs[0])) != 1 \
                or node.inputs[0] in graph.outputs or not _secret(graph, mv.inputs[0]):
            continue
        src, mid, out = mv.inputs[0], node.inputs[0], node.outputs[0]
        new_t = graph.fresh(f"{out}_pre")
        graph.add_node(node.op, [src], [new_t], name=graph.fresh(node.name + "_pre"),
                       infos=[TensorInfo(graph.info(src).shape, "float", graph.info(src).visibility)], **node.attrs)
        info = graph.info(out)
        graph.remove_node(node.name)
        graph.remove_node(mv.name)
        graph.add_node(mv.op, [new_t] + mv.inputs[1:], [out], name=mv.name, infos=[info], **mv.attrs)
        graph.tensors.pop(mid, None)
        changed = True
    return changed


def canonicalize(graph: Graph, opts: CompileOptions) -> Graph:
    _rewrite_arith(graph)
    while _sink_movement(graph):
        pass
    graph.remove_unused()
    return graph
