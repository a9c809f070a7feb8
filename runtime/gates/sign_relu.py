"""ReLU from the sign bit: one comparison at one point, for a max tree's levels.

A max tree level is ``max(a, b) = ReLU(a - b) + b`` on the proven k-bit view
(:class:`~fusec.runtime.gates.compare.MaxTreeNarrow`). As a scalar gate on the exact ReLU spec,
its comparison ``[x < 2^(k-1)]`` (unsigned) runs at two points, ``u`` and ``u - 2^(k-1)``, on
k bits. But that predicate is the sign, and the sign of ``x = u - r`` is

    MSB(x) = MSB(u) XOR MSB(r) XOR [lo(u) < lo(r)]        (lo = the low k - 1 bits)

(the borrow out of the low bits, as SIGMA's DReLU computes it): ONE comparison, at the one
point ``lo(u)``, on k - 1 bits. With ``p = MSB(u)`` public and ``t = 1 XOR MSB(r)`` the
dealer's, ``b = [x >= 0] = p XOR t XOR c`` for the borrow c, and ``ReLU(x) = b (u - r)``.

* ``shifted`` (one round): a DCF keyed at ``lo(r)`` with payload ``((1 - 2t), (1 - 2t)(-r))``
  gives shares of ``c (1 - 2t)`` and ``c (1 - 2t)(-r)``; with the dealer's shares of t,
  ``t (-r)`` and ``-r`` the parties hold shares of ``e = t XOR c`` and ``e (-r)``, and
  ``b (u - r) = p u + p (-r) + (1 - 2p) (e u + e (-r))`` is linear: one open.
* ``packed`` (two rounds): a 1-bit DPF less-than key at ``lo(u)`` gives XOR shares of c; the
  parties open ``c^ = c XOR rho``; then ``b = q XOR tau`` with ``q = p XOR c^`` public and
  ``tau = t XOR rho`` the dealer's, and ``b (u - r) = q (u - r) + (1 - 2q) (tau u + tau (-r))``
  from the dealer's shares of tau, ``tau (-r)`` and ``-r``: the second open.

Half the AES of the two-point walks, on one bit fewer. Exact when ``|x| < 2^(k-1)``: the
compiler proves it for a max tree's differences (two bits of slack on the view).
"""
from __future__ import annotations

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import dcf, dpf, ring
from fusec.runtime.gates.base import EvalGen, Gate, GateCost, Key, Open, check_width, prefixed, unprefixed
from fusec.runtime.rng import DealerRng

ONE = np.uint64(1)


class SignReLU(Gate):
    """``max(x, 0)`` on an n-bit ring for ``|x| < 2^(n-1)``, its comparison on the n - 1 low bits."""

    kind = "sign_relu"
    LOOKUPS = ("shifted", "packed")

    def __init__(self, elements: int, bits: int, lookup: str = "shifted"):
        super().__init__(elements)
        self.bits = self.out_bits = check_width(bits, "ReLU ring width")
        if self.bits < 2:
            raise ParameterError("a sign ReLU needs at least 2 bits (a sign and a low bit)")
        if lookup not in self.LOOKUPS:
            raise ParameterError(f"{self.kind}: unknown lookup {lookup!r}", f"use one of {', '.join(self.LOOKUPS)}")
        self.lookup = lookup

    def fields(self):
        N, n = self.elements, self.bits
        if self.lookup == "shifted":
            cmp = [(f"dcf.{name}", shape, bits) for name, shape, bits in dcf.DcfKey.field_specs(n - 1, 2, n, N)]
            bit = []
        else:
            cmp = [(f"lt.{name}", shape, bits) for name, shape, bits in dpf.DpfKey.field_specs(n - 1, N)]
            bit = [("rho", (N,), 1)]
        return cmp + bit + [("e", (N,), n), ("e_negr", (N,), n), ("negr", (N,), n), ("r_out", (N,), n)]

    def cost(self) -> GateCost:
        n = self.bits
        words = 4 * n                 # e, e (-r), -r, r_out
        if self.lookup == "shifted":
            return GateCost(key_bits=dcf.DcfKey.key_bits(n - 1, 2, n) + words,
                            aes=dcf.DcfKey.aes_per_eval(n - 1, 2, n), rounds=1, open_bits=n)
        return GateCost(key_bits=dpf.DpfKey.key_bits(n - 1) + 1 + words, aes=dpf.DpfKey.aes_per_eval(n - 1),
                        rounds=2, open_bits=1 + n)

    def keygen(self, rng: DealerRng, in_masks):
        n, N = self.bits, self.elements
        m = ring.mask(n)
        r = np.asarray(in_masks[0], np.uint64).reshape(-1) & m
        if r.shape[0] != N:
            raise ParameterError(f"{self.kind}: input mask has {r.shape[0]} elements, the gate was built for {N}")
        negr = (np.uint64(0) - r) & m
        t = ONE ^ ring.msb(r, n)
        keys: tuple[dict, dict] = ({}, {})
        if self.lookup == "shifted":         # e = t XOR c from the DCF's c (1 - 2t): the dealer's part is t
            sign = (ONE - (t << ONE)) & m
            k0, k1 = dcf.keygen(rng, ring.lo(r, n - 1), np.stack([sign, (sign * negr) & m], axis=1), n - 1, n)
            e = t
            keys[0].update(prefixed("dcf", k0.arrays()))
            keys[1].update(prefixed("dcf", k1.arrays()))
        else:                                # tau = t XOR rho, with c XOR rho opened
            k0, k1 = dpf.lt_keygen(rng, ring.lo(r, n - 1), n - 1)
            rho = rng.bits(N)
            e = t ^ rho
            keys[0].update(prefixed("lt", k0.arrays()))
            keys[1].update(prefixed("lt", k1.arrays()))
            keys[0]["rho"], keys[1]["rho"] = rng.share(rho, 1)
        r_out = rng.ring(N, n)
        for name, v in (("e", e), ("e_negr", (e * negr) & m), ("negr", negr), ("r_out", r_out)):
            keys[0][name], keys[1][name] = rng.share(v & m, n)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        n = self.bits
        m = ring.mask(n)
        u = inputs[0].reshape(-1) & m
        p = ring.msb(u, n)
        if self.lookup == "shifted":
            d = be.dcf_eval(party, dcf.DcfKey.from_arrays(n - 1, 2, n, unprefixed("dcf", key)), ring.lo(u, n - 1))
            e, e_negr, q = key["e"] + d[:, 0], key["e_negr"] + d[:, 1], p
        else:
            c = be.dpf_lt_eval(party, dpf.DpfKey.from_arrays(n - 1, unprefixed("lt", key)), ring.lo(u, n - 1))
            c_hat = yield Open((c ^ key["rho"]) & ONE, 1, scope="cmp")
            e, e_negr, q = key["e"], key["e_negr"], p ^ (c_hat.reshape(-1) & ONE)
        # b = q XOR e = q + (1 - 2q) e;  b (u - r) = q u + q (-r) + (1 - 2q) (e u + e (-r))
        share = q * key["negr"] + (ONE - (q << ONE)) * (e * u + e_negr) + key["r_out"]
        if party == 1:
            share = share + q * u
        return (yield Open(share & m, n, scope="lookup"))


__all__ = ["SignReLU"]
