"""OperatorSpec: a scalar fixed-point function as interval partition + polynomial pieces.

The spec is the compiler's description of one nonlinearity on ``Z_{2^n}`` (DESIGN §3):
the input's signed fixed-point grid (``n_in`` bits, ``f_in`` fractional) is cut at
``breakpoints`` into intervals; on each interval the output is an integer polynomial
``p_i(x) = sum_k coeffs[i][k] * (x - centers[i])^k`` in the *integer* input x (centred so
the coefficients' rounding error scales with the piece's half-width), valued at scale
``poly_scale``; the gate then shifts right by ``out_shift = poly_scale - f_out`` bits.
Integer coefficients make the ring identity ``p(x) = p(u - r) mod 2^n`` exact, which is
what lets the gate evaluate the polynomial on the public masked value.

Specs are produced by :func:`fit` (least squares per interval on the grid, then exact
integer evaluation to measure the error actually achieved) and are checkable:
:meth:`OperatorSpec.reference` evaluates the spec in plain integer arithmetic, the oracle
tests compare the secure gate to.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from fusec.errors import ParameterError
from fusec.ir.fit_numeric import chebyshev_power_coeffs, floor_values


@dataclass(frozen=True)
class OperatorSpec:
    name: str
    n_in: int                      # input ring bits
    f_in: int                      # input fractional bits
    f_out: int                     # output fractional bits
    breakpoints: tuple[int, ...]   # interior breakpoints b_1 < ... < b_{m-1}, signed integers
    coeffs: tuple[tuple[int, ...], ...]  # per interval (m of them), c_0..c_d
    centers: tuple[int, ...]       # per interval, the integer the polynomial is centred at
    poly_scale: int                # fractional bits of p_i(x)
    max_error_ulps: float = float("nan")   # measured on fit_range, in output ulps
    fit_range: tuple[float, float] = (0.0, 0.0)
    notes: str = ""
    #: the pieces are accurate up to ``2^(view_shift+1)`` grid units past their ends (and the
    #: error is measured so), so the gate may pick the piece from a truncated view of x
    #: (``floor(x / 2^view_shift) + {0, 1}``): a comparison on fewer bits
    view_shift: int = 0

    def __post_init__(self):
        if len(self.coeffs) != len(self.breakpoints) + 1:
            raise ParameterError(f"spec {self.name}: {len(self.breakpoints)} breakpoints need "
                                 f"{len(self.breakpoints) + 1} pieces, got {len(self.coeffs)}")
        lo, hi = -(1 << (self.n_in - 1)), 1 << (self.n_in - 1)
        bp = list(self.breakpoints)
        if bp != sorted(set(bp)) or any(not lo < b < hi for b in bp):
            raise ParameterError(f"spec {self.name}: breakpoints must be strictly increasing signed "
                                 f"{self.n_in}-bit integers")
        if len(self.centers) != len(self.coeffs):
            raise ParameterError(f"spec {self.name}: one centre per piece needed")
        if self.out_shift < 0:
            raise ParameterError(f"spec {self.name}: poly_scale {self.poly_scale} < f_out {self.f_out}")

    @property
    def pieces(self) -> int:
        return len(self.coeffs)

    @property
    def degree(self) -> int:
        return max(len(c) for c in self.coeffs) - 1

    @property
    def out_shift(self) -> int:
        return self.poly_scale - self.f_out

    def monomials(self, i: int, bits: int) -> tuple[int, ...]:
        """Piece i as monomial coefficients in x, exact mod 2^bits (non-negative ints)."""
        c, m = self.coeffs[i], self.centers[i]
        out = [0] * len(c)
        for k, ck in enumerate(c):
            for j in range(k + 1):
                out[j] += ck * math.comb(k, j) * (-m) ** (k - j)
        return tuple(v % (1 << bits) for v in out)

    def unsigned_partition(self, bits: int | None = None) -> tuple[list[int], list[tuple[int, ...]]]:
        """Breakpoints and monomial pieces over the unsigned representatives [0, 2^n).

        Signed interval [b_j, b_{j+1}) of a negative range maps to [b_j + 2^n, ...); the
        boundary 2^(n-1) (signed -2^(n-1)) is always a breakpoint, and 0 is added where
        an interval straddles it. Polynomials keep their coefficients: integer
        polynomials agree on x and x + 2^n modulo 2^n.
        """
        n = self.n_in
        bits = bits or n
        full = [-(1 << (n - 1))] + list(self.breakpoints) + [1 << (n - 1)]
        segs = []  # (lo_unsigned, coeffs)
        for i in range(self.pieces):
            c = self.monomials(i, bits)
            lo, hi = full[i], full[i + 1]
            if lo < 0 < hi:
                segs.append((lo + (1 << n), c))
                segs.append((0, c))
            else:
                segs.append((lo % (1 << n), c))
        segs.sort(key=lambda s: s[0])
        bps = [s[0] for s in segs[1:]]
        return bps, [s[1] for s in segs]

    def reference(self, x_signed: np.ndarray) -> np.ndarray:
        """Exact integer evaluation: floor(p_i(x) / 2^out_shift) as Python-int-safe int64.

        Uses Python integers (object arrays) so nothing overflows; this is the oracle.
        """
        x = np.asarray(x_signed, dtype=object).reshape(-1)
        idx = np.searchsorted(np.asarray(self.breakpoints, dtype=np.int64), np.asarray(x_signed, np.int64).reshape(-1), side="right")
        out = np.empty(x.shape, dtype=object)
        for i, c in enumerate(self.coeffs):
            sel = idx == i
            if not sel.any():
                continue
            xs = x[sel] - int(self.centers[i])
            acc = np.zeros(xs.shape, dtype=object)
            for ck in reversed(c):
                acc = acc * xs + int(ck)
            out[sel] = acc // (1 << self.out_shift) if self.out_shift else acc
        return out.reshape(np.shape(x_signed))

    def piece_value(self, i: int, xs: np.ndarray) -> np.ndarray:
        """``floor(p_i(x) / 2^out_shift)`` of piece i at integer inputs (exact, Python ints)."""
        x = np.asarray(xs, dtype=object).reshape(-1) - int(self.centers[i])
        acc = np.zeros(x.shape, dtype=object)
        for ck in reversed(self.coeffs[i]):
            acc = acc * x + int(ck)
        return acc // (1 << self.out_shift) if self.out_shift else acc

    def value_bound(self, lo: int, hi: int, margin: int = 0) -> int | None:
        """The largest ``|p_i(x)|`` (the raw value at ``poly_scale``, before the output
        shift) the gate can produce for integer inputs in ``[lo, hi]``, each piece evaluated
        up to ``margin`` past its own ends and past ``[lo, hi]`` (a packed lookup may pick a
        piece from a truncated view, one coarse unit off). Exact for degree <= 2 (the ends and
        the integers around the vertex); None for higher degrees. A held function (rsqrt near
        0) is bounded by its held value here, not by the function's own range."""
        if self.degree > 2:
            return None
        top = 1 << (self.n_in - 1)
        ends = [-top] + list(self.breakpoints) + [top]
        lo, hi, best = lo - margin, hi + margin, 0
        for i, c in enumerate(self.coeffs):
            a, b = max(ends[i] - margin, lo), min(ends[i + 1] - 1 + margin, hi)
            if a > b:
                continue
            m, cs = int(self.centers[i]), [int(v) for v in c]
            xs = {a, b}
            if len(cs) == 3 and cs[2]:
                v = m + (-cs[1]) // (2 * cs[2])              # floor of the vertex, exactly
                xs |= {min(max(v + d, a), b) for d in (0, 1)}
            best = max(best, *(abs(sum(ck * (x - m) ** k for k, ck in enumerate(cs))) for x in xs))
        return best

    def exact_input_range(self, ring_bits: int | None = None, headroom_bits: int = 2) -> tuple[int, int]:
        """Integer inputs [lo, hi] on which ``|p(x)| * 2^poly_scale`` (the value the gate
        opens before its output shift) stays under ``2^(ring_bits - headroom_bits)``.

        Outside it the truncation-with-slack after the lookup is not exact. The compiler
        checks activation ranges against this; the gate documents it. Found by bisection
        on the piece polynomials' values at piece ends and centres (exact integers).
        """
        n = ring_bits or self.n_in
        limit = 1 << (n - headroom_bits)
        full = [-(1 << (self.n_in - 1))] + list(self.breakpoints) + [(1 << (self.n_in - 1)) - 1]
        P = len(self.coeffs)

        def piece_fits(i: int, a: int, b: int) -> bool:
            if a > b:
                return True
            c, m = self.coeffs[i], self.centers[i]
            return all(abs(sum(int(ck) * (x - m) ** k for k, ck in enumerate(c))) < limit
                       for x in {a, b, min(max(m, a), b)})

        # a piece wholly inside [lo, hi] is checked at its own ends and centre, whatever lo and
        # hi are: once per piece here, so each bisection step evaluates only the (at most two)
        # pieces that lo and hi cut
        bad = np.cumsum([0] + [not piece_fits(i, full[i], full[i + 1]) for i in range(P)])

        def fits(lo: int, hi: int) -> bool:
            first = bisect.bisect_left(full, lo, 1, P + 1) - 1      # first piece with full[i+1] >= lo
            last = bisect.bisect_right(full, hi, 0, P) - 1          # last piece with full[i] <= hi
            inner_lo = bisect.bisect_left(full, lo, 0, P)           # first piece with full[i] >= lo
            inner_hi = bisect.bisect_right(full, hi, 1, P + 1) - 2  # last piece with full[i+1] <= hi
            if inner_lo <= inner_hi and bad[inner_hi + 1] - bad[inner_lo]:
                return False
            return all(piece_fits(i, max(full[i], lo), min(full[i + 1], hi)) for i in range(first, last + 1)
                       if not inner_lo <= i <= inner_hi)

        def search(sign: int) -> int:
            good, bad_ = 0, 1 << (self.n_in - 1)
            while bad_ - good > 1:
                mid = (good + bad_) // 2
                ok = fits(-mid, 0) if sign < 0 else fits(0, mid)
                good, bad_ = (mid, bad_) if ok else (good, mid)
            return good

        return -search(-1), search(1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["breakpoints"] = [str(b) for b in self.breakpoints]
        d["coeffs"] = [[str(c) for c in cs] for cs in self.coeffs]
        d["centers"] = [str(c) for c in self.centers]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OperatorSpec":
        d = dict(d)
        d["breakpoints"] = tuple(int(b) for b in d["breakpoints"])
        d["coeffs"] = tuple(tuple(int(c) for c in cs) for cs in d["coeffs"])
        d["centers"] = tuple(int(c) for c in d["centers"])
        d["fit_range"] = tuple(d["fit_range"])
        return cls(**d)


@dataclass
class Tail:
    """A piece outside the fitted range given exactly: value = a*x_real + b."""

    slope: float = 0.0
    offset: float = 0.0
    exact_to: float = 0.0   # |x| (real) up to which a non-dyadic slope must stay within 1/4 ulp (0: 16x the range)


@dataclass
class FitRequest:
    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    lo: float                     # fitted range [lo, hi)
    hi: float
    pieces: int                   # number of polynomial pieces inside [lo, hi)
    degree: int
    n_in: int = 50
    f_in: int = 12
    f_out: int = 12
    guard_bits: int = 2           # coefficient rounding stays under 2^-guard output ulps per term
    left: Tail = field(default_factory=Tail)
    right: Tail = field(default_factory=Tail)
    breakpoints: Sequence[float] | None = None  # explicit interior breakpoints in (lo, hi)
    view: bool = True             # overlap the pieces so the gate may compare on a truncated view
    valid: tuple[float, float] = (-math.inf, math.inf)   # where inputs can be: the error is measured there
    # cap poly_scale at what the ring holds and lower the degree of the pieces too wide for it
    # (None: on with explicit breakpoints, i.e. the geometric pieces of 1/x, 1/sqrt(x) over a wide range)
    cap_scale: bool | None = None
    # measure the error relative above 1: max |err(x)| * max(1, |f(lo)|) / max(1, |f(x)|), i.e. in ulps
    # of the value at the range start where |f| > 1 (the bound passes/fit_specs.choose uses for
    # geometric domains); None: on with explicit breakpoints. notes give the plain figures.
    relative: bool | None = None


@dataclass
class FitPlan:
    """A fit decided up to its coefficients: the cuts, the scale, each piece's degree and (on
    first use, one call of ``req.fn`` for the pieces not seen before) its samples. Its
    ``skeleton`` has the final spec's structure (pieces, degrees, scale), which is all a
    gate's price depends on, and :func:`error_floor` fits a few of its pieces only: a spec
    search can drop a shape that cannot be chosen before paying for all of its least
    squares and error scan."""

    req: FitRequest
    cuts: list[int]          # integer cuts, the ends pushed out 2 delta where the function is finite
    scale: int               # poly_scale
    capped: list[int]        # per piece, after the ring cap (what the degree note reports)
    view_shift: int
    delta: int               # the overlap every piece is fitted and measured on
    worst_at: int | None = None   # set by finish: the input where the spec's error is largest
    _samples: dict = field(default_factory=dict)   # piece -> its samples, where computed

    def _piece_key(self, j: int) -> tuple:
        return (self.req.fn, self.req.f_in, self.cuts[j], self.cuts[j + 1], self.delta)

    def entries(self, pieces) -> list[list]:
        """The ``_PIECES`` entries of these pieces, sampling the unknown ones (one call of
        ``req.fn`` for all of them)."""
        got = {j: _PIECES.get(self._piece_key(j)) for j in pieces}
        missing = [j for j, e in got.items() if e is None]
        self._sample(missing)
        for j in missing:
            got[j] = _remember(self._piece_key(j), [len(self._samples[j][1]), {}])
        return [got[j] for j in pieces]

    def _sample(self, pieces) -> None:
        todo = [j for j in pieces if j not in self._samples]
        self._samples.update(zip(todo, _samples(self, todo)))

    def centre(self, j: int) -> tuple[int, float]:
        """(centre, half-width) of piece j (grid units, the overlap included)."""
        lo_i, hi_i = self.cuts[j], self.cuts[j + 1]
        return (lo_i + hi_i) // 2, max((hi_i + self.delta - (lo_i - self.delta)) / 2, 1.0)

    @property
    def degrees(self) -> list[int]:
        """Per piece, after the ring cap and the samples' count."""
        entries = self.entries(range(len(self.capped)))
        return [min(d, max(e[0] - 1, 0)) for d, e in zip(self.capped, entries)]

    def power_coeffs(self, pieces) -> list[np.ndarray]:
        """Each piece's least-squares polynomial in ``t = (x - centre) / half`` at its degree
        (``_PIECES`` remembers them: the same cuts come back at other output scales)."""
        entries = self.entries(pieces)
        degs = [min(self.capped[j], max(e[0] - 1, 0)) for j, e in zip(pieces, entries)]
        self._sample([j for j, e, d in zip(pieces, entries, degs) if d not in e[1]])
        for j, e, d in zip(pieces, entries, degs):
            if d not in e[1]:
                t, ys = self._samples[j][:2]
                e[1][d] = chebyshev_power_coeffs(t, ys, d)
        return [e[1][d] for e, d in zip(entries, degs)]

    def key(self) -> tuple:
        """Everything the spec depends on except ``req.degree`` and ``req.pieces`` (which
        only decide the cuts and degrees, part of the key): two plans with equal keys give
        the same coefficients and error (the degree note aside), so a search fits once."""
        r = self.req
        return (r.name, r.fn, r.lo, r.hi, r.n_in, r.f_in, r.f_out, r.guard_bits, repr(r.left), repr(r.right),
                tuple(r.valid), r.view, r.breakpoints is None, _relative(r), tuple(self.cuts), self.scale,
                tuple(self.degrees), self.view_shift, self.delta)

    def skeleton(self) -> OperatorSpec:
        """The spec's structure with zero coefficients (raises as the fit would on bad cuts)."""
        coeffs = ((0, 0),) + tuple((0,) * (d + 1) for d in self.degrees) + ((0, 0),)
        centers = (0,) + tuple(self.centre(j)[0] for j in range(len(self.capped))) + (0,)
        return OperatorSpec(self.req.name, self.req.n_in, self.req.f_in, self.req.f_out, tuple(self.cuts),
                            coeffs, centers, self.scale, fit_range=(self.req.lo, self.req.hi),
                            view_shift=self.view_shift)


def _relative(req: FitRequest) -> bool:
    return bool(req.relative or (req.relative is None and req.breakpoints is not None))


def plan(req: FitRequest) -> FitPlan:
    """The first half of :func:`fit`: cuts, poly_scale, degrees and the view's overlap (the
    samples follow on first use)."""
    if req.degree < 0 or req.pieces < 1:
        raise ParameterError(f"fit {req.name}: need degree >= 0 and at least one piece")
    F = 1 << req.f_in
    if req.breakpoints is not None:
        cuts = [req.lo] + list(req.breakpoints) + [req.hi]
    else:
        cuts = list(np.linspace(req.lo, req.hi, req.pieces + 1))
    cuts_int = [int(math.floor(c * F)) for c in cuts]
    half_max = max((b - a) / 2 for a, b in zip(cuts_int[:-1], cuts_int[1:]))
    S = req.f_out + req.guard_bits + max(0, math.ceil(req.degree * math.log2(max(half_max, 1))))
    S = max(S, _tail_scale(req))
    degrees = [req.degree] * (len(cuts_int) - 1)
    if req.cap_scale or (req.cap_scale is None and req.breakpoints is not None):
        S, degrees = _capped_scale(req, cuts_int, S)
    # pieces overlap their neighbours by delta grid units, so a coarse view of x that is one
    # coarse ulp off near a breakpoint still picks an accurate piece
    gap = min(b - a for a, b in zip(cuts_int[:-1], cuts_int[1:]))
    view_shift = max(0, int(math.floor(math.log2(max(gap, 1) / 32)))) if req.view else 0
    delta = (1 << (view_shift + 1)) if view_shift else 0
    # the tails take over only past [lo, hi] widened by 2 delta: near the range's ends the
    # coarse view may pick the tail, so the fitted pieces must reach past them
    if delta:
        with np.errstate(all="ignore"):
            ends = req.fn(np.asarray([cuts_int[0] - 2 * delta, cuts_int[-1] + 2 * delta], np.float64) / F)
        if np.isfinite(ends[0]):
            cuts_int[0] -= 2 * delta
        if np.isfinite(ends[1]):
            cuts_int[-1] += 2 * delta
    return FitPlan(req, cuts_int, S, degrees, view_shift, delta)


def _samples(p: FitPlan, pieces) -> list[tuple[np.ndarray, np.ndarray, int, float]]:
    """(t, y, centre, half-width) of the given pieces: up to ~2048 grid points over each
    piece widened by the overlap, non-finite values (past a domain's end) dropped; one call
    of ``req.fn`` for all of them (elementwise, so the same values as piece by piece)."""
    F = 1 << p.req.f_in
    grids = []
    for j in pieces:
        a, b = p.cuts[j] - p.delta, p.cuts[j + 1] + p.delta
        grids.append(np.arange(a, b, max(1, (b - a) // 2048), dtype=np.int64))
    with np.errstate(all="ignore"):      # overlap samples past a domain's end (1/sqrt at x <= 0) are dropped
        values = p.req.fn(np.concatenate(grids) / F) if grids else np.zeros(0)
    out, start = [], 0
    for j, xs in zip(pieces, grids):
        ys = values[start:start + len(xs)]
        start += len(xs)
        mid, half = p.centre(j)
        keep = np.isfinite(ys)
        xs, ys = (xs[keep], ys[keep]) if keep.any() else (xs, np.nan_to_num(ys))
        out.append(((xs - mid) / half, ys, mid, half))
    return out


def fit(req: FitRequest, memo: dict | None = None) -> OperatorSpec:
    """Least-squares fit of ``req.fn`` on the input grid, pieces at uniform (or given) cuts.

    Each piece is centred at its midpoint m with half-width h (grid units), so the term
    ``c_k (x - m)^k`` has rounding error at most ``h^k / 2`` at scale ``poly_scale``; the
    scale is the smallest with ``h^k <= 2^(poly_scale - f_out - guard_bits)`` for all
    pieces and k. The error reported is measured by exact integer evaluation of every piece
    over its interval widened by the overlap ``2^(view_shift+1)`` (the tails around the
    range's ends, which the fit pushes ``2 * overlap`` outwards so a coarse view picks a tail
    only past [lo, hi]), on ``max(256, 65536 / pieces)`` evenly spaced points plus the end,
    restricted to ``req.valid`` (where inputs can be). ``memo``: see :func:`finish`.
    """
    return finish(plan(req), memo)


def finish(p: FitPlan, memo: dict | None = None) -> OperatorSpec:
    """The second half of :func:`fit`: coefficients, the ring check, the measured error.
    ``memo`` (a dict the caller keeps, e.g. for one spec search) holds results by
    :meth:`FitPlan.key`: shapes that end up with the same plan (1/sqrt's degrees 1, 2 and 3
    all capped to 1 on its wide pieces) are fitted once."""
    if memo is None:
        return _finish(p)
    k = p.key()
    if k not in memo:
        try:
            memo[k] = _finish(p, degree_note=False)
        except (ParameterError, OverflowError, TypeError, np.linalg.LinAlgError) as e:
            memo[k] = e
    got = memo[k]
    if isinstance(got, Exception):
        raise got
    note = _degree_note(p)
    return replace(got, notes="; ".join(s for s in (got.notes, note) if s)) if note else got


def _degree_note(p: FitPlan) -> str:
    """The note on pieces whose degree the ring's cap on poly_scale lowered (explicit cuts only)."""
    return (f"degree {min(p.capped)} on the widest pieces (poly_scale {p.scale} is what the ring holds)"
            if p.req.breakpoints is not None and min(p.capped) < p.req.degree else "")


def _finish(p: FitPlan, degree_note: bool = True) -> OperatorSpec:
    req, S, cuts_int, delta = p.req, p.scale, p.cuts, p.delta

    def tail(t: Tail) -> tuple[int, ...]:
        # a*x_real + b at scale S: x_real = x / 2^f_in
        return (int(round(t.offset * 2.0 ** S)), int(round(t.slope * 2.0 ** (S - req.f_in))))

    pieces = range(len(p.capped))
    coeffs = [tail(req.left)] + [_integer_coeffs(poly, p.centre(j)[1], S)
                                 for j, poly in zip(pieces, p.power_coeffs(pieces))] + [tail(req.right)]
    centers = [0] + [p.centre(j)[0] for j in pieces] + [0]
    if cuts_int[0] <= -(1 << (req.n_in - 1)):
        raise ParameterError(f"fit {req.name}: range start {req.lo} is below what n_in={req.n_in}, f_in={req.f_in} holds")
    spec = OperatorSpec(req.name, req.n_in, req.f_in, req.f_out, tuple(cuts_int), tuple(coeffs), tuple(centers), S,
                        fit_range=(req.lo, req.hi), view_shift=p.view_shift)
    _check_ring(req, spec, cuts_int)      # before the error scan: a spec the ring cannot hold is refused anyway
    err, p.worst_at = _piece_errors(req, spec.coeffs, spec.centers, spec.out_shift, cuts_int, delta,
                                    range(spec.pieces))
    notes = _fit_notes(req, spec, cuts_int)
    if degree_note:
        notes = "; ".join(s for s in (notes, _degree_note(p)) if s)
    return replace(spec, max_error_ulps=err, notes=notes)


def _integer_coeffs(poly_t: np.ndarray, half: float, S: int) -> tuple[int, ...]:
    """One piece's integer coefficients at scale S from its polynomial in ``t = (x - mid) / half``:
    ``sum_k a_k ((x - mid)/half)^k`` has the integer coefficient ``a_k 2^S / half^k`` for ``(x - mid)^k``."""
    return tuple(int(round(a_k * 2.0 ** S / half ** k)) for k, a_k in enumerate(poly_t))


#: per-piece facts that do not depend on the output scale, by (fn, f_in, cut, cut, overlap):
#: [finite samples, {degree: polynomial in t}]. The scale pass probes a gate at several
#: output scales and the spec search then fits it again: the same cuts, the same pieces.
_PIECES: dict[tuple, list] = {}
_PIECES_MAX = 100_000       # a BERT-base compile keeps about 11,000, GPT-2 23,000


def _remember(key: tuple, entry: list) -> list:
    if len(_PIECES) >= _PIECES_MAX:
        _PIECES.clear()
    _PIECES[key] = entry
    return entry


def error_floor(p: FitPlan, x: int) -> float:
    """A lower bound on the error :func:`finish` would measure for ``p``, at a few pieces'
    cost: the exact errors of the (at most three) pieces around integer input x, fitted alone
    (a piece's fit and its error do not depend on the other pieces). Raises as the fit would
    where those pieces' coefficients cannot be formed."""
    req, n = p.req, len(p.cuts) - 1
    if p.scale < req.f_out:
        raise ParameterError(f"fit {req.name}: poly_scale {p.scale} < f_out {req.f_out}")
    j = bisect.bisect_right(p.cuts, x) - 1
    js = sorted({min(max(k, 0), n - 1) for k in (j - 1, j, j + 1)})
    coeffs: list[tuple[int, ...]] = [(0,)] * (n + 2)
    centers = [0] * (n + 2)
    for k, poly in zip(js, p.power_coeffs(js)):
        centers[k + 1], half = p.centre(k)
        coeffs[k + 1] = _integer_coeffs(poly, half, p.scale)
    return _piece_errors(req, coeffs, centers, p.scale - req.f_out, p.cuts, p.delta, [k + 1 for k in js])[0]


def _piece_errors(req: FitRequest, coeffs, centers, out_shift: int, cuts_int: list[int], delta: int,
                  pieces) -> tuple[float, int | None]:
    """(largest error, the input where it is) of the given pieces (spec indices, the tails
    0 and last included) in output ulps (relative above 1 where the request says so), each
    on its interval widened by the overlap (the tails on the overlap into the fitted range),
    by exact integer evaluation, inside ``req.valid``. Over every piece: the spec's error."""
    F = 1 << req.f_in
    with np.errstate(all="ignore"):
        top = max(1.0, float(np.nan_to_num(abs(req.fn(np.asarray([cuts_int[0] / F]))[0]), posinf=1.0)))
    grids, owner = [], []
    total = len(coeffs)
    per_piece = max(256, 65536 // total)
    for i in pieces:
        if i == 0:
            a, b = cuts_int[0] - delta, cuts_int[0] + delta
        elif i == total - 1:
            a, b = cuts_int[-1] - delta, cuts_int[-1] + delta
        else:
            a, b = cuts_int[i - 1] - delta, cuts_int[i] + delta
        if b <= a:
            continue
        a = max(a, math.floor(req.valid[0] * F)) if math.isfinite(req.valid[0]) else a
        b = min(b, math.floor(req.valid[1] * F) + 1) if math.isfinite(req.valid[1]) else b
        if b <= a:
            continue
        xs = np.arange(a, b, max(1, (b - a) // per_piece), dtype=np.int64)
        if xs[-1] != b - 1:
            xs = np.append(xs, np.int64(b - 1))
        grids.append(xs)
        owner.append(np.full(len(xs), i, np.int64))
    if not grids:
        return 0.0, None
    xs, owner = np.concatenate(grids), np.concatenate(owner)
    got = floor_values(coeffs, centers, out_shift, owner, xs)
    with np.errstate(all="ignore"):
        want = req.fn(xs / F) * (1 << req.f_out)
        e = np.abs(got - want)
        if _relative(req):
            e = e * top / np.maximum(1.0, np.abs(want) / (1 << req.f_out))
    fin = np.isfinite(e)
    if not fin.any():
        return 0.0, None
    worst = int(np.argmax(np.where(fin, e, -np.inf)))
    return float(e[worst]), int(xs[worst])


def _check_ring(req: FitRequest, spec: OperatorSpec, cuts_int: list[int]) -> None:
    """Refuse a spec whose values at poly_scale the ring cannot hold on the fitted range (or
    on a sloped tail's ``exact_to``): the output truncation would not be exact there."""
    F = 1 << req.f_in
    S = spec.poly_scale
    lo_ok, hi_ok = spec.exact_input_range(req.n_in, headroom_bits=2 if spec.out_shift else 1)
    # a sloped tail asked to be exact up to |x| = exact_to must stay inside the ring that far
    want_lo = min(cuts_int[0], -int(req.left.exact_to * F)) if req.left.slope else cuts_int[0]
    want_hi = max(cuts_int[-1] - 1, int(req.right.exact_to * F)) if req.right.slope else cuts_int[-1] - 1
    if lo_ok > want_lo or hi_ok < want_hi:
        raise ParameterError(
            f"fit {req.name}: at poly_scale {S} a {req.n_in}-bit ring cannot hold the function's values on "
            f"[{want_lo / F:g}, {want_hi / F:g}] (exact only on [{lo_ok / F:g}, {hi_ok / F:g}])",
            "use more pieces (smaller half-width, smaller scale), a lower degree, or a wider ring")
    if lo_ok > cuts_int[0] or hi_ok < cuts_int[-1] - 1:
        raise ParameterError(
            f"fit {req.name}: at poly_scale {S} a {req.n_in}-bit ring cannot hold the function's values on "
            f"[{req.lo}, {req.hi}) (exact only on [{lo_ok / F:g}, {hi_ok / F:g}])",
            "use more pieces (smaller half-width, smaller scale), a lower degree, or a wider ring")


def _dyadic_bits(a: float, limit: int = 40) -> int | None:
    """Smallest e with a * 2^e an integer (None above ``limit``: not dyadic)."""
    for e in range(limit + 1):
        v = a * 2.0 ** e
        if v == round(v):
            return e
    return None


def _tail_scale(req: FitRequest) -> int:
    """The poly_scale a tail's slope needs: exact for a dyadic slope (1, 1/2, 1/6 is not),
    else within 1/4 output ulp for |x| up to ``exact_to``."""
    need = 0
    for t in (req.left, req.right):
        if t.slope == 0.0:
            continue
        e = _dyadic_bits(float(t.slope))
        if e is not None:
            need = max(need, req.f_in + e)
            continue
        reach = t.exact_to or 16.0 * max(abs(req.lo), abs(req.hi), 1.0)
        need = max(need, req.f_out + req.guard_bits + math.ceil(math.log2(reach * 2.0 ** req.f_in)))
    return need


def _capped_scale(req: FitRequest, cuts_int: list[int], S: int) -> tuple[int, list[int]]:
    """Cap S at what the ring holds over the fitted range (values at scale S under
    2^(n-3)) and give each piece the highest degree whose coefficient rounding S can carry
    (``k log2(half) <= S - f_out - guard``; degree 0 where none)."""
    F = 1 << req.f_in
    lo, hi = cuts_int[0], cuts_int[-1]
    xs = np.unique(np.concatenate([np.linspace(lo, hi, 4097), np.geomspace(max(lo, 1), max(hi, 2), 4097)]))
    xs = xs[(xs >= lo) & (xs <= hi)]
    with np.errstate(all="ignore"):
        v = np.abs(req.fn(np.floor(xs) / F))
    v = v[np.isfinite(v)]
    vmax = float(v.max()) if v.size else 1.0
    s_ring = req.n_in - 3 - math.ceil(math.log2(max(vmax, 2.0 ** -req.f_out)) + 1e-9)
    S = max(min(S, s_ring), req.f_out + req.guard_bits)
    budget = S - req.f_out - req.guard_bits
    degrees = []
    for a, b in zip(cuts_int[:-1], cuts_int[1:]):
        lh = math.log2(max((b - a) / 2, 1.0))
        degrees.append(req.degree if lh <= 0 else max(0, min(req.degree, int(budget // lh))))
    return S, degrees


def _fit_notes(req: FitRequest, spec: OperatorSpec, cuts_int: list[int]) -> str:
    """Geometric pieces (explicit breakpoints): the relative error over the fitted range,
    measured by exact integer evaluation where |f| >= 1 output ulp (the lowered degrees'
    note is ``_degree_note``'s)."""
    if req.breakpoints is None:
        return ""
    relative = req.relative is not False
    F = 1 << req.f_in
    per = max(33, min(257, 131072 // max(len(cuts_int) - 1, 1)))     # every piece, ends included
    xs = np.unique(np.concatenate([np.floor(np.linspace(a, b - 1, per)) for a, b in zip(cuts_int[:-1], cuts_int[1:])
                                   if b > a])).astype(np.int64)
    piece = np.searchsorted(np.asarray(spec.breakpoints, dtype=np.int64), xs, side="right")
    got = floor_values(spec.coeffs, spec.centers, spec.out_shift, piece, xs)    # = spec.reference(xs), faster
    with np.errstate(all="ignore"):
        want = req.fn(xs / F) * (1 << req.f_out)
    fin = np.isfinite(want)
    big = fin & (np.abs(want) >= float(1 << req.f_out))      # |f| >= 1: relative error; below: ulps
    notes = []
    if fin.any():
        err = np.abs(got - want)
        parts = []
        if big.any():
            rel = float(np.max(err[big] / np.abs(want[big])))
            parts.append(f"relative error {rel:.3g} (2^{math.log2(max(rel, 1e-30)):.1f}) where |f| >= 1")
        if (fin & ~big).any():
            parts.append(f"{float(np.max(err[fin & ~big])):.3g} ulps where |f| < 1")
        notes.append(", ".join(parts) + f" on [{req.lo:.4g}, {req.hi:.4g})"
                     + ("; max_error_ulps is relative above 1 (ulps at the range start)" if relative else ""))
    return "; ".join(notes)


def relu_spec(n: int, f: int) -> OperatorSpec:
    """ReLU as an exact spec (no fitting, no output shift): 0 below 0, x above.

    Compiled through :class:`~fusec.runtime.gates.scalar.ScalarGate` this is the
    one-round ReLU: one DCF with payload (1, -r), two evaluation points, one open.
    """
    return OperatorSpec("relu", n, f, f, (0,), ((0,), (0, 1)), (0, 0), f, max_error_ulps=0.0,
                        notes="exact")
