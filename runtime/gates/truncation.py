"""The truncation family (DESIGN §5.5): dropping the low ``s`` bits of a masked wire.

Input: a wire of ``n`` bits carrying ``u = x + r mod 2^n`` (``r`` the dealer's mask).
Everything below rests on two identities over the integers, for ``u, r`` in ``[0, 2^n)``
and ``x`` the unsigned representative of the secret:

* ``x = u - r + 2^n [u < r]``                                           (DESIGN §5.4)
* ``hi_s(x) = hi_s(u) - hi_s(r) - [lo_s(u) < lo_s(r)] + 2^(n-s) [u < r]``

(the second: split ``u - r`` into its high and low parts; the low difference borrows one
from the high part exactly when ``lo_s(u) < lo_s(r)``). The comparisons are of a *public*
value with a *secret* part of the mask, so each is one DCF with ``alpha`` = that mask part
and payload 1: the two parties' evaluations are additive shares of the comparison bit
directly (party 1's share already carries the DCF's negation). Everything else is local,
so every gate here is one open of its masked output per stage, packed to the output ring.

Payload widths: a comparison bit ``c`` that only ever appears as ``2^k * c`` in ``Z_{2^w}``
is needed only mod ``2^(w-k)``, so its DCF payload (and a dealer share of it) lives in
``w - k`` bits and is scaled locally. This shrinks keys without changing the result.

Gates (``n`` = input width, ``s`` = shift, ``1 <= s < n``):

==================  ======================  =======  ==========================================
gate                output                  rounds   key material (per element)
==================  ======================  =======  ==========================================
TruncateReduce      hi_s(x), n-s bits        1        s-bit DCF (payload n-s bits)
SignExtend          x signed, m -> n bits    1        m-bit DCF (payload n-m bits)
ArsExact            floor(x/2^s), n bits     2        TruncateReduce + SignExtend(n-s -> n)
ArsOneRound         floor(x/2^s), n bits     1        s-bit DCF (n) + n-bit DCF (payload s bits)
TruncateSlack       floor(x/2^s), n bits     1        s-bit DCF; ONLY for -2^(n-2) <= x < 2^(n-2)
TruncateLocal       floor(x/2^s) + {0,1}     0        none (approximate, n-s bits)
==================  ======================  =======  ==========================================

Every gate with key material draws a fresh uniform output mask in keygen; TruncateLocal
is a local map like the linear gates, its output mask ``hi_s(r)`` is derived.
"""
from __future__ import annotations

from fusec.runtime.xp import np

from fusec.errors import ParameterError
from fusec.runtime import dcf, ring
from fusec.runtime.dcf import DcfKey
from fusec.runtime.gates.base import (ZERO_COST, EvalGen, FieldSpec, Gate, GateCost, Key, Open,
                                      check_width, prefixed, unprefixed)
from fusec.runtime.rng import DealerRng

U64 = np.uint64
SCOPE = "rescale"

__all__ = ["TruncateReduce", "SignExtend", "ArsExact", "ArsOneRound", "TruncateSlack", "TruncateLocal"]


# ----------------------------------------------------------------------------- helpers
def _check_shift(kind: str, bits: int, shift, max_shift: int | None = None) -> int:
    """1 <= shift <= max_shift (default bits - 1)."""
    hi_ok = bits - 1 if max_shift is None else max_shift
    if not isinstance(shift, (int, np.integer)) or isinstance(shift, (bool, np.bool_)):
        raise ParameterError(f"{kind}: shift must be an integer, got {shift!r}")
    shift = int(shift)
    if shift < 1:
        raise ParameterError(f"{kind}: shift must be at least 1, got {shift}",
                             "a shift of 0 is the identity; drop the truncation")
    if shift > hi_ok:
        raise ParameterError(f"{kind}: shift {shift} is too large for a {bits}-bit ring "
                             f"(at most {hi_ok} here)",
                             "the shift must leave at least one bit of the value; use a wider ring")
    return shift


def _dcf_fields(prefix: str, n: int, w: int, elements: int) -> list[FieldSpec]:
    return [(f"{prefix}.{name}", shape, bits) for name, shape, bits in DcfKey.field_specs(n, 1, w, elements)]


def _dcf_keygen(rng: DealerRng, prefix: str, alpha: np.ndarray, n: int, w: int) -> tuple[Key, Key]:
    """Keys of ``[x < alpha]`` (payload 1 in Z_{2^w}) on an n-bit domain, prefixed."""
    ones = np.ones(alpha.shape[0], np.uint64)
    k0, k1 = dcf.keygen(rng, alpha, ones, n, w)
    return prefixed(prefix, k0.arrays()), prefixed(prefix, k1.arrays())


def _dcf_eval(be, party: int, key: Key, prefix: str, n: int, w: int, x):
    """This party's additive share (Z_{2^w}, shape (N,)) of ``[x < alpha]``."""
    k = DcfKey.from_arrays(n, 1, w, unprefixed(prefix, key))
    return be.dcf_eval(party, k, x)[:, 0]


def _in_mask(mask, bits: int, elements: int) -> np.ndarray:
    r = np.asarray(mask, np.uint64).reshape(-1) & ring.mask(bits)
    if r.shape[0] != elements:
        raise ParameterError(f"input mask has {r.shape[0]} elements, the gate has {elements}")
    return r


def _share(rng: DealerRng, value: np.ndarray, bits: int, name: str, keys: tuple[Key, Key]) -> None:
    s0, s1 = rng.share(value & ring.mask(bits), bits)
    keys[0][name], keys[1][name] = s0, s1


def _u(inputs, bits: int):
    return inputs[0].reshape(-1) & ring.mask(bits)


# ----------------------------------------------------------------------------- TR
class _Shift(Gate):
    """Common parameters of the shift gates: ring width, shift, output width."""

    reduces = False  # output on n - s bits (truncate-reduce style) instead of n bits

    def __init__(self, elements: int, bits: int, shift: int, max_shift: int | None = None):
        super().__init__(elements)
        self.bits = check_width(bits, f"{self.kind} ring width")
        kw = {} if max_shift is None else {"max_shift": max_shift(self.bits)}
        self.shift = _check_shift(self.kind, self.bits, shift, **kw)
        self.out_bits = self.bits - self.shift if self.reduces else self.bits


class TruncateReduce(_Shift):
    """SIGMA's TR: ``hi_s(x)`` of the unsigned n-bit ``x``, output in ``n - s`` bits.

    ``hi_s(x) = hi_s(u) - hi_s(r) - [lo_s(u) < lo_s(r)]  (mod 2^(n-s))``: the
    ``2^(n-s) [u < r]`` wrap term of the general identity vanishes mod ``2^(n-s)``, so
    one s-bit DCF (``alpha = lo_s(r)``, payload 1 in ``Z_{2^(n-s)}``) suffices. For signed
    x this is also ``floor(x / 2^s) mod 2^(n-s)`` (the logical and arithmetic shifts
    agree modulo ``2^(n-s)``); :class:`SignExtend` brings it back to n bits.

    Key: DCF ``dcf.*`` + shares of ``r_out - hi_s(r)`` (``offset``, n-s bits).
    Eval: ``offset - D(lo_s(u))`` (+ ``hi_s(u)`` for party 1), one open of n-s bits.
    """

    kind = "truncate_reduce"

    reduces = True

    def fields(self) -> list[FieldSpec]:
        N, s, w = self.elements, self.shift, self.out_bits
        return _dcf_fields("dcf", s, w, N) + [("offset", (N,), w)]

    def keygen(self, rng: DealerRng, in_masks):
        n, s, w, N = self.bits, self.shift, self.out_bits, self.elements
        r = _in_mask(in_masks[0], n, N)
        r_out = rng.ring(N, w)
        keys = _dcf_keygen(rng, "dcf", ring.lo(r, s), s, w)
        _share(rng, r_out - ring.hi(r, s), w, "offset", keys)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        n, s, w = self.bits, self.shift, self.out_bits
        u = _u(inputs, n)
        share = key["offset"] - _dcf_eval(be, party, key, "dcf", s, w, ring.lo(u, s))
        if party == 1:
            share = share + ring.hi(u, s)
        return (yield Open(share & ring.mask(w), w, scope=SCOPE))

    def cost(self) -> GateCost:
        s, w = self.shift, self.out_bits
        return GateCost(key_bits=DcfKey.key_bits(s, 1, w) + w, aes=DcfKey.aes_per_eval(s, 1, w),
                        rounds=1, open_bits=w)


# ----------------------------------------------------------------------------- SE
class SignExtend(Gate):
    """Signed m-bit ``x`` (``bits`` = m) to the same signed value in ``out_bits`` = n > m bits.

    Offset into the unsigned range: ``x + 2^(m-1)`` lies in ``[0, 2^m)`` and is masked by
    ``u' = u + 2^(m-1) mod 2^m``, so over the integers
    ``x + 2^(m-1) = u' - r + 2^m [u' < r]`` exactly, hence, in ``Z_{2^n}``,
    ``x = u' - r - 2^(m-1) + 2^m [u' < r]``. One m-bit DCF (``alpha = r``, payload 1);
    since the bit only appears times ``2^m`` its payload lives in ``n - m`` bits.

    Key: DCF ``dcf.*`` + shares of ``r_out - r`` (``offset``, n bits).
    Eval: ``offset + 2^m D(u')`` (+ ``u' - 2^(m-1)`` for party 1), one open of n bits.
    """

    kind = "sign_extend"

    def __init__(self, elements: int, bits: int, out_bits: int):
        super().__init__(elements)
        self.bits = check_width(bits, f"{self.kind} input ring width")
        self.out_bits = check_width(out_bits, f"{self.kind} output ring width")
        if self.out_bits <= self.bits:
            raise ParameterError(f"{self.kind}: output width {self.out_bits} must exceed the input "
                                 f"width {self.bits}",
                                 "narrowing a ring is a local reduction mod 2^n; equal widths need no gate")

    @property
    def _w(self) -> int:  # DCF payload width: the bit is only used times 2^m in Z_{2^n}
        return self.out_bits - self.bits

    def fields(self) -> list[FieldSpec]:
        N, m, n = self.elements, self.bits, self.out_bits
        return _dcf_fields("dcf", m, self._w, N) + [("offset", (N,), n)]

    def keygen(self, rng: DealerRng, in_masks):
        m, n, N = self.bits, self.out_bits, self.elements
        r = _in_mask(in_masks[0], m, N)
        r_out = rng.ring(N, n)
        keys = _dcf_keygen(rng, "dcf", r, m, self._w)
        _share(rng, r_out - r, n, "offset", keys)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        m, n = self.bits, self.out_bits
        u1 = (_u(inputs, m) + U64(1 << (m - 1))) & ring.mask(m)
        wrap = _dcf_eval(be, party, key, "dcf", m, self._w, u1)
        share = key["offset"] + (wrap << U64(m))
        if party == 1:
            share = share + u1 - U64(1 << (m - 1))
        return (yield Open(share & ring.mask(n), n, scope=SCOPE))

    def cost(self) -> GateCost:
        m, n, w = self.bits, self.out_bits, self._w
        return GateCost(key_bits=DcfKey.key_bits(m, 1, w) + n, aes=DcfKey.aes_per_eval(m, 1, w),
                        rounds=1, open_bits=n)


# ----------------------------------------------------------------------------- ARS, exact, 2 rounds
class ArsExact(_Shift):
    """Exact arithmetic shift right, ``floor(x / 2^s)`` for signed n-bit x, width kept n.

    SIGMA's TrFloor chain: :class:`TruncateReduce` gives ``floor(x/2^s) mod 2^(n-s)``
    (round 1), and since ``floor(x/2^s)`` lies in ``[-2^(n-1-s), 2^(n-1-s))`` it is a valid
    signed (n-s)-bit value, so :class:`SignExtend` from n-s to n bits recovers it exactly
    (round 2). One gate, two opens in sequence; keys nested as ``tr.*`` and ``se.*``.
    """

    kind = "ars_exact"

    def __init__(self, elements: int, bits: int, shift: int):
        super().__init__(elements, bits, shift)
        self._tr = TruncateReduce(elements, self.bits, self.shift)
        self._se = SignExtend(elements, self.bits - self.shift, self.bits)

    def fields(self) -> list[FieldSpec]:
        return ([(f"tr.{k}", sh, b) for k, sh, b in self._tr.fields()]
                + [(f"se.{k}", sh, b) for k, sh, b in self._se.fields()])

    def keygen(self, rng: DealerRng, in_masks):
        mid, t0, t1 = self._tr.keygen(rng, in_masks)
        r_out, e0, e1 = self._se.keygen(rng, [mid])
        return r_out, {**prefixed("tr", t0), **prefixed("se", e0)}, {**prefixed("tr", t1), **prefixed("se", e1)}

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        mid = yield from self._tr.eval(party, unprefixed("tr", key), inputs, be)
        return (yield from self._se.eval(party, unprefixed("se", key), [mid], be))

    def cost(self) -> GateCost:
        return self._tr.cost() + self._se.cost()


# ----------------------------------------------------------------------------- ARS, one round
class ArsOneRound(_Shift):
    """Exact ``floor(x / 2^s)`` for signed n-bit x, width kept n, in ONE round.

    Offset to unsigned: ``x' = x + 2^(n-1)`` in ``[0, 2^n)``, masked by
    ``u' = u + 2^(n-1) mod 2^n``. Then ``x' = u' - r + 2^n [u' < r]`` and

        ``hi_s(x') = hi_s(u') - hi_s(r) - [lo_s(u') < lo_s(r)] + 2^(n-s) [u' < r]``

    exactly, and ``floor(x/2^s) = hi_s(x') - 2^(n-1-s)`` (``2^s`` divides ``2^(n-1)``).
    Both comparisons are DCFs evaluated locally on public values, so nothing is opened
    before the output: an s-bit DCF (``alpha = lo_s(r)``, payload 1 in ``Z_{2^n}``) and an
    n-bit DCF (``alpha = r``; its bit appears only times ``2^(n-s)``, so its payload
    lives in s bits). Costs more key than :class:`ArsExact` (an n-bit tree instead of an
    (n-s)-bit one) for one round fewer.

    Key: ``lo.*`` (s-bit DCF), ``wrap.*`` (n-bit DCF), shares of ``r_out - hi_s(r)``.
    """

    kind = "ars_one_round"


    def fields(self) -> list[FieldSpec]:
        N, n, s = self.elements, self.bits, self.shift
        return _dcf_fields("lo", s, n, N) + _dcf_fields("wrap", n, s, N) + [("offset", (N,), n)]

    def keygen(self, rng: DealerRng, in_masks):
        n, s, N = self.bits, self.shift, self.elements
        r = _in_mask(in_masks[0], n, N)
        r_out = rng.ring(N, n)
        lo0, lo1 = _dcf_keygen(rng, "lo", ring.lo(r, s), s, n)
        wr0, wr1 = _dcf_keygen(rng, "wrap", r, n, s)
        keys = ({**lo0, **wr0}, {**lo1, **wr1})
        _share(rng, r_out - ring.hi(r, s), n, "offset", keys)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        n, s = self.bits, self.shift
        u1 = (_u(inputs, n) + U64(1 << (n - 1))) & ring.mask(n)
        borrow = _dcf_eval(be, party, key, "lo", s, n, ring.lo(u1, s))
        wrap = _dcf_eval(be, party, key, "wrap", n, s, u1)
        share = key["offset"] - borrow + (wrap << U64(n - s))
        if party == 1:
            share = share + ring.hi(u1, s) - U64(1 << (n - 1 - s))
        return (yield Open(share & ring.mask(n), n, scope=SCOPE))

    def cost(self) -> GateCost:
        n, s = self.bits, self.shift
        return GateCost(key_bits=DcfKey.key_bits(s, 1, n) + DcfKey.key_bits(n, 1, s) + n,
                        aes=DcfKey.aes_per_eval(s, 1, n) + DcfKey.aes_per_eval(n, 1, s),
                        rounds=1, open_bits=n)


# ----------------------------------------------------------------------------- TR with slack
class TruncateSlack(_Shift):
    """``floor(x / 2^s)`` in n bits, one round, one s-bit DCF — WITH A RANGE PRECONDITION.

    !!! VALID ONLY FOR ``-2^(n-2) <= x < 2^(n-2)`` (one bit of headroom below the sign).
    !!! Outside that range the result is WRONG (off by ``+-2^(n-s)``, i.e. garbage),
    !!! silently: nothing in the protocol can detect it. The compiler must only emit this
    !!! gate where a range analysis proves the bound. Also requires ``s <= n - 2``.

    Why: with ``x' = x + 2^(n-2)`` in ``[0, 2^(n-1))`` and ``u' = u + 2^(n-2) mod 2^n``,
    the wrap bit ``[u' < r]`` (= ``[x' + r >= 2^n]``) needs no comparison: if MSB(r) = 0
    then ``x' + r < 2^n``; if MSB(r) = 1 then ``x' + r`` is in ``[2^(n-1), 3 * 2^(n-1))``
    and it wrapped iff ``u'`` fell below ``2^(n-1)``. So ``[u' < r] = MSB(r) (1 - MSB(u'))``,
    linear in a dealer share of MSB(r) with a public coefficient. Then

        ``floor(x/2^s) = hi_s(u') - hi_s(r) - [lo_s(u') < lo_s(r)]``
        ``               + 2^(n-s) MSB(r) (1 - MSB(u')) - 2^(n-2-s)``

    with one s-bit DCF (``alpha = lo_s(r)``, payload 1 in ``Z_{2^n}``). The MSB(r) share is
    only used times ``2^(n-s)``, so it is dealt in ``Z_{2^s}``.

    Key: ``dcf.*``, ``offset`` (shares of ``r_out - hi_s(r)``, n bits), ``msb_r`` (s bits).
    """

    kind = "truncate_slack"
    elementwise_keys = True

    def __init__(self, elements: int, bits: int, shift: int):
        if check_width(bits, f"{self.kind} ring width") < 3:
            raise ParameterError(f"{self.kind}: needs a ring of at least 3 bits, got {bits}",
                                 "the slack gate reserves one bit of headroom and needs s <= n-2")
        super().__init__(elements, bits, shift, max_shift=lambda n: n - 2)

    def fields(self) -> list[FieldSpec]:
        N, n, s = self.elements, self.bits, self.shift
        return _dcf_fields("dcf", s, n, N) + [("offset", (N,), n), ("msb_r", (N,), s)]

    def keygen(self, rng: DealerRng, in_masks):
        n, s, N = self.bits, self.shift, self.elements
        r = _in_mask(in_masks[0], n, N)
        r_out = rng.ring(N, n)
        keys = _dcf_keygen(rng, "dcf", ring.lo(r, s), s, n)
        _share(rng, r_out - ring.hi(r, s), n, "offset", keys)
        _share(rng, ring.msb(r, n), s, "msb_r", keys)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        n, s = self.bits, self.shift
        u1 = (_u(inputs, n) + U64(1 << (n - 2))) & ring.mask(n)
        borrow = _dcf_eval(be, party, key, "dcf", s, n, ring.lo(u1, s))
        not_msb_u = U64(1) - ring.msb(u1, n)
        share = key["offset"] - borrow + ((key["msb_r"] * not_msb_u) << U64(n - s))
        if party == 1:
            share = share + ring.hi(u1, s) - U64(1 << (n - 2 - s))
        return (yield Open(share & ring.mask(n), n, scope=SCOPE))

    def cost(self) -> GateCost:
        n, s = self.bits, self.shift
        return GateCost(key_bits=DcfKey.key_bits(s, 1, n) + n + s, aes=DcfKey.aes_per_eval(s, 1, n),
                        rounds=1, open_bits=n)


# ----------------------------------------------------------------------------- local, approximate
class TruncateLocal(_Shift):
    """APPROXIMATE truncation with no key and no round: output ``hi_s(u)`` in n-s bits.

    The output mask is ``hi_s(r)`` (derived, like a linear gate's; uniform in n-s bits
    when r is uniform). From the identity above,
    ``hi_s(u) - hi_s(r) = hi_s(x) + [lo_s(u) < lo_s(r)]  (mod 2^(n-s))``, so the result is

        ``floor(x / 2^s)``  or  ``floor(x / 2^s) + 1``   (mod 2^(n-s))

    — error in {0, +1} in the last place, never more: the mod-2^(n-s) reduction makes the
    ``2^(n-s) [u < r]`` wrap term vanish, so there is no large error for any x, and it holds
    for signed x too (``floor`` of the signed value, read mod ``2^(n-s)``). The carry is
    ``[lo_s(x) + lo_s(r) >= 2^s]``, which over a uniform mask is 1 with probability
    ``lo_s(x) / 2^s``: stochastic rounding, unbiased in expectation. The output is on the
    (n-s)-bit ring; follow with :class:`SignExtend` if n bits are needed.
    """

    kind = "truncate_local"

    reduces = True

    def fields(self) -> list[FieldSpec]:
        return []

    def keygen(self, rng: DealerRng, in_masks):
        r = _in_mask(in_masks[0], self.bits, self.elements)
        return ring.hi(r, self.shift), {}, {}

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        return ring.hi(_u(inputs, self.bits), self.shift)
        yield  # pragma: no cover  (makes this a generator)

    def cost(self) -> GateCost:
        return ZERO_COST


# ----------------------------------------------------------------------------- free narrow truncation + slack widening
def widen_share(party: int, u, m: int, msb_q, offset, w: int):
    """This party's share, in ``Z_{2^w}``, of ``y + r_out`` for the m-bit wire ``u = y + q``
    with ``-2^(m-2) <= y < 2^(m-2)`` (the slack), given shares of ``MSB(q)`` (in
    ``Z_{2^(w-m)}``, used times ``2^m``) and of ``r_out - q`` (``offset``, w bits).

    With ``y' = y + 2^(m-2)`` in ``[0, 2^(m-1))`` and ``u' = u + 2^(m-2) mod 2^m``, the wrap
    ``[y' + q >= 2^m]`` is ``MSB(q) (1 - MSB(u'))`` (as in :class:`TruncateSlack`), so over the
    integers ``y = u' - q + 2^m MSB(q) (1 - MSB(u')) - 2^(m-2)``: linear in dealer shares,
    no comparison. Used by :class:`TruncateNarrow` and by gates that fold it into a round
    they open anyway.
    """
    u1 = (u + U64(1 << (m - 2))) & ring.mask(m)
    share = offset + ((msb_q * (U64(1) - ring.msb(u1, m))) << U64(m))
    if party == 1:
        share = share + u1 - U64(1 << (m - 2))
    return share & ring.mask(w)


class TruncateNarrow(Gate):
    """``floor(x / 2^s) + c`` (``c`` in {0, 1}) of an n-bit wire whose value is PROVEN to fit
    ``k`` signed bits with two bits of slack (``|x| < 2^(k-2) - 2^s``), back on ``out_bits``;
    one round, no DCF.

    1. Narrow (free, exact): ``x = (u - r) mod 2^k`` since x fits k bits; both sides reduce.
    2. Truncate (free): ``hi_s(u mod 2^k) - hi_s(r mod 2^k) = floor(x / 2^s) + c (mod 2^m)``,
       ``m = k - s``, ``c = [lo_s(u) < lo_s(r)]`` in {0, 1} (DESIGN §4): the mask of the
       truncated wire is ``q = hi_s(r mod 2^k)``. ``c`` is 1 with probability
       ``lo_s(x) / 2^s`` over the mask: stochastic rounding, at most one ulp, unbiased.
    3. Widen (one round): :func:`widen_share` to ``out_bits`` under a fresh mask; the slack
       makes the wrap bit a product of ``MSB(q)`` with a public bit.

    Key per element: ``out_bits`` (offset) + ``out_bits - m`` (the MSB share) bits, versus
    an s-bit DCF (~300 B at s = 12) for :class:`TruncateSlack`. The precondition is the
    compiler's to prove (``passes/ranges.py``); outside it the output is garbage.
    """

    kind = "truncate_narrow"
    elementwise_keys = True

    def __init__(self, elements: int, bits: int, view_bits: int, shift: int, out_bits: int | None = None):
        super().__init__(elements)
        self.bits = check_width(bits, f"{self.kind} input ring width")
        self.view_bits = check_width(view_bits, f"{self.kind} proven width")
        if self.view_bits > self.bits:
            raise ParameterError(f"{self.kind}: proven width {view_bits} exceeds the ring's {bits} bits")
        self.shift = _check_shift(self.kind, self.view_bits, shift, max_shift=self.view_bits - 3)
        self.mid_bits = self.view_bits - self.shift
        self.out_bits = check_width(self.bits if out_bits is None else out_bits, f"{self.kind} output width")
        if self.out_bits <= self.mid_bits:
            raise ParameterError(f"{self.kind}: output width {self.out_bits} must exceed {self.mid_bits}")

    def fields(self) -> list[FieldSpec]:
        N, w, m = self.elements, self.out_bits, self.mid_bits
        return [("offset", (N,), w), ("msb_q", (N,), w - m)]

    def keygen(self, rng: DealerRng, in_masks):
        N, k, s, m, w = self.elements, self.view_bits, self.shift, self.mid_bits, self.out_bits
        r = _in_mask(in_masks[0], self.bits, N)
        q = ring.hi(ring.lo(r, k), s)
        r_out = rng.ring(N, w)
        keys: tuple[Key, Key] = ({}, {})
        _share(rng, r_out - q, w, "offset", keys)
        _share(rng, ring.msb(q, m), w - m, "msb_q", keys)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        k, s, m, w = self.view_bits, self.shift, self.mid_bits, self.out_bits
        fused = getattr(be, "truncate_narrow", None)    # the GPU's: this whole step in one kernel
        share = fused(inputs[0], key["msb_q"], key["offset"], self.bits, k, s, m, w, party) if fused else None
        if share is None:
            v = ring.hi(ring.lo(_u(inputs, self.bits), k), s)
            share = widen_share(party, v, m, key["msb_q"], key["offset"], w)
        return (yield Open(share, w, scope=SCOPE))

    def cost(self) -> GateCost:
        w, m = self.out_bits, self.mid_bits
        return GateCost(key_bits=w + (w - m), aes=0, rounds=1, open_bits=w)
