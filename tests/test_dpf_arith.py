"""Arithmetic-output DPF (runtime/dpf_arith.py): sum of shares = beta * [x == alpha] in Z_{2^w}."""
import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.runtime import dpf_arith, ring
from fusec.runtime.dpf_arith import DpfArithKey
from fusec.runtime.gates.base import field_bits
from fusec.runtime.prg import CpuPrg
from fusec.runtime.rng import DealerRng


def _point_function(alpha, beta, xs, w):
    """beta * [x == alpha] with Python-int arithmetic, per key row."""
    alpha = np.asarray(alpha, dtype=object)[:, None]
    beta = np.asarray(beta, dtype=object)[:, None]
    xs = np.asarray(xs, dtype=object)
    return np.where(xs == alpha, beta % (1 << w), 0).astype(np.uint64)


def _check_key_shape(k: DpfArithKey, N: int):
    specs = DpfArithKey.field_specs(k.n, k.w, N)
    arrs = k.arrays()
    assert [s[0] for s in specs] == list(arrs)
    for name, shape, bits in specs:
        a = arrs[name]
        assert a.dtype == np.uint64 and a.shape == shape, name
        if bits < 64:
            assert int(a.max(initial=0)) < (1 << bits), name
    assert field_bits(specs) == DpfArithKey.key_bits(k.n, k.w) * N
    k2 = DpfArithKey.from_arrays(k.n, k.w, {n: a.copy() for n, a in arrs.items()})
    assert all(np.array_equal(getattr(k2, f), getattr(k, f)) for f in arrs)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("w", [1, 7, 64])
def test_exhaustive_small(n, w):
    rng = DealerRng(bytes([n, w]) * 8)
    D = 1 << n
    alpha = np.repeat(np.arange(D, dtype=np.uint64), 2)          # every alpha, two betas each
    N = alpha.size
    beta = rng.ring(N, w)
    beta[::2] = 1
    k0, k1 = dpf_arith.keygen(rng, alpha, beta, n, w)
    _check_key_shape(k0, N)
    expect = _point_function(alpha, beta, np.broadcast_to(np.arange(D), (N, D)), w)
    prg = CpuPrg()
    a0 = prg.aes_calls
    f0 = dpf_arith.eval_full(0, k0, prg)
    assert prg.aes_calls - a0 == DpfArithKey.aes_full_domain(n, w) * N
    f1 = dpf_arith.eval_full(1, k1, prg)
    assert np.array_equal((f0 + f1) & ring.mask(w), expect)
    xs = np.tile(np.arange(D, dtype=np.uint64), (N, 1))
    a0 = prg.aes_calls
    p0 = dpf_arith.eval(0, k0, xs, prg)
    assert prg.aes_calls - a0 == DpfArithKey.aes_per_eval(n, w) * N * D
    p1 = dpf_arith.eval(1, k1, xs, prg)
    assert np.array_equal((p0 + p1) & ring.mask(w), expect)
    assert np.array_equal(p0, f0) and np.array_equal(p1, f1)      # point and full-domain agree
    # one point per key (1-D x)
    for col in (0, D - 1):
        s = (dpf_arith.eval(0, k0, xs[:, col], prg) + dpf_arith.eval(1, k1, xs[:, col], prg)) & ring.mask(w)
        assert np.array_equal(s, expect[:, col])


def _chosen_points(alpha, n, rng):
    """alpha, alpha +- 1, alpha with each of several bits flipped (diverges at each depth), random."""
    m = (1 << n) - 1
    a = [int(v) for v in alpha]
    cols = [a, [(v + 1) & m for v in a], [(v - 1) & m for v in a], [0] * len(a), [m] * len(a)]
    for bit in sorted({0, 1, n // 2, n - 2, n - 1} - {-1}):
        if 0 <= bit < n:
            cols.append([v ^ (1 << bit) for v in a])
    cols.append([int(v) for v in rng.integers(0, 2 ** 63, len(a), dtype=np.uint64) & np.uint64(m)])
    return np.array(cols, dtype=np.uint64).T


@pytest.mark.parametrize("n", [16, 37, 50, 64])
@pytest.mark.parametrize("w", [1, 37, 64])
def test_random_large_domains(n, w):
    g = np.random.default_rng(n * 100 + w)
    rng = DealerRng(bytes([n, w, 1]) * 5)
    m = ring.mask(n)
    alpha = g.integers(0, 2 ** 63, 40, dtype=np.uint64) * np.uint64(2) + g.integers(0, 2, 40, dtype=np.uint64)
    alpha = alpha & m
    alpha[:3] = [0, m, np.uint64(1) << np.uint64(n - 1)]
    beta = g.integers(-(2 ** 40), 2 ** 40, alpha.size)                 # signed betas, reduced mod 2^w
    k0, k1 = dpf_arith.keygen(rng, alpha, beta, n, w)
    _check_key_shape(k1, alpha.size)
    xs = _chosen_points(alpha, n, g)
    prg = CpuPrg()
    a0 = prg.aes_calls
    s0 = dpf_arith.eval(0, k0, xs, prg)
    assert prg.aes_calls - a0 == DpfArithKey.aes_per_eval(n, w) * xs.size
    s = (s0 + dpf_arith.eval(1, k1, xs, prg)) & ring.mask(w)
    assert np.array_equal(s, _point_function(alpha, beta, xs, w))
    assert s[:, 0].tolist() == [int(b) % (1 << w) for b in beta]
    # each party's share alone is not the point function
    assert not np.array_equal(s0 & ring.mask(w), s)


def test_full_domain_16_bits():
    n, w = 16, 20
    rng = DealerRng(b"full16".ljust(16, b"\0"))
    alpha = np.array([0, 12345, 65535], dtype=np.uint64)
    k0, k1 = dpf_arith.keygen(rng, alpha, 7, n, w)
    prg = CpuPrg()
    a0 = prg.aes_calls
    f0 = dpf_arith.eval_full(0, k0, prg)
    assert prg.aes_calls - a0 == DpfArithKey.aes_full_domain(n, w) * 3 == (3 * 2 ** 16 - 2) * 3
    f = (f0 + dpf_arith.eval_full(1, k1, prg)) & ring.mask(w)
    expect = np.zeros((3, 1 << n), np.uint64)
    expect[np.arange(3), alpha.astype(np.int64)] = 7
    assert np.array_equal(f, expect)


def test_cost_formulas():
    assert DpfArithKey.key_bits(8, 50) == 128 + 129 * 8 + 50
    assert DpfArithKey.aes_per_eval(50, 64) == 51
    assert DpfArithKey.aes_full_domain(8, 50) == 3 * 256 - 2


def test_bad_parameters():
    rng = DealerRng(b"bad".ljust(16, b"\0"))
    for n, w in ((0, 8), (65, 8), (8, 0), (8, 65)):
        with pytest.raises(ParameterError):
            dpf_arith.keygen(rng, np.zeros(2, np.uint64), 1, n, w)
    with pytest.raises(ParameterError):
        dpf_arith.keygen(rng, np.zeros(3, np.uint64), [1, 2], 8, 8)
    k0, _ = dpf_arith.keygen(rng, np.zeros(2, np.uint64), 1, 25, 8)
    with pytest.raises(ParameterError, match="full-domain"):
        dpf_arith.eval_full(0, k0)
    with pytest.raises(ParameterError):
        dpf_arith.eval(0, k0, np.zeros(3, np.uint64))
