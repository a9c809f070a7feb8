"""ONNX ``Attention`` (opset 23+) written out by the frontend (``ir/onnx_attention.py``).

Oracles: onnxruntime (it runs Attention-23) and ``onnx.reference`` (the spec's reference
implementation; used where a query row is masked everywhere, the spec's errata rule that
onnxruntime may predate). ONNX's own Attention node cases run in plaintext through
``tests/test_frontend.py`` and two-party through ``tests/test_onnx_ops_secure.py`` (they
are selected automatically once the op is supported); here: models shaped like what exporters
emit (3-D, grouped-query heads, causal, a constant or the input owner's mask), the plaintext
IR against the oracles, two of them through keygen and the two-party run, and the refusals.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx.reference import ReferenceEvaluator

from fusec.build import Build, compile_graph, compile_model, decode_outputs, encode_inputs, load_build
from fusec.errors import CompileError
from fusec.ir.onnx_frontend import load_model
from fusec.ir.ops import interpret
from fusec.passes.options import CompileOptions
from fusec.verify import compare
from tests.harness import run_graph

F32 = np.float32


def attention_model(q_shape, k_shape, v_shape, mask=None, opset: int = 23, extra_inputs=(), **attrs) -> onnx.ModelProto:
    """One Attention node on float inputs Q, K, V; ``mask``: None, an array (a constant
    initializer) or ("input", onnx type, shape) for a model input."""
    ins = [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in (("Q", q_shape), ("K", k_shape), ("V", v_shape))]
    inits, names = [], ["Q", "K", "V"]
    if isinstance(mask, np.ndarray):
        inits.append(nh.from_array(mask, "M"))
        names.append("M")
    elif mask is not None:
        ins.append(h.make_tensor_value_info("M", mask[1], mask[2]))
        names.append("M")
    for n, et, s in extra_inputs:
        ins.append(h.make_tensor_value_info(n, et, s))
        names += [""] * (6 - len(names)) + [n]          # (nonpad_kv_seqlen is input 6)
    node = h.make_node("Attention", names, ["Y"], **attrs)
    g = h.make_graph([node], "attn", ins, [h.make_tensor_value_info("Y", T.FLOAT, [None] * len(q_shape))],
                     inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        et = vi.type.tensor_type.elem_type
        out[vi.name] = (rng.normal(0, 1, shape).astype(F32) if et == T.FLOAT
                        else (rng.random(shape) > 0.3) if et == T.BOOL else rng.integers(0, 2, shape))
    return out


def plain(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    g = load_model(model, input_shapes={k: v.shape for k, v in feeds.items()})
    return interpret(g, {k: v for k, v in feeds.items() if k in g.inputs})[g.outputs[0]]


def ort_run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


# a fully masked query row (row 1) and a mask one key shorter than the keys (padded with "masked")
ROW_MASKED = np.array([[True, False, True, True, False],
                       [False, False, False, False, False],
                       [True, True, True, True, True],
                       [False, True, False, True, True]])

CASES = {
    "4d_mha": dict(q_shape=[2, 2, 4, 8], k_shape=[2, 2, 6, 8], v_shape=[2, 2, 6, 8]),
    "3d_gqa_causal": dict(q_shape=[1, 6, 32], k_shape=[1, 6, 16], v_shape=[1, 6, 16], q_num_heads=4,
                          kv_num_heads=2, is_causal=1),
    "3d_mqa_scaled_cross": dict(q_shape=[2, 3, 24], k_shape=[2, 5, 8], v_shape=[2, 5, 12], q_num_heads=3,
                                kv_num_heads=1, scale=0.3),
    "4d_gqa_float_mask_causal": dict(q_shape=[1, 4, 6, 4], k_shape=[1, 2, 6, 4], v_shape=[1, 2, 6, 4],
                                     mask=np.random.default_rng(3).normal(0, 1, (1, 4, 6, 6)).astype(F32),
                                     is_causal=1),
    "4d_bool_mask_padded": dict(q_shape=[1, 2, 4, 8], k_shape=[1, 2, 6, 8], v_shape=[1, 2, 6, 8], mask=ROW_MASKED),
    "3d_softcap": dict(q_shape=[1, 4, 16], k_shape=[1, 4, 16], v_shape=[1, 4, 16], q_num_heads=2,
                       kv_num_heads=2, softcap=3.0),
    "4d_owner_bool_mask_gqa": dict(q_shape=[2, 4, 3, 4], k_shape=[2, 2, 5, 4], v_shape=[2, 2, 5, 4],
                                   mask=("input", T.BOOL, [2, 1, 3, 5])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_plaintext_ir_matches_the_oracles(name):
    model = attention_model(**CASES[name])
    feeds = feeds_for(model, seed=len(name))
    if name == "4d_owner_bool_mask_gqa":
        feeds["M"][1, 0, 2] = False                   # one query row of batch 1 masked everywhere
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    got = plain(model, feeds)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    if "bool" not in name:                            # (masked-everywhere rows: the reference's rule)
        np.testing.assert_allclose(got, ort_run(model, feeds), atol=2e-5, rtol=1e-4)


def test_grouped_query_heads_do_not_copy_keys_and_values():
    """GQA groups query heads (reshapes) instead of repeating K and V: no Expand/Concat/Tile on
    the keys, and the only MatMuls are the two products of the grouped layout."""
    model = attention_model(**CASES["3d_gqa_causal"])
    g = load_model(model)
    ops = [n.op for n in g.nodes()]
    assert "Expand" not in ops and "Concat" not in ops
    mm = [n for n in g.nodes() if n.op == "MatMul"]
    assert len(mm) == 2 and g.info(mm[0].outputs[0]).shape == (1, 2, 12, 6)     # [b, kv_heads, 2 * 6, keys]


# ---------------------------------------------------------------------- two-party
def _secure(graph, opts: CompileOptions, feeds: dict) -> np.ndarray:
    ir, low, steps = compile_graph(graph, opts)
    b = Build(None, ir, opts, low, steps, {})
    out, _ = run_graph(low.gates, encode_inputs(b, feeds, 1))
    return decode_outputs(b, out)[ir.outputs[0]]


def test_two_party_gqa_with_a_constant_mask_and_a_masked_row():
    model = attention_model(**CASES["4d_bool_mask_padded"])
    feeds = feeds_for(model, seed=5)
    g = load_model(model, input_shapes={k: v.shape for k, v in feeds.items()})
    got = _secure(g, CompileOptions(client_prefix=False, calib={k: v.astype(np.float64) for k, v in feeds.items()}),
                  feeds)
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    assert np.all(got[:, :, 1] == 0)                  # the masked-everywhere row is exactly 0
    np.testing.assert_allclose(got, want, atol=3e-2, rtol=3e-2)


V_SIZE, SEQ, DM, HQ, HKV = 30, 6, 16, 4, 2


def llama_like_attention(seed: int = 0) -> onnx.ModelProto:
    """ids -> embedding -> q/k/v projections -> Attention-23 (3-D, GQA, causal, the owner's
    padding mask as a boolean [batch, 1, seq, seq]) -> output projection: what an opset-23 export
    of a decoder layer's attention looks like. (The mask is expanded over the queries: onnxruntime
    refuses a query dim of 1, and onnx.reference's causal frontier then takes its length from the
    mask instead of Q -- both oracles agree on the full shape.)"""
    rng = np.random.default_rng(seed)
    w = lambda *s: nh.from_array(rng.normal(0, 0.4, s).astype(F32), f"W{len(inits)}")  # noqa: E731
    inits: list = []
    for shape in ((V_SIZE, DM), (DM, DM), (DM, DM // 2), (DM, DM // 2), (DM, DM)):
        inits.append(w(*shape))
    inits += [nh.from_array(np.array([1, 2], np.int64), "axes12"),
              nh.from_array(np.array([1, 1, SEQ, SEQ], np.int64), "full")]
    nodes = [h.make_node("Gather", ["W0", "input_ids"], ["emb"]),
             h.make_node("MatMul", ["emb", "W1"], ["q"]), h.make_node("MatMul", ["emb", "W2"], ["k"]),
             h.make_node("MatMul", ["emb", "W3"], ["v"]),
             h.make_node("Cast", ["attention_mask"], ["mb"], to=T.BOOL),
             h.make_node("Unsqueeze", ["mb", "axes12"], ["m1"]),
             h.make_node("Expand", ["m1", "full"], ["m4"]),
             h.make_node("Attention", ["q", "k", "v", "m4"], ["att"], q_num_heads=HQ, kv_num_heads=HKV, is_causal=1),
             h.make_node("MatMul", ["att", "W4"], ["out"])]
    ins = [h.make_tensor_value_info(n, T.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask")]
    g = h.make_graph(nodes, "llama_attn", ins, [h.make_tensor_value_info("out", T.FLOAT, ["batch", "sequence", DM])],
                     inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 23)])


def test_two_party_owner_mask_one_build_many_paddings(tmp_path):
    """The owner's padding mask (private role) reaches Attention as a boolean; one build serves
    every padding, checked against onnx.reference, including left padding, where the first
    queries see only padded keys under the causal frontier (the spec's output there is 0)."""
    model = llama_like_attention()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    compile_model(path, tmp_path / "b", CompileOptions(bits=37), batch=1, seq=SEQ,
                  input_roles={"attention_mask": "private"})
    b = load_build(tmp_path / "b")
    rng = np.random.default_rng(1)
    for mask in ([1, 1, 1, 1, 0, 0], [1] * SEQ, [0, 0, 1, 1, 1, 1]):
        feeds = {"input_ids": rng.integers(0, V_SIZE, (1, SEQ)), "attention_mask": np.array([mask], np.int64)}
        out, _ = run_graph(b.gates, encode_inputs(b, feeds, 1), seed=np.random.bytes(16))
        got = decode_outputs(b, out)[b.ir.outputs[0]]
        want = ReferenceEvaluator(model).run(None, feeds)[0]
        if mask[0]:                                  # (a masked-everywhere row: the spec's errata rule)
            np.testing.assert_allclose(want, ort_run(model, feeds), atol=1e-5)
        c = compare("out", got, want)
        assert c.cosine > 0.999 and c.max_abs < 3e-2, (mask, c.line())
        if mask[0] == 0:
            assert np.all(got[0, :2] == 0)           # left padding: rows 0, 1 attend nothing


# ---------------------------------------------------------------------- refusals
def _secret_bool_mask_model() -> onnx.ModelProto:
    m = attention_model(**CASES["4d_mha"])
    g = m.graph
    g.input.append(h.make_tensor_value_info("X", T.FLOAT, [4, 6]))
    g.initializer.append(nh.from_array(np.array(0, F32), "zero"))
    g.node.insert(0, h.make_node("Greater", ["X", "zero"], ["M"]))
    g.node[1].input.append("M")
    return m


@pytest.mark.parametrize("make, pattern", [
    (_secret_bool_mask_model, r"boolean attn_mask 'M' is computed from secret data"),
    (lambda: attention_model([1, 4, 16], [1, 4, 16], [1, 4, 16]), r"q_num_heads"),                 # (the ONNX checker says it first)
    (lambda: attention_model([1, 3, 4, 8], [1, 2, 4, 8], [1, 2, 4, 8]), r"3 query heads are not a multiple of 2"),
    (lambda: attention_model([1, 2, 4, 8], [1, 2, 4, 6], [1, 2, 4, 8]), r"Q and K head sizes differ"),
    (lambda: attention_model([1, 4, 15], [1, 4, 16], [1, 4, 16], q_num_heads=2, kv_num_heads=2),
     r"Q has hidden size 15, not a multiple of its 2 heads"),
    (lambda: attention_model([1, 2, 4, 8], [1, 2, 4, 8], [1, 2, 4, 8], opset=24,
                             extra_inputs=[("nonpad", T.INT64, [1])]),
     r"input 6 \(nonpad_kv_seqlen\) must be known at compile time"),
], ids=["secret-bool-mask", "3d-no-heads", "heads", "head-size", "hidden", "nonpad-runtime"])
def test_refusals_name_the_node_and_why(make, pattern):
    model = make()
    with pytest.raises(CompileError, match=pattern) as e:
        load_model(model)
    assert "Attention" in e.value.message and "\n" not in e.value.message


def test_nonpad_kv_seqlen_known_at_compile_time_is_a_constant_mask():
    model = attention_model([2, 2, 3, 8], [2, 2, 5, 8], [2, 2, 5, 8], opset=24, is_causal=1,
                            extra_inputs=[("nonpad", T.INT64, [2])])
    feeds = feeds_for(model, seed=2)
    feeds["nonpad"] = np.array([5, 4], np.int64)
    g = load_model(model, public_inputs={"nonpad": feeds["nonpad"]})
    got = interpret(g, {k: v for k, v in feeds.items() if k in g.inputs})[g.outputs[0]]
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, feeds)[0], atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------- a real export
@pytest.mark.slow   # torch import + export + compile, ~45 s on 2 busy cores (CI: the hand-built decoder above)
def test_llama_exported_at_opset_23_one_build_many_paddings(tmp_path):
    """transformers' Llama (SDPA attention, 4 query / 2 key-value heads) through the dynamo
    exporter at opset 23 writes ``Attention`` and ``RMSNormalization``; with the padding mask
    private, one build serves three paddings, checked against onnxruntime. (The embedding table is
    scaled to unit size: the default 0.02 makes RMSNorm's mean of squares ~4e-4, under 2 ulps at
    f = 12 -- a precision limit of this random init, the same with the spelled-out opset-18 export.)"""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    pytest.importorskip("onnxscript")
    from pathlib import Path

    from fusec.models.torch_export import export_torch
    from tests.families import last_hidden_state

    cfg = tf.LlamaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    m = tf.LlamaModel(cfg).eval()
    with torch.no_grad():
        m.embed_tokens.weight.mul_(50)

    ids, ones = np.arange(3, 3 + 16)[None], np.ones((1, 16), np.int64)
    out, tmp, _ = export_torch(last_hidden_state(m), (torch.from_numpy(ids), torch.from_numpy(ones)), tmp_path / "l.onnx",
                               ["input_ids", "attention_mask"], ["last_hidden_state"], {}, "dynamo", 23)
    with tmp:
        path = tmp_path / "llama23.onnx"
        path.write_bytes(Path(out).read_bytes())
    ops = {n.op_type for n in onnx.load(path).graph.node}
    if "Attention" not in ops:
        pytest.skip("this torch version does not emit Attention at opset 23")
    assert "RMSNormalization" in ops
    compile_model(path, tmp_path / "b", CompileOptions(bits=37), batch=1,
                  input_roles={"attention_mask": "private"})
    b = load_build(tmp_path / "b")
    rng = np.random.default_rng(0)
    for n_real in (16, 11, 3):
        feeds = {"input_ids": rng.integers(3, 120, (1, 16)),
                 "attention_mask": (np.arange(16) < n_real).astype(np.int64)[None]}
        res, _ = run_graph(b.gates, encode_inputs(b, feeds, 1))
        got = decode_outputs(b, res)[b.ir.outputs[0]]
        c = compare("last_hidden_state", got, ort_run(onnx.load(path), feeds))
        assert c.cosine > 0.9999 and c.max_abs < 1e-2, (n_real, c.line())
