"""Compiled scalar gates: an OperatorSpec evaluated on the public masked value (DESIGN §5.6).

Three interval lookups turn the public ``u = x + r`` into additive shares of
``p_{I(x)}(x)`` (the active piece's polynomial at x), at scale ``spec.poly_scale``.
:class:`ScalarGate` picks the one with the smallest key (``lookup="auto"``), which for
real specs is ``packed`` (:class:`PackedLookup`: one packed comparison from a single 1-bit
DPF less-than key, then the lookup from dealer correlations; two rounds). The other two:

``shifted`` (the default, ours): ONE DCF key with ``alpha = r`` and the vector payload
``beta = ((-r)^0, (-r)^1, ..., (-r)^d)``. By the public-threshold identity
``[x < c] * beta = D(u - c) - D(u) + [u < c] * beta`` the same key evaluated at the public
points ``u, u - a_1, ..., u - a_{M-1}`` yields shares of ``[x < a_i] * (-r)^j`` for every
breakpoint and power. Writing ``f = P_{M-1} + sum_i [x < a_i] (P_{i-1} - P_i)`` and
``x^k = sum_j C(k,j) u^(k-j) (-r)^j``, every remaining factor is a public polynomial in u,
so the output share is local (Horner on u). The key is one DCF with d+1 payload words
whatever the number of pieces, and its shape never depends on r: nothing to pad.

``pieces`` (Boyle et al.-style spline, the baseline): the dealer shifts the partition by
r, sorts the u-space boundaries and gives one DCF per boundary whose payload is the
difference of consecutive pieces' coefficients *as polynomials in u*. A partition of M
pieces has M or M-1 nonzero u-space boundaries depending on r, so the key is padded to M
DCFs (a dummy ``alpha=0, beta=0`` key never fires). ``pad=False`` is the insecure
mask-dependent variant kept only for the padding ablation: the dealer keys only the
``K <= M`` boundaries the masks produce (K, the most over the elements, reveals the masks).
The layout reserves the padded M (a build's layout is fixed at compile time) and the set
records K in the gate's own slot (field ``pieces_used``, covered by the set checksum); the
runtime checks ``K <= M`` before it slices the reserved DCF arrays to the ``N*K`` keyed
ones. ``used_key_bits(K)`` is the key this gate actually needs, what the ablation reports.

If ``spec.out_shift > 0`` the polynomial's value is opened under a fresh mask and a
TruncateSlack gate brings it to ``f_out`` (a second round). That is exact only while
``|p(x)| * 2^poly_scale < 2^(n-2)``: ``ScalarGate.exact_range`` gives the inputs for which
this holds (GELU at n=50, f=12: all x < 0 and x < 16384), and the compiler must keep
activations inside it.
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy

from fusec.runtime.xp import const, frozen, np

from fusec.errors import KeyFileError, ParameterError
from fusec.ir.spec import OperatorSpec
from fusec.runtime import dcf, dpf, ring
from fusec.runtime.dpf_arc import DpfArc
from fusec.runtime.dpf_trie import DpfTrie
from fusec.runtime.gates.base import (Chain, EvalGen, Gate, GateCost, Key, Open, check_width,
                                      prefixed, unprefixed)
from fusec.runtime.gates.mul_narrow import View, view_public, view_secret
from fusec.runtime.rng import DealerRng


def _powers(u: np.ndarray, d: int, m: np.uint64) -> list[np.ndarray]:
    out = [np.ones_like(u)]
    for _ in range(d):
        out.append((out[-1] * u) & m)
    return out


def _shift_poly(coeffs: list[int], j: int, bits: int) -> list[int]:
    """Coefficients in u of sum_k c_k C(k, j) u^(k-j): the factor multiplying (-r)^j."""
    return [(coeffs[j + e] * math.comb(j + e, j)) % (1 << bits) for e in range(len(coeffs) - j)]


@functools.lru_cache(maxsize=512)
def _combine_table(mono: tuple[tuple[int, ...], ...], n: int) -> numpy.ndarray:
    """``T[i*(d+1) + j, e]``: the coefficient of ``u^e`` in the public polynomial that
    multiplies the share of ``[x < a_{i+1}] (-r)^j`` (rows of pieces 0..M-2: the difference
    ``P_i - P_{i+1}`` shifted to ``(-r)^j``) and, in the last piece's rows, of ``(-r)^j`` alone
    (``P_last``). A gate's table depends on its spec only, so it is built once."""
    M, d1 = len(mono), len(mono[0])
    T = numpy.zeros((M, d1, d1), numpy.uint64)
    polys = [[(p - q) % (1 << n) for p, q in zip(mono[i], mono[i + 1])] for i in range(M - 1)] + [list(mono[-1])]
    for i, poly in enumerate(polys):
        for j in range(d1):
            for e, c in enumerate(_shift_poly(poly, j, n)):
                T[i, j, e] = c
    return frozen(T.reshape(M * d1, d1))


def combine(mono: list[list[int]], E, rp, upow: list, n: int, matmul=None):
    """Shares of f(x) = P_last(x) + sum_i [x < a_i] (P_{i-1} - P_i)(x) from
    ``E[:, i-1, j]`` = shares of ``[x < a_i] (-r)^j`` and ``rp[:, j]`` = shares of ``(-r)^j``,
    using ``x^k = sum_j C(k,j) u^(k-j) (-r)^j``: every other factor is public, a polynomial
    in u. Vectorized over pieces: ``z = sum_e u^e * (S @ T)[:, e]`` with S the shares of
    every (piece, power), one product over Z_2^64 (``matmul``: the backend's), so the
    launches do not grow with the number of pieces (a 259-piece rsqrt took ~3,000 small
    kernels piece by piece). All arithmetic wraps mod 2^64 and is reduced mod 2^n at the
    end, so it equals the piecewise Horner exactly.
    """
    T = const(_combine_table(tuple(tuple(int(c) for c in p) for p in mono), n))
    N = rp.shape[0]
    S = np.concatenate([E.reshape(N, -1), rp], axis=1)                  # (N, M*(d+1))
    W = (matmul or np.matmul)(S, T)                                     # (N, d+1)
    z = W[:, 0] * upow[0]
    for e in range(1, T.shape[1]):
        z = z + W[:, e] * upow[e]
    return z & ring.mask(n)


class SplineLookup(Gate):
    """Shares of the active piece's polynomial at x, opened under a fresh mask (one round)."""

    kind = "spline"

    def __init__(self, elements: int, spec: OperatorSpec, lookup: str = "shifted", pad: bool = True):
        super().__init__(elements)
        self.spec = spec
        self.bits = self.out_bits = check_width(spec.n_in, "spline input ring width")
        if lookup not in ("shifted", "pieces"):
            raise ParameterError(f"unknown interval lookup {lookup!r}", "use 'shifted' or 'pieces'")
        self.lookup = lookup
        self.pad = pad
        if not pad:
            if lookup != "pieces":
                raise ParameterError("padding only applies to the 'pieces' lookup")
            warnings.warn("INSECURE: mask-dependent key shapes (--insecure-mask-dependent-shapes): "
                          "the key layout reveals information about the masks; for ablations only",
                          stacklevel=2)
        self.bps, mono = spec.unsigned_partition(self.bits)
        self.d = max(len(c) for c in mono) - 1
        self.mono = [list(c) + [0] * (self.d + 1 - len(c)) for c in mono]
        self.M = len(self.mono)
        # u-space boundaries: up to M nonzero (a_j + r). Unpadded, the layout reserves the
        # padded maximum M and each key set records how many it keys (``pieces_used``).
        self.slots = self.M

    @property
    def elementwise_keys(self) -> bool:     # type: ignore[override]
        """The piece table's DCF keys run over elements times slots in one axis: keyed in one piece."""
        return self.lookup != "pieces"

    # ------------------------------------------------------------------ layout and cost
    def _dcf_count(self) -> int:
        return 1 if self.lookup == "shifted" else self.slots

    def fields(self):
        N, n, d = self.elements, self.bits, self.d
        K = self._dcf_count()
        specs = dcf.DcfKey.field_specs(n, d + 1, n, N * K)
        out = [(f"dcf.{name}", shape, bits) for name, shape, bits in specs]
        if self.lookup == "shifted":
            if d:
                out.append(("rpow", (N, d), n))   # shares of (-r)^j, j = 1..d
        else:
            out.append(("base", (N, d + 1), n))
            if not self.pad:
                out.append(("pieces_used", (), 32))   # K of this key set (INSECURE: reveals the masks)
        out.append(("r_out", (N,), n))
        return out

    def cost(self) -> GateCost:
        n, d = self.bits, self.d
        K = self._dcf_count()
        key = K * dcf.DcfKey.key_bits(n, d + 1, n) + (d * n if self.lookup == "shifted" else (d + 1) * n) + n
        points = self.M if self.lookup == "shifted" else K
        return GateCost(key_bits=key, aes=points * dcf.DcfKey.aes_per_eval(n, d + 1, n), rounds=1, open_bits=n)

    def used_key_bits(self, K: int) -> int:
        """Key bits per element a set that keys ``K`` u-space boundaries needs (the unpadded
        piece table's actual size; :meth:`cost` is the layout's reservation, K = M)."""
        n, d = self.bits, self.d
        return K * dcf.DcfKey.key_bits(n, d + 1, n) + (d + 1) * n + n

    # ------------------------------------------------------------------ keygen
    def keygen(self, rng: DealerRng, in_masks):
        r = np.asarray(in_masks[0], np.uint64).reshape(-1) & ring.mask(self.bits)
        n, d, N = self.bits, self.d, self.elements
        m = ring.mask(n)
        r_out = rng.ring(N, n)
        k = ({}, {})
        if self.lookup == "shifted":
            negr = (np.uint64(0) - r) & m
            beta = np.stack(_powers(negr, d, m), axis=1)
            k0, k1 = dcf.keygen(rng, r, beta, n, n)
            if d:
                k[0]["rpow"], k[1]["rpow"] = rng.share(beta[:, 1:], n)
        else:
            alpha, beta, base = self._piece_table(r)
            K = alpha.shape[1]
            k0, k1 = dcf.keygen(rng, alpha.reshape(-1), beta.reshape(N * K, d + 1), n, n)
            k[0]["base"], k[1]["base"] = rng.share(base, n)
            if not self.pad:    # INSECURE: K keyed boundaries, the rest of the reservation zero
                k0, k1 = _reserve(k0, N * self.M), _reserve(k1, N * self.M)
                k[0]["pieces_used"] = k[1]["pieces_used"] = np.asarray(K, np.uint64)
        k[0].update(prefixed("dcf", k0.arrays()))
        k[1].update(prefixed("dcf", k1.arrays()))
        k[0]["r_out"], k[1]["r_out"] = rng.share(r_out, n)
        return r_out, k[0], k[1]

    def _piece_table(self, r: np.ndarray):
        """u-space boundaries (N, K) and payload differences (N, K, d+1), base (N, d+1)."""
        n, d, N, M = self.bits, self.d, self.elements, self.M
        m = ring.mask(n)
        a = np.array([0] + self.bps, dtype=np.uint64)
        theta = (a[None, :] + r[:, None]) & m                        # (N, M)
        zero = theta == 0
        theta_s = np.sort(np.where(zero, np.uint64(0), theta), axis=1)  # zeros first
        # starts of u-pieces: 0 then each nonzero boundary (zeros sort first and are skipped)
        starts = np.concatenate([np.zeros((N, 1), np.uint64), theta_s], axis=1)  # (N, M+1)
        valid = np.concatenate([np.ones((N, 1), bool), np.sort(~zero, axis=1)], axis=1)
        x_start = (starts - r[:, None]) & m
        piece = np.searchsorted(a, x_start.reshape(-1), side="right").reshape(N, M + 1) - 1
        mono = np.array(self.mono, dtype=np.uint64)[piece]          # (N, M+1, d+1), mod 2^n
        rp = _powers((np.uint64(0) - r) & m, d, m)                  # (-r)^t, t <= d
        Q = np.zeros((N, M + 1, d + 1), np.uint64)
        for e in range(d + 1):        # Q_e = sum_k c_k C(k, e) (-r)^(k-e): uint64 wraps mod 2^64
            for k in range(e, d + 1):
                Q[:, :, e] += mono[:, :, k] * np.uint64(math.comb(k, e)) * rp[k - e][:, None]
        Q &= m
        # payload of piece p applies on [start_p, start_{p+1}); invalid (skipped) starts
        # are duplicates of the next valid piece, so their difference is zero.
        last = np.take_along_axis(Q, (valid.cumsum(axis=1).argmax(axis=1))[:, None, None].repeat(d + 1, 2), axis=1)[:, 0]
        diff = (Q[:, :-1] - Q[:, 1:]) & m                           # [u < start_{p+1}] * (Q_p - Q_{p+1})
        alpha = starts[:, 1:]
        diff = np.where(valid[:, 1:, None], diff, np.uint64(0))
        alpha = np.where(valid[:, 1:], alpha, np.uint64(0))
        if not self.pad:
            K = int(valid[:, 1:].sum(axis=1).max())
            order = np.argsort(~valid[:, 1:], axis=1, kind="stable")
            alpha = np.take_along_axis(alpha, order, 1)[:, :K]
            diff = np.take_along_axis(diff, order[:, :, None].repeat(d + 1, 2), 1)[:, :K]
        return alpha, diff, last

    def _table(self, n: int) -> numpy.ndarray:
        """The spec's combine table in Z_{2^n} (see :func:`_combine_table`), built once per gate
        and width: the fused kernels read it every evaluation."""
        tables = self.__dict__.setdefault("_tables", {})
        if n not in tables:
            tables[n] = _combine_table(tuple(tuple(int(c) for c in p) for p in self.mono), n)
        return tables[n]

    # ------------------------------------------------------------------ eval
    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        xp = be.xp
        n, d, N = self.bits, self.d, self.elements
        m = ring.mask(n)
        u = inputs[0].reshape(-1) & m
        upow = _powers(u, d, m)
        K = self._dcf_count()
        dk = dcf.DcfKey.from_arrays(n, d + 1, n, unprefixed("dcf", key))
        if self.lookup == "shifted":
            a = xp.asarray(np.array(self.bps, dtype=np.uint64))
            pts = xp.concatenate([u[:, None], (u[:, None] - a[None, :]) & m], axis=1)  # (N, M)
            D = be.dcf_eval(party, dk, pts)                                         # (N, M, d+1)
            fused = getattr(be, "spline_lookup", None)  # the GPU's: the rest of this gate in one kernel
            share = None if fused is None else fused(
                D, u, a, key["rpow"] if d else None, key["r_out"],
                const(self._table(n)), d, n, party)
            if share is not None:
                return (yield Open(share, n, scope="lookup"))
            rp = xp.zeros((N, d + 1), np.uint64)
            if party == 1:
                rp[:, 0] = 1
            if d:
                rp[:, 1:] = key["rpow"]
            below = (u[:, None] < a[None, :]).astype(np.uint64)                     # [u < a_i]
            E = (D[:, 1:, :] - D[:, :1, :] + below[:, :, None] * rp[:, None, :]) & m  # [x<a_i](-r)^j
            z = combine(self.mono, E, rp, upow, n, be.matmul)
        else:
            if not self.pad:
                K = self._used(key, be)
                dk = dcf.DcfKey.from_arrays(n, d + 1, n, _keyed(unprefixed("dcf", key), N * K))
            coef = key["base"] & m
            if K:
                D = be.dcf_eval(party, dk, xp.repeat(u, K)).reshape(N, K, d + 1)
                coef = (coef + D.sum(axis=1)) & m                                   # Q(u) shares
            z = xp.zeros(N, np.uint64)
            for e in range(d + 1):
                z += coef[:, e] * upow[e]
        share = (z + key["r_out"]) & m
        return (yield Open(share, n, scope="lookup"))


    def _used(self, key: Key, be) -> int:
        """K of this key set, checked against the reservation before anything is sliced."""
        K = int(be.asnumpy(key["pieces_used"]).reshape(-1)[0])
        if not 0 <= K <= self.M:
            raise KeyFileError(f"unpadded piece table: the key set says {K} keyed boundaries, "
                               f"the layout reserves {self.M}",
                               "the key set is corrupted or from another build; re-run fusec keygen")
        return K


def unused_key_nbytes(gate: Gate, key: Key) -> int:
    """Bytes of the gate's slot that this key set reserves but leaves unkeyed: the boundaries
    an unpadded (INSECURE) piece table did not need (0 for every other gate). The slot's
    bytes minus this are what the set actually uses, the key size the padding ablation reports."""
    stages = getattr(gate, "stages", None)
    if stages is not None:
        return sum(unused_key_nbytes(g, unprefixed(str(i), key)) for i, g in enumerate(stages))
    if not isinstance(gate, SplineLookup) or gate.pad or gate.lookup != "pieces":
        return 0
    from fusec.runtime.layout import KeyField  # noqa: PLC0415

    N, n, d, K = gate.elements, gate.bits, gate.d, int(key["pieces_used"])
    size = lambda e: sum(KeyField(name, shape, bits).nbytes  # noqa: E731
                         for name, shape, bits in dcf.DcfKey.field_specs(n, d + 1, n, e))
    return size(N * gate.M) - size(N * K)


_DCF_ELEMENT_AXIS = {"root": 0, "cw_seed": 1, "cw_tr": 1, "cw_v": 1, "cw_final": 0}


def _reserve(key: dcf.DcfKey, elements: int) -> dcf.DcfKey:
    """The dealer's DCF key widened with zero keys to the layout's reserved element count."""
    arrays = {}
    for name, a in key.arrays().items():
        ax = _DCF_ELEMENT_AXIS[name]
        pad = [(0, 0)] * a.ndim
        pad[ax] = (0, elements - a.shape[ax])
        arrays[name] = np.pad(a, pad)
    return dcf.DcfKey.from_arrays(key.n, key.m, key.w, arrays)


def _keyed(arrays: dict, elements: int) -> dict:
    """The first ``elements`` (keyed) DCF keys of a reserved field (views, no copy)."""
    out = {}
    for name, a in arrays.items():
        idx = [slice(None)] * a.ndim
        idx[_DCF_ELEMENT_AXIS[name]] = slice(0, elements)
        out[name] = a[tuple(idx)]
    return out


class PackedLookup(SplineLookup):
    """Packed comparison + correlation lookup: the active piece's polynomial in two rounds.

    Round 1, the packed comparison: ONE 1-bit DPF less-than key (``alpha = r``, prefix
    parity) evaluated at ``u`` and ``u - a_i`` gives XOR shares of every predicate
    ``c_i = [x < a_i]`` through ``[x < c] = [u - c < r] ^ [u < r] ^ [u < c]``; the bits are
    opened under dealer masks ``rho_i`` (M-1 bits per element, packed 64 to a word).
    Round 2, the lookup: with ``c^_i`` public, ``c_i = c^_i + rho_i - 2 c^_i rho_i``, so
    ``c_i (-r)^j = c^_i (-r)^j + (1 - 2 c^_i) rho_i (-r)^j`` is local given the dealer's
    shares of ``(-r)^j`` and of the correlations ``rho_i (-r)^j``; Horner on u as in the
    shifted lookup, then one open under a fresh mask. The DPF key costs ~129n bits whatever
    the payload, and the per-piece data are plain words: cheaper than one DCF carrying
    d+1 payload words per level, and one AES per tree level instead of 1 + ceil((d+1)n/128).
    """

    kind = "packed_lookup"

    def __init__(self, elements: int, spec: OperatorSpec, view_bits: int | None = None,
                 value_bits: int | None = None, pre_shift: int = 0, proven: tuple[float, float] | None = None,
                 lift: bool = False):
        """``view_bits`` = k: the input is PROVEN to fit k signed bits with two bits of slack
        (``|x| < 2^(k-2) - 2^view_shift``); the comparison then runs on the view
        ``hi_t(u mod 2^k)`` of ``m = k - t`` bits (``t = spec.view_shift``), which is
        ``floor(x / 2^t) + {0, 1}`` under the mask ``hi_t(r mod 2^k)`` (DESIGN §4), against
        the breakpoints ``floor(a_i / 2^t)``: a DPF of m levels instead of n. The spec's pieces
        are fitted (and their error measured) ``2^(t+1)`` past their ends, so picking a
        neighbour one coarse ulp from a breakpoint stays within the stated error.

        ``value_bits`` = w: the polynomial's value at ``poly_scale`` is PROVEN to fit w signed
        bits; the lookup then runs in ``Z_{2^w}`` (integer polynomials agree on x mod 2^w),
        so its correlations, its output mask and its open are w bits, not n.

        ``pre_shift`` = s (needs ``view_bits`` and ``spec.view_shift >= 1``): the input wire
        carries x at ``spec.f_in + s`` fractional bits (a rescale folded into the gate). The
        polynomial is evaluated at ``y = floor(x / 2^s) + {0, 1}``, the free truncation of the
        proven k-bit view: ``v = hi_s(u mod 2^k) = y + q (mod 2^m)``, ``m = k - s``,
        ``q = hi_s(r mod 2^k)``, public without an open. Lifted to w bits it is ``y = U - r'``
        with ``U = u' - 2^(m-2)``, ``u' = v + 2^(m-2) mod 2^m`` and ``r' = q - t b``, where
        ``t = 1 - MSB(u')`` is public and ``b = 2^m MSB(q)`` (the slack makes the wrap bit
        ``MSB(q) t``, as in :func:`~fusec.runtime.gates.truncation.widen_share`). So
        ``(-r')^j = (-q)^j + t B_j`` with ``B_j = (b - q)^j - (-q)^j``, a multiple of 2^m:
        the dealer adds shares of ``B_j / 2^m`` and ``rho_i B_j / 2^m`` on ``w - m`` bits, and
        the rescale costs neither a round nor an open (it used to open y widened to w bits in
        round 1). The comparison view truncates by ``s + t``; its piece is within ``2^t``
        grid units of y, inside the spec's ``2^(t+1)`` overlap.

        ``proven`` = (lo, hi): the input's PROVEN real range (with ``view_bits``). Breakpoints
        outside it are pinned next to it like those outside the view, so the comparison's
        points lie closer together and its walks share more of the tree.

        ``lift`` (with ``view_bits``): the input is read only through its k-bit view and lifted
        to w bits as with ``pre_shift`` (here s = 0): the wire may then be valid mod 2^k only,
        as a max tree's result is when it is not widened (passes/lift_max_tree.py)."""
        super().__init__(elements, spec, "shifted")
        self.lookup = "packed"
        self.vbits = self.out_bits = check_width(value_bits or self.bits, "lookup value width")
        if self.vbits > self.bits:
            raise ParameterError(f"lookup value width {self.vbits} exceeds the input ring's {self.bits} bits")
        self.view_bits, self.view_shift = self.bits, 0
        self.cmp_bps = list(self.bps)
        self.pre_shift = int(pre_shift)
        self.proven = proven
        #: the polynomial's input lifted from the k-bit view (a folded rescale, or ``lift``)
        self.lifted = bool(self.pre_shift) or bool(lift)
        if lift and (view_bits is None or view_bits >= self.bits):
            raise ParameterError(f"{spec.name}: a lifted lookup needs a view narrower than its {self.bits}-bit input")
        if view_bits is not None and (view_bits < self.bits or self.pre_shift):
            coarse = self._coarse(spec, int(view_bits), self.pre_shift, proven)
            if coarse is not None:
                self.view_bits, self.view_shift, self.cmp_bps = coarse
            elif self.pre_shift:
                raise ParameterError(f"{spec.name}: cannot fold a rescale by {pre_shift} into the lookup "
                                     f"(view {view_bits} bits, spec view_shift {spec.view_shift})")
        self.cmp_bits = self.view_bits - self.view_shift
        self.pre_mid = self.view_bits - self.pre_shift          # bits of the truncated input view
        offsets = (0, *self.cmp_bps)   # the points u - a walked by the packed comparison, u first
        #: the comparison's points share their top tree levels (runtime/dpf_arc.py); None: too many points
        self.arc = DpfArc.plan(self.cmp_bits, offsets)
        #: more points than an arc takes: each node on their paths once (runtime/dpf_trie.py); None: plain walks
        self.trie = DpfTrie.plan(self.cmp_bits, offsets) if self.arc is None else None
        if self.lifted and self.vbits <= self.pre_mid:
            raise ParameterError(f"{spec.name}: value width {self.vbits} must exceed the folded view's {self.pre_mid}")

    def _coarse(self, spec: OperatorSpec, k: int, pre: int = 0, proven: tuple[float, float] | None = None):
        """(k, pre + t, unsigned coarse breakpoints) when the coarse partition keeps the piece
        order of the fine one (else None: compare on the exact k-bit view, t = 0)."""
        for t in ((spec.view_shift,) if pre else (spec.view_shift, 0)):
            if pre and t < 1:
                continue
            m = k - t - pre
            if m < 3:
                continue
            # the admissible coarse inputs: |x_c| < 2^(m-2) (the view), within the proven range
            # when it is tighter (two coarse units of margin for the encoding's rounding and the
            # view's carry); breakpoints past them never separate two admissible inputs: pin them,
            # in order, just outside (the piece count stays the spec's)
            h = 1 << (m - 2)
            lo_c, hi_c = -h, h - 1
            if proven is not None and all(math.isfinite(v) for v in proven):
                scale = 2.0 ** (spec.f_in - t)
                lo_c = min(max(lo_c, math.floor(proven[0] * scale) - 2), hi_c)
                hi_c = max(min(hi_c, math.ceil(proven[1] * scale) + 2), lo_c)
            bp = [b >> t for b in spec.breakpoints]
            over = [i for i, b in enumerate(bp) if b > hi_c]
            under = [i for i, b in enumerate(bp) if b < lo_c]
            for j, i in enumerate(over):
                bp[i] = hi_c + 1 + j
            for j, i in enumerate(under):
                bp[i] = lo_c - len(under) + j
            if len(over) >= h or len(under) >= h or bp != sorted(set(bp)) \
                    or any(0 < b < (1 << t) for b in spec.breakpoints):
                continue
            try:
                cspec = OperatorSpec(spec.name, m, 0, 0, tuple(bp), spec.coeffs, spec.centers, 0)
                cbps, cmono = cspec.unsigned_partition(m)
            except ParameterError:
                continue
            if len(cbps) == len(self.bps):
                # the cut at 2^(m-1), between the top and the bottom piece, may sit anywhere no
                # admissible input reaches: just above the admissible top, so that the packed
                # comparison's points stay on a short arc (runtime/dpf_arc.py)
                cbps[cbps.index(1 << (m - 1))] = hi_c + 1 + len(over)
                return k, t + pre, cbps
        return None

    def fields(self):
        N, n, d, P = self.elements, self.vbits, self.d, self.M - 1
        out = [(f"lt.{name}", shape, bits) for name, shape, bits in dpf.DpfKey.field_specs(self.cmp_bits, N)]
        out += [("rho", (N, P), 1), ("rho_a", (N, P), n)]
        if d:
            out += [("rpow", (N, d), n), ("rho_rpow", (N, P, d), n)]
        if self.lifted and d:       # the lifted mask's t-dependent part, a multiple of 2^m
            out += [("rpow_b", (N, d), n - self.pre_mid), ("rho_rpow_b", (N, P, d), n - self.pre_mid)]
        return out + [("r_out", (N,), n)]

    def cost(self) -> GateCost:
        n, d, P = self.vbits, self.d, self.M - 1
        key = dpf.DpfKey.key_bits(self.cmp_bits) + P + P * n + d * n + P * d * n + n
        pre = (P + 1) * d * (n - self.pre_mid) if self.lifted else 0
        walk = self.arc or self.trie
        aes = walk.aes_per_eval() if walk else self.M * dpf.DpfKey.aes_per_eval(self.cmp_bits)
        return GateCost(key_bits=key + pre, aes=aes, rounds=2, open_bits=P + n)

    def _view(self, v):
        """The comparison view of a wire value or mask: ``hi_t(v mod 2^k)``."""
        return ring.hi(ring.lo(v, self.view_bits), self.view_shift)


    def keygen(self, rng: DealerRng, in_masks):
        r = np.asarray(in_masks[0], np.uint64).reshape(-1) & ring.mask(self.bits)
        n, d, N, P = self.vbits, self.d, self.elements, self.M - 1
        m = ring.mask(n)
        k0, k1 = dpf.lt_keygen(rng, self._view(r), self.cmp_bits)
        keys = (prefixed("lt", k0.arrays()), prefixed("lt", k1.arrays()))
        if self.lifted:             # the polynomial's mask: q, lifted (r' = q - t b, t public)
            r, msb_q = view_secret(r, View(self.view_bits, self.pre_shift))
        r = r & m
        rho = rng.bits((N, P))
        keys[0]["rho"], keys[1]["rho"] = rng.share(rho, 1)
        keys[0]["rho_a"], keys[1]["rho_a"] = rng.share(rho, n)          # rho_i (-r)^0
        if d:
            rpow = np.stack(_powers((np.uint64(0) - r) & m, d, m)[1:], axis=1)   # (N, d)
            keys[0]["rpow"], keys[1]["rpow"] = rng.share(rpow, n)
            keys[0]["rho_rpow"], keys[1]["rho_rpow"] = rng.share((rho[:, :, None] * rpow[:, None, :]) & m, n)
        if self.lifted and d:       # B_j / 2^m = ((b - q)^j - (-q)^j) / 2^m, b = 2^m MSB(q)
            mid = self.pre_mid
            b = msb_q << np.uint64(mid)
            bpow = np.stack(_powers((b - r) & m, d, m)[1:], axis=1)
            rb = ((bpow - rpow) & m) >> np.uint64(mid)
            keys[0]["rpow_b"], keys[1]["rpow_b"] = rng.share(rb, n - mid)
            keys[0]["rho_rpow_b"], keys[1]["rho_rpow_b"] = rng.share(rho[:, :, None] * rb[:, None, :], n - mid)
        r_out = rng.ring(N, n)
        keys[0]["r_out"], keys[1]["r_out"] = rng.share(r_out, n)
        return r_out, keys[0], keys[1]

    def eval(self, party: int, key: Key, inputs, be) -> EvalGen:
        xp = be.xp
        n, d, N, P = self.vbits, self.d, self.elements, self.M - 1
        m = ring.mask(n)
        one = np.uint64(1)
        u_in = inputs[0].reshape(-1) & ring.mask(self.bits)
        mc, uc = ring.mask(self.cmp_bits), self._view(u_in)
        u = u_in & m
        a = xp.asarray(np.array(self.cmp_bps, dtype=np.uint64))
        lt = dpf.DpfKey.from_arrays(self.cmp_bits, unprefixed("lt", key))
        if self.arc is not None:                                                        # [z < r] at z = u - a
            t = be.dpf_lt_arc(party, lt, uc, self.arc)                                  # (N, M)
        elif self.trie is not None:
            t = be.dpf_lt_trie(party, lt, uc, self.trie)
        else:
            t = be.dpf_lt_eval(party, lt, xp.concatenate([uc[:, None], (uc[:, None] - a[None, :]) & mc], axis=1))
        c = t[:, 1:] ^ t[:, :1] ^ key["rho"]
        if party == 1:
            c = c ^ (uc[:, None] < a[None, :]).astype(np.uint64)
        rpow, rho_rpow = (key["rpow"], key["rho_rpow"]) if d else (None, None)
        if self.lifted:             # the (rescaled) input: public, lifted to w bits (see __init__)
            u, t_pub = view_public(u_in, n, View(self.view_bits, self.pre_shift))
            if d:
                mid = np.uint64(self.pre_mid)
                rpow = (rpow + ((key["rpow_b"] * t_pub[:, None]) << mid)) & m
                rho_rpow = (rho_rpow + ((key["rho_rpow_b"] * t_pub[:, None, None]) << mid)) & m
        c_hat = yield Open(c & one, 1, scope="cmp")                                     # round 1
        fused = getattr(be, "packed_lookup", None)      # the GPU's: the rest of this round in one kernel
        if fused is not None:
            share = fused(c_hat, u, rpow, key["rho_a"], rho_rpow, key["r_out"], const(self._table(n)), d, n, party)
            if share is not None:
                return (yield Open(share, n, scope="lookup"))                           # round 2
        c_hat = c_hat.reshape(N, P) & one
        sign = (one - (c_hat << one))                                                    # 1 - 2 c^
        rp = xp.zeros((N, d + 1), np.uint64)
        if party == 1:
            rp[:, 0] = 1
        if d:
            rp[:, 1:] = rpow
        corr = xp.concatenate([key["rho_a"][:, :, None], rho_rpow], axis=2) if d else key["rho_a"][:, :, None]
        E = (c_hat[:, :, None] * rp[:, None, :] + sign[:, :, None] * corr) & m            # c_i (-r)^j
        z = combine(self.mono, E, rp, _powers(u, d, m), n, be.matmul)
        return (yield Open((z + key["r_out"]) & m, n, scope="lookup"))                  # round 2


def _lookup(elements: int, spec: OperatorSpec, lookup: str, pad: bool, view_bits: int | None = None,
            value_bits: int | None = None, pre_shift: int = 0, proven: tuple[float, float] | None = None,
            lift: bool = False) -> Gate:
    if lookup == "packed":
        return PackedLookup(elements, spec, view_bits, value_bits, pre_shift, proven, lift)
    # padding is a property of the piece table only: the other lookups' shapes never depend on r
    return SplineLookup(elements, spec, lookup, pad or lookup != "pieces")


class ScalarGate(Chain):
    """The compiled gate: interval lookup (+ output truncation when the spec needs it)."""

    kind = "scalar"

    def __init__(self, elements: int, spec: OperatorSpec, lookup: str = "auto", pad: bool = True,
                 defer_shift: bool = False, view_bits: int | None = None, out_view_bits: int | None = None,
                 pre_shift: int = 0, proven: tuple[float, float] | None = None, lift: bool = False):
        """``lookup``: 'packed' (packed comparison + correlations, 2 rounds), 'shifted' (one
        DCF, 1 round), 'pieces' (baseline piece table) or 'auto' (smallest key). With
        ``defer_shift`` the output stays at ``spec.poly_scale`` (no truncation stage): the
        consumer's own rescale (e.g. after the next matmul) absorbs the shift for free. With
        ``out_view_bits`` = k usable too (:meth:`narrows_value`), the deferred value is a wire
        of ``Z_{2^k}``, read by its consumers through the view ``View(k, out_shift)`` (a
        product's free truncation, runtime/gates/mul_narrow.py): the shift costs no round.
        ``proven``: the input's proven real range, for the packed comparison (PackedLookup);
        ``lift``: the packed lookup reads its input only through its view (PackedLookup).
        """
        from fusec.runtime.gates.truncation import TruncateNarrow, TruncateSlack  # noqa: PLC0415

        if pre_shift or lift:  # a folded rescale or a lifted view: only the packed lookup lifts its input
            lookup = "packed"
        if lookup == "auto":  # the cheapest key for this spec (a function of the spec only)
            lookup = min(("packed", "shifted"),
                         key=lambda lk: _lookup(1, spec, lk, True, view_bits).cost().key_bits)
        k = out_view_bits
        narrow_value = self.narrows_value(spec, lookup, k)
        narrow_out = narrow_value and not defer_shift
        stages: list[Gate] = [_lookup(elements, spec, lookup, pad, view_bits, k if narrow_value else None, pre_shift,
                                      proven, lift)]
        if narrow_out:
            # the value is proven to fit k bits at poly_scale: the lookup runs mod 2^k, then a
            # free truncation widened back to n bits (one round, no DCF)
            stages.append(TruncateNarrow(elements, k, k, spec.out_shift, out_bits=spec.n_in))
        elif spec.out_shift and not defer_shift and k is not None and spec.out_shift <= k - 3 and k <= spec.n_in:
            stages.append(TruncateNarrow(elements, spec.n_in, k, spec.out_shift))     # an n-bit lookup
        elif spec.out_shift and not defer_shift:
            stages.append(TruncateSlack(elements, spec.n_in, spec.out_shift))
        self.out_scale = spec.poly_scale if defer_shift else spec.f_out
        out_scale = self.out_scale
        super().__init__(stages, kind="scalar")
        self.out_scale = out_scale
        self.spec = spec
        self.lookup = lookup
        #: the deferred output's ring (k bits, at poly_scale), or None: an n-bit wire
        self.deferred_bits = k if defer_shift and narrow_value else None

    @staticmethod
    def narrows_value(spec: OperatorSpec, lookup: str, k: int | None) -> bool:
        """Whether the lookup can run mod ``2^k``: packed, with an output shift the view of k
        bits (two of slack) still leaves three bits of, inside the input ring."""
        return bool(lookup == "packed" and spec.out_shift and k is not None
                    and spec.out_shift <= k - 3 and k <= spec.n_in)

    @functools.cached_property
    def exact_range(self) -> tuple[int, int]:
        """Integer inputs on which the gate is exact; outside, the output shift's slack
        assumption fails and the result is wrong. The compiler must keep activations inside
        it (``describe()`` prints it). Computed on demand: a search over the pieces, and the
        spec search builds a gate per candidate only to price it."""
        return self.spec.exact_input_range(self.spec.n_in, headroom_bits=2 if self.spec.out_shift else 1)

    def describe(self) -> dict:
        d = super().describe()
        lo, hi = self.exact_range
        d.update(spec=self.spec.name, pieces=self.spec.pieces, degree=self.spec.degree,
                 max_error_ulps=self.spec.max_error_ulps,
                 exact_for=[lo / 2 ** self.spec.f_in, hi / 2 ** self.spec.f_in])
        return d
