"""The table of nonlinearities (ir/nonlinear.py): labels, fitting domains with exact tails,
rsqrt / reciprocal over their whole proven range, and op categories as data (ir/ops.py).

Every fitted spec is evaluated with ``OperatorSpec.reference`` (exact integer arithmetic)
against the float reference far past its fitting interval: a spec whose tails are held
constant, or whose asymptote takes over too early, fails these checks (see
``test_the_tail_check_can_fail``).
"""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

from fusec.ir import scalar_fn
from fusec.ir.nonlinear import CONTRACTIONS, NONLINEAR, SIGMA_LABELS, Domain, fit_domain, identify
from fusec.ir.ops import KEEP_SCALE, MOVEMENT, OPS, is_fusable, is_movement, keeps_scale
from fusec.ir.spec import Tail
from fusec.passes.fit_specs import search

N, F = 50, 12
BOUND = 8.0
PARAMS = {"leaky_relu": {"alpha": 0.01}, "hardsigmoid": {"alpha": 0.2, "beta": 0.5},
          "clip": {"lo": -1.0, "hi": 6.0}, "elu": {"alpha": 1.0}}
LINE = [lab for lab, e in NONLINEAR.items() if e.domain != "positive" and lab not in ("exp", "softsign")]
#: entries whose tails have dyadic slopes and offsets: exact at any |x| (checked to 2^20)
DYADIC = [lab for lab in LINE if lab != "leaky_relu"]


def _fn(lab):
    e, p = NONLINEAR[lab], PARAMS.get(lab, {})
    return lambda x: e.ref(np.asarray(x, np.float64), **p)


def _fit(lab, proven=None, calibrated=(-3.0, 3.0), n=N, f_in=F, f_out=F, bound=BOUND, attrs=None):
    fn = _fn(lab)
    dom = fit_domain(lab, fn, F, calibrated, f_out, proven, {"params": PARAMS.get(lab, {}), "ring_bits": n,
                                                             **(attrs or {})})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best, acc = search(lab, fn, dom, n, f_in, f_out, bound)
    return (best or acc), dom, fn


def _far_grid(reach: float, nonpositive: bool = False) -> np.ndarray:
    g = np.concatenate([np.linspace(-64, 64, 16385), np.geomspace(64, reach, 600), -np.geomspace(64, reach, 600)])
    g = np.unique(np.round(g * 2 ** F).astype(np.int64))
    return g[g <= 0] if nonpositive else g


def _err(spec, fn, xi) -> np.ndarray:
    got = np.array([int(v) for v in spec.reference(xi)], dtype=np.float64)
    return np.abs(got - fn(xi / 2 ** spec.f_in) * 2 ** spec.f_out)


# ------------------------------------------------------------------ exact tails
@pytest.mark.parametrize("lab", LINE)
def test_every_activation_is_within_its_bound_far_past_the_fitting_interval(lab):
    reach = 2.0 ** 20 if lab in DYADIC else 2.0 ** 10          # non-dyadic slopes: exact over a proven +-2^10
    spec, dom, fn = _fit(lab, proven=None if lab in DYADIC else (-reach, reach))
    e = NONLINEAR[lab]
    if e.domain == "line":      # (nexp: the stated error may include x > 0, outside its domain)
        assert spec.max_error_ulps <= BOUND, (lab, spec.max_error_ulps)
    assert "held" not in dom.note, dom.note                    # nothing saturates
    xi = _far_grid(reach, e.domain == "nonpositive")
    err = _err(spec, fn, xi)
    worst = int(np.argmax(err))
    # the interior is within the stated error; the tails within a quarter of the bound (+1 for the floor)
    stated = spec.max_error_ulps if e.domain == "line" else BOUND
    assert err.max() <= max(stated, BOUND / 4 + 1), (lab, xi[worst] / 2 ** F, err.max())
    lo, hi = dom.lo, dom.hi
    assert xi.min() / 2 ** F < lo - 100 and (e.domain == "nonpositive" or xi.max() / 2 ** F > hi + 100)


@pytest.mark.parametrize("lab", ["gelu", "silu", "softplus", "leaky_relu", "abs", "hardswish"])
def test_sloped_tails_are_exact_in_the_ring_over_the_proven_range(lab):
    """The gate (not only the integer reference) is exact where the proven range reaches:
    the spec's exact input range covers it, tails included."""
    spec, dom, fn = _fit(lab, proven=(-600.0, 700.0))
    lo, hi = spec.exact_input_range(N, headroom_bits=2 if spec.out_shift else 1)
    assert lo <= -600 * 2 ** F and hi >= 700 * 2 ** F, (lab, lo / 2 ** F, hi / 2 ** F)
    xi = _far_grid(700.0)
    xi = xi[xi >= -600 * 2 ** F]
    assert _err(spec, fn, xi).max() <= max(spec.max_error_ulps, BOUND / 4 + 1)


def test_the_tail_check_can_fail():
    """The old GELU domain (tails held constant past a calibrated [-3, 3]) fails the far-grid check,
    and so does an asymptote that takes over too early."""
    fn = _fn("gelu")
    held = Domain(-3.0, 3.0, Tail(0.0, float(fn(np.asarray([-3.0]))[0])), Tail(0.0, float(fn(np.asarray([3.0]))[0])))
    early = Domain(-2.0, 2.0, Tail(0.0, 0.0), Tail(1.0, 0.0))
    for dom in (held, early):
        best, acc = search("gelu", fn, dom, N, F, F, BOUND)
        spec = best or acc
        assert _err(spec, fn, _far_grid(2.0 ** 10)).max() > BOUND


def test_exp_and_softsign_use_the_proven_range():
    spec, dom, fn = _fit("exp", proven=(-1e6, 5.0))
    assert dom.hi >= 5.0 and not dom.note                     # proven: no saturation note
    xi = _far_grid(2.0 ** 20)
    xi = xi[xi <= 5 * 2 ** F]
    assert _err(spec, fn, xi).max() <= max(spec.max_error_ulps, BOUND / 4 + 1)
    # unproven: the note says where it is held
    _, dom2, _ = _fit("exp")
    assert "held" in dom2.note and "no proven bound" in dom2.note
    # softsign approaches +-1 like 1/x: the interior is clipped to the proven range, and the note says
    # how far off the asymptote is between the proven end and where it is exact
    spec, dom, fn = _fit("softsign", proven=(-20.0, 20.0))
    assert dom.hi <= 30 and "asymptotes are off" in dom.note
    xi = _far_grid(20.0)
    xi = xi[np.abs(xi) <= 20 * 2 ** F]
    assert _err(spec, fn, xi).max() <= spec.max_error_ulps


def test_custom_functions_fit_on_the_proven_range_when_it_is_finite():
    fn = {"input": "x", "output": "y", "consts": {"c": 0.3},
          "nodes": [{"op": "Mul", "inputs": ["x", "x"], "outputs": ["t"], "attrs": {}},
                    {"op": "Mul", "inputs": ["t", "c"], "outputs": ["u"], "attrs": {}},
                    {"op": "Exp", "inputs": ["u"], "outputs": ["y"], "attrs": {}}]}
    dom = fit_domain("custom", fn, F, (-1.0, 1.0), F, (-2.5, 3.0), {})
    assert (dom.lo, dom.hi) == (-2.5, 3.0) and "held" not in dom.note
    dom = fit_domain("custom", fn, F, (-1.0, 1.0), F, None, {})
    assert "calibrated" in dom.note and "held constant" in dom.note
    dom = fit_domain("custom", fn, F, (-1.0, 1.0), F, (-math.inf, math.inf), {})
    assert "calibrated" in dom.note
    # a proven range on which the function outgrows the ring: cut, and the note says where and how far
    dom = fit_domain("custom", fn, F, (-1.0, 1.0), F, (-30.0, 30.0), {"ring_bits": 50})
    assert -30 < dom.lo < -3 and 3 < dom.hi < 30 and "held at" in dom.note and "reaches |f| =" in dom.note
    best, acc = search("custom", lambda x: scalar_fn.evaluate(fn, x), dom, 50, F, F, BOUND)
    assert acc is not None                                    # the ring holds it (steep: maybe not within 8 ulps)
    # log on a proven range that starts below 0: fitted from where it is finite, said so
    dom = fit_domain("custom", lambda x: np.log(x), F, (0.5, 4.0), F, (-0.01, 10.0), {"ring_bits": 50})
    assert 0 < dom.lo < 0.01 and dom.hi == 10.0 and "not finite" in dom.note


# ------------------------------------------------------------------ rsqrt / reciprocal over the proven range
def _ln_fn(k: int, eps: float) -> dict:
    return {"input": "x", "output": "y", "label": "rsqrt", "consts": {"k": 1.0 / k, "eps": eps, "h": -0.5},
            "nodes": [{"op": "Mul", "inputs": ["x", "k"], "outputs": ["v"], "attrs": {}},
                      {"op": "Add", "inputs": ["v", "eps"], "outputs": ["ve"], "attrs": {}},
                      {"op": "Pow", "inputs": ["ve", "h"], "outputs": ["y"], "attrs": {}}]}


def _stated_relative(spec) -> float:
    m = re.search(r"relative error ([0-9.e+-]+)", spec.notes)
    assert m, spec.notes
    return float(m.group(1))


@pytest.mark.parametrize("n,k,eps,hi", [(50, 128, 1e-12, 3.5e5), (50, 768, 1e-5, 1e7), (37, 128, 1e-12, 3.5e5)])
def test_layernorm_rsqrt_covers_its_whole_proven_range(n, k, eps, hi):
    fnj = _ln_fn(k, eps)
    fn = lambda x: scalar_fn.evaluate(fnj, x)  # noqa: E731
    attrs = {"domain": [0.0, None], "rsqrt_scale": 1.0 / k, "rsqrt_eps": eps, "ring_bits": n}
    dom = fit_domain("rsqrt", fnj, F, (100.0, 150.0), F, (-0.015, hi), attrs)
    assert dom.geometric and dom.lo == 2.0 ** -F and dom.hi >= hi
    # the only saturation is below one input ulp, and the note says what the function reaches at 0
    assert "below 0.0002441" in dom.note and f"{1 / math.sqrt(eps):.4g}" in dom.note
    bound = BOUND * max(1.0, abs(dom.left.offset))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best, acc = search("rsqrt", fn, dom, n, F, F, bound)
    spec = best or acc
    rel = _stated_relative(spec)
    xi = np.unique(np.floor(np.concatenate([np.geomspace(2.0 ** -F, hi, 30000), np.linspace(0, 300, 3001)])
                            * 2 ** F)).astype(np.int64)
    xi = xi[xi >= 1]
    want = fn(xi / 2 ** F) * 2 ** F
    err = _err(spec, fn, xi)
    big = want >= 2 ** F
    assert np.max(err[big] / want[big]) <= rel * 1.05 + 1e-12        # the stated relative error where f >= 1
    small_ulps = float(re.search(r"([0-9.e+-]+) ulps where", spec.notes).group(1))
    assert np.max(err[~big]) <= small_ulps * 1.05 + 1e-9             # and the stated ulps below
    # the stated max_error_ulps is relative above 1: |err| <= max_error * max(1, f) / f(lo)
    top = max(1.0, float(fn(np.asarray([dom.lo]))[0]))
    assert np.all(err <= spec.max_error_ulps * np.maximum(1.0, want / 2 ** F) / top + 1.0)
    if n == 50:
        assert rel < 2.0 ** -9 and small_ulps <= BOUND and best is not None   # the bound: 2^-9 above 1, 8 ulps below
    # below one input ulp (x = 0) the value of the first grid point is held, as the note says; past the
    # proven range, the value at its end
    v0, v1 = (int(v) for v in spec.reference(np.asarray([0, 1])))
    assert abs(v0 - v1) <= max(1.0, rel * v1) + 1
    end = int(hi * 2 ** F) + 1
    assert int(spec.reference(np.asarray([end * 4]))[0]) == int(spec.reference(np.asarray([end + 2 ** F]))[0])
    print(f"n={n} k={k} eps={eps:g}: {spec.pieces} pieces, degree {spec.degree}, {spec.notes}")


def test_softmax_reciprocal_on_its_row_sum():
    fnj = scalar_fn.unary("Reciprocal", label="reciprocal")
    fn = lambda x: 1.0 / x  # noqa: E731
    k = 128
    # proven range of the row sum from the range pass (a little below 0 and past k: its margins); the block says [1, k]
    dom = fit_domain("reciprocal", fnj, F, (10.0, 20.0), F, (-0.03, 132.0), {"domain": [1.0, float(k)], "ring_bits": N})
    assert dom.lo <= 1.0 and dom.hi >= k and "held" not in dom.note
    bound = BOUND * max(1.0, abs(dom.left.offset))
    spec = search("reciprocal", fn, dom, N, F, F, bound)[0]
    assert spec is not None
    xi = np.arange(int(dom.lo * 2 ** F), int(dom.hi * 2 ** F), 7, dtype=np.int64)
    assert _err(spec, fn, xi).max() <= BOUND * 1.0001


def test_reciprocal_without_a_proof_says_where_it_saturates():
    dom = fit_domain("reciprocal", scalar_fn.unary("Reciprocal"), F, (0.5, 20.0), F, None, {"ring_bits": N})
    assert "no proven lower bound" in dom.note and "no proven bound" in dom.note


# ------------------------------------------------------------------ labels
def _chain(*steps) -> dict:
    """x -> op(prev, const?) ... as a scalar_fn dict."""
    nodes, consts, prev = [], {}, "x"
    for i, (op, c, attrs) in enumerate(steps):
        ins = [prev]
        if c is not None:
            if c == "x":
                ins.append("x")
            else:
                consts[f"c{i}"] = c
                ins.append(f"c{i}")
        nodes.append({"op": op, "inputs": ins, "outputs": [f"t{i}"], "attrs": attrs or {}})
        prev = f"t{i}"
    return {"input": "x", "output": prev, "consts": consts, "nodes": nodes}


@pytest.mark.parametrize("fn,label,params", [
    (_chain(("LeakyRelu", None, {"alpha": 0.1})), "leaky_relu", {"alpha": 0.1}),
    (_chain(("Mul", 0.2, None), ("Add", 0.5, None), ("Clip", None, {"min": 0.0, "max": 1.0})), "hardsigmoid",
     {"alpha": 0.2, "beta": 0.5}),
    (_chain(("Mul", 1 / 6, None), ("Add", 0.5, None), ("Clip", None, {"min": 0.0, "max": 1.0}), ("Mul", "x", None)),
     "hardswish", {}),
    (_chain(("Softplus", None, None), ("Tanh", None, None), ("Mul", "x", None)), "mish", {}),
    (_chain(("Softplus", None, None)), "softplus", {}),
    (_chain(("Erf", None, None)), "erf", {}),
    (_chain(("Abs", None, None)), "abs", {}),
    (_chain(("Clip", None, {"min": -1.0, "max": 6.0})), "clip", {"lo": -1.0, "hi": 6.0}),
    (_chain(("Clip", None, {"min": 0.0, "max": 6.0})), "clip", {"lo": 0.0, "hi": 6.0}),      # relu6 is not relu
    (_chain(("Relu", None, None)), "relu", {}),
    (_chain(("Mul", 0.5, None), ("Tanh", None, None), ("Add", 1.0, None), ("Mul", 0.5, None)), "sigmoid", {}),
    (_chain(("Sigmoid", None, None), ("Mul", "x", None)), "silu", {}),
    (_chain(("Exp", None, None)), "exp", {}),
    (_chain(("Sqrt", None, None), ("Reciprocal", None, None)), "rsqrt", {}),
    (_chain(("Mul", "x", None), ("Exp", None, None)), "custom", {}),
])
def test_identify(fn, label, params):
    got, p = identify(lambda x: scalar_fn.evaluate(fn, x))
    assert got == label
    for key, v in params.items():
        assert p[key] == pytest.approx(v, rel=1e-6)


def test_table_facts():
    assert SIGMA_LABELS == {"gelu", "gelu_tanh", "silu", "nexp", "reciprocal", "rsqrt"}   # SiLU: SIGMA's GELU protocol
    assert {"relu", "gelu", "gelu_tanh", "silu", "tanh"} <= CONTRACTIONS and "sigmoid" not in CONTRACTIONS
    x = np.linspace(-50, 50, 20001)
    for lab in CONTRACTIONS:
        assert np.all(np.abs(_fn(lab)(x)) <= np.abs(x) + 1e-12), lab
    from fusec.passes.schedule import scope_of
    assert scope_of({"label": "gelu_tanh"}, "scalar") == "gelu"
    assert scope_of({"label": "rsqrt", "block": "softmax"}, "scalar") == "softmax"
    assert scope_of({"label": "silu"}, "scalar") == "other"


# ------------------------------------------------------------------ op categories
def test_op_categories_are_data():
    from fusec.passes import fuse_scalar, scales
    assert MOVEMENT == frozenset(scales.MOVEMENT) and KEEP_SCALE == frozenset(scales.KEEP_SCALE)
    assert fuse_scalar.ELEMENTWISE_BINARY == {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
    assert is_movement("Reshape") and is_movement("Identity") and not is_movement("Add")
    assert keeps_scale("ReduceSum") and not keeps_scale("Mul")
    assert OPS["Add"].category == "elementwise" and OPS["MatMul"].category == "linear"
    assert OPS["ReduceMax"].category == "reduce" and OPS["Softmax"].category == "block"
    assert is_fusable("Erf") and is_fusable("Div") and not is_fusable("Scalar") and not is_fusable("Equal")
    for op in ("Share", "Cast", "Rescale", "Scalar", "Identity"):
        assert op in fuse_scalar.NOT_FUSED


# ------------------------------------------------------------------ RMSNorm written out, off the calibration data
def test_rmsnorm_written_out_is_right_far_from_its_calibration():
    """x * (mean(x^2) + eps)^-1/2 * g as exporters write it (Llama's RMSNorm): the chain is labelled
    rsqrt with its scale and eps, fitted over the whole proven range of mean(x^2), so rows much
    smaller or larger than the calibration rows (a repeated-token prompt) are normalised right."""
    from fusec.build import Build, compile_graph, decode_outputs, encode_inputs
    from fusec.ir.graph import Graph, TensorInfo
    from fusec.passes.options import CompileOptions
    from tests.harness import run_graph

    R, H, eps = 6, 32, 1e-6
    rng = np.random.default_rng(3)
    gam = 1 + 0.1 * rng.standard_normal(H)
    g = Graph("rms")
    g.add_input("x", (R, H))
    T = lambda *s: [TensorInfo(s)]  # noqa: E731
    g.add_node("Mul", ["x", "x"], ["sq"], infos=T(R, H))
    g.add_node("ReduceMean", ["sq"], ["ms"], infos=T(R, 1), axes=[1], keepdims=True)
    g.add_node("Add", ["ms", g.add_const("eps", np.asarray(eps))], ["mse"], infos=T(R, 1))
    g.add_node("Sqrt", ["mse"], ["rt"], infos=T(R, 1))
    g.add_node("Reciprocal", ["rt"], ["r"], infos=T(R, 1))
    g.add_node("Expand", ["r"], ["rb"], infos=T(R, H), shape=[R, H])
    g.add_node("Mul", ["x", "rb"], ["n"], infos=T(R, H))
    g.add_node("Mul", ["n", g.add_const("g", gam)], ["y"], infos=T(R, H))
    g.outputs = ["y"]
    calib = {"x": rng.standard_normal((R, H))}
    opts = CompileOptions(calib=calib)
    ir, low, steps = compile_graph(g, opts)
    scal = [n for n in ir.nodes() if n.op == "Scalar"]
    assert [n.attrs["label"] for n in scal] == ["rsqrt"] and scal[0].attrs["rsqrt_eps"] == pytest.approx(eps, rel=1e-3)
    assert not [m for m in ir.meta.get("notes", []) if re.search(r"held at [^;]* above", m)]   # no ceiling
    # rows 1/16 .. 2x the calibration's magnitude, one of them a repeated value
    x = rng.standard_normal((R, H)) * np.asarray([1 / 16, 1 / 4, 1.0, 2.0, 0.5, 1.0])[:, None]
    x[5] = 0.7
    b = Build(None, ir, opts, low, steps, {})
    out, _ = run_graph(low.gates, encode_inputs(b, {"x": x}, 1))
    got = decode_outputs(b, out)["y"]
    want = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + eps) * gam
    cos = [float(np.dot(a, w) / np.linalg.norm(a) / np.linalg.norm(w)) for a, w in zip(got, want)]
    assert min(cos) > 0.999, cos
    assert np.max(np.abs(got - want)) < 0.05, np.max(np.abs(got - want), axis=1)


def test_activations_are_right_past_their_calibration_two_party():
    """Leaky ReLU, softplus, hard swish, erf and clip used to be "custom": fitted on the calibrated
    range and held constant outside it. Now each is labelled and exact in its tails, so inputs up to
    the input contract (4x the calibrated max) come out right through the real gates."""
    from fusec.build import Build, compile_graph, decode_outputs, encode_inputs
    from fusec.ir.graph import Graph, TensorInfo
    from fusec.passes.options import CompileOptions
    from tests.harness import run_graph

    S = (4, 16)
    g = Graph("acts")
    g.add_input("x", S)
    T = [TensorInfo(S)]
    g.add_node("LeakyRelu", ["x"], ["a"], infos=T, alpha=0.1)
    g.add_node("Softplus", ["x"], ["b"], infos=T)
    g.add_node("Mul", ["x", g.add_const("s6", np.asarray(1 / 6))], ["h0"], infos=T)
    g.add_node("Add", ["h0", g.add_const("h", np.asarray(0.5))], ["h1"], infos=T)
    g.add_node("Clip", ["h1"], ["h2"], infos=T, min=0.0, max=1.0)
    g.add_node("Mul", ["x", "h2"], ["c"], infos=T)
    g.add_node("Erf", ["x"], ["d"], infos=T)
    g.add_node("Clip", ["x"], ["e"], infos=T, min=0.0, max=6.0)
    g.outputs = ["a", "b", "c", "d", "e"]
    rng = np.random.default_rng(5)
    calib = {"x": np.clip(rng.standard_normal(S), -2, 2)}          # contract: |x| <= 8
    opts = CompileOptions(calib=calib, client_prefix=False)
    ir, low, steps = compile_graph(g, opts)
    labels = sorted(n.attrs["label"] for n in ir.nodes() if n.op == "Scalar")
    assert labels == ["clip", "erf", "hardswish", "leaky_relu", "softplus"], labels
    x = np.linspace(-7.9, 7.9, 64).reshape(S)
    b = Build(None, ir, opts, low, steps, {})
    out, _ = run_graph(low.gates, encode_inputs(b, {"x": x}, 1))
    got = decode_outputs(b, out)
    want = {"a": np.where(x >= 0, x, 0.1 * x), "b": np.logaddexp(0, x), "c": x * np.clip(x / 6 + 0.5, 0, 1),
            "d": np.vectorize(math.erf)(x), "e": np.clip(x, 0, 6)}
    for k, w in want.items():
        assert np.max(np.abs(got[k] - w)) < 8 * 2.0 ** -12 + 1e-9, (k, np.max(np.abs(got[k] - w)))
