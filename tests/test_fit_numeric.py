"""The fast fitting kernels (ir/fit_numeric.py, ir/spec.py's plan/finish/memo) against the
plain computations they replace: numpy's own ``Chebyshev.fit`` + ``convert``, Python-int
evaluation (``OperatorSpec.reference``), a per-step bisection of ``exact_input_range``
written from its definition, and fresh fits for every memoised one. A memo or cache that
hands one domain's spec to another must fail here.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from fusec.ir.fit_numeric import chebyshev_power_coeffs, floor_values
from fusec.ir.nonlinear import fit_domain
from fusec.ir.spec import FitRequest, OperatorSpec, Tail, error_floor, finish, fit, plan
from fusec.passes.fit_specs import _price, search


def _numpy_fit(t, y, deg):
    poly = np.polynomial.chebyshev.Chebyshev.fit(t, y, deg, domain=[-1, 1]).convert(
        kind=np.polynomial.Polynomial).coef
    return np.pad(poly, (0, deg + 1 - len(poly)))


@pytest.mark.parametrize("deg", [0, 1, 2, 3, 4, 5])
def test_chebyshev_coefficients_are_numpys_bit_for_bit(deg):
    rng = np.random.default_rng(deg)
    for trial in range(40):
        m = int(rng.integers(deg + 1, 3000))
        t = np.sort(rng.uniform(-1, 1, m))
        y = np.exp(3 * t) * rng.uniform(-5, 5) + rng.normal(0, 1e-3, m) * (trial % 2)
        if trial % 7 == 0:
            y = y * 1e30                          # large values: the sums' rounding must match too
        if trial % 11 == 0:
            y = np.full(m, -0.0)                  # signed zeros
        got, want = chebyshev_power_coeffs(t, y, deg), _numpy_fit(t, y, deg)
        assert got.shape == want.shape
        assert np.array_equal(got, want), (deg, trial, got - want)


def _python_values(coeffs, centers, shift, piece, xs):
    return np.array([float(sum(int(c) * (int(x) - int(centers[p])) ** k for k, c in enumerate(coeffs[p])) >> shift)
                     for p, x in zip(piece, xs)])


def test_floor_values_equal_python_integers_in_both_paths():
    rng = np.random.default_rng(1)
    # small pieces (int64 path), pieces whose bound passes 2^60 (Python-int path), negative values
    coeffs = [(int(rng.integers(-2 ** 40, 2 ** 40)), int(rng.integers(-2 ** 20, 2 ** 20))),
              (3, -7, 11, -13),
              (2 ** 70 + 5, -(2 ** 66), 2 ** 40),
              (-(2 ** 55), 2 ** 30, -(2 ** 12), 17)]
    centers = [0, 1000, -(2 ** 40), 2 ** 30]
    xs = np.concatenate([rng.integers(-2 ** 35, 2 ** 35, 3000), [0, 1, -1, 2 ** 40, -(2 ** 40)]]).astype(np.int64)
    piece = rng.integers(0, len(coeffs), len(xs))
    for shift in (0, 1, 13, 37):
        got = floor_values(coeffs, centers, shift, piece, xs)
        assert np.array_equal(got, _python_values(coeffs, centers, shift, piece, xs)), shift


def test_floor_values_match_the_spec_reference():
    gelu = lambda x: 0.5 * x * (1 + np.tanh(0.79788456 * (x + 0.044715 * x ** 3)))  # noqa: E731
    spec = fit(FitRequest("gelu", gelu, -4, 4, pieces=16, degree=3, n_in=50, right=Tail(1.0)))
    xs = np.arange(-5 * 4096, 5 * 4096, 7, dtype=np.int64)
    piece = np.searchsorted(np.asarray(spec.breakpoints, np.int64), xs, side="right")
    want = np.array([float(int(v)) for v in spec.reference(xs)])
    assert np.array_equal(floor_values(spec.coeffs, spec.centers, spec.out_shift, piece, xs), want)


def _range_by_definition(spec: OperatorSpec, n: int, headroom: int) -> tuple[int, int]:
    """The bisection as specified: every piece meeting [lo, hi] checked at its clipped ends and
    clipped centre, per step (no precomputation)."""
    limit = 1 << (n - headroom)
    full = [-(1 << (spec.n_in - 1))] + list(spec.breakpoints) + [(1 << (spec.n_in - 1)) - 1]

    def fits(lo, hi):
        for i, c in enumerate(spec.coeffs):
            a, b = max(full[i], lo), min(full[i + 1], hi)
            if a > b:
                continue
            for x in {a, b, min(max(spec.centers[i], a), b)}:
                if abs(sum(int(ck) * (x - spec.centers[i]) ** k for k, ck in enumerate(c))) >= limit:
                    return False
        return True

    def side(sign):
        good, bad = 0, 1 << (spec.n_in - 1)
        while bad - good > 1:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if (fits(-mid, 0) if sign < 0 else fits(0, mid)) else (good, mid)
        return good
    return -side(-1), side(1)


@pytest.mark.parametrize("n", [30, 37, 50])
def test_exact_input_range_matches_its_definition(n):
    rng = np.random.default_rng(n)
    fns = [(np.exp, -16.0, 0.0, Tail(), Tail(0.0, 1.0)), (lambda x: x ** 3 - x, -6.0, 9.0, Tail(), Tail()),
           (lambda x: 0.5 * x * (1 + np.tanh(x)), -4.0, 4.0, Tail(), Tail(1.0))]
    for f, lo, hi, left, right in fns:
        for pieces, deg in ((4, 2), (16, 1), (33, 3)):
            try:
                spec = fit(FitRequest("f", f, lo, hi, pieces=pieces, degree=deg, n_in=n, f_in=8, f_out=8,
                                      left=left, right=right))
            except Exception:  # noqa: BLE001  (a shape the ring cannot hold: nothing to compare)
                continue
            for headroom in (1, 2, 5):
                assert spec.exact_input_range(n, headroom) == _range_by_definition(spec, n, headroom)
    # random coefficients: ranges cut inside pieces, not only at breakpoints
    for trial in range(20):
        bps = tuple(sorted(set(int(v) for v in rng.integers(-2 ** 20, 2 ** 20, 6))))
        coeffs = tuple(tuple(int(v) for v in rng.integers(-2 ** 12, 2 ** 12, 3)) for _ in range(len(bps) + 1))
        centers = tuple(int(v) for v in rng.integers(-2 ** 20, 2 ** 20, len(bps) + 1))
        spec = OperatorSpec("r", 40, 8, 8, bps, coeffs, centers, 8)
        assert spec.exact_input_range(36, 2) == _range_by_definition(spec, 36, 2), trial


def _rsqrt_request(lo, hi, pieces, degree, f_out=12, f_in=12):
    """A layer norm's rsqrt (1/sqrt of the mean of squares, scaled) on geometric pieces."""
    fn = lambda x: (x * 0.000578704 + 1e-12) ** -0.5 * 0.666667  # noqa: E731
    bps = np.unique(np.ceil(np.geomspace(lo, hi, pieces + 1) * 2.0 ** f_in))
    bps = [float(c) / 2.0 ** f_in for c in bps if lo * 2.0 ** f_in < c < hi * 2.0 ** f_in]
    return FitRequest("rsqrt", fn, lo, hi, pieces=pieces, degree=degree, n_in=50, f_in=f_in, f_out=f_out,
                      left=Tail(0.0, float(fn(np.asarray([lo]))[0])), breakpoints=bps, valid=(0.0, hi))


def test_a_memo_shared_across_domains_gives_each_its_own_fit():
    """One memo across two domains and three degrees: every spec equals a fresh fit of its
    own request (the memo keys on the domain, not only on the shape)."""
    memo: dict = {}
    fn = _rsqrt_request(1.0, 2.0, 4, 1).fn
    for lo, hi in ((2.0 ** -12, 512.0), (2.0 ** -12, 640.0), (1.0, 512.0)):
        for degree in (1, 2, 3):
            req = _rsqrt_request(lo, hi, 8, degree, f_out=13, f_in=24)
            req.fn = fn                           # the same function object: only the domain differs
            got = finish(plan(req), memo)
            want = fit(req)
            assert got.to_dict() == want.to_dict(), (lo, hi, degree)
            assert got.fit_range == (lo, hi)
    assert len(memo) < 9                          # capped degrees did share fits


def test_a_plans_skeleton_prices_like_the_spec():
    for req in (_rsqrt_request(2.0 ** -12, 512.0, 64, 2), _rsqrt_request(0.5, 160.0, 32, 3, f_out=18),
                FitRequest("exp", np.exp, -16, 0, pieces=12, degree=2, right=Tail(0.0, 1.0))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = plan(req)
            assert _price(p.skeleton()) == _price(finish(p))


def test_searches_on_different_domains_do_not_share_specs():
    """Two searches for the same function on different ranges: each spec is fitted on its own
    range and is within its stated error there, checked point by point against the function."""
    fn = lambda x: 1 / np.sqrt(x)  # noqa: E731
    specs = []
    for hi in (64.0, 4096.0):
        dom = fit_domain("rsqrt", fn, 12, (1.0, hi), 12, (0.0, hi), {"ring_bits": 50})
        bound = 8.0 * max(1.0, abs(dom.left.offset))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            best, acc = search("rsqrt", fn, dom, 50, 12, 12, bound, (0.0, hi))
        spec = best or acc
        assert spec.fit_range == (dom.lo, dom.hi)
        xi = np.unique(np.floor(np.geomspace(1.0, hi, 4000) * 2 ** 12)).astype(np.int64)
        got = np.array([int(v) for v in spec.reference(xi)], np.float64)
        want = fn(xi / 2 ** 12) * 2 ** 12
        rel = np.abs(got - want) * abs(dom.left.offset) / np.maximum(1.0, want / 2 ** 12)
        assert rel.max() <= spec.max_error_ulps * (1 + 1e-9) + 1e-9
        specs.append(spec)
    assert specs[0].breakpoints != specs[1].breakpoints
    # the narrow range's spec is wrong on the wide range: a reuse there would be caught above
    xi = np.unique(np.floor(np.geomspace(64.0, 4096.0, 2000) * 2 ** 12)).astype(np.int64)
    got = np.array([int(v) for v in specs[0].reference(xi)], np.float64)
    assert np.abs(got - fn(xi / 2 ** 12) * 2 ** 12).max() > 10 * specs[1].max_error_ulps / abs(math.sqrt(2 ** 12))


def test_gates_with_one_function_and_different_ranges_get_their_own_specs():
    """``fit_specs.choose`` caches searches across gates: two gates computing the same
    function on different proven ranges must each get a spec right on their own range
    (a cache keyed on the function alone would give the second gate the first's spec)."""
    from fusec.ir import scalar_fn
    from fusec.ir.graph import Node
    from fusec.passes.fit_specs import choose
    from fusec.passes.options import CompileOptions

    opts = CompileOptions()
    fnj = scalar_fn.unary("Log", label="custom")
    for lo, hi in ((1.0, 4.0), (1.0, 100.0), (1.0, 4.0)):
        node = Node(f"log_{hi}", "Scalar", ["x"], ["y"], {"fn": fnj, "label": "custom"})
        spec, _, dom, bound = choose(node, (lo, hi), 12, 12, opts, (lo, hi))
        assert dom.lo <= lo and dom.hi >= hi and spec.fit_range == (dom.lo, dom.hi)
        xi = np.arange(int(lo * 2 ** 12), int(hi * 2 ** 12), 3, dtype=np.int64)
        got = np.array([int(v) for v in spec.reference(xi)], np.float64)
        err = np.abs(got - np.log(xi / 2 ** 12) * 2 ** 12)
        assert err.max() <= max(bound, spec.max_error_ulps) + 1e-9, (lo, hi, err.max())


def _search_by_brute_force(name, fn, dom, n, f_in, f_out, bound, valid):
    """Every shape fitted in full: (cheapest within the bound, earliest first; else the most
    accurate, earliest first), as ``search`` promises."""
    from fusec.passes.fit_specs import CANDIDATES, SPREAD_CANDIDATES, _fit_one, _price_floor
    shapes = [(d, p, False) for d, p in CANDIDATES]
    if not dom.geometric:
        shapes += [(d, p, True) for d, p in SPREAD_CANDIDATES]
    shapes.sort(key=lambda s: _price_floor(s[0], s[1], n))
    specs = []
    for d, p, spread in shapes:
        try:
            specs.append(_fit_one(name, fn, dom, d, p, n, f_in, f_out, valid, spread))
        except Exception:  # noqa: BLE001  (a shape the ring cannot hold)
            continue
    ok = [s for s in specs if s.max_error_ulps <= bound]
    if ok:
        return min(ok, key=_price), None      # min keeps the earliest of equal prices
    return None, min(specs, key=lambda s: s.max_error_ulps) if specs else None


@pytest.mark.parametrize("case", ["rsqrt-none-within", "rsqrt-found-late", "reciprocal", "gelu"])
def test_search_shortcuts_choose_what_fitting_every_shape_chooses(case):
    """The skips (price, memo, error floor under an early-fitted ceiling) change nothing: the
    result is the brute force's (the spec itself, notes included)."""
    from fusec.ir.nonlinear import NONLINEAR
    if case.startswith("rsqrt"):
        fn = _rsqrt_request(1.0, 2.0, 4, 1).fn
        hi, f_in = (5.0e7, 15) if case == "rsqrt-none-within" else (64.0, 12)
        dom = fit_domain("rsqrt", fn, 12, (1.0, hi), 12, (0.0, hi), {"ring_bits": 50})
        args = (fn, dom, 50, f_in, 12, 8.0 * abs(dom.left.offset), (-2.0 ** -11, hi))
    elif case == "reciprocal":
        fn = lambda x: 1.0 / x  # noqa: E731
        dom = fit_domain("reciprocal", fn, 12, (1.0, 146.0), 12, (1.0, 146.0), {"ring_bits": 50, "domain": [1.0, 146.0]})
        args = (fn, dom, 50, 12, 18, 8.0 * 64 * abs(dom.left.offset), (0.9995, 146.0005))
    else:
        fn = lambda x: NONLINEAR["gelu"].ref(np.asarray(x, np.float64))  # noqa: E731
        dom = fit_domain("gelu", fn, 12, (-3.0, 3.0), 12, None, {"ring_bits": 50})
        args = (fn, dom, 50, 24, 12, 8.0, (-28.0, 28.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best, acc = search(case, *args)
        want_best, want_acc = _search_by_brute_force(case, *args)
    assert (best is None) == (want_best is None)
    if want_best is not None:
        assert best.to_dict() == want_best.to_dict()
    else:
        assert acc.to_dict() == want_acc.to_dict()
    if case == "rsqrt-none-within":
        assert want_best is None                  # the case where every shape had to be fitted before


def test_the_error_floor_is_below_the_measured_error():
    fn = _rsqrt_request(1.0, 2.0, 4, 1).fn
    for pieces, degree in ((4, 1), (16, 2), (64, 1), (128, 3)):
        req = _rsqrt_request(2.0 ** -12, 5.0e7, pieces, degree, f_out=12, f_in=15)
        req.fn = fn
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                spec = fit(req)
            except Exception:  # noqa: BLE001
                continue
            p = plan(req)
            for x in (1, 100, 2 ** 20, 2 ** 30, 2 ** 40):
                assert error_floor(p, x) <= spec.max_error_ulps
            fresh = plan(req)
            finish(fresh)
            assert error_floor(p, fresh.worst_at) == spec.max_error_ulps   # the worst piece is among those checked


@pytest.mark.parametrize("f_in", [12, 15])
def test_feasibility_answers_what_the_full_search_finds(f_in):
    """``any_within`` (the scale pass's probe) is true exactly when ``search`` finds a spec
    within the bound, for bounds on both sides of what the shapes reach."""
    from fusec.passes.fit_specs import any_within
    fn = _rsqrt_request(1.0, 2.0, 4, 1).fn
    dom = fit_domain("rsqrt", fn, 12, (1.0, 5.0e7), 12, (0.0, 5.0e7), {"ring_bits": 50})
    answers = set()
    for f_out, scale in ((12, 0.5), (12, 1.0), (13, 1.0), (16, 1.0), (16, 4.0), (18, 8.0)):
        bound = 8.0 * 2.0 ** (f_out - 12) * abs(dom.left.offset) * scale
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = search("rsqrt", fn, dom, 50, f_in, f_out, bound, (-2.0 ** -11, 5.0e7))[0] is not None
            got = any_within("rsqrt", fn, dom, 50, f_in, f_out, bound, (-2.0 ** -11, 5.0e7))
        assert got == want, (f_out, scale)
        answers.add(got)
    assert answers == {True, False}


def test_remembered_pieces_serve_only_the_same_function_grid_and_cuts():
    """``ir.spec._PIECES`` keeps each piece's polynomial across fits: a fit after others (other
    output scales, another function on the same cuts, another input grid) equals the same fit
    with nothing remembered."""
    from fusec.ir import spec as spec_mod
    f1 = _rsqrt_request(1.0, 2.0, 4, 1).fn
    f2 = lambda x: 2.0 * f1(x)  # noqa: E731
    reqs = []
    for fn in (f1, f2):
        for f_out, f_in in ((12, 12), (14, 12), (16, 12), (12, 15)):
            r = _rsqrt_request(2.0 ** -12, 5.0e7, 64, 2, f_out=f_out, f_in=f_in)
            r.fn = fn
            reqs.append(r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm = [fit(r) for r in reqs]
        for r, got in zip(reqs, warm):
            spec_mod._PIECES.clear()
            assert got.to_dict() == fit(r).to_dict()
