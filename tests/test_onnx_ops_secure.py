"""ONNX's own operator test cases through compile -> keygen -> two-party run.

For every case of ``onnx.backend.test.case.node.collect_testcases()`` whose ops the
frontend supports and whose inputs are real-valued, the inputs become the client's
private input, the model is compiled (calibrated on the case's own inputs), keys are
dealt, P0 and P1 run in two threads, and P1's decoded output is compared with ONNX's
expected output. Tolerances are fixed-point ones (f = 12): ``atol + rtol * |expected|``
with per-op overrides stated below. A case the compiler cannot run securely must fail
with a FusecError naming the reason (recorded as a skip), never with a traceback or a
wrong answer. CI runs one case per op; ``-m slow`` runs them all.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx.backend.test.case.node import collect_testcases

from fusec.build import Build, compile_graph, decode_outputs, encode_inputs
from fusec.errors import FusecError
from fusec.ir.onnx_frontend import SUPPORTED_OPS, load_model
from fusec.passes.options import CompileOptions
from tests.harness import run_graph

ATOL, RTOL = 2e-2, 2e-2
#: ops whose secure form is approximated on a fitted range: looser, stated bounds
TOLERANCE = {"Exp": (5e-2, 3e-2), "Reciprocal": (5e-2, 3e-2), "Sqrt": (3e-2, 3e-2), "Log": (5e-2, 3e-2),
             "Pow": (5e-2, 5e-2), "Softmax": (2e-2, 5e-2), "LayerNormalization": (5e-2, 5e-2),
             "Div": (5e-2, 3e-2), "ReduceL2": (5e-2, 3e-2), "Tanh": (3e-2, 2e-2), "Erf": (3e-2, 2e-2)}
SKIP_OPS = {"Shape", "Size", "Cast", "CastLike", "Constant", "ConstantOfShape", "Range", "Equal", "Less",
            "Greater", "Not", "And", "Or"}     # nothing secret to compute: folded or plaintext-only


def _cases():
    out = []
    for case in collect_testcases():
        if case.kind != "node" or not case.data_sets:
            continue
        ops = {n.op_type for n in case.model.graph.node}
        if not ops <= set(SUPPORTED_OPS) or ops & SKIP_OPS:
            continue
        ins, outs = case.data_sets[0]
        if not all(isinstance(v, np.ndarray) and v.dtype in (np.float32, np.float64) and v.size for v in ins):
            continue
        if len(outs) != 1 or not isinstance(outs[0], np.ndarray) or outs[0].dtype not in (np.float32, np.float64):
            continue
        if any(np.abs(v).max() > 1e3 for v in ins):
            continue
        out.append((case.name, case, sorted(ops)[0]))
    return out


CASES = _cases()
_first_per_op: dict[str, str] = {}
for _name, _case, _op in CASES:
    _first_per_op.setdefault(_op, _name)
PARAMS = [pytest.param(c, id=n, marks=() if _first_per_op[op] == n else pytest.mark.slow) for n, c, op in CASES]


@pytest.mark.parametrize("case", PARAMS)
def test_onnx_case_two_party(case):
    ins, outs = case.data_sets[0]
    names = [vi.name for vi in case.model.graph.input if vi.name not in {t.name for t in case.model.graph.initializer}]
    feeds = dict(zip(names, ins))
    try:
        graph = load_model(case.model, input_shapes={k: v.shape for k, v in feeds.items()})
        opts = CompileOptions(client_prefix=False, calib={k: np.asarray(v, np.float64) for k, v in feeds.items()})
        ir, low, steps = compile_graph(graph, opts)
    except FusecError as e:
        pytest.skip(f"refused with a clear error: {str(e).splitlines()[0]}")
    b = Build(None, ir, opts, low, steps, {})
    out, _ = run_graph(low.gates, encode_inputs(b, feeds, 1))
    got = decode_outputs(b, out)[ir.outputs[0]]
    want = np.asarray(outs[0], np.float64)
    op = {n.op_type for n in case.model.graph.node}
    atol, rtol = max((TOLERANCE.get(o, (ATOL, RTOL)) for o in op), key=lambda t: t[0])
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=atol, rtol=rtol)


def test_the_selection_is_not_empty():
    assert len(CASES) > 50 and len(_first_per_op) > 20
