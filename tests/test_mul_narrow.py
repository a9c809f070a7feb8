"""MulNarrow: a product whose inputs are read through the free truncation.

The oracle is plain integer arithmetic: the truncated value of a wire ``u = x + r`` is
``floor(x / 2^s) + [lo_s(u mod 2^k) < lo_s(r mod 2^k)]`` (the stochastic rounding bit of
TruncateNarrow, computed here from its definition, not from the gate), and the product is
exact mod 2^n. Exhaustive over every mask at small widths, random at 37/50/64 bits with the
forced masks 0, 2^n - 1, 2^(n-1), and against TruncateNarrow + Mul on the same wires.
"""
from __future__ import annotations

import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.arith import Mul
from fusec.runtime.gates.mul_narrow import MulNarrow, View
from fusec.runtime.gates.truncation import TruncateNarrow
from fusec.runtime.rng import DealerRng
from tests.harness import CostProbe, forced_masks, run_gate


def to_ring(x, n):
    return np.asarray(x, np.int64).astype(np.uint64) & ring.mask(n)


def truncated(x, r, n, view):
    """The oracle: what a reader of ``x`` (masked by ``r``) through ``view`` sees."""
    x = np.asarray(x, np.int64)
    if view is None:
        return x
    u = (to_ring(x, n) + np.asarray(r, np.uint64)) & ring.mask(n)
    lo = lambda v: (v & ring.mask(view.bits)) & ring.mask(view.shift)  # noqa: E731
    c = (lo(u) < lo(np.asarray(r, np.uint64))).astype(np.int64)
    return np.floor_divide(x, 1 << view.shift) + c


def admissible(view, n):
    """Every value a view may read: |x| < 2^(k-2) - 2^s (TruncateNarrow's precondition)."""
    if view is None:
        return np.arange(-(1 << (n - 3)), 1 << (n - 3), max(1, 1 << (n - 10)))
    lim = (1 << (view.bits - 2)) - (1 << view.shift)
    return np.arange(-lim + 1, lim)


def check(gate, xa, xb, ra, rb, n):
    out, _, _ = run_gate(CostProbe(gate), [to_ring(xa, n), to_ring(xb, n)], [n, n], in_masks=[ra, rb])
    va, vb = gate.views
    want = truncated(xa, ra, n, va) * truncated(xb, rb, n, vb)
    np.testing.assert_array_equal(out, to_ring(want, n))


VIEWS = [(View(8, 2), View(8, 2), True), (View(8, 2), View(8, 2), False), (View(8, 3), None, False),
         (None, View(7, 2), False), (View(8, 2), View(7, 1), False)]


@pytest.mark.parametrize("va,vb,square", VIEWS)
def test_exhaustive_every_mask_small_ring(va, vb, square):
    n = 10
    x = admissible(va, n)
    xa = np.tile(x, 1 << n)                       # every value under every mask, in one run
    xb = xa if square else np.tile(np.resize(admissible(vb, n)[::-1], x.size), 1 << n)
    ra = np.repeat(np.arange(1 << n, dtype=np.uint64), x.size)
    rb = ra if square else (ra * np.uint64(389) + np.uint64(77)) & ring.mask(n)
    check(MulNarrow(xa.size, n, va, vb, square=square), xa, xb, ra, rb, n)


@pytest.mark.parametrize("n", [37, 50, 64])
@pytest.mark.parametrize("square", [True, False])
def test_random_and_forced_masks_wide_rings(n, square):
    rng = np.random.default_rng(n)
    va, vb = View(n - 14, 9), (View(n - 14, 9) if square else View(n - 20, 5))
    E = 4000
    lim_a, lim_b = (1 << (va.bits - 2)) - (1 << va.shift), (1 << (vb.bits - 2)) - (1 << vb.shift)
    xa = rng.integers(-lim_a + 1, lim_a, E)
    xa[:4] = [-lim_a + 1, lim_a - 1, 0, -1]
    xb = xa if square else rng.integers(-lim_b + 1, lim_b, E)
    gate = MulNarrow(E, n, va, vb, square=square)
    masks = forced_masks(E, n) + [DealerRng().ring(E, n)]
    for ma in masks:
        for mb in ([ma] if square else masks):
            check(gate, xa, xb, ma, mb, n)


def test_same_value_as_truncate_narrow_then_mul():
    """Every reader of one rescaled tensor sees TruncateNarrow's value (the same rounding bit)."""
    n, view, E = 50, View(30, 12), 3000
    rng = np.random.default_rng(1)
    lim = (1 << (view.bits - 2)) - (1 << view.shift)
    x, y = rng.integers(-lim + 1, lim, E), rng.integers(-(1 << 20), 1 << 20, E)
    rx, ry = DealerRng().ring(E, n), DealerRng().ring(E, n)
    t, _, _ = run_gate(TruncateNarrow(E, n, view.bits, view.shift), [to_ring(x, n)], [n], in_masks=[rx])
    want, _, _ = run_gate(Mul(E, n), [t, to_ring(y, n)], [n, n])
    got, _, _ = run_gate(MulNarrow(E, n, view, None), [to_ring(x, n), to_ring(y, n)], [n, n], in_masks=[rx, ry])
    np.testing.assert_array_equal(got, want)
    sq, _, _ = run_gate(MulNarrow(E, n, view, view, square=True), [to_ring(x, n)] * 2, [n, n], in_masks=[rx, rx])
    np.testing.assert_array_equal(sq, (t * t) & ring.mask(n))


def test_key_is_smaller_than_truncation_plus_mul():
    n, view = 50, View(36, 12)
    fused = MulNarrow(1, n, view, view, square=True).cost()
    separate = TruncateNarrow(1, n, view.bits, view.shift).cost().key_bits + Mul(1, n).cost().key_bits
    assert fused.rounds == 1 and fused.key_bits < separate


@pytest.mark.parametrize("args", [(50, View(50, 48), None), (50, View(60, 4), None), (50, None, None),
                                  (50, View(30, 4), View(30, 5), True)])
def test_bad_parameters(args):
    n, va, vb, *sq = args
    with pytest.raises(ParameterError):
        MulNarrow(4, n, va, vb, square=bool(sq and sq[0]))
