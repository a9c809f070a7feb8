"""The key-consumption order (DESIGN §6): the compiler, not the runtime, fixes it.

Gates are ordered by the round they start in (ties: program order), which is a
topological order and the order a streaming runtime would consume keys in. The dealer
writes and both servers read through the resulting layout (``keys.layout.json``): gate
id, kind, elements, and per field its shape, bit width, offset and byte length.
"""
from __future__ import annotations

from fusec.passes.schedule import Step
from fusec.runtime.graph import GateGraph


def key_order(gates: GateGraph, steps: list[Step]) -> tuple[GateGraph, list[Step]]:
    pos = {s.id: i for i, s in enumerate(steps)}
    order = sorted(steps, key=lambda s: (s.start, pos[s.id]))
    by_id = {n.id: n for n in gates.nodes}
    out = GateGraph()
    out.insecure, out.seeded_shares = gates.insecure, gates.seeded_shares
    for s in order:
        n = by_id[s.id]
        out.add(n.id, n.gate, n.inputs)
    return out, order
