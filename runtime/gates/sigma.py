"""SIGMA's GELU (Gupta et al., PETS'24; EzPC ``GPU-MPC/fss/gpu_gelu.cu``): the baseline our GELU is measured against.

DESIGN §5.6 asks every compiled scalar gate to state and test its cost against the SIGMA
construction of the same function. :class:`SigmaGelu` is that construction with SIGMA's
widths and round structure, built from SIGMA's blocks (sigma_fss.py), as ONE gate so that
both run through the same runtime, key layout and round counter.

The construction
----------------
``GELU(x) = ReLU(x) - delta(|x|)`` with ``delta(t) = t Phi(-t)`` (even, decays fast), read
from a 256-entry table on a coarse grid. Ring n (50), scale ``frac`` (12), SIGMA's range
assumption: activations fit ``in_bits`` = bin bits (38 at n = 50: ``|x| < 2^(bin-1)``).
With ``s = frac - lut_frac`` (6), ``m = bin - s + 1`` (33), ``K = clip 2^lut_frac - 1`` (255),
``k = bitlen(K)`` (8):

1. ``x_t = TrWithSlack_s(x)`` on m bits = ``floor(x / 2^s)`` (:class:`SigmaTrunc`; two rounds).
   ``|x_t| < 2^(m-2)``, so its (m-1)-bit view (32 bits) is exact.
2. ONE (m-1)-bit DPF key (``alpha = r_t`` on the view, prefix parity), evaluated at four
   shifted points, gives both bits (DESIGN §5.4's public-threshold identity):
   ``d = [x_t >= 0]`` and ``ic = [-K <= x_t <= K]``; opened XOR-masked, 2 bits, one round.
3. Mux (one round, k bits): ``c = ic ? (d ? x_t : -x_t) : K`` = ``min(|x_t|, K)``: the dealer
   writes, for each of the 4 opened bit pairs, ``(c1, c0 - c1 r_t + r_c)`` mod 2^k (SIGMA's
   ``linFunc`` table); each party computes ``c1 u_t + c0'``.
4. ``D = LUT[c]`` (:class:`SigmaLut`, 8-bit 1-bit-DPF table of ``round(delta(i / 2^lut_frac) 2^frac)``):
   U and V opened in two rounds; the result stays shared.
5. ``relu = d x`` on the ORIGINAL n-bit x (Select's correlation with the opened d; shared).
6. ``y = relu - D + r_out``: one open of n bits.

Rounds: 2 + 1 + 1 + 2 + 1 = 7, as SIGMA. Key per element at n = 50, f = 12:
TrWithSlack 6-bit DPF 256 + 1 + 2 x 33 | compare 32-bit DPF 3,481 + 2 | mux 8 x 8 |
LUT 8-bit DPF 385 + 1 + 3 x 50 | relu 3 x 50 | r_out 50 = 4,606 bits = 575.75 bytes
(SIGMA's published 575 B). AES: 1 + 4 x 26 + 4 (SIGMA evaluates its key at 3 points).

The same gate computes GPT-2's tanh GELU (``fn="gelu_tanh"``, SIGMA runs its GELU protocol
there) and SiLU (``fn="silu"``: SIGMA clips at 16, a 10-bit mux and a 1024-entry table):
each has ``g(-x) = g(x) - x``, so ``ReLU - g`` is even and the construction is unchanged.

``in_scale`` > frac (the input still carries a product's scale, e.g. a matmul's 24 bits):
SIGMA truncates after every matmul, so the gate first runs :class:`SigmaTrFloor` by
``in_scale - frac`` (4 rounds) and returns its output multiplied back to ``in_scale`` (free).

Accuracy
--------
ReLU is exact, so the error is that of ``delta``: ``c/2^lut_frac`` is within ``2^-lut_frac`` of
|x| (``floor`` for x >= 0, ``ceil`` of |x| for x < 0), so inside the clip range
``|err| <= max|delta'| 2^-lut_frac + 2^-(frac+1)`` (``max|delta'| = delta'(0) = 1/2``): about
``2^-7`` absolute (32 ulps at f = 12), attained near 0. Beyond the clip the error is at most
``delta(K / 2^lut_frac)`` (1.4e-4 for clip 4). Outside SIGMA's range assumption the output
is garbage (the protocol cannot detect it).
"""
from __future__ import annotations

import math

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.dpf import DpfKey
from fusec.runtime.gates.base import EvalGen, FieldSpec, Gate, GateCost, Key, Open, check_width, prefixed, unprefixed
from fusec.runtime.gates.sigma_fss import (SigmaLut, SigmaTrFloor, SigmaTrunc, _lt_eval, _lt_fields, _lt_keygen,
                                           _share)
from fusec.runtime.rng import DealerRng

__all__ = ["SigmaGelu", "gelu_delta", "delta_table"]

U64 = np.uint64
ONE = U64(1)


def gelu_delta(t, fn: str = "gelu") -> np.ndarray:
    """``delta(t) = ReLU(t) - g(|t|)`` for g = GELU (``|t| Phi(-|t|)``), its tanh form or SiLU.

    Each of these g has ``g(-x) = g(x) - x``, so ``ReLU - g`` is even and ``g(x) = ReLU(x) - delta(|x|)``.
    """
    a = np.abs(np.asarray(t, dtype=np.float64))
    if fn == "gelu":
        return a * 0.5 * np.vectorize(math.erfc)(a / math.sqrt(2.0))
    if fn == "gelu_tanh":
        return a - 0.5 * a * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a ** 3)))
    if fn == "silu":
        return a - a / (1.0 + np.exp(-a))
    raise ParameterError(f"SIGMA GELU family: unknown function {fn!r}", "use gelu, gelu_tanh or silu")


def delta_table(lut_frac: int, frac: int, view_bits: int, fn: str = "gelu") -> np.ndarray:
    """``round(delta(i / 2^lut_frac) * 2^frac)`` for i in [0, 2^view_bits), int64."""
    i = np.arange(1 << view_bits, dtype=np.float64)
    return np.rint(gelu_delta(i / 2.0 ** lut_frac, fn) * 2.0 ** frac).astype(np.int64)


class SigmaGelu(Gate):
    """SIGMA's GELU on a signed n-bit wire with ``frac`` fractional bits (module docstring).

    Keys: ``pre.`` (TrFloor, only when ``in_scale > frac``), ``tr.`` (TrWithSlack), ``cmp.``
    (the packed comparison's DPF), ``rho`` (its two output masks), ``mux_a``/``mux_b``,
    ``lut.``, ``relu_rho``/``relu_r``/``relu_rho_r``, ``r_out``. ``in_bits`` is SIGMA's bin
    (default ``n - frac``: 38 at n = 50); ``split_uv=False`` opens the LUT's U and V in one
    round (6 rounds instead of SIGMA's 7).
    """

    kind = "sigma_gelu"

    def __init__(self, elements: int, bits: int = 50, frac: int = 12, lut_frac: int = 6, clip: float | None = None,
                 in_bits: int | None = None, in_scale: int | None = None, split_uv: bool = True, fn: str = "gelu"):
        super().__init__(elements)
        if fn not in ("gelu", "gelu_tanh", "silu"):
            raise ParameterError(f"SIGMA GELU family: unknown function {fn!r}", "use gelu, gelu_tanh or silu")
        self.fn = fn
        self.kind = "sigma_gelu" if fn == "gelu" else f"sigma_{fn}"  # type: ignore[misc]
        if clip is None:      # SIGMA: GELU clipped at 4 (8-bit table), SiLU at 16 (10-bit table)
            clip = 16.0 if fn == "silu" else 4.0
        n = self.bits = check_width(bits, "SIGMA GELU ring width")
        self.out_bits = n
        self.frac, self.lut_frac = int(frac), int(lut_frac)
        if not 0 <= self.lut_frac < self.frac:
            raise ParameterError(f"SIGMA GELU: lut_frac {lut_frac} must be in [0, frac={frac})",
                                 "the input is truncated by frac - lut_frac >= 1 bits before the LUT")
        self.in_scale = self.frac if in_scale is None else int(in_scale)
        if self.in_scale < self.frac:
            raise ParameterError(f"SIGMA GELU: input scale {self.in_scale} below frac {self.frac}")
        self.out_scale = self.in_scale
        self.shift = s = self.frac - self.lut_frac
        T = float(clip) * 2.0 ** self.lut_frac
        if T != int(T) or T < 2:
            raise ParameterError(f"SIGMA GELU: clip * 2^lut_frac = {T:g} must be an integer >= 2")
        self.clip = float(clip)
        self.K = int(T) - 1                                         # clip value (SIGMA: 2^8 - 1)
        k = self.view_bits = self.K.bit_length()
        if k > 10:
            raise ParameterError(f"SIGMA GELU: a {k}-bit LUT index (clip * 2^lut_frac = {int(T)})",
                                 "SIGMA's tables have 2^8 (GELU) or 2^10 (SiLU) entries: clip * 2^lut_frac <= 1024")
        self.in_bits = n - self.frac if in_bits is None else check_width(in_bits, "SIGMA GELU input width")
        m = self.mid_bits = self.in_bits - s + 1                    # SIGMA's bwXt (33)
        if self.in_bits > n - 1 or m - 1 < k + 2 or m > n:
            raise ParameterError(f"SIGMA GELU: input width {self.in_bits} does not fit the construction on {n} bits",
                                 "needs lut_frac + bitlen(clip) + 2 < in_bits - frac + lut_frac and in_bits < n")
        self.cmp_bits = m - 1
        N = self.elements
        self.table = delta_table(self.lut_frac, self.frac, k, fn)
        self.pre = self.in_scale - self.frac
        self._pre = SigmaTrFloor(N, n, self.pre) if self.pre else None
        self._tr = SigmaTrunc(N, n, s, out_bits=m, slack=True, scope="gelu")
        self._lut = SigmaLut(N, k, self.table, n, split_uv=split_uv, open_out=False, scope="gelu")
        self.split_uv = bool(split_uv)

    # ------------------------------------------------------------------ layout and cost
    def fields(self) -> list[FieldSpec]:
        N, n, k = self.elements, self.bits, self.view_bits
        out = [(f"pre.{a}", b, c) for a, b, c in self._pre.fields()] if self._pre else []
        out += [(f"tr.{a}", b, c) for a, b, c in self._tr.fields()]
        out += _lt_fields("cmp", self.cmp_bits, N) + [("rho", (N, 2), 1), ("mux_a", (N, 4), k), ("mux_b", (N, 4), k)]
        out += [(f"lut.{a}", b, c) for a, b, c in self._lut.fields()]
        return out + [("relu_rho", (N,), n), ("relu_r", (N,), n), ("relu_rho_r", (N,), n), ("r_out", (N,), n)]

    def cost(self) -> GateCost:
        n, k, c = self.bits, self.view_bits, self.cmp_bits
        cmp = GateCost(key_bits=DpfKey.key_bits(c) + 2, aes=4 * DpfKey.aes_per_eval(c), rounds=1, open_bits=2)
        mux = GateCost(key_bits=8 * k, aes=0, rounds=1, open_bits=k)
        out = GateCost(key_bits=4 * n, aes=0, rounds=1, open_bits=n)          # relu correlation + r_out
        total = self._tr.cost() + cmp + mux + self._lut.cost() + out
        return (self._pre.cost() + total) if self._pre else total

    # ------------------------------------------------------------------ keygen
    def _points(self, u):
        """The four points of the packed comparison on the (m-1)-bit view, from the public u_t."""
        c, K = self.cmp_bits, self.K
        H = 1 << (c - 1)
        up = (ring.lo(u, c) + U64(H)) & ring.mask(c)                 # u' = u + H' masks x' = x + H'
        pts = [(up - U64(H)) & ring.mask(c), up, (up - U64(H + K + 1)) & ring.mask(c),
               (up - U64(H - K)) & ring.mask(c)]
        return up, pts

    def keygen(self, rng: DealerRng, in_masks):
        n, m, k, c, N = self.bits, self.mid_bits, self.view_bits, self.cmp_bits, self.elements
        r = np.asarray(in_masks[0], np.uint64).reshape(-1) & ring.mask(n)
        if r.shape[0] != N:
            raise ParameterError(f"{self.kind}: input mask has {r.shape[0]} elements, the gate has {N}")
        keys: tuple[Key, Key] = ({}, {})

        def add(prefix, out):
            mask, k0, k1 = out
            keys[0].update(prefixed(prefix, k0))
            keys[1].update(prefixed(prefix, k1))
            return mask

        if self._pre:
            r = add("pre", self._pre.keygen(rng, [r]))
        r_t = add("tr", self._tr.keygen(rng, [r]))                          # x_t on m bits
        _lt_keygen(rng, keys, "cmp", ring.lo(r_t, c), c)                    # one key, four points
        rho = rng.bits((N, 2))                                              # masks of d, ic
        _share(rng, keys, "rho", rho, 1)
        r_c = rng.ring(N, k)                                                # mask of the clipped |x_t|
        e = np.arange(4, dtype=np.uint64)
        d = (e[None, :] & ONE) ^ rho[:, 0:1]                                # actual bits per opened index
        ic = (e[None, :] >> ONE) ^ rho[:, 1:2]
        c1 = np.where(ic == 1, np.where(d == 1, U64(1), ~U64(0)), U64(0))     # 0, +1 or -1
        c0 = np.where(ic == 1, U64(0), U64(self.K))
        _share(rng, keys, "mux_a", c1, k)
        _share(rng, keys, "mux_b", c0 - c1 * r_t[:, None] + r_c[:, None], k)
        self._lut.keygen_shares(rng, r_c, keys, prefix="lut.")
        rd = rho[:, 0]
        _share(rng, keys, "relu_rho", rd, n)
        _share(rng, keys, "relu_r", r, n)
        _share(rng, keys, "relu_rho_r", rd * r, n)
        r_out = rng.ring(N, n)
        _share(rng, keys, "r_out", r_out, n)
        if self.pre:
            r_out = (r_out << U64(self.pre)) & ring.mask(n)
        return r_out, keys[0], keys[1]

    # ------------------------------------------------------------------ eval
    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        xp = be.xp
        n, k, c = self.bits, self.view_bits, self.cmp_bits
        u = inputs[0].reshape(-1) & ring.mask(n)
        if u.shape[0] != self.elements:
            raise ParameterError(f"{self.kind}: input has {u.shape[0]} elements, the gate has {self.elements}")
        if self._pre:
            u = yield from self._pre.eval(party, unprefixed("pre", key), [u], be)
        # rounds 1-2: x_t = TrWithSlack(x)
        ut = yield from self._tr.eval(party, unprefixed("tr", key), [u], be)
        # round 3: d = [x_t >= 0], ic = [-K <= x_t <= K] from one DPF key at four points
        up, pts = self._points(ut)
        D = [_lt_eval(be, party, key, "cmp", c, p) for p in pts]
        rho = key["rho"] & ONE
        sd = D[0] ^ D[1] ^ rho[:, 0]
        sic = D[2] ^ D[3] ^ rho[:, 1]
        if party == 1:
            H, K = 1 << (c - 1), self.K
            sd = sd ^ ONE ^ (up < U64(H)).astype(np.uint64)
            sic = sic ^ (up < U64(H + K + 1)).astype(np.uint64) ^ (up < U64(H - K)).astype(np.uint64)
        dh, ich = yield [Open(sd, 1, scope="cmp"), Open(sic, 1, scope="cmp")]
        dh, ich = dh & ONE, ich & ONE
        # round 4: c = min(|x_t|, K) on k bits
        e = (ich << ONE) | dh
        sel = (e[:, None] == xp.arange(4, dtype=np.uint64)[None, :]).astype(np.uint64)
        a = (key["mux_a"] * sel).sum(axis=1, dtype=np.uint64)
        b = (key["mux_b"] * sel).sum(axis=1, dtype=np.uint64)
        uc = yield Open((a * ut + b) & ring.mask(k), k, scope="gelu")
        # rounds 5-6: D = LUT[c] (shared)
        lut = yield from self._lut.eval_shares(party, key, uc, be, prefix="lut.")
        # relu = d * x (shared), then round 7: y = relu - D
        sign = ONE - (dh << ONE)
        y = key["r_out"] - lut - dh * key["relu_r"] + sign * (u * key["relu_rho"] - key["relu_rho_r"])
        if party == 1:
            y = y + dh * u
        out = yield Open(y & ring.mask(n), n, scope="gelu")
        if self.pre:
            out = (out << U64(self.pre)) & ring.mask(n)
        return out

    def error_bound(self) -> float:
        """The stated absolute error bound (module docstring), from delta on a fine grid."""
        t = np.linspace(0.0, self.clip, 1 << 16)
        ddelta = np.abs(np.gradient(gelu_delta(t, self.fn), t))
        tail = float(gelu_delta(self.K / 2.0 ** self.lut_frac, self.fn))
        return float(ddelta.max()) * 2.0 ** -self.lut_frac + max(tail, 0.0) + 2.0 ** -(self.frac + 1)
