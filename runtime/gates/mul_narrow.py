"""An elementwise product whose inputs are read through free truncations: the rescale in
front of a multiply costs no round of its own.

Why: a truncation (:class:`~fusec.runtime.gates.truncation.TruncateNarrow`) is one round,
and a product that reads it is another; a layer norm reads ``d = x - mean`` rescaled in its
square and in ``d * r``, so it paid two rounds where one does. Here each input may be read
through the view of :class:`TruncateNarrow`: for a wire ``u = x + r`` whose value is proven
to fit ``k`` signed bits, ``v = hi_s(lo_k(u))`` is public and the truncated value, widened
under the slack, is (``truncation.widen_share``)

    ``t = A - Q``,  ``A = u' - 2^(m-2)`` public,  ``Q = q - 2^m b p``,

with ``m = k - s``, ``u' = v + 2^(m-2) mod 2^m``, ``q = hi_s(lo_k(r))`` and ``b = MSB_m(q)``
the dealer's, and ``p = 1 - MSB_m(u')`` public. An input read plainly is ``A = u``,
``Q = r``. The product ``t_a t_b = A_a A_b - A_a Q_b - A_b Q_a + Q_a Q_b`` is then linear in
dealer shares of ``q_a, b_a, q_b, b_b`` and of the products ``q_a q_b + r_out, q_a b_b,
b_a q_b, b_a b_b`` (public coefficients), so the gate is one open, like :class:`Mul`. A bit
``b`` only ever appears times ``2^m``, so its shares live in ``n - m`` bits (and
``b_a b_b`` in ``n - m_a - m_b`` bits, or not at all).

The truncated value is exactly the one :class:`TruncateNarrow` would give for the same
masked wire (``floor(x/2^s) + c``, ``c`` the same stochastic rounding bit), so every reader
of one rescaled tensor sees the same value. A square (both inputs one wire, one view) shares
``q`` and ``b`` and needs ``q^2``, ``q b``: four fields.
"""
from __future__ import annotations

from dataclasses import dataclass

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.base import EvalGen, FieldSpec, Gate, GateCost, Key, Open, check_width
from fusec.runtime.rng import DealerRng

U64 = np.uint64


@dataclass(frozen=True)
class View:
    """Read an n-bit wire as ``floor(x / 2^shift)`` of a value proven to fit ``bits`` signed
    bits with two bits of slack (the precondition of :class:`TruncateNarrow`)."""

    bits: int
    shift: int

    @property
    def mid(self) -> int:
        return self.bits - self.shift


def view_public(u, n: int, view: View | None):
    """(A, p): the public part of the value read through ``view`` (``p`` None when plain);
    also used by the gates that read a truncation's view (scalar.py, truncate_linear.py)."""
    if view is None:
        return u, None
    m = view.mid
    u1 = (ring.hi(ring.lo(u, view.bits), view.shift) + U64(1 << (m - 2))) & ring.mask(m)
    a = (u1 - U64(1 << (m - 2))) & ring.mask(n)
    return a, U64(1) - ring.msb(u1, m)


def view_secret(r, view: View | None):
    """(q, b): the dealer's part of the value read through ``view`` (``b`` None when plain)."""
    if view is None:
        return r, None
    q = ring.hi(ring.lo(r, view.bits), view.shift)
    return q, ring.msb(q, view.mid)


class MulNarrow(Gate):
    """``t_a * t_b`` with ``t`` the input itself or its free truncation (see the module)."""

    kind = "mul_narrow"
    inputs = 2

    def __init__(self, elements: int, bits: int, view_a: View | None, view_b: View | None,
                 square: bool = False):
        super().__init__(elements)
        self.bits = self.out_bits = check_width(bits, "multiply ring width")
        for v in (view_a, view_b):
            if v is not None and not (3 <= v.mid < self.bits and v.bits <= self.bits and v.shift >= 1):
                raise ParameterError(f"{self.kind}: view of {v.bits} bits shifted by {v.shift} does not fit a "
                                     f"{bits}-bit ring with two bits of slack")
        if square and view_a != view_b:
            raise ParameterError(f"{self.kind}: a square reads one wire through one view")
        if view_a is None and view_b is None:
            raise ParameterError(f"{self.kind}: no input is truncated; use Mul")
        self.views = (view_a, view_b)
        self.square = square

    # ---------------------------------------------------------------- layout
    def _widths(self) -> dict[str, int]:
        n, (va, vb) = self.bits, self.views
        w = {"q_a": n, "qq_z": n}
        if va is not None:
            w["b_a"] = n - va.mid
        if self.square:
            w["qb"] = n - va.mid
            return w
        w["q_b"] = n
        if vb is not None:
            w["b_b"] = n - vb.mid
            w["qa_bb"] = n - vb.mid
        if va is not None:
            w["ba_qb"] = n - va.mid
        if va is not None and vb is not None and va.mid + vb.mid < n:
            w["ba_bb"] = n - va.mid - vb.mid
        return w

    def fields(self) -> list[FieldSpec]:
        return [(name, (self.elements,), w) for name, w in self._widths().items()]

    def keygen(self, rng: DealerRng, in_masks):
        n, N = self.bits, self.elements
        ra, rb = (np.asarray(m, np.uint64).reshape(-1) & ring.mask(n) for m in in_masks)
        (qa, ba), (qb, bb) = view_secret(ra, self.views[0]), view_secret(rb, self.views[1])
        r_out = rng.ring(N, n)
        values = {"q_a": qa, "qq_z": qa * qb + r_out, "b_a": ba, "q_b": qb, "b_b": bb,
                  "qb": None if ba is None else qa * ba, "qa_bb": None if bb is None else qa * bb,
                  "ba_qb": None if ba is None else ba * qb,
                  "ba_bb": None if ba is None or bb is None else ba * bb}
        keys: tuple[Key, Key] = ({}, {})
        for name, w in self._widths().items():
            s0, s1 = rng.share(values[name] & ring.mask(w), w)
            keys[0][name], keys[1][name] = s0, s1
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        n = self.bits
        ua, ub = (u.reshape(-1) for u in inputs)
        fused = getattr(be, "mul_narrow", None)     # the GPU's: this whole step in one kernel
        share = fused(ua, ub, key, self.views, self.square, n, party) if fused is not None else None
        if share is not None:
            return (yield Open(share, n, scope="mul"))
        va, vb = self.views
        aa, pa = view_public(ua, n, va)
        ab, pb = (aa, pa) if self.square else view_public(ub, n, vb)
        qb_sh = key["q_a"] if self.square else key["q_b"]
        share = key["qq_z"] - aa * qb_sh - ab * key["q_a"]
        if party == 1:
            share = share + aa * ab
        if self.square:     # Q^2 = q^2 - 2^(m+1) p q b + 2^(2m) p b;  -2 A Q adds 2^(m+1) p A b
            m = va.mid
            share = share + ((pa * (aa + aa) * key["b_a"] - pa * (key["qb"] + key["qb"])) << U64(m))
            if 2 * m < n:
                share = share + ((pa * key["b_a"]) << U64(2 * m))
        else:
            if vb is not None:
                share = share + ((pb * (aa * key["b_b"] - key["qa_bb"])) << U64(vb.mid))
            if va is not None:
                share = share + ((pa * (ab * key["b_a"] - key["ba_qb"])) << U64(va.mid))
            if "ba_bb" in key:
                share = share + ((pa * pb * key["ba_bb"]) << U64(va.mid + vb.mid))
        return (yield Open(share & ring.mask(n), n, scope="mul"))

    def cost(self) -> GateCost:
        return GateCost(key_bits=sum(self._widths().values()), aes=0, rounds=1, open_bits=self.bits)
