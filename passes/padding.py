"""Mask-independent padding (DESIGN §5.6): every Scalar gate's key shape is a function of
its spec only, never of the mask. The pieces in u-space are always padded to m + 1 and
predicates are never deduplicated; the gates do this when ``pad`` is set. The only way to
turn it off is the loud ablation flag ``--insecure-mask-dependent-shapes``.
"""
from __future__ import annotations

import warnings

from fusec.errors import CompileError
from fusec.ir.graph import Graph
from fusec.passes.options import CompileOptions

INSECURE_NOTE = ("INSECURE BUILD: --insecure-mask-dependent-shapes: key shapes depend on the masks and leak "
                 "information about them; for the padding ablation only, never deploy")


def pad_shapes(graph: Graph, opts: CompileOptions) -> Graph:
    if opts.insecure_mask_dependent_shapes:
        warnings.warn(INSECURE_NOTE, stacklevel=2)
        raise CompileError(
            "--insecure-mask-dependent-shapes: an unpadded piece table's key shape is only known after keygen "
            "(it depends on the masks), and a build's key layout is fixed at compile time, so whole-model "
            "unpadded builds are not supported yet",
            "the padding ablation is measured per gate: python -m pytest tests/test_scalar.py -k pad -s")
    for node in graph.nodes():
        if node.op == "Scalar" and node.attrs.get("impl") == "fused":
            node.attrs["pad"] = True
    return graph
