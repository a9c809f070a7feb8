"""The families users bring (issue 12, items 2-3): compile + a two-party run vs onnxruntime.

Tiny random-init exports (``tests/families.py``: hidden 32, 2 layers, seq 16, no
downloads); each is compiled, run by dealer + P0 + P1 (threads, real keys, real opens)
and compared with onnxruntime on the same ONNX file. One model per family runs in CI
(unmarked); the other exporters and activations are ``slow``. Tests that need torch or
transformers skip cleanly without them. The first test needs neither: a hand-built graph
whose position ids come from ``CumSum`` (the RoBERTa pattern) runs at the input owner.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from fusec.build import compile_model, decode_outputs, encode_inputs, load_build
from fusec.errors import CompileError
from fusec.inputs import full_request
from fusec.passes.options import CompileOptions
from tests.harness import run_graph
from fusec.verify import compare, onnxruntime_reference


def secure_vs_ort(model, tmp_path, feeds, out_name, bits: int = 37, frac: int = 12, **roles):
    compile_model(model, tmp_path / "build", CompileOptions(bits=bits, frac=frac), batch=1, input_roles=roles or None)
    b = load_build(tmp_path / "build")
    out, logs = run_graph(b.gates, encode_inputs(b, feeds, 1))
    got = decode_outputs(b, out)[b.ir.outputs[0]]
    ref = onnxruntime_reference(model, full_request(b.ir, feeds), {})[out_name]
    return compare(out_name, got, ref), b


def _position_ids_model(L: int = 8, V: int = 100, D: int = 4) -> onnx.ModelProto:
    """RoBERTa's position ids: ``cumsum(ids != pad) * (ids != pad) + pad`` (int32 in between),
    then word + position embeddings and one public matmul; plus ``GatherElements`` on ids."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.normal(0, 1, (V, D)).astype(np.float32), "E"),
             nh.from_array(rng.normal(0, 1, (L + 2, D)).astype(np.float32), "P"),
             nh.from_array(rng.normal(0, 1, (D, D)).astype(np.float32), "W"),
             nh.from_array(np.array(1, np.int64), "pad"), nh.from_array(np.array(1, np.int32), "axis"),
             nh.from_array(np.array([[L - 1 - i for i in range(L)]], np.int64), "rev")]
    nodes = [h.make_node("Equal", ["input_ids", "pad"], ["is_pad"]), h.make_node("Not", ["is_pad"], ["real"]),
             h.make_node("Cast", ["real"], ["m32"], to=T.INT32),
             h.make_node("CumSum", ["m32", "axis"], ["cs"]), h.make_node("Mul", ["cs", "m32"], ["inc"]),
             h.make_node("Cast", ["inc"], ["inc64"], to=T.INT64), h.make_node("Add", ["inc64", "pad"], ["pos"]),
             h.make_node("GatherElements", ["input_ids", "rev"], ["ids_rev"], axis=1),
             h.make_node("Gather", ["E", "ids_rev"], ["we"]), h.make_node("Gather", ["P", "pos"], ["pe"]),
             h.make_node("Add", ["we", "pe"], ["emb"]), h.make_node("MatMul", ["emb", "W"], ["y"])]
    g = h.make_graph(nodes, "positions", [h.make_tensor_value_info("input_ids", T.INT64, [1, L])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, L, D])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_any_op_runs_at_the_input_owner(tmp_path):
    m = tmp_path / "positions.onnx"
    onnx.save(_position_ids_model(), m)
    ids = np.array([[0, 5, 7, 9, 3, 1, 1, 1]])          # padded with the pad id 1
    c, b = secure_vs_ort(m, tmp_path, {"input_ids": ids}, "y")
    assert c.cosine > 0.9999 and c.max_abs < 1e-2, c.line()
    owner = {n.attrs.get("onnx_op") for n in b.ir.nodes() if n.op == "OnnxNode" and n.attrs.get("at") == "client"}
    assert "CumSum" in owner
    # GatherElements with constant indices is data movement: at the owner here (it reads ids)
    assert any("GatherElements" in n.name and n.attrs.get("at") == "client" for n in b.ir.nodes())
    from fusec.report import split  # noqa: PLC0415
    assert "OnnxNode:" in split(b)                     # inspect shows the owner's part


def test_an_op_on_secret_data_is_refused_in_a_few_lines(tmp_path):
    rng = np.random.default_rng(0)
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["h"]), h.make_node("CumSum", ["h", "axis"], ["y"])],
                     "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, 4])],
                     [nh.from_array(rng.normal(size=(4, 4)).astype(np.float32), "W"),
                      nh.from_array(np.array(1, np.int64), "axis")])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with pytest.raises(CompileError) as e:
        compile_model(tmp_path / "m.onnx", tmp_path / "b", CompileOptions(bits=37))
    text = str(e.value)
    assert "CumSum" in text and "'h'" in text and "fusec ops" in e.value.hint
    assert len(text) + len(e.value.hint or "") < 700          # not the whole op list inline


def test_fusec_ops_lists_the_secure_lowerings():
    from fusec.ir.owner_prefix import ops_text  # noqa: PLC0415
    text = ops_text()
    assert "MatMul" in text and "input owner" in text and "CumSum" in text


# ---------------------------------------------------------------------- comparisons, selects, shared inputs
def _secret_graph(kind: str) -> onnx.ModelProto:
    """``h = x @ W`` (secret), then a pattern on it; output ``y [4, 8]``."""
    rng = np.random.default_rng(1)
    inits = [nh.from_array(rng.normal(0, 1, (8, 8)).astype(np.float32), "W"),
             nh.from_array(rng.normal(0, 1, (8, 8)).astype(np.float32), "W2"),
             nh.from_array(np.array(1.5, np.float32), "c"), nh.from_array(np.array(0.0, np.float32), "z")]
    base = [h.make_node("MatMul", ["x", "W"], ["h"]), h.make_node("MatMul", ["x", "W2"], ["h2"])]
    body = {
        # the dynamo exporter's Softplus: Where(x > t, x, softplus(x)) -> one fused gate
        "softplus-where": [h.make_node("Greater", ["h", "c"], ["g"]), h.make_node("Softplus", ["h"], ["sp"]),
                           h.make_node("Where", ["g", "h", "sp"], ["y"])],
        # comparisons between two secrets, a select of secrets, Max/Min, And/Not
        "two-secrets": [h.make_node("Less", ["h", "h2"], ["l"]), h.make_node("Where", ["l", "h", "h2"], ["mn"]),
                        h.make_node("Max", ["h", "h2"], ["mx"]), h.make_node("Greater", ["h", "z"], ["p"]),
                        h.make_node("Not", ["l"], ["nl"]), h.make_node("And", ["p", "nl"], ["both"]),
                        h.make_node("Cast", ["both"], ["bf"], to=T.FLOAT), h.make_node("Add", ["mn", "mx"], ["s"]),
                        h.make_node("Add", ["s", "bf"], ["y"])],
        # one secret tensor read by two nonlinearities: one gate per consumer
        "shared": [h.make_node("Sigmoid", ["h"], ["s1"]), h.make_node("Tanh", ["h"], ["t1"]),
                   h.make_node("MatMul", ["s1", "W2"], ["a"]), h.make_node("MatMul", ["t1", "W"], ["b"]),
                   h.make_node("Add", ["a", "b"], ["y"])],
    }[kind]
    g = h.make_graph(base + body, kind, [h.make_tensor_value_info("x", T.FLOAT, [4, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [4, 8])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("kind", ["softplus-where", "two-secrets", "shared"])
def test_comparisons_selects_and_shared_inputs(kind, tmp_path):
    m = tmp_path / f"{kind}.onnx"
    onnx.save(_secret_graph(kind), m)
    x = np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)
    c, b = secure_vs_ort(m, tmp_path, {"x": x}, "y")
    assert c.cosine > 0.9999 and c.rel < 5e-3, c.line()
    ops = [n.op for n in b.ir.nodes()]
    assert not {"Greater", "Less", "Where", "Not", "And"} & set(ops)       # all became gates
    if kind == "softplus-where":
        assert ops.count("SelectStep") == 1 and ops.count("Scalar") == 1      # DReLU + Select, softplus
    if kind == "shared":
        assert ops.count("Scalar") == 2                     # sigmoid(h) and tanh(h): a gate each


def test_rms_normalization_at_opset_23(tmp_path):
    """Llama exported at opset 23 writes RMSNormalization: one rsqrt gate, as the spelled-out chain."""
    rng = np.random.default_rng(0)
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["hh"]),
                      h.make_node("RMSNormalization", ["hh", "s"], ["y"], axis=-1, epsilon=1e-6)], "rms",
                     [h.make_tensor_value_info("x", T.FLOAT, [4, 8])], [h.make_tensor_value_info("y", T.FLOAT, [4, 8])],
                     [nh.from_array(rng.normal(size=(8, 8)).astype(np.float32), "W"),
                      nh.from_array((1 + 0.1 * rng.normal(size=8)).astype(np.float32), "s")])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 23)]), tmp_path / "rms.onnx")
    c, b = secure_vs_ort(tmp_path / "rms.onnx", tmp_path, {"x": rng.standard_normal((4, 8)).astype(np.float32)},
                         "y", bits=50)
    assert c.cosine > 0.9999 and c.rel < 5e-3, c.line()
    assert [n.attrs.get("label") for n in b.ir.nodes() if n.op == "Scalar"] == ["rsqrt"]


# ---------------------------------------------------------------------- exported families (torch)
CI = {("roberta", "legacy"), ("vit", "legacy"), ("mlp-sigmoid", "legacy"), ("llama", "legacy")}
#: refused today, with the reason (strict: the test says when it starts to pass)
KNOWN: dict[str, str] = {}
#: ring width per family where the tiny models' 37 bits are too narrow: leaky ReLU's fit
#: needs the default ring (at 37 bits the compile refuses it in one line, test below)
BITS = {"mlp-leakyrelu": 50, "llama": 50}
#: fractional bits where 12 lose too much: a randomly initialised Llama's hidden states are of
#: order 0.02 (embeddings at the init's std, no LayerNorm after them), so 2^-12 steps cost it
#: cosine 0.9954 (max abs err 0.40); 2^-16 give 0.99998 (real checkpoints' activations are larger)
FRAC = {"llama": 16}


def _cases():
    from tests.families import FAMILIES  # noqa: PLC0415
    for name in FAMILIES:
        for exporter in ("legacy", "dynamo"):
            marks = [] if (name, exporter) in CI else [pytest.mark.slow]
            if name in KNOWN:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[name]))
            yield pytest.param(name, exporter, marks=marks, id=f"{name}-{exporter}")


@pytest.mark.parametrize("name, exporter", list(_cases()))
def test_family_verifies(name, exporter, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    from tests.families import export  # noqa: PLC0415
    path, req, out = export(name, tmp_path, exporter)
    c, _ = secure_vs_ort(path, tmp_path, req, out, bits=BITS.get(name, 37), frac=FRAC.get(name, 12))
    assert c.cosine > 0.9995, c.line()


def test_leaky_relu_in_too_narrow_a_ring_is_one_clear_error(tmp_path):
    """At 37 bits leaky ReLU cannot be fitted: the compile says which node and what to do."""
    w = nh.from_array(np.random.default_rng(0).normal(0, 0.3, (8, 8)).astype(np.float32), "W")
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["h"]), h.make_node("LeakyRelu", ["h"], ["y"], alpha=0.01)],
                     "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 8])], [w])
    path = tmp_path / "lrelu.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    with pytest.raises(CompileError, match=r"cannot fit leaky_relu .* of Scalar node .* in a 37-bit ring") as e:
        compile_model(path, tmp_path / "b37", CompileOptions(bits=37), batch=1)
    assert "--bits" in str(e.value)
    compile_model(path, tmp_path / "b50", CompileOptions(bits=50), batch=1)       # the default ring fits it
