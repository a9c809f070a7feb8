"""SIGMA's FSS building blocks, as SIGMA builds them: the ``--gates sigma`` baseline.

SIGMA (Gupta et al., PETS'24; EzPC ``GPU-MPC/fss``) builds every nonlinearity from a few
blocks whose *shape* differs from this library's own gates (compare.py, truncation.py),
and the baseline is only honest if it pays what SIGMA pays. The differences:

* **Comparisons are 1-bit DPF keys** evaluated by prefix parity (``[x < alpha]`` as XOR
  shares, key ``129 m - 647`` bits on m bits), never arithmetic DCFs with per-level value
  correction words. An arithmetic consequence of a comparison costs one more round: the
  masked bit is opened, then a 2-entry table picks the correction (SIGMA's ``gpuTrHelper``).
* **Truncations** (:class:`SigmaTrunc`, :class:`SigmaSignExtend`, :class:`SigmaTrFloor`) are
  therefore two rounds each: open ``[lo_s(u) < lo_s(r)] XOR rho`` (1 bit), then the output.
  TrFloor (exact arithmetic shift) = TruncateReduce + SignExtend = four rounds; SIGMA runs it
  after every matmul.
* **LUTs** (:class:`SigmaLut`) use a 1-bit DPF expanded over the whole k-bit domain: the two
  parties' signed sums ``v_b = (-1)^b sum_j t_b(j) T[u - j]`` add up to ``(1 - 2U) T[x]`` for a
  secret bit U that each party holds an XOR share of (from the parity of its ones); U and V
  are opened under masks (SIGMA opens them in two rounds) and ``T[x] = (1 - 2U)(V - r_V)`` is
  a local linear map of the dealer's shares of ``rho_U``, ``r_V`` and ``rho_U r_V``. Key
  ``129 k - 647 + 1 + 3w`` bits (+ w for the output mask) instead of an arithmetic DPF.
* **Widths**: comparisons run on the narrowest view SIGMA's range assumption allows
  (activations fit ``bin`` = 38 bits at n = 50): the max tree compares 39-bit differences
  (:class:`SigmaMaxTree`), nExp's clip compares at 40 bits, GELU's at 32.

Every gate here states its cost in ``cost()``; tests measure the same numbers from the
key arrays, the AES counter and the two-party round log.
"""
from __future__ import annotations

from fusec.runtime.xp import const, frozen, np

from fusec.errors import ParameterError
from fusec.runtime import dpf, ring
from fusec.runtime.dpf import DpfKey, leaf_bits
from fusec.runtime.gates.base import (EvalGen, FieldSpec, Gate, GateCost, Key, KeyAcc, Open, check_width,
                                      prefixed, unprefixed)
from fusec.runtime.gates.compare import DReLU, MaxTree, Select
from fusec.runtime.rng import DealerRng

__all__ = ["SigmaTrunc", "SigmaSignExtend", "SigmaTrFloor", "SigmaLut", "SigmaReLU", "SigmaMaxTree",
           "dpf_full_domain_aes"]

U64 = np.uint64
ONE = U64(1)


# ----------------------------------------------------------------------------- helpers
def dpf_full_domain_aes(k: int) -> int:
    """AES blocks of one full-domain evaluation of a 1-bit k-bit DPF key (dpf.eval_full)."""
    d = k - leaf_bits(k)
    return (1 << (d + 1)) - 2 + (1 << d)


def _lt_fields(prefix: str, n: int, N: int) -> list[FieldSpec]:
    return [(f"{prefix}.{name}", shape, bits) for name, shape, bits in DpfKey.field_specs(n, N)]


def _lt_keygen(rng: DealerRng, keys: tuple[Key, Key], prefix: str, alpha, n: int) -> None:
    """Keys whose prefix-parity evaluation gives XOR shares of ``[x < alpha]`` on n bits."""
    k0, k1 = dpf.lt_keygen(rng, np.asarray(alpha, np.uint64) & ring.mask(n), n)
    keys[0].update(prefixed(prefix, k0.arrays()))
    keys[1].update(prefixed(prefix, k1.arrays()))


def _lt_eval(be, party: int, key: Key, prefix: str, n: int, x):
    """This party's XOR share (0/1, uint64) of ``[x < alpha]`` at the public (N,) points x."""
    return be.dpf_lt_eval(party, DpfKey.from_arrays(n, unprefixed(prefix, key)), x & ring.mask(n)) & ONE


def _share(rng: DealerRng, keys: tuple[Key, Key], name: str, value, bits: int) -> None:
    s0, s1 = rng.share(np.asarray(value, np.uint64) & ring.mask(bits), bits)
    keys[0][name], keys[1][name] = s0, s1


def _flat_mask(gate: Gate, mask, bits: int) -> np.ndarray:
    r = np.asarray(mask, np.uint64).reshape(-1) & ring.mask(bits)
    if r.shape[0] != gate.elements:
        raise ParameterError(f"{gate.kind}: input mask has {r.shape[0]} elements, the gate has {gate.elements}")
    return r


def _flat_u(gate: Gate, u, bits: int):
    u = u.reshape(-1)
    if u.shape[0] != gate.elements:
        raise ParameterError(f"{gate.kind}: input has {u.shape[0]} elements, the gate has {gate.elements}")
    return u & ring.mask(bits)


def _pick2(corr, z):
    """Row-wise ``corr[i, z_i]`` for a (N, 2) table and bits z (arithmetic, mod 2^64)."""
    return corr[:, 0] + z * (corr[:, 1] - corr[:, 0])


# ----------------------------------------------------------------------------- truncation
class SigmaTrunc(Gate):
    """SIGMA's TruncateReduce / TrWithSlack: ``floor(x / 2^s)`` on ``out_bits`` bits, two rounds.

    ``slack=False`` (TruncateReduce): ``hi_s(x) mod 2^out_bits`` for the unsigned n-bit x
    (``out_bits <= n - s``; for signed x this is ``floor(x/2^s)`` mod 2^out_bits), exact.
    ``slack=True`` (TrWithSlack): ``floor(x / 2^s)`` of the signed x read in ``out_bits``
    bits, VALID ONLY FOR ``-2^(n-2) <= x < 2^(n-2)`` (SIGMA's range assumption); needs s <= n-2.

    With ``u' = u`` (reduce) or ``u + 2^(n-2)`` (slack), ``c = [lo_s(u') < lo_s(r)]``:

        floor(x/2^s) = hi_s(u') - hi_s(r) - c  [+ 2^(n-s) MSB(r) (1 - MSB(u')) - 2^(n-2-s)]   (slack)

    Round 1 opens ``c XOR rho`` (1 bit; an s-bit DPF key by prefix parity, as SIGMA's DCF);
    round 2 each party adds its share of ``corr[c XOR rho]`` (``corr[j] = r_out - hi_s(r) - (j
    XOR rho)``) and party 1 the public part, and the output is opened on ``out_bits`` bits.
    The slack term's share is kept only where it survives mod ``2^out_bits`` (n - s < out_bits).

    Key: ``lt.*`` (s-bit DPF), ``rho`` (1 bit), ``corr`` (2 x out_bits), [``msb`` (out_bits)].
    """

    kind = "truncate_sigma"

    def __init__(self, elements: int, bits: int, shift: int, out_bits: int | None = None, slack: bool = False,
                 scope: str = "rescale"):
        super().__init__(elements)
        n = self.bits = check_width(bits, "SIGMA truncation ring width")
        s = int(shift)
        self.slack = bool(slack)
        if not 1 <= s <= (n - 2 if self.slack else n - 1):
            raise ParameterError(f"SIGMA truncation: shift {shift} out of range for a {n}-bit ring"
                                 + (" with slack (s <= n - 2)" if self.slack else ""))
        self.shift = s
        w = (n if self.slack else n - s) if out_bits is None else check_width(out_bits, "SIGMA truncation output")
        if not self.slack and w > n - s:
            raise ParameterError(f"SIGMA TruncateReduce: output {w} bits > n - s = {n - s}",
                                 "use slack=True (range assumption) or SigmaTrFloor (exact)")
        if w > n:
            raise ParameterError(f"SIGMA truncation: output {w} bits wider than the input ring {n}")
        self.out_bits = w
        self.msb_term = self.slack and (n - s) < w
        self.scope = scope

    def fields(self) -> list[FieldSpec]:
        N, w = self.elements, self.out_bits
        out = _lt_fields("lt", self.shift, N) + [("rho", (N,), 1), ("corr", (N, 2), w)]
        return out + ([("msb", (N,), w)] if self.msb_term else [])

    def cost(self) -> GateCost:
        s, w = self.shift, self.out_bits
        return GateCost(key_bits=DpfKey.key_bits(s) + 1 + 2 * w + (w if self.msb_term else 0),
                        aes=DpfKey.aes_per_eval(s), rounds=2, open_bits=1 + w)

    def keygen(self, rng: DealerRng, in_masks):
        n, s, w, N = self.bits, self.shift, self.out_bits, self.elements
        r = _flat_mask(self, in_masks[0], n)
        keys: tuple[Key, Key] = ({}, {})
        _lt_keygen(rng, keys, "lt", ring.lo(r, s), s)
        rho = rng.bits(N)
        _share(rng, keys, "rho", rho, 1)
        r_out = rng.ring(N, w)
        base = r_out - ring.hi(r, s)
        corr = np.stack([base - (rho ^ U64(j)) for j in (0, 1)], axis=1)
        _share(rng, keys, "corr", corr, w)
        if self.msb_term:
            _share(rng, keys, "msb", ring.msb(r, n) << U64(n - s), w)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        n, s, w = self.bits, self.shift, self.out_bits
        u = _flat_u(self, inputs[0], n)
        if self.slack:
            u = (u + U64(1 << (n - 2))) & ring.mask(n)
        c = _lt_eval(be, party, key, "lt", s, ring.lo(u, s)) ^ (key["rho"] & ONE)
        z = yield Open(c, 1, scope=self.scope)
        y = _pick2(key["corr"], z & ONE)
        if self.msb_term:
            y = y + key["msb"] * (ONE - ring.msb(u, n))
        if party == 1:
            y = y + ring.hi(u, s)
            if self.slack:
                y = y - U64(1 << (n - 2 - s))
        return (yield Open(y & ring.mask(w), w, scope=self.scope))


class SigmaSignExtend(Gate):
    """SIGMA's SignExtend: the signed m-bit x (``bits`` = m) as the same value on n bits, two rounds.

    ``u' = u + 2^(m-1) mod 2^m`` masks ``x + 2^(m-1)`` in [0, 2^m), so
    ``x = u' - r - 2^(m-1) + 2^m [u' < r]``: round 1 opens ``[u' < r] XOR rho`` (an m-bit DPF
    key), round 2 the output with ``corr[j] = r_out - r + 2^m (j XOR rho)``.
    Key: ``lt.*`` (m-bit DPF), ``rho``, ``corr`` (2 x n bits).
    """

    kind = "truncate_sigma_sext"

    def __init__(self, elements: int, bits: int, out_bits: int, scope: str = "rescale"):
        super().__init__(elements)
        self.bits = check_width(bits, "SIGMA sign-extension input width")
        self.out_bits = check_width(out_bits, "SIGMA sign-extension output width")
        if self.out_bits <= self.bits:
            raise ParameterError(f"SIGMA sign extension: output {self.out_bits} bits must exceed the input {self.bits}")
        self.scope = scope

    def fields(self) -> list[FieldSpec]:
        N = self.elements
        return _lt_fields("lt", self.bits, N) + [("rho", (N,), 1), ("corr", (N, 2), self.out_bits)]

    def cost(self) -> GateCost:
        m, n = self.bits, self.out_bits
        return GateCost(key_bits=DpfKey.key_bits(m) + 1 + 2 * n, aes=DpfKey.aes_per_eval(m), rounds=2,
                        open_bits=1 + n)

    def keygen(self, rng: DealerRng, in_masks):
        m, n, N = self.bits, self.out_bits, self.elements
        r = _flat_mask(self, in_masks[0], m)
        keys: tuple[Key, Key] = ({}, {})
        _lt_keygen(rng, keys, "lt", r, m)
        rho = rng.bits(N)
        _share(rng, keys, "rho", rho, 1)
        r_out = rng.ring(N, n)
        corr = np.stack([r_out - r + ((rho ^ U64(j)) << U64(m)) for j in (0, 1)], axis=1)
        _share(rng, keys, "corr", corr, n)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        m, n = self.bits, self.out_bits
        u1 = (_flat_u(self, inputs[0], m) + U64(1 << (m - 1))) & ring.mask(m)
        c = _lt_eval(be, party, key, "lt", m, u1) ^ (key["rho"] & ONE)
        z = yield Open(c, 1, scope=self.scope)
        y = _pick2(key["corr"], z & ONE)
        if party == 1:
            y = y + u1 - U64(1 << (m - 1))
        return (yield Open(y & ring.mask(n), n, scope=self.scope))


class SigmaTrFloor(Gate):
    """SIGMA's TrFloor: exact ``floor(x / 2^s)`` of a signed n-bit x, kept on n bits; four rounds.

    :class:`SigmaTrunc` (reduce, n -> n - s bits) then :class:`SigmaSignExtend` (n - s -> n):
    an s-bit and an (n - s)-bit DPF key (12 and 38 bits after a matmul at n = 50, f = 12).
    No range assumption. Keys under ``tr.`` and ``se.``.
    """

    kind = "truncate_sigma_floor"

    def __init__(self, elements: int, bits: int, shift: int, scope: str = "rescale"):
        super().__init__(elements)
        n = self.bits = check_width(bits, "SIGMA TrFloor ring width")
        self.out_bits = n
        self.shift = int(shift)
        self._tr = SigmaTrunc(elements, n, self.shift, scope=scope)
        self._se = SigmaSignExtend(elements, n - self.shift, n, scope=scope)

    def fields(self) -> list[FieldSpec]:
        return ([(f"tr.{a}", b, c) for a, b, c in self._tr.fields()]
                + [(f"se.{a}", b, c) for a, b, c in self._se.fields()])

    def cost(self) -> GateCost:
        return self._tr.cost() + self._se.cost()

    def keygen(self, rng: DealerRng, in_masks):
        acc = KeyAcc()
        mid = acc.add("tr", self._tr.keygen(rng, in_masks))
        r_out = acc.add("se", self._se.keygen(rng, [mid]))
        return r_out, acc.keys[0], acc.keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        mid = yield from self._tr.eval(party, unprefixed("tr", key), inputs, be)
        return (yield from self._se.eval(party, unprefixed("se", key), [mid], be))


# ----------------------------------------------------------------------------- LUT
class SigmaLut(Gate):
    """SIGMA's DPF lookup table: ``T[x mod 2^k]`` on ``out_bits`` = w bits.

    The dealer gives a 1-bit DPF key for ``alpha = r mod 2^k``; full-domain evaluation gives
    XOR shares ``t_b(j)`` of ``[j == alpha]``. Each party forms

        v_b = (-1)^b sum_j t_b(j) T[(u - j) mod 2^k]      (so v_0 + v_1 = (1 - 2U) T[x], U = t_1(alpha))
        U_b = bit1(a) XOR bit0(a), a = (1 - |t_0|) mod 4    (party 0),   U_1 = bit1(|t_1| mod 4)

    (``|t_b|`` = number of ones; ``|t_0| - |t_1| = 1 - 2U``, whose bit 1 these shares carry).
    Opened: ``U XOR rho`` (1 bit) and ``V = v + r_V`` (w bits) -- in two rounds, as SIGMA's
    ``gpuDpfLUT`` reconstructs them one after the other (``split_uv=False``: one round). Then
    ``T[x] = (1 - 2 U^)(V - r_V - 2 rho V + 2 rho r_V)`` is local in the dealer's shares of
    ``rho`` (as a ring element), ``r_V`` and ``rho r_V``; with ``open_out`` a share of a fresh
    ``r_out`` is added and the result opened (SIGMA's select round).

    Key: ``dpf.*`` (``129 k - 647`` bits), ``rho_u`` (1), ``rho_a``, ``r_v``, ``rho_rv``
    (w each) [+ ``r_out`` (w)]. :meth:`eval_shares` is the building block for gates that
    combine the lookup with other shares before one open (SIGMA's GELU).
    """

    kind = "sigma_lut"

    def __init__(self, elements: int, view_bits: int, table, out_bits: int, split_uv: bool = True,
                 open_out: bool = True, scope: str = "lookup"):
        super().__init__(elements)
        k = self.view_bits = self.bits = check_width(view_bits, "SIGMA LUT view width")
        if k > 16:
            raise ParameterError(f"SIGMA LUT: a {k}-bit view", "full-domain evaluation costs 2^k per element")
        w = self.out_bits = check_width(out_bits, "SIGMA LUT output width")
        table = np.asarray(table)
        if table.ndim != 1 or table.size != 1 << k or table.dtype.kind not in "iub":
            raise ParameterError(f"SIGMA LUT: the table must be 2^{k} integers, got shape {table.shape}, "
                                 f"dtype {table.dtype}")
        self.table = frozen(ring.from_signed(np.asarray(table, np.int64), w))
        self.split_uv, self.open_out, self.scope = bool(split_uv), bool(open_out), scope

    def fields(self) -> list[FieldSpec]:
        N, w = self.elements, self.out_bits
        out = _lt_fields("dpf", self.view_bits, N) + [("rho_u", (N,), 1), ("rho_a", (N,), w), ("r_v", (N,), w),
                                                       ("rho_rv", (N,), w)]
        return out + ([("r_out", (N,), w)] if self.open_out else [])

    def cost(self) -> GateCost:
        k, w = self.view_bits, self.out_bits
        return GateCost(key_bits=DpfKey.key_bits(k) + 1 + 3 * w + (w if self.open_out else 0),
                        aes=dpf_full_domain_aes(k), rounds=(2 if self.split_uv else 1) + int(self.open_out),
                        open_bits=1 + w + (w if self.open_out else 0))

    def keygen_shares(self, rng: DealerRng, r_idx, keys: tuple[Key, Key], prefix: str = "") -> None:
        """The lookup's key material (no output mask) for index mask ``r_idx``, into ``keys``."""
        k, w, N = self.view_bits, self.out_bits, self.elements
        r = _flat_mask(self, r_idx, k)
        k0, k1 = dpf.keygen(rng, r, k)
        keys[0].update(prefixed(f"{prefix}dpf", k0.arrays()))
        keys[1].update(prefixed(f"{prefix}dpf", k1.arrays()))
        rho = rng.bits(N)
        r_v = rng.ring(N, w)
        _share(rng, keys, f"{prefix}rho_u", rho, 1)
        _share(rng, keys, f"{prefix}rho_a", rho, w)
        _share(rng, keys, f"{prefix}r_v", r_v, w)
        _share(rng, keys, f"{prefix}rho_rv", rho * r_v, w)

    def keygen(self, rng: DealerRng, in_masks):
        keys: tuple[Key, Key] = ({}, {})
        self.keygen_shares(rng, in_masks[0], keys)
        r_out = rng.ring(self.elements, self.out_bits)
        if self.open_out:
            _share(rng, keys, "r_out", r_out, self.out_bits)
        return r_out, keys[0], keys[1]

    def eval_shares(self, party: int, key: Key, u, be, prefix: str = "") -> EvalGen:
        """Generator: opens U and V, returns this party's additive share of ``T[x]`` (w bits)."""
        xp = be.xp
        k, w = self.view_bits, self.out_bits
        uk = _flat_u(self, u, k)
        t = be.dpf_eval_full(party, DpfKey.from_arrays(k, unprefixed(f"{prefix}dpf", key))) & ONE   # (N, 2^k)
        j = xp.arange(1 << k, dtype=np.uint64)
        idx = (uk[:, None] - j[None, :]) & ring.mask(k)
        v = (t * const(self.table)[idx]).sum(axis=1, dtype=np.uint64)
        cnt = t.sum(axis=1, dtype=np.uint64)
        if party == 0:
            a = (ONE - cnt) & U64(3)
            ub = ((a >> ONE) ^ a) & ONE
        else:
            v = U64(0) - v
            ub = (cnt >> ONE) & ONE
        su = ub ^ (key[f"{prefix}rho_u"] & ONE)
        sv = (v + key[f"{prefix}r_v"]) & ring.mask(w)
        if self.split_uv:
            uh = yield Open(su, 1, scope=self.scope)
            vh = yield Open(sv, w, scope=self.scope)
        else:
            uh, vh = yield [Open(su, 1, scope=self.scope), Open(sv, w, scope=self.scope)]
        sign = ONE - ((uh & ONE) << ONE)                                   # 1 - 2U^ mod 2^64
        share = key[f"{prefix}rho_rv"] * U64(2) - key[f"{prefix}r_v"] - (vh * key[f"{prefix}rho_a"]) * U64(2)
        if party == 1:
            share = share + vh
        return (sign * share) & ring.mask(w)

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        share = yield from self.eval_shares(party, key, inputs[0], be)
        if not self.open_out:
            raise ParameterError("SIGMA LUT: a gate with open_out=False is a building block",
                                 "call eval_shares() from the enclosing gate")
        share = (share + key["r_out"]) & ring.mask(self.out_bits)
        return (yield Open(share, self.out_bits, scope=self.scope))


# ----------------------------------------------------------------------------- ReLU and max
class SigmaReLU(Gate):
    """SIGMA's ReLU: DReLU of the ``cmp_bits``-bit view (a (cmp_bits-1)-bit DPF key) + Select on ``bits``.

    Correct when the input fits a signed ``cmp_bits``-bit value (SIGMA's range assumption:
    max-tree differences fit 39 bits); the select keeps the full ``bits``-bit value.
    Two rounds. Keys under ``drelu.`` and ``select.``.
    """

    kind = "sigma_relu"

    def __init__(self, elements: int, bits: int, cmp_bits: int | None = None, cmp_scope: str = "cmp",
                 select_scope: str = "other"):
        super().__init__(elements)
        self.bits = self.out_bits = check_width(bits, "SIGMA ReLU ring width")
        self.cmp_bits = self.bits if cmp_bits is None else check_width(cmp_bits, "SIGMA ReLU compare width")
        if self.cmp_bits > self.bits:
            raise ParameterError(f"SIGMA ReLU: compare width {self.cmp_bits} > ring width {self.bits}")
        self.drelu = DReLU(elements, self.cmp_bits, scope=cmp_scope)
        self.select = Select(elements, self.bits, scope=select_scope)

    def fields(self) -> list[FieldSpec]:
        return ([(f"drelu.{a}", b, c) for a, b, c in self.drelu.fields()]
                + [(f"select.{a}", b, c) for a, b, c in self.select.fields()])

    def cost(self) -> GateCost:
        return self.drelu.cost() + self.select.cost()

    def keygen(self, rng: DealerRng, in_masks):
        r = _flat_mask(self, in_masks[0], self.bits)
        acc = KeyAcc()
        rho = acc.add("drelu", self.drelu.keygen(rng, [ring.lo(r, self.cmp_bits)]))
        r_out = acc.add("select", self.select.keygen(rng, [rho, r]))
        return r_out, acc.keys[0], acc.keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        u = _flat_u(self, inputs[0], self.bits)
        d = yield from self.drelu.eval(party, unprefixed("drelu", key), [ring.lo(u, self.cmp_bits)], be)
        return (yield from self.select.eval(party, unprefixed("select", key), [d, u], be))


class SigmaMaxTree(MaxTree):
    """SIGMA's softmax max: the log-depth tree of :class:`MaxTree` with :class:`SigmaReLU` levels.

    Differences ``a - b`` are compared on their ``cmp_bits``-bit view (SIGMA: 39 bits, a
    38-bit DPF key) and selected on the full ring, so wires stay ``bits`` wide. Exact when
    every difference fits a signed ``cmp_bits``-bit value.
    """

    kind = "sigma_max_tree"

    def __init__(self, shape, bits: int, axis: int = -1, cmp_bits: int | None = None):
        super().__init__(shape, bits, axis)
        self.cmp_bits = self.bits if cmp_bits is None else int(cmp_bits)
        self.levels = [SigmaReLU(g.elements, self.bits, self.cmp_bits) for g in self.levels]

    def cost(self) -> GateCost:
        if not self.levels:
            return super().cost()
        one = SigmaReLU(1, self.bits, self.cmp_bits).cost()
        k1 = self.k - 1
        return GateCost(key_bits=k1 * one.key_bits, aes=k1 * one.aes, rounds=len(self.levels) * one.rounds,
                        open_bits=k1 * one.open_bits)
