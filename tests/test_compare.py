"""Comparison gates (runtime/gates/compare.py) against numpy integer arithmetic on signed values.

Every run goes through the two-thread harness, with each party's keys packed into and
read back from its key-layout slot, and checks the gate's cost model: key bits of the
arrays, AES blocks each party's eval really encrypted, rounds and bytes each party sent.
"""
import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.gates.base import GateCost
from fusec.runtime.gates.compare import DReLU, IntervalContainment, LutDpf, MaxTree, ReLU2, Select
from fusec.runtime.rng import DealerRng
from tests.harness import CostProbe, forced_masks, run_gate

LARGE = [37, 50, 64]


# ----------------------------------------------------------------------------- helpers
def expected_bytes(gate) -> int:
    """Bytes one party sends: each open is packed to its width (DESIGN §5.1)."""
    E = gate.elements
    if isinstance(gate, DReLU):
        return ring.packed_size(E, 1)
    if isinstance(gate, Select):
        return ring.packed_size(E, gate.bits)
    if isinstance(gate, ReLU2):
        return ring.packed_size(E, 1) + ring.packed_size(E, gate.bits)
    if isinstance(gate, MaxTree):
        return sum(expected_bytes(g) for g in gate.levels)
    if isinstance(gate, LutDpf):
        return ring.packed_size(E, gate.out_bits)
    if isinstance(gate, IntervalContainment):
        return ring.packed_size(E * gate.intervals, 1)
    raise AssertionError(gate)


def run(gate, values, bits, masks=None, rng=None):
    """Evaluate through the harness; check cost model; return the unmasked output."""
    c = CostProbe(gate)
    got, r_out, logs = run_gate(c, values, bits, rng=rng, in_masks=masks)
    cost = gate.cost()
    for p in (0, 1):
        assert c.aes[p] == cost.aes * gate.elements, (p, c.aes[p], cost.aes * gate.elements)
        assert logs[p].rounds == cost.rounds
        sent = sum(logs[p].bytes_sent.values())
        assert sent == expected_bytes(gate)
        assert cost.open_bits * gate.elements <= 8 * sent < cost.open_bits * gate.elements + 8 * max(cost.rounds, 1)
    return got


def all_pairs(n):
    """Every (x, r) in Z_{2^n}^2, flattened."""
    v = np.arange(1 << n, dtype=np.uint64)
    x, r = np.meshgrid(v, v, indexing="ij")
    return x.reshape(-1), r.reshape(-1)


def signed(x, n):
    return ring.to_signed(np.asarray(x, np.uint64), n).astype(np.int64)


def edge_values(n, count, seed):
    """Random n-bit values plus the edges of the signed range and small magnitudes."""
    g = np.random.default_rng(seed)
    H = 1 << (n - 1)
    edges = [0, 1, 2, -1, -2, H - 1, H - 2, -H, -H + 1, 1000, -1000]
    rand = g.integers(-(2 ** 62), 2 ** 62, count, dtype=np.int64)
    small = g.integers(-5000, 5000, count // 4, dtype=np.int64)
    return ring.from_signed(np.concatenate([np.array(edges, np.int64), rand, small]), n)


def mask_sets(shape, n, seed):
    """None (harness draws fresh random masks), explicit random masks, and the forced ones."""
    g = np.random.default_rng(seed)
    rand = g.integers(0, 2 ** 63, shape, dtype=np.uint64) * np.uint64(2) + g.integers(0, 2, shape, dtype=np.uint64)
    return [None, rand & ring.mask(n)] + forced_masks(shape, n)


# ------------------------------------------------------------------------------ DReLU
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_drelu_exhaustive(n):
    x, r = all_pairs(n)
    got = run(DReLU(x.size, n), [x], [n], [r])
    assert np.array_equal(got, (signed(x, n) >= 0).astype(np.uint64))


def test_drelu_exhaustive_with_tree_levels():
    # n - 1 = 9 > 7 leaf bits: the DPF walks 2 tree levels before the leaf block
    n = 10
    g = np.random.default_rng(10)
    x = np.tile(np.arange(1 << n, dtype=np.uint64), 24)
    r = np.repeat(np.concatenate([[0, (1 << n) - 1, 1 << (n - 1), 127, 128, 511, 512, 513],
                                  g.integers(0, 1 << n, 16)]).astype(np.uint64), 1 << n)
    got = run(DReLU(x.size, n), [x], [n], [r])
    assert np.array_equal(got, (signed(x, n) >= 0).astype(np.uint64))


@pytest.mark.parametrize("n", LARGE)
def test_drelu_random(n):
    x = edge_values(n, 400, n)
    for masks in mask_sets(x.shape, n, n + 1):
        got = run(DReLU(x.size, n), [x], [n], None if masks is None else [masks])
        assert np.array_equal(got, (signed(x, n) >= 0).astype(np.uint64))


# ----------------------------------------------------------------------------- Select
@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_select_exhaustive(n):
    v = np.arange(1 << n, dtype=np.uint64)
    b, x, rho, r = (a.reshape(-1) for a in np.meshgrid([0, 1], v, [0, 1], v, indexing="ij"))
    b, rho = b.astype(np.uint64), rho.astype(np.uint64)
    got = run(Select(x.size, n), [b, x], [1, n], [rho, r])
    assert np.array_equal(signed(got, n), b.astype(np.int64) * signed(x, n))


@pytest.mark.parametrize("n", LARGE)
def test_select_random(n):
    x = edge_values(n, 300, n)
    b = np.random.default_rng(n).integers(0, 2, x.size).astype(np.uint64)
    expect = b.astype(np.int64) * signed(x, n)
    for i, masks in enumerate(mask_sets(x.shape, n, n + 2)):
        bit_masks = None if masks is None else (masks & np.uint64(1) if i == 1 else np.full(x.shape, i % 2, np.uint64))
        got = run(Select(x.size, n), [b, x], [1, n], None if masks is None else [bit_masks, masks])
        assert np.array_equal(signed(got, n), expect)


# ------------------------------------------------------------------------------ ReLU
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_relu2_exhaustive(n):
    x, r = all_pairs(n)
    got = run(ReLU2(x.size, n), [x], [n], [r])
    assert np.array_equal(signed(got, n), np.maximum(signed(x, n), 0))


@pytest.mark.parametrize("n", LARGE)
def test_relu2_random(n):
    x = edge_values(n, 400, n + 3)
    for masks in mask_sets(x.shape, n, n + 4):
        got = run(ReLU2(x.size, n), [x], [n], None if masks is None else [masks])
        assert np.array_equal(signed(got, n), np.maximum(signed(x, n), 0))


# --------------------------------------------------------------------------- MaxTree
def _tuples(n, k):
    """Every k-tuple of values in the exact range [-2^(n-2), 2^(n-2)), as (count, k) int64."""
    q = 1 << (n - 2)
    v = np.arange(-q, q, dtype=np.int64)
    return np.stack(np.meshgrid(*([v] * k), indexing="ij"), axis=-1).reshape(-1, k)


@pytest.mark.parametrize("n,k", [(5, 2), (5, 3), (4, 4), (4, 5)])
def test_max_tree_all_inputs_last_axis(n, k):
    X = _tuples(n, k)
    gate = MaxTree(X.shape, n)
    assert len(gate.levels) == int(np.ceil(np.log2(k)))
    got = run(gate, [ring.from_signed(X, n)], [n])
    assert got.shape == (X.shape[0],)
    assert np.array_equal(signed(got, n), X.max(axis=1))


@pytest.mark.parametrize("n,k", [(4, 3), (3, 7)])
def test_max_tree_all_inputs_axis0(n, k):
    X = _tuples(n, k).T.copy()                              # (k, count), reduce axis 0
    for masks in [None] + forced_masks(X.shape, n):
        got = run(MaxTree(X.shape, n, axis=0), [ring.from_signed(X, n)], [n], None if masks is None else [masks])
        assert np.array_equal(signed(got, n), X.max(axis=0))


@pytest.mark.parametrize("n", LARGE)
def test_max_tree_random(n):
    g = np.random.default_rng(n)
    q = 1 << (n - 2)
    shape = (3, 9, 4)
    X = g.integers(-q, q, shape, dtype=np.int64)
    X[0, :, 0] = -q                                          # a row at the low edge
    X[1, :, 1] = q - 1
    X[1, 4, 1] = -q                                          # extremes in one row
    for axis in (1, -1):
        for masks in mask_sets(shape, n, n + axis):
            gate = MaxTree(shape, n, axis=axis)
            got = run(gate, [ring.from_signed(X, n)], [n], None if masks is None else [masks])
            assert np.array_equal(signed(got, n), X.max(axis=axis))
    one = MaxTree((5, 1), n)                                 # k = 1: the identity, no key, no round
    got = run(one, [ring.from_signed(X[0, :5, :1], n)], [n])
    assert np.array_equal(signed(got, n), X[0, :5, 0])
    assert one.cost() == GateCost(0, 0, 0, 0)


# ---------------------------------------------------------------------------------- LUT
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_lut_exhaustive(n):
    x, r = all_pairs(n)
    g = np.random.default_rng(n)
    for k in sorted({1, (n + 1) // 2, n}):
        for out in (1, 7, 64):
            T = g.integers(-(2 ** 62), 2 ** 62, 1 << k, dtype=np.int64)
            got = run(LutDpf(x.size, n, T, out, view_bits=k), [x], [n], [r])
            idx = signed(x, n) % (1 << k)                     # table indexed by x mod 2^k
            assert np.array_equal(got, ring.from_signed(T[idx], out))


@pytest.mark.parametrize("n", LARGE)
def test_lut_random(n):
    g = np.random.default_rng(n)
    xs = g.integers(-128, 128, 300, dtype=np.int64)           # fits in k bits (two's complement)
    xs[:4] = [-128, 127, 0, -1]
    xu = g.integers(0, 256, 100, dtype=np.int64)              # fits unsigned
    xb = signed(edge_values(n, 100, n), n)                    # anything: low 8 bits index T
    X = np.concatenate([xs, xu, xb])
    x = ring.from_signed(X, n)
    for out in (8, n, 64):
        T = g.integers(-(2 ** 62), 2 ** 62, 256, dtype=np.int64)
        expect = ring.from_signed(T[X % 256], out)
        for masks in mask_sets(x.shape, n, n + out):
            got = run(LutDpf(x.size, n, T, out), [x], [n], None if masks is None else [masks])
            assert np.array_equal(got, expect)


# ------------------------------------------------------------------- interval containment
def _ic_expect(X, bounds):
    return np.stack([(X >= p) & (X <= q) for p, q in bounds], axis=1).astype(np.uint64)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_interval_containment_exhaustive(n):
    x, r = all_pairs(n)
    H = 1 << (n - 1)
    # every signed interval up to n = 4; for n = 5, 6 every interval between edge points
    vals = range(-H, H) if n <= 5 else sorted({-H, -H + 1, -H + 2, -3, -2, -1, 0, 1, 2, 7, H - 3, H - 2, H - 1})
    bounds = [(p, q) for p in vals for q in vals if p <= q]
    got = run(IntervalContainment(x.size, n, bounds), [x], [n], [r])
    assert got.shape == (x.size, len(bounds))
    assert np.array_equal(got, _ic_expect(signed(x, n), bounds))
    ub = [(p, q) for p in range(1 << n) for q in range(1 << n) if p <= q][:64]
    got = run(IntervalContainment(x.size, n, ub, signed=False), [x], [n], [r])
    assert np.array_equal(got, _ic_expect(x.astype(np.int64), ub))


@pytest.mark.parametrize("n", LARGE)
def test_interval_containment_random(n):
    H = 1 << (n - 1)
    bounds = [(-H, -1), (0, H - 1), (-1000, 1000), (5, 5), (-H, H - 1), (H - 1, H - 1), (-H, -H), (-7, 3000)]
    base = signed(edge_values(n, 200, n), n)
    near = np.array([c + d for p, q in bounds for c in (p, q) for d in (-1, 0, 1)], dtype=object)
    near = np.array([(int(v) + H) % (2 * H) - H for v in near], dtype=np.int64)   # wrap into range
    X = np.concatenate([base, near])
    x = ring.from_signed(X, n)
    expect = _ic_expect(X, bounds)
    for masks in mask_sets(x.shape, n, n + 5):
        got = run(IntervalContainment(x.size, n, bounds), [x], [n], None if masks is None else [masks])
        assert np.array_equal(got, expect)
    # unsigned bounds, including the top of the ring
    top = (1 << n) - 1
    ub = [(0, top), (top, top), (0, 0), (1, H), (H, top)]
    got = run(IntervalContainment(x.size, n, ub, signed=False), [x], [n])
    Xu = x.astype(object)
    assert np.array_equal(got, np.stack([(Xu >= p) & (Xu <= q) for p, q in ub], axis=1).astype(np.uint64))


# --------------------------------------------------------------------------- cost, errors
def test_costs_at_n50():
    n = 50
    lt = 256 + 129 * (49 - 7)                                 # (n-1)-bit early-terminated DPF
    assert DReLU(1, n).cost() == GateCost(lt + 1, 49 - 7 + 1, 1, 1)
    assert Select(1, n).cost() == GateCost(4 * n, 0, 1, n)
    assert ReLU2(1, n).cost() == GateCost(lt + 1 + 4 * n, 43, 2, 1 + n)
    assert MaxTree((10, 8), n).cost() == GateCost(7 * (lt + 1 + 4 * n), 7 * 43, 6, 7 * (1 + n))
    assert LutDpf(1, n, np.zeros(256, np.int64), n).cost() == GateCost(128 + 129 * 8 + 2 * n, 3 * 256 - 2, 1, n)
    dcf_bits = 128 + n * (129 + 1) + 1
    assert IntervalContainment(1, n, [(0, 5), (-3, 9)]).cost() == GateCost(dcf_bits + 2, 2 * 2 * (2 * n + 1), 1, 2)
    for g in (DReLU(3, 1), ReLU2(3, 1)):
        assert g.key_bits_total() == g.cost().key_bits * 3
    assert MaxTree((4, 6), 50).describe()["cost"]["rounds"] == 6


def test_bad_parameters():
    for make in (
        lambda: DReLU(4, 0), lambda: DReLU(4, 65), lambda: DReLU(0, 8), lambda: Select(4, 70),
        lambda: ReLU2(-1, 8),
        lambda: MaxTree((3, 0), 8), lambda: MaxTree((3, 4), 8, axis=2), lambda: MaxTree((), 8),
        lambda: MaxTree((3, 4), 8, relu="spline"),
        lambda: LutDpf(4, 8, np.arange(8), 8, view_bits=4),        # table size != 2^k
        lambda: LutDpf(4, 4, np.arange(32), 8),                    # view wider than input
        lambda: LutDpf(4, 8, np.arange(6), 8),                     # not a power of two
        lambda: LutDpf(4, 8, np.linspace(0, 1, 16), 8),            # float table
        lambda: LutDpf(4, 8, np.arange(16), 0),
        lambda: IntervalContainment(4, 8, []), lambda: IntervalContainment(4, 8, [(5, 3)]),
        lambda: IntervalContainment(4, 8, [(-129, 0)]), lambda: IntervalContainment(4, 8, [(0, 128)]),
        lambda: IntervalContainment(4, 8, [(-1, 3)], signed=False), lambda: IntervalContainment(4, 8, [5]),
    ):
        with pytest.raises(ParameterError):
            make()
    g = DReLU(4, 8)
    with pytest.raises(ParameterError, match="elements"):
        g.keygen(DealerRng(), [np.zeros(5, np.uint64)])
