"""A free truncation read only by a public linear map that shrinks it: open the map's output,
not the truncated tensor.

Why: a free truncation (:class:`~fusec.runtime.gates.truncation.TruncateNarrow`) opens every
element of its input once more, widened to the ring its readers use. When its only reader is a
public linear map with fewer outputs than inputs, that open is larger than it needs to be:
GELU's output truncation feeds the MLP's second matmul (3072 -> 768 per token), a layer
norm's squared deviations feed their sum over the hidden axis (768 -> 1).

How: the truncated value is public on ``m`` bits already, read through the view
``View(k, s)`` (:func:`~fusec.runtime.gates.mul_narrow.view_public`): ``y = A - q + 2^m b p``
with ``A`` and ``p`` public, ``q = hi_s(lo_k(r))`` and ``b = MSB_m(q)`` the dealer's. For a
linear map L (a :class:`~fusec.runtime.gates.linear.MatMulPublic` or a
:class:`~fusec.runtime.gates.movement.SumAxis`), ``L(y) = L(A + 2^m b p) - L(q)``: the dealer
shares ``r_out - L(q)`` (one word per OUTPUT element) and ``b`` (``w - m`` bits per input
element), each party applies L to its share of ``A + 2^m b p``, and one open of
``L(y) + r_out`` on ``w`` bits gives the output wire. The value is exactly L of
``floor(x / 2^s) + c`` (the same stochastic rounding bit ``c`` as :class:`TruncateNarrow`),
mod ``2^w``; the round is the one the truncation had, so the critical path does not change.
"""
from __future__ import annotations

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.base import EvalGen, FieldSpec, Gate, GateCost, Key, Open, check_width
from fusec.runtime.gates.linear import MatMulPublic
from fusec.runtime.gates.movement import SumAxis
from fusec.runtime.gates.mul_narrow import View, view_public, view_secret
from fusec.runtime.gates.truncation import SCOPE
from fusec.runtime.rng import DealerRng

#: the linear maps a truncation can move into: value_map is linear (no constant), one input
LINEAR_MAPS = (MatMulPublic, SumAxis)


class TruncateLinear(Gate):
    """``L(floor(x / 2^s) + c)`` mod ``2^w`` for ``x`` on a ``bits``-bit wire PROVEN to fit
    ``view.bits`` signed bits with two bits of slack; ``L`` a public linear map."""

    kind = "truncate_linear"

    def __init__(self, linear: Gate, in_elements: int, bits: int, view: View, out_bits: int):
        if type(linear) not in LINEAR_MAPS:
            raise ParameterError(f"{self.kind}: {linear.kind} is not a linear map it can read a truncation into")
        super().__init__(linear.elements)
        self.linear = linear
        self.in_elements = int(in_elements)
        self.bits = check_width(bits, f"{self.kind} input ring width")
        self.out_bits = check_width(out_bits, f"{self.kind} output width")
        if not (view.bits <= self.bits and view.shift >= 1 and 3 <= view.mid < self.out_bits):
            raise ParameterError(f"{self.kind}: a view of {view.bits} bits shifted by {view.shift} needs a "
                                 f"{bits}-bit input and an output wider than {view.mid} bits")
        self.view = view

    def fields(self) -> list[FieldSpec]:
        w, m = self.out_bits, self.view.mid
        return [("msb_q", (self.in_elements,), w - m), ("offset", (self.elements,), w)]

    def cost(self) -> GateCost:
        w, m = self.out_bits, self.view.mid
        key = self.in_elements * (w - m) + self.elements * w
        return GateCost(key_bits=-(-key // self.elements), aes=0, rounds=1, open_bits=w)

    def _map(self, x, be):
        return self.linear.value_map([x], be) & ring.mask(self.out_bits)

    def keygen(self, rng: DealerRng, in_masks):
        w = self.out_bits
        r = np.asarray(in_masks[0], np.uint64).reshape(-1) & ring.mask(self.bits)
        q, msb_q = view_secret(r, self.view)
        r_out = rng.ring(self.elements, w)
        keys: tuple[Key, Key] = ({}, {})
        keys[0]["msb_q"], keys[1]["msb_q"] = rng.share(msb_q, w - self.view.mid)
        keys[0]["offset"], keys[1]["offset"] = rng.share((r_out - self._map(q, None)) & ring.mask(w), w)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        w, m = self.out_bits, np.uint64(self.view.mid)
        a, p = view_public(inputs[0].reshape(-1), w, self.view)
        x = (key["msb_q"] * p) << m                      # this party's share of 2^m b p
        if party == 1:
            x = x + a
        z = self._map(x & ring.mask(w), be)
        return (yield Open((z + key["offset"]) & ring.mask(w), w, scope=SCOPE))
