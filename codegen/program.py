"""Which kernels a compiled program needs: its DCF shapes, DPF widths, arc walks and open widths.

Read off the key layout (the compiler's own record of every key it will consume), so the
generated ``kernels.cu`` is specialized for exactly the program it ships with and the
runtime never meets a shape the compiler did not foresee (the generic kernels stay as a
fallback all the same).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from fusec.codegen.cuda import KernelConfig
from fusec.runtime.dpf import LEAF_BITS
from fusec.runtime.dpf_arc import DpfArc
from fusec.runtime.layout import KeyLayout

DCF_FIELDS = {"root", "cw_seed", "cw_tr", "cw_v", "cw_final"}


def _groups(slot) -> dict[str, dict]:
    """A slot's fields grouped by their prefix (``lo.cw_seed`` -> group ``lo``)."""
    groups: dict[str, dict] = defaultdict(dict)
    for f in slot.fields:
        prefix, _, name = f.name.rpartition(".")
        groups[prefix][name] = f
    return groups


def kernel_config(layout: KeyLayout, ring_widths: set[int], arcs: Iterable[DpfArc] = ()) -> KernelConfig:
    """The KernelConfig of a program with this key layout, these wire widths and the arc
    walks its packed comparisons make (:func:`gate_arcs`)."""
    dcf: set[tuple[int, int, int]] = set()
    dpf: set[int] = set()
    for slot in layout.slots:
        for fields in _groups(slot).values():
            if DCF_FIELDS <= fields.keys():
                n = fields["cw_seed"].shape[0]
                dcf.add((n, fields["cw_v"].shape[-1], fields["cw_v"].bits))
            elif {"root", "cw_seed", "cw_leaf"} <= fields.keys():
                depth = fields["cw_seed"].shape[0]
                if depth:  # n = depth + 7 (shallower trees are n <= 7: generic kernel)
                    dpf.add(depth + LEAF_BITS)
    return KernelConfig(tuple(sorted(dcf)), tuple(sorted(dpf)), tuple(sorted(ring_widths | {1, 2})),
                        dpf_arcs=tuple(arcs))


def gate_arcs(gates: Iterable) -> set[DpfArc]:
    """Every arc walk (a gate's ``arc``) among these gates and their stages, recursively."""
    out: set[DpfArc] = set()
    for g in gates:
        if getattr(g, "arc", None) is not None:
            out.add(g.arc)
        out |= gate_arcs(getattr(g, "stages", ()))
    return out
