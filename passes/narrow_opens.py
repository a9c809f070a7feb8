"""Open a gate's output on the bits its readers use, not the whole ring (demanded bits).

A secret x secret product computed mod 2^d needs its inputs only mod 2^d. A free truncation
reads only the low ``view_bits`` of its input. Ring-linear gates (add, public multiply or
matmul, data movement, sums) commute with reduction mod 2^d. So a wire's *demand* is the
most any reader takes of it:

* a truncation (``TruncateNarrow``): its proven view, ``view_bits``;
* a product (``Mul``, ``MatMulPrivate``, ``MulNarrow``): its own ring width (a ``MulNarrow``
  input read through a view: the view's width);
* a packed scalar lookup: its comparison view or its value ring, whichever is wider (one
  that folds a rescale lifts its input from the view: the view);
* a narrow max tree: its view;
* a ring-linear gate: the demand of its own output;
* anything else (other lookups, outputs): the whole ring.

Walking the gates backwards, a product whose output is demanded on ``d < n`` bits runs mod
2^d (its key, its output mask and its open are d bits), and a truncation (a scalar gate's
output truncation too) widens its result to ``max(d, m + 1)`` bits instead of n. In
BERT-base's attention, ``exp @ V`` is read only by softmax's last product through a 38-bit
view, so it runs on 38 bits, and V, read only by it, is widened to 38. That makes fewer
bytes and less key, with the same rounds and the same values mod 2^d.

Only the fused gate set: the faithful SIGMA build keeps SIGMA's widths.
"""
from __future__ import annotations

import copy
from typing import Callable

from fusec.passes.options import CompileOptions
from fusec.runtime.gates.arith import MatMulPrivate, Mul
from fusec.runtime.gates.base import Chain, Gate
from fusec.runtime.gates.compare import MaxTreeNarrow
from fusec.runtime.gates.linear import Add, AddPublic, MatMulPublic, MulPublic
from fusec.runtime.gates.movement import Rearrange, SumAxis
from fusec.runtime.gates.mul_narrow import MulNarrow
from fusec.runtime.gates.scalar import PackedLookup
from fusec.runtime.gates.truncation import TruncateNarrow
from fusec.runtime.graph import GateGraph, Node

#: gates whose output mod 2^d depends only on their inputs mod 2^d
RING_LINEAR = (Add, AddPublic, MulPublic, MatMulPublic, Rearrange, SumAxis)


def _view_read(g: MulNarrow, slot: int, out_demand: int) -> int:
    """A product reads an input through its view, or on its own ring (a square: one view)."""
    view = g.views[0 if g.square else slot]
    return g.bits if view is None else view.bits


#: gate type -> (gate, input slot, its output's demand) -> the low bits of that input it reads.
#: Exact types: a subclass (a scalar gate's chain, a SIGMA gate) is not assumed to read alike.
READS: dict[type, Callable[[Gate, int, int], int]] = {
    TruncateNarrow: lambda g, slot, out: g.view_bits,
    MulNarrow: _view_read,
    Mul: lambda g, slot, out: g.bits,
    MatMulPrivate: lambda g, slot, out: g.bits,
    MaxTreeNarrow: lambda g, slot, out: g.in_view,          # its tree runs on hi_s(lo_in_view(u))
    **{t: (lambda g, slot, out: out) for t in RING_LINEAR},
}


def _reads(gate: Gate, slot: int, out_demand: int, n: int) -> int:
    """The low bits of input ``slot`` that ``gate`` reads, given its output's demand."""
    rule = READS.get(type(gate))
    if rule is not None:
        return rule(gate, slot, out_demand)
    if isinstance(gate, Chain) and type(gate.stages[0]) is PackedLookup:
        first = gate.stages[0]          # compares on its view, evaluates on its value ring
        if first.lifted:                # ... lifted from its view (a folded rescale, a max tree): the view is all it reads
            return first.view_bits
        return max(first.view_bits, first.vbits)
    return n


def _truncate(g: TruncateNarrow, d: int) -> Gate | None:
    w = max(d, g.mid_bits + 1)
    return TruncateNarrow(g.elements, g.bits, g.view_bits, g.shift, out_bits=w) if w < g.out_bits else None


def _mul_narrow(g: MulNarrow, d: int) -> Gate | None:
    w = max([d] + [v.bits for v in g.views if v is not None])      # no narrower than its own views
    return MulNarrow(g.elements, w, *g.views, square=g.square) if w < g.bits else None


#: gate type -> (gate, demanded bits) -> the gate leaving its output on them (None: unchanged)
NARROW: dict[type, Callable[[Gate, int], Gate | None]] = {
    TruncateNarrow: _truncate,
    MulNarrow: _mul_narrow,
    MatMulPrivate: lambda g, d: MatMulPrivate(g.x_shape, g.w_shape, d) if d < g.bits else None,
    Mul: lambda g, d: Mul(g.elements, d) if d < g.bits else None,
}


def _narrowed(gate: Gate, d: int) -> Gate | None:
    """``gate`` rebuilt to leave its output on ``d`` bits, or None where nothing changes. A
    chain (a scalar gate: lookup, then its output truncation) narrows its last stage."""
    rule = NARROW.get(type(gate))
    if rule is not None:
        return rule(gate, d)
    if isinstance(gate, Chain) and type(gate.stages[-1]) is TruncateNarrow:
        last = _truncate(gate.stages[-1], d)
        if last is None:
            return None
        chain = copy.copy(gate)
        chain.stages = [*gate.stages[:-1], last]
        chain.out_bits = last.out_bits
        return chain
    return None


#: the gate sets whose widths this pass may change (the faithful SIGMA build keeps SIGMA's)
NARROWERS: dict[str, Callable[[Gate, int], Gate | None]] = {"fused": _narrowed}


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
