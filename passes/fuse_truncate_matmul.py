"""A scalar gate's output truncation read only by a shrinking public matmul moves into the matmul.

GELU ends with a free truncation (:class:`~fusec.runtime.gates.truncation.TruncateNarrow`)
that opens its 3072 values per token again, widened; its only reader, the MLP's second
matmul, has 768 outputs per token. :class:`~fusec.runtime.gates.truncate_matmul.TruncateMatMulPublic`
reads the lookup's output through the truncation's view and opens the matmul's output instead:
a quarter of the bytes and less key, in the same round, with the same values
(``floor(x / 2^s) + c`` times W, mod the width the readers use).

Runs after :func:`~fusec.passes.narrow_opens.narrow_opens`, whose widths it keeps: the
truncation's output width is already what the matmul's readers demand. Only where the product
opens fewer bits than the truncation did, and only in the fused gate set (the faithful SIGMA
build keeps SIGMA's gates).
"""
from __future__ import annotations

import copy

from fusec.passes.options import CompileOptions
from fusec.runtime.gates.base import Chain
from fusec.runtime.gates.linear import MatMulPublic
from fusec.runtime.gates.mul_narrow import View
from fusec.runtime.gates.truncate_matmul import TruncateMatMulPublic
from fusec.runtime.gates.truncation import TruncateNarrow
from fusec.runtime.graph import GateGraph


def _fused(matmul: MatMulPublic, trunc: TruncateNarrow) -> TruncateMatMulPublic | None:
    """The fused gate, or None where it would not open fewer bits."""
    fused = TruncateMatMulPublic(matmul.x_shape, matmul.weight, trunc.bits, View(trunc.view_bits, trunc.shift),
                                 trunc.out_bits)
    opened = fused.cost().open_bits * fused.elements
    return fused if opened < trunc.cost().open_bits * trunc.elements else None


def fuse_truncate_matmul(gates: GateGraph, opts: CompileOptions) -> GateGraph:
    """Each chain ending in a truncation whose one reader is a shrinking public matmul: the
    chain loses its truncation, the matmul becomes :class:`TruncateMatMulPublic`."""
    if opts.gates != "fused":
        return gates
    producer = {node.id: node for node in gates.nodes}
    readers: dict[str, int] = {}
    for node in gates.nodes:
        for w in node.inputs:
            readers[w] = readers.get(w, 0) + 1
    for node in gates.nodes:
        if type(node.gate) is not MatMulPublic or len(node.inputs) != 1 or readers.get(node.inputs[0]) != 1:
            continue
        src = producer.get(node.inputs[0])
        chain = src.gate if src is not None else None
        if not (isinstance(chain, Chain) and len(chain.stages) > 1 and type(chain.stages[-1]) is TruncateNarrow):
            continue
        fused = _fused(node.gate, chain.stages[-1])
        if fused is None:
            continue
        shorter = copy.copy(chain)
        shorter.stages = chain.stages[:-1]
        last = chain.stages[-2]
        shorter.out_bits = getattr(last, "out_bits", getattr(last, "bits", None))     # as Chain's own
        src.gate, node.gate = shorter, fused
    return gates
