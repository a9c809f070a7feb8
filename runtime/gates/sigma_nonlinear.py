"""SIGMA-style softmax and layer-norm nonlinearities: the ``--gates sigma`` baseline (DESIGN §8).

SIGMA (Gupta et al., PETS'24) builds softmax from a max tree, ``exp`` of the non-positive
difference through two 8-bit LUTs (nExp), and the inverse of the row sum through a LUT on
a reduced-bit view; layer norm's ``1/sqrt(var)`` through a LUT on a 13-bit float-like view.
The gates here are those constructions, each ONE gate composed of existing library gates
(:class:`DReLU`, :class:`Select`, :class:`TruncateReduce`, :class:`TruncateSlack`,
:class:`IntervalContainment`, :class:`LutDpf`, :class:`Mul`) so that they run through the
same runtime, key layout and round counter as the compiled gates they are compared with.
Sub-gate keys are nested under the sub-gate's name (``clip.``, ``hi.``, ``lut_hi.``, ...).

Free views. A wire ``u = x + r mod 2^n`` viewed mod ``2^w`` (w <= n) is the wire
``x mod 2^w`` with mask ``r mod 2^w``: taking low bits is free on both sides. Every
truncation below runs on the smallest view that holds its result (``TruncateReduce`` of
``x mod 2^(k+s)`` by s gives ``hi_s(x) mod 2^k``), so its DCF payload and its open are k
bits, not n - s.

Costs (per element, per party; ``cost()``, equal to what tests measure from the key arrays,
the AES counter and the round log) at n=50, f=12:

======================  ======  =========  ======  ===========  ==================================
gate                    rounds  key bytes  AES     bits opened  max error, ulps (stated bound)
======================  ======  =========  ======  ===========  ==================================
SigmaNegExp             13      903.1      49      329          1.0 (1.5)
SigmaInverse (max 128)  5       189.2      191     115          31.0 over [1, 128] (32.5)
SigmaRsqrt (default B)  4       2,325.0    33,739  171          8.1 for x >= 1 (8.5); relative
                                                                2^-9 + 0.5 ulp everywhere
======================  ======  =========  ======  ===========  ==================================

nExp and inverse use SIGMA's own blocks (sigma_fss.py: 1-bit DPF comparisons, two-round
truncations, DPF LUTs whose U and V are opened in two rounds), in SIGMA's order of rounds.
The rsqrt keeps an arithmetic-DPF LUT: SIGMA's GPU code evaluates layer norm's 1/sqrt on the
opened masked sum of squares (no key, no round), which is not a secure construction.
The LUT gates' AES is the full-domain DPF expansion, so 13-bit views dominate: SIGMA pays
the same, once per softmax row (inverse) or layer-norm row (rsqrt), not per element.
"""
from __future__ import annotations

import math

from fusec.runtime.xp import const, frozen, np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.arith import Mul
from fusec.runtime.gates.base import (ZERO_COST, EvalGen, FieldSpec, Gate, GateCost, Key, KeyAcc, Open,
                                      check_width, prefixed, unprefixed)
from fusec.runtime.gates.compare import DReLU, IntervalContainment, LutDpf, Select
from fusec.runtime.gates.sigma_fss import SigmaLut, SigmaTrunc
from fusec.runtime.gates.truncation import TruncateReduce
from fusec.runtime.rng import DealerRng

__all__ = ["SigmaNegExp", "SigmaInverse", "SigmaRsqrt", "sigma_layernorm_rsqrt", "nexp_tables", "inverse_table",
           "rsqrt_table"]

U64 = np.uint64
ONE = U64(1)


# ----------------------------------------------------------------------------- helpers
class _Composite(Gate):
    """A gate made of named sub-gates whose keys are nested under ``<name>.``.

    Subclasses list ``self._subs = [(name, gate), ...]`` (the key layout order) and write
    keygen/eval by hand, since the dataflow between sub-gates is not a chain.
    """

    _subs: list[tuple[str, Gate]]

    def fields(self) -> list[FieldSpec]:
        return [(f"{p}.{name}", shape, bits) for p, g in self._subs for name, shape, bits in g.fields()]

    def _in_mask(self, in_masks, i: int = 0) -> np.ndarray:
        r = np.asarray(in_masks[i], np.uint64).reshape(-1) & ring.mask(self.bits)
        if r.shape[0] != self.elements:
            raise ParameterError(f"{self.kind}: input mask has {r.shape[0]} elements, the gate has {self.elements}")
        return r

    def _u(self, inputs, i: int = 0):
        u = inputs[i].reshape(-1)
        if u.shape[0] != self.elements:
            raise ParameterError(f"{self.kind}: input has {u.shape[0]} elements, the gate has {self.elements}")
        return u & ring.mask(self.bits)

    def _sub_keys(self, key: Key) -> dict[str, Key]:
        return {p: unprefixed(p, key) for p, _ in self._subs}


def _encode(values: np.ndarray, scale: int) -> np.ndarray:
    return np.rint(np.asarray(values, np.float64) * 2.0 ** scale).astype(np.int64)


# ----------------------------------------------------------------------------- nExp
def nexp_tables(view_frac: int, frac: int, centre: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The two 8-bit tables of nExp at output scale ``frac``.

    ``hi[i] = exp(-i 2^8 / 2^view_frac)``, ``lo[j] = exp(-(j + c) / 2^view_frac)`` with
    ``c = 1/2`` when the low byte was truncated (``centre``: it stands for an interval).
    """
    i = np.arange(256, dtype=np.float64)
    c = 0.5 if centre else 0.0
    return (_encode(np.exp(-i * 256.0 / 2.0 ** view_frac), frac),
            _encode(np.exp(-(i + c) / 2.0 ** view_frac), frac))


class SigmaNegExp(_Composite):
    """SIGMA's nExp (``gpu_nexp.cu``): ``exp(x)`` for ``x <= 0`` at scale ``frac``, output at scale ``frac``.

    Precondition (the caller's, e.g. ``x - max(x)`` in softmax): ``-2^(m-1) < x <= 0`` with
    ``m = in_bits`` (SIGMA: bin + 2 = 40 at n = 50; default ``n - frac + 2``, capped at n).
    Positive x give garbage (the construction reads ``-x`` as a magnitude). ``frac <= 12``:
    the 16-bit clip then covers ``[0, 2^(16 - frac))``, at least ``[0, 16)``.

    With ``y = -x >= 0`` (free) and ``p = 2^16 - 1``, SIGMA's sequence of rounds:

    1-2    ``c = min(y, p)`` on 16 bits: ``b = 1 XOR DReLU_m(y - p)`` (an (m-1)-bit DPF key; 39 bits
           at m = 40), then ``Select_16(b, y - p) + p``
    3-5    ``L = LUT_lo[c mod 2^8]``, ``LUT_lo[j] = exp(-j / 2^frac)`` (:class:`SigmaLut`: U, V, output)
    6-7    ``h = TR_8(c)`` on 8 bits (:class:`SigmaTrunc`; SIGMA's TrWithSlack 16 -> 8, exact mod 2^8)
    8-10   ``H = LUT_hi[h]``, ``LUT_hi[i] = exp(-256 i / 2^frac)``
    11     ``P = H L`` (:class:`Mul`, scale 2 frac)
    12-13  ``z = floor((P + 2^(frac-1)) / 2^frac)`` (:class:`SigmaTrunc` with slack, n bits; the
           rounding offset is free, SIGMA floors)

    Accuracy: each table entry is within half an ulp, the other factor <= 1, plus the final
    rounding: ``|z - exp(x) 2^frac| <= 1.5`` ulps; beyond the clip ``exp(-2^(16-frac))`` (< 0.0005
    ulps at frac 12).
    """

    kind = "sigma_nexp"

    def __init__(self, elements: int, bits: int = 50, frac: int = 12, in_bits: int | None = None):
        super().__init__(elements)
        n = self.bits = check_width(bits, "SIGMA nExp ring width")
        self.out_bits = n
        self.frac = self.out_scale = int(frac)
        if not 1 <= self.frac <= 12:
            raise ParameterError(f"SIGMA nExp: frac {frac} must be in [1, 12]",
                                 "the 16-bit clip must cover [0, 16) of -x")
        self.in_bits = min(n, n - self.frac + 2) if in_bits is None else check_width(in_bits, "SIGMA nExp input width")
        if not 18 <= self.in_bits <= n:
            raise ParameterError(f"SIGMA nExp: in_bits {self.in_bits} must lie in [18, {n}]",
                                 "the clip compares -x - (2^16 - 1) on the in_bits view")
        if 2 * self.frac + 3 > n:
            raise ParameterError(f"SIGMA nExp: a {n}-bit ring cannot hold the product of two scale-{self.frac} "
                                 "values with headroom", "needs 2 frac + 3 <= n")
        N = self.elements
        self.clip_at = (1 << 16) - 1
        self.tab_hi, self.tab_lo = nexp_tables(self.frac, self.frac)
        self._clip = DReLU(N, self.in_bits)
        self._sel = Select(N, 16)
        self._lut_lo = SigmaLut(N, 8, self.tab_lo, n, scope="lookup")
        self._hi = SigmaTrunc(N, 16, 8, out_bits=8, scope="softmax")
        self._lut_hi = SigmaLut(N, 8, self.tab_hi, n, scope="lookup")
        self._mul = Mul(N, n)
        self._trunc = SigmaTrunc(N, n, self.frac, slack=True, scope="softmax")
        self._subs = [("clip", self._clip), ("sel", self._sel), ("lut_lo", self._lut_lo), ("hi", self._hi),
                      ("lut_hi", self._lut_hi), ("mul", self._mul), ("trunc", self._trunc)]

    def cost(self) -> GateCost:
        total = ZERO_COST
        for _, g in self._subs:
            total = total + g.cost()
        return total

    def keygen(self, rng: DealerRng, in_masks):
        n = self.bits
        ry = (U64(0) - self._in_mask(in_masks)) & ring.mask(n)            # mask of y = -x
        acc = KeyAcc()
        rho = acc.add("clip", self._clip.keygen(rng, [ring.lo(ry, self.in_bits)]))   # y - p: same mask
        r_c = acc.add("sel", self._sel.keygen(rng, [rho, ring.lo(ry, 16)]))          # + p: same mask
        r_l = acc.add("lut_lo", self._lut_lo.keygen(rng, [ring.lo(r_c, 8)]))
        r_h = acc.add("hi", self._hi.keygen(rng, [r_c]))
        r_a = acc.add("lut_hi", self._lut_hi.keygen(rng, [r_h]))
        r_p = acc.add("mul", self._mul.keygen(rng, [r_a, r_l]))
        r_out = acc.add("trunc", self._trunc.keygen(rng, [r_p]))          # + 2^(frac-1): same mask
        return r_out, acc.keys[0], acc.keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        n = self.bits
        sub = self._sub_keys(key)
        y = (U64(0) - self._u(inputs)) & ring.mask(n)
        z = (y - U64(self.clip_at)) & ring.mask(n)
        d = yield from self._clip.eval(party, sub["clip"], [ring.lo(z, self.in_bits)], be)
        s = yield from self._sel.eval(party, sub["sel"], [d ^ ONE, ring.lo(z, 16)], be)     # [y < p] (y - p)
        c = (s + U64(self.clip_at)) & ring.mask(16)
        lo = yield from self._lut_lo.eval(party, sub["lut_lo"], [ring.lo(c, 8)], be)
        h = yield from self._hi.eval(party, sub["hi"], [c], be)
        hi = yield from self._lut_hi.eval(party, sub["lut_hi"], [h], be)
        p = yield from self._mul.eval(party, sub["mul"], [hi, lo], be)
        p = (p + U64(1 << (self.frac - 1))) & ring.mask(n)
        return (yield from self._trunc.eval(party, sub["trunc"], [p], be))


# ----------------------------------------------------------------------------- inverse
def inverse_table(view_bits: int, shift: int, frac: int, out_frac: int) -> np.ndarray:
    """``T[i] ~ 2^out_frac / x`` for the inputs ``x`` (scale ``frac``) with ``floor(x / 2^shift) = i``.

    Index i stands for the integers ``[i 2^shift, (i+1) 2^shift - 1]``; the entry is the
    midpoint of 1/x at the two ends (the constant with the least worst-case error). Index 0
    stands for ``i = 2^view_bits`` (the view wraps there: x = max_value when that is a power
    of two); inputs below ``2^shift`` are outside the precondition.
    """
    i = np.arange(1 << view_bits, dtype=np.float64)
    i[0] = 2.0 ** view_bits
    lo = i * 2.0 ** shift / 2.0 ** frac
    hi = ((i + 1) * 2.0 ** shift - 1) / 2.0 ** frac
    return _encode(0.5 * (1 / lo + 1 / hi), out_frac)


class SigmaInverse(_Composite):
    """SIGMA's inverse LUT: ``1/x`` for ``1 <= x <= max_value`` (scale ``frac``), output at ``out_frac``.

    Precondition: ``2^-lut_frac <= x <= max_value`` (softmax denominators: the row max
    contributes exp(0) = 1, so the sum lies in [1, sequence length]). Outside it the view
    wraps and the output is garbage.

    ``lut_frac`` defaults to SIGMA's 6, lowered so that the view stays within 16 bits
    (``max_value`` above 1024).

    Construction (SIGMA: TR by 6 bits, a 13-bit DPF LUT for L = 128): with
    ``s = frac - lut_frac`` and ``k = ceil(log2(max_value 2^lut_frac))``,

    rounds 1-2  ``i = TR_s(x mod 2^(k+s))`` = ``floor(x / 2^s) mod 2^k``  (:class:`SigmaTrunc`
             on the (k+s)-bit view: an s-bit DPF key, 1 then k bits opened; SIGMA's TrWithSlack
             19 -> 13 bits, exact mod 2^k; skipped when s = 0)
    rounds 3-5  ``z = T[i]``  (:class:`SigmaLut`, k-bit view, n-bit output), ``T`` = :func:`inverse_table`

    Accuracy: within an index the input spans ``2^-lut_frac`` and ``|d(1/x)/dx| <= 1`` for
    x >= 1, so the centred table entry is within ``2^-(lut_frac+1)`` of 1/x, plus half an
    ulp of rounding: ``<= 2^(out_frac - lut_frac - 1) + 0.5`` ulps of ``out_frac`` (32.5 ulps
    at lut_frac 6, out_frac 12), attained near x = 1.
    """

    kind = "sigma_inverse"

    def __init__(self, elements: int, bits: int = 50, frac: int = 12, max_value: float = 128.0,
                 out_frac: int | None = None, lut_frac: int | None = None):
        super().__init__(elements)
        n = self.bits = check_width(bits, "SIGMA inverse ring width")
        self.out_bits = n
        if not max_value >= 1:
            raise ParameterError(f"SIGMA inverse: max_value {max_value} must be >= 1")
        self.max_value = float(max_value)
        if lut_frac is None:     # SIGMA's 6 bits, fewer when the view would pass 16 bits
            lut_frac = min(6, 16 - math.ceil(math.log2(self.max_value)))
        self.frac, self.lut_frac = int(frac), int(lut_frac)
        self.out_frac = self.out_scale = self.frac if out_frac is None else int(out_frac)
        if not 0 <= self.lut_frac <= self.frac:
            raise ParameterError(f"SIGMA inverse: lut_frac {lut_frac} must be in [0, frac={frac}]",
                                 "max_value above 2^16 leaves no room for a 16-bit view")
        self.shift = self.frac - self.lut_frac
        top = math.ceil(self.max_value * 2.0 ** self.lut_frac)
        self.view_bits = max(1, (top - 1).bit_length())          # x' <= top <= 2^k (2^k wraps to 0)
        k, s = self.view_bits, self.shift
        if k > 16:
            raise ParameterError(f"SIGMA inverse: a {k}-bit LUT (max_value {max_value} at {lut_frac} fractional bits)",
                                 "the full-domain DPF costs 2^k per element; lower lut_frac or max_value")
        if k + s > n or self.out_frac + self.lut_frac + 1 >= n:
            raise ParameterError(f"SIGMA inverse: a {n}-bit ring cannot hold the {k + s}-bit view or the output")
        N = self.elements
        self.table = inverse_table(k, s, self.frac, self.out_frac)
        self._tr = SigmaTrunc(N, k + s, s, out_bits=k, scope="softmax") if s else None
        self._lut = SigmaLut(N, k, self.table, n, scope="lookup")
        self._subs = [(p, g) for p, g in (("tr", self._tr), ("lut", self._lut)) if g is not None]

    def cost(self) -> GateCost:
        return (self._tr.cost() if self._tr else ZERO_COST) + self._lut.cost()

    def keygen(self, rng: DealerRng, in_masks):
        k, s = self.view_bits, self.shift
        r = self._in_mask(in_masks)
        acc = KeyAcc()
        ri = acc.add("tr", self._tr.keygen(rng, [ring.lo(r, k + s)])) if self._tr else ring.lo(r, k)
        r_out = acc.add("lut", self._lut.keygen(rng, [ri]))
        return r_out, acc.keys[0], acc.keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        k, s = self.view_bits, self.shift
        u = self._u(inputs)
        sub = self._sub_keys(key)
        if self._tr is None:
            i = ring.lo(u, k)
        else:
            i = yield from self._tr.eval(party, sub["tr"], [ring.lo(u, k + s)], be)
        return (yield from self._lut.eval(party, sub["lut"], [i], be))

    def error_bound_ulps(self) -> float:
        return 2.0 ** (self.out_frac - self.lut_frac - 1) + 0.5


# ----------------------------------------------------------------------------- rsqrt
class _OneHotScale(Gate):
    """From one-hot XOR-masked bits ``b_i`` and a wire x: ``(x (w0 + sum_i w_i b_i), sum_i a_i b_i)``.

    One round, two opens (``y`` in ``bits`` = w bits, ``z`` in ``out_bits`` = k <= w bits).
    With the opened ``c_i = b_i XOR rho_i``, ``b_i = c_i + (1 - 2 c_i) rho_i`` over the
    integers, and with ``x = u - r``::

        y = W (u - r) + sum_i w_i (1 - 2 c_i) (u rho_i - r rho_i),   W = w0 + sum_i w_i c_i
        z = sum_i a_i c_i + sum_i a_i (1 - 2 c_i) rho_i

    linear in the dealer's shares of ``r``, ``rho_i`` and ``r rho_i`` (Select's correlation,
    one per bit), so the bit-to-arithmetic conversion and the product with x share one
    round. The ``rho_i`` shares (w bits) serve z too (reduced mod 2^k).

    Inputs: the bits wire (shape ``(N, count)``) and x (its w-bit view). keygen returns
    the pair of output masks, eval the pair of public outputs: a sub-gate of
    :class:`SigmaRsqrt` only, never a graph node.
    """

    kind = "one_hot_scale"
    inputs = 2

    def __init__(self, elements: int, count: int, bits: int, out_bits: int, w0: int, w, a):
        super().__init__(elements)
        self.bits = check_width(bits, "one-hot scale ring width")
        self.out_bits = check_width(out_bits, "one-hot index width")
        self.count = int(count)
        self.w0 = U64(w0 % (1 << self.bits))
        self.w = frozen(np.array([int(v) % (1 << self.bits) for v in w], dtype=np.uint64))
        self.a = frozen(np.array([int(v) % (1 << self.out_bits) for v in a], dtype=np.uint64))
        if self.w.shape != (count,) or self.a.shape != (count,):
            raise ParameterError("one-hot scale: one weight and one index per bit")

    def fields(self) -> list[FieldSpec]:
        N, B, w, k = self.elements, self.count, self.bits, self.out_bits
        return [("r", (N,), w), ("rho", (N, B), w), ("rho_r", (N, B), w), ("r_y", (N,), w), ("r_z", (N,), k)]

    def cost(self) -> GateCost:
        w, k, B = self.bits, self.out_bits, self.count
        return GateCost(key_bits=(2 * B + 2) * w + k, aes=0, rounds=1, open_bits=w + k)

    def keygen(self, rng: DealerRng, in_masks):
        N, B, w, k = self.elements, self.count, self.bits, self.out_bits
        rho = np.asarray(in_masks[0], np.uint64).reshape(N, B) & ONE
        r = np.asarray(in_masks[1], np.uint64).reshape(-1) & ring.mask(w)
        r_y, r_z = rng.ring(N, w), rng.ring(N, k)
        keys: tuple[Key, Key] = ({}, {})
        for name, val, bits in (("r", r, w), ("rho", rho, w), ("rho_r", (rho * r[:, None]) & ring.mask(w), w),
                                ("r_y", r_y, w), ("r_z", r_z, k)):
            keys[0][name], keys[1][name] = rng.share(val, bits)
        return (r_y, r_z), keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        N, B = self.elements, self.count
        c = inputs[0].reshape(N, B) & ONE
        u = inputs[1].reshape(-1) & ring.mask(self.bits)
        wv, av = const(self.w), const(self.a)
        sign = ONE - (c << ONE)                                            # 1 - 2c mod 2^64
        W = self.w0 + (c * wv[None, :]).sum(axis=1, dtype=np.uint64)
        y = key["r_y"] - W * key["r"] + (wv[None, :] * sign * (u[:, None] * key["rho"] - key["rho_r"])).sum(
            axis=1, dtype=np.uint64)
        z = key["r_z"] + (av[None, :] * sign * key["rho"]).sum(axis=1, dtype=np.uint64)
        if party == 1:
            y = y + W * u
            z = z + (c * av[None, :]).sum(axis=1, dtype=np.uint64)
        y, z = yield [Open(y & ring.mask(self.bits), self.bits, scope="other"),
                      Open(z & ring.mask(self.out_bits), self.out_bits, scope="other")]
        return y, z


def rsqrt_table(exp_range: int, mant_bits: int, frac: int, out_frac: int, k: float = 1.0,
                eps: float = 0.0) -> np.ndarray:
    """The float-like view's table (see :class:`SigmaRsqrt`) of ``g(v) = 1/sqrt(k v + eps)``,
    ``v = x / 2^frac``, at scale ``out_frac``.

    Index ``(e+1) 2^M + m`` (``M = mant_bits``, ``0 <= e < exp_range``, ``0 <= m < 2^M``)
    stands for the integers x with ``floor(x / 2^(e-M)) = 2^M + m`` in ``[2^e, 2^(e+1))``;
    the entry is the midpoint of g at the smallest and largest such x. Index 0 is x = 0
    (``g(0)``, or g of one ulp when eps = 0), index ``(exp_range+1) 2^M`` the clip
    ``x >= 2^exp_range``; other indices are unreachable.
    """
    B, M = exp_range, mant_bits

    def g(x):
        return 1 / np.sqrt(k * (np.asarray(x, np.float64) / 2.0 ** frac) + eps)

    view = (B + 1).bit_length() + M
    e = np.repeat(np.arange(B, dtype=np.float64), 1 << M)
    y = np.tile(np.arange(1 << M, 2 << M, dtype=np.float64), B)        # 2^M + m
    lo = y * 2.0 ** (e - M)
    hi = np.where(e > M, (y + 1) * 2.0 ** (e - M) - 1, lo)             # e <= M: x = lo exactly
    table = np.zeros(1 << view, dtype=np.int64)
    table[1 << M:(B + 1) << M] = _encode(0.5 * (g(lo) + g(hi)), out_frac)
    table[0] = _encode(g(0.0 if eps > 0 else 1.0), out_frac)
    table[(B + 1) << M] = _encode(g(2.0 ** B), out_frac)
    return table


class SigmaRsqrt(_Composite):
    """SIGMA-style ``1/sqrt(k x + eps)`` on a float-like view of ``x >= 0`` (scale ``frac``), output at ``out_frac``.

    For layer norm: x is the variance (k = 1) or the row's sum of squares (k = 1/d), and
    the public k and eps are folded into the table, so the fused form costs nothing more
    (:func:`sigma_layernorm_rsqrt`). With eps = 0, x = 0 reads as one ulp. Inputs at or
    above ``2^B`` are clipped to ``2^B``: ``B = exp_bits`` covers ``max_value`` (a real value,
    like ``x / 2^frac``); by default it is the largest the ring allows (45 at n = 50, 32 at n = 37).
    Precondition: ``0 <= x < 2^(n-1)``; negative x give garbage.

    Construction (SIGMA converts x to a 13-bit bfloat-like value, exponent + 7-bit mantissa,
    and looks it up). With ``M = mant_bits``, ``K = B - 1``, ``w = B - 1 + bitlen(B+1)``:

    round 1  exponent, one-hot: :class:`IntervalContainment` bits
             ``b_e = [2^e <= x < 2^(e+1)]`` for e = 1..B-1 and ``b_clip = [x >= 2^B]``
             (one DCF key at 2 points per interval; x < 2 sets no bit, e = 0)
    round 2  :class:`_OneHotScale`: ``y = x 2^(K-e)`` (0 when clipped), in ``[2^K, 2^(K+1))``:
             x normalised so its leading one sits at bit K; and ``z = e 2^M``
             (``(B+1) 2^M`` when clipped), opened on w and V bits
    round 3  ``y' = TR_{K-M}(y)`` on the w-bit view: ``2^M + mantissa`` (``x 2^M`` for x < 2)
    round 4  ``LUT[(z + y') mod 2^V]`` with ``V = view_bits = bitlen(B+1) + M`` (13 bits at
             n = 50 or 37, default B, M = 7), :func:`rsqrt_table`, n-bit output

    Accuracy: an index covers x within a factor ``1 + 2^-M`` (exact for e <= M), so g
    varies by at most a factor ``sqrt(1 + 2^-M)`` over it (eps > 0 only flattens it); the
    entry is centred, so the relative error is at most ``2^-(M+2)`` plus half an ulp of
    rounding; clipped inputs return ``g(2^B)``. At out_frac 12, k = 1, that is <= 8.5 ulps
    for x >= 1.
    """

    kind = "sigma_rsqrt"

    def __init__(self, elements: int, bits: int = 50, frac: int = 12, max_value: float | None = None,
                 out_frac: int | None = None, mant_bits: int = 7, k: float = 1.0, eps: float = 0.0):
        super().__init__(elements)
        n = self.bits = check_width(bits, "SIGMA rsqrt ring width")
        self.out_bits = n
        self.frac = int(frac)
        self.out_frac = self.out_scale = self.frac if out_frac is None else int(out_frac)
        M = self.mant_bits = int(mant_bits)
        if not (k > 0 and eps >= 0):
            raise ParameterError(f"SIGMA rsqrt: needs k > 0 and eps >= 0, got k={k}, eps={eps}")
        self.k, self.eps = float(k), float(eps)

        def width(b: int) -> int:              # ring of y: holds y < 2^b and the V-bit index
            return b - 1 + (b + 1).bit_length()

        b_max = max(b for b in range(3, n - 1) if width(b) <= n)
        if max_value is None:
            B = b_max
        else:
            B = max(2, int(math.ceil(float(max_value) * 2.0 ** self.frac)).bit_length())
        if B > b_max:
            raise ParameterError(f"SIGMA rsqrt: max_value {max_value} needs {B} bits; a {n}-bit ring allows {b_max}",
                                 "lower max_value (inputs above it are clipped) or widen the ring")
        if not 1 <= M <= B - 2:
            raise ParameterError(f"SIGMA rsqrt: mant_bits {M} must be in [1, {B - 2}]",
                                 "the normalised x is truncated by B - 1 - mant_bits >= 1 bits")
        self.exp_bits = B
        self.max_value = 2.0 ** (B - self.frac)
        K = B - 1
        w = self.y_bits = width(B)
        k = self.view_bits = (B + 1).bit_length() + M
        if k > 16:
            raise ParameterError(f"SIGMA rsqrt: a {k}-bit LUT", "use fewer mantissa bits")
        N = self.elements
        bounds = [(1 << e, (1 << (e + 1)) - 1) for e in range(1, B)] + [(1 << B, (1 << (n - 1)) - 1)]
        w_e = [(1 << (K - e)) - (1 << K) for e in range(1, B)] + [-(1 << K)]
        a_e = [e << M for e in range(1, B)] + [(B + 1) << M]
        self.table = rsqrt_table(B, M, self.frac, self.out_frac, self.k, self.eps)
        if int(self.table.max()) >= 1 << (n - 1):
            raise ParameterError(f"SIGMA rsqrt: the largest output {self.table.max() / 2 ** self.out_frac:g} "
                                 f"at scale {self.out_frac} does not fit a signed {n}-bit ring",
                                 "raise eps or lower out_frac")
        self._exp = IntervalContainment(N, n, bounds)
        self._scale = _OneHotScale(N, B, w, k, 1 << K, w_e, a_e)
        self._tr = TruncateReduce(N, w, K - M)
        self._lut = LutDpf(N, k, self.table, n, view_bits=k)
        self._subs = [("exp", self._exp), ("scale", self._scale), ("tr", self._tr), ("lut", self._lut)]

    def cost(self) -> GateCost:
        return self._exp.cost() + self._scale.cost() + self._tr.cost() + self._lut.cost()

    def keygen(self, rng: DealerRng, in_masks):
        w, k = self.y_bits, self.view_bits
        r = self._in_mask(in_masks)
        acc = KeyAcc()
        rho = acc.add("exp", self._exp.keygen(rng, [r]))
        r_y, r_z = acc.add("scale", self._scale.keygen(rng, [rho, ring.lo(r, w)]))
        r_t = acc.add("tr", self._tr.keygen(rng, [r_y]))
        r_out = acc.add("lut", self._lut.keygen(rng, [(r_z + r_t) & ring.mask(k)]))
        return r_out, acc.keys[0], acc.keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        w, k = self.y_bits, self.view_bits
        u = self._u(inputs)
        sub = self._sub_keys(key)
        bits = yield from self._exp.eval(party, sub["exp"], [u], be)
        y, z = yield from self._scale.eval(party, sub["scale"], [bits, ring.lo(u, w)], be)
        t = yield from self._tr.eval(party, sub["tr"], [y], be)
        return (yield from self._lut.eval(party, sub["lut"], [(z + t) & ring.mask(k)], be))

    def relative_error_bound(self) -> float:
        """Stated bound on ``|out - rsqrt(x)| / rsqrt(x)`` before the output rounding."""
        return 2.0 ** -(self.mant_bits + 2)


def sigma_layernorm_rsqrt(elements: int, bits: int, frac: int, k: float, eps: float,
                          max_value: float | None = None) -> SigmaRsqrt:
    """Layer norm's ``1/sqrt(k s + eps)`` of a row's sum of squares ``s`` (scale ``frac``), as SIGMA
    does it: ``k = 1/d`` and ``eps`` are folded into the rsqrt table. Output at scale ``frac``."""
    return SigmaRsqrt(elements, bits, frac, max_value=max_value, k=k, eps=eps)
