"""Real models through the whole compiler and a two-party run, against onnxruntime.

Each test compiles an ONNX file (the committed fixtures: torch exports of random-weight
bert-tiny from both exporters, a 2-layer GPT-2, digits classifiers trained on
scikit-learn's digits, whose test split is committed too, and tiny exports of the families
of tests/families.py), runs dealer + P0 + P1 (threads, real keys, real opens), and
compares the decoded output with onnxruntime on the original file. None of them needs
torch, transformers or scikit-learn.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusec.build import compile_model, decode_outputs, encode_inputs, load_build
from fusec.passes.calibrate import default_feeds
from fusec.passes.options import CompileOptions
from tests.harness import run_graph
from fusec.verify import compare, onnxruntime_reference

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parent.parent / "fusec" / "examples"


def secure_vs_ort(model, tmp_path, feeds=None, batch=1, seq=None, **opts):
    b = compile_model(model, tmp_path / "build", CompileOptions(**opts), batch=batch, seq=seq)
    b = load_build(tmp_path / "build")           # what the servers would load
    feeds = feeds if feeds is not None else default_feeds(b.ir, 1)
    out, logs = run_graph(b.gates, encode_inputs(b, feeds, 1))
    got = decode_outputs(b, out)
    ref = onnxruntime_reference(model, feeds, b.ir.meta.get("public_inputs", {}))
    name = b.ir.outputs[0]
    return got[name], ref[name], b, logs


@pytest.mark.parametrize("fixture", ["bert_tiny_legacy", "bert_tiny_dynamo", "gpt2_tiny"])
def test_transformer_fixtures_match_onnxruntime(fixture, tmp_path):
    got, ref, b, logs = secure_vs_ort(DATA / f"{fixture}.onnx", tmp_path, batch=1, seq=16, bits=37)
    c = compare("out", got, ref)
    assert c.cosine > 0.9999, c.line()
    assert c.rel < 1e-2, c.line()
    assert logs[1].rounds == max(s.end for s in b.steps)
    # the embedding lookups ran at the input owner; the secure part starts at a Share
    assert any(n.attrs.get("at") == "client" and n.op == "Gather" for n in b.ir.nodes())


def test_packed_row_maxima_match_onnxruntime(tmp_path):
    """--max-tree packed: every softmax's row maxima in two rounds a tree level (a third of
    the AES); the decoder still matches onnxruntime, one more round per level per layer."""
    got, ref, b, logs = secure_vs_ort(DATA / "gpt2_tiny.onnx", tmp_path, batch=1, seq=16, bits=37, max_tree="packed")
    trees = [n.gate for n in b.gates.nodes if n.gate.kind == "max_tree_narrow"]
    assert trees and all(t.lookup == "packed" for t in trees)
    c = compare("out", got, ref)
    assert c.cosine > 0.9999 and c.rel < 1e-2, c.line()
    assert logs[1].rounds == max(s.end for s in b.steps)


@pytest.mark.parametrize("family", ["roberta", "vit", "mlp_sigmoid"])
def test_family_fixtures_match_onnxruntime(family, tmp_path):
    """tests/test_families.py's CI cases (RoBERTa: CumSum position ids at the input owner;
    ViT: a class token beside secrets; an MLP with a sigmoid), from their committed exports:
    they run where torch is not installed."""
    with np.load(DATA / f"family_{family}_request.npz") as z:
        feeds = {k: z[k] for k in z.files}
    got, ref, b, logs = secure_vs_ort(DATA / f"family_{family}.onnx", tmp_path, feeds=feeds, bits=37)
    c = compare("out", got, ref)
    assert c.cosine > 0.9995, c.line()
    assert logs[1].rounds == max(s.end for s in b.steps)


def test_true_batch_two_sequences(tmp_path):
    got, ref, b, _ = secure_vs_ort(DATA / "bert_tiny_legacy.onnx", tmp_path, batch=2, seq=8, bits=37)
    assert got.shape == (2, 8, 128)
    assert compare("out", got, ref).cosine > 0.9999


def test_sigma_gates_run_the_same_model(tmp_path):
    got, ref, b, logs = secure_vs_ort(DATA / "bert_tiny_legacy.onnx", tmp_path, batch=1, seq=8, gates="sigma")
    assert compare("out", got, ref).cosine > 0.999


def _digits_accuracy(model, X, y, tmp_path, **opts):
    got, ref, b, _ = secure_vs_ort(model, tmp_path, feeds={"x": X}, batch=X.shape[0], **opts)
    agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    acc = float(np.mean(got.argmax(-1) == y))
    return agree, acc


def test_digits_mlp_argmax_agreement_on_the_test_split(tmp_path):
    # the committed test split (the MLP's own, flattened; test_models checks it is sklearn's)
    with np.load(DATA / "digits_cnn_test.npz") as z:
        Xt, yt = z["X_test"].reshape(-1, 64), z["y_test"]
    agree, acc = _digits_accuracy(EXAMPLES / "digits_mlp.onnx", Xt, yt, tmp_path)
    info = json.loads((EXAMPLES / "digits_sample.json").read_text())
    assert agree >= 0.995, agree
    assert acc >= info["float_accuracy"] - 0.01


def test_digits_cnn_argmax_agreement(tmp_path):
    with np.load(DATA / "digits_cnn_test.npz") as z:
        X, y = z["X_test"][:96], z["y_test"][:96]
    agree, acc = _digits_accuracy(DATA / "digits_cnn.onnx", X, y, tmp_path)
    assert agree >= 0.98, agree
    assert acc >= 0.9, acc


@pytest.mark.slow
def test_digits_cnn_whole_test_split(tmp_path):
    with np.load(DATA / "digits_cnn_test.npz") as z:
        X, y = z["X_test"], z["y_test"]
    agree, acc = _digits_accuracy(DATA / "digits_cnn.onnx", X, y, tmp_path)
    assert agree >= 0.99, agree
    assert acc >= 0.95, acc


def test_sigma_build_places_truncations_where_sigma_does(tmp_path):
    """The sigma baseline follows SIGMA's layer (runtime/gates/sigma_model.py, from EzPC's
    GPU-MPC): per layer the scores are truncated once (TrFloor by f + 3: 1/sqrt(d_h) folded
    in, no second truncation after the scale), elementwise products (softmax's e * 1/sum,
    layer norm's) take TrWithSlack, matmul outputs TrFloor, and a layer norm's mean is
    truncated on its rows before it is broadcast."""
    b = compile_model(DATA / "bert_tiny_legacy.onnx", tmp_path / "build", CompileOptions(gates="sigma"),
                      batch=1, seq=8)
    b = load_build(tmp_path / "build")
    steps = {s.id: s for s in b.steps}
    kinds = {s.id: s.kind for s in b.steps}
    layers = sorted({i.split("/layer.")[1].split("/")[0] for i in steps if "/layer." in i})
    assert layers
    for n in layers:
        def kind_of_rescale(tensor_suffix):
            hits = [k for i, k in kinds.items() if i.startswith("rescale_") and f"/layer.{n}/" in i
                    and i.endswith(tensor_suffix)]
            return hits
        assert kind_of_rescale("attention/self/MatMul_output_0") == []           # not between QK^T and the scale
        assert kind_of_rescale("attention/self/Mul_output_0") == ["truncate_sigma_floor"]
        assert kind_of_rescale("Softmax_output_0") == ["truncate_sigma"]          # e * 1/sum: TrWithSlack
        for ln in ("attention/output/LayerNorm", "output/LayerNorm"):
            mean = [s for i, s in steps.items() if i.startswith("rescale_") and f"layer.{n}/{ln}/" in i
                    and i.endswith("reducemean")]
            assert len(mean) == 1 and mean[0].kind == "truncate_sigma_floor" and mean[0].elements == 8
            prods = [k for i, k in kinds.items() if i.startswith("rescale_") and f"layer.{n}/{ln}/" in i
                     and (i.endswith("_mul") or i.endswith("_mul_1") or i.endswith("_mul_2"))]
            assert prods and set(prods) == {"truncate_sigma"}
        ffn = kind_of_rescale("intermediate/dense/MatMul_output_0")
        assert ffn == ["truncate_sigma_floor"]
