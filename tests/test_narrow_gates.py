"""Gates on narrow proven views: TruncateNarrow and the view/value-width PackedLookup/ScalarGate.

Oracles are independent of the gates' formulas: Python ints (``x >> s`` is floor on negative
values) or int64 numpy at small widths, the spec's own integer reference, and the float
function a spec was fitted to. Masks are forced (0, 2^n - 1, 2^(n-1), every mask at small
widths) or drawn from a seeded DealerRng, so every check here is deterministic.
"""
from __future__ import annotations

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
