"""A rescale folded into a packed lookup (``PackedLookup(pre_shift=s)``: GELU after its matmul).

The input wire carries X at ``f_in + s`` fractional bits, proven inside the view
(``|X| < 2^(k-2) - 2^(s+t)``). The gate must return, mod ``2^w``, the polynomial of the piece
its comparison picks, evaluated at ``y = floor(X / 2^s) + c``. The oracle below derives
everything from X and the mask alone, with Python integers:

* ``c = [lo_s(X) + lo_s(r) >= 2^s]``, the free truncation's carry under the mask r;
* the piece: ``floor(X / 2^T) + [lo_T(X) + lo_T(r) >= 2^T]`` (T = s + t, the comparison's
  view) against the breakpoints ``floor(b / 2^t)``;
* the value: ``p_j(y)`` from the spec's coefficients.

It runs at n = 37, 50 and 64 under forced masks (0, 2^n - 1, 2^(n-1), low bits all clear /
all set, bit k-1 set / clear) and fresh ones, and checks the measured key, AES, rounds and
bytes against ``cost()``.
"""
from __future__ import annotations

from bisect import bisect_right

import numpy as np
import pytest

from fusec.runtime.gates.catalog import gelu_spec
from fusec.runtime.gates.scalar import PackedLookup
from tests.harness import measure_gate
from tests.test_narrow_gates import cross, mask_sets, poly

S = 12          # the rescale folded in front (f = 12 weights)


def _view_bits(spec, n: int, bound: float = 16.0) -> int:
    """k for an input proven within |x| < bound at f_in + S fractional bits (as the compiler)."""
    t = spec.view_shift
    return min(n, (int(bound * 2 ** (spec.f_in + S)) + (1 << (t + S)) + 1).bit_length() + 2)


def _oracle(spec, X: list[int], R: list[int], s: int, t: int, w: int) -> list[int]:
    T = s + t
    cuts = [int(b) >> t for b in spec.breakpoints]
    want = []
    for x, r in zip(X, R):
        c = int((x & ((1 << s) - 1)) + (r & ((1 << s) - 1)) >= (1 << s))
        cv = int((x & ((1 << T) - 1)) + (r & ((1 << T) - 1)) >= (1 << T))
        j = bisect_right(cuts, (x >> T) + cv)
        want.append(poly(spec, j, (x >> s) + c) % (1 << w))
    return want


def _inputs(spec, k: int, t: int, seed: int) -> list[int]:
    """Breakpoints (at the input's scale) and their neighbours, the view's edges, random."""
    h = (1 << (k - 2)) - (1 << (S + t))
    xs = {-h + 1, -h + 2, h - 1, h - 2, 0, 1, -1, (1 << S) - 1, -(1 << S)}
    for b in spec.breakpoints:
        for d in (0, 1, -1, 1 << S, (1 << S) - 1, 1 << (S + t), (1 << (S + t)) - 1, 1 << (S + t + 1)):
            xs.update({(int(b) << S) + d, (int(b) << S) - d})
    rng = np.random.default_rng(seed)
    xs.update(int(v) for v in rng.integers(-h + 1, h, 200))
    return sorted(x for x in xs if -h < x < h)


@pytest.mark.parametrize("n", [37, 50, 64])
@pytest.mark.parametrize("narrow_value", [False, True], ids=["value_ring_n", "value_ring_narrow"])
def test_a_folded_rescale_evaluates_the_picked_piece_at_the_truncated_input(n, narrow_value):
    spec = gelu_spec(n, 12)
    k = _view_bits(spec, n)
    probe = PackedLookup(1, spec, view_bits=k, pre_shift=S)
    t = probe.view_shift - S
    assert probe.pre_shift == S and t == spec.view_shift
    xs = _inputs(spec, k, t, seed=n)
    w = n
    if narrow_value:       # the smallest ring that holds every value the gate may compute, + slack
        vals = [poly(spec, j, (x >> S) + c) for x in xs for j in range(len(spec.coeffs)) for c in (0, 1)
                if abs(j - bisect_right([int(b) for b in spec.breakpoints], x >> S)) <= 1]
        w = max(max(vals).bit_length(), (-min(vals)).bit_length()) + 2
        w = max(min(w, n), probe.pre_mid + 1)
    X, R = cross(xs, mask_sets(n, S + t, k, len(xs), b"fold-%d-%d" % (n, w)))
    g = PackedLookup(len(X), spec, view_bits=k, value_bits=w, pre_shift=S)
    out, cost, logs = measure_gate(g, X, n, masks=[np.asarray(R, np.uint64)])
    got = [int(v) % (1 << w) for v in out]
    want = _oracle(spec, X, R, S, t, w)
    bad = [(x, r, gv, wv) for x, r, gv, wv in zip(X, R, got, want) if gv != wv]
    assert not bad, f"{len(bad)}/{len(X)} wrong, e.g. (x, r, got, want) = {bad[:3]}"
    assert cost == g.cost(), (cost, g.cost())
    assert all(lg.rounds == 2 for lg in logs)


def test_a_folded_rescale_at_small_widths_every_input_and_every_low_mask():
    """n = 18 (GELU in 8 linear pieces at f = 6), view 12 bits, rescale by 3: every admissible
    input under the forced and patterned mask sets, and every mask mod 2^12 (the bits the gate
    reads) at inputs on both sides of each breakpoint."""
    from tests.test_narrow_gates import make_spec

    n, k, s = 18, 12, 3
    spec = make_spec("gelu", n)[0]
    probe = PackedLookup(1, spec, view_bits=k, pre_shift=s)
    t = probe.view_shift - s
    h = (1 << (k - 2)) - (1 << (s + t))
    xs = list(range(-h + 1, h))
    X, R = cross(xs, mask_sets(n, s + t, k, len(xs), b"fold-small", random_sets=2))
    edge = sorted({(int(b) << s) + d for b in spec.breakpoints for d in (-1, 0, 1) if -h < (int(b) << s) + d < h})
    high = np.random.default_rng(4).integers(0, 1 << (n - k), 1 << k)
    for x in edge:
        X += [x] * (1 << k)
        R += [int(lo) | (int(hi) << k) for lo, hi in zip(range(1 << k), high)]
    g = PackedLookup(len(X), spec, view_bits=k, pre_shift=s)
    out, cost, _ = measure_gate(g, X, n, masks=[np.asarray(R, np.uint64)])
    w = g.out_bits
    got = [int(v) % (1 << w) for v in out]
    want = _oracle(spec, X, R, s, t, w)
    bad = [(x, r, gv, wv) for x, r, gv, wv in zip(X, R, got, want) if gv != wv]
    assert not bad, f"{len(bad)}/{len(X)} wrong, e.g. (x, r, got, want) = {bad[:3]}"
    want_cost = g.cost()        # each open is sent in whole bytes
    assert (cost.key_bits, cost.aes, cost.rounds) == (want_cost.key_bits, want_cost.aes, want_cost.rounds)
    assert want_cost.open_bits <= cost.open_bits < want_cost.open_bits + 16 / g.elements


def test_the_gpu_kernels_of_a_build_cost_an_18_bit_lookup_what_cost_says():
    """The GPU backend's own code over the host build of the kernels a build of this gate gets
    (``kernel_source_for``: its arc walk generated): the oracle's values and ``cost()``'s AES.
    The default kernels walk every point from the root: the same values at 5x the AES, which
    is what a card found when the gate tests ran on the default kernels (20 against 4)."""
    import tempfile

    from fusec.codegen import cuda
    from tests.fakedevice import host_kernel_backend
    from tests.harness import kernel_source_for
    from tests.test_narrow_gates import make_spec

    if cuda.nvcc_path() is None:
        pytest.skip("nvcc (CUDA toolkit) not found: cannot build the host kernels")
    n, k, s = 18, 12, 3
    spec = make_spec("gelu", n)[0]
    t = PackedLookup(1, spec, view_bits=k, pre_shift=s).view_shift - s
    h = (1 << (k - 2)) - (1 << (s + t))
    X, R = cross(list(range(-h + 1, h, 7)), mask_sets(n, s + t, k, len(range(-h + 1, h, 7)), b"fold-host"))
    g = PackedLookup(len(X), spec, view_bits=k, pre_shift=s)
    aes = {}
    for name, src in (("build", kernel_source_for([g])), ("default", cuda.render(cuda.default_config()))):
        be = host_kernel_backend(src, cuda.compile_host_library(src, tempfile.mkdtemp()))()
        out, cost, _ = measure_gate(g, X, n, masks=[np.asarray(R, np.uint64)], be=be)
        assert [int(v) % (1 << g.out_bits) for v in out] == _oracle(spec, X, R, s, t, g.out_bits), name
        aes[name] = cost.aes
    assert aes["build"] == g.cost().aes
    assert aes["default"] > g.cost().aes


@pytest.mark.parametrize("n", [37, 50, 64])
def test_a_lifted_lookup_reads_only_its_view(n):
    """``lift=True`` (no rescale, s = 0): the wire is valid mod 2^k only (a max tree's unwidened
    result, passes/lift_max_tree.py). Inputs carry random bits above the view; the gate must
    give what the oracle gives for the k-bit value alone."""
    spec = gelu_spec(n, 12)
    t = spec.view_shift
    k = (int(8.0 * 2 ** spec.f_in) + (1 << t) + 1).bit_length() + 2
    probe = PackedLookup(1, spec, view_bits=k, lift=True)
    assert probe.lifted and probe.pre_shift == 0 and probe.view_shift == t
    h = (1 << (k - 2)) - (1 << t)
    xs = sorted({x for b in spec.breakpoints for d in (0, 1, -1, 1 << t, (1 << t) - 1, 1 << (t + 1))
                 for x in ((int(b) + d), (int(b) - d)) if -h < x < h}
                | {int(v) for v in np.random.default_rng(n).integers(-h + 1, h, 200)} | {-h + 1, h - 1, 0})
    X, R = cross(xs, mask_sets(n, t, k, len(xs), b"lift-%d" % n))
    # garbage above the view (below the top bit: the harness takes signed 64-bit inputs)
    junk = np.random.default_rng(n + 1).integers(0, 1 << (n - k - 1), len(X))
    wire = [x + (int(j) << k) for x, j in zip(X, junk)]
    g = PackedLookup(len(X), spec, view_bits=k, lift=True)
    out, cost, logs = measure_gate(g, wire, n, masks=[np.asarray(R, np.uint64)])
    w = g.out_bits
    got = [int(v) % (1 << w) for v in out]
    want = _oracle(spec, X, R, 0, t, w)
    bad = [(x, r, gv, wv) for x, r, gv, wv in zip(X, R, got, want) if gv != wv]
    assert not bad, f"{len(bad)}/{len(X)} wrong, e.g. (x, r, got, want) = {bad[:3]}"
    assert cost == g.cost(), (cost, g.cost())
    assert all(lg.rounds == 2 for lg in logs)


def test_a_lifted_lookup_at_small_widths_every_input_under_every_mask_set():
    """n = 18 (GELU in 8 linear pieces at f = 6), a 12-bit view, no rescale: every admissible
    input under the forced and patterned mask sets, with random bits above the view."""
    from tests.test_narrow_gates import make_spec

    n, k = 18, 12
    spec = make_spec("gelu", n)[0]
    probe = PackedLookup(1, spec, view_bits=k, lift=True)
    t = probe.view_shift
    h = (1 << (k - 2)) - (1 << t)
    X, R = cross(list(range(-h + 1, h)), mask_sets(n, t, k, 2 * h - 1, b"lift-small", random_sets=2))
    junk = np.random.default_rng(5).integers(0, 1 << (n - k), len(X))
    g = PackedLookup(len(X), spec, view_bits=k, lift=True)
    out, _, _ = measure_gate(g, [x + (int(j) << k) for x, j in zip(X, junk)], n, masks=[np.asarray(R, np.uint64)])
    w = g.out_bits
    got = [int(v) % (1 << w) for v in out]
    want = _oracle(spec, X, R, 0, t, w)
    bad = [(x, r, gv, wv) for x, r, gv, wv in zip(X, R, got, want) if gv != wv]
    assert not bad, f"{len(bad)}/{len(X)} wrong, e.g. (x, r, got, want) = {bad[:3]}"
