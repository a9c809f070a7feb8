"""Mask-independent padding (DESIGN §5.6): every Scalar gate's key shape is a function of
its spec only, never of the mask. The pieces in u-space are always padded to m + 1 and
predicates are never deduplicated; the gates do this when ``pad`` is set. The only way to
turn it off is the loud ablation flag ``--insecure-mask-dependent-shapes``.
"""
from __future__ import annotations

import warnings

from fusec.ir.graph import Graph
from fusec.passes.options import CompileOptions

INSECURE_NOTE = ("INSECURE BUILD: --insecure-mask-dependent-shapes: key shapes depend on the masks and leak "
                 "information about them; for the padding ablation only, never deploy")


def pad_shapes(graph: Graph, opts: CompileOptions) -> Graph:
    pad = not opts.insecure_mask_dependent_shapes
    count = 0
    for node in graph.nodes():
        if node.op == "Scalar" and node.attrs.get("impl") == "fused":
            node.attrs["pad"] = pad
            if not pad:
                node.attrs["lookup"] = "pieces"   # the padded/unpadded choice lives in the piece table
            count += 1
    if not pad and count:
        warnings.warn(INSECURE_NOTE, stacklevel=2)
        opts.notes.append(INSECURE_NOTE)
        graph.meta["insecure"] = True
    return graph
