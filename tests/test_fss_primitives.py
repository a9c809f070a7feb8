"""DPF (1-bit, early termination, prefix-parity less-than) and DCF (vector payloads).

Oracles are plain numpy / Python-integer comparisons (``x == alpha``, ``x < alpha``,
``beta * [x < alpha]``); nothing is copied from the code under test. Shares are
reconstructed the way the two servers would: XOR for the DPF, addition mod 2^w for
the DCF.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.runtime import dcf, dpf
from fusec.runtime.dcf import DcfKey
from fusec.runtime.dpf import DpfKey
from fusec.runtime.prg import CpuPrg
from fusec.runtime.rng import DealerRng

U64 = np.uint64
M64 = (1 << 64) - 1


def umask(bits: int) -> int:
    return (1 << bits) - 1


def u64(vals) -> np.ndarray:
    return np.array([int(v) & M64 for v in vals], dtype=np.uint64)


def edge_alphas(n: int, count: int, rnd: random.Random) -> list[int]:
    """0, 1, 2^n-1 (and 2, 2^n-2 where distinct) plus random alphas."""
    fixed = [0, 1, umask(n), 2 % (1 << n), (umask(n) - 1) % (1 << n)]
    return fixed + [rnd.getrandbits(n) for _ in range(count)]


def probe_points(n: int, alpha: int, rnd: random.Random, extra: int) -> list[int]:
    """alpha-1, alpha, alpha+1, 0, 2^n-1, neighbours inside/outside the 128-point leaf, randoms."""
    md = 1 << n
    pts = [(alpha - 1) % md, alpha, (alpha + 1) % md, 0, umask(n)]
    pts += [(alpha ^ (1 << k)) % md for k in (0, 3, 6, 7, n - 1) if k < n]
    pts += [rnd.getrandbits(n) for _ in range(extra)]
    return pts


def points_matrix(n: int, alphas: list[int], rnd: random.Random, extra: int = 6) -> list[list[int]]:
    rows = [probe_points(n, a, rnd, extra) for a in alphas]
    P = max(len(r) for r in rows)
    return [r + [rnd.getrandbits(n) for _ in range(P - len(r))] for r in rows]


def arr_bits(a: np.ndarray) -> np.ndarray:
    """Expand uint64 values to (…, 64) bit matrix (LSB first)."""
    return ((a[..., None] >> np.arange(64, dtype=np.uint64)) & U64(1)).astype(np.uint8)


# ====================================================================== DPF
@pytest.mark.parametrize("n", range(1, 11))
def test_dpf_exhaustive(n):
    rng, prg = DealerRng(bytes([n]) * 32), CpuPrg()
    N = 1 << n
    alpha = np.arange(N, dtype=np.uint64)
    X = np.broadcast_to(np.arange(N, dtype=np.uint64), (N, N)).copy()
    a_col = np.arange(N)[:, None]
    x_row = np.arange(N)[None, :]
    eq, lt_ax, lt_xa = (x_row == a_col), (a_col < x_row), (x_row < a_col)

    k0, k1 = dpf.keygen(rng, alpha, n, prg)
    e = [dpf.eval(b, (k0, k1)[b], X, prg) for b in (0, 1)]
    assert all(set(np.unique(s).tolist()) <= {0, 1} for s in e)
    assert np.array_equal((e[0] ^ e[1]).astype(bool), eq)
    full = dpf.eval_full(0, k0, prg) ^ dpf.eval_full(1, k1, prg)
    assert full.shape == (N, N)
    assert np.array_equal(full.astype(bool), eq)
    pp = dpf.prefix_parity(0, k0, X, prg) ^ dpf.prefix_parity(1, k1, X, prg)
    assert np.array_equal(pp.astype(bool), lt_ax)

    l0, l1 = dpf.lt_keygen(rng, alpha, n, prg)
    lt = dpf.lt_eval(0, l0, X, prg) ^ dpf.lt_eval(1, l1, X, prg)
    assert set(np.unique(lt).tolist()) <= {0, 1}
    assert np.array_equal(lt.astype(bool), lt_xa)


@pytest.mark.parametrize("n", [16, 37, 50, 64])
def test_dpf_random_points(n):
    rnd = random.Random(n)
    rng, prg = DealerRng(bytes([n, 1]) * 16), CpuPrg()
    alphas = edge_alphas(n, 40, rnd)
    pts = points_matrix(n, alphas, rnd)
    A, X = u64(alphas), np.array(pts, dtype=np.uint64)
    eq = np.array([[x == a for x in row] for a, row in zip(alphas, pts)])
    a_lt_x = np.array([[a < x for x in row] for a, row in zip(alphas, pts)])
    x_lt_a = np.array([[x < a for x in row] for a, row in zip(alphas, pts)])

    k0, k1 = dpf.keygen(rng, A, n, prg)
    assert np.array_equal((dpf.eval(0, k0, X, prg) ^ dpf.eval(1, k1, X, prg)).astype(bool), eq)
    assert np.array_equal((dpf.prefix_parity(0, k0, X, prg) ^ dpf.prefix_parity(1, k1, X, prg)).astype(bool), a_lt_x)
    l0, l1 = dpf.lt_keygen(rng, A, n, prg)
    got = dpf.lt_eval(0, l0, X, prg) ^ dpf.lt_eval(1, l1, X, prg)
    assert np.array_equal(got.astype(bool), x_lt_a)
    # one point per key (1-D x) gives the same as the matching column
    for j in (0, 1, 2, X.shape[1] - 1):
        col = dpf.lt_eval(0, l0, X[:, j], prg) ^ dpf.lt_eval(1, l1, X[:, j], prg)
        assert np.array_equal(col.astype(bool), x_lt_a[:, j])
        assert np.array_equal(dpf.lt_eval(1, l1, X[:, j], prg), dpf.lt_eval(1, l1, X, prg)[:, j])


@pytest.mark.slow
@pytest.mark.parametrize("n", [13, 14])
def test_dpf_all_points_many_alphas(n):
    """Every x of a 13/14-bit domain against 260 alphas (edges + random): eq, [alpha < x], [x < alpha]."""
    rnd = random.Random(1000 + n)
    rng, prg = DealerRng(bytes([n, 3]) * 16), CpuPrg()
    alphas = np.array(edge_alphas(n, 255, rnd), np.uint64)
    D = 1 << n
    X = np.broadcast_to(np.arange(D, dtype=np.uint64), (alphas.size, D)).copy()
    a_col = alphas[:, None]
    k0, k1 = dpf.keygen(rng, alphas, n, prg)
    assert np.array_equal((dpf.eval(0, k0, X, prg) ^ dpf.eval(1, k1, X, prg)).astype(bool), X == a_col)
    assert np.array_equal((dpf.prefix_parity(0, k0, X, prg) ^ dpf.prefix_parity(1, k1, X, prg)).astype(bool), a_col < X)
    l0, l1 = dpf.lt_keygen(rng, alphas, n, prg)
    assert np.array_equal((dpf.lt_eval(0, l0, X, prg) ^ dpf.lt_eval(1, l1, X, prg)).astype(bool), X < a_col)


@pytest.mark.parametrize("n", [8, 10, 12])
def test_dpf_early_termination_matches_full_tree(n):
    rnd = random.Random(n)
    rng, prg = DealerRng(bytes([n, 2]) * 16), CpuPrg()
    alphas = [0, 1, 127, 128, umask(n)] + [rnd.getrandbits(n) for _ in range(3)]
    N, D = len(alphas), 1 << n
    keys = dpf.keygen(rng, u64(alphas), n, prg)
    X = np.broadcast_to(np.arange(D, dtype=np.uint64), (N, D)).copy()
    for b in (0, 1):
        # per-party shares, not only the reconstruction, agree between the two evaluations
        assert np.array_equal(dpf.eval(b, keys[b], X, prg), dpf.eval_full(b, keys[b], prg))
    # 7 levels are cut: the key holds n - 7 tree levels
    assert keys[0].nu == 7
    assert keys[0].cw_seed.shape == (n - 7, N, 2) and keys[0].cw_tr.shape == (n - 7, N)
    # the leaf block reached by x depends only on x >> 7, and it holds 128 output bits
    leaves = [dpf._walk(keys[b], X, prg, False)[0] for b in (0, 1)]
    for b in (0, 1):
        lb = leaves[b].reshape(N, D // 128, 128, 2)
        assert np.array_equal(lb, np.broadcast_to(lb[:, :, :1], lb.shape))
    rec = leaves[0] ^ leaves[1]
    for i, a in enumerate(alphas):
        for blk in range(D // 128):
            val = int(rec[i, blk * 128, 0]) | (int(rec[i, blk * 128, 1]) << 64)
            assert val == ((1 << (a % 128)) if blk == a >> 7 else 0), (a, blk)
    # cost: one AES per remaining level plus one for the leaf
    before = prg.aes_calls
    dpf.eval(0, keys[0], X, prg)
    assert prg.aes_calls - before == (n - 7 + 1) * N * D


@pytest.mark.parametrize("n", list(range(1, 14)) + [16, 37, 50, 64])
def test_dpf_key_size(n):
    if n >= 7:
        assert DpfKey.key_bits(n) == 129 * n - 647
    else:
        assert DpfKey.key_bits(n) == 256  # root + leaf correction only
    N = 5
    k0, k1 = dpf.keygen(DealerRng(b"z" * 32), u64(range(N)), n)
    for k in (k0, k1):
        for name in ("root", "cw_seed", "cw_leaf"):
            a = getattr(k, name)
            assert a.dtype == np.uint64 and a.shape[-1] == 2
        assert set(np.unique(k.cw_tr).tolist()) <= {0, 1}  # really 1 bit each
        per_elem = (k.root.size * 64 + k.cw_seed.size * 64 + k.cw_tr.size * 1 + k.cw_leaf.size * 64) // N
        assert per_elem == DpfKey.key_bits(n)
        assert sum(int(np.prod(s)) * bits for _, s, bits in DpfKey.field_specs(n, N)) == N * DpfKey.key_bits(n)
        assert {nm: a.shape for nm, a in k.arrays().items()} == {nm: s for nm, s, _ in DpfKey.field_specs(n, N)}


@pytest.mark.parametrize("n", [3, 16, 50])
def test_dpf_aes_count(n):
    rnd = random.Random(n)
    prg = CpuPrg()
    N = 33
    alphas = [rnd.getrandbits(n) for _ in range(N)]
    l0, _ = dpf.lt_keygen(DealerRng(b"a" * 32), u64(alphas), n, prg)
    x = u64(rnd.getrandbits(n) for _ in range(N))
    for fn in (dpf.lt_eval, dpf.eval, dpf.prefix_parity):
        before = prg.aes_calls
        fn(0, l0, x, prg)
        assert prg.aes_calls - before == DpfKey.aes_per_eval(n) * N
    before = prg.aes_calls
    dpf.lt_eval(0, l0, np.stack([x, x, x], 1), prg)
    assert prg.aes_calls - before == DpfKey.aes_per_eval(n) * N * 3
    assert DpfKey.aes_per_eval(n) == max(n - 7, 0) + 1


def test_dpf_domain_reduction():
    """Inputs and alphas are reduced to n bits before walking the tree."""
    n = 12
    rnd = random.Random(5)
    alphas = [rnd.getrandbits(n) for _ in range(20)]
    xs = [rnd.getrandbits(n) for _ in range(20)]
    hi = [(a | (rnd.getrandbits(64 - n) << n)) for a in alphas]
    xh = [(x | (rnd.getrandbits(64 - n) << n)) for x in xs]
    rng = DealerRng(b"d" * 32)
    l0, l1 = dpf.lt_keygen(rng, u64(hi), n)
    got = dpf.lt_eval(0, l0, u64(xh)) ^ dpf.lt_eval(1, l1, u64(xh))
    assert got.tolist() == [int(x < a) for x, a in zip(xs, alphas)]
    k0, k1 = dpf.keygen(rng, u64(hi), n)
    got = dpf.eval(0, k0, u64(xh)) ^ dpf.eval(1, k1, u64(xh))
    assert got.tolist() == [int(x == a) for x, a in zip(xs, alphas)]
    # the point alpha itself, given with different high garbage to each party
    same = dpf.eval(0, k0, u64(hi)) ^ dpf.eval(1, k1, u64(alphas))
    assert same.tolist() == [1] * 20


# ====================================================================== DCF
def dcf_expected(alphas, betas, pts, w):
    """beta * [x < alpha] as (N, P, m) Python-int lists."""
    return [[[(bv if x < a else 0) % (1 << w) for bv in beta] for x in row]
            for a, beta, row in zip(alphas, betas, pts)]


def dcf_reconstruct(s0, s1, w):
    return ((s0 + s1) & U64(umask(w))).tolist()


@pytest.mark.parametrize("n", range(1, 7))
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("w", [1, 7, 64])
def test_dcf_exhaustive(n, m, w):
    rnd = random.Random(n * 10000 + m * 100 + w)
    rng, prg = DealerRng(bytes([n, m, w]) * 8), CpuPrg()
    N = 1 << n
    alphas = list(range(N))
    betas = [[rnd.getrandbits(w) for _ in range(m)] for _ in range(N)]
    betas[0] = [umask(w)] * m
    pts = [list(range(N)) for _ in range(N)]
    k0, k1 = dcf.keygen(rng, u64(alphas), np.array(betas, np.uint64), n, w, prg)
    X = np.array(pts, np.uint64)
    s0, s1 = dcf.eval(0, k0, X, prg), dcf.eval(1, k1, X, prg)
    assert s0.shape == (N, N, m) and s0.dtype == np.uint64
    if w < 64:
        assert int(s0.max()) < (1 << w) and int(s1.max()) < (1 << w)
    assert dcf_reconstruct(s0, s1, w) == dcf_expected(alphas, betas, pts, w)


@pytest.mark.parametrize("n", [16, 37, 50, 64])
@pytest.mark.parametrize("w", [1, 37, 50, 64])
@pytest.mark.parametrize("m", [1, 4])
def test_dcf_random(n, w, m):
    rnd = random.Random(n * 10000 + w * 10 + m)
    rng, prg = DealerRng(bytes([n, w, m, 9]) * 8), CpuPrg()
    alphas = edge_alphas(n, 12, rnd)
    N = len(alphas)
    betas = [[rnd.getrandbits(w) for _ in range(m)] for _ in range(N)]
    pts = points_matrix(n, alphas, rnd, extra=3)
    k0, k1 = dcf.keygen(rng, u64(alphas), np.array(betas, np.uint64), n, w, prg)
    s0, s1 = dcf.eval(0, k0, np.array(pts, np.uint64), prg), dcf.eval(1, k1, np.array(pts, np.uint64), prg)
    assert dcf_reconstruct(s0, s1, w) == dcf_expected(alphas, betas, pts, w)
    # 1-D beta is a payload of length 1
    if m == 1:
        j0, j1 = dcf.keygen(rng, u64(alphas), u64(b[0] for b in betas), n, w, prg)
        assert j0.m == 1
        x = np.array([r[0] for r in pts], np.uint64)
        got = dcf_reconstruct(dcf.eval(0, j0, x, prg), dcf.eval(1, j1, x, prg), w)
        assert got == [[b[0] if xx < a else 0] for b, xx, a in zip(betas, x.tolist(), alphas)]


@pytest.mark.parametrize("n,w,m", [(64, 64, 4), (50, 50, 1), (37, 37, 2)])
def test_dcf_random_many_keys(n, w, m):
    """20k keys x 8 points each, numpy oracle."""
    rng, prg = DealerRng(bytes([n, w, m, 77]) * 8), CpuPrg()
    K, P = 20_000, 8
    nm, wm = np.uint64(umask(n)), np.uint64(umask(w))
    alphas = rng.ring(K, n)
    alphas[:3] = [0, 1, umask(n)]
    betas = rng.ring((K, m), w)
    X = rng.ring((K, P), n)
    X[:, 0] = alphas
    X[:, 1] = (alphas - np.uint64(1)) & nm
    X[:, 2] = (alphas + np.uint64(1)) & nm
    X[:, 3] = 0
    X[:, 4] = nm
    k0, k1 = dcf.keygen(rng, alphas, betas, n, w, prg)
    got = (dcf.eval(0, k0, X, prg) + dcf.eval(1, k1, X, prg)) & wm
    want = np.where((X < alphas[:, None])[..., None], betas[:, None, :], np.uint64(0))
    assert np.array_equal(got, want)


@pytest.mark.parametrize("n,w,m", [(50, 50, 1), (37, 64, 4), (64, 1, 3)])
def test_dcf_multi_point_equals_single(n, w, m):
    rnd = random.Random(n + w + m)
    rng, prg = DealerRng(b"mp" * 16), CpuPrg()
    alphas = edge_alphas(n, 10, rnd)
    N = len(alphas)
    betas = np.array([[rnd.getrandbits(w) for _ in range(m)] for _ in range(N)], np.uint64)
    X = np.array(points_matrix(n, alphas, rnd, extra=2), np.uint64)
    keys = dcf.keygen(rng, u64(alphas), betas, n, w, prg)
    for b in (0, 1):
        multi = dcf.eval(b, keys[b], X, prg)
        assert multi.shape == X.shape + (m,)
        for j in range(X.shape[1]):
            assert np.array_equal(multi[:, j], dcf.eval(b, keys[b], X[:, j].copy(), prg))


@pytest.mark.parametrize("n,m,w", [(1, 1, 1), (6, 3, 7), (16, 1, 64), (37, 4, 37), (50, 1, 50), (64, 4, 64), (64, 3, 1)])
def test_dcf_key_size_and_aes_count(n, m, w):
    N = 7
    prg = CpuPrg()
    rnd = random.Random(n)
    alphas = u64(rnd.getrandbits(n) for _ in range(N))
    betas = np.array([[rnd.getrandbits(w) for _ in range(m)] for _ in range(N)], np.uint64)
    k0, k1 = dcf.keygen(DealerRng(b"ks" * 16), alphas, betas, n, w, prg)
    assert DcfKey.key_bits(n, m, w) == 128 + n * (128 + 1 + m * w) + m * w
    for k in (k0, k1):
        assert (k.n, k.m, k.w) == (n, m, w)
        assert k.root.shape == (N, 2) and k.cw_seed.shape == (n, N, 2) and k.cw_tr.shape == (n, N)
        assert k.cw_v.shape == (n, N, m) and k.cw_final.shape == (N, m)
        assert set(np.unique(k.cw_tr).tolist()) <= {0, 1}
        if w < 64:  # payload words really fit in w bits
            assert int(k.cw_v.max()) < (1 << w) and int(k.cw_final.max()) < (1 << w)
        bits = k.root.size * 64 + k.cw_seed.size * 64 + k.cw_tr.size + (k.cw_v.size + k.cw_final.size) * w
        assert bits == N * DcfKey.key_bits(n, m, w)
        assert sum(int(np.prod(s)) * b for _, s, b in DcfKey.field_specs(n, m, w, N)) == bits
        assert {nm: a.shape for nm, a in k.arrays().items()} == {nm: s for nm, s, _ in DcfKey.field_specs(n, m, w, N)}
    x = u64(rnd.getrandbits(n) for _ in range(N))
    nb = -(-m * w // 128)
    assert DcfKey.aes_per_eval(n, m, w) == n * (1 + nb) + nb
    for b, k in ((0, k0), (1, k1)):
        before = prg.aes_calls
        dcf.eval(b, k, x, prg)
        assert prg.aes_calls - before == DcfKey.aes_per_eval(n, m, w) * N
        before = prg.aes_calls
        dcf.eval(b, k, np.stack([x, x, x, x], 1), prg)
        assert prg.aes_calls - before == DcfKey.aes_per_eval(n, m, w) * N * 4


def test_dcf_domain_reduction():
    n, w = 10, 16
    rnd = random.Random(8)
    alphas = [rnd.getrandbits(n) for _ in range(30)]
    xs = [rnd.getrandbits(n) for _ in range(30)]
    betas = [rnd.getrandbits(w) | 1 for _ in range(30)]
    hi_a = u64(a | (rnd.getrandbits(64 - n) << n) for a in alphas)
    hi_x = u64(x | (rnd.getrandbits(64 - n) << n) for x in xs)
    hi_b = u64(b | (rnd.getrandbits(64 - w) << w) for b in betas)
    k0, k1 = dcf.keygen(DealerRng(b"dr" * 16), hi_a, hi_b, n, w)
    got = dcf_reconstruct(dcf.eval(0, k0, hi_x), dcf.eval(1, k1, hi_x), w)
    assert got == [[b if x < a else 0] for a, b, x in zip(alphas, betas, xs)]


# ====================================================================== security sanity
def _balanced(bitmat: np.ndarray, lo=0.45, hi=0.55) -> np.ndarray:
    f = bitmat.mean(axis=0)
    return f, (f > lo) & (f < hi)


def _dpf_key_bit_columns(k: DpfKey) -> dict[str, np.ndarray]:
    """(keys, bit positions) 0/1 matrices of every key field."""
    N = k.elements
    seeds = arr_bits(k.cw_seed.transpose(1, 0, 2)).reshape(N, -1)  # all 128 bits of each level (bit 0 = tCW_L)
    return {
        "root": arr_bits(k.root).reshape(N, -1)[:, 1:],  # low bit is t (the party id), checked separately
        "cw_seed": seeds,
        "tCW_L": (k.cw_seed[..., 0] & U64(1)).T.astype(np.uint8),
        "cw_tr": k.cw_tr.T.astype(np.uint8),
        "cw_leaf": arr_bits(k.cw_leaf).reshape(N, -1),
    }


@pytest.fixture(scope="module")
def dpf_keys_fixed_alpha():
    n, K = 16, 4000
    rng = DealerRng(b"sec" * 10 + b"..")
    out = {}
    for alpha in (0x5A3C, 0, umask(n)):
        out[alpha] = dpf.keygen(rng, np.full(K, alpha, np.uint64), n)
    return n, out


def test_dpf_correction_words_balanced(dpf_keys_fixed_alpha):
    n, keys = dpf_keys_fixed_alpha
    for alpha, (k0, k1) in keys.items():
        for b, k in ((0, k0), (1, k1)):
            assert np.all((k.root[:, 0] & U64(1)) == U64(b))  # root control bits t0=0, t1=1
            for name, cols in _dpf_key_bit_columns(k).items():
                f, ok = _balanced(cols)
                assert ok.all(), (alpha, b, name, np.flatnonzero(~ok)[:10], f[~ok][:10])
        # the two parties' root seeds are independent (no shared bits beyond chance)
        agree = (arr_bits(k0.root) == arr_bits(k1.root)).reshape(k0.elements, -1)[:, 1:]
        f, ok = _balanced(agree)
        assert ok.all()
        # correction words are common to both parties
        assert np.array_equal(k0.cw_seed, k1.cw_seed) and np.array_equal(k0.cw_leaf, k1.cw_leaf)


def test_dpf_party0_key_alpha0_vs_alpha_max(dpf_keys_fixed_alpha):
    n, keys = dpf_keys_fixed_alpha
    a = _dpf_key_bit_columns(keys[0][0])
    z = _dpf_key_bit_columns(keys[umask(n)][0])
    for name in a:
        fa, oka = _balanced(a[name])
        fz, okz = _balanced(z[name])
        assert oka.all() and okz.all(), name
        # difference of two frequencies over 4000 keys: sigma ~ 0.011, allow ~6 sigma
        assert np.all(np.abs(fa - fz) < 0.07), (name, np.max(np.abs(fa - fz)))


def test_dcf_correction_words_balanced():
    n, w, K = 16, 16, 4000
    rng = DealerRng(b"dcf-sec" * 4 + b"....")
    views = {}
    for alpha in (0x1234, 0, umask(n)):
        beta = np.full((K, 2), 0xBEEF, np.uint64)
        k0, k1 = dcf.keygen(rng, np.full(K, alpha, np.uint64), beta, n, w)
        for b, k in ((0, k0), (1, k1)):
            assert np.all((k.root[:, 0] & U64(1)) == U64(b))
        cols = {
            "root0": arr_bits(k0.root).reshape(K, -1)[:, 1:],
            "cw_seed": arr_bits(k0.cw_seed.transpose(1, 0, 2)).reshape(K, -1),
            "cw_tr": k0.cw_tr.T.astype(np.uint8),
            "cw_v": arr_bits(k0.cw_v.transpose(1, 0, 2)).reshape(K, n, 2, 64)[..., :w].reshape(K, -1),
            "cw_final": arr_bits(k0.cw_final).reshape(K, 2, 64)[..., :w].reshape(K, -1),
        }
        for name, c in cols.items():
            f, ok = _balanced(c)
            assert ok.all(), (alpha, name, f[~ok][:10])
        views[alpha] = {k: c.mean(axis=0) for k, c in cols.items()}
    for name in views[0]:
        assert np.all(np.abs(views[0][name] - views[umask(n)][name]) < 0.07), name


# ====================================================================== bad input
@pytest.mark.parametrize("n", [0, 65])
def test_bad_domain_width(n):
    rng = DealerRng(b"b" * 32)
    with pytest.raises(ParameterError):
        dpf.keygen(rng, u64([0, 1]), n)
    with pytest.raises(ParameterError):
        dpf.lt_keygen(rng, u64([0, 1]), n)
    with pytest.raises(ParameterError):
        dcf.keygen(rng, u64([0, 1]), u64([1, 1]), n, 8)
    with pytest.raises(ParameterError):
        dcf.keygen(rng, u64([0, 1]), u64([1, 1]), 8, n)  # payload width


def test_bad_counts():
    rng = DealerRng(b"c" * 32)
    k0, _ = dpf.keygen(rng, u64([1, 2, 3]), 12)
    for fn in (dpf.eval, dpf.prefix_parity, dpf.lt_eval):
        with pytest.raises(ParameterError):
            fn(0, k0, u64([1, 2]))
        with pytest.raises(ParameterError):
            fn(0, k0, np.zeros((4, 2), np.uint64))
    d0, _ = dcf.keygen(rng, u64([1, 2, 3]), u64([1, 1, 1]), 12, 8)
    with pytest.raises(ParameterError):
        dcf.eval(0, d0, u64([1, 2]))
    with pytest.raises(ParameterError):
        dcf.eval(0, d0, np.zeros((2, 5), np.uint64))
    with pytest.raises(ParameterError):
        dcf.keygen(rng, u64([1, 2, 3]), u64([1, 1]), 12, 8)  # alphas vs payloads
    with pytest.raises(ParameterError):
        dcf.keygen(rng, u64([1, 2]), np.zeros((2, 0), np.uint64), 12, 8)  # empty payload


def test_eval_full_too_large():
    k0, _ = dpf.keygen(DealerRng(b"f" * 32), u64([5]), 30)
    with pytest.raises(ParameterError):
        dpf.eval_full(0, k0)


def test_scalar_point_is_a_clear_error():
    from fusec.runtime import dcf as _dcf, dpf as _dpf
    from fusec.runtime.rng import DealerRng as _Rng
    rng = _Rng()
    k0, _ = _dcf.keygen(rng, np.array([3], np.uint64), np.array([[1]], np.uint64), 8, 8)
    with pytest.raises(ParameterError):
        _dcf.eval(0, k0, np.uint64(3))
    l0, _ = _dpf.lt_keygen(rng, np.array([3], np.uint64), 8)
    with pytest.raises(ParameterError):
        _dpf.lt_eval(0, l0, np.uint64(3))
