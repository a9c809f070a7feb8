"""SIGMA-style GELU built from library gates: the baseline the compiled GELU is measured against.

DESIGN §5.6 asks every compiled scalar gate to state and test its cost against the
SIGMA-style construction of the same function (§8: "GeLU: truncate, DReLU + clip, 8-bit
LUT of ReLU-GeLU, select"). :class:`SigmaGelu` is that construction (Gupta et al.,
PETS'24, GeLU protocol), composed as ONE gate out of existing library gates so that both
run through the same runtime, key layout and round counter.

The construction
----------------
GELU(x) = x * Phi(x). With ``delta(x) = ReLU(x) - GELU(x) = |x| * Phi(-|x|)`` (an even
function that decays to 0 fast), ``GELU(x) = ReLU(x) - delta(|x|)``, and delta is read
from a small table on a coarse grid. With ``s = f - lut_frac``, ``m = n - s``,
``T = clip * 2^lut_frac`` (256 for clip 4, lut_frac 6) and ``k = bitlen(T - 1)`` (8):

1. ``x'  = TR_s(x)``  = ``floor(x / 2^s) mod 2^m``: x at ``lut_frac`` fractional bits on the
   m-bit ring (:class:`TruncateReduce`, exact; sign(x') = sign(x)).
2. ``d   = DReLU_m(x')`` = ``[x >= 0]`` (XOR-masked bit).
3. in parallel: ``relu = Select_n(d, x)`` on the ORIGINAL n-bit x, and
   ``a = Select_m(d, x')``; then ``|x'| = 2a - x'`` (free).
4. ``c = min(|x'|, T - 1) = |x'| - ReLU_m(|x'| - (T - 1))`` (:class:`ReLU2` on the m-bit
   ring; the subtraction of the public T-1 and of the ReLU are free).
5. ``idx = c mod 2^k`` (free: ``0 <= c < T <= 2^k``; the composite reduces the public value
   and the mask itself) and ``D = LUT[idx]`` with ``LUT[i] = round(delta(i / 2^lut_frac) * 2^f)``
   in n bits (:class:`LutDpf`, ``lut="dpf"``, or :class:`TableLookup`, ``lut="table"``).
6. ``y = relu - D`` (free)::

       SigmaGelu(x) = ReLU(x) - LUT[ min(|floor(x / 2^(f - lut_frac))|, T - 1) ]

The output mask is ``r_relu - r_lut`` (derived from the two fresh masks of step 3's
Select and step 5's LUT); every other intermediate mask is fresh from its sub-gate or
derived by a free linear map.

Rounds (per element, one party; ``m = n - f + lut_frac``; n=50, f=12 gives m=44)
------------------------------------------------------------------------------------
=====  ===========================================  ================  ==============
round  opens                                        bits opened        n=50, f=12
=====  ===========================================  ================  ==============
1      TruncateReduce x'                            m                 44
2      DReLU(x')                                    1                 1
3      Select(d, x)  ||  Select(d, x')              n + m             94
4      DReLU(|x'| - (T-1))  (clip, first half)      1                 1
5      Select (clip, second half)                   m                 44
6      LUT delta[idx]                               n                 50
=====  ===========================================  ================  ==============
total  6 rounds                                     2n + 3m + 2       234

``cost().rounds`` is the critical path: ``TR + DReLU + max(Select_relu, Select_abs +
ReLU2 + LUT)`` = 1 + 1 + max(1, 1 + 2 + 1) = 6; key bits, AES and open bits are sums.

Accuracy
--------
ReLU is exact (Select on the original x), so the error is that of ``delta``. For x >= 0,
``|x'| = floor(x 2^lf)``; for x < 0, ``|x'| = ceil(|x| 2^lf)``: either way the grid point is
within ``2^-lf`` of |x|, so inside the clip range
``|err| <= max|delta'| * 2^-lut_frac + 2^-(f+1)`` (table rounding). ``max|delta'| =
delta'(0) = 1/2`` (``delta'(t) = Phi(-t) - t phi(t)``), i.e. about ``2^-7 = 0.0078`` absolute
(32 ulps at f=12), attained near x = 0. Beyond the clip the error is at most
``delta((T-1)/2^lf)`` (1.4e-4 for clip 4), inside the same bound. Compare: the compiled
ScalarGate GELU is within a few ulps (its spec's measured ``max_error_ulps``).
"""
from __future__ import annotations

import math

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.base import (EvalGen, FieldSpec, Gate, GateCost, Key, check_width, parallel,
                                      prefixed, unprefixed)
from fusec.runtime.gates.compare import DReLU, LutDpf, ReLU2, Select
from fusec.runtime.gates.table import TableLookup
from fusec.runtime.gates.truncation import TruncateReduce
from fusec.runtime.rng import DealerRng

__all__ = ["SigmaGelu", "gelu_delta", "delta_table"]


def gelu_delta(t) -> np.ndarray:
    """``delta(t) = ReLU(t) - GELU(t) = |t| * Phi(-|t|)`` (float, elementwise)."""
    a = np.abs(np.asarray(t, dtype=np.float64))
    phi_neg = 0.5 * np.vectorize(math.erfc)(a / math.sqrt(2.0))
    return a * phi_neg


def delta_table(lut_frac: int, frac: int, view_bits: int) -> np.ndarray:
    """``round(delta(i / 2^lut_frac) * 2^frac)`` for i in [0, 2^view_bits), int64."""
    i = np.arange(1 << view_bits, dtype=np.float64)
    return np.rint(gelu_delta(i / 2.0 ** lut_frac) * 2.0 ** frac).astype(np.int64)


def _sub_fields(prefix: str, g: Gate) -> list[FieldSpec]:
    return [(f"{prefix}.{name}", shape, bits) for name, shape, bits in g.fields()]


class SigmaGelu(Gate):
    """SIGMA-style GELU on a signed n-bit fixed-point wire with ``frac`` fractional bits.

    Keys of the sub-gates are nested under ``tr.``, ``sign.``, ``relu.``, ``abs.``,
    ``clip.`` and ``lut.``; see the module docstring for the construction, rounds and
    error bound. ``lut`` is ``"dpf"`` (SIGMA's DPF LUT) or ``"table"`` (shared truth table).
    """

    kind = "sigma_gelu"

    def __init__(self, elements: int, bits: int = 50, frac: int = 12, lut_frac: int = 6,
                 clip: float = 4.0, lut: str = "dpf"):
        super().__init__(elements)
        n = self.bits = check_width(bits, "SIGMA GELU ring width")
        self.out_bits = n
        self.frac, self.lut_frac = int(frac), int(lut_frac)
        if not 0 <= self.lut_frac < self.frac:
            raise ParameterError(f"SIGMA GELU: lut_frac {lut_frac} must be in [0, frac={frac})",
                                 "the input is truncated by frac - lut_frac >= 1 bits before the LUT")
        self.shift = self.frac - self.lut_frac
        self.mid_bits = n - self.shift                      # m: ring of x', |x'| and the clip
        T = float(clip) * 2.0 ** self.lut_frac
        if T != int(T) or T < 2:
            raise ParameterError(f"SIGMA GELU: clip * 2^lut_frac = {T:g} must be an integer >= 2")
        self.clip = float(clip)
        self.T = int(T)
        self.view_bits = max(1, (self.T - 1).bit_length())  # k: idx = c mod 2^k, 0 <= c < T
        if self.view_bits > 8:
            raise ParameterError(f"SIGMA GELU: a {self.view_bits}-bit LUT index (clip * 2^lut_frac = {self.T})",
                                 "the SIGMA construction uses an 8-bit LUT: clip * 2^lut_frac <= 256")
        if self.mid_bits < self.view_bits + 2:
            raise ParameterError(f"SIGMA GELU: the {self.mid_bits}-bit truncated ring cannot hold the clip range",
                                 "use a wider ring")
        if lut not in ("dpf", "table"):
            raise ParameterError(f"SIGMA GELU: unknown LUT {lut!r}", "use 'dpf' or 'table'")
        self.lut = lut
        N, m, k = self.elements, self.mid_bits, self.view_bits
        self.table = delta_table(self.lut_frac, self.frac, k)
        self._tr = TruncateReduce(N, n, self.shift)
        self._sign = DReLU(N, m)
        self._relu = Select(N, n)
        self._abs = Select(N, m)
        self._clip = ReLU2(N, m)
        self._lut: Gate = (LutDpf(N, k, self.table, n, view_bits=k) if lut == "dpf"
                           else TableLookup(N, k, self.table, n, k))
        self._subs: list[tuple[str, Gate]] = [("tr", self._tr), ("sign", self._sign), ("relu", self._relu),
                                              ("abs", self._abs), ("clip", self._clip), ("lut", self._lut)]

    # ------------------------------------------------------------------ layout and cost
    def fields(self) -> list[FieldSpec]:
        return [f for p, g in self._subs for f in _sub_fields(p, g)]

    def cost(self) -> GateCost:
        branch = self._abs.cost() + self._clip.cost() + self._lut.cost()   # |x'| -> clip -> LUT
        return self._tr.cost() + self._sign.cost() + self._relu.cost().parallel(branch)

    # ------------------------------------------------------------------ keygen
    def keygen(self, rng: DealerRng, in_masks):
        n, m, k = self.bits, self.mid_bits, self.view_bits
        r = np.asarray(in_masks[0], np.uint64).reshape(-1) & ring.mask(n)
        if r.shape[0] != self.elements:
            raise ParameterError(f"{self.kind}: input mask has {r.shape[0]} elements, the gate has {self.elements}")
        keys: tuple[Key, Key] = ({}, {})

        def add(prefix, out):
            mask, k0, k1 = out
            keys[0].update(prefixed(prefix, k0))
            keys[1].update(prefixed(prefix, k1))
            return mask

        r1 = add("tr", self._tr.keygen(rng, [r]))                       # x' on m bits
        rho = add("sign", self._sign.keygen(rng, [r1]))                 # d, XOR mask
        r_relu = add("relu", self._relu.keygen(rng, [rho, r]))          # relu on n bits
        r_a = add("abs", self._abs.keygen(rng, [rho, r1]))              # d * x' on m bits
        r_abs = (2 * r_a - r1) & ring.mask(m)                           # |x'| = 2a - x'
        r_cl = add("clip", self._clip.keygen(rng, [r_abs]))             # ReLU(|x'| - (T-1)): same mask
        r_c = (r_abs - r_cl) & ring.mask(m)                             # c = |x'| - ReLU(.)
        r_lut = add("lut", self._lut.keygen(rng, [ring.lo(r_c, k)]))    # idx = c mod 2^k
        r_out = (r_relu - r_lut) & ring.mask(n)                         # y = relu - delta
        return r_out, keys[0], keys[1]

    # ------------------------------------------------------------------ eval
    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        n, m, k = self.bits, self.mid_bits, self.view_bits
        mm = ring.mask(m)
        u = inputs[0].reshape(-1) & ring.mask(n)
        sub = {p: unprefixed(p, key) for p, _ in self._subs}
        # round 1: x' = TR(x);  round 2: d = DReLU(x')
        u1 = yield from self._tr.eval(party, sub["tr"], [u], be)
        d = yield from self._sign.eval(party, sub["sign"], [u1], be)
        # round 3: relu = d * x  ||  a = d * x'
        u_relu, u_a = yield from parallel(self._relu.eval(party, sub["relu"], [d, u], be),
                                          self._abs.eval(party, sub["abs"], [d, u1], be))
        u_abs = (u_a * np.uint64(2) - u1) & mm
        # rounds 4-5: c = |x'| - ReLU(|x'| - (T-1))   (AddPublic: the mask is unchanged)
        u_shift = (u_abs - np.uint64(self.T - 1)) & mm
        u_cl = yield from self._clip.eval(party, sub["clip"], [u_shift], be)
        u_c = (u_abs - u_cl) & mm
        # round 6: D = LUT[c mod 2^k]
        u_lut = yield from self._lut.eval(party, sub["lut"], [ring.lo(u_c, k)], be)
        return (u_relu - u_lut) & ring.mask(n)

    def error_bound(self) -> float:
        """The stated absolute error bound (module docstring), from delta on a fine grid."""
        t = np.linspace(0.0, self.clip, 1 << 16)
        ddelta = np.abs(np.gradient(gelu_delta(t), t))
        tail = float(gelu_delta((self.T - 1) / 2.0 ** self.lut_frac))
        return float(ddelta.max()) * 2.0 ** -self.lut_frac + max(tail, 0.0) + 2.0 ** -(self.frac + 1)
