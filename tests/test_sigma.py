"""The SIGMA-style GELU baseline (runtime/gates/sigma.py) and its comparison with our GELU.

Oracles here are independent of the gate's code: GELU from ``math.erf``, the delta table
recomputed from that GELU, the derivative bound found numerically. Costs are measured,
not read back: key bits from the arrays keygen produced, AES from each party's backend
counter, rounds and bytes from the two-party harness logs.
"""
import math

import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.ir.spec import FitRequest, Tail, fit
from fusec.runtime import ring
from fusec.runtime.gates.scalar import ScalarGate
from fusec.runtime.gates.sigma import SigmaGelu
from tests.harness import forced_masks, measure_gate

F = 12
LUT_FRAC = 6
CLIP = 4.0


def gelu(x):
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def delta(t):
    """ReLU - GELU, from the oracle GELU (not from the gate's erfc form)."""
    t = np.asarray(t, dtype=np.float64)
    return np.maximum(t, 0) - gelu(t)


def stated_bound(lut_frac=LUT_FRAC, clip=CLIP, f=F) -> float:
    """|err| <= max|delta'| 2^-lut_frac (grid) + delta at the clip (tail) + 2 ulps (table rounding, slack)."""
    t = np.linspace(0.0, clip + 1.0, 200001)
    max_slope = float(np.max(np.abs(np.diff(delta(t)) / np.diff(t))))
    assert 0.49 < max_slope <= 0.5 + 1e-6            # delta'(0) = Phi(0) = 1/2
    tail = float(delta((clip * 2 ** lut_frac - 1) / 2 ** lut_frac))
    return max_slope * 2.0 ** -lut_frac + tail + 2.0 * 2.0 ** -f


def construction_oracle(xi: np.ndarray, n: int, f=F, lut_frac=LUT_FRAC, clip=CLIP) -> np.ndarray:
    """The exact integer output of the construction, with Python ints: ReLU(x) - LUT[min(|floor(x/2^s)|, T-1)]."""
    s, T = f - lut_frac, int(clip * 2 ** lut_frac)
    table = [int(np.rint(delta(i / 2 ** lut_frac) * 2 ** f)) for i in range(T)]
    out = []
    for x in (int(v) for v in xi):
        c = min(abs(x >> s), T - 1)                  # >> floors for negative Python ints
        out.append(max(x, 0) - table[c])
    return np.array(out, dtype=np.int64)


measure = measure_gate


def inputs(seed: int, count: int = 400) -> np.ndarray:
    g = np.random.default_rng(seed)
    one = 1 << F
    edges = [0, 1, -1, 4 * one, -4 * one, 4 * one - 1, -(4 * one - 1), 100 * one, -100 * one,
             64, -64, 63, -63, 65, -65, 255 * 64, -255 * 64, 256 * 64, -256 * 64]
    return np.concatenate([np.array(edges, np.int64), g.integers(-8 * one, 8 * one + 1, count)])


# --------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("n", [37, 50])
@pytest.mark.parametrize("lut", ["dpf", "table"])
def test_sigma_gelu_random_and_forced_masks(n, lut):
    xi = inputs(n)
    bound = stated_bound()
    want_exact = construction_oracle(xi, n)
    want = gelu(xi / 2 ** F)
    g = np.random.default_rng(n + 1)
    rand = g.integers(0, 2 ** 63, xi.shape, dtype=np.uint64) * np.uint64(2) + g.integers(0, 2, xi.shape, dtype=np.uint64)
    for masks in [None, [rand & ring.mask(n)]] + [[fm] for fm in forced_masks(xi.shape, n)]:
        gate = SigmaGelu(xi.size, n, F, lut_frac=LUT_FRAC, clip=CLIP, lut=lut)
        got, measured, logs = measure(gate, xi, n, masks)
        assert np.array_equal(got, want_exact)                      # bit-exact construction
        err = np.abs(got / 2 ** F - want)
        assert err.max() <= bound, (err.max(), bound, xi[err.argmax()])
        cost = gate.cost()
        assert measured.rounds == cost.rounds == 6
        assert measured.aes == cost.aes
        assert measured.key_bits == cost.key_bits
        E, opens = xi.size, 7                                       # 7 opens, each padded to a byte
        assert cost.open_bits * E <= measured.open_bits * E < cost.open_bits * E + 8 * opens
    # the stated bound is the gate's own
    assert gate.error_bound() <= bound


def test_error_is_near_the_bound_not_far_below():
    """The bound is tight: the grid error near 0 really reaches ~max|delta'| 2^-lut_frac."""
    xi = np.arange(-3 * 64, 3 * 64, dtype=np.int64)           # |x| < 3/64: the steepest part of delta
    got, _, _ = measure(SigmaGelu(xi.size, 50, F), xi, 50)
    err = np.abs(got / 2 ** F - gelu(xi / 2 ** F))
    assert 0.8 * 0.5 * 2 ** -LUT_FRAC < err.max() <= stated_bound()


def test_costs_and_layout():
    n, E = 50, 64
    for lut in ("dpf", "table"):
        gate = SigmaGelu(E, n, F, lut=lut)
        assert gate.key_bits_total() == gate.cost().key_bits * E
        names = [name for name, _, _ in gate.fields()]
        assert len(names) == len(set(names))
        assert {nm.split(".")[0] for nm in names} == {"tr", "sign", "relu", "abs", "clip", "lut"}
        m = n - (F - LUT_FRAC)
        assert gate.cost().open_bits == 2 * n + 3 * m + 2
    # the DPF LUT trades AES for key size against the truth table
    dpf, tab = SigmaGelu(1, n, F, lut="dpf").cost(), SigmaGelu(1, n, F, lut="table").cost()
    assert dpf.key_bits < tab.key_bits and dpf.aes > tab.aes and dpf.rounds == tab.rounds


def test_bad_parameters():
    with pytest.raises(ParameterError):
        SigmaGelu(4, 50, 12, lut_frac=12)         # nothing to truncate
    with pytest.raises(ParameterError):
        SigmaGelu(4, 50, 12, clip=8.0)            # 9-bit LUT index
    with pytest.raises(ParameterError):
        SigmaGelu(4, 50, 12, lut="spline")


# --------------------------------------------------------------------------- THE COMPARISON
def test_compare_with_compiled_gelu():
    """Our compiled GELU against SIGMA's at n=50, f=12, both measured in one run.

    Records which costs less; asserts only that every printed number is measured (and equals
    the gate's cost()) and that our gate is the more accurate one.
    """
    n = 50
    spec = fit(FitRequest("gelu", gelu, -4, 4, pieces=16, degree=2, n_in=n, f_in=F, f_out=F, right=Tail(1.0)))
    g = np.random.default_rng(7)
    xi = np.concatenate([np.arange(-8 << F, 8 << F, 37, dtype=np.int64),      # dense sweep of [-8, 8)
                         g.integers(-8 << F, 8 << F, 4000), inputs(1, 0)])
    xi = xi[: xi.size - xi.size % 8]                                          # whole bytes per open
    want = gelu(xi / 2 ** F)
    gates = {
        "ScalarGate GELU (ours, packed)": ScalarGate(xi.size, spec, "packed"),
        "ScalarGate GELU (ours, shifted)": ScalarGate(xi.size, spec, "shifted"),
        "SigmaGelu, DPF LUT": SigmaGelu(xi.size, n, F, lut="dpf"),
        "SigmaGelu, truth-table LUT": SigmaGelu(xi.size, n, F, lut="table"),
    }
    rows, errs = [], {}
    for label, gate in gates.items():
        got, measured, _ = measure(gate, xi, n)
        cost = gate.cost()
        # every printed number is a measurement, and it is the gate's stated cost
        assert measured.key_bits == cost.key_bits, label
        assert measured.aes == cost.aes, label
        assert measured.rounds == cost.rounds, label
        assert measured.open_bits == cost.open_bits, label
        errs[label] = float(np.max(np.abs(got / 2 ** F - want)))
        rows.append((label, measured, errs[label]))
    print(f"\nGELU per element, per party, n={n}, f={F}, {xi.size} elements (measured)")
    print("| gate | key bytes | AES | rounds | bits opened | max abs error | ulps |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, c, e in rows:
        print(f"| {label} | {c.key_bits / 8:,.1f} | {c.aes:g} | {c.rounds} | {c.open_bits:g} | {e:.2e} | {e * 2 ** F:.1f} |")
    ours, sigma = rows[0][1], rows[2][1]
    print(f"ratio SIGMA(DPF)/ours: key {sigma.key_bits / ours.key_bits:.2f}x, AES {sigma.aes / ours.aes:.2f}x, "
          f"rounds {sigma.rounds / ours.rounds:.1f}x, bits opened {sigma.open_bits / ours.open_bits:.2f}x")
    # accuracy: ours is within its fitted bound, SIGMA's within its stated one, and ours is better
    assert errs["ScalarGate GELU (ours, shifted)"] * 2 ** F <= spec.max_error_ulps + 1
    assert errs["SigmaGelu, DPF LUT"] <= stated_bound()
    assert errs["ScalarGate GELU (ours, shifted)"] < errs["SigmaGelu, DPF LUT"]
    assert errs["ScalarGate GELU (ours, shifted)"] < errs["SigmaGelu, truth-table LUT"]
    assert errs["ScalarGate GELU (ours, packed)"] * 2 ** F <= spec.max_error_ulps + 1
    assert errs["ScalarGate GELU (ours, packed)"] < errs["SigmaGelu, DPF LUT"]
