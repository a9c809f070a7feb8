"""Comparisons and selects on secret data as arithmetic the scalar gates can take (issue 12, item 4).

The exporters write ``nn.Softplus`` as ``Where(x > 20, x, softplus(x))``, clamps as
``Where(x < a, a, x)``, masks as ``Where(x == 0, ...)``. On secret data none of these
has a gate of its own; they all become arithmetic on 0/1 values, which
``passes/fuse_scalar`` then fuses:

- ``Greater/Less/Equal(p, q)`` (``q`` may be a constant): from the exact sign gate
  ``Step(d) = [d >= 0]`` of ``d = p - q`` (the library's DReLU, then a Select of a public 1 for the 0/1 value), so a
  comparison of two secrets is exact (a bare step is nothing the spec fitter can fit);
- ``Where(p < q, a, b)`` -> ``a + [p - q >= 0] * (b - a)``: one DReLU and one Select
  (``SelectStep``); any other secret condition ``c`` -> ``b + c * (a - b)`` (or ``c*a + (1-c)*b``
  with a constant branch);
- ``Not(c)`` -> ``1 - c``, ``And`` -> ``c1 * c2``, ``Or`` -> ``c1 + c2 - c1 * c2``; a cast of
  such a value to float is the value itself.

Called by ``fuse_scalar`` before it grows its regions.
"""
from __future__ import annotations

import numpy as np

from fusec.ir.graph import Graph, Node, TensorInfo
from fusec.ir.ops import OPS, OpDef
from fusec.passes import lower, ranges, scales

COMPARE = ("Greater", "Less", "Equal")
STEP = "Step"
SELECT_STEP = "SelectStep"

OPS[SELECT_STEP] = OpDef(SELECT_STEP, "misc",
                         lambda xs, a: [(np.asarray(xs[0], np.float64) >= 0) * np.asarray(xs[1], np.float64)],
                         True, "[d >= 0] * x (passes/compare_select): DReLU of d, then a Select of x")
OPS[STEP] = OpDef(STEP, "misc", lambda xs, a: [(np.asarray(xs[0], np.float64) >= 0).astype(np.float64)], True,
                  "[x >= 0] as 0/1 (passes/compare_select): DReLU, then a Select of a public 1")


def rewrite(graph: Graph, frac: int) -> Graph:
    """``frac``: the activations' fractional bits."""
    for node in graph.nodes():
        if node.attrs.get("at") == "client" or not any(t and _secret(graph, t) for t in node.inputs):
            continue
        if node.op in COMPARE:
            if not _only_selects(graph, node):
                _compare(graph, node, frac)
            continue
        handler = _HANDLERS.get(node.op)
        if handler is not None:
            handler(graph, node)
    return graph


def _secret(graph: Graph, t: str) -> bool:
    return graph.info(t).visibility == "secret"


def _scalar_const(graph: Graph, t: str) -> bool:
    return graph.is_const(t) and np.size(graph.const(t)) == 1


def _const(graph: Graph, value: float, base: str) -> str:
    return graph.add_const(graph.fresh(base), np.asarray(value, np.float32))


def _new(graph: Graph, op: str, ins: list[str], like: str, base: str, shape=None) -> str:
    shape = graph.info(like).shape if shape is None else shape
    out = graph.fresh(base)
    graph.add_node(op, ins, [out], name=graph.fresh(base), infos=[TensorInfo(shape, "float", "secret")])
    return out


def _replace(graph: Graph, node: Node, new_out: str) -> None:
    """Readers of ``node``'s output read ``new_out``; the node goes."""
    old = node.outputs[0]
    for c in list(graph.consumers(old)):
        graph.rename_input(c.name, old, new_out)
    graph.outputs = [new_out if o == old else o for o in graph.outputs]
    graph.remove_node(node.name)


def _compare(graph: Graph, node: Node, frac: int) -> None:
    """With ``S(d) = [d >= 0]`` (one exact DReLU, :data:`STEP`): ``p > q`` = ``1 - S(q - p)``,
    ``p < q`` = ``1 - S(p - q)``, ``p == q`` = ``S(p - q) + S(q - p) - 1``. Also against a
    scalar constant: a step inside a fused chain is a jump no polynomial piece fits."""
    p, q = node.inputs
    out = node.outputs[0]
    shape = graph.info(out).shape
    one = _const(graph, 1.0, f"{node.name}_one")
    if node.op == "Equal":
        up = _step(graph, _new(graph, "Sub", [p, q], out, f"{node.name}_d", shape), out, node.name + "_up")
        dn = _step(graph, _new(graph, "Sub", [q, p], out, f"{node.name}_e", shape), out, node.name + "_dn")
        res = _new(graph, "Sub", [_new(graph, "Add", [up, dn], out, f"{node.name}_sum", shape), one], out,
                   f"{node.name}_eq", shape)
    else:
        a, b = (q, p) if node.op == "Greater" else (p, q)
        st = _step(graph, _new(graph, "Sub", [a, b], out, f"{node.name}_d", shape), out, node.name + "_ge")
        res = _new(graph, "Sub", [one, st], out, f"{node.name}_cmp", shape)
    _replace(graph, node, res)


def _step(graph: Graph, d: str, like: str, base: str) -> str:
    out = graph.fresh(base)
    graph.add_node(STEP, [d], [out], name=graph.fresh(base), infos=[TensorInfo(graph.info(like).shape, "float",
                                                                               "secret")])
    return out


def _only_selects(graph: Graph, node: Node) -> bool:
    """A ``<`` / ``>`` read only as the condition of Wheres: the Where takes it (one Select)."""
    readers = graph.consumers(node.outputs[0])
    return node.op != "Equal" and node.outputs[0] not in graph.outputs and bool(readers) and all(
        r.op == "Where" and r.inputs[0] == node.outputs[0] and r.inputs[1:].count(node.outputs[0]) == 0
        and not (graph.is_const(r.inputs[1]) and graph.is_const(r.inputs[2])) for r in readers)


def _where(graph: Graph, node: Node) -> None:
    c, a, b = node.inputs
    if not _secret(graph, c):
        return                                 # a public condition: the existing lowering
    out = node.outputs[0]
    shape = graph.info(out).shape
    cmp = graph.producer(c)
    if cmp is not None and cmp.op in ("Greater", "Less") and not (graph.is_const(a) and graph.is_const(b)):
        # Where(p < q, a, b) = a + [p - q >= 0] * (b - a); for p > q the sign of q - p:
        # one DReLU and one Select of the secret difference (SELECT_STEP), no product after it
        p, q = cmp.inputs
        d = _new(graph, "Sub", [p, q] if cmp.op == "Less" else [q, p], out, f"{node.name}_d",
                 graph.info(cmp.outputs[0]).shape)
        diff = _new(graph, "Sub", [b, a], out, f"{node.name}_diff", shape)
        pick = graph.fresh(f"{node.name}_pick")
        graph.add_node(SELECT_STEP, [d, diff], [pick], name=graph.fresh(f"{node.name}_select"),
                       infos=[TensorInfo(shape, "float", "secret")])
        _replace(graph, node, _new(graph, "Add", [a, pick], out, f"{node.name}_sel", shape))
        return
    if graph.is_const(a) and graph.is_const(b):
        diff = graph.add_const(graph.fresh(f"{node.name}_diff"),
                               np.asarray(graph.const(a), np.float64) - np.asarray(graph.const(b), np.float64))
    elif graph.is_const(a) or graph.is_const(b):
        # one constant branch (a mask's "minus infinity"): c*a + (1-c)*b, each product with the
        # constant public, so the constant's magnitude never meets a secret product
        not_c = _new(graph, "Sub", [_const(graph, 1.0, f"{node.name}_one"), c], out, f"{node.name}_notc", shape)
        ta = _new(graph, "Mul", [c, a], out, f"{node.name}_ta", shape)
        tb = _new(graph, "Mul", [not_c, b], out, f"{node.name}_tb", shape)
        _replace(graph, node, _new(graph, "Add", [ta, tb], out, f"{node.name}_sel", shape))
        return
    else:
        diff = _new(graph, "Sub", [a, b], out, f"{node.name}_diff", shape)
    pick = _new(graph, "Mul", [c, diff], out, f"{node.name}_pick", shape)
    _replace(graph, node, _new(graph, "Add", [b, pick], out, f"{node.name}_sel", shape))


def _not(graph: Graph, node: Node) -> None:
    out = node.outputs[0]
    one = _const(graph, 1.0, f"{node.name}_one")
    _replace(graph, node, _new(graph, "Sub", [one, node.inputs[0]], out, f"{node.name}_not"))


def _and(graph: Graph, node: Node) -> None:
    out = node.outputs[0]
    _replace(graph, node, _new(graph, "Mul", list(node.inputs), out, f"{node.name}_and"))


def _or(graph: Graph, node: Node) -> None:
    out = node.outputs[0]
    x, y = node.inputs
    both = _new(graph, "Mul", [x, y], out, f"{node.name}_both")
    s = _new(graph, "Add", [x, y], out, f"{node.name}_sum")
    _replace(graph, node, _new(graph, "Sub", [s, both], out, f"{node.name}_or"))


def _cast(graph: Graph, node: Node) -> None:
    """A secret 0/1 value cast to float is itself (the IR keeps secret comparisons as floats)."""
    if node.attrs.get("to", "float") == "float" and graph.info(node.inputs[0]).dtype == "float":
        _replace(graph, node, node.inputs[0])


_HANDLERS = {"Cast": _cast, "Where": _where,
             "Not": _not, "And": _and, "Or": _or}


def _range(r, n: Node):
    return ranges.Bound(0.0, 1.0)


def _lower_step(lw, n: Node) -> None:
    """DReLU of the secret (an XOR-masked bit, one round), then ``bit * 1`` by a Select of a
    public-one wire (a zero-mask constant: ``x * 0 + 1``, free) at the output's scale."""
    from fusec.runtime.gates.compare import DReLU, Select  # noqa: PLC0415
    from fusec.runtime.gates.linear import AddPublic, MulPublic  # noqa: PLC0415
    x, out = n.inputs[0], n.outputs[0]
    N, bits = int(np.prod(lw.shape(x))), lw.n
    bit = lw.add(f"{n.name}/drelu", DReLU(N, bits), [lw.out.wire[x]], n)
    zero = lw.add(f"{n.name}/zero", MulPublic(N, bits, 0), [lw.out.wire[x]], n)
    one = lw.add(f"{n.name}/one", AddPublic(N, bits, lower.encode(np.ones(N), lw.scale(out), bits)), [zero], n)
    lw.out.wire[out] = lw.add(n.name, Select(N, bits), [bit, one], n)


def _range_select(r, n: Node):
    x = r.get(n.inputs[1])
    return ranges.Bound(min(0.0, x.lo), max(0.0, x.hi))


def _scale_select(sc, n: Node) -> None:
    sc.set(n.outputs[0], sc.scale(n.inputs[1]))          # b * x keeps x's scale


def _lower_select_step(lw, n: Node) -> None:
    from fusec.runtime.gates.compare import DReLU, Select  # noqa: PLC0415
    d, x = n.inputs
    out = n.outputs[0]
    shape = lw.shape(out)
    N, bits = int(np.prod(shape)), lw.n
    bit = lw.add(f"{n.name}/drelu", DReLU(N, bits), [lw.broadcast(n, d, shape, "bcast_d")], n)
    lw.out.wire[out] = lw.add(n.name, Select(N, bits), [bit, lw.broadcast(n, x, shape, "bcast_x")], n)


ranges.RULES[STEP] = _range
ranges.RULES[SELECT_STEP] = _range_select
scales.RULES[SELECT_STEP] = _scale_select
lower.HANDLERS[STEP] = _lower_step
lower.HANDLERS[SELECT_STEP] = _lower_select_step
