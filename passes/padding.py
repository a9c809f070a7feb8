"""Mask-independent padding (DESIGN §5.6): every Scalar gate's key shape is a function of
its spec only, never of the mask. The pieces in u-space are always padded to m + 1 and
predicates are never deduplicated; the gates do this when ``pad`` is set. The only way to
turn it off is the loud ablation flag ``--insecure-mask-dependent-shapes``.

Under that flag the fused Scalar nodes get ``pad = False``: a gate whose key shape depends
on the mask (the piece-table lookup) then keys only the u-space pieces its masks produce.
The layout still reserves the padded maximum and each key set records in the gate's own
slot how much of it is used (checksummed with the set), so the build runs end to end;
its layout is marked insecure (another digest: padded and unpadded keys never mix), the
build's manifest and report say INSECURE, and so do keygen, run and the bench.

The fused gate set's default lookups (the packed comparison and the shifted DCF) compare
in x-space through the public-threshold identity: their shapes never depend on the mask,
so for them the flag changes nothing but the labels.
"""
from __future__ import annotations

import warnings

from fusec.ir.graph import Graph
from fusec.passes.options import CompileOptions

INSECURE_NOTE = ("INSECURE BUILD: --insecure-mask-dependent-shapes: key shapes depend on the masks and leak "
                 "information about them; for the padding ablation only, never deploy")


def pad_shapes(graph: Graph, opts: CompileOptions) -> Graph:
    insecure = opts.insecure_mask_dependent_shapes
    if insecure:
        warnings.warn(INSECURE_NOTE, stacklevel=2)
        graph.meta["insecure"] = True
        if INSECURE_NOTE not in opts.notes:
            opts.notes.insert(0, INSECURE_NOTE)
    for node in graph.nodes():
        if node.op == "Scalar" and node.attrs.get("impl") == "fused":
            node.attrs["pad"] = not insecure
    return graph
