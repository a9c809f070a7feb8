"""A softmax's max tree without its widening round: exp's lookup lifts the tree's result itself.

:class:`~fusec.runtime.gates.compare.MaxTreeNarrow` compares on a k-bit view and then widens
the maximum back to n bits under a fresh mask: one round (an open) per softmax. But the
maximum is only scaled back by 2^c (its grid), broadcast, and subtracted from the scores, all
ring-linear, and the difference is read by exp's packed lookup, whose comparison looks at a
k'-bit view of it. A lookup that lifts its input from that view
(``PackedLookup(lift=True)``, the construction it uses for a folded rescale) reads nothing
above it, and the difference is right mod 2^(k + c) without the widening. So where every
reader of the tree's result is such a lookup, through ring-linear gates only, with a view
inside the bits that stay right, the tree skips its widening and the lookups lift.

Priced as the compiler prices every round (passes/pricing.py): the lift adds the
t-dependent parts of the mask powers, ``(P + 1) d (w - k')`` bits per element, and the
widening's key goes; the round must be worth the difference. Applied to ``--gates fused``
only, before :func:`~fusec.passes.narrow_opens.narrow_opens` (a lifted lookup demands only its
view of the scores' truncation).
"""
from __future__ import annotations

import copy

from fusec.passes.narrow_opens import RING_LINEAR
from fusec.passes.options import CompileOptions
from fusec.passes.pricing import gate_price, worth_rounds
from fusec.runtime.gates.base import Chain, Gate
from fusec.runtime.gates.compare import MaxTreeNarrow
from fusec.runtime.gates.linear import MulPublic
from fusec.runtime.gates.scalar import PackedLookup
from fusec.runtime.graph import GateGraph, Node
from fusec.runtime.xp import np


def _trailing_zeros(c: np.ndarray, n: int) -> int:
    """The fewest trailing zero bits of the public multipliers (n for zero): x 2^j keeps j more low bits right."""
    v = [int(x) & ((1 << n) - 1) for x in np.asarray(c).reshape(-1)]
    return min(((x & -x).bit_length() - 1) if x else n for x in v)


def _right_bits(gate: Gate, v: int, n: int) -> int:
    """Low bits of a ring-linear gate's output that are right when its input is right mod 2^v."""
    if isinstance(gate, MulPublic):
        return min(n, v + _trailing_zeros(gate.scalar, n))
    return v


def _lifting_readers(tree: Node, readers: dict, n: int) -> list[Node] | None:
    """The packed lookups that read the tree's result, or None where any path reaches
    something else, or a lookup's view is wider than the bits still right there."""
    frontier, seen, lookups = [(tree.id, tree.gate.view_bits)], set(), []
    while frontier:
        wire, v = frontier.pop()
        for node, _ in readers.get(wire, []):
            if node.id in seen:         # reached twice (both operands of one sum): not a softmax
                return None
            seen.add(node.id)
            g = node.gate
            first = g.stages[0] if isinstance(g, Chain) else None
            if type(g) in RING_LINEAR:
                frontier.append((node.id, _right_bits(g, v, n)))
            elif type(first) is PackedLookup and not first.pre_shift and first.view_bits <= v:
                lookups.append(node)
            else:
                return None
    return lookups or None


def _lifted(chain: Chain) -> Chain:
    first = chain.stages[0]
    lifted = copy.copy(chain)
    lifted.stages = [PackedLookup(first.elements, first.spec, first.view_bits, first.vbits, 0, first.proven,
                                  lift=True), *chain.stages[1:]]
    return lifted


def _unwidened(tree: MaxTreeNarrow) -> MaxTreeNarrow:
    return MaxTreeNarrow(tree.shape, tree.bits, tree.axis, tree.in_view, pre_shift=tree.pre_shift,
                         widen=False, packed_levels=tree.packed_levels)


def lift_max_tree(gates: GateGraph, opts: CompileOptions) -> GateGraph:
    if opts.gates != "fused":
        return gates
    readers: dict[str, list[tuple[Node, int]]] = {}
    for node in gates.nodes:
        for slot, w in enumerate(node.inputs):
            readers.setdefault(w, []).append((node, slot))
    for node in gates.nodes:
        if not isinstance(node.gate, MaxTreeNarrow) or not node.gate.widen:
            continue
        lookups = _lifting_readers(node, readers, opts.bits)
        if lookups is None:
            continue
        tree = _unwidened(node.gate)
        lifted = {r.id: _lifted(r.gate) for r in lookups}
        extra = sum(gate_price(lifted[r.id]) - gate_price(r.gate) for r in lookups) \
            - (gate_price(node.gate) - gate_price(tree))
        if worth_rounds(extra, 1, opts.round_worth_bytes):     # the widening round is cheaper than the lift
            continue
        node.gate = tree
        for r in lookups:
            r.gate = lifted[r.id]
    return gates
