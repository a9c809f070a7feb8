"""Public masks of a softmax: entries a constant sets to minus infinity are left out.

A causal decoder (GPT-2, Llama) computes ``softmax(scores + C)`` with a constant C that is 0
where a position may attend and -inf (or finfo.min, -1e30, ...) where it may not. In the
model those entries are exactly 0 after the softmax, whatever the scores. Fixed point has no
-inf, so without this pass C is clamped to a large finite value (passes/clamp_constants)
and every masked entry goes through the max tree and exp like any other, and the huge
constant makes the proven range of ``scores + C`` span almost the whole ring: the max tree
and exp then compare on every bit (GPT-2's softmax and max tree cost 0.8 GB more key than
BERT-base's).

This pass runs before the clamp, while -inf is still -inf. For a ``Softmax`` whose input is
``Add(x, C)`` with a constant C holding minus-infinite entries (|v| >= clamp_constants'
sentinel, negative), it adds ``x + C'`` (C with those entries set to 0) for the softmax to
read, and gives the node the public pattern of entries that remain as a second input
(its name also in the attribute ``keep``). The
expansion (passes/expand_blocks) then takes each row's max and exp over a copy of the row
in which every masked entry repeats one kept entry of the same row (a public gather: free),
and multiplies exp by the pattern (public: free), so masked entries are exactly 0 and the
proven range is that of the scores alone. A softmax with a row masked entirely (NaN in the
model) is left as it is. Fused gates only: the sigma build keeps SIGMA's softmax over every
entry.
"""
from __future__ import annotations

import numpy as np

from fusec.ir.graph import Graph, TensorInfo
from fusec.passes.clamp_constants import SENTINEL
from fusec.passes.options import CompileOptions


def _minus_infinite(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float64)
    return (c < 0) & (~np.isfinite(c) | (np.abs(c) >= SENTINEL))


def mask_softmax(graph: Graph, opts: CompileOptions) -> Graph:
    if opts.gates != "fused":
        return graph
    for node in graph.nodes():
        if node.op != "Softmax" or "keep" in node.attrs:
            continue
        x = node.inputs[0]
        add = graph.producer(x)
        if add is None or add.op != "Add" or graph.info(x).visibility != "secret":
            continue
        consts = [t for t in add.inputs if graph.is_const(t)]
        if len(consts) != 1 or graph.info(consts[0]).dtype != "float":
            continue
        c = np.asarray(graph.const(consts[0]), np.float64)
        shape = graph.info(x).shape
        axis = node.attrs["axis"] % len(shape)
        try:
            masked = np.broadcast_to(_minus_infinite(c), shape)
        except ValueError:
            continue
        if not masked.any() or not (~masked).any(axis=axis).all():
            continue
        other = next(t for t in add.inputs if t != consts[0])
        c0 = graph.add_const(graph.fresh(f"{consts[0]}_unmasked"), np.where(_minus_infinite(c), 0.0, c))
        x0 = graph.fresh(f"{x}_unmasked")
        graph.add_node("Add", [other, c0], [x0], name=graph.fresh(f"{add.name}/unmasked"),
                       infos=[TensorInfo(shape, "float", graph.info(x).visibility)])
        # the pattern at the constant's own shape (a causal mask's (1, 1, T, T), not every head's copy)
        keep = graph.add_const(graph.fresh(f"{node.name}_keep"), ~_minus_infinite(c))
        graph.remove_node(node.name)        # the same softmax, reading x + C' and the pattern (a second input)
        graph.add_node("Softmax", [x0, keep], node.outputs, name=node.name, **dict(node.attrs, keep=keep))
    graph.remove_unused()
    return graph
