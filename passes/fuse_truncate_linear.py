"""A truncation read only by a shrinking public linear map moves into the map.

GELU ends with a free truncation (:class:`~fusec.runtime.gates.truncation.TruncateNarrow`)
that opens its 3072 values per token again, widened; its only reader, the MLP's second
matmul, has 768 outputs per token. A layer norm truncates its 768 squared deviations per token
and sums them. :class:`~fusec.runtime.gates.truncate_linear.TruncateLinear` reads the
truncation's input through its view and opens the map's output instead: a fraction of the bytes
and less key, in the same round, with the same values (L of ``floor(x / 2^s) + c``, mod the
width the readers use).

Runs after :func:`~fusec.passes.narrow_opens.narrow_opens`, whose widths it keeps: the
truncation's output width is already what the map's readers demand. Only where the map opens
fewer bits than the truncation did, and only in the fused gate set (the faithful SIGMA build
keeps SIGMA's gates). The truncation is a scalar gate's last stage (the chain loses it) or a
node of its own (the node goes).
"""
from __future__ import annotations

import copy

from fusec.passes.options import CompileOptions
from fusec.runtime.gates.base import Chain
from fusec.runtime.gates.mul_narrow import View
from fusec.runtime.gates.truncate_linear import LINEAR_MAPS, TruncateLinear
from fusec.runtime.gates.truncation import TruncateNarrow
from fusec.runtime.graph import GateGraph, Node


def _truncation(node: Node) -> TruncateNarrow | None:
    """The truncation ``node`` ends with: its gate, or a chain's last stage (None: neither)."""
    g = node.gate
    if type(g) is TruncateNarrow:
        return g
    if isinstance(g, Chain) and len(g.stages) > 1 and type(g.stages[-1]) is TruncateNarrow:
        return g.stages[-1]
    return None


def _fused(linear, trunc: TruncateNarrow) -> TruncateLinear | None:
    """The fused gate, or None where it would not open fewer bits."""
    fused = TruncateLinear(linear, trunc.elements, trunc.bits, View(trunc.view_bits, trunc.shift), trunc.out_bits)
    opened = fused.cost().open_bits * fused.elements
    return fused if opened < trunc.cost().open_bits * trunc.elements else None


def _without_truncation(chain: Chain) -> Chain:
    shorter = copy.copy(chain)
    shorter.stages = chain.stages[:-1]
    last = shorter.stages[-1]
    shorter.out_bits = getattr(last, "out_bits", getattr(last, "bits", None))     # as Chain's own
    return shorter


def fuse_truncate_linear(gates: GateGraph, opts: CompileOptions) -> GateGraph:
    """Each truncation whose one reader is a shrinking public linear map: the map becomes
    :class:`TruncateLinear`, reading what the truncation read."""
    if opts.gates != "fused":
        return gates
    producer = {node.id: node for node in gates.nodes}
    readers: dict[str, int] = {}
    for node in gates.nodes:
        for w in node.inputs:
            readers[w] = readers.get(w, 0) + 1
    dropped: set[str] = set()
    for node in gates.nodes:
        if type(node.gate) not in LINEAR_MAPS or len(node.inputs) != 1 or readers.get(node.inputs[0]) != 1:
            continue
        src = producer[node.inputs[0]]
        trunc = _truncation(src)
        fused = _fused(node.gate, trunc) if trunc is not None else None
        if fused is None:
            continue
        node.gate = fused
        if src.gate is trunc:           # a truncation node of its own: read its input, drop it
            node.inputs = list(src.inputs)
            dropped.add(src.id)
        else:
            src.gate = _without_truncation(src.gate)
    gates.drop(dropped)
    return gates
