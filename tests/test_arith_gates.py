"""Multiply, matmul, input/output gates against numpy integer arithmetic."""
import numpy as np
import pytest

from fusec.runtime import ring
from fusec.runtime.gates.arith import MatMulPrivate, Mul
from fusec.runtime.gates.linear import Add, AddPublic, MatMulPublic, MulPublic
from fusec.runtime.rng import DealerRng
from tests.harness import forced_masks, run_gate


@pytest.mark.parametrize("n", [1, 3, 6])
def test_mul_exhaustive_small(n):
    vals = np.arange(2 ** n, dtype=np.uint64)
    x, y = np.meshgrid(vals, vals)
    x, y = x.reshape(-1), y.reshape(-1)
    for rx in vals:
        got, _, logs = run_gate(Mul(x.size, n), [x, y], [n, n], in_masks=[np.full_like(x, rx), np.full_like(y, (rx * 5 + 3) % 2 ** n)])
        assert np.array_equal(got, (x * y) & ring.mask(n))
    assert logs[0].rounds == 1


@pytest.mark.parametrize("n", [37, 50, 64])
def test_mul_random_and_forced_masks(n):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 2 ** 63, 500, dtype=np.uint64) & ring.mask(n)
    y = rng.integers(0, 2 ** 63, 500, dtype=np.uint64) & ring.mask(n)
    expect = (x * y) & ring.mask(n)
    for mask in [None] + forced_masks(x.shape, n):
        masks = None if mask is None else [mask, mask]
        got, _, logs = run_gate(Mul(x.size, n), [x, y], [n, n], in_masks=masks)
        assert np.array_equal(got, expect)
        assert logs[0].bytes_sent["mul"] == ring.packed_size(x.size, n)


def test_matmul_private_and_public_against_numpy():
    n = 50
    rng = np.random.default_rng(0)
    X = rng.integers(-1000, 1000, (2, 3, 4))
    W = rng.integers(-1000, 1000, (2, 4, 5))
    expect = ring.from_signed(np.matmul(X, W), n)
    got, _, _ = run_gate(MatMulPrivate((2, 3, 4), (2, 4, 5), n), [ring.from_signed(X, n), ring.from_signed(W, n)], [n, n])
    assert np.array_equal(got.reshape(expect.shape), expect)
    W2 = rng.integers(-1000, 1000, (4, 6))
    got, _, logs = run_gate(MatMulPublic((2, 3, 4), W2, n), [ring.from_signed(X, n)], [n])
    assert np.array_equal(got.reshape(2, 3, 6), ring.from_signed(X @ W2, n))
    assert logs[0].rounds == 0


def test_linear_gates():
    n = 37
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2 ** n, 100, dtype=np.uint64)
    y = rng.integers(0, 2 ** n, 100, dtype=np.uint64)
    m = ring.mask(n)
    assert np.array_equal(run_gate(Add(100, n), [x, y], [n, n])[0], (x + y) & m)
    assert np.array_equal(run_gate(Add(100, n, subtract=True), [x, y], [n, n])[0], (x - y) & m)
    assert np.array_equal(run_gate(MulPublic(100, n, -3), [x], [n])[0], (x * np.uint64(2 ** 64 - 3)) & m)
    assert np.array_equal(run_gate(AddPublic(100, n, y), [x], [n])[0], (x + y) & m)


def test_parallel_sub_gates_share_rounds():
    """Two one-round gates run through base.parallel inside one generator: one round."""
    from fusec.runtime.gates.base import parallel
    from tests.harness import party_backends, run_pair
    n = 37
    rng = DealerRng()
    x = rng.ring(50, n)
    y = rng.ring(50, n)
    g1, g2 = Mul(50, n), Mul(50, n)
    rx, ry = rng.ring(50, n), rng.ring(50, n)
    o1, a0, a1 = g1.keygen(rng, [rx, ry])
    o2, b0, b1 = g2.keygen(rng, [ry, rx])
    ux, uy = (x + rx) & ring.mask(n), (y + ry) & ring.mask(n)
    bes = party_backends()  # the test backend (FUSEC_TEST_BACKEND): keys and inputs staged on it

    def gens(p, k1, k2):
        be = bes[p]
        vx, vy = be.asarray(ux), be.asarray(uy)
        return [parallel(g1.eval(p, be.stage_key(k1), [vx, vy], be), g2.eval(p, be.stage_key(k2), [vy, vx], be))]

    r0, r1, logs = run_pair(gens(0, a0, b0), gens(1, a1, b1), bes)
    z1, z2 = r0[0]
    assert np.array_equal((z1 - o1) & ring.mask(n), (x * y) & ring.mask(n))
    assert np.array_equal((z2 - o2) & ring.mask(n), (x * y) & ring.mask(n))
    assert logs[0].rounds == 1


@pytest.mark.parametrize("n", [37, 50, 64])
def test_matmul_and_linear_gates_forced_masks(n):
    """Every width, with masks forced to 0, 2^n - 1 and 2^(n-1) on every operand."""
    rng = np.random.default_rng(n)
    m = ring.mask(n)
    X = rng.integers(0, 2 ** 63, (2, 3, 4), dtype=np.uint64) & m
    W = rng.integers(0, 2 ** 63, (2, 4, 5), dtype=np.uint64) & m
    Wp = rng.integers(-50, 50, (4, 6))
    expect = np.matmul(X, W) & m                       # uint64 wraps mod 2^64, exact mod 2^n
    expect_pub = np.matmul(X, Wp.astype(np.int64).astype(np.uint64)) & m
    y = rng.integers(0, 2 ** 63, 24, dtype=np.uint64) & m
    for fx, fw in zip(forced_masks(X.shape, n), forced_masks(W.shape, n)):
        got, _, _ = run_gate(MatMulPrivate(X.shape, W.shape, n), [X, W], [n, n], in_masks=[fx, fw])
        assert np.array_equal(got.reshape(expect.shape), expect)
        got, _, _ = run_gate(MatMulPublic(X.shape, Wp, n), [X], [n], in_masks=[fx])
        assert np.array_equal(got.reshape(expect_pub.shape), expect_pub)
        fy = fx.reshape(-1)
        assert np.array_equal(run_gate(Add(24, n), [X.reshape(-1), y], [n, n], in_masks=[fy, fy])[0],
                              (X.reshape(-1) + y) & m)
        assert np.array_equal(run_gate(MulPublic(24, n, -7), [y], [n], in_masks=[fy])[0],
                              (y * np.uint64(2 ** 64 - 7)) & m)
