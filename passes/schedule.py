"""The round schedule: when each gate's opens happen (an analysis over the gate graph).

Gates run as dataflow (``runtime/graph.py``): a gate starts once its inputs exist and all
gates waiting on an open in the same step share one message. So the round in which a
gate starts is the longest chain of rounds before it (ASAP), and independent opens are
batched by construction. This pass computes, per gate, ``[start, end)`` rounds; the
total is the program's round count that ``inspect`` reports and the runtime measures.
"""
from __future__ import annotations

from dataclasses import dataclass

from fusec.ir.nonlinear import scope as nonlinear_scope
from fusec.runtime.graph import GateGraph


@dataclass
class Step:
    id: str
    kind: str
    inputs: list[str]
    elements: int
    start: int
    end: int
    scope: str

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "inputs": self.inputs, "elements": self.elements,
                "rounds": [self.start, self.end], "scope": self.scope}


def scope_of(ir_attrs: dict, kind: str) -> str:
    """Profiler bucket (DESIGN §7) for a gate, from its IR block / kind."""
    if ir_attrs.get("block") in ("softmax", "layernorm"):
        return ir_attrs["block"]
    sc = nonlinear_scope(ir_attrs.get("label"))
    if sc != "other":
        return sc
    if kind in ("matmul", "matmul_public", "mul", "mul_narrow"):
        return "linear"
    if kind.startswith("truncate") or kind.startswith("ars"):
        return "rescale"
    return "other"


def schedule(gates: GateGraph, scopes: dict[str, str] | None = None) -> list[Step]:
    end: dict[str, int] = {}
    steps = []
    for n in gates.nodes:
        start = max((end[w] for w in n.inputs), default=0)
        end[n.id] = start + n.gate.cost().rounds
        steps.append(Step(n.id, n.gate.kind, list(n.inputs), n.gate.elements, start, end[n.id],
                          (scopes or {}).get(n.id, "other")))
    return steps
