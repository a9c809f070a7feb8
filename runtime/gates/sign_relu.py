"""ReLU from the sign bit in one round: one DCF at one point, for a max tree's levels.

A max tree level is ``max(a, b) = ReLU(a - b) + b`` on the proven k-bit view
(:class:`~fusec.runtime.gates.compare.MaxTreeNarrow`). As a scalar gate on the exact ReLU spec,
its comparison ``[x < 2^(k-1)]`` (unsigned) runs at two points, ``u`` and ``u - 2^(k-1)``, on
k bits. But that predicate is the sign, and the sign of ``x = u - r`` is

    MSB(x) = MSB(u) XOR MSB(r) XOR [lo(u) < lo(r)]        (lo = the low k - 1 bits)

(the borrow out of the low bits, as :class:`~fusec.runtime.gates.compare.DReLU` computes it):
ONE comparison, at the one point ``lo(u)``, on k - 1 bits. With ``p = MSB(u)`` public and
``t = 1 XOR MSB(r)`` the dealer's, ``b = [x >= 0] = p XOR e`` with ``e = t XOR c`` for the
borrow c. A DCF keyed at ``lo(r)`` with payload ``((1 - 2t), (1 - 2t) r)`` gives shares of
``c (1 - 2t)`` and ``c (1 - 2t) r``; with the dealer's shares of t and ``t r`` the parties hold
shares of e and ``e r``, and ``b (u - r)`` is :func:`~fusec.runtime.gates.compare.select_share`
with the public bit p: one open. (The two-round form, the DPF and the opened bit, is
:class:`~fusec.runtime.gates.compare.ReLU2`.)

Half the AES of the scalar gate's two points, on one bit fewer. Exact when ``|x| < 2^(k-1)``:
the compiler proves it for a max tree's differences (two bits of slack on the view).
"""
from __future__ import annotations

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import dcf, ring
from fusec.runtime.gates.base import EvalGen, Gate, GateCost, Key, Open, check_width, prefixed, unprefixed
from fusec.runtime.gates.compare import select_share
from fusec.runtime.rng import DealerRng

ONE = np.uint64(1)


class SignReLU(Gate):
    """``max(x, 0)`` on an n-bit ring for ``|x| < 2^(n-1)`` in one round, its comparison on the n - 1 low bits."""

    kind = "sign_relu"

    def __init__(self, elements: int, bits: int, scope: str = "lookup"):
        super().__init__(elements)
        self.bits = self.out_bits = check_width(bits, "ReLU ring width")
        if self.bits < 2:
            raise ParameterError("a sign ReLU needs at least 2 bits (a sign and a low bit)")
        self.scope = scope

    def fields(self):
        N, n = self.elements, self.bits
        cmp = [(f"dcf.{name}", shape, bits) for name, shape, bits in dcf.DcfKey.field_specs(n - 1, 2, n, N)]
        return cmp + [("t", (N,), n), ("r", (N,), n), ("t_r", (N,), n), ("r_out", (N,), n)]

    def cost(self) -> GateCost:
        n = self.bits
        return GateCost(key_bits=dcf.DcfKey.key_bits(n - 1, 2, n) + 4 * n, aes=dcf.DcfKey.aes_per_eval(n - 1, 2, n),
                        rounds=1, open_bits=n)

    def keygen(self, rng: DealerRng, in_masks):
        n, N = self.bits, self.elements
        m = ring.mask(n)
        r = np.asarray(in_masks[0], np.uint64).reshape(-1) & m
        if r.shape[0] != N:
            raise ParameterError(f"{self.kind}: input mask has {r.shape[0]} elements, the gate was built for {N}")
        t = ONE ^ ring.msb(r, n)
        sign = (ONE - (t << ONE)) & m                  # 1 - 2t: c (1 - 2t) turns t into t XOR c
        k0, k1 = dcf.keygen(rng, ring.lo(r, n - 1), np.stack([sign, (sign * r) & m], axis=1), n - 1, n)
        keys = (prefixed("dcf", k0.arrays()), prefixed("dcf", k1.arrays()))
        r_out = rng.ring(N, n)
        for name, v in (("t", t), ("r", r), ("t_r", t * r), ("r_out", r_out)):
            keys[0][name], keys[1][name] = rng.share(v & m, n)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        n = self.bits
        u = inputs[0].reshape(-1) & ring.mask(n)
        d = be.dcf_eval(party, dcf.DcfKey.from_arrays(n - 1, 2, n, unprefixed("dcf", key)), ring.lo(u, n - 1))
        share = select_share(party, ring.msb(u, n), u, key["t"] + d[:, 0], key["r"], key["t_r"] + d[:, 1],
                             key["r_out"], n)
        return (yield Open(share, n, scope=self.scope))


__all__ = ["SignReLU"]
