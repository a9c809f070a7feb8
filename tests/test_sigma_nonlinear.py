"""SIGMA-style nExp, inverse and rsqrt (runtime/gates/sigma_nonlinear.py) against float oracles.

Two kinds of oracle, both independent of the gate code: the float function (``math.exp``,
``1/x``, ``1/sqrt(x)``) for the accuracy bound, and a Python-int re-implementation of each
construction (tables recomputed with ``math``) for bit-exactness on sampled inputs. The
construction oracle also evaluates the accuracy on dense grids too large for the
two-party run. Costs are measured: key bits from the arrays keygen produced, AES from each
party's backend counter, rounds and bytes from the harness logs, and must equal ``cost()``.

Stated bounds (ulps of the output scale), asserted below:
  SigmaNegExp   f=12: |err| <= 1.5 ulps                         (dense grid through the oracle)
  SigmaInverse  x in [1, 128], lut_frac 6, out 12: <= 32.5 ulps (measured max 31.0, at x -> 1)
  SigmaRsqrt    |err| <= 2^-(M+2) rsqrt(x) + 0.5 ulps, M = 7 mantissa bits: <= 8.5 ulps for x >= 1
                (measured 8.09 for x >= 1; 17.2 for x in [2^-5, 1), where rsqrt is up to 5.7)
"""
import math

import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.sigma_nonlinear import SigmaInverse, SigmaNegExp, SigmaRsqrt, sigma_layernorm_rsqrt
from tests.harness import forced_masks, measure_gate

F = 12


def measure(gate, xi, n, masks=None):
    """(signed output, measured per-element cost)."""
    got, cost, _ = measure_gate(gate, xi, n, masks)
    return got, cost


def check_cost(gate, measured, opens: int):
    cost = gate.cost()
    assert measured.key_bits == cost.key_bits
    assert measured.aes == cost.aes
    assert measured.rounds == cost.rounds
    E = gate.elements                              # each open is padded to a whole byte
    assert cost.open_bits * E <= measured.open_bits * E < cost.open_bits * E + 8 * opens


def runs(xi, n, seed, subset=64):
    """(inputs, masks) to run: all inputs under fresh masks, then the first ``subset`` inputs
    (the edge cases) under a random odd mask and the forced masks 0, 2^n - 1, 2^(n-1)."""
    g = np.random.default_rng(seed)
    few = xi[:subset]
    rand = g.integers(0, 2 ** 63, few.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return [(xi, None), (few, [rand & ring.mask(n)])] + [(few, [fm]) for fm in forced_masks(few.shape, n)]


# =========================================================================== nExp
def nexp_construction(xs, f=F):
    """SIGMA nExp with Python ints: clip -x to 2^16 - 1, two byte tables, product, round."""
    hi_t = [round(math.exp(-i * 256 / 2 ** f) * 2 ** f) for i in range(256)]
    lo_t = [round(math.exp(-j / 2 ** f) * 2 ** f) for j in range(256)]
    out = []
    for x in (int(v) for v in xs):
        c = min(-x, (1 << 16) - 1)
        out.append((hi_t[c >> 8] * lo_t[c & 255] + (1 << (f - 1))) >> f)
    return np.array(out, dtype=np.int64)


def nexp_inputs(n, f=F, seed=0, in_bits=None):
    """Edge cases, a dense sweep of [-20, 0] and random values inside SIGMA's range (|x| < 2^(in_bits-1))."""
    m = in_bits or min(n, n - f + 2)
    one = 1 << f
    g = np.random.default_rng(seed)
    edges = [0, -1, -2, -255, -256, -257, -(16 * one) + 1, -16 * one, -16 * one - 1, -(1 << 16) + 1, -(1 << 16),
             -(1 << 16) - 1, -(1 << (m - 1)) + 1, -(1 << (m - 2))]
    dense = -np.arange(0, 20 * one, 13)
    return np.concatenate([np.array(edges, np.int64), dense, -g.integers(0, 1 << (m - 1), 200)])


@pytest.mark.parametrize("n", [37, 50, 64])
def test_nexp_accuracy_exactness_and_cost(n):
    xi = nexp_inputs(n)
    for xi, masks in runs(xi, n, n):
        exact = nexp_construction(xi)
        want = np.exp(xi / 2 ** F) * 2 ** F
        gate = SigmaNegExp(xi.size, n, F)
        assert gate.in_bits == min(n, n - F + 2)          # SIGMA: bin + 2 = 40 at n = 50
        got, measured = measure(gate, xi, n, masks)
        assert np.array_equal(got, exact)
        err = np.abs(got - want)
        assert err.max() <= 1.5, (err.max(), xi[err.argmax()])
        check_cost(gate, measured, opens=13)
        assert measured.rounds == 13                     # SIGMA's sequence: 2 + 3 + 2 + 3 + 1 + 2
        assert gate.cost().open_bits == 6 * n + 29


def test_nexp_dense_grid_error():
    """Every input of the 16-bit view and past the clip, through the construction oracle."""
    xi = -np.arange(0, (1 << 16) + 4096, dtype=np.int64)
    err = np.abs(nexp_construction(xi) - np.exp(xi / 2 ** F) * 2 ** F)
    assert 1.0 < err.max() <= 1.5, err.max()


def test_nexp_key_at_n50_matches_sigma_parts():
    """Key per element = SIGMA's parts: 39-bit DPF (clip) + 16-bit select + two 8-bit DPF LUTs
    + 8-bit DPF truncation + Beaver triple + 12-bit DPF TrWithSlack."""
    dpf = lambda m: 129 * m - 647 if m > 7 else 256  # noqa: E731
    n = 50
    want = (dpf(39) + 1) + 4 * 16 + 2 * (dpf(8) + 1 + 4 * n) + (dpf(8) + 1 + 2 * 8) + 3 * n + (dpf(12) + 1 + 3 * n)
    assert SigmaNegExp(1, n, F).cost().key_bits == want == 7225


def test_nexp_on_a_known_input_width():
    """in_bits 24 (|x| < 2^23 at f=12): the clip's DReLU runs on the 24-bit view, smaller key."""
    n = 50
    xi = nexp_inputs(n, in_bits=24)
    gate = SigmaNegExp(xi.size, n, F, in_bits=24)
    got, measured = measure(gate, xi, n)
    assert np.array_equal(got, nexp_construction(xi))
    check_cost(gate, measured, opens=13)
    assert gate.cost().key_bits == SigmaNegExp(1, n, F).cost().key_bits - 129 * 16
    with pytest.raises(ParameterError):
        SigmaNegExp(4, n, F, in_bits=17)
    with pytest.raises(ParameterError):
        SigmaNegExp(4, n, 16)                    # SIGMA's 16-bit clip needs frac <= 12


# =========================================================================== inverse
def inverse_construction(xs, f=F, lf=6, of=F, k=13):
    s = f - lf
    out = []
    for x in (int(v) for v in xs):
        i = (x >> s) % (1 << k) or (1 << k)
        lo, hi = (i << s) / 2 ** f, (((i + 1) << s) - 1) / 2 ** f
        out.append(round(0.5 * (1 / lo + 1 / hi) * 2 ** of))
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("n", [37, 50, 64])
def test_inverse_accuracy_exactness_and_cost(n):
    one = 1 << F
    g = np.random.default_rng(n)
    xi = np.concatenate([[one, one + 1, one + 63, one + 64, 2 * one, 127 * one, 128 * one - 1, 128 * one],
                         g.integers(one, 128 * one + 1, 400)]).astype(np.int64)
    for xi, masks in runs(xi, n, n + 1, subset=16):
        exact = inverse_construction(xi)
        gate = SigmaInverse(xi.size, n, F, max_value=128)
        assert gate.view_bits == 13
        got, measured = measure(gate, xi, n, masks)
        assert np.array_equal(got, exact)
        assert np.abs(got - 2 ** F / (xi / 2 ** F)).max() <= gate.error_bound_ulps() == 32.5
        check_cost(gate, measured, opens=5)
        assert measured.rounds == 5                      # TR (bit, value) + LUT (U, V, output)


def test_inverse_dense_grid_error():
    """All of [1, 128] at f=12 (520k inputs) through the construction oracle."""
    xi = np.arange(1 << F, (128 << F) + 1, dtype=np.int64)
    i = xi >> (F - 6)
    i = np.where(i % (1 << 13) == 0, 1 << 13, i % (1 << 13))
    lo, hi = (i << (F - 6)) / 2 ** F, (((i + 1) << (F - 6)) - 1) / 2 ** F
    got = np.rint(0.5 * (1 / lo + 1 / hi) * 2 ** F)
    err = np.abs(got - 2 ** F / (xi / 2 ** F))
    assert 30 < err.max() <= 32.5 and np.abs(got[-1] - 32) <= 1   # x = 128 wraps to index 0


def test_inverse_other_scales():
    """A finer view (lut_frac 8, max 32: still 13 bits) and a higher output scale."""
    n = 50
    xi = np.random.default_rng(3).integers(1 << F, (32 << F) + 1, 300)
    gate = SigmaInverse(xi.size, n, F, max_value=32, out_frac=16, lut_frac=8)
    assert gate.view_bits == 13
    got, measured = measure(gate, xi, n)
    assert np.array_equal(got, inverse_construction(xi, lf=8, of=16))
    assert np.abs(got - 2 ** 16 / (xi / 2 ** F)).max() <= gate.error_bound_ulps() == 2 ** 7 + 0.5
    check_cost(gate, measured, opens=5)


# =========================================================================== rsqrt
def rsqrt_construction(xs, B, f=F, M=7, of=F, k=1.0, eps=0.0):
    """Float-like view with Python ints: exponent from bit_length, M mantissa bits, centred
    table of ``g = 1/sqrt(k v + eps)``."""
    def g(x):
        return 1 / math.sqrt(k * (x / 2 ** f) + eps)

    out = []
    for x in (int(v) for v in xs):
        if x >= 1 << B:
            v = g(2 ** B)
        elif x <= 1:
            v = g(x if eps > 0 else 1)
        else:
            e = x.bit_length() - 1
            if e <= M:
                v = g(x)
            else:
                y = x >> (e - M)
                lo, hi = y << (e - M), ((y + 1) << (e - M)) - 1
                v = 0.5 * (g(lo) + g(hi))
        out.append(round(v * 2 ** of))
    return np.array(out, dtype=np.int64)


def rsqrt_oracle(xs, B, f=F, of=F, k=1.0, eps=0.0):
    x = np.asarray(xs, np.float64)
    x = np.minimum(x if eps > 0 else np.maximum(x, 1.0), 2.0 ** B)
    return 2.0 ** of / np.sqrt(k * x / 2 ** f + eps)


def rsqrt_bound(xs, B, M=7, f=F, of=F, k=1.0, eps=0.0):
    return rsqrt_oracle(xs, B, f, of, k, eps) * 2.0 ** -(M + 2) + 0.5


@pytest.mark.parametrize("n", [37, 50, 64])
def test_rsqrt_accuracy_exactness_and_cost(n):
    gate = SigmaRsqrt(1, n, F)
    B = gate.exp_bits
    assert (B, gate.view_bits) == {37: (32, 13), 50: (45, 13), 64: (59, 13)}[n]
    g = np.random.default_rng(n)
    p2 = 2 ** np.arange(1, B + 1, 2)
    edges = [0, 1, 2, 3, 255, 256, 257, (1 << B) - 1, 1 << B, (1 << B) + 12345, (1 << (n - 1)) - 1]
    xi = np.concatenate([edges, p2, p2 - 1, np.arange(4, 300), 2 ** np.arange(2, B + 1, 2),
                         np.exp(g.uniform(np.log(300), np.log(2.0 ** B), 300)).astype(np.int64)]).astype(np.int64)
    for xi, masks in runs(xi, n, n + 2):
        exact = rsqrt_construction(xi, B)
        gate = SigmaRsqrt(xi.size, n, F)
        got, measured = measure(gate, xi, n, masks)
        assert np.array_equal(got, exact)
        assert np.all(np.abs(got - rsqrt_oracle(xi, B)) <= rsqrt_bound(xi, B))
        big = xi >= 1 << F
        assert np.abs(got - rsqrt_oracle(xi, B))[big].max() <= 8.5
        check_cost(gate, measured, opens=5)
        assert measured.rounds == 4


def test_rsqrt_dense_grid_error():
    """All x in [0, 2^22) (variance up to 1024 at f=12) through the construction oracle, vectorised."""
    B, M = 45, 7
    x = np.arange(0, 1 << 22, dtype=np.int64)
    e = np.floor(np.log2(np.maximum(x, 1))).astype(np.int64)
    sh = np.maximum(e - M, 0)
    y = x >> sh
    lo, hi = y << sh, np.where(e > M, ((y + 1) << sh) - 1, y << sh)
    lo, hi = np.maximum(lo, 1), np.maximum(hi, 1)
    got = np.rint(0.5 * (1 / np.sqrt(lo / 2 ** F) + 1 / np.sqrt(hi / 2 ** F)) * 2 ** F)
    assert np.array_equal(got[::4099], rsqrt_construction(x[::4099], B))
    err = np.abs(got - rsqrt_oracle(x, B))
    assert np.all(err <= rsqrt_bound(x, B))
    assert 7 < err[x >= 1 << F].max() <= 8.5


def test_rsqrt_smaller_range_and_mantissa():
    """max_value 64 (B = 19): clipped above; 5 mantissa bits: 11-bit LUT, 4x the error."""
    n = 37
    gate = SigmaRsqrt(1, n, F, max_value=64, mant_bits=5)
    B = gate.exp_bits
    assert B == 19 and gate.view_bits == 5 + 5
    xi = np.concatenate([np.arange(0, 100), np.exp(np.linspace(np.log(100), np.log(2 ** 24), 200)).astype(np.int64)])
    gate = SigmaRsqrt(xi.size, n, F, max_value=64, mant_bits=5)
    got, measured = measure(gate, xi, n)
    assert np.array_equal(got, rsqrt_construction(xi, B, M=5))
    assert np.all(np.abs(got - rsqrt_oracle(xi, B)) <= rsqrt_bound(xi, B, M=5))
    check_cost(gate, measured, opens=5)


@pytest.mark.parametrize("n,d,eps", [(37, 128, 1e-12), (50, 768, 1e-5)])
def test_rsqrt_fused_layernorm_form(n, d, eps):
    """1/sqrt(s/d + eps) of a row's sum of squares s: k and eps live in the table, same cost."""
    gate = sigma_layernorm_rsqrt(1, n, F, 1.0 / d, eps)
    B = gate.exp_bits
    assert gate.cost() == SigmaRsqrt(1, n, F).cost() and gate.out_scale == F
    g = np.random.default_rng(d)
    xi = np.concatenate([[0, 1, 2, 1 << B, (1 << (n - 1)) - 1],
                         np.exp(g.uniform(0, np.log(2.0 ** B), 250)).astype(np.int64)]).astype(np.int64)
    gate = sigma_layernorm_rsqrt(xi.size, n, F, 1.0 / d, eps)
    got, measured = measure(gate, xi, n)
    kw = dict(k=1.0 / d, eps=eps)
    assert np.array_equal(got, rsqrt_construction(xi, B, **kw))
    assert np.all(np.abs(got - rsqrt_oracle(xi, B, **kw)) <= rsqrt_bound(xi, B, **kw))
    check_cost(gate, measured, opens=5)


def test_bad_parameters():
    with pytest.raises(ParameterError):
        SigmaNegExp(4, 24, 12)                   # product of two scale-12 values does not fit
    with pytest.raises(ParameterError):
        SigmaInverse(4, 50, 12, max_value=4096, lut_frac=6)  # 18-bit LUT
    with pytest.raises(ParameterError):
        SigmaInverse(4, 50, 12, max_value=0.5)
    with pytest.raises(ParameterError):
        SigmaRsqrt(4, 37, 12, max_value=2.0 ** 30)
    with pytest.raises(ParameterError):
        SigmaRsqrt(4, 50, 12, mant_bits=12)      # 18-bit LUT
    with pytest.raises(ParameterError):
        SigmaRsqrt(4, 37, 12, eps=1e-20)         # 1/sqrt(eps) does not fit 37 bits at scale 12
    with pytest.raises(ParameterError):
        SigmaInverse(4, 50, 12, max_value=2.0 ** 17)   # no room for the view
    assert SigmaInverse(4, 50, 12, max_value=2048).view_bits == 16   # lut_frac lowered to 5


# =========================================================================== the table
def test_cost_table_n50_f12():
    """Per element, per party, measured at n=50, f=12 (printed; each equals cost())."""
    n = 50
    g = np.random.default_rng(11)
    cases = {
        "SigmaNegExp": (SigmaNegExp, {}, -g.integers(0, 20 << F, 256), lambda x: np.exp(x / 2 ** F)),
        "SigmaInverse(max 128)": (SigmaInverse, {"max_value": 128}, g.integers(1 << F, (128 << F) + 1, 256),
                                  lambda x: 2 ** F / x),
        "SigmaRsqrt": (SigmaRsqrt, {}, np.exp(g.uniform(np.log(2 ** F), np.log(2.0 ** 30), 256)).astype(np.int64),
                       lambda x: 1 / np.sqrt(x / 2 ** F)),
    }
    rows = []
    for label, (cls, kw, xi, fn) in cases.items():
        gate = cls(xi.size, n, F, **kw)
        got, measured = measure(gate, xi, n)
        cost = gate.cost()
        assert (measured.key_bits, measured.aes, measured.rounds) == (cost.key_bits, cost.aes, cost.rounds)
        rows.append((label, cost, float(np.abs(got / 2 ** F - fn(xi)).max() * 2 ** F)))
    print(f"\nSIGMA-style nonlinearities per element, per party, n={n}, f={F} (measured)")
    print("| gate | key bytes | AES | rounds | bits opened | max error (ulps, this sample) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, c, e in rows:
        print(f"| {label} | {c.key_bits / 8:,.1f} | {c.aes:,} | {c.rounds} | {c.open_bits} | {e:.2f} |")
