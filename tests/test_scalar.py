"""The compiled ScalarGate and the piece-table spline, against exact integer oracles."""
import math
import warnings

import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.ir.spec import FitRequest, OperatorSpec, Tail, fit
from fusec.runtime import ring
from fusec.runtime.backend import get_backend
from fusec.runtime.gates.scalar import ScalarGate, SplineLookup, _lookup
from fusec.runtime.rng import DealerRng
from tests.harness import forced_masks, run_gate


def poly_oracle(spec: OperatorSpec, x_unsigned: np.ndarray, bits: int) -> np.ndarray:
    """Independent evaluation: find the piece by Python comparisons, evaluate with Python ints."""
    full = [-(1 << (spec.n_in - 1))] + list(spec.breakpoints) + [1 << (spec.n_in - 1)]
    out = []
    for xu in x_unsigned.tolist():
        xs = xu - (1 << spec.n_in) if xu >= 1 << (spec.n_in - 1) else xu
        i = next(j for j in range(spec.pieces) if full[j] <= xs < full[j + 1])
        v = sum(c * (xs - spec.centers[i]) ** k for k, c in enumerate(spec.coeffs[i]))
        out.append(v % (1 << bits))
    return np.array(out, dtype=np.uint64)


SMALL_SPEC = {n: OperatorSpec("toy", n, 0, 0, (-3, 0, 2), ((1, 2), (5,), (0, 1, 1), (3, -1)), (0, 0, 1, 1), 0)
              for n in (4, 6)}


@pytest.mark.parametrize("n", [4, 6])
@pytest.mark.parametrize("lookup", ["shifted", "pieces", "packed"])
def test_spline_exhaustive_all_masks(n, lookup):
    spec = SMALL_SPEC[n]
    xs = np.arange(2 ** n, dtype=np.uint64)
    expect = poly_oracle(spec, xs, n)
    for r in range(2 ** n):
        got, _, logs = run_gate(_lookup(xs.size, spec, lookup, True), [xs], [n],
                                in_masks=[np.full(xs.size, r, np.uint64)])
        assert np.array_equal(got, expect), f"r={r}"
    assert logs[0].rounds == (2 if lookup == "packed" else 1)


@pytest.mark.parametrize("lookup", ["shifted", "packed"])
def test_hundreds_of_pieces_as_a_norms_rsqrt_has(lookup):
    """A 480-piece degree-1 spec (a layer norm's rsqrt shape, which the compiler packs where
    that saves AES): cuts and their neighbours, random values, both ends."""
    n, f, pieces = 50, 12, 480
    rng = np.random.default_rng(480)
    cuts = np.sort(rng.permutation(np.unique(rng.integers(1, 1 << 30, 2 * pieces)))[:pieces - 1])
    spec = OperatorSpec("many", n, f, f, tuple(int(c) for c in cuts),
                        tuple((int(rng.integers(-1 << 30, 1 << 30)), int(rng.integers(-8, 9))) for _ in range(pieces)),
                        (0,) + tuple(int(c) for c in cuts), f)
    near = rng.choice(cuts, 40, replace=False)
    xs_signed = np.concatenate([near - 1, near, rng.integers(-(1 << 31), 1 << 31, 40), [0, -1, cuts[0], cuts[-1]]])
    xs = ring.from_signed(xs_signed, n)
    expect = poly_oracle(spec, xs, n)
    for masks in [None] + [[m] for m in forced_masks(xs.shape, n)]:     # random, 0, 2^n - 1, 2^(n-1)
        got, _, logs = run_gate(_lookup(xs.size, spec, lookup, True), [xs], [n], in_masks=masks)
        assert np.array_equal(got, expect)
    assert logs[0].rounds == (2 if lookup == "packed" else 1)


def gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


@pytest.mark.parametrize("n", [37, 50, 64])
@pytest.mark.parametrize("lookup", ["shifted", "pieces", "packed"])
def test_spline_random_and_forced_masks(n, lookup):
    # a 37-bit ring cannot hold quadratic pieces at the scale they need: linear ones there
    pieces, degree = (6, 2) if n >= 50 else (24, 1)
    spec = fit(FitRequest("gelu", gelu, -4, 4, pieces=pieces, degree=degree, n_in=n, f_in=12, f_out=12, right=Tail(1.0)))
    rng = np.random.default_rng(n)
    xs_signed = np.concatenate([rng.integers(-6 << 12, 6 << 12, 200), [0, -1, 1, -(4 << 12), 4 << 12, (4 << 12) - 1]])
    xs = ring.from_signed(xs_signed, n)
    expect = poly_oracle(spec, xs, n)
    for masks in [None] + [[m] for m in forced_masks(xs.shape, n)]:
        got, _, _ = run_gate(_lookup(xs.size, spec, lookup, True), [xs], [n], in_masks=masks)
        assert np.array_equal(got, expect)


@pytest.mark.parametrize("lookup", ["shifted", "pieces", "packed"])
def test_scalar_gate_gelu_matches_spec_and_float(lookup):
    n, f = 50, 12
    spec = fit(FitRequest("gelu", gelu, -4, 4, pieces=16, degree=2, n_in=n, f_in=f, f_out=f, right=Tail(1.0)))
    x = np.linspace(-10, 10, 801)
    xi = np.rint(x * 2 ** f).astype(np.int64)
    got, _, logs = run_gate(ScalarGate(xi.size, spec, lookup), [ring.from_signed(xi, n)], [n])
    got_s = ring.to_signed(got, n)
    # exact: the spec's own integer semantics (Python ints, floor of the shifted polynomial)
    want = np.array([int(v) for v in spec.reference(xi)])
    assert np.array_equal(got_s, want)
    # and within the fitted error bound (+1 ulp for the input's rounding) of real GELU
    err = np.abs(got_s / 2 ** f - gelu(xi / 2 ** f)) * 2 ** f
    assert err.max() <= spec.max_error_ulps + 1
    assert logs[0].rounds == ScalarGate(1, spec, lookup).cost().rounds == (3 if lookup == "packed" else 2)


def test_costs_match_code():
    n = 50
    spec = fit(FitRequest("gelu", gelu, -4, 4, pieces=8, degree=2, n_in=n, right=Tail(1.0)))
    for lookup in ("shifted", "pieces", "packed"):
        g = ScalarGate(64, spec, lookup)
        assert g.key_bits_total() == g.cost().key_bits * 64
        rng = DealerRng()
        _, k0, _ = g.keygen(rng, [rng.ring(64, n)])
        for name, shape, bits in g.fields():
            assert k0[name].shape == tuple(shape) and int(k0[name].max(initial=0)) < (1 << bits), name
        be = get_backend("cpu")
        before = be.aes_calls
        gen = g.stages[0].eval(0, {k[2:]: v for k, v in k0.items() if k.startswith("0.")}, [rng.ring(64, n)], be)
        next(gen)   # all FSS evaluation happens before the first open
        assert be.aes_calls - before == g.stages[0].cost().aes * 64
    # the compiled gate's key is independent of the number of pieces; the piece table is not
    one = ScalarGate(1, spec, "shifted").cost().key_bits
    table = ScalarGate(1, spec, "pieces").cost().key_bits
    assert table > 5 * one


def test_padded_shapes_never_depend_on_masks_unpadded_do():
    n = 4
    spec = SMALL_SPEC[n]
    padded, unpadded = set(), set()
    for r in range(2 ** n):
        g = SplineLookup(3, spec, "pieces", pad=True)
        _, k0, _ = g.keygen(DealerRng(), [np.full(3, r, np.uint64)])
        padded.add(tuple(v.shape for v in k0.values()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = SplineLookup(3, spec, "pieces", pad=False)
        _, k0, _ = g.keygen(DealerRng(), [np.full(3, r, np.uint64)])
        # unpadded, the reservation is fixed but the set records the keyed count K
        unpadded.add((tuple(v.shape for v in k0.values()), int(k0["pieces_used"])))
    assert len(padded) == 1
    assert len(unpadded) == 2   # which is exactly the leak padding prevents


def test_insecure_flag_warns_loudly():
    with pytest.warns(UserWarning, match="INSECURE"):
        SplineLookup(1, SMALL_SPEC[4], "pieces", pad=False)
    with pytest.raises(ParameterError):
        SplineLookup(1, SMALL_SPEC[4], "shifted", pad=False)


def test_fit_error_is_measured_not_claimed():
    spec = fit(FitRequest("silu", lambda x: x / (1 + np.exp(-x)), -8, 8, pieces=16, degree=2, right=Tail(1.0)))
    xi = np.arange(-8 << 12, 8 << 12, 7)
    got = np.array([int(v) for v in spec.reference(xi)]) / 2 ** 12
    want = xi / 2 ** 12 / (1 + np.exp(-xi / 2 ** 12))
    assert np.max(np.abs(got - want)) * 2 ** 12 <= spec.max_error_ulps + 1e-9
    assert OperatorSpec.from_dict(spec.to_dict()) == spec


def test_bad_specs():
    with pytest.raises(ParameterError):
        OperatorSpec("bad", 8, 0, 0, (3, 1), ((0,), (0,), (0,)), (0, 0, 0), 0)
    with pytest.raises(ParameterError):
        OperatorSpec("bad", 8, 0, 0, (1,), ((0,),), (0,), 0)
    with pytest.raises(ParameterError):
        SplineLookup(0, SMALL_SPEC[4])


@pytest.mark.parametrize("n", [5, 37, 64])
def test_one_round_relu(n):
    from fusec.ir.spec import relu_spec
    spec = relu_spec(n, 0)
    if n == 5:
        xs = np.arange(32, dtype=np.uint64)
        mask_sets = [[np.full(32, r, np.uint64)] for r in range(32)]
    else:
        xs = np.random.default_rng(n).integers(0, 2 ** 63, 300, dtype=np.uint64) & ring.mask(n)
        mask_sets = [None] + [[m] for m in forced_masks(xs.shape, n)]
    xs_s = ring.to_signed(xs, n)
    expect = ring.from_signed(np.where(xs_s > 0, xs_s, 0), n)
    for masks in mask_sets:
        got, _, logs = run_gate(ScalarGate(xs.size, spec, "shifted"), [xs], [n], in_masks=masks)
        assert np.array_equal(got, expect)
        assert logs[0].rounds == 1


def test_exact_range_is_tight():
    """Inside exact_range the gate equals the spec; the bound is where the slack runs out."""
    n, f = 50, 12
    spec = fit(FitRequest("gelu", gelu, -4, 4, pieces=4, degree=2, n_in=n, f_in=f, f_out=f, right=Tail(1.0)))
    g = ScalarGate(1, spec)
    lo, hi = g.exact_range
    # the bound, checked independently: |x * 2^(S - f)| for the slope-1 tail vs 2^(n-2)
    assert hi * 2 ** (spec.poly_scale - f) < 2 ** (n - 2) <= (hi + 1) * 2 ** (spec.poly_scale - f)
    xi = np.array([hi, hi - 1, lo, 0, 5 << f], dtype=np.int64)
    got, _, _ = run_gate(ScalarGate(xi.size, spec), [ring.from_signed(xi, n)], [n])
    assert np.array_equal(ring.to_signed(got, n), np.array([int(v) for v in spec.reference(xi)]))
    assert g.describe()["exact_for"][1] == hi / 2 ** f


def test_fit_refuses_a_spec_the_ring_cannot_hold():
    with pytest.raises(ParameterError, match="cannot hold"):
        fit(FitRequest("gelu", gelu, -4, 4, pieces=4, degree=2, n_in=40, f_in=12, f_out=12, right=Tail(1.0)))


def test_deferred_shift_outputs_at_poly_scale():
    n, f = 50, 12
    spec = fit(FitRequest("gelu", gelu, -4, 4, pieces=16, degree=2, n_in=n, f_in=f, f_out=f, right=Tail(1.0)))
    xi = np.arange(-6 << f, 6 << f, 97, dtype=np.int64)
    g = ScalarGate(xi.size, spec, "packed", defer_shift=True)
    got, _, logs = run_gate(g, [ring.from_signed(xi, n)], [n])
    assert g.out_scale == spec.poly_scale and logs[0].rounds == 2
    # floor(value / 2^out_shift) of the deferred output is exactly the spec's output
    assert np.array_equal(ring.to_signed(got, n) >> spec.out_shift, np.array([int(v) for v in spec.reference(xi)]))


def test_auto_picks_the_smallest_key():
    spec = fit(FitRequest("gelu", gelu, -4, 4, pieces=16, degree=2, n_in=50, right=Tail(1.0)))
    sizes = {lk: ScalarGate(1, spec, lk).cost().key_bits for lk in ("packed", "shifted")}
    assert ScalarGate(1, spec).cost().key_bits == min(sizes.values())
