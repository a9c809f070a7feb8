"""Open a gate's output on the bits its readers use, not the whole ring (demanded bits).

A secret x secret product computed mod 2^d needs its inputs only mod 2^d. A free truncation
reads only the low ``view_bits`` of its input. Ring-linear gates (add, public multiply or
matmul, data movement, sums) commute with reduction mod 2^d. So a wire's *demand* is the
most any reader takes of it:

* a truncation (``TruncateNarrow``): its proven view, ``view_bits``;
* a product (``Mul``, ``MatMulPrivate``, ``MulNarrow``): its own ring width (a ``MulNarrow``
  input read through a view: the view's width);
* a packed scalar lookup: its comparison view or its value ring, whichever is wider;
* a ring-linear gate: the demand of its own output;
* anything else (other lookups, max trees, outputs): the whole ring.

Walking the gates backwards, a product whose output is demanded on ``d < n`` bits runs mod
2^d (its key, its output mask and its open are d bits), and a truncation widens its result
to ``max(d, m + 1)`` bits instead of n (also a scalar gate's output truncation). In BERT-base's attention, ``exp @ V`` is read only by
softmax's last product through a 38-bit view, so it runs on 38 bits, and V, read only by it,
is widened to 38. That makes fewer bytes and less key, with the same rounds and the same
values mod 2^d.

Only the fused gate set: the faithful SIGMA build keeps SIGMA's widths.
"""
from __future__ import annotations

import copy
from typing import Callable

from fusec.passes.options import CompileOptions
from fusec.runtime.gates.arith import MatMulPrivate, Mul
from fusec.runtime.gates.base import Chain, Gate
from fusec.runtime.gates.linear import Add, AddPublic, MatMulPublic, MulPublic
from fusec.runtime.gates.movement import Rearrange, SumAxis
from fusec.runtime.gates.mul_narrow import MulNarrow
from fusec.runtime.gates.scalar import PackedLookup
from fusec.runtime.gates.truncation import TruncateNarrow
from fusec.runtime.graph import GateGraph, Node

#: gates whose output mod 2^d depends only on their inputs mod 2^d
RING_LINEAR = (Add, AddPublic, MulPublic, MatMulPublic, Rearrange, SumAxis)


def _reads(gate: Gate, slot: int, out_demand: int, n: int) -> int:
    """The low bits of input ``slot`` that ``gate`` reads, given its output's demand."""
    if isinstance(gate, TruncateNarrow):
        return gate.view_bits
    if isinstance(gate, MulNarrow):
        view = gate.views[1 if slot and not gate.square else 0]
        return gate.bits if view is None else view.bits
    if isinstance(gate, (Mul, MatMulPrivate)):
        return gate.bits
    if isinstance(gate, RING_LINEAR):
        return out_demand
    if isinstance(gate, Chain) and isinstance(gate.stages[0], PackedLookup):
        first = gate.stages[0]          # compares on its view, evaluates on its value ring
        return max(first.view_bits, first.vbits)
    return n


def _narrowed(gate: Gate, d: int) -> Gate | None:
    """``gate`` rebuilt to leave its output on ``d`` bits, or None where nothing changes. A
    chain (a scalar gate: lookup, then its output truncation) narrows its last stage."""
    if isinstance(gate, Chain):
        last = _narrowed(gate.stages[-1], d) if isinstance(gate.stages[-1], TruncateNarrow) else None
        if last is None:
            return None
        chain = copy.copy(gate)
        chain.stages = [*gate.stages[:-1], last]
        chain.out_bits = last.out_bits
        return chain
    if isinstance(gate, TruncateNarrow):
        w = max(d, gate.mid_bits + 1)
        return TruncateNarrow(gate.elements, gate.bits, gate.view_bits, gate.shift, out_bits=w) \
            if w < gate.out_bits else None
    if isinstance(gate, MatMulPrivate) and d < gate.bits:
        return MatMulPrivate(gate.x_shape, gate.w_shape, d)
    if isinstance(gate, Mul) and d < gate.bits:
        return Mul(gate.elements, d)
    if isinstance(gate, MulNarrow):        # no narrower than its own views of its inputs
        w = max([d] + [v.bits for v in gate.views if v is not None])
        return MulNarrow(gate.elements, w, *gate.views, square=gate.square) if w < gate.bits else None
    return None


NARROWERS: dict[str, Callable] = {"fused": _narrowed}


def narrow_opens(gates: GateGraph, opts: CompileOptions) -> GateGraph:
    """Every product and truncation on its output's demanded width (see the module). A
    wire nothing reads, or an ``Output`` reads, keeps the whole ring."""
    narrow = NARROWERS.get(opts.gates)
    if narrow is None:
        return gates
    n = opts.bits
    readers: dict[str, list[tuple[Node, int]]] = {}
    for node in gates.nodes:
        for slot, w in enumerate(node.inputs):
            readers.setdefault(w, []).append((node, slot))
    demand: dict[str, int] = {}
    for node in reversed(gates.nodes):      # every reader comes after its producer
        rs = readers.get(node.id, [])
        d = n if not rs else max(_reads(r.gate, slot, demand[r.id], n) for r, slot in rs)
        new = narrow(node.gate, d) if d < n else None
        if new is not None:
            node.gate = new
        demand[node.id] = d
    return gates
