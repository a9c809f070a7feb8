"""A fused univariate function, kept as a tiny sub-graph so it stays printable and exact.

``passes/fuse_scalar`` cuts a region of elementwise ops that reads one secret tensor and
scalar constants only (``x*0.5*(1+erf(x/sqrt 2))``, ``x*sigmoid(x)``, ``1/sqrt(v+eps)``)
out of the graph and stores it as::

    {"input": "x", "output": "y", "consts": {"c": 0.5, ...},
     "nodes": [{"op": "Mul", "inputs": ["x", "c"], "outputs": ["t"], "attrs": {}}, ...],
     "label": "gelu"}

The spec-fitting pass samples ``evaluate(fn, grid)`` to fit the OperatorSpec.
"""
from __future__ import annotations

import numpy as np


def evaluate(fn: dict, x: np.ndarray) -> np.ndarray:
    from fusec.ir.ops import run_node  # noqa: PLC0415

    env: dict[str, np.ndarray] = {fn["input"]: np.asarray(x, np.float64)}
    for k, v in fn.get("consts", {}).items():
        env[k] = np.asarray(v, np.float64)
    for n in fn["nodes"]:
        outs = run_node(n["op"], [env[t] for t in n["inputs"]], n.get("attrs", {}))
        for t, v in zip(n["outputs"], outs):
            env[t] = np.asarray(v, np.float64)
    return np.broadcast_to(env[fn["output"]], np.shape(x)).astype(np.float64)


def unary(op: str, attrs: dict | None = None, label: str | None = None) -> dict:
    """The function of one unary op (e.g. ``unary("Exp")``)."""
    return {"input": "x", "output": "y", "consts": {}, "label": label or op.lower(),
            "nodes": [{"op": op, "inputs": ["x"], "outputs": ["y"], "attrs": attrs or {}}]}


def describe(fn: dict) -> str:
    """A one-line formula-ish rendering, for ``inspect``."""
    names = {fn["input"]: "x", **{k: f"{v:g}" for k, v in fn.get("consts", {}).items()}}
    infix = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/", "Pow": "^"}
    for n in fn["nodes"]:
        args = [names.get(t, t) for t in n["inputs"]]
        names[n["outputs"][0]] = (f"({args[0]} {infix[n['op']]} {args[1]})" if n["op"] in infix
                                  else f"{n['op'].lower()}({', '.join(args)})")
    return names.get(fn["output"], fn["output"])
