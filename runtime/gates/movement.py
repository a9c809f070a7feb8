"""Data movement and axis sums: free gates (no key, no round), masks derived.

Every data-movement operator of the IR (Reshape, Transpose, Slice, Concat, Split, Gather on
public indices, Expand, Pad, Im2Col) maps each output element to one input element, or to
a constant zero. Such a map commutes with masking: if ``u = x + r`` element-wise then
``u[idx] = x[idx] + r[idx]``, so applying the same map to the public values and to the
masks (keygen) gives a correctly masked output for free (DESIGN §5.1), and nothing new
becomes public. One gate, :class:`Rearrange`, covers all of them: the compiler computes
its ``index`` by running the operator on ``arange`` (index ``-1`` marks padding).

A padded element is the constant 0 with mask 0: its public value is 0 and it reveals
nothing, since the value is a public constant of the program. Duplicated elements
(Expand, overlapping Im2Col windows) share one mask; that is fine for linear use, and any
gate that consumes them draws its own fresh output mask.

:class:`SumAxis` sums over axes mod ``2^bits``; the mask of the sum is the sum of the masks.
"""
from __future__ import annotations

from fusec.runtime.xp import const, frozen, np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.base import check_width
from fusec.runtime.gates.linear import _Free

__all__ = ["Rearrange", "SumAxis"]


class Rearrange(_Free):
    """``out[k] = concat(flattened inputs)[index[k]]``; ``index[k] == -1`` gives the constant 0.

    ``in_sizes`` are the element counts of the input wires, in order (``inputs`` is their
    number, set per instance). ``index`` is public compile-time data (any shape; flattened),
    stored as int32 when every entry fits, else int64. The output has ``index.size``
    elements on the same ``bits``-bit ring as the inputs.
    """

    kind = "rearrange"

    def __init__(self, in_sizes: list[int], index: np.ndarray, bits: int):
        try:
            sizes = [int(s) for s in in_sizes]
        except TypeError:
            raise ParameterError(f"rearrange: in_sizes must be a list of ints, got {in_sizes!r}") from None
        if not sizes or any(s <= 0 for s in sizes):
            raise ParameterError(f"rearrange: input sizes {sizes} must be a non-empty list of positive counts",
                                 "every input wire has at least one element")
        idx = np.asarray(index)
        if idx.dtype.kind not in "iu":
            raise ParameterError(f"rearrange: index must be an integer array, got dtype {idx.dtype}")
        idx = idx.reshape(-1).astype(np.int64)
        super().__init__(idx.size)
        self.bits = check_width(bits, "rearrange ring width")
        self.out_bits = self.bits
        self.in_sizes = tuple(sizes)
        self.inputs = len(sizes)  # type: ignore[misc]  (variable input count, as Chain)
        total = sum(sizes)
        if idx.size and (idx.min() < -1 or idx.max() >= total):
            raise ParameterError(f"rearrange: index entries must lie in [-1, {total}), "
                                 f"got [{int(idx.min())}, {int(idx.max())}]",
                                 "index k refers to the concatenation of the flattened inputs; -1 is padding")
        self.total = total
        self.pads = bool((idx < 0).any())
        # -1 -> one extra zero element appended after the inputs: one gather, no branch
        gather = np.where(idx < 0, total, idx)
        self.index = frozen(gather.astype(np.int32 if total < 2 ** 31 - 1 else np.int64))

    def value_map(self, vals, be):
        if len(vals) != len(self.in_sizes):
            raise ParameterError(f"rearrange: got {len(vals)} inputs, the gate takes {len(self.in_sizes)}")
        flat = []
        for v, size in zip(vals, self.in_sizes):
            got = int(np.prod(np.shape(v), dtype=np.int64))
            if got != size:
                raise ParameterError(f"rearrange: an input has {got} elements, the gate expects {size}")
            flat.append(np.asarray(v, dtype=np.uint64).reshape(-1))
        if self.pads:
            flat.append(np.zeros(1, dtype=np.uint64))
        src = flat[0] if len(flat) == 1 else np.concatenate(flat)
        idx = const(self.index)
        return src[idx]


class SumAxis(_Free):
    """Sum of a ``shape`` tensor over ``axes`` mod ``2^bits`` (keys: none; mask summed too).

    ``elements`` is the product of the reduced shape; ``out_shape`` keeps the reduced axes
    as size 1 when ``keepdims`` (the flat wire is the same either way).
    """

    kind = "sum_axis"

    def __init__(self, shape: tuple, axes: tuple[int, ...], bits: int, keepdims: bool = True):
        try:
            shape = tuple(int(s) for s in shape)
            axes_in = (axes,) if isinstance(axes, (int, np.integer)) else tuple(int(a) for a in axes)
        except TypeError:
            raise ParameterError(f"sum: shape and axes must be ints, got {shape!r}, {axes!r}") from None
        if not shape or any(s <= 0 for s in shape):
            raise ParameterError(f"sum: shape {shape} must have at least one axis and no empty axis")
        for a in axes_in:
            if not -len(shape) <= a < len(shape):
                raise ParameterError(f"sum: axis {a} out of range for shape {shape}")
        self.shape = shape
        self.axes = tuple(sorted({a % len(shape) for a in axes_in}))
        self.keepdims = bool(keepdims)
        self.out_shape = tuple(1 if i in self.axes else s for i, s in enumerate(shape)) if self.keepdims \
            else tuple(s for i, s in enumerate(shape) if i not in self.axes)
        super().__init__(int(np.prod(self.out_shape, dtype=np.int64)))
        self.bits = check_width(bits, "sum ring width")
        self.out_bits = self.bits

    def value_map(self, vals, be):
        v = vals[0]
        got = int(np.prod(np.shape(v), dtype=np.int64))
        if got != int(np.prod(self.shape, dtype=np.int64)):
            raise ParameterError(f"sum: input has {got} elements, shape {self.shape} expected")
        # uint64 sums wrap mod 2^64, which is exact mod 2^bits
        s = np.asarray(v, dtype=np.uint64).reshape(self.shape).sum(axis=self.axes, dtype=np.uint64)
        return s.reshape(-1) & ring.mask(self.bits)
