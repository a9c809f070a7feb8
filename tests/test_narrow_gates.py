"""Gates on narrow proven views: TruncateNarrow and the view/value-width PackedLookup/ScalarGate.

Oracles are independent of the gates' formulas: Python ints (``x >> s`` is floor on negative
values) or int64 numpy at small widths, the spec's own integer reference, and the float
function a spec was fitted to. Masks are forced (0, 2^n - 1, 2^(n-1), every mask at small
widths) or drawn from a seeded DealerRng, so every check here is deterministic.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.base import GateCost
from fusec.runtime.gates.truncation import TruncateNarrow
from fusec.runtime.rng import DealerRng
from tests.harness import CostProbe, forced_masks, measure_gate, run_gate


# ----------------------------------------------------------------------------- helpers
def signed_ints(a, bits):
    h = 1 << (bits - 1)
    return [(int(v) ^ h) - h for v in np.asarray(a, np.uint64).reshape(-1)]


def run_signed(gate, xs, masks=None, rng=None):
    """Run ``gate`` (input ring gate.bits) on signed Python/int64 values; the signed output on
    gate.out_bits (Python ints), the output mask and the logs."""
    xs = np.asarray(xs, dtype=np.int64)
    got, r_out, logs = run_gate(gate, [ring.from_signed(xs, gate.bits)], [gate.bits], rng=rng,
                                in_masks=None if masks is None else [masks])
    return signed_ints(got, gate.out_bits), r_out, logs


def measure(gate, xs, masks=None):
    """Like ``tests.harness.measure_gate`` but for any output width: (signed output on
    gate.out_bits, per-element cost measured from the real keys, AES counter and bytes sent)."""
    probe = CostProbe(gate)
    xs = np.asarray(xs, dtype=np.int64)
    got, _, logs = run_gate(probe, [ring.from_signed(xs, gate.bits)], [gate.bits],
                            in_masks=None if masks is None else [masks])
    E = gate.elements
    assert probe.key_bits[0] == probe.key_bits[1] and probe.aes[0] == probe.aes[1]
    assert logs[0].rounds == logs[1].rounds
    sent = [sum(lg.bytes_sent.values()) for lg in logs]
    assert sent[0] == sent[1]
    cost = GateCost(key_bits=probe.key_bits[0] / E, aes=probe.aes[0] / E, rounds=logs[0].rounds,
                    open_bits=8 * sent[0] / E)
    return signed_ints(got, gate.out_bits), cost, logs


def narrow_range(k, s):
    """The claimed precondition of TruncateNarrow: -2^(k-2) <= x < 2^(k-2) - 2^s."""
    return -(1 << (k - 2)), (1 << (k - 2)) - (1 << s)


def carry(xs, rs, s):
    """Exact rounding carry [lo_s(x) + lo_s(r) >= 2^s] (Python ints, x signed, r unsigned)."""
    m = (1 << s) - 1
    return [int((x & m) + (r & m) > m) for x, r in zip(xs, rs)]


# ============================================================================= TruncateNarrow
def check_narrow(gate, xs, rs):
    """Run on signed ``xs`` under input masks ``rs``; the output must be floor(x/2^s) + c on
    gate.out_bits with c the exact carry. Returns the carries."""
    xs = [int(v) for v in xs]
    rs_arr = np.asarray([int(r) for r in rs], np.uint64)
    got, _, logs = run_signed(gate, xs, rs_arr)
    s, w = gate.shift, gate.out_bits
    c = carry(xs, [int(r) for r in rs_arr], s)
    want = [(x >> s) + ci for x, ci in zip(xs, c)]
    want = [((v + (1 << (w - 1))) % (1 << w)) - (1 << (w - 1)) for v in want]  # read on w bits
    bad = [(x, int(r), g, v) for x, r, g, v in zip(xs, rs_arr, got, want) if g != v]
    assert not bad, f"{len(bad)} wrong, e.g. (x, r, got, want) = {bad[:5]}"
    for lg in logs:
        assert lg.rounds == 1
        assert set(lg.bytes_sent) == {"rescale"}
    return c


def exhaustive_cases():
    for n in (8, 10):
        for k in (6, 8):
            if k <= n:
                for s in range(1, k - 2):
                    yield n, k, s


@pytest.mark.parametrize("n,k,s", list(exhaustive_cases()))
def test_narrow_exhaustive_all_masks(n, k, s):
    """Every x of the valid range under every n-bit mask: output = floor(x/2^s) + carry, and
    over all masks the carry is 1 exactly lo_s(x) times in 2^s (unbiased, exactly)."""
    lo, hi = narrow_range(k, s)
    x1 = np.arange(lo, hi, dtype=np.int64)
    R = 1 << n
    xs = np.repeat(x1, R)
    rs = np.tile(np.arange(R, dtype=np.uint64), x1.size)
    g = TruncateNarrow(xs.size, n, k, s)
    assert g.out_bits == n and g.mid_bits == k - s
    c = np.array(check_narrow(g, xs.tolist(), rs.tolist())).reshape(x1.size, R)
    # stochastic rounding, exactly: #masks with carry = 2^n * lo_s(x) / 2^s
    assert np.array_equal(c.sum(axis=1), (x1 & ((1 << s) - 1)) << (n - s))


@pytest.mark.parametrize("k,s,w", [(6, 1, 9), (6, 3, 16), (8, 2, 12), (8, 5, 64), (7, 4, 4)])
def test_narrow_exhaustive_wider_output(k, s, w):
    """As ScalarGate uses it: input ring = proven width k, output on another ring (wider, or
    narrower than k but wider than the truncated width k - s)."""
    if w <= k - s:
        pytest.skip("output must exceed the truncated width")
    lo, hi = narrow_range(k, s)
    x1 = np.arange(lo, hi, dtype=np.int64)
    R = 1 << k
    xs = np.repeat(x1, R)
    rs = np.tile(np.arange(R, dtype=np.uint64), x1.size)
    g = TruncateNarrow(xs.size, k, k, s, out_bits=w)
    assert g.out_bits == w
    check_narrow(g, xs.tolist(), rs.tolist())


def test_narrow_output_narrower_than_input_ring():
    """out_bits below the input ring (but above k - s): the result is read mod 2^out_bits."""
    n, k, s, w = 12, 8, 3, 7
    lo, hi = narrow_range(k, s)
    x1 = np.arange(lo, hi, dtype=np.int64)
    R = 1 << n
    xs, rs = np.repeat(x1, R), np.tile(np.arange(R, dtype=np.uint64), x1.size)
    check_narrow(TruncateNarrow(xs.size, n, k, s, out_bits=w), xs.tolist(), rs.tolist())


def extremes(k, s):
    lo, hi = narrow_range(k, s)
    return [lo, lo + 1, lo + (1 << s) - 1, hi - 1, hi - 2, hi - (1 << s), 0, 1, -1,
            (1 << s) - 1, 1 << s, -(1 << s), -(1 << s) + 1, -(1 << s) - 1]


def large_cases():
    for n in (37, 50, 64):
        for k, s in ((n, 1), (n, 12), (n, n - 3), (n - 5, 12), (24, 12), (20, 17)):
            yield n, k, s, None
        yield n, 30, 12, 64 if n == 64 else n + 3   # wider output than the input ring
        yield n, 30, 12, 32                         # narrower output, above k - s = 18


@pytest.mark.parametrize("n,k,s,w", list(large_cases()))
def test_narrow_random_and_forced_masks(n, k, s, w):
    lo, hi = narrow_range(k, s)
    rng = np.random.default_rng(1000 * n + 10 * k + s)
    xs = [int(v) for v in rng.integers(lo, hi, 300)] + extremes(k, s)
    E = len(xs)
    dr = DealerRng(b"narrow-%d-%d-%d" % (n, k, s))
    top = (1 << n) - 1
    mask_sets = [m.tolist() for m in forced_masks((E,), n)]
    mask_sets.append(dr.ring(E, n).tolist())
    # random high bits with extreme low s bits (carry certain / impossible) and extreme bit k-1
    base = dr.ring(E, n)
    for low in (0, (1 << s) - 1):
        mask_sets.append([(int(b) & (top ^ ((1 << s) - 1))) | low for b in base])
    mask_sets.append([int(b) | (1 << (k - 1)) for b in base])
    mask_sets.append([int(b) & ~(1 << (k - 1)) & top for b in base])
    seen = set()
    for rs in mask_sets:
        seen.update(check_narrow(TruncateNarrow(E, n, k, s, out_bits=w), xs, rs))
    assert seen == {0, 1}


def test_narrow_oracle_is_one_ulp_against_python_shift():
    """The one-ulp bound stated plainly: 0 <= out - (x >> s) <= 1 for all masks, at 64 bits."""
    n, k, s = 64, 64, 20
    lo, hi = narrow_range(k, s)
    rng = np.random.default_rng(7)
    xs = [int(v) for v in rng.integers(lo, hi, 2000, dtype=np.int64)] + extremes(k, s)
    got, _, _ = run_signed(TruncateNarrow(len(xs), n, k, s), xs)
    d = [g - (x >> s) for g, x in zip(got, xs)]
    assert set(d) <= {0, 1}


@pytest.mark.parametrize("n,k,s", [(8, 6, 1), (8, 8, 3), (10, 8, 5), (10, 7, 2)])
def test_narrow_outside_precondition_can_be_wrong(n, k, s):
    """Documents the precondition: past either end some masks give garbage (not within one
    ulp), so the compiler's range proof is what makes the gate correct.

    The exact edges (widening needs floor(x/2^s) + c in [-2^(m-2), 2^(m-2)], m = k - s):
    below, x = -2^(k-2) - 1 already fails (c = 0 when lo_s(r) = 0); above, the stated bound
    2^(k-2) - 2^s is conservative: every x < 2^(k-2) is safe for every mask, and the first
    failure is x = 2^(k-2) + 1 (floor = 2^(m-2), carry 1)."""
    lo, hi = narrow_range(k, s)
    R = 1 << n
    top = 1 << (k - 2)
    rs = np.arange(R, dtype=np.uint64)
    for x in (lo - 1, top + 1, lo - (1 << s), top + (1 << s), (1 << (k - 1)) - 1, -(1 << (k - 1))):
        got, _, _ = run_signed(TruncateNarrow(R, n, k, s), [x] * R, rs)
        wrong = [g for g in got if g - (x >> s) not in (0, 1)]
        assert wrong, (x, "expected some mask to break the gate outside its precondition")
    # the conservative top margin: [hi, 2^(k-2)] is still exact for every mask
    xs = [x for x in range(hi, top + 1) for _ in range(R)]
    check_narrow(TruncateNarrow(len(xs), n, k, s), xs, np.tile(rs, top + 1 - hi).tolist())


def test_narrow_stochastic_rounding_unbiased_random_masks():
    """Mean error over many uniform random masks is lo_s(x)/2^s. The masks come from a seeded
    DealerRng, so this is deterministic; the tolerance is 8 standard deviations anyway."""
    n, k, s, M = 50, 40, 12, 4096
    rng = np.random.default_rng(3)
    lo, hi = narrow_range(k, s)
    x1 = [int(v) for v in rng.integers(lo, hi, 12)] + [hi - 1, lo + 1, (1 << s) // 2, -(1 << s) // 3]
    xs = [x for x in x1 for _ in range(M)]
    got, _, _ = run_signed(TruncateNarrow(len(xs), n, k, s), xs, rng=DealerRng(b"unbiased"))
    err = np.array([g - (x >> s) for g, x in zip(got, xs)], dtype=np.float64).reshape(len(x1), M)
    assert set(np.unique(err)) <= {0.0, 1.0}
    p = np.array([(x % (1 << s)) / (1 << s) for x in x1])
    sd = np.sqrt(np.maximum(p * (1 - p), 1 / M) / M)
    assert np.all(np.abs(err.mean(axis=1) - p) <= 8 * sd), (err.mean(axis=1), p)
    # the value itself: E[out] * 2^s = x (unbiased), checked on the aggregate
    tot = np.array([g * (1 << s) - x for g, x in zip(got, xs)], dtype=np.float64)
    assert abs(tot.mean()) <= 8 * (1 << s) * 0.5 / np.sqrt(len(xs))


@pytest.mark.parametrize("n,k,s,w", [(50, 30, 12, None), (64, 64, 12, None), (37, 20, 1, None),
                                     (30, 30, 12, 50), (24, 24, 21, 64), (50, 24, 12, 30)])
def test_narrow_cost_is_measured(n, k, s, w):
    E = 64
    g = TruncateNarrow(E, n, k, s, out_bits=w)
    wb, m = g.out_bits, k - s
    expect = GateCost(key_bits=wb + (wb - m), aes=0, rounds=1, open_bits=wb)
    assert g.cost() == expect
    lo, hi = narrow_range(k, s)
    xs = np.random.default_rng(n + k).integers(lo, hi, E)
    if w is None:
        out, cost, _ = measure_gate(g, xs, n)
        out = [int(v) for v in out]
    else:
        out, cost, _ = measure(g, xs)
    assert cost == expect, (cost, expect)
    assert all(o - (int(x) >> s) in (0, 1) for o, x in zip(out, xs))


def test_narrow_bad_parameters():
    with pytest.raises(ParameterError):
        TruncateNarrow(4, 16, 17, 3)            # view wider than the ring
    with pytest.raises(ParameterError):
        TruncateNarrow(4, 16, 10, 8)            # s > k - 3
    with pytest.raises(ParameterError):
        TruncateNarrow(4, 16, 10, 0)
    with pytest.raises(ParameterError):
        TruncateNarrow(4, 16, 10, 3, out_bits=7)  # out_bits must exceed k - s
    TruncateNarrow(4, 16, 10, 7)                # s = k - 3 is the largest allowed
    TruncateNarrow(4, 16, 10, 3, out_bits=8)


# ============================================================================= PackedLookup / ScalarGate on views
import functools  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import types  # noqa: E402
from bisect import bisect_right  # noqa: E402
from pathlib import Path  # noqa: E402

from fusec.ir.spec import FitRequest, OperatorSpec, Tail, fit  # noqa: E402
from fusec.runtime.gates.catalog import gelu_spec  # noqa: E402
from fusec.runtime.gates.scalar import PackedLookup, ScalarGate  # noqa: E402
from fusec.runtime.gates.truncation import TruncateSlack  # noqa: E402


def gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def recip(x):
    with np.errstate(divide="ignore"):
        return 1.0 / x


GEOMETRIC = [2.0 ** i for i in range(1, 8)]   # cuts of 1/x on [1, 256)


@functools.lru_cache(maxsize=None)
def make_spec(name: str, n: int):
    """(spec, float function, [lo, hi) of real x where the float bound is claimed)."""
    if name == "gelu":
        if n <= 24:    # small: linear pieces at f = 6 (the quadratic scale does not fit 20 bits)
            return fit(FitRequest("gelu", gelu, -4, 4, pieces=8, degree=1, n_in=n, f_in=6, f_out=6,
                                  right=Tail(1.0))), gelu, (-math.inf, math.inf)
        return gelu_spec(n, 12), gelu, (-math.inf, math.inf)
    if name == "gelu_noview":  # fitted without the overlap: view_shift = 0, compare on exact k bits
        return fit(FitRequest("gelu", gelu, -4, 4, pieces=8, degree=1, n_in=n, f_in=6, f_out=6,
                              right=Tail(1.0), view=False)), gelu, (-math.inf, math.inf)
    if name == "exp":
        f, pieces, degree = (6, 8, 1) if n <= 24 else (12, 16, 2 if n >= 50 else 1)
        spec = fit(FitRequest("exp", np.exp, -16, 0, pieces=pieces if degree == 2 else 2 * pieces,
                              degree=degree, n_in=n, f_in=f, f_out=f, left=Tail(0.0), right=Tail(0.0)))
        return spec, np.exp, (-math.inf, 0.0)   # the right tail 0 is the spec's choice, not exp
    if name == "recip":
        f, degree = (6, 1) if n <= 24 else (12, 2 if n >= 50 else 1)
        hi = 64 if n <= 24 else 256
        spec = fit(FitRequest("recip", recip, 1, hi, pieces=8, degree=degree, n_in=n, f_in=f, f_out=f,
                              breakpoints=[b for b in GEOMETRIC if b < hi]))
        return spec, recip, (1.0, float(hi))
    raise AssertionError(name)


def view_range(k, t):
    """Inputs proven inside the view: |x| < 2^(k-2) - 2^t."""
    h = (1 << (k - 2)) - (1 << t)
    return -h + 1, h            # [lo, hi)


def poly(spec, j, x):
    """Piece j's polynomial at integer x, at poly_scale (Python ints, exact)."""
    return sum(int(c) * (x - int(spec.centers[j])) ** e for e, c in enumerate(spec.coeffs[j]))


def chosen_pieces(spec, t, xs, rs):
    """The piece the coarse comparison picks, derived independently of the gate: the view is
    floor(x/2^t) + [lo_t(x) + lo_t(r) >= 2^t], compared with floor(b/2^t) for every b."""
    cb = [int(b) >> t for b in spec.breakpoints]
    out = []
    for x, r in zip(xs, rs):
        c = int((x & ((1 << t) - 1)) + (r & ((1 << t) - 1)) >= (1 << t)) if t else 0
        out.append(bisect_right(cb, (x >> t) + c))
    return out


def true_pieces(spec, xs):
    bps = [int(b) for b in spec.breakpoints]
    return [bisect_right(bps, x) for x in xs]


def mask_sets(n, t, k, E, seed, random_sets=1):
    """Forced 0, 2^n - 1, 2^(n-1); random; random with lo_t(r) = 0 / 2^t - 1 (view carry never /
    as often as possible) and with bit k-1 set / clear."""
    top = (1 << n) - 1
    out = [[0] * E, [top] * E, [1 << (n - 1)] * E]
    dr = DealerRng(seed)
    for _ in range(random_sets):
        out.append([int(v) for v in dr.ring(E, n)])
    base = [int(v) for v in dr.ring(E, n)]
    lowm = (1 << t) - 1
    out.append([b & ~lowm & top for b in base])
    out.append([b | lowm for b in base])
    if k < n:
        out.append([b | (1 << (k - 1)) for b in base])
        out.append([b & ~(1 << (k - 1)) & top for b in base])
    return out


def cross(xs, sets):
    """Every x under every mask set, as one batch (per-element masks)."""
    X = [x for _ in sets for x in xs]
    R = [r for s in sets for r in s]
    return X, R


def breakpoint_inputs(spec, t, lo, hi):
    """Every breakpoint in [lo, hi) and its neighbours: +-1 ulp, +-2^t, +-2^(t+1) (and -1 of those)."""
    out = set()
    for b in spec.breakpoints:
        for d in (0, 1, -1, 2, -2):
            out.add(int(b) + d)
        for e in (t, t + 1):
            for d in ((1 << e), (1 << e) - 1, (1 << e) + 1):
                out.add(int(b) + d)
                out.add(int(b) - d)
    return sorted(x for x in out if lo <= x < hi)


def check_lookup(g, spec, xs, rs):
    """PackedLookup output = p_j(x) mod 2^w, j the piece the view picks (exact, no tolerance)."""
    n, w = spec.n_in, g.out_bits
    got, _, logs = run_gate(g, [ring.from_signed(np.asarray(xs, np.int64), n)], [n],
                            in_masks=[np.asarray(rs, np.uint64)])
    js = chosen_pieces(spec, g.view_shift, xs, rs)
    want = [poly(spec, j, x) % (1 << w) for j, x in zip(js, xs)]
    got = [int(v) for v in got]
    bad = [(x, r, j, gv, wv) for x, r, j, gv, wv in zip(xs, rs, js, got, want) if gv != wv]
    assert not bad, f"{len(bad)}/{len(xs)} wrong, e.g. (x, r, piece, got, want) = {bad[:4]}"
    assert all(lg.rounds == 2 for lg in logs)
    return js


def check_scalar(g, spec, fn, freal, xs, rs, narrow: bool):
    """ScalarGate output against (1) floor(p_j(x)/2^s) [+ {0,1} for the narrow truncation],
    j the piece the view picks; (2) spec.reference(x) wherever j is x's own piece; (3) the
    float function: |out - f(x) 2^f_out| <= max_error_ulps + 1 on the claimed real range."""
    n, s = spec.n_in, spec.out_shift
    got, _, logs = run_gate(g, [ring.from_signed(np.asarray(xs, np.int64), n)], [n],
                            in_masks=[np.asarray(rs, np.uint64)])
    got = signed_ints(got, n)
    js = chosen_pieces(spec, g.stages[0].view_shift, xs, rs)
    exact = [poly(spec, j, x) >> s for j, x in zip(js, xs)]
    ok = (0, 1) if narrow else (0,)
    bad = [(x, r, j, gv, e) for x, r, j, gv, e in zip(xs, rs, js, got, exact) if gv - e not in ok]
    assert not bad, f"{len(bad)}/{len(xs)} wrong, e.g. (x, r, piece, got, floor p_j/2^s) = {bad[:4]}"
    ref = [int(v) for v in spec.reference(np.asarray(xs, np.int64))]
    own = true_pieces(spec, xs)
    assert all(gv - rv in ok for gv, rv, j, i in zip(got, ref, js, own) if j == i)
    # a neighbour is only ever picked within 2^(t+1) below a breakpoint, and only the upper one
    t = g.stages[0].view_shift
    for x, j, i in zip(xs, js, own):
        if j != i:
            assert j == i + 1 and 0 < int(spec.breakpoints[i]) - x < (1 << (t + 1)), (x, i, j)
    F = 1 << spec.f_in
    xr = np.asarray(xs, np.float64) / F
    sel = (xr >= freal[0]) & (xr < freal[1])
    with np.errstate(all="ignore"):
        err = np.abs(np.asarray(got, np.float64)[sel] - fn(xr[sel]) * (1 << spec.f_out))
    assert err.size == 0 or err.max() <= spec.max_error_ulps + 1 + 1e-9, (err.max(), spec.max_error_ulps)
    assert all(lg.rounds == g.cost().rounds for lg in logs)
    return got, js


def value_width(spec, xs, t):
    """Smallest w with every piece value the gate may compute inside TruncateNarrow's stated
    precondition -2^(w-2) <= p < 2^(w-2) - 2^s (checked on xs): x's own piece, and the upper
    neighbour within 2^(t+1) below a breakpoint (the only other piece the view can pick)."""
    s = spec.out_shift
    bps = [int(b) for b in spec.breakpoints]
    vals = []
    for x, i in zip(xs, true_pieces(spec, xs)):
        vals.append(poly(spec, i, x))
        if i < len(bps) and 0 < bps[i] - x < (1 << (t + 1)):
            vals.append(poly(spec, i + 1, x))
    lo, hi = min(vals), max(vals)
    w = 3
    while not (-(1 << (w - 2)) <= lo and hi < (1 << (w - 2)) - (1 << s) and s <= w - 3):
        w += 1
    return w


# ----------------------------------------------------------------------------- small widths, exhaustive in x
# (spec, n, view k, viewed): t = spec.view_shift > 0, or t = 0 (fitted without overlap)
SLOW = pytest.mark.slow
SMALL = [("gelu", 18, 10, True), ("gelu", 20, 9, True), ("gelu", 20, 11, True),
         pytest.param("gelu", 20, 12, True, marks=SLOW), ("gelu_noview", 20, 10, False),
         pytest.param("exp", 20, 13, True, marks=SLOW), ("exp", 20, 12, True),
         ("recip", 20, 13, True), pytest.param("recip", 20, 14, True, marks=SLOW),
         pytest.param("recip", 20, 15, True, marks=SLOW)]


def small_t(spec, viewed):
    assert (spec.view_shift > 0) == viewed
    return spec.view_shift


@pytest.mark.parametrize("name,n,k,viewed", SMALL)
def test_packed_lookup_view_exhaustive(name, n, k, viewed):
    """Every x in the view range, every breakpoint +-1, under forced and random masks: the
    lookup equals the piece the coarse view picks, exactly, at the full value width and at a
    value width below n (integer polynomials agree mod 2^w)."""
    spec, _, _ = make_spec(name, n)
    t = small_t(spec, viewed)
    g0 = PackedLookup(1, spec, view_bits=k)
    assert (g0.view_bits, g0.view_shift, g0.cmp_bits) == (k, t, k - t)
    lo, hi = view_range(k, t)
    xs = list(range(lo, hi))
    X, R = cross(xs, mask_sets(n, t, k, len(xs), b"lk-%d-%d" % (n, k), random_sets=2))
    js = check_lookup(PackedLookup(len(X), spec, view_bits=k), spec, X, R)
    assert any(j != i for j, i in zip(js, true_pieces(spec, X))) == (t > 0)
    w = value_width(spec, xs, t)
    assert w < n
    X2, R2 = cross(xs, mask_sets(n, t, k, len(xs), b"lkw-%d-%d" % (n, k))[2:5])
    check_lookup(PackedLookup(len(X2), spec, view_bits=k, value_bits=w), spec, X2, R2)
    check_lookup(PackedLookup(len(X2), spec, view_bits=k, value_bits=w - 4), spec, X2, R2)


#: (spec, n, k, proven real range, whether the walk gets cheaper): the range tighter than the
#: view on one side or both (exp: 16 pieces, more points than an arc walks: the trie walk's)
PROVEN = [("exp", 20, 14, (-20.0, 0.05), True), ("gelu", 20, 14, (-30.0, 24.5), False),
          ("recip", 20, 14, (0.9, 60.0), True), ("gelu", 20, 13, (-3.0, 3.0), True)]


@pytest.mark.parametrize("name,n,k,proven,cheaper", PROVEN)
def test_packed_lookup_pinned_to_the_proven_range(name, n, k, proven, cheaper):
    """Breakpoints past the proven range and the top/bottom cut pinned next to it: every x of
    the proven range (two coarse units past each end too), under forced and random masks, still
    gets the piece the coarse view picks against the spec's own breakpoints, exactly; and the
    comparison's points lie closer together, so the arc walk costs less."""
    spec, _, _ = make_spec(name, n)
    t = spec.view_shift
    plain, pinned = PackedLookup(1, spec, view_bits=k), PackedLookup(1, spec, view_bits=k, proven=proven)
    assert pinned.cmp_bps != plain.cmp_bps and pinned.view_shift == t
    assert (pinned.cost().aes < plain.cost().aes) == cheaper and pinned.cost().aes <= plain.cost().aes
    vlo, vhi = view_range(k, t)
    F = 1 << spec.f_in
    lo, hi = max(vlo, math.floor(proven[0] * F)), min(vhi, math.ceil(proven[1] * F) + 1)
    xs = list(range(lo, hi))
    X, R = cross(xs, mask_sets(n, t, k, len(xs), b"pin-%d-%d" % (n, k), random_sets=2))
    check_lookup(PackedLookup(len(X), spec, view_bits=k, proven=proven), spec, X, R)


def test_pinning_to_a_range_the_input_leaves_is_caught():
    """The check above can fail: a gate told a range that the inputs exceed picks wrong pieces."""
    spec, _, _ = make_spec("gelu", 20)
    t, k = spec.view_shift, 13
    xs = list(range(-3 * 64, 3 * 64))          # GELU's pieces span [-4, 4); inputs in [-3, 3)
    X, R = cross(xs, mask_sets(20, t, k, len(xs), b"pin-wrong", random_sets=1))
    with pytest.raises(AssertionError, match="wrong"):
        check_lookup(PackedLookup(len(X), spec, view_bits=k, proven=(-1.0, 1.0)), spec, X, R)


@pytest.mark.parametrize("name,n,k,viewed", SMALL)
@pytest.mark.parametrize("narrow", [True, False], ids=["narrow_out", "slack_out"])
def test_scalar_gate_view_exhaustive(name, n, k, viewed, narrow):
    spec, fn, freal = make_spec(name, n)
    t = small_t(spec, viewed)
    lo, hi = view_range(k, t)
    xs = list(range(lo, hi))
    w = value_width(spec, xs, t) if narrow else None
    X, R = cross(xs, mask_sets(n, t, k, len(xs), b"sg-%d-%d" % (n, k)))
    g = ScalarGate(len(X), spec, "packed", view_bits=k, out_view_bits=w)
    kinds = [type(st) for st in g.stages]
    assert kinds == [PackedLookup, TruncateNarrow if narrow else TruncateSlack]
    assert g.stages[0].out_bits == (w or n) and g.out_bits == n
    check_scalar(g, spec, fn, freal, X, R, narrow)


# ----------------------------------------------------------------------------- large widths
LARGE = [("gelu", n, k) for n in (37, 50, 64) for k in (15, 16, 20)] + [("gelu", 64, 64)] \
    + [("exp", n, k) for n in (37, 50, 64) for k in (18, 19)] \
    + [("recip", n, k) for n in (37, 50, 64) for k in (22, 23)]


@pytest.mark.parametrize("name,n,k", LARGE)
def test_scalar_gate_view_large_widths(name, n, k):
    spec, fn, freal = make_spec(name, n)
    g0 = PackedLookup(1, spec, view_bits=k)
    t = g0.view_shift
    assert t == (spec.view_shift if k < n else 0) and g0.cmp_bits == k - t
    lo, hi = view_range(k, t)
    if k == n:   # full width: the output's TruncateSlack needs the spec's exact range
        elo, ehi = ScalarGate(1, spec, "packed").exact_range
        lo, hi = max(lo, elo), min(hi, ehi + 1)
    rng = np.random.default_rng(n * 100 + k)
    xs = breakpoint_inputs(spec, t, lo, hi) + [lo, lo + 1, hi - 1, hi - 2, 0, 1, -1] \
        + [int(v) for v in rng.integers(lo, hi, 150)]
    X, R = cross(xs, mask_sets(n, t, k, len(xs), b"big-%d-%d-%s" % (n, k, name.encode())))
    check_lookup(PackedLookup(len(X), spec, view_bits=k), spec, X, R)
    w = value_width(spec, xs, t) if k < n else None
    g = ScalarGate(len(X), spec, "packed", view_bits=k, out_view_bits=w)
    check_scalar(g, spec, fn, freal, X, R, narrow=w is not None)


def test_gelu_breakpoints_outside_the_view_are_pinned():
    """GELU's +-4 (and +-3.5, +-3, +-2.5) lie outside a +-2 proven range: the comparison runs
    on 9 bits with those breakpoints pinned just outside the view, and the output is right."""
    n, f = 50, 12
    spec = gelu_spec(n, f)
    k = 15                                      # |x| < 2^13 - 2^6: just under +-2.0
    g = PackedLookup(1, spec, view_bits=k)
    t, m = g.view_shift, g.cmp_bits
    assert t == spec.view_shift == 6 and m == 9
    outside = [b for b in spec.breakpoints if not -(2 << f) <= b <= (2 << f)]
    assert min(spec.breakpoints) <= -(4 << f) and max(spec.breakpoints) >= 4 << f and len(outside) >= 6
    # the coarse comparison points that are not floor(b / 2^t) of an in-view breakpoint are pinned
    # at the edges of the m-bit signed range (|pinned| >= 2^(m-2)), never inside it
    h = 1 << (m - 2)
    cb = [(b if b < (1 << (m - 1)) else b - (1 << m)) for b in g.cmp_bps]
    inview = {int(b) >> t for b in spec.breakpoints if -h <= (int(b) >> t) < h}
    assert all(c in inview or abs(c) >= h or c == -(1 << (m - 1)) or c == 0 for c in cb)
    lo, hi = view_range(k, t)
    xs = list(range(lo, hi, 7)) + breakpoint_inputs(spec, t, lo, hi) + [lo, hi - 1]
    X, R = cross(xs, mask_sets(n, t, k, len(xs), b"pin"))
    check_lookup(PackedLookup(len(X), spec, view_bits=k), spec, X, R)
    check_scalar(ScalarGate(len(X), spec, "packed", view_bits=k, out_view_bits=value_width(spec, xs, t)),
                 spec, gelu, (-math.inf, math.inf), X, R, narrow=True)


# ----------------------------------------------------------------------------- costs
COST_CASES = [("gelu", 20, 10, None), ("gelu", 20, 11, "w"), ("gelu_noview", 20, 10, "w"),
              ("exp", 20, 13, "w"), ("recip", 20, 15, "w"), ("gelu", 50, 15, "w"), ("gelu", 50, 16, None),
              ("gelu", 64, 20, "w"), ("recip", 37, 22, "w"), ("gelu", 50, None, None)]


@pytest.mark.parametrize("name,n,k,wflag", COST_CASES)
def test_view_costs_are_measured(name, n, k, wflag):
    """key bits (from the real key arrays), AES (the backend's counter), rounds and bytes sent
    equal cost(), for the lookup alone and the whole ScalarGate."""
    from fusec.runtime import dpf

    spec, _, _ = make_spec(name, n)
    E = 64
    t = PackedLookup(1, spec, view_bits=k).view_shift
    lo, hi = view_range(k or n, t)
    xs = np.random.default_rng(5).integers(lo, hi, E)
    w = value_width(spec, [int(v) for v in np.linspace(lo, hi - 1, 4001).astype(np.int64)] + xs.tolist(), t) \
        if wflag else None
    lk = PackedLookup(E, spec, view_bits=k, value_bits=w)
    P, d, wb, m = lk.M - 1, spec.degree, w or n, lk.cmp_bits
    assert m == ((k - t) if k else n)
    # the formula, independently: a 1-bit DPF on the m-bit view, P + 1 words per power of -r
    # and the correlations in w bits; AES: the arc walk's plan, or past 16 points the trie walk's
    # (the backend's counter checks it)
    plain = lk.M * dpf.DpfKey.aes_per_eval(m)
    assert (lk.arc is None) == (lk.M > 16) and (lk.arc is None or lk.arc.aes_per_eval() <= plain)
    assert lk.trie is None or (lk.M > 16 and lk.trie.aes_per_eval() < plain)
    walk = lk.arc or lk.trie
    expect = GateCost(key_bits=dpf.DpfKey.key_bits(m) + P + P * wb + d * wb + P * d * wb + wb,
                      aes=walk.aes_per_eval() if walk else plain, rounds=2, open_bits=P + wb)
    assert lk.cost() == expect
    _, cost, _ = measure(lk, xs)
    assert cost == expect, (cost, expect)
    g = ScalarGate(E, spec, "packed", view_bits=k, out_view_bits=w)
    tail = TruncateNarrow(E, w, w, spec.out_shift, out_bits=n) if w else TruncateSlack(E, n, spec.out_shift)
    assert g.cost() == expect + tail.cost()
    _, cost, _ = measure(g, xs)
    assert cost == g.cost(), (cost, g.cost())
    if w:
        assert cost.aes == expect.aes and cost.rounds == 3 and cost.open_bits == P + wb + n


# ----------------------------------------------------------------------------- view_bits=None: the old gate
OLD_COMMIT = "4bb3784"   # the parent of the view change: PackedLookup/ScalarGate before views


def old_scalar_module():
    root = Path(__file__).resolve().parent.parent
    try:
        src = subprocess.run(["git", "show", f"{OLD_COMMIT}:runtime/gates/scalar.py"], cwd=root,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git not available")
    if src.returncode:
        pytest.skip(f"commit {OLD_COMMIT} not available")
    mod = types.ModuleType("fusec.runtime.gates._scalar_before_views")
    exec(compile(src.stdout, f"{OLD_COMMIT}:runtime/gates/scalar.py", "exec"), mod.__dict__)
    return mod


def same_keys(a, b):
    assert set(a) == set(b), set(a) ^ set(b)
    for name in a:
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name])), name


@pytest.mark.parametrize("name,n", [("gelu", 20), ("exp", 20), ("gelu", 50), ("recip", 64)])
def test_no_view_is_the_old_full_width_gate(name, n):
    """view_bits=None (and a view as wide as the ring) build exactly the gate before views:
    same stages, fields, cost, byte-identical keys from the same dealer stream, same outputs."""
    old = old_scalar_module()
    spec, _, _ = make_spec(name, n)
    E = 48
    elo, ehi = ScalarGate(1, spec, "packed").exact_range
    xs = np.concatenate([np.random.default_rng(n).integers(elo, ehi + 1, E - 4), [elo, ehi, 0, -1]])
    for lookup in ("packed", "auto"):
        gold = old.ScalarGate(E, spec, lookup)
        for kw in ({}, {"view_bits": None, "out_view_bits": None}, {"view_bits": n}):
            g = ScalarGate(E, spec, lookup, **kw)
            assert g.lookup == gold.lookup
            assert [type(st).__name__ for st in g.stages] == [type(st).__name__ for st in gold.stages]
            # the same gate but for its comparison's walk, which shares the points' tree prefixes
            assert g.fields() == gold.fields() and g.cost().aes <= gold.cost().aes
            assert dataclasses.replace(g.cost(), aes=0) == dataclasses.replace(gold.cost(), aes=0)
            if g.lookup == "packed":
                st = g.stages[0]
                assert (st.view_bits, st.view_shift, st.cmp_bits, st.out_bits) == (n, 0, n, n)
                assert st.cmp_bps == st.bps
            rin = DealerRng(b"old-in").ring(E, n)
            ro, k0o, k1o = gold.keygen(DealerRng(b"same-dealer"), [rin])
            rn, k0n, k1n = g.keygen(DealerRng(b"same-dealer"), [rin])
            assert np.array_equal(ro, rn)
            same_keys(k0o, k0n)
            same_keys(k1o, k1n)
            u = [ring.from_signed(xs, n)]
            got_old, _, _ = run_gate(gold, u, [n], rng=DealerRng(b"run"), in_masks=[rin])
            got_new, _, _ = run_gate(g, u, [n], rng=DealerRng(b"run"), in_masks=[rin])
            assert np.array_equal(got_old, got_new)
            assert np.array_equal(ring.to_signed(got_new, n), np.array([int(v) for v in spec.reference(xs)]))


def test_packed_lookup_bad_value_width():
    spec, _, _ = make_spec("gelu", 20)
    with pytest.raises(ParameterError):
        PackedLookup(1, spec, value_bits=21)


# ----------------------------------------------------------------------------- hand-written specs: the view's fallbacks
def toy_spec(bps, view_shift, n=16):
    """Arbitrary integer pieces (not a fit: neighbouring pieces really differ), so a wrongly
    chosen piece shows; the exact oracle says which piece the view must pick."""
    coeffs = tuple(((7 * i + 3) % 11 - 5, (i % 3) - 1, 1 if i % 2 else 0) for i in range(len(bps) + 1))
    centers = tuple(int(b) for b in bps[:1]) + tuple(int(b) for b in bps)
    return OperatorSpec("toy", n, 0, 0, tuple(bps), coeffs, centers, 0, view_shift=view_shift)


@pytest.mark.parametrize("bps,vs,k,t", [
    ((-40, 16, 40), 3, 10, 3),            # the coarse view works: t = view_shift
    ((-40, 1, 40), 3, 10, 0),             # a positive breakpoint below 2^t: compare on exact k bits
    ((-40, 16, 20, 40), 3, 10, 0),        # two breakpoints share floor(b / 2^t): exact k bits
    ((-300, -100, -8, 0, 8, 100, 300), 2, 9, 2),   # +-300 outside the view (pinned), +-100 inside
    ((-100, -60, 50, 90), 4, 8, 4),       # m = 4: one breakpoint pinned on each side
    ((-8, 70, 90, 110, 130), 4, 8, 0),    # m = 4: 4 >= 2^(m-2) breakpoints past the view: exact k bits
])
def test_toy_spec_view_and_fallbacks(bps, vs, k, t):
    spec = toy_spec(bps, vs)
    n = spec.n_in
    g0 = PackedLookup(1, spec, view_bits=k)
    assert (g0.view_bits, g0.view_shift, g0.cmp_bits) == (k, t, k - t)
    lo, hi = view_range(k, t)
    xs = list(range(lo, hi))
    X, R = cross(xs, mask_sets(n, t, k, len(xs), b"toy-%d" % len(bps), random_sets=4))
    js = check_lookup(PackedLookup(len(X), spec, view_bits=k, value_bits=12), spec, X, R)
    own = true_pieces(spec, X)
    if t == 0:
        assert js == own                  # the exact view picks every x's own piece
        got, _, _ = run_gate(ScalarGate(len(X), spec, "packed", view_bits=k),
                             [ring.from_signed(np.asarray(X, np.int64), n)], [n], in_masks=[np.asarray(R, np.uint64)])
        ref = [int(v) % (1 << n) for v in spec.reference(np.asarray(X, np.int64))]   # mod 2^n: toy values wrap
        assert [int(v) for v in got] == ref
    else:
        assert any(j != i for j, i in zip(js, own))   # the coarse view really does pick neighbours



# ----------------------------------------------------------------------------- outside the view: documented garbage
@pytest.mark.parametrize("name,n,k", [("gelu", 20, 10), ("gelu", 50, 15)])
def test_inputs_outside_the_view_can_be_wrong(name, n, k):
    """The view's precondition is the compiler's to prove: past it the comparison wraps (an
    input near +2^(k-1) looks like a negative one) and the output is far from the spec."""
    spec, _, _ = make_spec(name, n)
    t = PackedLookup(1, spec, view_bits=k).view_shift
    xs = [(1 << (k - 1)) - 1, (1 << (k - 1)) - (1 << (t + 2)), (1 << (k - 2)) + (1 << (t + 3)),
          -(1 << (k - 1)) - 5]
    X, R = cross(xs, mask_sets(n, t, k, len(xs), b"outside"))
    g = ScalarGate(len(X), spec, "packed", view_bits=k)
    got, _, _ = run_gate(g, [ring.from_signed(np.asarray(X, np.int64), n)], [n], in_masks=[np.asarray(R, np.uint64)])
    ref = [int(v) for v in spec.reference(np.asarray(X, np.int64))]
    far = [x for x, gv, rv in zip(X, signed_ints(got, n), ref) if abs(gv - rv) > spec.max_error_ulps + 1]
    assert far and (1 << (k - 1)) - 1 in far


# ----------------------------------------------------------------------------- when ScalarGate keeps the old output truncation
def test_scalar_gate_narrow_output_conditions():
    spec, _, _ = make_spec("gelu", 50)
    n, s = 50, spec.out_shift
    kinds = lambda g: [type(st).__name__ for st in g.stages]  # noqa: E731
    assert kinds(ScalarGate(8, spec, "packed", view_bits=15, out_view_bits=40)) == ["PackedLookup", "TruncateNarrow"]
    # an output view too narrow for the shift, wider than the ring or deferred: the full-width
    # TruncateSlack (or nothing) as before; a non-packed (n-bit) lookup truncates on the n-bit wire
    assert kinds(ScalarGate(8, spec, "packed", view_bits=15, out_view_bits=s + 2)) == ["PackedLookup", "TruncateSlack"]
    assert kinds(ScalarGate(8, spec, "packed", view_bits=15, out_view_bits=n + 1)) == ["PackedLookup", "TruncateSlack"]
    assert kinds(ScalarGate(8, spec, "packed", out_view_bits=40, defer_shift=True)) == ["PackedLookup"]
    g = ScalarGate(8, spec, "shifted", view_bits=15, out_view_bits=40)
    assert kinds(g) == ["SplineLookup", "TruncateNarrow"] and g.stages[1].bits == n and g.stages[1].view_bits == 40
    assert g.stages[0].cost() == ScalarGate(8, spec, "shifted").stages[0].cost()
    assert g.cost().key_bits < ScalarGate(8, spec, "shifted").cost().key_bits
    narrow = ScalarGate(8, spec, "packed", view_bits=15, out_view_bits=s + 3)
    assert kinds(narrow) == ["PackedLookup", "TruncateNarrow"] and narrow.stages[0].out_bits == s + 3
    # the narrow gate is much smaller than the full-width one
    assert ScalarGate(1, spec, "packed", view_bits=15, out_view_bits=40).cost().key_bits \
        < ScalarGate(1, spec, "packed").cost().key_bits / 2


# ============================================================================ MaxTreeNarrow
from fusec.runtime.gates.compare import MaxTreeNarrow  # noqa: E402


def _max_oracle(x: np.ndarray, s: int) -> np.ndarray:
    """Row maxima of floor(x / 2^s) with Python ints (the tree's values, before carries)."""
    return np.array([max(int(v) >> s for v in row) for row in x], dtype=np.int64)


def _check_max(n: int, k: int, s: int, x: np.ndarray, masks=None, lookup: str = "shifted", widen: bool = True,
               packed_levels: int | None = None):
    """Run MaxTreeNarrow on rows x (signed, |x| < 2^(k-4) so the truncated values keep the
    slack); exact for s = 0, within one ulp above for s > 0 (each truncation's carry).
    Unwidened (``widen=False``), the result is only right mod 2^(k - s): compared there."""
    g = MaxTreeNarrow(x.shape, n, 1, k, pre_shift=s, lookup=lookup, widen=widen, packed_levels=packed_levels)
    got, cost, logs = measure_gate(g, x.reshape(-1), n, masks=masks)
    d = got.reshape(-1) - _max_oracle(x, s)
    if not widen:
        m = k - s
        d = ((d + (1 << (m - 1))) % (1 << m)) - (1 << (m - 1))     # the difference mod 2^m, centred
        assert g.out_bits == m
    assert (d == 0).all() if s == 0 else ((d >= 0) & (d <= 1)).all(), (n, k, s, d)
    want = g.cost()
    assert (cost.key_bits, cost.aes, cost.rounds) == (want.key_bits, want.aes, want.rounds)
    packed = (0 if lookup == "shifted" else len(g.levels)) if packed_levels is None else packed_levels
    assert logs[0].rounds == len(g.levels) + packed + int(widen)


@pytest.mark.parametrize("packed_levels", [1, 2, 3])
@pytest.mark.parametrize("n,k,s", [(12, 8, 0), (50, 20, 3), (64, 30, 0)])
def test_max_tree_narrow_with_its_first_levels_packed(n, k, s, packed_levels):
    """The first levels packed, the rest shifted: the max of each row (rows of 7, with an odd
    element carried past a level) under random and forced masks, and the measured key, AES and
    rounds equal cost()."""
    rng = np.random.default_rng(n + k + packed_levels)
    q = 1 << (k - 4)
    x = rng.integers(-q, q, size=(40, 7))
    x[0], x[1, :2] = q - 1, (-q, q - 1)
    g = MaxTreeNarrow(x.shape, n, 1, k, pre_shift=s, packed_levels=packed_levels)
    assert g.lookup == (f"packed {packed_levels}/3" if packed_levels < 3 else "packed")
    _check_max(n, k, s, x, packed_levels=packed_levels)
    for m in forced_masks((x.size,), n):
        _check_max(n, k, s, x, masks=[m], packed_levels=packed_levels, widen=False)


@pytest.mark.parametrize("widen", [True, False], ids=["widened", "unwidened"])
@pytest.mark.parametrize("lookup", MaxTreeNarrow.LOOKUPS)
@pytest.mark.parametrize("s", [0, 2])
def test_max_tree_narrow_every_pair_small(s, lookup, widen):
    """Every pair (a, b) of the valid range at n = 12, k = 8, under random and forced masks."""
    n, k = 12, 8
    q = 1 << (k - 4)
    vals = np.arange(-q, q)
    x = np.stack(np.meshgrid(vals, vals, indexing="ij"), axis=-1).reshape(-1, 2)
    _check_max(n, k, s, x, lookup=lookup, widen=widen)
    for m in forced_masks((x.size,), n):
        _check_max(n, k, s, x, masks=[m], lookup=lookup, widen=widen)


@pytest.mark.parametrize("widen", [True, False], ids=["widened", "unwidened"])
@pytest.mark.parametrize("lookup", MaxTreeNarrow.LOOKUPS)
@pytest.mark.parametrize("n", [37, 50, 64])
@pytest.mark.parametrize("s", [0, 12])
def test_max_tree_narrow_random_wide(n, s, lookup, widen):
    k = 30
    rng = np.random.default_rng(n + s)
    q = 1 << (k - 4)
    x = rng.integers(-q, q, size=(7, 13))
    x[0] = q - 1
    x[1] = -q
    x[2, :2] = (-q, q - 1)
    _check_max(n, k, s, x, lookup=lookup, widen=widen)
    for m in forced_masks((x.size,), n):
        _check_max(n, k, s, x, masks=[m], lookup=lookup, widen=widen)


def test_a_max_tree_with_its_first_level_packed_on_the_gpu_backends_host_kernels():
    """The GPU backend's own code (round packing, the DPF and DCF kernels) over the host build
    of the kernels: a tree with its first level packed gives the rows' maxima, at cost()."""
    import tempfile

    from fusec.codegen import cuda
    from tests.fakedevice import host_kernel_backend

    if cuda.nvcc_path() is None:
        pytest.skip("nvcc (CUDA toolkit) not found: cannot build the host kernels")
    src = cuda.render(cuda.default_config())
    be = host_kernel_backend(src, cuda.compile_host_library(src, tempfile.mkdtemp()))()
    n, k = 50, 20
    x = np.random.default_rng(9).integers(-(1 << (k - 4)), 1 << (k - 4), size=(33, 8))
    g = MaxTreeNarrow(x.shape, n, 1, k, packed_levels=1)
    got, cost, logs = measure_gate(g, x.reshape(-1), n, be=be)
    assert got.reshape(-1).tolist() == _max_oracle(x, 0).tolist()
    assert (cost.key_bits, cost.aes, cost.rounds) == (g.cost().key_bits, g.cost().aes, g.cost().rounds) \
        and logs[0].rounds == 3 + 1 + 1


def test_the_packed_max_tree_trades_a_round_per_level_for_aes_and_key():
    """The packed comparison: two rounds a level, a third of the AES, about half the key."""
    sh, pk = (MaxTreeNarrow((16, 128), 50, 1, 20, lookup=lk).cost() for lk in MaxTreeNarrow.LOOKUPS)
    assert pk.rounds == sh.rounds + 7                    # ceil(log2 128) levels
    assert pk.aes < sh.aes / 2.5 and pk.key_bits < 0.6 * sh.key_bits
    with pytest.raises(ParameterError, match="unknown lookup"):
        MaxTreeNarrow((2, 4), 50, 1, 8, lookup="pieces")
    with pytest.raises(ParameterError, match="3 packed levels in a tree of 2"):
        MaxTreeNarrow((2, 4), 50, 1, 8, packed_levels=3)


def test_max_tree_narrow_rejects_bad_views():
    with pytest.raises(ParameterError):
        MaxTreeNarrow((2, 4), 50, 1, 3)
    with pytest.raises(ParameterError):
        MaxTreeNarrow((2, 4), 50, 1, 50)
