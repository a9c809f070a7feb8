"""A free truncation read by a public-weight matmul that shrinks it: open the product, not the
truncated tensor.

Why: a lookup's output truncation (:class:`~fusec.runtime.gates.truncation.TruncateNarrow`)
opens every element of its input once more, widened to the ring its readers use. When its only
reader is a public matmul with fewer outputs than inputs (BERT's and GPT-2's second MLP
matmul: 3072 -> 768 per token), that open is four times the size of the matmul's output.

How: the truncated value is public on ``m`` bits already, read through the view
``View(k, s)`` (:func:`~fusec.runtime.gates.mul_narrow.view_public`): ``y = A - Q`` with
``A`` public and ``Q = q - 2^m b p``, ``q = hi_s(lo_k(r))`` and ``b = MSB_m(q)`` the dealer's,
``p`` a public bit. So ``Z = y @ W = A @ W - q @ W + 2^m (b * p) @ W``: the dealer shares
``r_out - q @ W`` (one word per OUTPUT element) and ``b`` (``w - m`` bits per input element),
each party multiplies its share of ``A + 2^m b p`` by W locally, and one open of ``Z + r_out``
on ``w`` bits gives the output wire. The value is exactly ``floor(x / 2^s) + c`` (the same
stochastic rounding bit ``c`` as :class:`TruncateNarrow`) times W, mod ``2^w``; the round is
the one the truncation had, so the critical path does not change.
"""
from __future__ import annotations

from fusec.runtime.xp import const, frozen, np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.base import EvalGen, FieldSpec, Gate, GateCost, Key, Open, check_width
from fusec.runtime.gates.mul_narrow import View, view_public, view_secret
from fusec.runtime.gates.truncation import SCOPE
from fusec.runtime.rng import DealerRng


class TruncateMatMulPublic(Gate):
    """``(floor(x / 2^s) + c) @ W`` mod ``2^w`` for ``x`` (shape ``x_shape``) on a ``bits``-bit
    wire PROVEN to fit ``view.bits`` signed bits with two bits of slack; ``W`` public."""

    kind = "truncate_matmul_public"

    def __init__(self, x_shape: tuple[int, ...], weight: np.ndarray, bits: int, view: View, out_bits: int):
        weight = np.asarray(weight)
        if len(x_shape) < 1 or x_shape[-1] != weight.shape[0]:
            raise ParameterError(f"matmul shapes do not match: X {tuple(x_shape)} @ W {weight.shape}")
        self.x_shape = tuple(int(d) for d in x_shape)
        self.out_shape = self.x_shape[:-1] + (int(weight.shape[1]),)
        super().__init__(int(np.prod(self.out_shape)))
        self.in_elements = int(np.prod(self.x_shape))
        self.bits = check_width(bits, f"{self.kind} input ring width")
        self.out_bits = check_width(out_bits, f"{self.kind} output width")
        if not (view.bits <= self.bits and view.shift >= 1 and 3 <= view.mid < self.out_bits):
            raise ParameterError(f"{self.kind}: a view of {view.bits} bits shifted by {view.shift} needs a "
                                 f"{bits}-bit input and an output wider than {view.mid} bits")
        self.view = view
        self.weight = frozen(weight.astype(np.int64).astype(np.uint64) & ring.mask(self.out_bits))

    def fields(self) -> list[FieldSpec]:
        w, m = self.out_bits, self.view.mid
        return [("msb_q", (self.in_elements,), w - m), ("offset", (self.elements,), w)]

    def cost(self) -> GateCost:
        w, m = self.out_bits, self.view.mid
        key = self.in_elements * (w - m) + self.elements * w
        return GateCost(key_bits=-(-key // self.elements), aes=0, rounds=1, open_bits=w)

    def _matmul(self, x, be):
        mm = be.matmul if be is not None else np.matmul
        return (mm(x.reshape(self.x_shape), const(self.weight)) & ring.mask(self.out_bits)).reshape(-1)

    def keygen(self, rng: DealerRng, in_masks):
        w = self.out_bits
        r = np.asarray(in_masks[0], np.uint64).reshape(-1) & ring.mask(self.bits)
        q, msb_q = view_secret(r, self.view)
        r_out = rng.ring(self.elements, w)
        keys: tuple[Key, Key] = ({}, {})
        keys[0]["msb_q"], keys[1]["msb_q"] = rng.share(msb_q, w - self.view.mid)
        keys[0]["offset"], keys[1]["offset"] = rng.share((r_out - self._matmul(q, None)) & ring.mask(w), w)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        w, m = self.out_bits, np.uint64(self.view.mid)
        a, p = view_public(inputs[0].reshape(-1), w, self.view)
        x = (key["msb_q"] * p) << m                      # this party's share of 2^m b p
        if party == 1:
            x = x + a
        z = self._matmul(x & ring.mask(w), be)
        return (yield Open((z + key["offset"]) & ring.mask(w), w, scope=SCOPE))
