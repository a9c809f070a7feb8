"""Comparison gates: DReLU, Select, two-round ReLU, max tree, DPF LUT, interval containment.

All follow DESIGN §5.1: the dealer knows the input mask ``r`` (and ``rho`` for XOR-masked
bits), the servers see ``u = x + r mod 2^n``, and each gate opens its masked output
``y^ = g(x) + r_out`` (``g(x) XOR rho_out`` for a bit) once per round. Party 1 adds the
public terms; party 1's arithmetic FSS shares come out negated from the schemes
themselves. Every key carries a fresh output mask per element.

Costs are per element and per party (:class:`GateCost`); ``cost()`` is computed from the
same formulas the key layouts use, and tests check it against the key arrays and the AES
counter.
"""
from __future__ import annotations

from fusec.runtime.xp import const, frozen, np

from fusec.errors import ParameterError
from fusec.runtime import dcf, dpf, dpf_arith, ring
from fusec.runtime.dcf import DcfKey
from fusec.runtime.dpf import DpfKey
from fusec.runtime.dpf_arith import DpfArithKey
from fusec.runtime.gates.base import (ZERO_COST, EvalGen, Gate, GateCost, Key, Open, check_width,
                                      prefixed, unprefixed)
from fusec.runtime.rng import DealerRng

ONE = np.uint64(1)


def _prefixed_specs(prefix: str, specs) -> list:
    return [(f"{prefix}.{name}", shape, bits) for name, shape, bits in specs]


def _flat(gate: Gate, v, what: str = "input"):
    """The public (or mask) values of one wire as a flat vector of ``gate.elements``."""
    size = int(np.prod(np.shape(v), dtype=np.int64))
    if size != gate.elements:
        raise ParameterError(f"{gate.kind}: {what} has {size} elements, the gate was built for {gate.elements}",
                             "build the gate with the wire's element count")
    return v.reshape(-1)


def _shares(rng: DealerRng, bits: int, keys: tuple[dict, dict], **values: np.ndarray) -> None:
    """Additive shares in Z_{2^bits} (XOR shares for bits=1) of each value, into both keys."""
    for name, val in values.items():
        s0, s1 = rng.share(np.asarray(val, np.uint64) & ring.mask(bits), bits)
        keys[0][name], keys[1][name] = s0, s1


# ------------------------------------------------------------------------------ DReLU
class DReLU(Gate):
    """``[x >= 0]`` (two's complement) as an XOR-masked bit, one round, 1 bit opened.

    SIGMA form (DESIGN §5.4): with ``x = u - r`` the MSB of x is
    ``MSB(u) XOR MSB(r) XOR borrow`` where the borrow out of the low ``n-1`` bits is
    ``[lo_{n-1}(u) < lo_{n-1}(r)]``; hence

        DReLU(x) = 1 XOR MSB(u) XOR MSB(r) XOR [lo_{n-1}(u) < lo_{n-1}(r)].

    The dealer gives one (n-1)-bit DPF less-than key for ``alpha = lo_{n-1}(r)``
    (prefix parity, :func:`dpf.lt_keygen`) and XOR shares of ``c = MSB(r) XOR rho``;
    party 1 adds the public ``1 XOR MSB(u)``. For n = 1 there are no low bits: the output
    is ``1 XOR u XOR r`` and the key is only the share of ``c``.
    """

    kind = "drelu"

    def __init__(self, elements: int, bits: int, scope: str = "cmp"):
        super().__init__(elements)
        self.bits = check_width(bits, "DReLU ring width")
        self.out_bits = 1
        self.scope = scope

    def fields(self):
        N, n = self.elements, self.bits
        lt = _prefixed_specs("lt", DpfKey.field_specs(n - 1, N)) if n > 1 else []
        return lt + [("c", (N,), 1)]

    def keygen(self, rng: DealerRng, in_masks):
        n = self.bits
        r = _flat(self, np.asarray(in_masks[0], np.uint64), "input mask") & ring.mask(n)
        rho = rng.bits(self.elements)
        keys: tuple[dict, dict] = ({}, {})
        if n > 1:
            k0, k1 = dpf.lt_keygen(rng, ring.lo(r, n - 1), n - 1)
            keys[0].update(prefixed("lt", k0.arrays()))
            keys[1].update(prefixed("lt", k1.arrays()))
        _shares(rng, 1, keys, c=ring.msb(r, n) ^ rho)
        return rho, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        n = self.bits
        u = _flat(self, inputs[0]) & ring.mask(n)
        share = key["c"] & ONE
        if n > 1:
            lt = DpfKey.from_arrays(n - 1, unprefixed("lt", key))
            share = share ^ be.dpf_lt_eval(party, lt, ring.lo(u, n - 1))
        if party == 1:
            share = share ^ ONE ^ ring.msb(u, n)
        return (yield Open(share & ONE, 1, scope=self.scope))

    def cost(self) -> GateCost:
        n = self.bits
        if n == 1:
            return GateCost(key_bits=1, aes=0, rounds=1, open_bits=1)
        return GateCost(key_bits=DpfKey.key_bits(n - 1) + 1, aes=DpfKey.aes_per_eval(n - 1), rounds=1, open_bits=1)


# ----------------------------------------------------------------------------- Select
def select_share(party: int, c, u, rho, r, rho_r, r_out, bits: int):
    """This party's share of ``b * (u - r) + r_out`` for ``b = c XOR rho`` with c public and
    shares of rho, r, ``rho * r`` and r_out (see :class:`Select`); also the sign ReLU's last step."""
    share = r_out - c * r + (ONE - (c << ONE)) * (u * rho - rho_r)     # 1 - 2c mod 2^64
    if party == 1:
        share = share + c * u
    return share & ring.mask(bits)


class Select(Gate):
    """``b * x`` for a secret bit b (XOR-masked wire) and a secret x (n-bit wire); one round.

    Inputs: ``c = b XOR rho`` (1 bit) and ``u = x + r``. Over the integers
    ``b = c + rho - 2 c rho = c + (1 - 2c) rho``, so with public c and u

        b * x = (c + (1-2c) rho)(u - r) = c*u - c*[r] + (1-2c) * (u*[rho] - [rho*r]),

    linear in the dealer's shares of ``rho``, ``r`` and ``rho*r`` (in Z_{2^n}); party 1 adds
    the public ``c*u``; adding a share of the fresh ``r_out`` and opening gives
    ``b*x + r_out``. Key: 4 ring elements, no AES, n bits opened.
    """

    kind = "select"
    inputs = 2

    def __init__(self, elements: int, bits: int, scope: str = "other"):
        super().__init__(elements)
        self.bits = check_width(bits, "select ring width")
        self.out_bits = self.bits
        self.scope = scope

    def fields(self):
        N, n = self.elements, self.bits
        return [("rho", (N,), n), ("r", (N,), n), ("rho_r", (N,), n), ("r_out", (N,), n)]

    def keygen(self, rng: DealerRng, in_masks):
        n = self.bits
        rho = _flat(self, np.asarray(in_masks[0], np.uint64), "bit mask") & ONE
        r = _flat(self, np.asarray(in_masks[1], np.uint64), "value mask") & ring.mask(n)
        r_out = rng.ring(self.elements, n)
        keys: tuple[dict, dict] = ({}, {})
        _shares(rng, n, keys, rho=rho, r=r, rho_r=rho * r, r_out=r_out)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        c = _flat(self, inputs[0], "bit input") & ONE
        u = _flat(self, inputs[1], "value input") & ring.mask(self.bits)
        share = select_share(party, c, u, key["rho"], key["r"], key["rho_r"], key["r_out"], self.bits)
        return (yield Open(share, self.bits, scope=self.scope))

    def cost(self) -> GateCost:
        return GateCost(key_bits=4 * self.bits, aes=0, rounds=1, open_bits=self.bits)


# ------------------------------------------------------------------------------ ReLU
class ReLU2(Gate):
    """``max(x, 0)`` in two rounds: ``Select(DReLU(x), x)``.

    Round 1 opens the XOR-masked ``d^ = [x >= 0] XOR rho`` (:class:`DReLU`), round 2 the
    masked product ``d * x + r_out`` (:class:`Select` with bit mask rho and value mask r).
    Keys are the two gates' keys under the prefixes ``drelu.`` and ``select.``.
    """

    kind = "relu2"

    def __init__(self, elements: int, bits: int, cmp_scope: str = "cmp", select_scope: str = "other"):
        super().__init__(elements)
        self.bits = check_width(bits, "ReLU ring width")
        self.out_bits = self.bits
        self.drelu = DReLU(elements, bits, scope=cmp_scope)
        self.select = Select(elements, bits, scope=select_scope)

    def fields(self):
        return _prefixed_specs("drelu", self.drelu.fields()) + _prefixed_specs("select", self.select.fields())

    def keygen(self, rng: DealerRng, in_masks):
        r = _flat(self, np.asarray(in_masks[0], np.uint64), "input mask")
        rho, d0, d1 = self.drelu.keygen(rng, [r])
        r_out, s0, s1 = self.select.keygen(rng, [rho, r])
        return r_out, {**prefixed("drelu", d0), **prefixed("select", s0)}, {**prefixed("drelu", d1), **prefixed("select", s1)}

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        u = _flat(self, inputs[0])
        d = yield from self.drelu.eval(party, unprefixed("drelu", key), [u], be)
        return (yield from self.select.eval(party, unprefixed("select", key), [d, u], be))

    def cost(self) -> GateCost:
        return self.drelu.cost() + self.select.cost()


# --------------------------------------------------------------------------- MaxTree
class MaxTree(Gate):
    """Maximum along ``axis`` of a tensor of shape ``shape`` by a log-depth tree.

    ``max(a, b) = ReLU(a - b) + b``: the subtraction and the addition are linear, so their
    masks are derived from the input masks for free (``r_d = r_a - r_b``,
    ``r_max = r_relu + r_b``); only the ReLU costs keys and rounds. Each level pairs
    neighbours (0,1), (2,3), ... of every row; an odd last element is carried to the next
    level unchanged. All pairs of one level go through one batched :class:`ReLU2`, so a
    row of k values takes ``ceil(log2 k)`` levels, i.e. ``2 * ceil(log2 k)`` rounds, and
    ``k - 1`` ReLUs in total. Keys are nested per level: ``l0.``, ``l1.``, ...

    ``elements`` counts *outputs* (the shape without ``axis``); per-element costs are those
    of ``k - 1`` ReLUs. Exact when every ``a - b`` fits the signed range, i.e. for inputs
    in ``[-2^(n-2), 2^(n-2))``; outside it the differences wrap mod 2^n.
    """

    kind = "max_tree"

    def __init__(self, shape, bits: int, axis: int = -1, relu: str = "2round"):
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise ParameterError(f"max tree: shape must be a tuple of ints, got {shape!r}") from None
        if not shape or any(s <= 0 for s in shape):
            raise ParameterError(f"max tree: shape {shape} must have at least one axis and no empty axis",
                                 "a max over nothing is undefined; drop the node")
        if not -len(shape) <= int(axis) < len(shape):
            raise ParameterError(f"max tree: axis {axis} out of range for shape {shape}")
        if relu != "2round":
            raise ParameterError(f"max tree: unknown ReLU variant {relu!r}",
                                 "only '2round' (DReLU + select) is available in this gate")
        self.shape = shape
        self.axis = int(axis) % len(shape)
        self.k = shape[self.axis]
        self.out_shape = shape[:self.axis] + shape[self.axis + 1:]
        super().__init__(int(np.prod(self.out_shape, dtype=np.int64)))
        self.bits = check_width(bits, "max ring width")
        self.out_bits = self.bits
        self.relu = relu
        self.levels: list[ReLU2] = []
        count = self.k
        while count > 1:
            pairs = count // 2
            self.levels.append(ReLU2(self.elements * pairs, self.bits))
            count -= pairs

    def fields(self):
        out = []
        for i, g in enumerate(self.levels):
            out += _prefixed_specs(f"l{i}", g.fields())
        return out

    def _rows(self, v):
        """(outs, k) view with the reduced axis last."""
        return np.moveaxis(v.reshape(self.shape), self.axis, -1).reshape(self.elements, self.k)

    def _input_rows(self, u, be):
        """The public input as (outs, k) rows on the backend (the reduced axis last)."""
        size = int(np.prod(np.shape(u), dtype=np.int64))
        if size != self.elements * self.k:
            raise ParameterError(f"max tree: input has {size} elements, shape {self.shape} expected")
        return be.xp.moveaxis(u.reshape(self.shape), self.axis, -1).reshape(self.elements, self.k)

    def levels_keygen(self, rng: DealerRng, r, bits: int, keys: tuple[dict, dict]):
        """Keys of every level for mask rows ``r`` on a ``bits``-bit ring; the max's mask rows."""
        m = ring.mask(bits)
        for i, g in enumerate(self.levels):
            p = r.shape[1] // 2
            ra, rb = r[:, 0:2 * p:2], r[:, 1:2 * p:2]
            r_relu, k0, k1 = g.keygen(rng, [((ra - rb) & m).reshape(-1)])
            keys[0].update(prefixed(f"l{i}", k0))
            keys[1].update(prefixed(f"l{i}", k1))
            r = np.concatenate([(r_relu.reshape(self.elements, p) + rb) & m, r[:, 2 * p:]], axis=1)
        return r

    def levels_eval(self, party: int, key: Key, u, bits: int, be) -> EvalGen:
        """Every level on public rows ``u`` (``bits``-bit ring): ``max(a, b) = ReLU(a - b) + b``."""
        xp, m = be.xp, ring.mask(bits)
        for i, g in enumerate(self.levels):
            p = u.shape[1] // 2
            ua, ub = u[:, 0:2 * p:2], u[:, 1:2 * p:2]
            y = yield from g.eval(party, unprefixed(f"l{i}", key), [((ua - ub) & m).reshape(-1)], be)
            u = xp.concatenate([(y.reshape(self.elements, p) + ub) & m, u[:, 2 * p:]], axis=1)
        return u

    def keygen(self, rng: DealerRng, in_masks):
        r = self._rows(np.asarray(in_masks[0], np.uint64) & ring.mask(self.bits))
        keys: tuple[dict, dict] = ({}, {})
        r = self.levels_keygen(rng, r, self.bits, keys)
        return r.reshape(self.out_shape), keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        u = self._input_rows(inputs[0], be) & ring.mask(self.bits)
        u = yield from self.levels_eval(party, key, u, self.bits, be)
        return u.reshape(self.out_shape)

    def cost(self) -> GateCost:
        if not self.levels:
            return ZERO_COST
        one = ReLU2(1, self.bits).cost()
        k1 = self.k - 1
        return GateCost(key_bits=k1 * one.key_bits, aes=k1 * one.aes, rounds=len(self.levels) * one.rounds,
                        open_bits=k1 * one.open_bits)


# ---------------------------------------------------------------------------- LUT
class LutDpf(Gate):
    """SIGMA-style lookup table on the k-bit view of the input: ``y = T[x mod 2^k]``.

    With ``u_k = u mod 2^k`` and ``r_k = r mod 2^k``, ``x mod 2^k = u_k - r_k mod 2^k``.
    The dealer gives an arithmetic DPF (dpf_arith.py) for ``beta * [j == r_k]`` with
    ``beta = 1`` over ``Z_{2^out}``; full-domain evaluation gives one-hot shares
    ``e_b(j)`` with ``e_0(j) + e_1(j) = [j == r_k]``, so

        y_b = sum_j e_b(j) * T[(u_k - j) mod 2^k] + [r_out]_b

    sums to ``T[u_k - r_k] + r_out = T[x mod 2^k] + r_out``; one open of ``out`` bits.
    The result is ``T[x mod 2^k]`` for every x: the table sees x's low k bits, so it is
    the function the caller wants when x fits in k bits (unsigned, or two's complement
    with T indexed by ``x mod 2^k``). Key: ``128 + 129k + 2*out`` bits; AES: a full-domain
    expansion, ``3 * 2^k - 2`` blocks. Eval holds ``(elements, 2^k)`` arrays (one-hot shares,
    index matrix), so callers batch large tensors into gates of bounded size.
    """

    kind = "lut_dpf"

    def __init__(self, elements: int, bits: int, table, table_bits_out: int, view_bits: int | None = None,
                 scope: str = "lookup"):
        super().__init__(elements)
        self.bits = check_width(bits, "LUT input ring width")
        self.out_bits = check_width(table_bits_out, "LUT output width")
        table = np.asarray(table)
        if table.ndim != 1 or table.size == 0:
            raise ParameterError(f"LUT table must be a non-empty 1-D array, got shape {table.shape}")
        if table.dtype.kind not in "iub":
            raise ParameterError(f"LUT table entries must be integers (fixed-point encoded), got dtype {table.dtype}",
                                 "encode real values with ring.encode_fixed first")
        if view_bits is None:
            view_bits = int(table.size).bit_length() - 1
        k = int(view_bits)
        if not 1 <= k <= min(self.bits, dpf_arith.MAX_FULL_DOMAIN_BITS):
            raise ParameterError(f"LUT view width {k} must be between 1 and min(input bits {self.bits}, "
                                 f"{dpf_arith.MAX_FULL_DOMAIN_BITS})",
                                 "the view is the input's low k bits; full-domain DPF evaluation costs 2^k per element")
        if table.size != 1 << k:
            raise ParameterError(f"LUT table has {table.size} entries, a {k}-bit view needs exactly {1 << k}")
        self.view_bits = k
        self.table = frozen(ring.from_signed(table, self.out_bits))
        self.scope = scope

    def fields(self):
        N = self.elements
        return _prefixed_specs("dpf", DpfArithKey.field_specs(self.view_bits, self.out_bits, N)) + \
            [("r_out", (N,), self.out_bits)]

    def keygen(self, rng: DealerRng, in_masks):
        r = _flat(self, np.asarray(in_masks[0], np.uint64), "input mask")
        k0, k1 = dpf_arith.keygen(rng, ring.lo(r, self.view_bits), 1, self.view_bits, self.out_bits)
        keys: tuple[dict, dict] = (prefixed("dpf", k0.arrays()), prefixed("dpf", k1.arrays()))
        r_out = rng.ring(self.elements, self.out_bits)
        _shares(rng, self.out_bits, keys, r_out=r_out)
        return r_out, keys[0], keys[1]

    def _eval_full(self, party: int, key: Key, be):
        dk = DpfArithKey.from_arrays(self.view_bits, self.out_bits, unprefixed("dpf", key))
        return be.dpf_arith_eval_full(party, dk)

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        xp = be.xp
        k = self.view_bits
        uk = ring.lo(_flat(self, inputs[0]), k)
        e = self._eval_full(party, key, be)                        # (N, 2^k) one-hot shares
        j = xp.arange(1 << k, dtype=np.uint64)
        idx = (uk[:, None] - j[None, :]) & ring.mask(k)          # (N, 2^k): u_k - j mod 2^k
        table = const(self.table)
        share = (e * table[idx]).sum(axis=1, dtype=np.uint64) + key["r_out"]
        return (yield Open(share & ring.mask(self.out_bits), self.out_bits, scope=self.scope))

    def cost(self) -> GateCost:
        k, w = self.view_bits, self.out_bits
        return GateCost(key_bits=DpfArithKey.key_bits(k, w) + w, aes=DpfArithKey.aes_full_domain(k, w),
                        rounds=1, open_bits=w)


# ------------------------------------------------------------------ interval containment
class IntervalContainment(Gate):
    """Bits ``[p_i <= x <= q_i]`` for public intervals, one XOR-masked bit each, one round.

    Public-threshold identity (DESIGN §5.4), for x, c in unsigned order and
    ``D(z) = [z < r]`` the DCF with ``alpha = r``, ``beta = 1`` in Z_2:

        [x < c] = D(u - c) XOR D(u) XOR [u < c]        (valid for 0 <= c <= 2^n).

    An interval is ``[x < q+1] XOR [x < p]`` (p <= q); the two ``D(u)`` terms cancel, so

        [p <= x <= q] = D(u - q - 1) XOR D(u - p) XOR [u < q+1] XOR [u < p],

    i.e. ONE DCF key evaluated at 2 shifted points per interval; party 1 adds the public
    ``[u < .]`` terms and each party adds its share of the output mask bit. With
    ``signed=True`` (default) the bounds are two's-complement values in
    ``[-2^(n-1), 2^(n-1))``: ``x + H`` orders signed values as unsigned ones and
    ``x + H = (u + H) - r``, so the same key is used with ``u + H`` and ``c + H``.
    Output shape ``(elements, intervals)``.
    """

    kind = "interval_containment"

    def __init__(self, elements: int, bits: int, bounds, signed: bool = True, scope: str = "cmp"):
        super().__init__(elements)
        n = self.bits = check_width(bits, "interval-containment ring width")
        self.out_bits = 1
        self.signed = bool(signed)
        self.scope = scope
        try:
            bounds = [(int(p), int(q)) for p, q in bounds]
        except (TypeError, ValueError):
            raise ParameterError(f"interval containment: bounds must be a list of (p, q) integer pairs, got {bounds!r}") from None
        if not bounds:
            raise ParameterError("interval containment needs at least one interval")
        lo_lim, hi_lim = (-(1 << (n - 1)), (1 << (n - 1)) - 1) if self.signed else (0, (1 << n) - 1)
        for p, q in bounds:
            if not lo_lim <= p <= q <= hi_lim:
                raise ParameterError(
                    f"interval containment: interval [{p}, {q}] is empty or outside "
                    f"[{lo_lim}, {hi_lim}] ({'signed' if self.signed else 'unsigned'} {n}-bit values)",
                    "give p <= q within the ring's range; split wrap-around intervals in two")
        self.bounds = tuple(bounds)
        self.intervals = len(bounds)
        off = (1 << (n - 1)) if self.signed else 0
        # unsigned thresholds: c_lo = p', c_hi = q' + 1 (may be 2^n: then [. < c_hi] = 1)
        self._c_lo = frozen(np.array([p + off for p, _ in bounds], dtype=np.uint64))
        c_hi = [q + off + 1 for _, q in bounds]
        self._c_hi_full = frozen(np.array([c == 1 << n for c in c_hi], dtype=bool))
        self._c_hi = frozen(np.array([c & ((1 << n) - 1) for c in c_hi], dtype=np.uint64))

    def fields(self):
        N = self.elements
        return _prefixed_specs("dcf", DcfKey.field_specs(self.bits, 1, 1, N)) + [("c", (N, self.intervals), 1)]

    def keygen(self, rng: DealerRng, in_masks):
        r = _flat(self, np.asarray(in_masks[0], np.uint64), "input mask") & ring.mask(self.bits)
        k0, k1 = dcf.keygen(rng, r, np.ones((self.elements, 1), np.uint64), self.bits, 1)
        keys: tuple[dict, dict] = (prefixed("dcf", k0.arrays()), prefixed("dcf", k1.arrays()))
        rho = rng.bits((self.elements, self.intervals))
        _shares(rng, 1, keys, c=rho)
        return rho, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        xp = be.xp
        n, N, M = self.bits, self.elements, self.intervals
        m = ring.mask(n)
        u = _flat(self, inputs[0]) & m
        if self.signed:
            u = (u + np.uint64(1 << (n - 1))) & m
        c_lo, c_hi = const(self._c_lo), const(self._c_hi)
        # points (N, 2M): [u - c_lo_0, u - c_hi_0, u - c_lo_1, ...]
        pts = xp.stack([(u[:, None] - c_lo[None, :]) & m, (u[:, None] - c_hi[None, :]) & m], axis=2).reshape(N, 2 * M)
        dk = DcfKey.from_arrays(n, 1, 1, unprefixed("dcf", key))
        d = be.dcf_eval(party, dk, pts).reshape(N, M, 2)
        share = (d[..., 0] ^ d[..., 1] ^ key["c"]) & ONE
        if party == 1:
            below_hi = (u[:, None] < c_hi[None, :]) | const(self._c_hi_full)[None, :]
            below_lo = u[:, None] < c_lo[None, :]
            share = share ^ (below_hi ^ below_lo).astype(np.uint64)
        return (yield Open(share, 1, scope=self.scope))

    def cost(self) -> GateCost:
        n, M = self.bits, self.intervals
        return GateCost(key_bits=DcfKey.key_bits(n, 1, 1) + M, aes=2 * M * DcfKey.aes_per_eval(n, 1, 1),
                        rounds=1, open_bits=M)


# ------------------------------------------------------------------- max tree, one round a level
class MaxTreeNarrow(Gate):
    """Max along ``axis`` with one round per tree level (two with the packed lookup), on the proven width.

    The input (an n-bit wire) is PROVEN to fit ``view_bits`` = k signed bits with two bits
    of slack, and so do all differences of its entries; the whole tree then runs on the
    k-bit view ``u mod 2^k`` (free and exact). Each level is ``max(a, b) = ReLU(a - b) + b``
    with the ReLU from the sign bit: ``shifted``, one (k-1)-bit DCF at one point and one open
    (:class:`~fusec.runtime.gates.sign_relu.SignReLU`); ``packed``, :class:`ReLU2` (DReLU's
    (k-1)-bit DPF at one point, then the select: two rounds); the
    maximum is then widened back to n bits under a fresh mask in one round
    (:func:`~fusec.runtime.gates.truncation.widen_share`, no DCF). ``ceil(log2 k_axis) + 1``
    rounds instead of :class:`MaxTree`'s ``2 ceil(log2 k_axis)``; keys nested per level.
    """

    kind = "max_tree_narrow"

    LOOKUPS = ("shifted", "packed")

    def __init__(self, shape, bits: int, axis: int, view_bits: int, pre_shift: int = 0, lookup: str = "shifted",
                 widen: bool = True, packed_levels: int | None = None):
        """``pre_shift`` = s: the input carries x at s more fractional bits than the max is
        wanted at; the tree then runs on the free truncation ``hi_s(u mod 2^view_bits)``
        (``floor(x / 2^s) + {0, 1}`` per element, DESIGN §4) of ``view_bits - s`` bits, which
        costs no round, and the max comes out at the lower scale (within one ulp).

        ``lookup``: each level's ReLU as the ``shifted`` one (one round, one (k-1)-bit DCF with
        a two-word payload) or the ``packed`` one (two rounds: a 1-bit DPF comparison, then
        the select from dealer correlations; about a third of the AES and half the key).

        ``packed_levels`` = j: the first j levels packed, the rest shifted (default: every level
        as ``lookup`` says). The first level holds half the comparisons, the next a quarter:
        packing the wide levels alone buys most of the saving for a round or two
        (passes/lower.py prices each j).

        ``widen=False``: no widening round; the result is the tree's k-bit wire, valid mod
        2^k only (``out_bits`` = k), for readers that look at nothing above it
        (passes/lift_max_tree.py)."""
        from fusec.runtime.gates.sign_relu import SignReLU  # noqa: PLC0415

        self._tree = MaxTree(shape, bits, axis)
        super().__init__(self._tree.elements)
        self.shape, self.axis, self.k = self._tree.shape, self._tree.axis, self._tree.k
        self.out_shape = self._tree.out_shape
        self.bits = self.out_bits = self._tree.bits
        self.in_view = check_width(view_bits, "max view width")
        self.pre_shift = int(pre_shift)
        self.view_bits = self.in_view - self.pre_shift
        if not 4 <= self.view_bits < self.bits or self.in_view > self.bits or self.pre_shift < 0:
            raise ParameterError(f"{self.kind}: view width {view_bits} (minus the shift {pre_shift}) must lie in "
                                 f"[4, {self.bits})")
        if lookup not in self.LOOKUPS:
            raise ParameterError(f"{self.kind}: unknown lookup {lookup!r}", f"use one of {', '.join(self.LOOKUPS)}")
        depth = len(self._tree.levels)
        if packed_levels is None:
            packed_levels = depth if lookup == "packed" else 0
        if not 0 <= packed_levels <= depth:
            raise ParameterError(f"{self.kind}: {packed_levels} packed levels in a tree of {depth}")
        self.packed_levels = int(packed_levels)
        #: the comparisons, as the report shows them: shifted, packed, or the packed levels of the depth
        self.lookup = ("shifted" if self.packed_levels == 0 else "packed" if self.packed_levels == depth
                       else f"packed {self.packed_levels}/{depth}")
        self.widen = bool(widen)
        if not self.widen:
            self.out_bits = self.view_bits
        self._tree.levels = [ReLU2(g.elements, self.view_bits) if i < self.packed_levels
                             else SignReLU(g.elements, self.view_bits) for i, g in enumerate(self._tree.levels)]
        self.levels = self._tree.levels


    def fields(self):
        out = []
        for i, g in enumerate(self.levels):
            out += _prefixed_specs(f"l{i}", g.fields())
        N, n, k = self.elements, self.bits, self.view_bits
        return out + ([("offset", (N,), n), ("msb", (N,), n - k)] if self.widen else [])

    def cost(self) -> GateCost:
        n, k = self.bits, self.view_bits
        widen = GateCost(key_bits=2 * n - k, aes=0, rounds=1, open_bits=n) if self.widen else ZERO_COST
        if not self.levels:
            return widen
        from fusec.runtime.gates.sign_relu import SignReLU  # noqa: PLC0415
        total = ZERO_COST
        for i, g in enumerate(self.levels):          # per row: this level's comparisons times one's cost
            one = (ReLU2(1, k) if i < self.packed_levels else SignReLU(1, k)).cost()
            c = g.elements // self.elements
            total = total + GateCost(key_bits=c * one.key_bits, aes=c * one.aes, rounds=one.rounds,
                                     open_bits=c * one.open_bits)
        return total + widen

    def _view(self, v):
        """The tree's ring: ``hi_s(v mod 2^in_view)`` (the identity view when s = 0)."""
        return ring.hi(ring.lo(v, self.in_view), self.pre_shift) if self.pre_shift else ring.lo(v, self.view_bits)

    def keygen(self, rng: DealerRng, in_masks):
        k, n = self.view_bits, self.bits
        keys: tuple[dict, dict] = ({}, {})
        r = self._tree.levels_keygen(rng, self._tree._rows(self._view(np.asarray(in_masks[0], np.uint64))), k, keys)
        q = r.reshape(-1)
        if not self.widen:          # the k-bit wire itself, under the tree's own mask
            return q.reshape(self.out_shape), keys[0], keys[1]
        r_out = rng.ring(self.elements, n)
        _shares(rng, n, keys, offset=r_out - q)
        _shares(rng, n - k, keys, msb=ring.msb(q, k))
        return r_out.reshape(self.out_shape), keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        from fusec.runtime.gates.truncation import widen_share  # noqa: PLC0415
        k, n = self.view_bits, self.bits
        u = self._view(self._tree._input_rows(inputs[0], be))
        u = yield from self._tree.levels_eval(party, key, u, k, be)
        if not self.widen:
            return u.reshape(self.out_shape)
        share = widen_share(party, u.reshape(-1), k, key["msb"], key["offset"], n)
        out = yield Open(share, n, scope="other")
        return out.reshape(self.out_shape)
