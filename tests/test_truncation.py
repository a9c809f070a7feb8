"""Truncation family against integer arithmetic on signed/unsigned representatives.

Oracles use Python ints (exact at every width up to 64, floor semantics for ``>>`` on
negative values); nothing is derived from the gates' own formulas. Exhaustive over all
(x, r) pairs at n in {4, 6}; random values + forced masks at n in {37, 50, 64}.
"""
import numpy as np
import pytest

from fusec.errors import ParameterError
from fusec.runtime import ring
from fusec.runtime.backend import get_backend
from fusec.runtime.dcf import DcfKey
from fusec.runtime.gates.truncation import (ArsExact, ArsOneRound, SignExtend, TruncateLocal,
                                            TruncateReduce, TruncateSlack)
from fusec.runtime.layout import GateSlot, KeyField, pack_gate_key, unpack_gate_key
from fusec.runtime.rng import DealerRng
from tests.harness import forced_masks, run_gate


# ----------------------------------------------------------------------------- oracles
def ints(a):
    return [int(v) for v in np.asarray(a, np.uint64).reshape(-1)]


def signed(vals, n):
    h = 1 << (n - 1)
    return [(v ^ h) - h for v in vals]


def enc(vals, n):
    return np.array([v % (1 << n) for v in vals], dtype=np.uint64)


def oracle_tr(x, n, s):  # logical shift of the unsigned representative
    return enc([v >> s for v in ints(x)], n - s)


def oracle_se(x, m, n):
    return enc(signed(ints(x), m), n)


def oracle_ars(x, n, s):  # floor(x / 2^s) of the signed representative
    return enc([v >> s for v in signed(ints(x), n)], n)


# which gate, its oracle, and the width of each open it makes (in order)
def oracle(gate, x):
    n = gate.bits
    if isinstance(gate, TruncateReduce):
        return oracle_tr(x, n, gate.shift)
    if isinstance(gate, SignExtend):
        return oracle_se(x, n, gate.out_bits)
    if isinstance(gate, (ArsExact, ArsOneRound, TruncateSlack)):
        return oracle_ars(x, n, gate.shift)
    raise AssertionError(gate)


def open_widths(gate):
    n = gate.bits
    if isinstance(gate, TruncateReduce):
        return [n - gate.shift]
    if isinstance(gate, SignExtend):
        return [gate.out_bits]
    if isinstance(gate, ArsExact):
        return [n - gate.shift, n]
    if isinstance(gate, (ArsOneRound, TruncateSlack)):
        return [n]
    if isinstance(gate, TruncateLocal):
        return []
    raise AssertionError(gate)


def check_log(gate, logs):
    widths = open_widths(gate)
    c = gate.cost()
    assert c.rounds == len(widths) and c.open_bits == sum(widths)
    for lg in logs:
        assert lg.rounds == c.rounds
        assert sum(lg.bytes_sent.values()) == sum(ring.packed_size(gate.elements, w) for w in widths)
        if widths:
            assert set(lg.bytes_sent) == {"rescale"}


def check_local(got, x, n, s):
    """TruncateLocal: result - floor(x/2^s) in {0, +1} mod 2^(n-s). Returns the errors."""
    exact = [v >> s for v in signed(ints(x), n)]
    err = [(g - e) % (1 << (n - s)) for g, e in zip(ints(got), exact)]
    assert set(err) <= {0, 1}, sorted(set(err))[:5]
    return err


def all_pairs(n):
    v = np.arange(1 << n, dtype=np.uint64)
    return np.repeat(v, 1 << n), np.tile(v, 1 << n)  # every (x, r)


# ----------------------------------------------------------------------------- exhaustive
GATES_S = [TruncateReduce, ArsExact, ArsOneRound]


@pytest.mark.parametrize("n", [4, 6])
@pytest.mark.parametrize("cls", GATES_S, ids=lambda c: c.__name__)
def test_exhaustive_shift_gates(cls, n):
    x, r = all_pairs(n)
    for s in range(1, n):
        gate = cls(x.size, n, s)
        got, _, logs = run_gate(gate, [x], [n], in_masks=[r])
        assert np.array_equal(got, oracle(gate, x)), (cls.__name__, n, s)
        check_log(gate, logs)


@pytest.mark.parametrize("n", [4, 6])
def test_exhaustive_sign_extend(n):
    for m in range(1, n):
        x, r = all_pairs(m)
        gate = SignExtend(x.size, m, n)
        got, _, logs = run_gate(gate, [x], [m], in_masks=[r])
        assert np.array_equal(got, oracle_se(x, m, n)), (m, n)
        check_log(gate, logs)


@pytest.mark.parametrize("n", [4, 6])
def test_exhaustive_slack_inside_valid_range(n):
    q = 1 << (n - 2)
    xs = enc(range(-q, q), n)  # exactly the valid range -2^(n-2) <= x < 2^(n-2)
    rs = np.arange(1 << n, dtype=np.uint64)
    x, r = np.repeat(xs, rs.size), np.tile(rs, xs.size)
    for s in range(1, n - 1):
        gate = TruncateSlack(x.size, n, s)
        got, _, logs = run_gate(gate, [x], [n], in_masks=[r])
        assert np.array_equal(got, oracle_ars(x, n, s)), (n, s)
        check_log(gate, logs)


@pytest.mark.parametrize("n", [4, 6])
def test_exhaustive_local(n):
    x, r = all_pairs(n)
    for s in range(1, n):
        gate = TruncateLocal(x.size, n, s)
        got, r_out, logs = run_gate(gate, [x], [n], in_masks=[r])
        assert gate.out_bits == n - s
        err = check_local(got, x, n, s)
        assert set(err) == {0, 1}  # both happen over all masks
        assert all(e == 0 for e, rv in zip(err, ints(r)) if rv % (1 << s) == 0)  # no carry without low mask bits
        assert np.array_equal(r_out, r >> np.uint64(s))
        check_log(gate, logs)


# ----------------------------------------------------------------------------- random, wide rings
def edge_values(n, s, count, seed):
    """Random n-bit values plus the edges: 0, +-1, extremes, around multiples of 2^s."""
    rng = np.random.default_rng(seed)
    h = 1 << (n - 1)
    edges = [0, 1, -1, h - 1, -h, -h + 1, 1 << s, -(1 << s), (1 << s) - 1, -(1 << s) + 1,
             (1 << s) + 1, -(1 << s) - 1, h - (1 << s), -h + (1 << s)]
    rand = ints(rng.integers(0, 2 ** 63, count - len(edges), dtype=np.uint64) * np.uint64(2)
                + rng.integers(0, 2, count - len(edges), dtype=np.uint64))
    return enc(edges, n), enc(rand, n)


def mask_sets(shape, n):
    return [None] + [[m] for m in forced_masks(shape, n)]


WIDE = [37, 50, 64]


@pytest.mark.parametrize("n", WIDE)
@pytest.mark.parametrize("cls", GATES_S, ids=lambda c: c.__name__)
def test_random_shift_gates(cls, n):
    for s in (1, 12, n - 1):
        e, rnd = edge_values(n, s, 300, seed=n * 100 + s)
        x = np.concatenate([e, rnd])
        gate = cls(x.size, n, s)
        for masks in mask_sets(x.shape, n):
            got, _, logs = run_gate(gate, [x], [n], in_masks=masks)
            assert np.array_equal(got, oracle(gate, x)), (cls.__name__, n, s, masks and int(masks[0][0]))
            check_log(gate, logs)


@pytest.mark.parametrize("n", WIDE)
def test_random_sign_extend(n):
    for m in (1, n - 12, n - 1):
        e, rnd = edge_values(m, 0, 300, seed=m) if m > 4 else (np.arange(1 << m, dtype=np.uint64),
                                                                  np.arange(1 << m, dtype=np.uint64))
        x = np.concatenate([e, rnd])
        gate = SignExtend(x.size, m, n)
        for masks in mask_sets(x.shape, m):
            got, _, logs = run_gate(gate, [x], [m], in_masks=masks)
            assert np.array_equal(got, oracle_se(x, m, n)), (m, n)
            check_log(gate, logs)


@pytest.mark.parametrize("n", WIDE)
def test_random_slack_inside_valid_range(n):
    for s in (1, 12, n - 2):
        q = 1 << (n - 2)
        rng = np.random.default_rng(n + s)
        vals = [v for v in (-q, q - 1, 0, 1, -1, (1 << s), -(1 << s), (1 << s) - 1, -(1 << s) - 1,
                            q - (1 << s), q - (1 << s) - 1, -q + (1 << s) - 1, -q + (1 << s))
                if -q <= v < q]
        vals += [int(v) for v in rng.integers(-q, q, 300 - len(vals), dtype=np.int64)] if n < 64 else \
                [int(v) >> 1 for v in rng.integers(-2 ** 63, 2 ** 63 - 1, 300 - len(vals), dtype=np.int64)]
        assert all(-q <= v < q for v in vals)
        x = enc(vals, n)
        gate = TruncateSlack(x.size, n, s)
        for masks in mask_sets(x.shape, n):
            got, _, logs = run_gate(gate, [x], [n], in_masks=masks)
            assert np.array_equal(got, oracle_ars(x, n, s)), (n, s)
            check_log(gate, logs)


def test_slack_outside_range_is_wrong_as_documented():
    """Sanity of the precondition: some x with |x| >= 2^(n-2) do come out wrong."""
    n, s = 6, 2
    x, r = all_pairs(n)
    got, _, _ = run_gate(TruncateSlack(x.size, n, s), [x], [n], in_masks=[r])
    bad = got != oracle_ars(x, n, s)
    sx = np.array(signed(ints(x), n))
    assert bad.any() and not bad[(sx >= -(1 << (n - 2))) & (sx < (1 << (n - 2)))].any()


@pytest.mark.parametrize("n", WIDE)
def test_random_local(n):
    for s in (1, 12, n - 1):
        e, rnd = edge_values(n, s, 300, seed=7 * n + s)
        x = np.concatenate([e, rnd])
        gate = TruncateLocal(x.size, n, s)
        for masks in mask_sets(x.shape, n):
            got, _, logs = run_gate(gate, [x], [n], in_masks=masks)
            err = check_local(got, x, n, s)
            if masks is not None and int(masks[0][0]) % (1 << s) == 0:
                assert not any(err)
            check_log(gate, logs)


# ----------------------------------------------------------------------------- cost model
def lockstep(gate, keys, us):
    """Evaluate both parties in one thread, each with its own backend; return outputs, AES, widths."""
    bes = [get_backend("cpu"), get_backend("cpu")]
    before = [be.aes_calls for be in bes]
    gens = [gate.eval(p, keys[p], [u.copy() for u in us], bes[p]) for p in (0, 1)]
    reqs, res, widths = [None, None], [None, None], []

    def step(p, val):
        try:
            reqs[p] = next(gens[p]) if val is None else gens[p].send(val)
            return False
        except StopIteration as stop:
            res[p] = stop.value
            return True

    done = [step(p, None) for p in (0, 1)]
    while not all(done):
        assert not any(done), "parties disagree on the number of opens"
        w = reqs[0].bits
        assert reqs[1].bits == w and reqs[0].scope == "rescale"
        widths.append(w)
        val = (np.asarray(reqs[0].share) + np.asarray(reqs[1].share)) & ring.mask(w)
        done = [step(p, val.copy()) for p in (0, 1)]
    aes = [be.aes_calls - b for be, b in zip(bes, before)]
    return res, aes, widths


COST_CASES = [(TruncateReduce, 50, 12), (SignExtend, 38, 50), (ArsExact, 50, 12), (ArsOneRound, 50, 12),
              (TruncateSlack, 50, 12), (TruncateLocal, 50, 12), (ArsOneRound, 64, 63), (TruncateReduce, 64, 1),
              (ArsExact, 37, 36), (TruncateSlack, 64, 62), (SignExtend, 1, 64)]


@pytest.mark.parametrize("cls,a,b", COST_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_cost_matches_keys_aes_and_opens(cls, a, b):
    N = 97
    gate = cls(N, a, b)
    c = gate.cost()
    assert gate.key_bits_total() == c.key_bits * N
    rng = DealerRng(bytes(range(32)))
    x = rng.ring(N, gate.bits)
    r = rng.ring(N, gate.bits)
    r_out, k0, k1 = gate.keygen(rng, [r])
    assert np.asarray(r_out).shape == (N,) and int(np.max(r_out)) < (1 << gate.out_bits)
    # keys are exactly fields(): names, shapes and value widths survive the key-file packing
    slot = GateSlot("g", gate.kind, N, tuple(KeyField(*f) for f in gate.fields()))
    keys = []
    for k in (k0, k1):
        assert [f[0] for f in gate.fields()] == list(k), "key field order must match fields()"
        keys.append(unpack_gate_key(slot, pack_gate_key(slot, k)))
    u = (x + r) & ring.mask(gate.bits)
    (o0, o1), aes, widths = lockstep(gate, keys, [u])
    assert np.array_equal(o0, o1)
    assert aes == [c.aes * N, c.aes * N]
    assert widths == open_widths(gate) and len(widths) == c.rounds and sum(widths) == c.open_bits
    got = (np.asarray(o0) - r_out) & ring.mask(gate.out_bits)
    if isinstance(gate, TruncateLocal):
        check_local(got, x, a, b)
    elif isinstance(gate, TruncateSlack):
        pass  # random x is mostly outside the valid range
    else:
        assert np.array_equal(got, oracle(gate, x))


def test_costs_at_50_12():
    n, s = 50, 12
    K, A = DcfKey.key_bits, DcfKey.aes_per_eval
    assert TruncateReduce(1, n, s).cost().as_dict() == dict(key_bits=K(s, 1, n - s) + n - s, aes=A(s, 1, n - s),
                                                            rounds=1, open_bits=n - s)
    assert ArsExact(1, n, s).cost().rounds == 2 and ArsExact(1, n, s).cost().open_bits == 2 * n - s
    one = ArsOneRound(1, n, s).cost()
    assert one.rounds == 1 and one.open_bits == n and one.key_bits == K(s, 1, n) + K(n, 1, s) + n
    assert TruncateSlack(1, n, s).cost().key_bits == K(s, 1, n) + n + s
    assert TruncateLocal(1, n, s).cost().as_dict() == dict(key_bits=0, aes=0, rounds=0, open_bits=0)


def test_output_masks_are_fresh():
    n, s, N = 50, 12, 200
    r = np.zeros(N, np.uint64)
    for gate in (TruncateReduce(N, n, s), SignExtend(N, n - s, n), ArsExact(N, n, s),
                 ArsOneRound(N, n, s), TruncateSlack(N, n, s)):
        rng = DealerRng()
        m1 = gate.keygen(rng, [r])[0]
        m2 = gate.keygen(rng, [r])[0]
        assert not np.array_equal(m1, m2) and len(set(ints(m1))) > N // 2
        assert int(np.max(m1)) < (1 << gate.out_bits) and int(np.max(m1)) >= (1 << (gate.out_bits - 4))


def test_ars_exact_nests_both_keys():
    gate = ArsExact(5, 50, 12)
    names = [f[0] for f in gate.fields()]
    assert all(k.startswith(("tr.", "se.")) for k in names)
    assert "tr.dcf.root" in names and "se.dcf.root" in names and "tr.offset" in names


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("cls", [TruncateReduce, ArsExact, ArsOneRound, TruncateSlack, TruncateLocal],
                         ids=lambda c: c.__name__)
def test_bad_parameters(cls):
    for bad in (0, -1, 50, 51, 1.5):
        with pytest.raises(ParameterError):
            cls(10, 50, bad)
    with pytest.raises(ParameterError):
        cls(10, 65, 12)
    with pytest.raises(ParameterError):
        cls(0, 50, 12)
    with pytest.raises(ParameterError):
        cls(10, 1, 1)


def test_bad_parameters_specific():
    with pytest.raises(ParameterError):
        TruncateSlack(10, 50, 49)  # needs s <= n - 2
    TruncateSlack(10, 50, 48)
    for m, n in ((50, 50), (51, 50), (0, 50), (12, 65)):
        with pytest.raises(ParameterError):
            SignExtend(10, m, n)
    with pytest.raises(ParameterError):
        SignExtend(0, 12, 50)
    with pytest.raises(ParameterError, match="shift"):
        TruncateReduce(10, 50, 50)
