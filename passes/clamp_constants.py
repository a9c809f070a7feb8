"""Clamp float constants that fixed point cannot hold (DESIGN §4).

Attention masks use -3.4e38 (or finfo.min) for "minus infinity". On a 2^n ring at scale
f that value does not exist; it is clamped to the most negative *safe* value
(``CompileOptions.safe_magnitude``), large enough that exp() of it is 0 at every
precision we use, and small enough that sums and differences with activations stay in
range. Every clamp is noted in the compile report.
"""
from __future__ import annotations

import numpy as np

from fusec.ir.graph import Graph
from fusec.passes.options import CompileOptions


#: magnitudes that only ever mean "infinity" in exported models (finfo.min, -1e30, -3.4e38 ...)
SENTINEL = 1e15


def clamp_constants(graph: Graph, opts: CompileOptions) -> Graph:
    lim = opts.safe_magnitude
    for name, v in graph.consts.items():
        if graph.info(name).dtype != "float" or v.size == 0:
            continue
        big = ~np.isfinite(v) | (np.abs(v) >= SENTINEL)
        if big.any():
            graph.consts[name] = np.where(big, np.sign(np.nan_to_num(v, nan=0.0)) * lim, v)
            opts.notes.append(f"constant {name!r}: {int(big.sum())} 'infinite' value(s) (|v| >= {SENTINEL:g}) clamped to +-{lim:g} "
                              f"(fixed point n={opts.bits}, f={opts.frac} cannot hold them)")
    return graph
