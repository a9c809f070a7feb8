"""A scalar gate read only by products leaves its output shift to them (passes/lower.py):
the lookup's value, proven to fit k bits at poly_scale, is a k-bit wire that each product
reads through the free truncation's view (MulNarrow), so the gate's truncation round goes.
Softmax's reciprocal of the row sum is such a gate (``exp * (1 / sum)``). It is taken only
where it removes a round: a packed lookup's; a one-round (shifted) lookup keeps its own
truncation (a small softmax under the default round worth)."""
from __future__ import annotations

import numpy as np
import pytest

from fusec.build import Build, compile_graph, decode_outputs, encode_inputs
from fusec.ir.graph import Graph, TensorInfo
from fusec.passes.options import CompileOptions
from fusec.runtime.gates.mul_narrow import MulNarrow
from fusec.runtime.gates.scalar import PackedLookup, ScalarGate
from fusec.runtime.backend import get_backend
from fusec.runtime.dealer import write_keys
from tests.harness import run_graph
from tests.test_device_path import DEVICES
from tests.test_device_path import _run as run_on
from tests.test_softmax_grid import ROWS, COLS, scores_model, softmax


def _scalars(low) -> dict[str, ScalarGate]:
    return {n.id: n.gate for n in low.gates.nodes if isinstance(n.gate, ScalarGate)}


def _run(g: Graph, feeds: dict, **options):
    opts = CompileOptions(**options)
    ir, low, steps = compile_graph(g, opts)
    build = Build(None, ir, opts, low, steps, {})
    out, logs = run_graph(low.gates, encode_inputs(build, feeds, 1))
    return low, decode_outputs(build, out), logs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_softmax_reciprocal_defers_its_shift_to_the_product(seed):
    x = np.random.default_rng(seed).uniform(-6, 6, (ROWS, COLS))
    low, got, logs = _run(scores_model(1.0), {"x": x}, round_worth_mib=0.0)     # packed lookups
    recip = [g for i, g in _scalars(low).items() if g.elements == ROWS]
    assert len(recip) == 1 and recip[0].deferred_bits is not None
    r = recip[0]
    assert [type(s) for s in r.stages] == [PackedLookup] and r.cost().rounds == 2    # no truncation round
    assert r.stages[0].vbits == r.deferred_bits < 50                                 # the lookup runs mod 2^k
    prods = [n.gate for n in low.gates.nodes if isinstance(n.gate, MulNarrow)]
    views = [v for p in prods for v in p.views if v is not None]
    assert any(v.bits == r.deferred_bits and v.shift == r.spec.out_shift for v in views)
    # the same softmax as numpy's, within the fused gates' error (independent float oracle)
    np.testing.assert_allclose(got["y"], softmax(x), atol=4e-3)
    assert abs(got["y"].sum(1) - 1).max() < 1e-2


def test_a_scalar_output_read_otherwise_keeps_its_truncation():
    g = Graph("tanh_out")
    g.add_input("x", (ROWS, COLS))
    g.add_node("Tanh", ["x"], ["y"], infos=[TensorInfo((ROWS, COLS))])
    g.outputs = ["y"]
    x = np.random.default_rng(3).uniform(-3, 3, (ROWS, COLS))
    low, got, _ = _run(g, {"x": x})
    (t,) = _scalars(low).values()
    assert t.deferred_bits is None and len(t.stages) == 2 and t.out_scale == t.spec.f_out
    np.testing.assert_allclose(got["y"], np.tanh(x), atol=4e-3)


def test_a_one_round_lookup_keeps_its_own_truncation():
    """Under the default round worth this small softmax's reciprocal is the one-round shifted
    lookup: deferring would save no round, only add the products' view key."""
    x = np.random.default_rng(4).uniform(-6, 6, (ROWS, COLS))
    low, got, _ = _run(scores_model(1.0), {"x": x})
    (r,) = [g for g in _scalars(low).values() if g.elements == ROWS]
    assert r.lookup == "shifted" and r.deferred_bits is None and len(r.stages) == 2
    np.testing.assert_allclose(got["y"], softmax(x), atol=4e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_deferred_views_open_the_cpus_bytes_on_the_device(tmp_path, device, monkeypatch):
    """The GPU backend's code (fake device, host-compiled kernels, a card where there is one)
    opens the same bytes as the CPU for a build whose products read deferred k-bit wires."""
    opts = CompileOptions(round_worth_mib=0.0)
    ir, low, steps = compile_graph(scores_model(1.0), opts)
    build = Build(None, ir, opts, low, steps, {})
    assert any(g.deferred_bits for g in _scalars(low).values())
    write_keys(build.gates, tmp_path, 1, seed=b"deferred")
    feeds = {"x": np.random.default_rng(5).uniform(-6, 6, (ROWS, COLS))}
    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state-cpu"))
    out_cpu, sent_cpu = run_on(build, tmp_path, type(get_backend("cpu")), feeds)
    monkeypatch.setenv("FUSEC_STATE_DIR", str(tmp_path / "state-dev"))
    out_dev, sent_dev = run_on(build, tmp_path, device(), feeds)
    assert sent_cpu == sent_dev and out_cpu.keys() == out_dev.keys()
    assert all(np.array_equal(out_cpu[k], out_dev[k]) for k in out_cpu)


@pytest.mark.parametrize("degree", [1, 2])
def test_spec_value_bound_is_the_largest_value_over_every_input(degree):
    """OperatorSpec.value_bound (what a held function's output view is sized by) against every
    integer input of random windows, each piece widened by the margin: exact, never below."""
    import math
    import random

    from fusec.ir.spec import FitRequest, Tail, fit

    gelu = np.vectorize(lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))))
    spec = fit(FitRequest("gelu", gelu, -4, 4, pieces=12, degree=degree, n_in=50, f_in=12, f_out=12,
                          right=Tail(1.0)))
    top, rnd = 1 << 49, random.Random(degree)
    ends = [-top, *spec.breakpoints, top]
    for _ in range(25):
        c = rnd.choice([*spec.breakpoints, 0, -30000, 30000])
        lo, hi, margin = c - rnd.randint(0, 20000), c + rnd.randint(0, 20000), rnd.choice([0, 3, 18])
        best = 0
        for i, cs in enumerate(spec.coeffs):
            a, e = max(ends[i] - margin, lo - margin), min(ends[i + 1] - 1 + margin, hi + margin)
            if a <= e:
                xs = np.arange(a, e + 1, dtype=object) - int(spec.centers[i])
                acc = np.zeros(xs.shape, dtype=object)
                for ck in reversed(cs):
                    acc = acc * xs + int(ck)
                best = max(best, max(abs(v) for v in acc))
        assert spec.value_bound(lo, hi, margin) == best


@pytest.mark.parametrize("n", [37, 50, 64])
def test_a_view_reads_a_narrow_ring_wire_under_forced_masks(n):
    """What a deferred output hands the product: a wire of Z_2^k (its mask in Z_2^k too), read
    through View(k, s) next to a plain n-bit wire. Forced masks 0, 2^k-1, 2^(k-1) and a fresh
    one; the oracle is numpy integer arithmetic: (floor(a / 2^s) + c) * b, c in {0, 1}."""
    from fusec.runtime import ring as R
    from fusec.runtime.gates.mul_narrow import View
    from fusec.runtime.rng import DealerRng
    from tests.harness import forced_masks, run_gate

    k, s, E = 30, 10, 257
    rnd = np.random.default_rng(n)
    a = rnd.integers(-(1 << (k - 2)) + (1 << s), (1 << (k - 2)) - (1 << s), E)
    a[:3] = [-(1 << (k - 2)) + (1 << s), (1 << (k - 2)) - (1 << s) - 1, 0]
    b = rnd.integers(-(1 << 12), 1 << 12, E)
    gate = MulNarrow(E, n, View(k, s), None)
    for mask_a in forced_masks(E, k) + [DealerRng().ring(E, k)]:
        got, _, _ = run_gate(gate, [R.from_signed(a, k), R.from_signed(b, n)], [k, n],
                             in_masks=[mask_a, DealerRng().ring(E, n)])
        diff = R.to_signed(got, n) - (a >> s) * b
        assert np.all((diff == 0) | (diff == b)), mask_a[0]
